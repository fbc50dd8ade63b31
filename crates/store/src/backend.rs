//! Where a store's files live, behind one trait chosen by URL.
//!
//! Every file is written once under its final key and never modified (packs are named by their
//! BLAKE3, path records by their store path), so readers need no locks and an object store works
//! as well as a directory.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A flat namespace of immutable files (`packs/…`, `paths/…`).
pub trait Backend: Send + Sync {
    /// A human-readable location for messages.
    fn describe(&self) -> String;
    /// Store `bytes` under `key`, atomically: readers see all of it or nothing.
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Move the local file `path` to `key` (atomic where the backend allows).
    fn put_file(&self, key: &str, path: &Path) -> io::Result<()>;
    /// The whole file, or `None` if there is none.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// `len` bytes at `offset` (a ranged read: one block of a pack).
    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// Keys under `prefix` (e.g. `"paths/"`), in no particular order.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
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
pub(crate) fn check_key(key: &str) -> io::Result<()> {
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

/// The embedded default: a directory on the local filesystem.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn open(root: &Path) -> io::Result<Self> {
        for sub in ["packs", "paths", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(LocalDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl Backend for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = tempfile::NamedTempFile::new_in(self.scratch_dir())?;
        tmp.as_file().write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(key)?).map_err(|e| e.error)?;
        Ok(())
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()?;
        fs::rename(path, self.path(key)?)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.path(key)?)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf =
            vec![0u8; usize::try_from(len).map_err(|_| io::Error::other("range too large"))?];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(key)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (dir, name_prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.root.join(dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(name_prefix) && !name.starts_with('.') {
                out.push(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.sqlite")
    }
}

/// Open a store location: a directory path or `file://` URL (the embedded default), an
/// `s3://bucket/prefix` URL (an S3-compatible object store), or an `http(s)://` URL serving a
/// store's directory (read-only).
pub fn open(url: &str) -> io::Result<Box<dyn Backend>> {
    if url.starts_with("s3://") {
        return Ok(Box::new(crate::s3::S3::open(url)?));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        let path = rest.split('?').next().unwrap_or(rest);
        return Ok(Box::new(LocalDir::open(Path::new(path))?));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Box::new(crate::http::Http::new(url)));
    }
    if url.contains("://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported store URL {url:?} (supported: a directory, file:///dir, s3://bucket/prefix, http(s):// read-only)"),
        ));
    }
    Ok(Box::new(LocalDir::open(Path::new(url))?))
}
