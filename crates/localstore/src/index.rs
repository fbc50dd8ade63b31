//! Filling the index: strip every valid path registered since the last run.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader};
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use rayon::prelude::*;
use refstrip_cas::{decode_chunk_list, FileSink, Kind, ObjectId, ObjectWrite, CHUNK_THRESHOLD};
use refstrip_strip::{
    apply_all, compress_shape_quickly, shape_body, strip, ContentDigest, Manifest, Node, Patch,
    PatchKind, RefTable, StripOptions,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{db_err, Error, LocalStore, INDEX_VERSION};

/// What [`LocalStore::update`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    /// Valid paths newly indexed, and the NAR bytes read for them.
    pub paths: u64,
    pub nar_bytes: u64,
    /// Objects (blobs, chunks, chunk lists) recorded for them.
    pub objects: u64,
    /// Paths that could not be read or did not match their NarHash (not indexed, not retried).
    pub skipped: u64,
    /// Paths dropped from the index because Nix no longer has them.
    pub dropped: u64,
}

pub(crate) fn open_index(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    // Several processes (serve, substitute, `refstrip index`) may share one index.
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    // Up to 64 MiB of pages (SQLite's default is 2 MiB): indexing the paths an update wrote
    // inserts rows all over the index by name (large profile: 135 ms with 2 MiB, 80 with 64).
    conn.pragma_update(None, "cache_size", -65536)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != INDEX_VERSION {
        // A cache: another version is simply rebuilt.
        conn.execute_batch(
            "DROP TABLE IF EXISTS objects; DROP TABLE IF EXISTS shapes; DROP TABLE IF EXISTS paths;",
        )?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS paths (
             id INTEGER PRIMARY KEY,        -- ValidPaths.id
             basename TEXT NOT NULL,
             refs TEXT NOT NULL             -- reference basenames, one a line
         );
         CREATE TABLE IF NOT EXISTS objects (
             kind INTEGER NOT NULL,
             digest BLOB NOT NULL,
             path INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
             file BLOB NOT NULL,            -- inside the path, '/'-separated; empty: the path itself
             file_size INTEGER NOT NULL,
             offset INTEGER NOT NULL,       -- of the object's bytes in the normalized file
             size INTEGER NOT NULL,
             zero_start INTEGER,            -- the build-id zeroed by strip, in file offsets
             zero_end INTEGER,
             list BLOB                      -- a chunk list's bytes
         );
         CREATE TABLE IF NOT EXISTS shapes (   -- format 2 shapes of the indexed paths
             digest BLOB NOT NULL,
             path INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
             body BLOB NOT NULL,            -- zstd
             PRIMARY KEY (digest, path)
         );
         CREATE INDEX IF NOT EXISTS shapes_by_path ON shapes (path);
         CREATE UNIQUE INDEX IF NOT EXISTS objects_by_name ON objects (digest, kind, path, file, offset);
         CREATE INDEX IF NOT EXISTS objects_by_path ON objects (path);",
    )?;
    conn.pragma_update(None, "user_version", INDEX_VERSION)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// One valid path as Nix's db describes it.
struct ValidPath {
    id: i64,
    basename: String,
    /// `sha256:<base16>` as Nix writes it.
    hash: String,
    refs: Vec<String>,
}

/// One object found in a file: where its bytes lie.
struct Row {
    id: ObjectId,
    file: Vec<u8>,
    file_size: u64,
    offset: u64,
    size: u64,
    zero: Option<(u64, u64)>,
    list: Option<Vec<u8>>,
}

/// What indexing found in one path.
struct Indexed {
    rows: Vec<Row>,
    nar_size: u64,
    /// Its format 2 shape body.
    shape: Vec<u8>,
}

/// A path's objects and shape, or why it was not indexed.
type Stripped = Result<Indexed, String>;

/// Paths stripped per transaction: progress survives an interruption at this granularity.
const BATCH: usize = 64;

/// A path just written from its manifest (by `refstrip substitute`), for [`LocalStore::add_restored`].
pub struct Restored<'a> {
    pub manifest: &'a Manifest,
    /// The chunk lists of its large files by file digest, as read while restoring it.
    pub chunk_lists: &'a HashMap<ContentDigest, Vec<u8>>,
}

