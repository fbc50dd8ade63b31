//! Writing a restored tree into a store directory, with Nix's canonical metadata.
//!
//! Everything is created relative to open directory descriptors (`mkdirat`, `openat`, `symlinkat`)
//! with `O_EXCL`/`O_NOFOLLOW`, so no name can lead outside the tree being written, not even through
//! a symlink the tree itself contains or one already sitting where an entry goes. Names are checked
//! again here (no `/`, NUL, `.` or `..`) although the manifest decoder rejects them already.
//!
//! Syscalls per entry, the cost that dominates small files: a regular file is `openat` (created
//! with its final mode), `write`, `futimens` (mtime 1) and `close`; a symlink `symlinkat` and
//! `utimensat`; a directory `mkdirat`, `openat`, and at its end `fchmod` 0555, `futimens`, `close`.
//! Modes are Nix's canonical ones (0444, 0555 for executables and directories) and every mtime is 1,
//! as `canonicalisePathMetaData` leaves them; atimes are left alone.
//!
//! A file without patches is exactly one stored object, so with [`Links`] it is one `linkat` from
//! a copy an earlier run shared in `<store>/.links`, as Nix's `auto-optimise-store` shares inodes;
//! Nix's garbage collector removes an entry there once its link count drops to 1.

use std::ffi::CString;
use std::fs::{File, FileTimes, Permissions};
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use std::collections::HashMap;
use std::sync::Mutex;

use refstrip_nar::{Event, NarWriter};
use refstrip_nix::HashingWriter;
use refstrip_strip::{Bytes, ContentDigest, RestoreVisitor};

use crate::copy::link_into;
use crate::unchecked::CopySlot;

/// Nix's canonical mtime for store files.
pub const STORE_MTIME: u64 = 1;

fn cstr(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("refusing entry name {:?}", String::from_utf8_lossy(name)),
        ));
    }
    Ok(CString::new(name).expect("no NUL"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn canonical_times() -> FileTimes {
    FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(STORE_MTIME))
}

/// Shared copies of unpatched files in Nix's own `<store>/.links` (named by the file's NAR hash,
/// so `nix-store --optimise`, `--verify` and the garbage collector treat them as theirs), and a
/// map from stored object to that name, kept in `links.sqlite` beside Nix's state: the name is
/// known only after the bytes were hashed, the object before they are read.
pub struct Links {
    dir: File,
    db: Mutex<rusqlite::Connection>,
    known: HashMap<(ContentDigest, bool), String>,
}

/// A file written by this run that [`Links::publish`] can share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shareable {
    /// Below the path's top directory (empty if the path is this file).
    pub rel: std::path::PathBuf,
    pub digest: ContentDigest,
    pub executable: bool,
    /// Its `.links` name: nix-base32 SHA-256 of the file's NAR serialisation.
    pub name: String,
}

