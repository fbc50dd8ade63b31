//! The read side of a refstrip store, shared by every client (`substitute`, `serve`, `mount`,
//! `savings`, and gc's closure walk): this crate's one job is **reading a normalized store**.
//!
//! - [`StoreReader::open`] opens any store URL read-only. It never creates, writes or caches
//!   anything in the store's place, and tells a missing store, an empty directory and a Nix binary
//!   cache apart, each with its own error ([`OpenError`]).
//! - [`StoreReader::record`] is the one record fetch, with every check a client relies on
//!   (size limit, decode limits, format version, the record describes the path it is filed under,
//!   the expected store directory). [`StoreReader::closure`] is the one closure walk.
//! - [`objects`] holds the object sources, a trait composed in layers: decoded blocks in memory →
//!   a bounded on-disk block cache → the backend, with room for nearer layers (the local Nix store).
//!
//! Record validation and caching each live in one place here; the write side (`refstrip-store`)
//! and every client build on it.

pub mod delta;
mod held;
pub mod objects;
pub mod pathinfo;
mod record;

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use refstrip_backend::{
    open_for_reading, record_key, shape_key, Backend, StoreUrl, UrlError, MARKER_KEY,
};
use refstrip_nix::is_hash_part;
use refstrip_strip::ContentDigest;

pub use record::{
    EncodedRecord, Locations, ObjectMap, Offer, PathRecord, ShapeFile, StoredRecord, Table,
    MAX_RECORD_BYTES,
};

/// The store format this version reads and writes (spec/normalized-format.md §7): 2 since path
/// records are split into bindings and shapes (§8), 3 since packs may filter blocks (§6) and shape
/// files may offer deltas (§8) — what a format 2 reader would misread, so it refuses the store
/// instead. Stores of formats 1 and 2 are read as well.
pub const STORE_FORMAT: u64 = 3;

/// Shape bodies a reader keeps in memory (a shape is a few hundred bytes to a few MB).
const SHAPE_MEMORY: u64 = 32 << 20;

/// A source of version 2 shape bodies nearer than the store, such as the shapes of the paths in
/// the client's own Nix store (a mass rebuild's new paths have the old paths' shapes).
pub trait ShapeSource: Send + Sync {
    /// The body of the shape with this digest, if known here (the reader checks the digest).
    fn shape(&self, digest: &ContentDigest) -> Option<Vec<u8>>;
    /// Offered every shape the reader fetched from the store (a cache keeps it).
    fn keep(&self, _digest: &ContentDigest, _body: &[u8]) {}
}

/// The contents of a store's marker file ([`MARKER_KEY`]) for [`STORE_FORMAT`].
pub fn marker_contents() -> String {
    format!("refstrip normalized store\nStoreFormat: {STORE_FORMAT}\n")
}

/// Why a location could not be opened as a normalized store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("no normalized store at {location}: {why}")]
    Missing { location: String, why: String },
    #[error("{location} is an empty directory, not a normalized store; make one there with `refstrip ingest SOURCE PATHS… --to {location}`")]
    Empty { location: String },
    #[error("{location} is a Nix binary cache (it has nix-cache-info), not a normalized store; make a store of it with `refstrip ingest {location} --all --to STORE` and use STORE here")]
    BinaryCache { location: String },
    #[error("{location} is not a normalized store: it has neither a {MARKER_KEY} file nor a paths/ directory")]
    NotAStore { location: String },
    #[error("{location} is a store of format {found}; this refstrip reads formats up to {STORE_FORMAT} (a newer refstrip wrote it: upgrade)")]
    Format { location: String, found: String },
    #[error("opening {location}: {error}")]
    Io { location: String, error: io::Error },
}

/// Why a path record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0:?} is not a store path hash part")]
    BadHashPart(String),
    #[error("{hash_part} is not in {store}")]
    NotFound { hash_part: String, store: String },
    #[error("reading {what} from {store}: {error}")]
    Io {
        what: String,
        store: String,
        error: io::Error,
    },
    #[error("path record {key} in {store}: {why}")]
    BadRecord {
        key: String,
        store: String,
        why: String,
    },
}

