//! Reading a store file back as normalized bytes: safe opening and re-normalization of a range.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use refstrip_strip::{Scanner, HASH_LEN};
use rustix::fs::{openat, Mode, OFlags};

/// Open `basename/rel` below the store directory `store`, following no symlink on the way (every
/// component is opened with `O_NOFOLLOW`, so a path whose directory was swapped for a symlink out
/// of the store fails), and only if the result is a regular file of `size` bytes. `rel` is the
/// file's path inside the store path, `/`-separated; empty when the store path is the file itself.
pub fn open_beneath(store: &File, basename: &[u8], rel: &[u8], size: u64) -> io::Result<File> {
    let mut names = vec![basename];
    if !rel.is_empty() {
        names.extend(rel.split(|&b| b == b'/'));
    }
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
    if names
        .iter()
        .any(|n| n.is_empty() || *n == b"." || *n == b".." || n.contains(&0))
    {
        return Err(bad("not a plain name"));
    }
    let last = names.len() - 1;
    let mut dir: Option<File> = None;
    for (i, name) in names.iter().enumerate() {
        let at: &File = dir.as_ref().unwrap_or(store);
        let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // NONBLOCK: opening a FIFO planted in the store must not hang; it has no effect on files.
        flags |= if i == last {
            OFlags::NONBLOCK
        } else {
            OFlags::DIRECTORY
        };
        let fd = openat(at, OsStr::from_bytes(name), flags, Mode::empty())?;
        dir = Some(File::from(fd));
    }
    let file = dir.expect("at least one component");
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file"));
    }
    if meta.len() != size {
        return Err(bad("the file's size changed"));
    }
    Ok(file)
}

/// The normalized bytes `range` of a file whose original contents are read from `file` (of
/// `file_size` bytes): references replaced by the scanner, and `zero` (the ELF build-id, in file
/// offsets, as recorded when the file was indexed) zeroed.
///
/// Only the range plus `HASH_LEN - 1` bytes on either side is read: a reference overlapping an edge
/// of the range lies within them. Starting the scan mid-file gives strip's leftmost-first matches
/// except where hash-like runs overlap each other; the caller's BLAKE3 check turns such a case
/// (never seen in real files) into a miss, never into wrong bytes.
pub fn renormalize(
    file: &File,
    file_size: u64,
    range: Range<u64>,
    scanner: &Scanner,
    zero: Option<Range<u64>>,
) -> io::Result<Vec<u8>> {
    if range.start > range.end || range.end > file_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range outside the file",
        ));
    }
    let start = range.start.saturating_sub(MARGIN);
    let end = range.end.saturating_add(MARGIN).min(file_size);
    let mut window = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut window, start)?;
    Ok(renormalize_window(&window, start, range, scanner, zero))
}

/// Bytes read on either side of a range so that a reference overlapping its edge is found.
const MARGIN: u64 = (HASH_LEN - 1) as u64;

/// [`renormalize`] of bytes in memory: `window` is the file's bytes from offset `at` on, and holds
/// `range` plus `HASH_LEN - 1` bytes on either side (fewer only at the file's start and end).
pub fn renormalize_window(
    window: &[u8],
    at: u64,
    range: Range<u64>,
    scanner: &Scanner,
    zero: Option<Range<u64>>,
) -> Vec<u8> {
    let (normalized, _) = scanner.strip_bytes(window);
    let from = (range.start - at) as usize;
    let mut out = normalized[from..from + (range.end - range.start) as usize].to_vec();
    if let Some(zero) = zero {
        let (zs, ze) = (zero.start.max(range.start), zero.end.min(range.end));
        if zs < ze {
            out[(zs - range.start) as usize..(ze - range.start) as usize].fill(0);
        }
    }
    out
}
