//! A prototype reference scanner, for comparison only (refstrip itself uses aho-corasick).
//!
//! Every pattern is exactly 32 nix-base32 characters, so a match can only start inside a run of at
//! least 32 base32 bytes. Like Nix's own reference scanner, look at the last byte of the 32-byte
//! window first: when it is not base32, no window containing it can match and the scan jumps 32
//! bytes; otherwise walk back to the start of the run. Only windows that are entirely base32 are
//! looked up, in a hash table, so the cost does not grow with the number of references. With
//! equal-length patterns, leftmost-first non-overlapping semantics (spec §2.1) reduce to "the
//! leftmost window that is in the table, then continue after it"; a hash part listed twice maps
//! to its lowest index.

use std::collections::HashMap;

const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

pub struct SkipScanner {
    b32: [bool; 256],
    table: HashMap<[u8; 32], u32>,
}

impl SkipScanner {
    pub fn new<'a>(hash_parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut b32 = [false; 256];
        for &c in NIX_BASE32 {
            b32[c as usize] = true;
        }
        let mut table = HashMap::new();
        for (i, h) in hash_parts.into_iter().enumerate() {
            table
                .entry(h.try_into().expect("32-byte hash part"))
                .or_insert(i as u32);
        }
        SkipScanner { b32, table }
    }

    /// Call `hit(offset, index)` for every match in `data`, leftmost-first, non-overlapping.
    pub fn scan(&self, data: &[u8], mut hit: impl FnMut(usize, u32)) {
        let b32 = &self.b32;
        let n = data.len();
        let mut i = 0;
        // data[i..run_end] is known to be all base32 (when run_end > i).
        let mut run_end = 0;
        while i + 32 <= n {
            if run_end < i {
                run_end = i;
            }
            if run_end < i + 32 {
                if !b32[data[i + 31] as usize] {
                    i += 32;
                    continue;
                }
                let mut k = i + 31;
                while k > run_end && b32[data[k - 1] as usize] {
                    k -= 1;
                }
                let verified_to = i + 32;
                if k > run_end {
                    // data[k - 1] is not base32: the next candidate window starts at k.
                    i = k;
                    run_end = verified_to;
                    continue;
                }
                run_end = verified_to;
            }
            let window: &[u8; 32] = data[i..i + 32].try_into().expect("32 bytes");
            if let Some(&index) = self.table.get(window) {
                hit(i, index);
                i += 32;
            } else {
                i += 1;
            }
        }
    }
}