/// A normalized store opened for reading.
pub struct StoreReader {
    backend: Arc<dyn Backend>,
    url: StoreUrl,
    store_dir: Option<String>,
    /// Where shapes are looked for before the store: the local Nix store, the disk cache.
    near_shapes: Mutex<Vec<Arc<dyn ShapeSource>>>,
    /// Shape bodies with their object tables (known, or fetched when first used).
    shapes: Mutex<objects::SizedLru<ContentDigest, KnownShape>>,
    /// Bytes of shape files read later for their object tables (see [`Locations`]).
    deferred_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// A shape's body and its object table (known, or fetched when first used).
type KnownShape = (Arc<Vec<u8>>, Locations);

/// What [`StoreReader::closure`] should do with a record it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Part of the result; its references are walked.
    Include,
    /// Left out with its references (e.g. valid in the target store already).
    Exclude,
}

/// A closure read by [`StoreReader::closure`].
#[derive(Debug, Default)]
pub struct Closure {
    /// The included records, in the order the walk reached them (breadth first).
    pub records: Vec<PathRecord>,
    /// Bytes of every record fetched, excluded ones too.
    pub record_bytes: u64,
    /// Records reached and excluded.
    pub excluded: u64,
}

impl StoreReader {
    /// Open the store at `url` (any form [`StoreUrl::parse`] takes) for reading.
    pub fn open(url: &str) -> Result<StoreReader, OpenError> {
        StoreReader::open_url(StoreUrl::parse(url)?)
    }

