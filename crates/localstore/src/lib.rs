//! The local Nix store as the nearest object source.
//!
//! After a mass rebuild most normalized objects a client needs are already on its disk, inside
//! the files of paths it has installed (from refstrip or from anywhere else). [`LocalStore`]
//! keeps an index (SQLite, in a state directory the caller names) from object name to a file of
//! a valid path and a byte range in it, filled by stripping valid paths with the references Nix
//! recorded for them in `db.sqlite` ([`LocalStore::update`], incremental by `ValidPaths.id`), or
//! from the manifests of paths just written from them ([`LocalStore::add_restored`]).
//! As an [`ObjectSource`] it reads the range back (opened below the store directory following no
//! symlink; the directories of the paths last read are kept open), re-normalizes it with the
//! path's reference table, and hands it out only if its BLAKE3 is the object's name. Whole files
//! ([`NearSource::file`], for copies) are handed out unchecked, to a client that covers them with
//! its own check. The index is a cache, never the truth: a garbage-collected path, a
//! modified file, a stale row are all misses (`Ok(None)`), and the next layer fetches the object.
//!
//! ```text
//! ROOT/nix/var/nix/db/db.sqlite     read-only: ValidPaths (id, path, hash), Refs
//! STATE/local-objects.sqlite        paths (id = ValidPaths.id, basename, references)
//!                                   objects (kind, digest → path, file, range, build-id range)
//! ```

mod index;
mod renorm;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use refstrip_cas::{chunks_of_file, CasError, Kind, ObjectId};
use refstrip_read::objects::{NearFile, NearSource, SizedLru};
use refstrip_read::ShapeSource;
use refstrip_strip::{ContentDigest, RefTable, Scanner};
use rusqlite::{params, Connection, OptionalExtension};

pub use index::{Restored, UpdateReport};
pub use renorm::{open_dir_beneath, open_in, renormalize};

/// The index's file name inside the state directory.
pub const INDEX_FILE: &str = "local-objects.sqlite";
/// Version of the index's tables; an index of another version is rebuilt.
const INDEX_VERSION: i64 = 2;
/// Directories of store paths kept open: objects are asked for in NAR order, so the next one
/// is mostly in the directory of the last, and opening it anew took a component per level.
const OPEN_DIRS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{what}: {error}")]
    Db {
        what: String,
        error: rusqlite::Error,
    },
}

fn db_err(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
    let what = what.into();
    move |error| Error::Db { what, error }
}

/// What the source handed out, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Objects served from store files, and their bytes.
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    /// Objects the index named but no copy of which checked out (modified, removed, GC'd).
    pub stale: AtomicU64,
}

impl Counters {
    /// (objects, bytes, stale) now.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
        )
    }
}

/// A local Nix store (`ROOT/<store dir>` plus `ROOT/nix/var/nix/db/db.sqlite`) and its object index.
pub struct LocalStore {
    root: PathBuf,
    store_dir: String,
    real_store: PathBuf,
    /// The store directory, opened once: every file is opened below it.
    store_fd: File,
    index: Mutex<Connection>,
    /// Open directories by `basename/dir` (see [`OPEN_DIRS`]).
    dirs: Mutex<SizedLru<Vec<u8>, Arc<File>>>,
    /// Scanners by path id (building one hashes every reference).
    scanners: Mutex<SizedLru<i64, Arc<Scanner>>>,
    pub counters: Arc<Counters>,
}

/// One copy of an object as the index records it.
struct Candidate {
    path: i64,
    basename: String,
    refs: String,
    file: Vec<u8>,
    file_size: u64,
    offset: u64,
    size: u64,
    zero: Option<(u64, u64)>,
    list: Option<Vec<u8>>,
}

impl LocalStore {
    /// The state directory used when none is given: beside Nix's own state in ROOT.
    pub fn default_state_dir(root: &Path) -> PathBuf {
        root.join("nix/var/refstrip")
    }

