//! Streaming search-and-replace of reference hash parts.
//!
//! Every pattern is exactly 32 nix-base32 characters, so a match can only lie inside a run of at
//! least 32 base32 bytes. As in Nix's own reference scanner, the last byte of a 32-byte window is
//! checked first: if it is not base32, no window containing it can match and the scan jumps past
//! it. Only windows made entirely of base32 bytes are looked up, in a hash table, so the cost does
//! not grow with the number of references (aho-corasick, measured in docs/benchmarks.md, slowed
//! from 1.8 GB/s at 64 patterns to 0.2–0.5 GB/s above; closure roots can have hundreds). With
//! equal-length patterns this gives exactly the leftmost-first, non-overlapping matches of spec
//! §2.1; a property test checks it against aho-corasick.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::patch::{Patch, PatchKind};
use crate::refs::{RefTable, HASH_LEN, PLACEHOLDER};

const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

const fn base32_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < NIX_BASE32.len() {
        t[NIX_BASE32[i] as usize] = true;
        i += 1;
    }
    t
}

static IS_BASE32: [bool; 256] = base32_table();

/// Hash parts are already uniformly random: their first 8 bytes are a fine hash.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
    }
}

/// Finds every reference-table hash part in bytes and replaces it with [`PLACEHOLDER`].
pub struct Scanner {
    table: HashMap<[u8; HASH_LEN], u32, BuildHasherDefault<PrefixHasher>>,
}

impl Scanner {
    pub fn new(refs: &RefTable) -> Self {
        let mut table = HashMap::default();
        for (i, h) in refs.hash_parts().enumerate() {
            table
                .entry(h.try_into().expect("32-byte hash part"))
                .or_insert(i as u32);
        }
        Scanner { table }
    }

    /// Call `hit(offset, table index)` for each match in `hay`, leftmost first, non-overlapping.
    pub fn find(&self, hay: &[u8], mut hit: impl FnMut(usize, u32)) {
        let n = hay.len();
        let mut i = 0;
        // hay[i..good_end] is known to be all base32 (meaningful when good_end > i).
        let mut good_end = 0;
        'windows: while i + HASH_LEN <= n {
            // Make sure hay[i..i + 32] is all base32, checking from the far end so that a
            // non-base32 byte lets the scan jump over every window that contains it.
            let mut j = i + HASH_LEN;
            while j > good_end.max(i) {
                j -= 1;
                if !IS_BASE32[hay[j] as usize] {
                    i = j + 1;
                    continue 'windows;
                }
            }
            good_end = i + HASH_LEN;
            let window: &[u8; HASH_LEN] = hay[i..i + HASH_LEN].try_into().expect("32 bytes");
            if let Some(&index) = self.table.get(window) {
                hit(i, index);
                i += HASH_LEN;
            } else {
                i += 1;
            }
        }
    }

    /// Normalize a small byte string (entry name, symlink target) in one go.
    pub fn strip_bytes(&self, bytes: &[u8]) -> (Vec<u8>, Vec<Patch>) {
        let mut out = bytes.to_vec();
        let mut patches = Vec::new();
        self.find(bytes, |at, index| {
            out[at..at + HASH_LEN].copy_from_slice(&PLACEHOLDER);
            patches.push(Patch {
                offset: at as u64,
                kind: PatchKind::Ref(index),
            });
        });
        (out, patches)
    }

    /// Start scanning one stream (one file's contents).
    pub fn stream(&self) -> ScanStream<'_> {
        ScanStream {
            scanner: self,
            window: Vec::new(),
            window_offset: 0,
            returned: 0,
            patches: Vec::new(),
        }
    }
}

/// One stream being scanned. Matches straddling the boundary between two `feed` calls are found:
/// the last `HASH_LEN - 1` bytes are held back until the next call shows whether a hash continues.
/// The result equals a one-shot scan of the whole stream.
pub struct ScanStream<'s> {
    scanner: &'s Scanner,
    /// Bytes received but not yet final (a held-back tail plus the newest input).
    window: Vec<u8>,
    /// Stream offset of `window[0]`.
    window_offset: u64,
    /// Length of the prefix of `window` handed out by the last call, dropped on the next.
    returned: usize,
    patches: Vec<Patch>,
}

impl ScanStream<'_> {
    /// Feed the stream's next original bytes; returns the normalized bytes that became final.
    pub fn feed(&mut self, data: &[u8]) -> &[u8] {
        self.drop_returned();
        self.window.extend_from_slice(data);
        let first_new = self.patches.len();
        let mut last_end = 0;
        let (patches, window_offset) = (&mut self.patches, self.window_offset);
        self.scanner.find(&self.window, |at, index| {
            patches.push(Patch {
                offset: window_offset + at as u64,
                kind: PatchKind::Ref(index),
            });
            last_end = at + HASH_LEN;
        });
        for p in &self.patches[first_new..] {
            let at = (p.offset - self.window_offset) as usize;
            self.window[at..at + HASH_LEN].copy_from_slice(&PLACEHOLDER);
        }
        // Bytes of a match already replaced are final; only an unmatched tail is held back.
        self.returned = self.window.len().saturating_sub(HASH_LEN - 1).max(last_end);
        &self.window[..self.returned]
    }

    /// End of stream: the held-back tail, now final.
    pub fn finish(&mut self) -> &[u8] {
        self.drop_returned();
        self.returned = self.window.len();
        &self.window
    }

    /// Reference patches found so far, sorted by offset; all of them lie in bytes already returned.
    pub fn patches(&self) -> &[Patch] {
        &self.patches
    }

    pub fn into_patches(self) -> Vec<Patch> {
        self.patches
    }

    fn drop_returned(&mut self) {
        self.window.drain(..self.returned);
        self.window_offset += self.returned as u64;
        self.returned = 0;
    }
}
