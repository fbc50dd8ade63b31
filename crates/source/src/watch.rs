//! What a local Nix store gains, found by polling its database. Nix signals nothing when it
//! registers a path, but `ValidPaths.id` is an `integer primary key autoincrement` and SQLite has
//! one writer at a time, so paths registered later always get larger ids: remembering the largest
//! id seen and asking for those above it finds every new path, in registration order, with one
//! indexed query (a range scan of the primary key) per poll, however large the store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use refstrip_nix::{StoreDir, StorePath};

use crate::SourceError;

/// The database of the local Nix store whose root is `root` (`/`, or a chroot store's root).
pub fn nix_db_path(root: &Path) -> PathBuf {
    root.join("nix/var/nix/db/db.sqlite")
}

/// New valid paths of a local Nix store, polled from `ValidPaths` by id. Reads only: the database
/// is opened read-only and never locked for writing, so Nix is not held up.
pub struct NewPaths {
    db: rusqlite::Connection,
    db_path: PathBuf,
    store_dir: StoreDir,
    last_id: i64,
}

impl NewPaths {
    /// Start watching the store at `root`: paths valid now are not reported, only those registered
    /// from now on.
    pub fn open(root: &Path, store_dir: StoreDir) -> Result<NewPaths, SourceError> {
        let db_path = nix_db_path(root);
        if !db_path.exists() {
            return Err(SourceError::Invalid {
                what: root.display().to_string(),
                why: format!(
                    "not a Nix store root ({} does not exist); give / or a chroot store's root",
                    db_path.display()
                ),
            });
        }
        let db = rusqlite::Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db_error(&db_path, e))?;
        // Nix writes in short transactions; wait for one rather than fail the poll.
        db.busy_timeout(Duration::from_secs(10))
            .map_err(|e| db_error(&db_path, e))?;
        let mut watch = NewPaths {
            db,
            db_path,
            store_dir,
            last_id: 0,
        };
        watch.last_id = watch
            .db
            .query_row("SELECT coalesce(max(id), 0) FROM ValidPaths", [], |r| {
                r.get(0)
            })
            .map_err(|e| db_error(&watch.db_path, e))?;
        Ok(watch)
    }

    /// The largest `ValidPaths.id` reported (or present when watching started).
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    /// Paths registered since the last poll, oldest first. Paths registered and deleted again in
    /// between are not reported.
    pub fn poll(&mut self) -> Result<Vec<StorePath>, SourceError> {
        let mut query = self
            .db
            .prepare_cached("SELECT id, path FROM ValidPaths WHERE id > ?1 ORDER BY id")
            .map_err(|e| db_error(&self.db_path, e))?;
        let rows: Vec<(i64, String)> = query
            .query_map([self.last_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| db_error(&self.db_path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| db_error(&self.db_path, e))?;
        drop(query);
        let mut paths = Vec::with_capacity(rows.len());
        for (id, path) in rows {
            self.last_id = self.last_id.max(id);
            let parsed = self
                .store_dir
                .parse_path(&path)
                .map_err(|e| SourceError::Invalid {
                    what: path.clone(),
                    why: e.to_string(),
                })?;
            paths.push(parsed);
        }
        Ok(paths)
    }
}

fn db_error(path: &Path, e: rusqlite::Error) -> SourceError {
    SourceError::Io {
        what: path.display().to_string(),
        error: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with Nix's ValidPaths table (the columns the watch reads).
    fn fake_store(root: &Path) -> rusqlite::Connection {
        std::fs::create_dir_all(root.join("nix/var/nix/db")).unwrap();
        let db = rusqlite::Connection::open(nix_db_path(root)).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode = wal;
             CREATE TABLE ValidPaths (id integer primary key autoincrement not null, path text unique not null);",
        )
        .unwrap();
        db
    }

    fn add(db: &rusqlite::Connection, name: &str) {
        db.execute(
            "INSERT INTO ValidPaths (path) VALUES (?1)",
            [format!("/nix/store/{name}")],
        )
        .unwrap();
    }

    #[test]
    fn reports_only_paths_registered_after_it_started_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = fake_store(dir.path());
        add(&db, "00000000000000000000000000000000-old");
        let mut watch = NewPaths::open(dir.path(), StoreDir::default()).unwrap();
        assert_eq!(watch.poll().unwrap(), Vec::<StorePath>::new());
        add(&db, "11111111111111111111111111111111-b");
        add(&db, "22222222222222222222222222222222-a");
        let got: Vec<String> = watch
            .poll()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "11111111111111111111111111111111-b",
                "22222222222222222222222222222222-a"
            ]
        );
        assert_eq!(watch.poll().unwrap().len(), 0, "reported once");
        // A deleted path's id is not reused (autoincrement).
        db.execute("DELETE FROM ValidPaths WHERE path LIKE '%-a'", [])
            .unwrap();
        add(&db, "33333333333333333333333333333333-c");
        assert_eq!(watch.poll().unwrap().len(), 1);
        assert_eq!(watch.last_id(), 4);
    }

    #[test]
    fn a_directory_without_a_nix_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = NewPaths::open(dir.path(), StoreDir::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a Nix store root"), "{e}");
    }
}
