//! Which paths the server served, and when: what `refstrip gc --keep-within` counts as "last
//! served".
//!
//! Kept in `served.sqlite` in a state directory the operator names (`serve --served-state DIR`),
//! never in the store: the store may be read-only, remote, or shared by several servers, which may
//! all note into one state directory (SQLite in WAL mode with a busy timeout). A path counts as
//! served when its narinfo was answered (a client asked for it: cachix counts narinfo requests as
//! accesses too, so that a path a client only checks is not dropped) or its NAR was sent. Notes are
//! kept in memory and written every [`FLUSH_EVERY`] and at shutdown, one transaction each, so
//! serving costs no disk write per request; a crash loses at most that interval.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

/// The file in the state directory.
pub const FILE: &str = "served.sqlite";
/// How often noted paths are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS served (
    hash_part TEXT PRIMARY KEY, last_served INTEGER NOT NULL
) WITHOUT ROWID;";

/// Paths served, noted in memory and written to the state directory now and then.
#[derive(Debug)]
pub struct ServedLog {
    db: Mutex<Connection>,
    pending: Mutex<HashMap<String, u64>>,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl ServedLog {
    /// Open (creating) the state in `dir`, and write what is noted every [`FLUSH_EVERY`] from a
    /// background thread for as long as the log lives.
    pub fn open(dir: &Path) -> io::Result<Arc<ServedLog>> {
        std::fs::create_dir_all(dir)?;
        let sqlite =
            |e: rusqlite::Error| io::Error::other(format!("{}: {e}", dir.join(FILE).display()));
        let db = Connection::open(dir.join(FILE)).map_err(sqlite)?;
        db.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        db.execute_batch(SCHEMA).map_err(sqlite)?;
        let log = Arc::new(ServedLog {
            db: Mutex::new(db),
            pending: Mutex::new(HashMap::new()),
        });
        let weak: Weak<ServedLog> = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("served-state".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(log) = weak.upgrade() else { return };
                if let Err(e) = log.flush() {
                    tracing::warn!(error = %e, "writing the served-paths state");
                }
            })?;
        Ok(log)
    }

    /// Note that the path with this hash part was served now.
    pub fn note(&self, hash_part: &str) {
        let now = unix(SystemTime::now());
        self.pending
            .lock()
            .expect("served-state lock")
            .insert(hash_part.to_string(), now);
    }

    /// Write what was noted since the last flush; returns how many paths.
    pub fn flush(&self) -> rusqlite::Result<usize> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("served-state lock"));
        if pending.is_empty() {
            return Ok(0);
        }
        let mut db = self.db.lock().expect("served-state db lock");
        let tx = db.transaction()?;
        {
            let mut upsert = tx.prepare(
                "INSERT INTO served (hash_part, last_served) VALUES (?1, ?2)
                 ON CONFLICT (hash_part) DO UPDATE SET last_served = max(last_served, excluded.last_served)",
            )?;
            for (hash_part, time) in &pending {
                upsert.execute(params![hash_part, time])?;
            }
        }
        tx.commit()?;
        Ok(pending.len())
    }
}

/// When each path noted in the state directory `dir` was last served (opened read-only).
pub fn read(dir: &Path) -> rusqlite::Result<HashMap<String, SystemTime>> {
    let db = Connection::open_with_flags(
        dir.join(FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(Duration::from_secs(30))?;
    let mut q = db.prepare("SELECT hash_part, last_served FROM served")?;
    let rows = q.query_map([], |r| {
        let secs: i64 = r.get(1)?;
        Ok((
            r.get::<_, String>(0)?,
            UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_written_on_flush_and_keep_the_latest_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServedLog::open(dir.path()).unwrap();
        log.note("a");
        log.note("b");
        assert_eq!(log.flush().unwrap(), 2);
        assert_eq!(log.flush().unwrap(), 0, "nothing new");
        let first = read(dir.path()).unwrap();
        assert_eq!(first.len(), 2);
        // An older time never replaces a newer one.
        log.db
            .lock()
            .unwrap()
            .execute(
                "UPDATE served SET last_served = 4000000000 WHERE hash_part = 'a'",
                [],
            )
            .unwrap();
        log.note("a");
        log.flush().unwrap();
        let second = read(dir.path()).unwrap();
        assert_eq!(second["a"], UNIX_EPOCH + Duration::from_secs(4_000_000_000));
        assert_eq!(second["b"], first["b"]);
    }
}
