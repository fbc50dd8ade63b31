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

use std::ffi::CString;
use std::fs::{File, FileTimes, Permissions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use refstrip_nar::Event;
use refstrip_strip::RestoreVisitor;

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

/// Writes the tree reported by `refstrip_strip::restore` under `name` in the directory `parent`.
pub struct TreeWriter {
    parent: RawFd,
    top: CString,
    /// Open directories, innermost last.
    dirs: Vec<File>,
    /// The regular file being written.
    file: Option<File>,
    /// Whether the umask can strip bits from 0444/0555, so modes must be set explicitly.
    fix_modes: bool,
    pub files: u64,
    pub bytes: u64,
}

impl TreeWriter {
    /// `parent` must stay open while the writer is used; `name` must not exist yet.
    pub fn new(parent: &impl AsRawFd, name: &[u8]) -> io::Result<TreeWriter> {
        Ok(TreeWriter {
            parent: parent.as_raw_fd(),
            top: cstr(name)?,
            dirs: Vec::new(),
            file: None,
            fix_modes: umask_strips_modes(),
            files: 0,
            bytes: 0,
        })
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
        if let Some(file) = self.file.take() {
            file.set_times(canonical_times())?;
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

impl RestoreVisitor for TreeWriter {
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
            }
            Event::File {
                name, executable, ..
            } => {
                let (dir, name) = self.target(name)?;
                let mode = if *executable { 0o555 } else { 0o444 };
                let flags = libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_CLOEXEC;
                // SAFETY: as above.
                let fd = check(unsafe {
                    libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint)
                })?;
                let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                if self.fix_modes {
                    file.set_permissions(Permissions::from_mode(mode))?;
                }
                self.file = Some(file);
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
            }
        }
        Ok(())
    }

    fn contents(&mut self, data: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "contents outside a file"))?;
        file.write_all(data)?;
        self.bytes += data.len() as u64;
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

/// Remove a tree that may contain read-only directories, never following symlinks.
pub fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    make_writable(path)?;
    std::fs::remove_dir_all(path)
}

fn make_writable(dir: &std::path::Path) -> io::Result<()> {
    std::fs::set_permissions(dir, Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir_fd(path: &std::path::Path) -> File {
        File::open(path).unwrap()
    }

    #[test]
    fn writes_canonical_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = dir_fd(tmp.path());
        let mut w = TreeWriter::new(&parent, b"out").unwrap();
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

    #[test]
    fn hostile_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = dir_fd(tmp.path());
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0b"] {
            let mut w = TreeWriter::new(&parent, b"t").unwrap();
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
        assert!(TreeWriter::new(&parent, b"..").is_err());
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
        let mut w = TreeWriter::new(&parent, b"t").unwrap();
        assert!(w.event(&Event::Directory { name: None }).is_err());
        let mut w = TreeWriter::new(&parent, b"t").unwrap();
        assert!(w
            .event(&Event::File {
                name: None,
                executable: false,
                size: 0
            })
            .is_err());

        let mut w = TreeWriter::new(&parent, b"u").unwrap();
        w.event(&Event::Directory { name: None }).unwrap();
        w.event(&Event::Symlink {
            name: Some(b"esc".to_vec()),
            target: outside.to_str().unwrap().as_bytes().to_vec(),
        })
        .unwrap();
        // A second entry of the same name (which restore refuses anyway) must not go through it.
        assert!(w
            .event(&Event::File {
                name: Some(b"esc".to_vec()),
                executable: false,
                size: 0
            })
            .is_err());
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
