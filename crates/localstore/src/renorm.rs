//! Reading a store file back as normalized bytes: safe opening and re-normalization of a range.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;

use refstrip_strip::{Scanner, HASH_LEN, PLACEHOLDER};
use rustix::fs::{openat, Mode, OFlags};

fn not_plain(name: &[u8]) -> bool {
    name.is_empty() || name == b"." || name == b".." || name.contains(&0) || name.contains(&b'/')
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_string())
}

/// The directory `basename/dir` below the store directory `store` (`dir` `/`-separated, empty
/// for the store path itself), following no symlink on the way: every component is opened with
/// `O_NOFOLLOW | O_DIRECTORY`, so a path whose directory was swapped for a symlink out of the
/// store fails.
pub fn open_dir_beneath(store: &File, basename: &[u8], dir: &[u8]) -> io::Result<File> {
    let mut names = vec![basename];
    if !dir.is_empty() {
        names.extend(dir.split(|&b| b == b'/'));
    }
    if names.iter().any(|n| not_plain(n)) {
        return Err(bad("not a plain name"));
    }
    let mut at: Option<File> = None;
    for name in names {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::DIRECTORY;
        let fd = openat(
            at.as_ref().unwrap_or(store),
            OsStr::from_bytes(name),
            flags,
            Mode::empty(),
        )?;
        at = Some(File::from(fd));
    }
    Ok(at.expect("at least one component"))
}

/// The regular file `name` in the directory `dir`, not following a symlink, and only if it has
/// `size` bytes.
pub fn open_in(dir: &File, name: &[u8], size: u64) -> io::Result<File> {
    if not_plain(name) {
        return Err(bad("not a plain name"));
    }
    // NONBLOCK: opening a FIFO planted in the store must not hang; it has no effect on files.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let file = File::from(openat(dir, OsStr::from_bytes(name), flags, Mode::empty())?);
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
    let len = (end - start) as usize;
    // Read into spare capacity (no zeroing first), normalize in place, keep only the range.
    let mut window = Vec::with_capacity(len);
    let mut reader: &File = file;
    reader.seek(SeekFrom::Start(start))?;
    reader.take(len as u64).read_to_end(&mut window)?;
    if window.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut found = Vec::new();
    scanner.find(&window, |at, _| found.push(at));
    for at in found {
        window[at..at + HASH_LEN].copy_from_slice(&PLACEHOLDER);
    }
    let from = (range.start - start) as usize;
    window.copy_within(from..from + (range.end - range.start) as usize, 0);
    window.truncate((range.end - range.start) as usize);
    zero_in(&mut window, range, zero);
    Ok(window)
}

/// Bytes read on either side of a range so that a reference overlapping its edge is found.
const MARGIN: u64 = (HASH_LEN - 1) as u64;

/// Zero the part of `zero` (file offsets) that lies in `out`, the normalized bytes `range`.
fn zero_in(out: &mut [u8], range: Range<u64>, zero: Option<Range<u64>>) {
    if let Some(zero) = zero {
        let (zs, ze) = (zero.start.max(range.start), zero.end.min(range.end));
        if zs < ze {
            out[(zs - range.start) as usize..(ze - range.start) as usize].fill(0);
        }
    }
}
