//! Where a refstrip store's files live: one [`Backend`] trait over a flat namespace of immutable
//! files (`packs/…`, `paths/…`), implemented for a local directory ([`LocalDir`]), a static HTTP
//! server ([`Http`], read-only) and an S3-compatible bucket ([`S3`]), chosen by one URL parser
//! ([`StoreUrl`]). This crate's one job is moving bytes: it knows nothing of records or packs
//! beyond their key names, so the read side, the write side and the NAR sources all build on it.
//!
//! Every file is written once under its final key and never modified (packs are named by their
//! BLAKE3, path records by their store path), so readers need no locks and an object store works
//! as well as a directory.

mod dir;
mod http;
mod s3;
mod url;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use dir::{published_tempfile, LocalDir};
pub use http::{Http, HttpTimeouts};
pub use s3::{S3Url, S3};
pub use url::{StoreUrl, UrlError};

/// The key of the path record of the store path with this hash part.
pub fn record_key(hash_part: &str) -> String {
    format!("paths/{hash_part}")
}

/// The key of the shape (format version 2) with this BLAKE3 digest, hex.
pub fn shape_key(digest_hex: &str) -> String {
    format!("shapes/{digest_hex}")
}

/// The key of the pack with this id (its BLAKE3, hex).
pub fn pack_key(id: &str) -> String {
    format!("packs/{id}.pack")
}

/// The file that marks a location as a normalized store and names its format version
/// (spec/normalized-format.md §7).
pub const MARKER_KEY: &str = "refstrip-store";

/// A flat namespace of immutable files (`packs/…`, `paths/…`).
pub trait Backend: Send + Sync {
    /// A human-readable location for messages.
    fn describe(&self) -> String;
    /// Store `bytes` under `key`, atomically: readers see all of it or nothing.
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Move the local file `path` to `key` (atomic where the backend allows).
    fn put_file(&self, key: &str, path: &Path) -> io::Result<()>;
    /// The whole file, or `None` if there is none; an error if it is larger than `limit` bytes
    /// (checked before it is read, where the backend can tell).
    fn get(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>>;
    /// `len` bytes at `offset` (a ranged read: one block of a pack); an error, not a short read,
    /// if the file is shorter.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// A hint that these ranges (`(offset, len)`) of `key` are about to be read with
    /// [`get_range`](Self::get_range): a local file starts reading them into the page cache
    /// while the caller works. Nothing is returned and errors are ignored: the reads decide.
    fn will_read(&self, _key: &str, _ranges: &[(u64, u64)]) {}
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// Keys under `prefix` (e.g. `"paths/"`), in no particular order.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// [`list`](Self::list) with each file's last modification time (a record's is when it was
    /// written: retention counts a path's age from it). Backends that cannot tell refuse.
    fn list_modified(&self, prefix: &str) -> io::Result<Vec<(String, SystemTime)>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: cannot list {prefix} with modification times",
                self.describe()
            ),
        ))
    }
    /// Set the modification time of `key`, where the backend allows it (`Ok(false)` where it does
    /// not): a record rewritten by repack keeps the time it was first written.
    fn set_modified(&self, _key: &str, _time: SystemTime) -> io::Result<bool> {
        Ok(false)
    }
    fn delete(&self, key: &str) -> io::Result<()>;
    /// A local directory for scratch files that can be moved in with `put_file` cheaply.
    fn scratch_dir(&self) -> PathBuf;
    /// Where this machine keeps the store's SQLite catalog.
    fn catalog_path(&self) -> PathBuf;
    /// Whether other machines may write to this store too, so that the catalog must be refreshed
    /// from the listing and this machine's file locks do not keep gc and ingests apart.
    fn is_shared(&self) -> bool {
        false
    }
    /// Requests made so far, for backends that are billed per request.
    fn requests(&self) -> Option<RequestCounts> {
        None
    }
}

/// Requests made to an object store, by kind, and bytes moved (payloads only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: u64,
    pub get_range: u64,
    /// Single PUTs and multipart requests (create, each part, complete).
    pub put: u64,
    /// LIST requests (pages of up to 1,000 keys).
    pub list: u64,
    pub head: u64,
    pub delete: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get + self.get_range + self.put + self.list + self.head + self.delete
    }
}

/// Keys are produced by this crate; refuse anything that could leave a store's root anyway.
pub fn check_key(key: &str) -> io::Result<()> {
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad key {key:?}"),
        ));
    }
    Ok(())
}

/// Open the backend `url` names, for reading: nothing is created, written or cached in its place.
pub fn open_for_reading(url: &StoreUrl) -> io::Result<Box<dyn Backend>> {
    Ok(match url {
        StoreUrl::Dir(path) => Box::new(LocalDir::open(path)),
        StoreUrl::Http { base, timeouts } => Box::new(Http::new(base, *timeouts)),
        StoreUrl::S3(s3) => Box::new(S3::open(s3)?),
    })
}

/// Open the backend `url` names for writing, creating a directory store's layout if needed.
pub fn open_for_writing(url: &StoreUrl) -> io::Result<Box<dyn Backend>> {
    Ok(match url {
        StoreUrl::Dir(path) => Box::new(LocalDir::create(path)?),
        StoreUrl::Http { base, .. } => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{base}: an HTTP store is read-only; write to its directory or bucket"),
            ))
        }
        StoreUrl::S3(s3) => Box::new(S3::open(s3)?),
    })
}
