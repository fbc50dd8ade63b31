//! A Nix store's database and locks, as Nix 2.8 keeps them (schema version 10).
//!
//! Layout under a store root `ROOT` (`/` for the system store, any directory for a chroot store,
//! which Nix opens with `--store ROOT`):
//!
//! ```text
//! ROOT/nix/store/                       the store directory (the logical one is /nix/store)
//! ROOT/nix/store/<path>.lock            per-path lock (flock, exclusive), deleted after use
//! ROOT/nix/var/nix/db/db.sqlite         ValidPaths, Refs, DerivationOutputs
//! ROOT/nix/var/nix/db/schema            "10": absent means "create the database"
//! ROOT/nix/var/nix/db/big-lock          held shared by every process using the store,
//!                                       exclusively while the schema is created or migrated
//! ROOT/nix/var/nix/gc.lock              held exclusively by the garbage collector
//! ```
//!
//! Every lock is a `flock(2)` lock, as Nix takes them. While a substitution runs it holds the big
//! lock and the GC lock shared (so no schema migration and no garbage collection can run and delete
//! the not-yet-registered paths it is writing) and the lock of every path it writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

/// The schema version this module reads and writes (Nix 2.0 to at least 2.24).
pub const SCHEMA_VERSION: u32 = 10;

/// The tables Nix 2.8 creates in a new database (its schema.sql, columns in Nix's order).
const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("Nix database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DbError {
    let what = what.into();
    move |source| DbError::Io {
        what,
        error: source,
    }
}

/// What Nix records about a valid path (one row of ValidPaths plus its Refs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    /// The logical store path, e.g. `/nix/store/<hash>-<name>`.
    pub path: String,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Full store path of the deriver, if known.
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// Full store paths; may include the path itself.
    pub references: Vec<String>,
    /// For a `.drv`: (output name, output path), registered in DerivationOutputs.
    pub derivation_outputs: Vec<(String, String)>,
}

/// An open Nix store: its database, with the big lock and the GC lock held shared.
pub struct NixDb {
    conn: Connection,
    real_store: PathBuf,
    store_dir: String,
    _big_lock: File,
    _gc_lock: File,
}

