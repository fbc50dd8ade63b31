//! The disk cache's objects, found by name.
//!
//! The disk cache keeps blocks, keyed by where they are in the store. A path record names one copy
//! of each object; another record may name another copy of the same object (a second ingest process
//! stored it again, a repack moved it), and a delta's base is named by digest alone. So the cache
//! also keeps an index, `objects.sqlite` beside its blocks: object name → a cached block and the
//! object's place in it, filled with the objects of paths a client finished (their NarHash checked),
//! emptied of a block's objects when the block is evicted. An entry is a hint, never the truth: what it
//! names is read from the cached block and checked against the object's BLAKE3, and a block evicted
//! since is a miss. Several processes share one cache and its index (SQLite, its size counted
//! against the cache's cap).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use refstrip_cas::pack::Location;
use refstrip_cas::{CasError, ObjectId};
use rusqlite::{params, Connection, OptionalExtension};

use crate::objects::{BlockKey, DiskCache, NearFile, NearSource, ObjectSource, PackBlocks};

/// Whether opening the index failed because its file is damaged (not, say, busy).
fn damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The index's file in the cache directory.
pub(crate) const INDEX_FILE: &str = "objects.sqlite";

/// The index of a disk cache's objects (the SQLite side only).
pub(crate) struct CacheIndex {
    db: Mutex<Connection>,
}

impl CacheIndex {
    pub(crate) fn open(dir: &Path) -> io::Result<CacheIndex> {
        let path = dir.join(INDEX_FILE);
        let failed = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = match Self::open_at(&path) {
            Ok(db) => db,
            // A hint file that a crash damaged is thrown away, not trusted. Only then: a file
            // another process holds locked a while is still its index.
            Err(e) if damaged(&e) => {
                let _ = std::fs::remove_file(&path);
                Self::open_at(&path).map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        Ok(CacheIndex { db: Mutex::new(db) })
    }

    /// The index's one file, counted against the cache's cap: no journal file lingers beside it
    /// (the journal is in memory; a crash mid-write can damage the file, which `open` detects and
    /// replaces: the index is only a cache of hints).
    fn open_at(path: &Path) -> rusqlite::Result<Connection> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "MEMORY")?;
        db.pragma_update(None, "synchronous", "OFF")?;
        let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            ));
        }
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                 kind INTEGER NOT NULL, digest BLOB NOT NULL,
                 pack TEXT NOT NULL, block_offset INTEGER NOT NULL, block_len INTEGER NOT NULL,
                 block_raw_len INTEGER NOT NULL, offset_in_block INTEGER NOT NULL,
                 size INTEGER NOT NULL,
                 PRIMARY KEY (kind, digest)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS objects_by_block ON objects (pack, block_offset);",
        )?;
        Ok(db)
    }

    /// Where the cache may hold `id`: the block and the object's place in it, as noted.
    pub(crate) fn find(&self, id: &ObjectId) -> Option<(String, Location)> {
        let db = self.db.lock().expect("poisoned");
        let mut query = db
            .prepare_cached(
                "SELECT pack, block_offset, block_len, block_raw_len, offset_in_block, size
                 FROM objects WHERE kind = ?1 AND digest = ?2",
            )
            .ok()?;
        query
            .query_row(params![id.kind.code(), &id.digest.0[..]], |row| {
                let number = |i| row.get::<_, i64>(i).map(|n| n as u64);
                Ok((
                    row.get::<_, String>(0)?,
                    Location {
                        block_offset: number(1)?,
                        block_len: number(2)?,
                        block_raw_len: number(3)?,
                        offset_in_block: number(4)?,
                        size: number(5)?,
                    },
                ))
            })
            .optional()
            .ok()
            .flatten()
    }

    /// Note these objects as held in their (cached) blocks, in one transaction.
    pub(crate) fn note<'a>(
        &self,
        objects: impl Iterator<Item = (&'a ObjectId, &'a str, &'a Location)>,
    ) -> rusqlite::Result<()> {
        let mut db = self.db.lock().expect("poisoned");
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO objects VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (id, pack, loc) in objects {
                insert.execute(params![
                    id.kind.code(),
                    &id.digest.0[..],
                    pack,
                    loc.block_offset as i64,
                    loc.block_len as i64,
                    loc.block_raw_len as i64,
                    loc.offset_in_block as i64,
                    loc.size as i64,
                ])?;
            }
        }
        tx.commit()
    }

    /// Forget the objects of blocks no longer in the cache.
    pub(crate) fn forget_blocks(&self, blocks: &[(String, u64)]) -> rusqlite::Result<()> {
        let mut db = self.db.lock().expect("poisoned");
        let tx = db.transaction()?;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM objects WHERE pack = ?1 AND block_offset = ?2")?;
            for (pack, offset) in blocks {
                delete.execute(params![pack, *offset as i64])?;
            }
        }
        tx.commit()
    }
}