impl Links {
    /// Open (creating them if needed) `<real_store>/.links` and `<state_dir>/links.sqlite`,
    /// looking up the copies of the objects in `wanted`.
    pub fn open<'a>(
        real_store: &std::path::Path,
        state_dir: &std::path::Path,
        wanted: impl IntoIterator<Item = &'a ContentDigest>,
    ) -> io::Result<Links> {
        let path = real_store.join(".links");
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(state_dir)?;
        let sql = |e: rusqlite::Error| {
            io::Error::other(format!("{}: {e}", state_dir.join("links.sqlite").display()))
        };
        let db = rusqlite::Connection::open(state_dir.join("links.sqlite")).map_err(sql)?;
        db.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(sql)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS links (digest BLOB NOT NULL, executable INTEGER NOT NULL, \
             name TEXT NOT NULL, PRIMARY KEY (digest, executable)) WITHOUT ROWID",
        )
        .map_err(sql)?;
        // Only the objects this run may link: the map grows with the store, a run does not.
        let mut known = HashMap::new();
        {
            let mut stmt = db
                .prepare("SELECT executable, name FROM links WHERE digest = ?1")
                .map_err(sql)?;
            for digest in wanted {
                let rows = stmt
                    .query_map([&digest.0[..]], |r| {
                        Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(sql)?;
                for row in rows {
                    let (executable, name) = row.map_err(sql)?;
                    known.insert((*digest, executable), name);
                }
            }
        }
        Ok(Links {
            dir: File::open(path)?,
            db: Mutex::new(db),
            known,
        })
    }

    /// Share the files written under `dest` (complete and durable): hard-link each into `.links`
    /// unless an entry of that name exists (its contents are the same by their name), and
    /// remember its name. Best effort: a file that cannot be shared is only not shared.
    /// Returns how many entries were added.
    pub fn publish<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a std::path::Path, &'a Shareable)>,
    ) -> io::Result<u64> {
        let mut added = 0;
        let mut db = self.db.lock().expect("poisoned");
        let tx = db.transaction().map_err(io::Error::other)?;
        for (dest, f) in files {
            let Ok(from) = CString::new(dest.join(&f.rel).into_os_string().into_encoded_bytes())
            else {
                continue;
            };
            let to = CString::new(f.name.as_str()).expect("base32");
            // SAFETY: NUL-terminated paths and a valid directory descriptor.
            let linked = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    self.dir.as_raw_fd(),
                    to.as_ptr(),
                    0,
                )
            };
            if linked == 0 {
                added += 1;
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                continue;
            }
            tx.execute(
                "INSERT OR REPLACE INTO links (digest, executable, name) VALUES (?1, ?2, ?3)",
                rusqlite::params![&f.digest.0[..], f.executable, f.name],
            )
            .map_err(io::Error::other)?;
        }
        tx.commit().map_err(io::Error::other)?;
        Ok(added)
    }
}

/// A regular file announced by an event but not created yet: it may become a hard link.
struct PendingFile {
    dir: RawFd,
    name: CString,
    executable: bool,
    size: u64,
}

/// An unpatched file being written: its NAR serialisation is hashed for its `.links` name.
struct Hashing {
    nar: NarWriter<HashingWriter<io::Sink>>,
    rel: std::path::PathBuf,
    digest: ContentDigest,
    executable: bool,
}

/// Writes the tree reported by `refstrip_strip::restore` under `name` in the directory `parent`.
pub struct TreeWriter<'l> {
    parent: RawFd,
    top: CString,
    /// Open directories, innermost last, and their names below the top.
    dirs: Vec<File>,
    dir_names: Vec<Vec<u8>>,
    pending: Option<PendingFile>,
    /// The regular file being written.
    file: Option<File>,
    /// Whether the umask can strip bits from 0444/0555, so modes must be set explicitly.
    fix_modes: bool,
    links: Option<&'l Links>,
    hashing: Option<Hashing>,
    /// Unpatched files written here, to publish in [`Links`] once the tree is durable.
    pub shareable: Vec<Shareable>,
    pub files: u64,
    /// Files that are hard links to earlier copies.
    pub linked: u64,
    pub bytes: u64,
    /// Bytes of the file being written.
    file_bytes: u64,
    /// Where checked copies of local files come from ([`TreeWriter::copies_from`]), and the
    /// ranges of the file being written that differ from its copy: only those are written.
    copies: Option<CopySlot>,
    rewrite: Option<Vec<std::ops::Range<u64>>>,
}

