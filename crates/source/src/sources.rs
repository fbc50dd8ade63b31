//! NAR sources: a Nix binary cache (`file://`, `http(s)://` or `s3://`) or a local Nix store.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use refstrip_backend::{Backend, Http, RequestCounts, StoreUrl, S3};
use refstrip_nix::{NarInfo, StoreDir, StorePath};

use crate::compression::{decompress, Compression};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{0} is not in the source")]
    NotFound(String),
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io {
        what,
        error: source,
    }
}

/// Somewhere store paths can be read from as narinfo + NAR stream.
pub trait NarSource: Send + Sync {
    fn describe(&self) -> String;
    fn store_dir(&self) -> &StoreDir;
    /// Every path the source holds (for `--all`).
    fn list(&self) -> Result<Vec<StorePath>, SourceError>;
    /// The narinfos of the listed paths whose hash part `keep` accepts. A binary cache filters its
    /// listing's names before fetching anything, so N shard workers fetch each narinfo once in
    /// all, not N times.
    fn list_where(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<NarInfo>, SourceError> {
        self.list()?
            .iter()
            .filter(|p| keep(p.hash_part()))
            .map(|p| self.narinfo(p))
            .collect()
    }
    fn narinfo(&self, path: &StorePath) -> Result<NarInfo, SourceError>;
    /// The uncompressed NAR of `info`'s path. Not verified here: the reader compares the NarHash.
    fn nar(&self, info: &NarInfo) -> Result<Box<dyn BufRead + Send>, SourceError>;
    /// Requests made so far, for sources billed per request (an S3 bucket).
    fn requests(&self) -> Option<RequestCounts> {
        None
    }
}

/// Open a source by the way Nix users name it: `file:///dir`, `http(s)://host/…` or
/// `s3://bucket/prefix?endpoint=…&region=…` (a binary cache), `/` or a chroot-store root directory (a local Nix store with `nix/var/nix/db/db.sqlite`),
/// or a plain directory holding `nix-cache-info` (a binary cache).
pub fn open_source(spec: &str, store_dir: StoreDir) -> Result<Box<dyn NarSource>, SourceError> {
    let url = StoreUrl::parse(spec).map_err(|e| SourceError::Invalid {
        what: spec.into(),
        why: e.why,
    })?;
    let dir = match url {
        StoreUrl::Http { base, timeouts } => {
            return Ok(Box::new(BinaryCache::Http {
                http: Box::new(Http::new(&base, timeouts)),
                store_dir,
            }))
        }
        StoreUrl::S3(s3) => {
            return Ok(Box::new(BinaryCache::Bucket {
                s3: Box::new(S3::open(&s3).map_err(io_err(spec))?),
                store_dir,
            }))
        }
        StoreUrl::Dir(dir) => dir,
    };
    if dir.join("nix/var/nix/db/db.sqlite").exists() {
        return Ok(Box::new(LocalStore {
            root: dir,
            store_dir,
        }));
    }
    if spec.starts_with("file://") || dir.join("nix-cache-info").exists() {
        return Ok(Box::new(BinaryCache::Dir { dir, store_dir }));
    }
    Err(SourceError::Invalid {
        what: spec.into(),
        why: "neither a binary cache (no nix-cache-info) nor a Nix store root (no nix/var/nix/db/db.sqlite)".into(),
    })
}

/// A Nix binary cache: `<hash>.narinfo` files and the NAR files their `URL`s name.
pub enum BinaryCache {
    Dir {
        dir: PathBuf,
        store_dir: StoreDir,
    },
    Http {
        http: Box<Http>,
        store_dir: StoreDir,
    },
    /// In an S3-compatible bucket (as written by `nix copy --to s3://…`).
    Bucket {
        s3: Box<S3>,
        store_dir: StoreDir,
    },
}

impl BinaryCache {
    fn fetch(&self, rel: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        match self {
            BinaryCache::Dir { dir, .. } => {
                let path = dir.join(rel);
                match File::open(&path) {
                    Ok(f) => Ok(Box::new(f)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(SourceError::NotFound(path.display().to_string()))
                    }
                    Err(e) => Err(io_err(path.display().to_string())(e)),
                }
            }
            BinaryCache::Http { http, .. } => {
                let what = format!("{}/{rel}", http.describe());
                http.open_read(rel)
                    .map_err(io_err(what.clone()))?
                    .ok_or(SourceError::NotFound(what))
            }
            BinaryCache::Bucket { s3, .. } => {
                let what = format!("{}/{rel}", s3.describe());
                s3.open_read(rel)
                    .map_err(io_err(what.clone()))?
                    .ok_or(SourceError::NotFound(what))
            }
        }
    }
}

impl NarSource for BinaryCache {
    fn describe(&self) -> String {
        match self {
            BinaryCache::Dir { dir, .. } => format!("file://{}", dir.display()),
            BinaryCache::Http { http, .. } => http.describe(),
            BinaryCache::Bucket { s3, .. } => s3.describe(),
        }
    }

