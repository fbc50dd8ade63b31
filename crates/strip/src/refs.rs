//! The reference table: which 32-character hash parts get replaced, and by what.

use crate::error::{Result, StripError};

/// Length of a store path's hash part (160 bits in nix-base32) in Nix and Guix alike.
pub const HASH_LEN: usize = 32;

/// What every reference's hash part becomes in normalized content. `e` is not in the nix-base32
/// alphabet, so a placeholder can never be mistaken for a real hash (it is also what nixpkgs'
/// `nuke-refs` writes; restore patches only recorded offsets, so pre-existing placeholders are safe).
pub const PLACEHOLDER: [u8; HASH_LEN] = [b'e'; HASH_LEN];

/// The store path being stripped (index 0) followed by its references, as basenames
/// (`<hash>-<name>`). Patches refer to entries by index, so normalized content and patch lists are
/// independent of the hashes while the table carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTable {
    basenames: Vec<Vec<u8>>,
}

impl RefTable {
    /// Build the table for `self_basename` and its `references` (from the narinfo; a self-reference
    /// among them is folded into index 0).
    pub fn new(self_basename: &[u8], references: &[Vec<u8>]) -> Result<Self> {
        let mut basenames = vec![self_basename.to_vec()];
        for r in references {
            if r != self_basename && !basenames.contains(r) {
                basenames.push(r.clone());
            }
        }
        for b in &basenames {
            check_basename(b)?;
        }
        Ok(RefTable { basenames })
    }

    pub fn len(&self) -> usize {
        self.basenames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.basenames.is_empty()
    }

    pub fn basename(&self, index: usize) -> &[u8] {
        &self.basenames[index]
    }

    pub fn basenames(&self) -> &[Vec<u8>] {
        &self.basenames
    }

    pub fn hash_part(&self, index: usize) -> &[u8] {
        &self.basenames[index][..HASH_LEN]
    }

    pub(crate) fn hash_parts(&self) -> impl Iterator<Item = &[u8]> {
        self.basenames.iter().map(|b| &b[..HASH_LEN])
    }
}

fn check_basename(b: &[u8]) -> Result<()> {
    let ok = b.len() > HASH_LEN + 1
        && b[HASH_LEN] == b'-'
        && b[..HASH_LEN].iter().all(|c| NIX_BASE32.contains(c));
    if ok {
        Ok(())
    } else {
        Err(StripError::BadBasename(String::from_utf8_lossy(b).into_owned()))
    }
}

const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
