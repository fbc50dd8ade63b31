//! The SQLite catalog of a store: which packs, objects and paths exist, their sizes and who
//! references what. It only caches what the store's files say, so it can be rebuilt from them
//! ([`crate::Store::rebuild_catalog`]); WAL mode and a busy timeout let concurrent ingests share it.

use std::path::Path;
use std::time::Duration;

use refstrip_cas::pack::Location;
use refstrip_cas::ObjectId;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS packs (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, objects INTEGER NOT NULL, raw_bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    kind INTEGER NOT NULL, digest BLOB NOT NULL, pack TEXT NOT NULL,
    block_offset INTEGER NOT NULL, block_len INTEGER NOT NULL, block_raw_len INTEGER NOT NULL,
    offset_in_block INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (kind, digest, pack)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paths (
    hash_part TEXT PRIMARY KEY, store_path TEXT NOT NULL, nar_hash BLOB NOT NULL,
    nar_size INTEGER NOT NULL, record_size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS path_objects (
    hash_part TEXT NOT NULL, kind INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (hash_part, kind, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS path_objects_by_object ON path_objects (kind, digest);
CREATE TABLE IF NOT EXISTS claims (
    kind INTEGER NOT NULL, digest BLOB NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (kind, digest)
) WITHOUT ROWID;
";

/// Who stores an object ([`Catalog::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Catalogued: in a sealed pack.
    Stored,
    /// Now claimed by the asking process, which must store it.
    Ours,
    /// Claimed by another live process, which will catalogue it when its pack is sealed.
    Theirs(String),
}

pub struct Catalog {
    db: Connection,
}

/// Totals for `refstrip stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub paths: u64,
    pub nar_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub objects: u64,
    pub object_bytes: u64,
    pub record_bytes: u64,
}

impl Catalog {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(60))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(SCHEMA)?;
        Ok(Catalog { db })
    }

    pub fn has_path(&self, hash_part: &str) -> rusqlite::Result<bool> {
        self.db
            .query_row(
                "SELECT 1 FROM paths WHERE hash_part = ?1",
                [hash_part],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
    }

    pub fn locate(&self, id: &ObjectId) -> rusqlite::Result<Option<(String, Location)>> {
        self.db
            .query_row(
                "SELECT pack, block_offset, block_len, block_raw_len, offset_in_block, size FROM objects WHERE kind = ?1 AND digest = ?2 LIMIT 1",
                params![id.kind.code(), &id.digest.0[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Location {
                            block_offset: r.get(1)?,
                            block_len: r.get(2)?,
                            block_raw_len: r.get(3)?,
                            offset_in_block: r.get(4)?,
                            size: r.get(5)?,
                        },
                    ))
                },
            )
            .optional()
    }

    /// Claim `id` for `owner` unless it is catalogued or claimed by another owner that is still
    /// `alive`: so that ingest processes sharing this catalog never store one object twice (the
    /// process-wide half of the claims; claims of dead owners are taken over).
    pub fn claim(
        &mut self,
        id: &ObjectId,
        owner: &str,
        alive: impl Fn(&str) -> bool,
    ) -> rusqlite::Result<Claim> {
        if self.locate(id)?.is_some() {
            return Ok(Claim::Stored);
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = params![id.kind.code(), &id.digest.0[..]];
        let stored = tx
            .query_row(
                "SELECT 1 FROM objects WHERE kind = ?1 AND digest = ?2 LIMIT 1",
                key,
                |_| Ok(()),
            )
            .optional()?;
        if stored.is_some() {
            return Ok(Claim::Stored);
        }
        if let Some(theirs) = Self::claimant_in(&tx, id)? {
            if theirs != owner && alive(&theirs) {
                return Ok(Claim::Theirs(theirs));
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO claims (kind, digest, owner) VALUES (?1, ?2, ?3)",
            params![id.kind.code(), &id.digest.0[..], owner],
        )?;
        tx.commit()?;
        Ok(Claim::Ours)
    }

    /// The owner of the claim on `id`, if any.
    pub fn claimant(&self, id: &ObjectId) -> rusqlite::Result<Option<String>> {
        Self::claimant_in(&self.db, id)
    }

    fn claimant_in(db: &Connection, id: &ObjectId) -> rusqlite::Result<Option<String>> {
        db.query_row(
            "SELECT owner FROM claims WHERE kind = ?1 AND digest = ?2",
            params![id.kind.code(), &id.digest.0[..]],
            |r| r.get(0),
        )
        .optional()
    }

    /// Drop every claim of `owner` (its ingest is over: what it sealed is catalogued).
    pub fn release_claims(&mut self, owner: &str) -> rusqlite::Result<()> {
        self.db
            .execute("DELETE FROM claims WHERE owner = ?1", [owner])
            .map(drop)
    }

    /// Record a sealed pack and its objects. Concurrent ingests may store one object in several
    /// packs; every copy is recorded, since path records may point at any of them.
    pub fn add_pack<'a>(
        &mut self,
        id: &str,
        size: u64,
        raw_bytes: u64,
        objects: impl ExactSizeIterator<Item = (&'a ObjectId, &'a Location)>,
    ) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO packs (id, size, objects, raw_bytes) VALUES (?1, ?2, ?3, ?4)",
            params![id, size, objects.len() as u64, raw_bytes],
        )?;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO objects (kind, digest, pack, block_offset, block_len, block_raw_len, offset_in_block, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut unclaim = tx.prepare("DELETE FROM claims WHERE kind = ?1 AND digest = ?2")?;
            for (oid, loc) in objects {
                insert.execute(params![
                    oid.kind.code(),
                    &oid.digest.0[..],
                    id,
                    loc.block_offset,
                    loc.block_len,
                    loc.block_raw_len,
                    loc.offset_in_block,
                    loc.size
                ])?;
                unclaim.execute(params![oid.kind.code(), &oid.digest.0[..]])?;
            }
        }
        tx.commit()
    }

    pub fn add_path<'a>(
        &mut self,
        hash_part: &str,
        store_path: &str,
        nar_hash: &[u8; 32],
        nar_size: u64,
        record_size: u64,
        objects: impl Iterator<Item = &'a ObjectId>,
    ) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO paths (hash_part, store_path, nar_hash, nar_size, record_size) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash_part, store_path, &nar_hash[..], nar_size, record_size],
        )?;
        tx.execute("DELETE FROM path_objects WHERE hash_part = ?1", [hash_part])?;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO path_objects (hash_part, kind, digest) VALUES (?1, ?2, ?3)",
            )?;
            for id in objects {
                insert.execute(params![hash_part, id.kind.code(), &id.digest.0[..]])?;
            }
        }
        tx.commit()
    }

    pub fn remove_path(&mut self, hash_part: &str) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM paths WHERE hash_part = ?1", [hash_part])?;
        tx.execute("DELETE FROM path_objects WHERE hash_part = ?1", [hash_part])?;
        tx.commit()
    }

    pub fn remove_pack(&mut self, id: &str) -> rusqlite::Result<()> {
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM objects WHERE pack = ?1", [id])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [id])?;
        tx.commit()
    }

    pub fn paths(&self) -> rusqlite::Result<Vec<(String, String)>> {
        let mut q = self
            .db
            .prepare("SELECT hash_part, store_path FROM paths ORDER BY store_path")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Every pack with its size and the uncompressed bytes of its objects.
    pub fn pack_sizes(&self) -> rusqlite::Result<Vec<(String, u64, u64)>> {
        let mut q = self
            .db
            .prepare("SELECT id, size, raw_bytes FROM packs ORDER BY id")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    }

    pub fn packs(&self) -> rusqlite::Result<Vec<String>> {
        let mut q = self.db.prepare("SELECT id FROM packs")?;
        let rows = q.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// Packs none of whose objects any path needs (whichever copy its record points at), so no
    /// record can point into them.
    pub fn unreferenced_packs(&self) -> rusqlite::Result<Vec<String>> {
        let mut q = self.db.prepare(
            "SELECT id FROM packs WHERE NOT EXISTS (
                 SELECT 1 FROM objects o JOIN path_objects p ON p.kind = o.kind AND p.digest = o.digest
                 WHERE o.pack = packs.id)",
        )?;
        let rows = q.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// The packs that would be unreferenced if only the paths in `keep` (hash parts) remained,
    /// with their sizes: what gc deletes, computed before it removes anything.
    pub fn packs_unreferenced_by(
        &mut self,
        keep: &std::collections::HashSet<String>,
    ) -> rusqlite::Result<Vec<(String, u64)>> {
        let tx = self.db.transaction()?;
        tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS gc_keep (hash_part TEXT PRIMARY KEY); DELETE FROM gc_keep;")?;
        {
            let mut insert = tx.prepare("INSERT OR IGNORE INTO gc_keep VALUES (?1)")?;
            for h in keep {
                insert.execute([h])?;
            }
        }
        let packs = {
            let mut q = tx.prepare(
                "SELECT id, size FROM packs WHERE NOT EXISTS (
                     SELECT 1 FROM objects o JOIN path_objects p ON p.kind = o.kind AND p.digest = o.digest
                     JOIN gc_keep k ON k.hash_part = p.hash_part
                     WHERE o.pack = packs.id)",
            )?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        // Nothing to keep: the temporary table goes with the rollback.
        tx.rollback()?;
        Ok(packs)
    }

    /// Bytes of objects no path references (what a repack could reclaim).
    pub fn unreferenced_object_bytes(&self) -> rusqlite::Result<u64> {
        self.db.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT kind, digest, size FROM objects) o WHERE NOT EXISTS (
                 SELECT 1 FROM path_objects p WHERE p.kind = o.kind AND p.digest = o.digest)",
            [],
            |r| r.get(0),
        )
    }

    pub fn totals(&self) -> rusqlite::Result<Totals> {
        let (paths, nar_bytes, record_bytes) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(nar_size), 0), COALESCE(SUM(record_size), 0) FROM paths",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (packs, pack_bytes) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM packs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (objects, object_bytes) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT DISTINCT kind, digest, size FROM objects)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Totals {
            paths,
            nar_bytes,
            packs,
            pack_bytes,
            objects,
            object_bytes,
            record_bytes,
        })
    }

    /// Whether the pack is catalogued (published, and neither condemned nor retired as far as this
    /// catalog knows).
    pub fn has_pack(&self, id: &str) -> rusqlite::Result<bool> {
        self.db
            .query_row("SELECT 1 FROM packs WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    /// Stored copies of objects, counting an object in two packs twice (ingest stores one).
    pub fn object_copies(&self) -> rusqlite::Result<u64> {
        self.db
            .query_row("SELECT COUNT(*) FROM objects", [], |r| r.get(0))
    }

    /// Forget everything (before a rebuild).
    pub fn clear(&mut self) -> rusqlite::Result<()> {
        self.db.execute_batch(
            "DELETE FROM path_objects; DELETE FROM paths; DELETE FROM objects; DELETE FROM packs;
             DELETE FROM claims;",
        )
    }
}
