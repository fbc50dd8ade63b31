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
    ///
    /// References are ordered by name, then hash: narinfos list them by hash, which a rebuild
    /// reshuffles, while names usually survive it, so patch lists stay identical across rebuilds.
    pub fn new(self_basename: &[u8], references: &[Vec<u8>]) -> Result<Self> {
        let mut others: Vec<Vec<u8>> = references
            .iter()
            .filter(|r| *r != self_basename)
            .cloned()
            .collect();
        for b in std::iter::once(self_basename).chain(others.iter().map(Vec::as_slice)) {
            check_basename(b)?;
        }
        others.sort_by(|a, b| {
            (&a[HASH_LEN..], &a[..HASH_LEN]).cmp(&(&b[HASH_LEN..], &b[..HASH_LEN]))
        });
        others.dedup();
        let mut basenames = vec![self_basename.to_vec()];
        basenames.extend(others);
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

/// Nix's own rules, via the one validator every decoder uses: a basename in the table becomes a
/// directory name under ROOT on restore, so `<hash>-x/../../victim` must never get this far.
pub(crate) fn check_basename(b: &[u8]) -> Result<()> {
    refstrip_nix::check_base_name(b)
        .map(drop)
        .map_err(|e| StripError::BadBasename(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_canonical_whatever_the_narinfo_order() {
        let me = b"0000000000000000000000000000000z-me".to_vec();
        let zlib_old = b"1111111111111111111111111111111a-zlib".to_vec();
        let bash = b"2222222222222222222222222222222b-bash".to_vec();
        let zlib_new = b"00000000000000000000000000000001-zlib".to_vec();
        let a = RefTable::new(&me, &[zlib_old.clone(), bash.clone(), me.clone()]).unwrap();
        let b = RefTable::new(&me, &[bash.clone(), zlib_old.clone()]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.basenames(), &[me.clone(), bash.clone(), zlib_old]);
        // A rebuild that changes zlib's hash keeps zlib's index.
        let c = RefTable::new(&me, &[zlib_new.clone(), bash]).unwrap();
        assert_eq!(c.basename(2), zlib_new.as_slice());
        assert!(RefTable::new(b"short-me", &[]).is_err());
        assert!(RefTable::new(&me, &[b"0000000000000000000000000000000e-bad".to_vec()]).is_err());
        // Names follow Nix's rules too (issue 17: a traversal after a valid hash part).
        for bad in [
            &b"0000000000000000000000000000000z-zlib-1.2.13/../../../../../victim"[..],
            b"0000000000000000000000000000000z-zlib/lib",
            b"0000000000000000000000000000000z-..",
            b"0000000000000000000000000000000z-.",
            b"0000000000000000000000000000000z-a\0",
        ] {
            assert!(RefTable::new(bad, &[]).is_err());
            assert!(RefTable::new(&me, &[bad.to_vec()]).is_err());
        }
    }
}