/// The disk cache as a [`NearSource`]: objects it holds in any cached block, found by name
/// (reads go through the decoded-block memory layer, so one block serves many objects).
pub struct HeldObjects {
    disk: Arc<DiskCache>,
    packs: Arc<PackBlocks>,
    served_objects: AtomicU64,
    served_bytes: AtomicU64,
}

impl HeldObjects {
    pub(crate) fn new(disk: Arc<DiskCache>, packs: Arc<PackBlocks>) -> Self {
        HeldObjects {
            disk,
            packs,
            served_objects: AtomicU64::new(0),
            served_bytes: AtomicU64::new(0),
        }
    }

    /// The block and place of `id` if the cache holds that block now. An entry is checked like a
    /// record's location before it reaches a path on disk or the block decoder: a pack id of hex
    /// digits, a place bounded by its block (the cached block is the whole "pack" it must lie in).
    fn held(&self, id: &ObjectId) -> Option<(String, Location)> {
        let (pack, loc) = self.disk.index.find(id)?;
        let in_block = loc.block_offset.checked_add(loc.block_len)?;
        (crate::record::is_pack_id(&pack)
            && loc.check(in_block).is_ok()
            && self.disk.holds(&BlockKey::of(&pack, &loc)))
        .then_some((pack, loc))
    }
}

impl NearSource for HeldObjects {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, CasError> {
        let Some((pack, loc)) = self.held(id) else {
            return Ok(None);
        };
        // A stale or damaged entry is a miss: the caller reads the copy its record names.
        let Ok(found) = self.packs.object(id, &pack, &loc) else {
            return Ok(None);
        };
        if let Some(bytes) = &found {
            self.served_objects.fetch_add(1, Ordering::Relaxed);
            self.served_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(found)
    }

    fn may_have(&self, id: &ObjectId) -> bool {
        self.held(id).is_some()
    }