    /// Open the store at `root` (logical store directory `store_dir`) and the index in `state`
    /// (created if missing). Nothing of Nix's is written.
    pub fn open(root: &Path, store_dir: &str, state: &Path) -> Result<LocalStore, Error> {
        let real_store = root.join(store_dir.trim_start_matches('/'));
        let store_fd = File::open(&real_store).map_err(|error| Error::Io {
            what: format!("opening {}", real_store.display()),
            error,
        })?;
        std::fs::create_dir_all(state).map_err(|error| Error::Io {
            what: format!("creating {}", state.display()),
            error,
        })?;
        let file = state.join(INDEX_FILE);
        let conn =
            index::open_index(&file).map_err(db_err(format!("opening {}", file.display())))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            store_dir: store_dir.trim_end_matches('/').to_string(),
            real_store,
            store_fd,
            index: Mutex::new(conn),
            dirs: Mutex::new(SizedLru::new(OPEN_DIRS)),
            scanners: Mutex::new(SizedLru::new(16 << 20)),
            counters: Arc::default(),
        })
    }

    /// Whether the index names a copy of `id` (which may still turn out stale when read).
    pub fn may_have(&self, id: &ObjectId) -> bool {
        let conn = self.index.lock().expect("poisoned");
        conn.prepare_cached("SELECT 1 FROM objects WHERE digest = ?1 AND kind = ?2 LIMIT 1")
            .and_then(|mut stmt| {
                stmt.query_row(params![&id.digest.0[..], id.kind.code() as i64], |_| Ok(()))
                    .optional()
            })
            .ok()
            .flatten()
            .is_some()
    }

    fn candidates(&self, id: &ObjectId) -> rusqlite::Result<Vec<Candidate>> {
        let conn = self.index.lock().expect("poisoned");
        let mut stmt = conn.prepare_cached(CANDIDATES)?;
        let rows = stmt.query_map(params![&id.digest.0[..], id.kind.code() as i64], |r| {
            let zs: Option<i64> = r.get(7)?;
            let ze: Option<i64> = r.get(8)?;
            Ok(Candidate {
                path: r.get(0)?,
                basename: r.get(1)?,
                refs: r.get(2)?,
                file: r.get(3)?,
                file_size: r.get::<_, i64>(4)? as u64,
                offset: r.get::<_, i64>(5)? as u64,
                size: r.get::<_, i64>(6)? as u64,
                zero: zs.zip(ze).map(|(s, e)| (s as u64, e as u64)),
                list: r.get(9)?,
            })
        })?;
        rows.collect()
    }

    /// The candidate's file, opened below the store directory following no symlink, through the
    /// open directory of its path if there is one.
    fn open_file(&self, c: &Candidate) -> Option<File> {
        let (dir, name) = match c.file.iter().rposition(|&b| b == b'/') {
            _ if c.file.is_empty() => {
                return open_in(&self.store_fd, c.basename.as_bytes(), c.file_size).ok()
            }
            Some(i) => (&c.file[..i], &c.file[i + 1..]),
            None => (&b""[..], &c.file[..]),
        };
        let mut key = Vec::with_capacity(c.basename.len() + 1 + dir.len());
        key.extend_from_slice(c.basename.as_bytes());
        key.push(b'/');
        key.extend_from_slice(dir);
        let open = self.dirs.lock().expect("poisoned").get(&key);
        if let Some(open) = open {
            match open_in(&open, name, c.file_size) {
                Ok(file) => return Some(file),
                // Maybe no longer the path's directory (collected, made anew): look again.
                Err(_) => self.dirs.lock().expect("poisoned").remove(&key),
            }
        }
        let open = Arc::new(open_dir_beneath(&self.store_fd, c.basename.as_bytes(), dir).ok()?);
        let file = open_in(&open, name, c.file_size).ok();
        self.dirs.lock().expect("poisoned").put(key, open, 1);
        file
    }

    fn scanner(&self, c: &Candidate) -> Option<Arc<Scanner>> {
        if let Some(s) = self.scanners.lock().expect("poisoned").get(&c.path) {
            return Some(s);
        }
        let refs: Vec<Vec<u8>> = c
            .refs
            .split('\n')
            .filter(|r| !r.is_empty())
            .map(|r| r.as_bytes().to_vec())
            .collect();
        let table = RefTable::new(c.basename.as_bytes(), &refs).ok()?;
        let scanner = Arc::new(Scanner::new(&table));
        let weight = 64 * (refs.len() as u64 + 1);
        self.scanners
            .lock()
            .expect("poisoned")
            .put(c.path, scanner.clone(), weight);
        Some(scanner)
    }

    /// One candidate's bytes, if they are the object `id`.
    fn read(&self, id: &ObjectId, c: &Candidate) -> Option<Vec<u8>> {
        let file = self.open_file(c)?;
        match id.kind {
            Kind::Blob => {
                let scanner = self.scanner(c)?;
                let end = c.offset.checked_add(c.size)?;
                let zero = c.zero.map(|(s, e)| s..e);
                let bytes = renormalize(&file, c.file_size, c.offset..end, &scanner, zero).ok()?;
                (ContentDigest::of(&bytes) == id.digest).then_some(bytes)
            }
            // A chunk list is named by the whole file, which only reading it all could check;
            // as for a list out of a pack, the reader checks the chunks against the name. Here
            // it must at least describe a file of this size that is still there.
            Kind::ChunkList => {
                let list = c.list.clone()?;
                chunks_of_file(&list, c.file_size).ok()?;
                Some(list)
            }
            Kind::Manifest | Kind::Delta => None,
        }
    }

    /// The store root this source reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store directory as found on disk (`ROOT/nix/store`).
    pub fn real_store(&self) -> &Path {
        &self.real_store
    }
}