    pub fn open_url(url: StoreUrl) -> Result<StoreReader, OpenError> {
        let location = url.to_string();
        let io_err = |source: io::Error| OpenError::Io {
            location: location.clone(),
            error: source,
        };
        if let StoreUrl::Dir(path) = &url {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(OpenError::Missing {
                        location,
                        why: "no such directory".into(),
                    })
                }
                Err(e) => return Err(io_err(e)),
                Ok(m) if !m.is_dir() => return Err(OpenError::NotAStore { location }),
                Ok(_) => {}
            }
        }
        let backend: Arc<dyn Backend> = open_for_reading(&url).map_err(io_err)?.into();
        let marker = backend.get(MARKER_KEY, 4096).map_err(io_err)?;
        match marker {
            Some(bytes) => check_marker(&location, &bytes)?,
            None => match &url {
                StoreUrl::Dir(path) => {
                    if path.join("nix-cache-info").exists() {
                        return Err(OpenError::BinaryCache { location });
                    }
                    // Stores written before the marker existed have paths/ (possibly empty).
                    if !path.join("paths").is_dir() {
                        let empty = std::fs::read_dir(path).map_err(io_err)?.next().is_none();
                        return Err(match empty {
                            true => OpenError::Empty { location },
                            false => OpenError::NotAStore { location },
                        });
                    }
                }
                _ => {
                    if backend
                        .get("nix-cache-info", 1 << 16)
                        .map_err(io_err)?
                        .is_some()
                    {
                        return Err(OpenError::BinaryCache { location });
                    }
                    return Err(OpenError::Missing {
                        location,
                        why: format!("it has no {MARKER_KEY} file"),
                    });
                }
            },
        }
        Ok(StoreReader::from_backend(backend, url))
    }

    /// A reader over a backend that a writer has just opened (and marked) itself.
    pub fn from_backend(backend: Arc<dyn Backend>, url: StoreUrl) -> StoreReader {
        StoreReader {
            backend,
            url,
            store_dir: None,
            near_shapes: Mutex::default(),
            shapes: Mutex::new(objects::SizedLru::new(SHAPE_MEMORY)),
            deferred_bytes: Arc::default(),
        }
    }

    /// Look for shapes in `near` before fetching them from the store.
    pub fn with_near_shapes(self, near: Arc<dyn ShapeSource>) -> Self {
        self.near_shapes
            .lock()
            .expect("shape sources lock")
            .push(near);
        self
    }

    /// Refuse records of paths in any other store directory than `dir` (e.g. `/nix/store`).
    pub fn expect_store_dir(mut self, dir: impl Into<String>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// The store directory set by [`expect_store_dir`](Self::expect_store_dir).
    pub fn expected_store_dir(&self) -> Option<&str> {
        self.store_dir.as_deref()
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The store's objects through the layers `opts` asks for. Their disk cache, if any, keeps
    /// the shapes this reader fetches as well.
    pub fn objects(&self, opts: &objects::ObjectOptions) -> io::Result<objects::Objects> {
        let objects = objects::Objects::new(self.backend.clone(), opts)?;
        if let Some(cache) = objects.disk_cache() {
            self.near_shapes
                .lock()
                .expect("shape sources lock")
                .push(cache);
        }
        Ok(objects)
    }

    /// The record of the path with hash part `hash_part` and its size in bytes, with every check
    /// made: `Ok(None)` if the store does not have it.
    pub fn try_record(&self, hash_part: &str) -> Result<Option<(PathRecord, u64)>, ReadError> {
        if !is_hash_part(hash_part.as_bytes()) {
            return Err(ReadError::BadHashPart(hash_part.to_string()));
        }
        let key = record_key(hash_part);
        let bytes = self
            .backend
            .get(&key, MAX_RECORD_BYTES)
            .map_err(|source| ReadError::Io {
                what: key.clone(),
                store: self.describe(),
                error: source,
            })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let bad = |why: String| ReadError::BadRecord {
            key: key.clone(),
            store: self.describe(),
            why,
        };
        let mut size = bytes.len() as u64;
        let record = match StoredRecord::decode(&bytes).map_err(bad)? {
            StoredRecord::V1(record) => record,
            StoredRecord::V2(binding) => {
                let (body, objects, shape_size) = self.shape(&binding.shape)?;
                size += shape_size;
                PathRecord::join(&body, &binding, objects).map_err(bad)?
            }
        };
        // A record filed under another path's hash would install or serve the wrong path.
        if record.hash_part() != hash_part {
            return Err(bad(format!("describes {}", record.basename())));
        }
        if let Some(dir) = &self.store_dir {
            if record.store_dir() != *dir {
                return Err(bad(format!(
                    "is for store directory {}, not {dir}",
                    record.store_dir()
                )));
            }
        }
        Ok(Some((record, size)))
    }

    /// The body of the shape `digest` and its object table: the body from memory, the near source
    /// or the store's shape file (whose size is returned, 0 if it was not read); the object table
    /// is then fetched only when first used.
    fn shape(&self, digest: &ContentDigest) -> Result<(Arc<Vec<u8>>, Locations, u64), ReadError> {
        let key = shape_key(&digest.to_hex());
        if let Some((body, objects)) = self.shapes.lock().expect("shape cache lock").get(digest) {
            return Ok((body, objects, 0));
        }
        let sources = self.near_shapes.lock().expect("shape sources lock").clone();
        let near = sources
            .iter()
            .filter_map(|source| source.shape(digest))
            .find(|body| ContentDigest::of(body) == *digest);
        if let Some(body) = near {
            let body = Arc::new(body);
            let (backend, store, key) = (self.backend.clone(), self.describe(), key.clone());
            let counted = self.deferred_bytes.clone();
            let objects = Locations::deferred(move || {
                let bytes = backend
                    .get(&key, MAX_RECORD_BYTES)
                    .map_err(|e| format!("reading {key} from {store}: {e}"))?
                    .ok_or_else(|| format!("{key} is not in {store}"))?;
                counted.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                ShapeFile::decode_objects(&bytes).map_err(|e| format!("{key} in {store}: {e}"))
            });
            self.remember_shape(digest, &body, &objects);
            return Ok((body, objects, 0));
        }
        let io = |error| ReadError::Io {
            what: key.clone(),
            store: self.describe(),
            error,
        };
        let bytes = self
            .backend
            .get(&key, MAX_RECORD_BYTES)
            .map_err(io)?
            .ok_or_else(|| ReadError::BadRecord {
                key: key.clone(),
                store: self.describe(),
                why: "its shape is missing".into(),
            })?;
        let file = ShapeFile::decode(&bytes, digest).map_err(|why| ReadError::BadRecord {
            key: key.clone(),
            store: self.describe(),
            why,
        })?;
        for source in self.near_shapes.lock().expect("shape sources lock").iter() {
            source.keep(digest, &file.body);
        }
        let body = Arc::new(file.body);
        let objects = Locations::from(file.table);
        self.remember_shape(digest, &body, &objects);
        Ok((body, objects, bytes.len() as u64))
    }

    fn remember_shape(&self, digest: &ContentDigest, body: &Arc<Vec<u8>>, objects: &Locations) {
        // Weighed by the body; an object table is about as large.
        self.shapes.lock().expect("shape cache lock").put(
            *digest,
            (body.clone(), objects.clone()),
            2 * body.len() as u64,
        );
    }

    /// Drop the shape of `record` (and its object table) from memory, after a read with it failed:
    /// a repack may have moved its objects, and the next read fetches the table again.
    pub fn forget_shape(&self, record: &PathRecord) {
        let digest = ContentDigest::of(&record.manifest.shape_body());
        self.shapes
            .lock()
            .expect("shape cache lock")
            .remove(&digest);
    }

    /// Bytes of shape files read so far only for their object tables: a record whose shape came
    /// from near by reads its shape file when an object is missing there.
    pub fn deferred_bytes(&self) -> u64 {
        self.deferred_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Like [`try_record`](Self::try_record), with a missing record an error.
    pub fn record(&self, hash_part: &str) -> Result<(PathRecord, u64), ReadError> {
        self.try_record(hash_part)?
            .ok_or_else(|| ReadError::NotFound {
                hash_part: hash_part.to_string(),
                store: self.describe(),
            })
    }

    /// The hash parts of every path in the store (not over HTTP, which cannot list).
    pub fn list_paths(&self) -> Result<Vec<String>, ReadError> {
        let keys = self
            .backend
            .list("paths/")
            .map_err(|source| ReadError::Io {
                what: "the list of paths/".into(),
                store: self.describe(),
                error: source,
            })?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix("paths/"))
            .filter(|h| is_hash_part(h.as_bytes()))
            .map(String::from)
            .collect())
    }

    /// Walk the closure of `roots` (hash parts) through their records, fetched in parallel level
    /// by level. `visit` sees each record once, in walk order, and decides whether it and its
    /// references belong to the result. Every root and reference must be in the store.
    pub fn closure<E: From<ReadError>>(
        &self,
        roots: &[String],
        mut visit: impl FnMut(&PathRecord) -> Result<Visit, E>,
    ) -> Result<Closure, E> {
        let mut closure = Closure::default();
        let mut seen: HashSet<String> = roots.iter().cloned().collect();
        let mut frontier: Vec<String> = seen.iter().cloned().collect();
        frontier.sort();
        while !frontier.is_empty() {
            let fetched: Vec<Result<(PathRecord, u64), ReadError>> =
                frontier.par_iter().map(|h| self.record(h)).collect();
            let mut next = Vec::new();
            for result in fetched {
                let (record, size) = result?;
                closure.record_bytes += size;
                if visit(&record)? == Visit::Exclude {
                    closure.excluded += 1;
                    continue;
                }
                for h in record.reference_hash_parts() {
                    if seen.insert(h.to_string()) {
                        next.push(h.to_string());
                    }
                }
                closure.records.push(record);
            }
            frontier = next;
        }
        Ok(closure)
    }
}

