//! Patch lists: where, in a piece of normalized bytes, the original bytes differ.
//!
//! A patch covers a region of the normalized bytes. Restoring writes the region's original bytes
//! back: a reference's hash part ([`PatchKind::Ref`]) or bytes kept verbatim
//! ([`PatchKind::Literal`], for derived fields such as an ELF build-id). What the normalized bytes
//! hold inside a region does not matter to restore, which keeps restore exact by construction.

use crate::error::{Result, StripError};
use crate::refs::{RefTable, HASH_LEN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchKind {
    /// The hash part of reference-table entry `n` (32 bytes).
    Ref(u32),
    /// These original bytes.
    Literal(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub kind: PatchKind,
}

impl Patch {
    pub fn len(&self) -> u64 {
        match &self.kind {
            PatchKind::Ref(_) => HASH_LEN as u64,
            PatchKind::Literal(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len())
    }
}

/// Check that `patches` are sorted, non-overlapping, non-empty, inside `size` bytes and name only
/// existing references: the preconditions of [`Patcher`].
pub fn validate(patches: &[Patch], size: u64, refs: &RefTable, what: &'static str) -> Result<()> {
    let mut end = 0u64;
    for p in patches {
        let len = p.len();
        if p.offset < end || len == 0 || p.offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(StripError::PatchOutOfRange {
                offset: p.offset,
                len,
                size,
                what,
            });
        }
        if let PatchKind::Ref(index) = p.kind {
            if index as usize >= refs.len() {
                return Err(StripError::UnknownReference {
                    index: index.into(),
                    count: refs.len(),
                });
            }
        }
        end = p.end();
    }
    Ok(())
}

/// Apply a validated patch list to a stream of normalized bytes, chunk by chunk.
pub struct Patcher<'a> {
    patches: &'a [Patch],
    refs: &'a RefTable,
    /// Offset of the next byte of the stream.
    pos: u64,
    next: usize,
}

impl<'a> Patcher<'a> {
    pub fn new(patches: &'a [Patch], refs: &'a RefTable) -> Self {
        Self::starting_at(patches, refs, 0)
    }

    /// A patcher for a stream that begins at `offset` of the byte string, for random access: a
    /// read from the middle of a file patches exactly the regions it covers.
    pub fn starting_at(patches: &'a [Patch], refs: &'a RefTable, offset: u64) -> Self {
        Patcher {
            patches,
            refs,
            pos: offset,
            next: patches.partition_point(|p| p.end() <= offset),
        }
    }

    /// Overwrite, in `chunk` (the stream's next bytes), every patched region it overlaps.
    pub fn apply(&mut self, chunk: &mut [u8]) {
        let start = self.pos;
        let end = start + chunk.len() as u64;
        // Skip patches that ended before this chunk; a patch may span several chunks.
        while self.next < self.patches.len() && self.patches[self.next].end() <= start {
            self.next += 1;
        }
        let mut i = self.next;
        while i < self.patches.len() && self.patches[i].offset < end {
            let p = &self.patches[i];
            let original: &[u8] = match &p.kind {
                PatchKind::Ref(index) => self.refs.hash_part(*index as usize),
                PatchKind::Literal(bytes) => bytes,
            };
            let from = p.offset.max(start);
            let to = p.end().min(end);
            chunk[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&original[(from - p.offset) as usize..(to - p.offset) as usize]);
            i += 1;
        }
        self.pos = end;
    }
}

/// Apply patches to a whole small buffer (entry names, symlink targets).
pub fn apply_all(bytes: &[u8], patches: &[Patch], refs: &RefTable) -> Vec<u8> {
    let mut out = bytes.to_vec();
    Patcher::new(patches, refs).apply(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patcher_started_mid_stream_matches_the_whole_stream() {
        let me = b"0000000000000000000000000000000z-me".to_vec();
        let refs = RefTable::new(&me, &[]).unwrap();
        let patches = vec![
            Patch {
                offset: 10,
                kind: PatchKind::Ref(0),
            },
            Patch {
                offset: 50,
                kind: PatchKind::Literal(b"xyz".to_vec()),
            },
        ];
        let whole = apply_all(&[b'.'; 64], &patches, &refs);
        for start in 0..64u64 {
            for end in start..=64u64 {
                let mut part = vec![b'.'; (end - start) as usize];
                Patcher::starting_at(&patches, &refs, start).apply(&mut part);
                assert_eq!(part, whole[start as usize..end as usize], "{start}..{end}");
            }
        }
    }
}
