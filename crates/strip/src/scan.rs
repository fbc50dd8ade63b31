//! Streaming search-and-replace of reference hash parts.

use aho_corasick::{AhoCorasick, MatchKind};

use crate::patch::{Patch, PatchKind};
use crate::refs::{RefTable, HASH_LEN, PLACEHOLDER};

/// Finds every reference-table hash part in a byte stream (aho-corasick, leftmost-first,
/// non-overlapping) and replaces it with [`PLACEHOLDER`].
pub struct Scanner {
    ac: AhoCorasick,
}

impl Scanner {
    pub fn new(refs: &RefTable) -> Self {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(refs.hash_parts())
            .expect("32-byte patterns always build");
        Scanner { ac }
    }

    /// Normalize a small byte string (entry name, symlink target) in one go.
    pub fn strip_bytes(&self, bytes: &[u8]) -> (Vec<u8>, Vec<Patch>) {
        let mut out = bytes.to_vec();
        let mut patches = Vec::new();
        for m in self.ac.find_iter(bytes) {
            out[m.start()..m.end()].copy_from_slice(&PLACEHOLDER);
            patches.push(Patch { offset: m.start() as u64, kind: PatchKind::Ref(m.pattern().as_u32()) });
        }
        (out, patches)
    }

    /// Start scanning one stream (one file's contents).
    pub fn stream(&self) -> ScanStream<'_> {
        ScanStream { scanner: self, window: Vec::new(), window_offset: 0, returned: 0, patches: Vec::new() }
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
        for m in self.scanner.ac.find_iter(&self.window) {
            self.patches.push(Patch {
                offset: self.window_offset + m.start() as u64,
                kind: PatchKind::Ref(m.pattern().as_u32()),
            });
            last_end = m.end();
        }
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