impl<'l> TreeWriter<'l> {
    /// `parent` must stay open while the writer is used; `name` must not exist yet. With `links`,
    /// unpatched files are hard-linked from there when a copy exists.
    pub fn new(
        parent: &impl AsRawFd,
        name: &[u8],
        links: Option<&'l Links>,
    ) -> io::Result<TreeWriter<'l>> {
        Ok(TreeWriter {
            parent: parent.as_raw_fd(),
            top: cstr(name)?,
            dirs: Vec::new(),
            dir_names: Vec::new(),
            pending: None,
            file: None,
            fix_modes: umask_strips_modes(),
            links,
            hashing: None,
            shareable: Vec::new(),
            files: 0,
            linked: 0,
            bytes: 0,
            file_bytes: 0,
            copies: None,
            rewrite: None,
        })
    }

    /// Take the copy of a local file from `slot` when there is one (see `copy.rs`): it is linked
    /// into place, and of the file's bytes only the patched ones are written.
    pub fn copies_from(&mut self, slot: Option<CopySlot>) {
        self.copies = slot;
    }

    /// Create the announced file (its bytes follow, or it is empty).
    fn create_pending(&mut self) -> io::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mode = if p.executable { 0o555 } else { 0o444 };
        if let Some(copy) = self.copies.as_ref().and_then(|c| c.borrow_mut().take()) {
            link_into(&copy.file, p.dir, &p.name)?;
            if self.fix_modes {
                copy.file.set_permissions(Permissions::from_mode(mode))?;
            }
            self.file = Some(copy.file);
            self.rewrite = Some(copy.rewrite);
            self.file_bytes = 0;
            return Ok(());
        }
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and NUL-terminated name; the result is checked.
        let fd =
            check(unsafe { libc::openat(p.dir, p.name.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: a descriptor we just opened and own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if self.fix_modes {
            file.set_permissions(Permissions::from_mode(mode))?;
        }
        self.file = Some(file);
        self.file_bytes = 0;
        Ok(())
    }

    /// Where the next entry goes: (directory fd, name).
    fn target(&self, name: &Option<Vec<u8>>) -> io::Result<(RawFd, CString)> {
        match (name, self.dirs.last()) {
            (None, None) => Ok((self.parent, self.top.clone())),
            (Some(name), Some(dir)) => Ok((dir.as_raw_fd(), cstr(name)?)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed tree events",
            )),
        }
    }

    fn close_file(&mut self) -> io::Result<()> {
        self.create_pending()?;
        self.rewrite = None;
        if let Some(file) = self.file.take() {
            file.set_times(canonical_times())?;
        }
        if let Some(h) = self.hashing.take() {
            let (hash, _, _) = h.nar.finish().map_err(io::Error::other)?.finish();
            let name = refstrip_nix::base32::encode(hash.as_bytes());
            self.shareable.push(Shareable {
                rel: h.rel,
                digest: h.digest,
                executable: h.executable,
                name,
            });
        }
        Ok(())
    }

    /// Finish the last file; call after `restore` returned `Ok`.
    pub fn finish(&mut self) -> io::Result<()> {
        self.close_file()?;
        if !self.dirs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tree ended inside a directory",
            ));
        }
        Ok(())
    }
}