impl NearSource for LocalStore {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, CasError> {
        // An unreadable index is a miss like any other: the far layers have every object.
        let Ok(candidates) = self.candidates(id) else {
            return Ok(None);
        };
        for c in &candidates {
            if let Some(bytes) = self.read(id, c) {
                self.counters.objects.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                return Ok(Some(bytes));
            }
        }
        if !candidates.is_empty() {
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None)
    }

    fn may_have(&self, id: &ObjectId) -> bool {
        LocalStore::may_have(self, id)
    }

    fn file(&self, id: &ObjectId) -> Option<NearFile> {
        // Whole files only: a small file's blob, or the chunk list named after a large file.
        for c in self.candidates(id).ok()? {
            if c.offset != 0 || c.size != c.file_size {
                continue;
            }
            if let Some(file) = self.open_file(&c) {
                return Some(NearFile {
                    file,
                    size: c.file_size,
                });
            }
        }
        None
    }

    fn served(&self) -> (u64, u64) {
        let (objects, bytes, _) = self.counters.get();
        (objects, bytes)
    }
}

/// Copies of an object, newest path first: at most four are tried before giving up (a popular
/// file is in many paths). The limit is in the text: SQLite re-prepares a statement whose `LIMIT`
/// is a bound parameter every time it is bound, which once cost a tenth of serve's CPU.
const CANDIDATES: &str = "SELECT o.path, p.basename, p.refs, o.file, o.file_size, o.offset, o.size,
            o.zero_start, o.zero_end, o.list
     FROM objects o JOIN paths p ON p.id = o.path
     WHERE o.digest = ?1 AND o.kind = ?2 ORDER BY o.path DESC LIMIT 4";

/// The shapes of the indexed paths: a mass rebuild's new paths have the old paths' shapes, so a
/// client need not fetch them (spec §8). The reader checks the digest of what this returns.
impl ShapeSource for LocalStore {
    fn shape(&self, digest: &ContentDigest) -> Option<Vec<u8>> {
        let conn = self.index.lock().expect("poisoned");
        let frame: Vec<u8> = conn
            .query_row(
                "SELECT body FROM shapes WHERE digest = ?1 LIMIT 1",
                [&digest.0[..]],
                |r| r.get(0),
            )
            .ok()?;
        drop(conn);
        refstrip_strip::inflate_shape(&frame).ok()
    }
}

#[cfg(test)]
mod tests;
