//! Files copied from the local Nix store instead of written from objects.
//!
//! After a rebuild most large files a path needs are already on disk in some valid path, their
//! normalized contents identical and only the references different. Such a file is copied by the
//! kernel into an unnamed file (`O_TMPFILE`) in the store directory: a `FICLONE` reflink where the
//! file system shares extents (btrfs, XFS), else `copy_file_range`. Restore then gets the copy's
//! bytes (slices of it, mapped) as the object's: where they differ from it, at the local path's
//! references and build-id, they differ exactly where the object has placeholders and zeros,
//! which this path's own patches overwrite, so restore's output is the path's file. The tree
//! writer links the copy into place and rewrites only those patched ranges; they are never the
//! bytes restore reads from the mapping.
//!
//! Nothing here is checked by itself: the NAR hash restore computes covers every byte of the copy
//! as the file on disk will hold it (the same mapped bytes, patched as they are written). A local
//! file altered on disk, or one whose references are not where this path's are, fails that check,
//! and the path is written again through the checking layers, which read nothing unverified.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use refstrip_read::objects::NearFile;
use refstrip_strip::Patch;

/// A copy of a local file, for the tree writer.
pub struct LocalCopy {
    /// Unnamed, in the store directory's file system, holding the local file's bytes.
    pub file: File,
    /// Byte ranges to overwrite with the restored bytes (this path's patches): everywhere else
    /// the copy is the file, if the path's NarHash check passes.
    pub rewrite: Vec<Range<u64>>,
}

/// What copying did, for the report.
#[derive(Debug, Default)]
pub struct CopyCounters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Of those, reflinked (no bytes written).
    pub reflinked: AtomicU64,
    /// Local files that could not be copied, or were copied for a path that then failed its
    /// NarHash check and was written again from checked objects: written from objects instead.
    pub refused: AtomicU64,
}

impl CopyCounters {
    /// Add what one path's copies did: to the copies if the path was written from them, else
    /// to the refused ones.
    pub fn add(&self, path: &CopyCounters, used: bool) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if used {
            self.files.fetch_add(get(&path.files), Ordering::Relaxed);
            self.bytes.fetch_add(get(&path.bytes), Ordering::Relaxed);
            self.reflinked
                .fetch_add(get(&path.reflinked), Ordering::Relaxed);
            self.refused
                .fetch_add(get(&path.refused), Ordering::Relaxed);
        } else {
            let all = get(&path.files) + get(&path.refused);
            self.refused.fetch_add(all, Ordering::Relaxed);
        }
    }
}

/// Bytes of a copy mapped and handed out at a time.
pub const WINDOW: u64 = 4 << 20;
/// A file with more patched bytes than this (a text full of references) is not worth copying:
/// much of it would be rewritten.
const MAX_REWRITTEN: u64 = 64 << 10;

/// Copy `local` into an unnamed file in `store` with `mode`, to be patched with `patches`.
/// `None` when it is not worth copying or cannot be copied.
pub fn copy_local(
    store: &File,
    local: &NearFile,
    mode: u32,
    patches: &[Patch],
    counters: &CopyCounters,
) -> Option<LocalCopy> {
    let rewrite = merge(patches.iter().map(|p| p.offset..p.end()));
    if rewrite.iter().map(|r| r.end - r.start).sum::<u64>() > MAX_REWRITTEN {
        return None;
    }
    let Ok((file, reflinked)) = copy_file(store, &local.file, local.size, mode) else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    counters.files.fetch_add(1, Ordering::Relaxed);
    counters.bytes.fetch_add(local.size, Ordering::Relaxed);
    if reflinked {
        counters.reflinked.fetch_add(1, Ordering::Relaxed);
    }
    Some(LocalCopy { file, rewrite })
}

/// Part of a file mapped read-only (shared, so it reads the file's page cache without copying).
/// Only unnamed copies this process made are mapped: nobody else can truncate them under it.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// Where the first byte of the range is in the (page-aligned) mapping.
    skip: usize,
}

// SAFETY: the mapping is read-only memory owned by this value until it is dropped.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the bytes `range` of `file` (non-empty, inside the file).
    pub fn new(file: &File, range: Range<u64>) -> io::Result<Mapping> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let base = range.start / page * page;
        let len = (range.end - base) as usize;
        // SAFETY: a fresh read-only shared mapping of a range of an open file; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                base as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr,
            len,
            skip: (range.start - base) as usize,
        })
    }

    /// The mapped bytes of the range.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `ptr` for the lifetime of `self`.
        let all = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) };
        &all[self.skip..]
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Sorted, overlapping or touching ranges merged.
fn merge(ranges: impl Iterator<Item = Range<u64>>) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = ranges.filter(|r| !r.is_empty()).collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// An unnamed file in `dir` holding `len` bytes of `from`: reflinked if the file system can,
/// else copied in the kernel. Returns whether it was reflinked.
fn copy_file(dir: &File, from: &File, len: u64, mode: u32) -> io::Result<(File, bool)> {
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: FICLONE takes the source descriptor as its argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok((file, true));
    }
    let mut done = 0u64;
    while done < len {
        let (mut off_in, mut off_out) = (done as libc::loff_t, done as libc::loff_t);
        // SAFETY: valid descriptors and offsets we own.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                file.as_raw_fd(),
                &mut off_out,
                (len - done) as usize,
                0,
            )
        };
        match n {
            n if n > 0 => done += n as u64,
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => return Err(io::Error::last_os_error()),
        }
    }
    Ok((file, false))
}

/// Give the unnamed `file` the name `name` in directory `dir` (it must not exist).
pub fn link_into(file: &File, dir: libc::c_int, name: &CString) -> io::Result<()> {
    // Through /proc, which needs no capability (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
    let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    // SAFETY: NUL-terminated paths and valid descriptors; linkat never replaces a name.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc.as_ptr(),
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOENT) {
        return Err(e);
    }
    // No /proc mounted: the capability route.
    // SAFETY: as above, with the descriptor itself as the source.
    let linked = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir,
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_ranges() {
        assert_eq!(
            merge([5..9, 0..2, 2..3, 8..12, 20..20].into_iter()),
            vec![0..3, 5..12]
        );
    }
}