/// flock(2) a file: exclusive or shared, waiting.
fn flock(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl NixDb {
    /// Open the store under `root` whose logical store directory is `store_dir`, creating the
    /// directories and the database (as Nix would) when they do not exist yet.
    pub fn open(root: &Path, store_dir: &str) -> Result<NixDb, DbError> {
        let real_store = real_store_dir(root, store_dir);
        let state = root.join("nix/var/nix");
        let db_dir = state.join("db");
        for dir in [&real_store, &db_dir] {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let big_lock_path = db_dir.join("big-lock");
        let big_lock = open_lock_file(&big_lock_path)
            .map_err(io_err(format!("opening {}", big_lock_path.display())))?;
        let schema_path = db_dir.join("schema");
        let db_path = db_dir.join("db.sqlite");

        flock(&big_lock, false).map_err(io_err("locking big-lock"))?;
        if !schema_path.exists() {
            // A new store: create the schema under the exclusive big lock, as Nix does, then write
            // the version file last (its absence is what marks a database as not yet created).
            flock(&big_lock, true).map_err(io_err("locking big-lock exclusively"))?;
            if !schema_path.exists() {
                let conn = Connection::open(&db_path)?;
                conn.pragma_update(None, "journal_mode", "wal")?;
                conn.execute_batch(&format!("begin; {SCHEMA} commit;"))?;
                drop(conn);
                let tmp = db_dir.join(".schema.tmp");
                let mut f = File::create(&tmp).map_err(io_err("writing schema version"))?;
                write!(f, "{SCHEMA_VERSION}")
                    .and_then(|_| f.sync_all())
                    .map_err(io_err("writing schema version"))?;
                fs::rename(&tmp, &schema_path).map_err(io_err("writing schema version"))?;
            }
            flock(&big_lock, false).map_err(io_err("locking big-lock"))?;
        }
        let version = fs::read_to_string(&schema_path)
            .map_err(io_err(format!("reading {}", schema_path.display())))?;
        if version.trim() != SCHEMA_VERSION.to_string() {
            return Err(DbError::Invalid(format!(
                "{} says schema version {:?}; only version {SCHEMA_VERSION} (Nix ≥ 2.0) is supported",
                schema_path.display(),
                version.trim()
            )));
        }

        let gc_lock_path = state.join("gc.lock");
        let gc_lock = open_lock_file(&gc_lock_path)
            .map_err(io_err(format!("opening {}", gc_lock_path.display())))?;
        flock(&gc_lock, false).map_err(io_err("locking gc.lock"))?;

        let conn = Connection::open(&db_path)?;
        conn.busy_timeout(std::time::Duration::from_secs(600))?;
        conn.pragma_update(None, "foreign_keys", "on")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        Ok(NixDb {
            conn,
            real_store,
            store_dir: store_dir.to_string(),
            _big_lock: big_lock,
            _gc_lock: gc_lock,
        })
    }

    /// The store directory on disk (`ROOT` + the logical store directory).
    pub fn real_store(&self) -> &Path {
        &self.real_store
    }

    /// The logical store directory (`/nix/store`).
    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    pub fn is_valid(&self, path: &str) -> Result<bool, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("select 1 from ValidPaths where path = ?1")?;
        Ok(stmt.query_row([path], |_| Ok(())).optional()?.is_some())
    }

    /// Register `paths` as valid, all in one transaction: either all of them become valid or none.
    /// Every reference must be valid already or be one of `paths`.
    pub fn register(&mut self, paths: &[ValidPathInfo]) -> Result<(), DbError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) \
                 values (?1, ?2, ?3, ?4, ?5, null, ?6, ?7)",
            )?;
            for p in paths {
                let hash = format!("sha256:{}", hex(&p.nar_hash));
                let sigs = (!p.sigs.is_empty()).then(|| p.sigs.join(" "));
                insert.execute(params![
                    p.path,
                    hash,
                    now,
                    p.deriver,
                    p.nar_size as i64,
                    sigs,
                    p.ca
                ])?;
            }
            let mut id = tx.prepare_cached("select id from ValidPaths where path = ?1")?;
            let mut add_ref = tx.prepare_cached(
                "insert or replace into Refs (referrer, reference) values (?1, ?2)",
            )?;
            let mut add_out = tx.prepare_cached(
                "insert or replace into DerivationOutputs (drv, id, path) values (?1, ?2, ?3)",
            )?;
            for p in paths {
                let referrer: i64 = id.query_row([&p.path], |r| r.get(0))?;
                for r in &p.references {
                    let reference: i64 = id
                        .query_row([r], |row| row.get(0))
                        .optional()?
                        .ok_or_else(|| {
                            DbError::Invalid(format!("{}: reference {r} is not valid", p.path))
                        })?;
                    add_ref.execute(params![referrer, reference])?;
                }
                for (name, out) in &p.derivation_outputs {
                    add_out.execute(params![referrer, name, out])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// `ROOT` joined with the logical store directory.
pub fn real_store_dir(root: &Path, store_dir: &str) -> PathBuf {
    root.join(store_dir.trim_start_matches('/'))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nix's per-path lock: `<real path>.lock`, flock'ed exclusively. On release the file is deleted
/// while still locked and a byte is written to it, so a process that was waiting on the old file
/// sees a non-empty (stale) lock file and retries, as Nix's `PathLocks` does.
pub struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    pub fn lock(real_path: &Path) -> io::Result<PathLock> {
        let mut name = real_path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            let file = open_lock_file(&path)?;
            flock(&file, true)?;
            if file.metadata()?.size() == 0 {
                return Ok(PathLock { file, path });
            }
            // Deleted by its previous holder after we opened it: lock the new one.
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = self.file.write_all(b"d");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, refs: &[&str]) -> ValidPathInfo {
        ValidPathInfo {
            path: format!("/nix/store/{name}"),
            nar_hash: [7; 32],
            nar_size: 120,
            deriver: None,
            sigs: vec!["k-1:c2ln".into(), "k-2:c2ln".into()],
            ca: None,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
            derivation_outputs: vec![],
        }
    }

    const A: &str = "0f5bgkfh71dppnqaaxc3xq0vbm4dn1xp-a";
    const B: &str = "1f5bgkfh71dppnqaaxc3xq0vbm4dn1xp-b";

    #[test]
    fn creates_a_nix_database_and_registers_atomically() {
        let root = tempfile::tempdir().unwrap();
        let mut db = NixDb::open(root.path(), "/nix/store").unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("nix/var/nix/db/schema")).unwrap(),
            "10"
        );
        assert!(root.path().join("nix/store").is_dir());
        assert!(!db.is_valid(&format!("/nix/store/{A}")).unwrap());

        // B refers to a path that is neither valid nor registered with it: nothing is registered.
        let err = db
            .register(&[
                info(A, &[A]),
                info(B, &[A, "2f5bgkfh71dppnqaaxc3xq0vbm4dn1xp-c"]),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{err}");
        assert!(!db.is_valid(&format!("/nix/store/{A}")).unwrap());

        db.register(&[info(B, &[A, B]), info(A, &[A])]).unwrap();
        assert!(
            db.is_valid(&format!("/nix/store/{A}")).unwrap()
                && db.is_valid(&format!("/nix/store/{B}")).unwrap()
        );
        let (hash, sigs, ultimate): (String, String, Option<i64>) = db
            .conn
            .query_row(
                "select hash, sigs, ultimate from ValidPaths where path = ?1",
                [format!("/nix/store/{A}")],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(hash, format!("sha256:{}", "07".repeat(32)));
        assert_eq!((sigs.as_str(), ultimate), ("k-1:c2ln k-2:c2ln", None));
        let refs: i64 = db
            .conn
            .query_row("select count(*) from Refs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(refs, 3);
        // Registering a path twice is an error and leaves the first registration alone.
        assert!(db.register(&[info(A, &[])]).is_err());
        drop(db);
        // Reopening an existing store works and sees the paths.
        let db = NixDb::open(root.path(), "/nix/store").unwrap();
        assert!(db.is_valid(&format!("/nix/store/{B}")).unwrap());
    }

    #[test]
    fn refuses_unknown_schema_versions() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("nix/var/nix/db")).unwrap();
        fs::write(root.path().join("nix/var/nix/db/schema"), "7").unwrap();
        assert!(NixDb::open(root.path(), "/nix/store").is_err());
    }

    #[test]
    fn path_lock_is_exclusive_and_cleaned_up() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("x");
        let lock = PathLock::lock(&p).unwrap();
        let f = open_lock_file(&root.path().join("x.lock")).unwrap();
        // SAFETY: flock on a valid descriptor.
        assert_ne!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        drop(lock);
        assert!(!root.path().join("x.lock").exists());
        assert_eq!(
            f.metadata().unwrap().size(),
            1,
            "a waiter on the old file sees it is stale"
        );
    }
}
