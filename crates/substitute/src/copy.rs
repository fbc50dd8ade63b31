//! Files copied from the local Nix store instead of written from objects.
//!
//! After a rebuild most large files a path needs are already on disk in some valid path, their
//! normalized contents identical and only the references different. Such a file is copied by the
//! kernel into an unnamed file (`O_TMPFILE`) in the store directory: a `FICLONE` reflink where the
//! file system shares extents (btrfs, XFS), else `copy_file_range`. The **copy** is then read back
//! and normalized as the local file was when it was indexed, and used only if that is the object
//! the path needs (BLAKE3): a store file modified on disk is never trusted, just not copied.
//! Restore then gets the object's bytes as usual (for the NAR hash: slices of the copy, mapped,
//! with the few bytes where it differs put back), and the tree writer links the copy into place
//! and rewrites only the bytes where it differs: the local path's references and build-id, and
//! the path's own patches. Those are never the bytes restore reads from the mapping.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use refstrip_read::objects::NearFile;
use refstrip_strip::{ContentDigest, Patch};

/// A checked copy of a local file, for the tree writer.
pub struct LocalCopy {
    /// Unnamed, in the store directory's file system, holding the local file's bytes.
    pub file: File,
    /// Byte ranges to overwrite with the restored bytes: everywhere else the copy is right.
    pub rewrite: Vec<Range<u64>>,
}

/// What copying did, for the report.
#[derive(Debug, Default)]
pub struct CopyCounters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Of those, reflinked (no bytes written).
    pub reflinked: AtomicU64,
    /// Local files that did not check out (modified, or could not be copied): written instead.
    pub refused: AtomicU64,
}

/// Bytes of a copy mapped, normalized and handed out at a time.
pub const WINDOW: u64 = 4 << 20;
/// A local file differing from its normalized form in more bytes than this (a text full of
/// references) is not worth copying: most of it would be rewritten.
const MAX_DIFFERENT: u64 = 64 << 10;

/// A checked copy and where the local file differs from its normalized form.
pub struct Checked {
    pub copy: LocalCopy,
    /// (offset, normalized bytes) where the copy's bytes are not the object's, in order.
    pub differs: Vec<(u64, Vec<u8>)>,
}

/// Copy `local` into an unnamed file in `store` with `mode`, and check that the copy normalizes
/// to `digest`. `None` when it cannot be copied or does not check out.
pub fn copy_checked(
    store: &File,
    local: &NearFile,
    digest: &ContentDigest,
    mode: u32,
    patches: &[Patch],
    counters: &CopyCounters,
) -> Option<Checked> {
    let checked = check(store, local, digest, mode);
    let Some((copy, differs, reflinked)) = checked else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let rewrite = merge(
        differs
            .iter()
            .map(|(at, bytes)| *at..*at + bytes.len() as u64)
            .chain(patches.iter().map(|p| p.offset..p.end())),
    );
    counters.files.fetch_add(1, Ordering::Relaxed);
    counters.bytes.fetch_add(local.size, Ordering::Relaxed);
    if reflinked {
        counters.reflinked.fetch_add(1, Ordering::Relaxed);
    }
    Some(Checked {
        copy: LocalCopy {
            file: copy,
            rewrite,
        },
        differs,
    })
}

type Differs = Vec<(u64, Vec<u8>)>;

fn check(
    store: &File,
    local: &NearFile,
    digest: &ContentDigest,
    mode: u32,
) -> Option<(File, Differs, bool)> {
    let (copy, reflinked) = copy_file(store, &local.file, local.size, mode).ok()?;
    // The copy is what is read back (not the local file, which could change meanwhile).
    let mut hasher = blake3::Hasher::new();
    let mut differs = Vec::new();
    let mut different = 0u64;
    let mut at = 0;
    while at < local.size {
        let end = (at + WINDOW).min(local.size);
        let margin = NearFile::MARGIN;
        let window = Mapping::new(
            &copy,
            at.saturating_sub(margin)..(end + margin).min(local.size),
        )
        .ok()?;
        let normalized = (local.normalize)(window.bytes(), window.start, at..end);
        let original = window.range(at..end);
        if normalized.len() != original.len() {
            return None;
        }
        hasher.update(&normalized);
        for run in runs_differing(original, &normalized) {
            different += run.len() as u64;
            differs.push((at + run.start as u64, normalized[run].to_vec()));
        }
        if different > MAX_DIFFERENT {
            return None;
        }
        at = end;
    }
    (ContentDigest(*hasher.finalize().as_bytes()) == *digest).then_some((copy, differs, reflinked))
}

/// Part of a file mapped read-only (shared, so it reads the file's page cache without copying).
/// Only unnamed copies this process made are mapped: nobody else can truncate them under it.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// The file offset of the first byte of [`bytes`](Self::bytes).
    pub start: u64,
    /// Where that byte is in the (page-aligned) mapping.
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
            start: range.start,
            skip: (range.start - base) as usize,
        })
    }

    /// The mapped bytes from [`start`](Self::start) on.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `ptr` for the lifetime of `self`.
        let all = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) };
        &all[self.skip..]
    }

    /// The bytes of file range `range`, which lies within the mapping.
    pub fn range(&self, range: Range<u64>) -> &[u8] {
        &self.bytes()[(range.start - self.start) as usize..(range.end - self.start) as usize]
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

/// The byte ranges where `a` and `b` (of one length) differ.
fn runs_differing(a: &[u8], b: &[u8]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < a.len() {
        // Compare in blocks first: differences are rare.
        let block = (i + 4096).min(a.len());
        if a[i..block] == b[i..block] {
            i = block;
            continue;
        }
        while i < block {
            if a[i] != b[i] {
                let start = i;
                while i < a.len() && a[i] != b[i] {
                    i += 1;
                }
                runs.push(start..i);
            } else {
                i += 1;
            }
        }
    }
    runs
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
    fn differing_runs_and_merged_ranges() {
        let a = vec![7u8; 10_000];
        let mut b = a.clone();
        b[0] = 1;
        b[4095..4098].fill(2);
        b[9999] = 3;
        assert_eq!(runs_differing(&a, &b), vec![0..1, 4095..4098, 9999..10_000]);
        assert_eq!(runs_differing(&a, &a), Vec::<Range<usize>>::new());
        assert_eq!(
            merge([5..9, 0..2, 2..3, 8..12, 20..20].into_iter()),
            vec![0..3, 5..12]
        );
    }
}
