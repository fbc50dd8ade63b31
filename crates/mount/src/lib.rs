//! Lazy store paths: a read-only FUSE view of a normalized store in which a whole closure appears
//! at once and file contents are fetched only when read.
//!
//! Mounting reads one path record per store path (`paths/<hash>`: manifest plus object
//! locations) and nothing else: directories, names, modes, sizes and symlink targets come from the
//! manifests, with the real hashes patched back into names and targets ([`tree`]). A regular
//! file's first read fetches the pack blocks holding the objects that cover the requested range
//! through the object sources every client shares (`refstrip_read::objects`, with the disk block
//! cache of `refstrip substitute`), checks every object against its BLAKE3 name and patches the
//! range ([`fs`]). A read in the middle of a large
//! (chunked) file touches only the chunks it overlaps. Any failure is an `EIO` and a log line,
//! never wrong bytes.
//!
//! What is checked, and what cannot be: objects are verified one by one, but a path's NarHash
//! covers all of it, so it is checked only by reading the whole path (`nix hash path` over the
//! mount does exactly that). Records and chunk lists are trusted as the store is; use
//! `refstrip substitute` where signatures must be checked before anything runs.

// The kernel interfaces this crate needs (see the workspace lint) have no safe wrapper in std.
#![allow(unsafe_code)]

mod fs;
pub mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use rayon::prelude::*;
use refstrip_read::objects::ObjectOptions;
use refstrip_read::{PathRecord, ReadError, StoreReader, Visit};

pub use fs::LazyStore;
use fs::View;
use tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{path}: {why}")]
    Path { path: String, why: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io {
        what,
        error: source,
    }
}

pub struct Options {
    /// How objects are read (`objects.cache_dir: None`: blocks are kept in memory only).
    pub objects: ObjectOptions,
    /// A JSON file rewritten with [`Stats`] at mount, after every read that fetched something,
    /// and at unmount.
    pub stats_file: Option<PathBuf>,
    /// Threads answering the kernel (a program start reads several libraries at once).
    pub threads: usize,
}

/// What a mount has cost so far.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub paths: u64,
    pub inodes: u64,
    /// Path records read at mount time.
    pub record_bytes: u64,
    /// Compressed pack blocks read from the store since (not from the local cache).
    pub fetched_bytes: u64,
    pub fetched_blocks: u64,
    /// Read requests from the kernel and the bytes they returned.
    pub reads: u64,
    pub read_bytes: u64,
    /// Reads answered with EIO.
    pub errors: u64,
}

/// Read the records of `roots` and their closures, or of every path in the store when `roots`
/// is `None`. Returns them with the bytes read.
pub fn load_records(
    store: &StoreReader,
    roots: Option<&[String]>,
) -> Result<(Vec<PathRecord>, u64), Error> {
    match roots {
        Some(roots) => {
            let closure = store.closure(roots, |_| Ok::<_, Error>(Visit::Include))?;
            Ok((closure.records, closure.record_bytes))
        }
        None => {
            let fetched: Vec<(PathRecord, u64)> = store
                .list_paths()?
                .par_iter()
                .map(|h| store.record(h))
                .collect::<Result<_, _>>()?;
            let bytes = fetched.iter().map(|(_, n)| n).sum();
            Ok((fetched.into_iter().map(|(r, _)| r).collect(), bytes))
        }
    }
}

/// A mounted view; dropping it unmounts.
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    fs: Arc<LazyStore>,
}

/// Mount the paths of `records` (see [`load_records`]) read-only at `mountpoint`, an empty
/// directory. Objects are read from `store` when files are read.
pub fn mount(
    store: &StoreReader,
    records: Vec<PathRecord>,
    record_bytes: u64,
    mountpoint: &Path,
    opts: &Options,
) -> Result<Mounted, Error> {
    let tree = Tree::build(records).map_err(|why| Error::Path {
        path: store.describe(),
        why,
    })?;
    let objects = store
        .objects(&opts.objects)
        .map_err(io_err("opening the object cache"))?;
    let fs = Arc::new(LazyStore::new(
        tree,
        objects,
        record_bytes,
        opts.stats_file.clone(),
    ));
    fs.write_stats(true);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("refstrip".into()),
        MountOption::Subtype("refstrip".into()),
        // Let the kernel check the 0444/0555 modes instead of asking us.
        MountOption::DefaultPermissions,
        MountOption::Exec,
        MountOption::NoAtime,
    ];
    // A store is world-readable: builders and CI jobs often run as other users.
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    let session = fuser::spawn_mount(View(fs.clone()), mountpoint, &config)
        .map_err(io_err(format!("mounting at {}", mountpoint.display())))?;
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        fs,
    })
}

/// Block SIGINT and SIGTERM in this thread and every thread it starts afterwards, so that
/// [`Mounted::wait`] receives them; call it before anything spawns threads.
pub fn block_termination_signals() -> io::Result<()> {
    // SAFETY: plain libc calls on a local, initialized signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl Mounted {
    pub fn stats(&self) -> Stats {
        self.fs.stats()
    }

    /// Wait until SIGINT or SIGTERM arrives (blocked beforehand with
    /// [`block_termination_signals`]) or the file system is unmounted from outside. Returns the
    /// signal, if one ended the wait.
    pub fn wait(&self) -> Option<i32> {
        // SAFETY: as in block_termination_signals; sigtimedwait only reads the set.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
        }
        // Poll so that an outside `umount` (the session thread ends) also ends the wait.
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: Duration::from_millis(200).as_nanos() as libc::c_long,
        };
        loop {
            // SAFETY: valid set and timeout; no siginfo wanted.
            let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
            if signal > 0 {
                return Some(signal);
            }
            if self.session.as_ref().is_none_or(|s| s.guard.is_finished()) {
                return None;
            }
        }
    }

    /// Unmount and wait for the file system thread. A busy mount (a shell still inside it) is
    /// detached instead, so the mountpoint is free at once and the kernel lets go of it when its
    /// last user does.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let result = match session.umount_and_join() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                    .map_err(io::Error::other)?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            other => other,
        };
        self.fs.write_stats(true);
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            eprintln!(
                "refstrip mount: unmounting {}: {e}",
                self.mountpoint.display()
            );
        }
    }
}