impl RestoreVisitor for TreeWriter<'_> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.close_file()?;
        match event {
            Event::Directory { name } => {
                let (dir, name) = self.target(name)?;
                // SAFETY: valid descriptor and NUL-terminated name; the result is checked.
                check(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) })?;
                let fd = check(unsafe {
                    libc::openat(
                        dir,
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                })?;
                // SAFETY: a descriptor we just opened and own.
                self.dirs
                    .push(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
                if self.dirs.len() > 1 {
                    self.dir_names.push(name.into_bytes());
                }
            }
            Event::File {
                name,
                executable,
                size,
            } => {
                let (dir, name) = self.target(name)?;
                self.pending = Some(PendingFile {
                    dir,
                    name,
                    executable: *executable,
                    size: *size,
                });
                self.files += 1;
            }
            Event::Symlink { name, target } => {
                let (dir, name) = self.target(name)?;
                let target = CString::new(target.as_slice()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "symlink target contains NUL")
                })?;
                let times = [
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    libc::timespec {
                        tv_sec: STORE_MTIME as libc::time_t,
                        tv_nsec: 0,
                    },
                ];
                // SAFETY: as above; `times` has the two entries utimensat reads.
                check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) })?;
                check(unsafe {
                    libc::utimensat(
                        dir,
                        name.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            Event::EndDirectory => {
                let dir = self.dirs.pop().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "unbalanced directory end")
                })?;
                dir.set_permissions(Permissions::from_mode(0o555))?;
                dir.set_times(canonical_times())?;
                if !self.dirs.is_empty() {
                    self.dir_names.pop();
                }
            }
        }
        Ok(())
    }

    fn unpatched(&mut self, digest: &ContentDigest) -> io::Result<bool> {
        let (Some(links), Some(p)) = (self.links, &self.pending) else {
            return Ok(false);
        };
        if let Some(name) = links.known.get(&(*digest, p.executable)) {
            let from = CString::new(name.as_str()).expect("base32");
            // SAFETY: valid descriptors and NUL-terminated names. linkat never replaces or
            // follows what is at the new name.
            if unsafe {
                libc::linkat(
                    links.dir.as_raw_fd(),
                    from.as_ptr(),
                    p.dir,
                    p.name.as_ptr(),
                    0,
                )
            } == 0
            {
                self.pending = None;
                self.linked += 1;
                return Ok(true);
            }
        }
        // No copy (or it is gone, has too many links, is on another file system): write this
        // one, hashing it as Nix names `.links` entries, and offer it once it is durable.
        let mut rel: std::path::PathBuf = self
            .dir_names
            .iter()
            .map(|n| std::ffi::OsStr::from_bytes(n))
            .collect();
        if !self.dirs.is_empty() {
            rel.push(std::ffi::OsStr::from_bytes(p.name.as_bytes()));
        }
        let mut nar = NarWriter::new(HashingWriter::new(io::sink()));
        nar.file(None, p.executable, p.size)
            .map_err(io::Error::other)?;
        self.hashing = Some(Hashing {
            nar,
            rel,
            digest: *digest,
            executable: p.executable,
        });
        Ok(false)
    }

    fn contents(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_parts(&mut [IoSlice::new(data)])
    }

    /// A piece split around its patches is one `writev`, not one `write` per part.
    fn contents_parts(&mut self, parts: &[Bytes]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        self.write_parts(&mut slices)
    }
}

impl TreeWriter<'_> {
    fn write_parts(&mut self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.create_pending()?;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if let Some(h) = &mut self.hashing {
            for part in parts.iter() {
                h.nar.write_contents(part).map_err(io::Error::other)?;
            }
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "contents outside a file"))?;
        if let Some(rewrite) = &self.rewrite {
            // A copy: write these bytes only where they differ from it.
            let mut at = self.file_bytes;
            for part in parts.iter() {
                let end = at + part.len() as u64;
                let first = rewrite.partition_point(|r| r.end <= at);
                for r in rewrite[first..].iter().take_while(|r| r.start < end) {
                    let (from, to) = (r.start.max(at), r.end.min(end));
                    file.write_all_at(&part[(from - at) as usize..(to - at) as usize], from)?;
                }
                at = end;
            }
            self.bytes += len;
            self.file_bytes += len;
            return Ok(());
        }
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            let n = file.write_vectored(parts)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        self.bytes += len;
        self.file_bytes += len;
        Ok(())
    }
}

fn umask_strips_modes() -> bool {
    // umask(2) can only be read by setting it; put it back at once.
    // SAFETY: umask has no failure modes.
    let mask = unsafe { libc::umask(0o022) };
    unsafe { libc::umask(mask) };
    mask & 0o555 != 0
}

/// Remove a tree that may contain read-only directories, never following symlinks, by directory
/// descriptor (see `remove_dir_at`): depth is not limited by `PATH_MAX` or the fd limit.
/// A missing `path` is not an error.
pub fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    // `Path` hides a trailing `/.`, which would make the parent/name split below wrong.
    let raw = path.as_os_str().as_bytes();
    if raw == b"." || raw.ends_with(b"/.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a path ending in '.'",
        ));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    let name = path
        .file_name()
        .filter(|n| *n != "..")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no entry name to remove"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let parent = File::open(parent)?;
    remove_dir_at(parent.as_raw_fd(), &cstr(name.as_bytes())?)
}

/// Open directory `name` in `dir` without following a symlink, made writable so its entries can
/// be unlinked (store directories are 0555).
fn open_dir_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    let fd = check(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) })?;
    Ok(fd)
}

