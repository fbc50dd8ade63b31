//! Wire-level constants and rules shared by the reader and the writer.

use crate::error::{show, NarError};

pub(crate) const MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name accepted. Linux allows 255 bytes; macOS names can be up to 765 UTF-8 bytes plus
/// Nix's case-hack suffix, so the bound is generous but still keeps allocations small.
pub const MAX_NAME_LEN: u64 = 4096;
/// Longest symlink target accepted (Linux's `PATH_MAX` is 4096; leave room for other systems).
pub const MAX_TARGET_LEN: u64 = 65536;
/// Deepest directory nesting accepted; real trees are bounded by `PATH_MAX` long before this.
pub const MAX_DEPTH: usize = 4096;

pub(crate) fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// Check an entry name the way Nix does when it parses a NAR.
pub fn validate_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("`.` and `..` are not allowed");
    }
    if name.contains(&b'/') {
        return Err("contains `/`");
    }
    if name.contains(&0) {
        return Err("contains NUL");
    }
    Ok(())
}

pub(crate) fn check_entry(
    offset: u64,
    name: &[u8],
    previous: Option<&[u8]>,
) -> Result<(), NarError> {
    validate_name(name).map_err(|reason| NarError::BadName {
        offset,
        name: show(name),
        reason,
    })?;
    if let Some(previous) = previous {
        if name <= previous {
            return Err(NarError::Unsorted {
                offset,
                name: show(name),
                previous: show(previous),
            });
        }
    }
    Ok(())
}