impl LocalStore {
    /// Keep the index up to date while a long-running client (serve) uses it: an update every
    /// `every`, on a thread of its own, so that paths Nix installs meanwhile (through this very
    /// substituter, or from anywhere else) serve the next request. Failures are reported through
    /// `on_error` and retried at the next tick; the thread ends with the process.
    pub fn keep_updated(
        self: &std::sync::Arc<Self>,
        every: Duration,
        on_error: impl Fn(&Error) + Send + 'static,
    ) {
        let local = std::sync::Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let Some(local) = local.upgrade() else {
                return;
            };
            if let Err(e) = local.update(&ProgressBar::hidden()) {
                on_error(&e);
            }
        });
    }

    /// Bring the index up to date with Nix's db: drop paths no longer valid, and strip every valid
    /// path not indexed yet (the ones registered since the last update), in parallel. Incremental by
    /// `ValidPaths.id` set rather than by the highest id: a path registered while an update ran, or
    /// a db made anew (ids restart), is still found; the cost is one scan of the ids.
    pub fn update(&self, progress: &ProgressBar) -> Result<UpdateReport, Error> {
        let (nix, what) = self.open_nix_db()?;
        let mut report = UpdateReport::default();
        let prefix = format!("{}/", self.store_dir);

        // Every valid path by id. Ids only grow (AUTOINCREMENT), so an id names one path for ever
        // in one db; an indexed id now naming another path means another db (a store made anew).
        let valid: HashMap<i64, String> = nix
            .prepare("SELECT id, path FROM ValidPaths")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(db_err(what.clone()))?;
        let mut kept = HashSet::new();
        {
            let mut conn = self.index.lock().expect("poisoned");
            let tx = conn.transaction().map_err(db_err("updating the index"))?;
            let indexed: Vec<(i64, String)> = tx
                .prepare("SELECT id, basename FROM paths")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(db_err("reading the index"))?;
            for (id, basename) in indexed {
                let same = valid
                    .get(&id)
                    .is_some_and(|p| p.strip_prefix(&prefix) == Some(basename.as_str()));
                if same {
                    kept.insert(id);
                    continue;
                }
                tx.execute("DELETE FROM objects WHERE path = ?1", [id])
                    .and_then(|_| tx.execute("DELETE FROM shapes WHERE path = ?1", [id]))
                    .and_then(|_| tx.execute("DELETE FROM paths WHERE id = ?1", [id]))
                    .map_err(db_err("dropping a path from the index"))?;
                report.dropped += 1;
            }
            tx.commit().map_err(db_err("updating the index"))?;
        }
        // Only what is not indexed yet: normally the paths registered since the last update.
        let mut todo: Vec<(i64, String)> = valid
            .into_iter()
            .filter(|(id, _)| !kept.contains(id))
            .collect();
        todo.sort();

        let new = self.new_paths(&nix, todo).map_err(db_err(what))?;
        drop(nix);
        progress.set_length(new.len() as u64);
        progress.set_message("indexing the local store");
        for batch in new.chunks(BATCH) {
            let stripped: Vec<(&ValidPath, Stripped)> =
                batch.par_iter().map(|p| (p, self.strip_path(p))).collect();
            let mut conn = self.index.lock().expect("poisoned");
            let tx = conn.transaction().map_err(db_err("updating the index"))?;
            for (p, result) in stripped {
                tx.execute(
                    "INSERT OR REPLACE INTO paths (id, basename, refs) VALUES (?1, ?2, ?3)",
                    params![p.id, p.basename, p.refs.join("\n")],
                )
                .map_err(db_err("writing the index"))?;
                match result {
                    Ok(indexed) => {
                        report.paths += 1;
                        report.nar_bytes += indexed.nar_size;
                        report.objects += indexed.rows.len() as u64;
                        insert_rows(&tx, p.id, &indexed.rows)
                            .and_then(|_| insert_shape(&tx, p.id, &indexed.shape))
                            .map_err(db_err("writing the index"))?;
                    }
                    Err(why) => {
                        progress
                            .suspend(|| eprintln!("refstrip: not indexing {}: {why}", p.basename));
                        report.skipped += 1;
                    }
                }
                progress.inc(1);
            }
            tx.commit().map_err(db_err("updating the index"))?;
        }
        Ok(report)
    }

    /// Index paths just written from their manifests and registered in Nix's db, without reading
    /// them back: their objects are the manifest's, laid out as stripping the written files would
    /// find them, so the next [`update`](Self::update) has nothing to strip. A path Nix does not
    /// list as valid with the manifest's NarHash, or lacking a chunk list, is left to the next
    /// update. Returns how many paths were indexed.
    pub fn add_restored(&self, paths: &[Restored]) -> Result<u64, Error> {
        let (nix, what) = self.open_nix_db()?;
        let mut valid = nix
            .prepare("SELECT id, hash FROM ValidPaths WHERE path = ?1")
            .map_err(db_err(what.clone()))?;
        let mut found = Vec::new();
        for p in paths {
            let m = p.manifest;
            let basename = String::from_utf8_lossy(m.basename()).into_owned();
            let path = format!("{}/{basename}", self.store_dir);
            let Some((id, hash)) = valid
                .query_row([&path], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(db_err(what.clone()))?
            else {
                continue;
            };
            let hex: String = m.nar_hash.iter().map(|b| format!("{b:02x}")).collect();
            if hash != format!("sha256:{hex}") {
                continue;
            }
            let Some(rows) = manifest_rows(m, p.chunk_lists) else {
                continue;
            };
            let mut refs: Vec<String> = m
                .references
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            refs.sort();
            found.push((id, basename, refs, rows, m.shape_body()));
        }
        drop(valid);
        drop(nix);
        let mut conn = self.index.lock().expect("poisoned");
        let tx = conn.transaction().map_err(db_err("updating the index"))?;
        for (id, basename, refs, rows, shape) in &found {
            // Whatever the index had under this id was another path (a store made anew).
            tx.execute("DELETE FROM objects WHERE path = ?1", [id])
                .and_then(|_| tx.execute("DELETE FROM shapes WHERE path = ?1", [id]))
                .and_then(|_| {
                    tx.execute(
                        "INSERT OR REPLACE INTO paths (id, basename, refs) VALUES (?1, ?2, ?3)",
                        params![id, basename, refs.join("\n")],
                    )
                })
                .and_then(|_| insert_rows(&tx, *id, rows))
                .and_then(|_| insert_shape(&tx, *id, shape))
                .map_err(db_err("writing the index"))?;
        }
        tx.commit().map_err(db_err("updating the index"))?;
        Ok(found.len() as u64)
    }

    /// Nix's database, read-only, and what to call reading it in errors.
    fn open_nix_db(&self) -> Result<(Connection, String), Error> {
        let db_file = self.root.join("nix/var/nix/db/db.sqlite");
        let what = format!("reading {}", db_file.display());
        let nix = Connection::open_with_flags(&db_file, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(db_err(what.clone()))?;
        nix.busy_timeout(Duration::from_secs(60))
            .map_err(db_err(what.clone()))?;
        Ok((nix, what))
    }

    /// Hash and references of the paths `todo` (id, full path) of this store directory.
    fn new_paths(
        &self,
        nix: &Connection,
        todo: Vec<(i64, String)>,
    ) -> rusqlite::Result<Vec<ValidPath>> {
        let prefix = format!("{}/", self.store_dir);
        let mut refs_of = nix.prepare(
            "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?1",
        )?;
        let mut hash_of = nix.prepare("SELECT hash FROM ValidPaths WHERE id = ?1")?;
        let mut out = Vec::with_capacity(todo.len());
        for (id, path) in todo {
            // Paths of another store directory, or names Nix would not accept, are not ours to read.
            let Some(basename) = path.strip_prefix(&prefix) else {
                continue;
            };
            if refstrip_nix::check_base_name(basename.as_bytes()).is_err() {
                continue;
            }
            let Some(hash) = hash_of.query_row([id], |r| r.get(0)).optional()? else {
                continue; // unregistered meanwhile
            };
            // Sorted: the column is the same whoever fills it (the table is order-free).
            let mut refs: Vec<String> = refs_of
                .query_map([id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
                .collect();
            refs.sort();
            out.push(ValidPath {
                id,
                basename: basename.to_string(),
                hash,
                refs,
            });
        }
        Ok(out)
    }

    /// Strip one path as ingest would (same reference table, same options), keeping only where
    /// each object's bytes lie, and its shape.
    fn strip_path(&self, p: &ValidPath) -> Stripped {
        let refs: Vec<Vec<u8>> = p.refs.iter().map(|r| r.as_bytes().to_vec()).collect();
        let table = RefTable::new(p.basename.as_bytes(), &refs).map_err(|e| e.to_string())?;
        let path = self.real_store.join(&p.basename);
        let (reader, writer) = io::pipe().map_err(|e| e.to_string())?;
        let dumper = std::thread::spawn(move || {
            refstrip_nar::dump(&path, io::BufWriter::with_capacity(1 << 20, writer))
        });
        let mut recorder = Recorder::default();
        let stripped = {
            let mut sink = FileSink::new(&mut recorder);
            strip(
                BufReader::with_capacity(1 << 20, reader),
                &table,
                &StripOptions::default(),
                &mut sink,
            )
        };
        // The reader is gone (dropped by strip), so a dumper still writing sees a broken pipe.
        let dumped = dumper
            .join()
            .map_err(|_| "the dumping thread panicked".to_string())?;
        let stripped = stripped.map_err(|e| e.to_string())?;
        dumped.map_err(|e| e.to_string())?;
        let hex: String = stripped
            .nar_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(expected) = p.hash.strip_prefix("sha256:").filter(|h| h.len() == 64) {
            if expected != hex {
                return Err("its contents do not match the NarHash Nix recorded".into());
            }
        }
        let mut files = Vec::new();
        files_in_nar_order(&stripped.root, &table, &mut Vec::new(), &mut files);
        let rows = rows_of(&files, recorder.objects).ok_or("objects do not match the files")?;
        let shape = shape_body(self.store_dir.as_bytes(), &table, &stripped.root);
        Ok(Indexed {
            rows,
            nar_size: stripped.nar_size,
            shape,
        })
    }
}

fn insert_shape(tx: &rusqlite::Transaction, path: i64, body: &[u8]) -> rusqlite::Result<()> {
    let digest = blake3::hash(body);
    tx.execute(
        "INSERT OR IGNORE INTO shapes (digest, path, body) VALUES (?1, ?2, ?3)",
        params![&digest.as_bytes()[..], path, compress_shape_quickly(body)],
    )?;
    Ok(())
}

/// The rows of a path written from `manifest`: the objects strip would make of its files, in the
/// order it would make them (per file in NAR order: the blob, or the chunks then the chunk list).
fn manifest_rows(
    manifest: &Manifest,
    chunk_lists: &HashMap<ContentDigest, Vec<u8>>,
) -> Option<Vec<Row>> {
    let mut files = Vec::new();
    files_in_nar_order(&manifest.root, &manifest.refs, &mut Vec::new(), &mut files);
    let mut objects = Vec::new();
    for (_, size, _, digest) in &files {
        if *size <= CHUNK_THRESHOLD as u64 {
            objects.push((ObjectId::new(Kind::Blob, *digest), *size, None));
            continue;
        }
        let list = chunk_lists.get(digest)?;
        for (chunk, len) in decode_chunk_list(list)? {
            objects.push((ObjectId::new(Kind::Blob, chunk), len, None));
        }
        let id = ObjectId::new(Kind::ChunkList, *digest);
        objects.push((id, list.len() as u64, Some(list.clone())));
    }
    rows_of(&files, objects)
}

fn insert_rows(tx: &rusqlite::Transaction, path: i64, rows: &[Row]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO objects
         (kind, digest, path, file, file_size, offset, size, zero_start, zero_end, list)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in rows {
        stmt.execute(params![
            r.id.kind.code() as i64,
            &r.id.digest.0[..],
            path,
            r.file,
            r.file_size as i64,
            r.offset as i64,
            r.size as i64,
            r.zero.map(|z| z.0 as i64),
            r.zero.map(|z| z.1 as i64),
            r.list,
        ])?;
    }
    Ok(())
}

/// Records which objects strip made, in order, instead of storing them.
#[derive(Default)]
struct Recorder {
    /// (name, size, the bytes of a chunk list).
    objects: Vec<(ObjectId, u64, Option<Vec<u8>>)>,
}

impl ObjectWrite for Recorder {
    fn has(&mut self, _: &ObjectId) -> io::Result<bool> {
        Ok(false)
    }

    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()> {
        let list = (id.kind == Kind::ChunkList).then(|| bytes.to_vec());
        self.objects.push((id, bytes.len() as u64, list));
        Ok(())
    }
}

/// A regular file of the tree: path inside the store path, size, patches, normalized digest.
type FileEntry = (Vec<u8>, u64, Vec<Patch>, ContentDigest);

/// Regular files in the order strip met them: the NAR's, i.e. each directory sorted by real name.
fn files_in_nar_order(
    node: &Node,
    refs: &RefTable,
    prefix: &mut Vec<u8>,
    out: &mut Vec<FileEntry>,
) {
    match node {
        Node::File {
            size,
            patches,
            digest,
            ..
        } => out.push((prefix.clone(), *size, patches.clone(), *digest)),
        Node::Symlink { .. } => {}
        Node::Directory(entries) => {
            let mut named: Vec<(Vec<u8>, &Node)> = entries
                .iter()
                .map(|e| (apply_all(&e.name, &e.name_patches, refs), &e.node))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, child) in named {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(&name);
                files_in_nar_order(child, refs, prefix, out);
                prefix.truncate(len);
            }
        }
    }
}

/// Split the objects strip made among the files: one blob per small file; chunks and then the
/// chunk list per large one, the chunks at consecutive offsets.
fn rows_of(
    files: &[FileEntry],
    objects: Vec<(ObjectId, u64, Option<Vec<u8>>)>,
) -> Option<Vec<Row>> {
    let mut objects = objects.into_iter();
    let mut rows = Vec::new();
    for (file, size, patches, _) in files {
        // Strip's only literal patch is the zeroed build-id.
        let zero = patches.iter().find_map(|p| match &p.kind {
            PatchKind::Literal(bytes) => Some((p.offset, p.offset + bytes.len() as u64)),
            PatchKind::Ref(_) => None,
        });
        let in_range = |at: u64, len: u64| zero.filter(|z| z.0 < at + len && z.1 > at);
        let mut offset = 0;
        loop {
            let (id, len, list) = objects.next()?;
            let whole = *size <= CHUNK_THRESHOLD as u64 || id.kind == Kind::ChunkList;
            rows.push(Row {
                id,
                file: file.clone(),
                file_size: *size,
                offset: if whole { 0 } else { offset },
                size: if id.kind == Kind::ChunkList {
                    *size
                } else {
                    len
                },
                zero: if whole { zero } else { in_range(offset, len) },
                list,
            });
            offset += len;
            if whole {
                break;
            }
        }
    }
    objects.next().is_none().then_some(rows)
}