fn dev_ino(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

/// Unlink every non-directory in `dir`; return the name of one subdirectory left, if any.
fn clear_files(dir: RawFd) -> io::Result<Option<CString>> {
    // readdir consumes its own descriptor (closedir closes it), so give it a duplicate.
    let dup = check(unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) })?;
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    struct Dir(*mut libc::DIR);
    impl Drop for Dir {
        fn drop(&mut self) {
            unsafe { libc::closedir(self.0) };
        }
    }
    let stream = Dir(stream);
    let mut subdir = None;
    loop {
        // readdir signals errors only through errno.
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir(stream.0) };
        if entry.is_null() {
            let errno = io::Error::last_os_error();
            if errno.raw_os_error() != Some(0) {
                return Err(errno);
            }
            return Ok(subdir);
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let is_dir = match unsafe { (*entry).d_type } {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                check(unsafe {
                    libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
                })?;
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        if is_dir {
            subdir.get_or_insert_with(|| name.to_owned());
        } else {
            check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })?;
        }
    }
}

/// Remove directory `name` in `top` and everything below it, by descriptor: each level is opened
/// relative to the one above with `O_NOFOLLOW` (a symlink is unlinked, never followed), and only
/// two descriptors are open at a time whatever the depth, so a tree deeper than `PATH_MAX` (which
/// path-based removal cannot reach) or than the fd limit is removed. Going back up uses `..`,
/// checked against the device and inode recorded on the way down, so a directory moved meanwhile
/// stops the removal instead of redirecting it.
fn remove_dir_at(top: RawFd, name: &CString) -> io::Result<()> {
    // Names from `top` down to the current directory, and the identity of each one's parent.
    let mut names: Vec<CString> = vec![name.clone()];
    let mut parents: Vec<(u64, u64)> = vec![dev_ino(top)?];
    let mut cur = open_dir_at(top, name)?;
    loop {
        if let Some(sub) = clear_files(cur.as_raw_fd())? {
            let child = open_dir_at(cur.as_raw_fd(), &sub)?;
            parents.push(dev_ino(cur.as_raw_fd())?);
            names.push(sub);
            cur = child;
            continue;
        }
        // `cur` is empty: remove it from its parent.
        let name = names.pop().expect("one name per open level");
        let parent_id = parents.pop().expect("one parent per open level");
        if names.is_empty() {
            check(unsafe { libc::unlinkat(top, name.as_ptr(), libc::AT_REMOVEDIR) })?;
            return Ok(());
        }
        let up = check(unsafe {
            libc::openat(
                cur.as_raw_fd(),
                c"..".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        let up = unsafe { OwnedFd::from_raw_fd(up) };
        if dev_ino(up.as_raw_fd())? != parent_id {
            return Err(io::Error::other(
                "a directory was moved while its tree was being removed",
            ));
        }
        check(unsafe { libc::unlinkat(up.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })?;
        cur = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir_fd(path: &std::path::Path) -> File {
        File::open(path).unwrap()
    }

    /// A file is created when its bytes come (it might have become a hard link instead).
    fn write_file(w: &mut TreeWriter<'_>, name: Option<&[u8]>) -> io::Result<()> {
        w.event(&Event::File {
            name: name.map(<[u8]>::to_vec),
            executable: false,
            size: 1,
        })?;
        w.contents(b"x")
    }

    #[test]
    fn unpatched_files_are_shared_through_links_once_published() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = dir_fd(tmp.path());
        let digest = ContentDigest::of(b"abc");
        let write = |links: &Links, name: &[u8], executable: bool| {
            let mut w = TreeWriter::new(&parent, name, Some(links)).unwrap();
            w.event(&Event::Directory { name: None }).unwrap();
            w.event(&Event::Directory {
                name: Some(b"lib".to_vec()),
            })
            .unwrap();
            w.event(&Event::File {
                name: Some(b"f".to_vec()),
                executable,
                size: 3,
            })
            .unwrap();
            if !w.unpatched(&digest).unwrap() {
                w.contents(b"abc").unwrap();
            }
            w.event(&Event::EndDirectory).unwrap();
            w.event(&Event::EndDirectory).unwrap();
            w.finish().unwrap();
            (w.linked, w.shareable)
        };
        let state = tmp.path().join("state");
        let links = Links::open(tmp.path(), &state, [&digest]).unwrap();
        let (linked, shareable) = write(&links, b"one", false);
        assert_eq!((linked, shareable.len()), (0, 1));
        let f = &shareable[0];
        assert_eq!(f.rel, std::path::Path::new("lib/f"));
        // Nix's name for it: the SHA-256 of the file's NAR serialisation.
        let mut nar = Vec::new();
        refstrip_nar::dump(&tmp.path().join("one/lib/f"), &mut nar).unwrap();
        assert_eq!(
            f.name,
            refstrip_nix::base32::encode(refstrip_nix::Hash::digest(&nar).as_bytes())
        );
        // Not published yet: the second tree writes its own copy.
        assert_eq!(write(&links, b"two", false).0, 0);
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        assert_eq!(links.publish([(one.as_path(), f)]).unwrap(), 1);
        assert_eq!(
            links.publish([(two.as_path(), f)]).unwrap(),
            0,
            "first copy wins"
        );
        // A new run (the map is read back from the database) links instead of writing.
        let links = Links::open(tmp.path(), &state, [&digest]).unwrap();
        assert_eq!(write(&links, b"three", false), (1, Vec::new()));
        // The executable bit is part of the key: a 0555 file never shares a 0444 inode.
        assert_eq!(write(&links, b"four", true).0, 0);
        let meta = |p: &str| std::fs::metadata(tmp.path().join(p).join("lib/f")).unwrap();
        assert_eq!(meta("three").ino(), meta("one").ino());
        assert_ne!(meta("four").ino(), meta("one").ino());
        assert_eq!(
            (meta("three").mode() & 0o7777, meta("three").mtime()),
            (0o444, 1)
        );
        assert_eq!(
            std::fs::read(tmp.path().join("three/lib/f")).unwrap(),
            b"abc"
        );
        // Only the objects a run asks for are looked up.
        let unasked = Links::open(tmp.path(), &state, []).unwrap();
        assert_eq!(write(&unasked, b"six", false).0, 0);
        // A vanished entry (Nix collected it) means writing the file again, not failing.
        std::fs::remove_file(tmp.path().join(".links").join(&f.name)).unwrap();
        let (linked, shareable) = write(&links, b"five", false);
        assert_eq!((linked, shareable.len()), (0, 1));
    }

    #[test]
    fn writes_canonical_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = dir_fd(tmp.path());
        let mut w = TreeWriter::new(&parent, b"out", None).unwrap();
        w.event(&Event::Directory { name: None }).unwrap();
        w.event(&Event::Directory {
            name: Some(b"bin".to_vec()),
        })
        .unwrap();
        w.event(&Event::File {
            name: Some(b"hello".to_vec()),
            executable: true,
            size: 3,
        })
        .unwrap();
        w.contents(b"abc").unwrap();
        w.event(&Event::EndDirectory).unwrap();
        w.event(&Event::Symlink {
            name: Some(b"link".to_vec()),
            target: b"bin/hello".to_vec(),
        })
        .unwrap();
        w.event(&Event::File {
            name: Some(b"readme".to_vec()),
            executable: false,
            size: 0,
        })
        .unwrap();
        w.event(&Event::EndDirectory).unwrap();
        w.finish().unwrap();
        let out = tmp.path().join("out");
        let mode = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().mode() & 0o7777;
        let mtime = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().mtime();
        assert_eq!(
            (mode(""), mode("bin"), mode("bin/hello"), mode("readme")),
            (0o555, 0o555, 0o555, 0o444)
        );
        for p in ["", "bin", "bin/hello", "readme", "link"] {
            assert_eq!(mtime(p), 1, "{p}");
        }
        assert_eq!(std::fs::read(out.join("bin/hello")).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap().to_str(),
            Some("bin/hello")
        );
        remove_tree(&out).unwrap();
        assert!(!out.exists());
    }

    /// Issue 17: a 4,096-deep failed temp tree (8 KiB of path, past PATH_MAX) poisoned ROOT because
    /// path-based removal hit ENAMETOOLONG. Built here by descriptor, with store modes, a file and
    /// a symlink to outside at every level; removed completely, nothing outside touched.
    #[test]
    fn removes_a_4096_deep_tree_by_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let top = tmp.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        let mut cur: OwnedFd = File::open(&top).unwrap().into();
        let d = CString::new("d").unwrap();
        let target = CString::new(outside.as_os_str().as_bytes()).unwrap();
        for level in 0..4096 {
            let fd = cur.as_raw_fd();
            check(unsafe { libc::mkdirat(fd, d.as_ptr(), 0o755) }).unwrap();
            if level % 512 == 0 {
                let f = check(unsafe {
                    libc::openat(fd, c"f".as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o444)
                })
                .unwrap();
                unsafe { libc::close(f) };
                check(unsafe { libc::symlinkat(target.as_ptr(), fd, c"out".as_ptr()) }).unwrap();
            }
            let next =
                check(unsafe { libc::openat(fd, d.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) })
                    .unwrap();
            check(unsafe { libc::fchmod(fd, 0o555) }).unwrap();
            cur = unsafe { OwnedFd::from_raw_fd(next) };
        }
        drop(cur);
        // Path-based removal cannot do this (the removal that poisoned ROOT).
        let mut deep = top.clone();
        for _ in 0..4096 {
            deep.push("d");
        }
        assert!(std::fs::symlink_metadata(&deep).is_err());
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(
            std::fs::read_dir("/proc/self/fd").unwrap().count(),
            fds_before
        );
        // Missing paths are fine; a symlink to a directory is unlinked, not followed.
        remove_tree(&top).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(outside.join("victim").exists() && !link.exists());
        assert!(remove_tree(&tmp.path().join("outside/.")).is_err());
    }

    #[test]
    fn hostile_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = dir_fd(tmp.path());
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0b"] {
            let mut w = TreeWriter::new(&parent, b"t", None).unwrap();
            std::fs::remove_dir_all(tmp.path().join("t")).ok();
            w.event(&Event::Directory { name: None }).unwrap();
            assert!(
                w.event(&Event::File {
                    name: Some(bad.to_vec()),
                    executable: false,
                    size: 0
                })
                .is_err(),
                "{bad:?}"
            );
            assert!(
                w.event(&Event::Directory {
                    name: Some(bad.to_vec())
                })
                .is_err(),
                "{bad:?}"
            );
        }
        assert!(TreeWriter::new(&parent, b"..", None).is_err());
    }

    #[test]
    fn symlinks_in_the_way_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir(&store).unwrap();
        // A symlink already where the tree goes, and one inside the tree pointing outside.
        std::os::unix::fs::symlink(&outside, store.join("t")).unwrap();
        let parent = dir_fd(&store);
        let mut w = TreeWriter::new(&parent, b"t", None).unwrap();
        assert!(w.event(&Event::Directory { name: None }).is_err());
        let mut w = TreeWriter::new(&parent, b"t", None).unwrap();
        assert!(write_file(&mut w, None).is_err());

        let mut w = TreeWriter::new(&parent, b"u", None).unwrap();
        w.event(&Event::Directory { name: None }).unwrap();
        w.event(&Event::Symlink {
            name: Some(b"esc".to_vec()),
            target: outside.to_str().unwrap().as_bytes().to_vec(),
        })
        .unwrap();
        // A second entry of the same name (which restore refuses anyway) must not go through it.
        assert!(write_file(&mut w, Some(b"esc")).is_err());
        assert!(w
            .event(&Event::Directory {
                name: Some(b"esc".to_vec())
            })
            .is_err());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was written outside"
        );
    }
}