/// The hash part of a store path as a user names it: `/nix/store/<hash>-<name>`, `<hash>-<name>`
/// or `<hash>`.
pub fn hash_part_of(arg: &str) -> Option<String> {
    let base = arg.rsplit('/').next()?;
    let hash = base.get(..32)?;
    (is_hash_part(hash.as_bytes()) && (base.len() == 32 || base.as_bytes()[32] == b'-'))
        .then(|| hash.to_string())
}

/// Refuse a store whose marker names a format newer than [`STORE_FORMAT`].
pub fn check_marker(location: &str, bytes: &[u8]) -> Result<(), OpenError> {
    let text = String::from_utf8_lossy(bytes);
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix("StoreFormat:"))
        .map(str::trim)
        .unwrap_or("(none given)");
    match found.parse::<u64>() {
        Ok(n) if n <= STORE_FORMAT => Ok(()),
        _ => Err(OpenError::Format {
            location: location.to_string(),
            found: found.chars().take(40).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parts_of_arguments() {
        let h = "0f5bgkfh71dppnqaaxc3xq0vbm4dn1xp";
        assert_eq!(
            hash_part_of(&format!("/nix/store/{h}-hello")).as_deref(),
            Some(h)
        );
        assert_eq!(hash_part_of(&format!("{h}-hello")).as_deref(), Some(h));
        assert_eq!(hash_part_of(h).as_deref(), Some(h));
        assert_eq!(hash_part_of(&format!("{h}x")), None);
        assert_eq!(hash_part_of("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"), None);
    }
}