    fn served(&self) -> (u64, u64) {
        (
            self.served_objects.load(Ordering::Relaxed),
            self.served_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Near sources asked in order (the local Nix store, then the disk cache's objects).
pub struct NearLayers(pub Vec<Arc<dyn NearSource>>);

impl NearSource for NearLayers {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, CasError> {
        for near in &self.0 {
            if let Some(bytes) = near.object(id)? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    fn may_have(&self, id: &ObjectId) -> bool {
        self.0.iter().any(|near| near.may_have(id))
    }

    fn served(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(o, b), near| {
            let (no, nb) = near.served();
            (o + no, b + nb)
        })
    }

    fn file(&self, id: &ObjectId) -> Option<NearFile> {
        self.0.iter().find_map(|near| near.file(id))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::objects::tests::record_of;
    use crate::objects::{ObjectOptions, Objects};
    use crate::{Locations, ObjectMap, PathRecord};
    use refstrip_backend::{pack_key, LocalDir};
    use refstrip_cas::pack::PackWriter;

    use super::*;

    /// Packs `a` and `b` both holding `shared`; `b` also holds `other`. Returns each pack's
    /// object table.
    fn two_packs(root: &Path, shared: &[u8], other: &[u8]) -> (ObjectMap, ObjectMap) {
        let mut tables = Vec::new();
        for (name, objects) in [("a", vec![shared]), ("b", vec![other, shared])] {
            let mut w = PackWriter::new(Vec::new(), 1).unwrap();
            for bytes in objects {
                w.add(ObjectId::blob(bytes), bytes).unwrap();
            }
            let (bytes, index) = w.finish().unwrap();
            let file = root.join(pack_key(name));
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, bytes).unwrap();
            tables.push(
                index
                    .into_iter()
                    .map(|(id, loc)| (id, (name.to_string(), loc)))
                    .collect(),
            );
        }
        let b = tables.pop().unwrap();
        (tables.pop().unwrap(), b)
    }

    /// A record of one file: the first object of `table`, which is the record's object table.
    fn record(table: ObjectMap) -> PathRecord {
        let (id, (_, loc)) = table.iter().next().unwrap();
        record_of(*id, loc.size, Locations::from(table.clone()))
    }

    #[test]
    fn an_object_cached_under_another_location_is_read_from_the_cache_by_name() {
        let store = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let (shared, other) = (vec![7u8; 5000], vec![9u8; 3000]);
        let (in_a, in_b) = two_packs(store.path(), &shared, &other);
        let opts = ObjectOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..ObjectOptions::default()
        };
        let objects = Objects::new(Arc::new(LocalDir::open(store.path())), &opts).unwrap();
        let id = ObjectId::blob(&shared);
        let first = record(in_a.clone());
        let (pack, loc) = &in_a[&id];
        assert_eq!(
            objects.source().object(&id, pack, loc).unwrap().unwrap(),
            shared
        );
        let near = objects.near().unwrap();
        assert!(
            !near.may_have(&id),
            "nothing is noted before a path is finished"
        );
        objects.remember(&first);
        assert!(near.may_have(&id));

        // Pack a disappears from the store (a repack moved its objects to b): the object is
        // still read, from the cached block of a, by name.
        fs::remove_file(store.path().join(pack_key("a"))).unwrap();
        assert_eq!(near.object(&id).unwrap().unwrap(), shared);
        assert_eq!(near.served(), (1, shared.len() as u64));
        assert!(!near.may_have(&ObjectId::blob(&other)));

        // An entry claiming a block larger than any block may be is a miss, before anything is
        // allocated for it; put back, it is read again.
        let index = Connection::open(cache.path().join(INDEX_FILE)).unwrap();
        let lie = |raw_len: u64| {
            index
                .execute("UPDATE objects SET block_raw_len = ?1", [raw_len as i64])
                .unwrap()
        };
        lie(1 << 40);
        assert!(!near.may_have(&id));
        assert_eq!(near.object(&id).unwrap(), None);
        lie(loc.block_raw_len);
        assert!(near.may_have(&id));
        // So is an entry whose pack is not a plain hex name, even one that leads to the very
        // block (`blocks/../blocks/a/…`): nothing outside the names a store could give is opened.
        let pack_named = |pack: &str| {
            index
                .execute("UPDATE objects SET pack = ?1", [pack])
                .unwrap()
        };
        pack_named("../blocks/a");
        assert!(!near.may_have(&id));
        assert_eq!(near.object(&id).unwrap(), None);
        pack_named("a");
        assert!(near.may_have(&id));

        // A damaged cached block is a miss, never wrong bytes.
        assert!(in_b.contains_key(&id));
        let cached = cache
            .path()
            .join("blocks/a")
            .join(format!("{}-{}", loc.block_offset, loc.block_len));
        assert!(cached.exists());
        let mut bytes = fs::read(&cached).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&cached, bytes).unwrap();
        let fresh = Objects::new(Arc::new(LocalDir::open(store.path())), &opts).unwrap();
        assert_eq!(fresh.near().unwrap().object(&id).unwrap(), None);
    }
}

#[cfg(test)]
mod damage {
    use super::*;

    #[test]
    fn a_damaged_index_file_is_replaced_and_a_sound_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let index = CacheIndex::open(dir.path()).unwrap();
        let id = ObjectId::blob(b"x");
        let loc = Location {
            block_offset: 0,
            block_len: 10,
            block_raw_len: 10,
            offset_in_block: 0,
            size: 1,
        };
        index.note([(&id, "ab", &loc)].into_iter()).unwrap();
        drop(index);
        // Opened again, the entry is still there: a sound file is not thrown away.
        let index = CacheIndex::open(dir.path()).unwrap();
        assert_eq!(index.find(&id), Some(("ab".to_string(), loc)));
    }
}