    fn store_dir(&self) -> &StoreDir {
        match self {
            BinaryCache::Dir { store_dir, .. }
            | BinaryCache::Http { store_dir, .. }
            | BinaryCache::Bucket { store_dir, .. } => store_dir,
        }
    }

    fn list(&self) -> Result<Vec<StorePath>, SourceError> {
        Ok(self
            .list_where(&|_| true)?
            .into_iter()
            .map(|info| info.store_path)
            .collect())
    }

    fn list_where(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<NarInfo>, SourceError> {
        let names = match self {
            BinaryCache::Dir { dir, .. } => {
                let mut names = Vec::new();
                for e in fs::read_dir(dir).map_err(io_err(dir.display().to_string()))? {
                    let e = e.map_err(io_err(dir.display().to_string()))?;
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
                names
            }
            BinaryCache::Bucket { s3, .. } => s3.list("").map_err(io_err(s3.describe()))?,
            BinaryCache::Http { .. } => {
                return Err(SourceError::Invalid {
                    what: self.describe(),
                    why: "an HTTP cache cannot be listed; name the paths to ingest".into(),
                })
            }
        };
        names
            .iter()
            .filter_map(|name| name.strip_suffix(".narinfo"))
            .filter(|hash| keep(hash))
            .map(|hash| self.narinfo_by_hash(hash))
            .collect()
    }

    fn narinfo(&self, path: &StorePath) -> Result<NarInfo, SourceError> {
        let info = self.narinfo_by_hash(path.hash_part())?;
        if info.store_path != *path {
            return Err(SourceError::Invalid {
                what: path.to_string(),
                why: format!("narinfo is for {}", info.store_path),
            });
        }
        Ok(info)
    }

    fn nar(&self, info: &NarInfo) -> Result<Box<dyn BufRead + Send>, SourceError> {
        let compression = Compression::from_narinfo(info.compression.as_deref())
            .map_err(io_err(info.url.clone()))?;
        decompress(self.fetch(&info.url)?, compression).map_err(io_err(info.url.clone()))
    }

    fn requests(&self) -> Option<RequestCounts> {
        match self {
            BinaryCache::Bucket { s3, .. } => s3.requests(),
            _ => None,
        }
    }
}

impl BinaryCache {
    fn narinfo_by_hash(&self, hash: &str) -> Result<NarInfo, SourceError> {
        let rel = format!("{hash}.narinfo");
        let mut text = Vec::new();
        self.fetch(&rel)?
            .read_to_end(&mut text)
            .map_err(io_err(rel.clone()))?;
        NarInfo::parse_bytes(self.store_dir(), &text).map_err(|e| SourceError::Invalid {
            what: rel,
            why: e.to_string(),
        })
    }
}

/// A local Nix store: `ROOT/nix/var/nix/db/db.sqlite` for metadata, `ROOT/<store dir>` for contents.
/// `ROOT` is `/` for the system store, or a chroot store's root (`nix --store ROOT`).
pub struct LocalStore {
    root: PathBuf,
    store_dir: StoreDir,
}

impl LocalStore {
    fn db(&self) -> Result<rusqlite::Connection, SourceError> {
        let path = self.root.join("nix/var/nix/db/db.sqlite");
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| SourceError::Io {
                what: path.display().to_string(),
                error: io::Error::other(e),
            })
    }

    fn real_path(&self, path: &StorePath) -> PathBuf {
        let full = self.store_dir.display_path(path);
        self.root.join(
            Path::new(&full)
                .strip_prefix("/")
                .unwrap_or(Path::new(&full)),
        )
    }
}

fn db_err(e: rusqlite::Error) -> SourceError {
    SourceError::Io {
        what: "Nix database".into(),
        error: io::Error::other(e),
    }
}

impl NarSource for LocalStore {
    fn describe(&self) -> String {
        format!("local Nix store at {}", self.root.display())
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn list(&self) -> Result<Vec<StorePath>, SourceError> {
        let db = self.db()?;
        let mut q = db.prepare("SELECT path FROM ValidPaths").map_err(db_err)?;
        let paths: Vec<String> = q
            .query_map([], |r| r.get(0))
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        paths
            .iter()
            .map(|p| {
                self.store_dir
                    .parse_path(p)
                    .map_err(|e| SourceError::Invalid {
                        what: p.clone(),
                        why: e.to_string(),
                    })
            })
            .collect()
    }

    fn narinfo(&self, path: &StorePath) -> Result<NarInfo, SourceError> {
        let db = self.db()?;
        let full = self.store_dir.display_path(path);
        let row = db
            .query_row(
                "SELECT id, hash, narSize, deriver, sigs, ca FROM ValidPaths WHERE path = ?1",
                [&full],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => SourceError::NotFound(full.clone()),
                e => db_err(e),
            })?;
        let (id, hash, nar_size, deriver, sigs, ca) = row;
        let mut q = db
            .prepare("SELECT p.path FROM Refs r JOIN ValidPaths p ON r.reference = p.id WHERE r.referrer = ?1 ORDER BY p.path")
            .map_err(db_err)?;
        let refs: Vec<String> = q
            .query_map([id], |r| r.get(0))
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        // Build the narinfo text Nix would serve for this path and parse it: one code path for all.
        let basenames: Vec<&str> = refs
            .iter()
            .map(|r| r.rsplit('/').next().unwrap_or(r))
            .collect();
        let mut text = format!(
            "StorePath: {full}\nURL: local\nCompression: none\nNarHash: {hash}\nNarSize: {}\nReferences: {}\n",
            nar_size.unwrap_or(0),
            basenames.join(" ")
        );
        if let Some(d) = deriver.filter(|d| !d.is_empty()) {
            text.push_str(&format!(
                "Deriver: {}\n",
                d.rsplit('/').next().unwrap_or(&d)
            ));
        }
        for sig in sigs.unwrap_or_default().split_whitespace() {
            text.push_str(&format!("Sig: {sig}\n"));
        }
        if let Some(ca) = ca.filter(|c| !c.is_empty()) {
            text.push_str(&format!("CA: {ca}\n"));
        }
        // The database stores the NarHash as sha256:<base16>, which the parser accepts.
        NarInfo::parse(&self.store_dir, &text).map_err(|e| SourceError::Invalid {
            what: full,
            why: e.to_string(),
        })
    }

    fn nar(&self, info: &NarInfo) -> Result<Box<dyn BufRead + Send>, SourceError> {
        let path = self.real_path(&info.store_path);
        let (reader, writer) = io::pipe().map_err(io_err("pipe"))?;
        // Dumping runs beside the reader; if it fails the pipe closes early and the reader sees a
        // truncated NAR (and a NarHash mismatch), so no error is lost silently.
        std::thread::spawn(move || {
            if let Err(e) = refstrip_nar::dump(&path, io::BufWriter::with_capacity(1 << 20, writer))
            {
                eprintln!("refstrip: dumping {}: {e}", path.display());
            }
        });
        Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
    }
}
