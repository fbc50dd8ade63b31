//! The store behind the server when it is remote: every read of it passes through [`Upstream`],
//! which notices when it stops answering and then fails reads at once instead of waiting on each.
//!
//! Why: a local substituter must never cost stock Nix a build. While the upstream is unreachable
//! the server answers what it cannot read as a miss (404), so that Nix takes the path from its next
//! substituter; a 5xx would make Nix 2.8 fail the build (with `fallback = true` it even aborts), as
//! docs/client.md records. Each read is bounded by the backend's timeouts; once one has failed,
//! reads fail immediately until a retry is due (1 s, doubling up to a minute), when exactly one read
//! goes through to probe it. A store that could not be reached at start is opened anyway and its
//! marker is checked before the first record is served from it.
//!
//! It also fetches path records ahead ([`Upstream::prefetch`]): Nix 2.8 asks for the narinfos of a
//! closure one at a time, so over a link with 20 ms of latency the 405 records of a large update
//! cost 8.3 s fetched one by one (measured). When the server has read a record, the records of
//! its references are fetched in the background, several at once, and the read that then asks
//! for one takes it (or waits for it, if it is on its way) instead of asking the store again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use refstrip_backend::{open_for_reading, Backend, RequestCounts, StoreUrl};
use refstrip_read::{OpenError, StoreReader, MAX_RECORD_BYTES};

/// The first wait before retrying an upstream that failed, doubled after each failed retry.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
const LAST_RETRY: Duration = Duration::from_secs(60);
/// Records fetched ahead at once.
const AHEAD_FETCHES: usize = 16;
/// Keys waiting to be fetched ahead; more are not fetched ahead.
const AHEAD_QUEUE: usize = 4096;
/// Bytes of records fetched ahead and not asked for yet; more are dropped.
const AHEAD_BYTES: u64 = 32 << 20;
/// A record fetched ahead and not asked for within this time is fetched again when asked (a
/// store's gc may have removed it meanwhile).
const AHEAD_AGE: Duration = Duration::from_secs(60);

/// A remote store's backend, gated by whether the store is answering.
pub struct Upstream {
    inner: Arc<dyn Backend>,
    url: StoreUrl,
    state: Mutex<State>,
    ahead: Mutex<Ahead>,
    /// Signalled whenever a fetch ahead ends.
    fetched: Condvar,
}

/// Records being fetched ahead, by key.
#[derive(Default)]
struct Ahead {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    in_flight: HashSet<String>,
    /// Fetched, not asked for yet: when, and the file (`None`: the store has none).
    ready: HashMap<String, (Instant, Option<Vec<u8>>)>,
    ready_bytes: u64,
    workers: usize,
}

#[derive(Default)]
struct State {
    /// Whether the store's marker has been checked (by the open at start, or later).
    checked: bool,
    /// Set while the store is failing.
    down: Option<Down>,
}

struct Down {
    retry_at: Instant,
    wait: Duration,
    /// A read is probing the store now; the others still fail at once.
    probing: bool,
}

/// How a read was let through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Normal,
    Probe,
}

/// Open `url` for serving: a reader whose every backend read goes through the returned
/// [`Upstream`]. A remote store that cannot be reached is opened all the same (its marker checked
/// once it answers); every other error (no store there, a binary cache, another format, a local
/// directory that cannot be read) is returned, as it is a mistake to fix rather than an outage.
pub fn open(url: &str) -> Result<(StoreReader, Arc<Upstream>), OpenError> {
    let url = StoreUrl::parse(url)?;
    let checked = match StoreReader::open_url(url.clone()) {
        Ok(_) => true,
        Err(OpenError::Io { location, error }) if !matches!(url, StoreUrl::Dir(_)) => {
            tracing::warn!(
                store = %location,
                %error,
                "the store cannot be reached; serving anyway, every path a miss until it answers"
            );
            false
        }
        Err(e) => return Err(e),
    };
    let io_err = |error| OpenError::Io {
        location: url.to_string(),
        error,
    };
    let upstream = Arc::new(Upstream {
        inner: open_for_reading(&url).map_err(io_err)?.into(),
        url: url.clone(),
        state: Mutex::new(State {
            checked,
            down: (!checked).then(|| Down {
                retry_at: Instant::now() + FIRST_RETRY,
                wait: FIRST_RETRY,
                probing: false,
            }),
        }),
        ahead: Mutex::default(),
        fetched: Condvar::new(),
    });
    let reader = StoreReader::from_backend(upstream.clone(), url);
    Ok((reader, upstream))
}

impl Upstream {
    /// Whether the store is failing now (reads fail at once).
    pub fn is_down(&self) -> bool {
        self.state.lock().expect("upstream state").down.is_some()
    }

    /// Fetch the files at `keys` (path records) in the background, a few at a time, unless the
    /// store is down or a local directory (which answers at once): the next [`Backend::get`] of
    /// one of them takes it from here.
    pub fn prefetch(self: &Arc<Self>, keys: impl IntoIterator<Item = String>) {
        if matches!(self.url, StoreUrl::Dir(_)) || self.is_down() {
            return;
        }
        let mut ahead = self.ahead.lock().expect("ahead");
        for key in keys {
            if ahead.queue.len() >= AHEAD_QUEUE {
                break;
            }
            if !ahead.ready.contains_key(&key)
                && !ahead.in_flight.contains(&key)
                && ahead.queued.insert(key.clone())
            {
                ahead.queue.push_back(key);
            }
        }
        while ahead.workers < AHEAD_FETCHES.min(ahead.queue.len()) {
            ahead.workers += 1;
            let upstream = self.clone();
            std::thread::spawn(move || upstream.fetch_ahead());
        }
    }

    /// A worker fetching ahead until the queue is empty.
    fn fetch_ahead(&self) {
        loop {
            let key = {
                let mut ahead = self.ahead.lock().expect("ahead");
                let Some(key) = ahead.queue.pop_front() else {
                    ahead.workers -= 1;
                    return;
                };
                ahead.queued.remove(&key);
                ahead.in_flight.insert(key.clone());
                key
            };
            let got = self.read(|b| b.get(&key, MAX_RECORD_BYTES));
            let mut ahead = self.ahead.lock().expect("ahead");
            ahead.in_flight.remove(&key);
            // A failure is left to the read that asks for it.
            if let Ok(file) = got {
                if ahead.ready.len() >= AHEAD_QUEUE {
                    // Never asked for: forget what is too old to be taken anyway.
                    ahead.ready.retain(|_, (at, _)| at.elapsed() < AHEAD_AGE);
                    ahead.ready_bytes = ahead.ready.values().map(|(_, f)| size_of(f)).sum();
                }
                let size = size_of(&file);
                if ahead.ready.len() < AHEAD_QUEUE && ahead.ready_bytes + size <= AHEAD_BYTES {
                    ahead.ready_bytes += size;
                    ahead.ready.insert(key, (Instant::now(), file));
                }
            }
            drop(ahead);
            self.fetched.notify_all();
        }
    }

    /// The file at `key` if it was fetched ahead (waiting for it if it is being fetched); `None`
    /// if the read must be made.
    fn take_ahead(&self, key: &str, limit: u64) -> Option<Option<Vec<u8>>> {
        let mut ahead = self.ahead.lock().expect("ahead");
        loop {
            if let Some((at, file)) = ahead.ready.remove(key) {
                ahead.ready_bytes -= size_of(&file);
                let fits = file.as_ref().is_none_or(|f| f.len() as u64 <= limit);
                return (at.elapsed() < AHEAD_AGE && fits).then_some(file);
            }
            if !ahead.in_flight.contains(key) {
                // Queued but not started: this read makes it.
                if ahead.queued.remove(key) {
                    ahead.queue.retain(|k| k != key);
                }
                return None;
            }
            // On its way, bounded by the backend's timeouts.
            ahead = self.fetched.wait(ahead).expect("ahead");
        }
    }

    /// Check the store's marker if that has not been done, as the open would have (blocking).
    /// An error means: do not read records from it now.
    pub fn ensure_checked(&self) -> io::Result<()> {
        if self.state.lock().expect("upstream state").checked {
            return Ok(());
        }
        let pass = self.admit()?;
        match StoreReader::open_url(self.url.clone()) {
            Ok(_) => {
                self.state.lock().expect("upstream state").checked = true;
                self.answered(pass);
                Ok(())
            }
            Err(OpenError::Io { error, .. }) => {
                self.failed(pass, &error);
                Err(error)
            }
            // Reachable but not a store this server can read: a mistake upstream, which may be
            // corrected, so it is retried like an outage, and logged as an error.
            Err(e) => {
                tracing::error!(error = %e, "the upstream is not a store this server can read");
                let error = io::Error::other(e.to_string());
                self.failed(pass, &error);
                Err(error)
            }
        }
    }

    /// Let a read through, or fail it at once while the store is down and no retry is due.
    fn admit(&self) -> io::Result<Pass> {
        let mut state = self.state.lock().expect("upstream state");
        let Some(down) = state.down.as_mut() else {
            return Ok(Pass::Normal);
        };
        let now = Instant::now();
        if down.probing || now < down.retry_at {
            let secs = down.retry_at.saturating_duration_since(now).as_secs_f64();
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "{} is not answering (next try in {secs:.1} s)",
                    self.inner.describe()
                ),
            ));
        }
        down.probing = true;
        Ok(Pass::Probe)
    }

    /// The store answered (with the file, or that it has none).
    fn answered(&self, _pass: Pass) {
        let mut state = self.state.lock().expect("upstream state");
        if state.down.take().is_some() {
            tracing::info!(store = %self.inner.describe(), "the store answers again");
        }
    }

    /// A read failed with `error`.
    fn failed(&self, pass: Pass, error: &io::Error) {
        let mut state = self.state.lock().expect("upstream state");
        match state.down.as_mut() {
            None => {
                tracing::warn!(
                    store = %self.inner.describe(),
                    %error,
                    "the store is not answering; its paths are misses until it does"
                );
                state.down = Some(Down {
                    retry_at: Instant::now() + FIRST_RETRY,
                    wait: FIRST_RETRY,
                    probing: false,
                });
            }
            Some(down) if pass == Pass::Probe => {
                down.wait = (down.wait * 2).min(LAST_RETRY);
                down.retry_at = Instant::now() + down.wait;
                down.probing = false;
                tracing::debug!(%error, wait = ?down.wait, "the store is still not answering");
            }
            // Read while the store was up, failed after another read found it down.
            Some(_) => {}
        }
    }

    /// A read that told nothing about the store (the backend cannot do it): a probe is over.
    fn untold(&self, pass: Pass) {
        if pass == Pass::Probe {
            if let Some(down) = self.state.lock().expect("upstream state").down.as_mut() {
                down.probing = false;
            }
        }
    }

    /// Run one read through the gate.
    fn read<T>(&self, read: impl FnOnce(&dyn Backend) -> io::Result<T>) -> io::Result<T> {
        let pass = self.admit()?;
        let result = read(&*self.inner);
        match &result {
            Ok(_) => self.answered(pass),
            Err(e) => match e.kind() {
                // The store answered "no": a missing file, one too large, a bad range.
                io::ErrorKind::NotFound
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::InvalidData => self.answered(pass),
                // Not asked (an HTTP store cannot be listed).
                io::ErrorKind::Unsupported => self.untold(pass),
                _ => self.failed(pass, e),
            },
        }
        result
    }
}

fn size_of(file: &Option<Vec<u8>>) -> u64 {
    file.as_ref().map_or(0, |f| f.len() as u64)
}

impl Backend for Upstream {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.put(key, bytes)
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        self.inner.put_file(key, path)
    }

    fn get(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        if let Some(file) = self.take_ahead(key, limit) {
            return Ok(file);
        }
        self.read(|b| b.get(key, limit))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.read(|b| b.get_range(key, offset, len))
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        self.read(|b| b.size(key))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.read(|b| b.list(prefix))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(key)
    }

    fn scratch_dir(&self) -> PathBuf {
        self.inner.scratch_dir()
    }

    fn catalog_path(&self) -> PathBuf {
        self.inner.catalog_path()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A backend that is up or down at the test's word, counting the reads that reached it.
    struct Switch {
        up: AtomicBool,
        reads: AtomicU64,
        /// Milliseconds each read takes.
        delay: AtomicU64,
    }

    impl Backend for Switch {
        fn describe(&self) -> String {
            "switch".into()
        }
        fn put(&self, _: &str, _: &[u8]) -> io::Result<()> {
            unimplemented!()
        }
        fn put_file(&self, _: &str, _: &Path) -> io::Result<()> {
            unimplemented!()
        }
        fn get(&self, key: &str, _: u64) -> io::Result<Option<Vec<u8>>> {
            std::thread::sleep(Duration::from_millis(self.delay.load(Ordering::SeqCst)));
            self.reads.fetch_add(1, Ordering::SeqCst);
            match (self.up.load(Ordering::SeqCst), key) {
                (false, _) => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
                (true, "missing") => Ok(None),
                (true, "huge") => Err(io::Error::from(io::ErrorKind::InvalidData)),
                (true, _) => Ok(Some(b"x".to_vec())),
            }
        }
        fn get_range(&self, _: &str, _: u64, _: u64) -> io::Result<Vec<u8>> {
            unimplemented!()
        }
        fn size(&self, _: &str) -> io::Result<Option<u64>> {
            unimplemented!()
        }
        fn list(&self, _: &str) -> io::Result<Vec<String>> {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
        fn delete(&self, _: &str) -> io::Result<()> {
            unimplemented!()
        }
        fn scratch_dir(&self) -> PathBuf {
            unimplemented!()
        }
        fn catalog_path(&self) -> PathBuf {
            unimplemented!()
        }
    }

    fn gated() -> (Arc<Switch>, Upstream) {
        let switch = Arc::new(Switch {
            up: AtomicBool::new(true),
            reads: AtomicU64::new(0),
            delay: AtomicU64::new(0),
        });
        let upstream = Upstream {
            inner: switch.clone(),
            url: StoreUrl::parse("http://127.0.0.1:9/store").unwrap(),
            state: Mutex::new(State {
                checked: true,
                down: None,
            }),
            ahead: Mutex::default(),
            fetched: Condvar::new(),
        };
        (switch, upstream)
    }

    #[test]
    fn answers_that_are_not_outages_keep_it_up() {
        let (_, up) = gated();
        assert_eq!(up.get("missing", 10).unwrap(), None);
        assert!(up.get("huge", 10).is_err());
        assert!(up.list("paths/").is_err());
        assert!(!up.is_down());
    }

    #[test]
    fn a_failure_fails_later_reads_at_once_until_one_probe_succeeds() {
        let (switch, up) = gated();
        switch.up.store(false, Ordering::SeqCst);
        assert!(up.get("a", 10).is_err());
        assert!(up.is_down());
        assert_eq!(switch.reads.load(Ordering::SeqCst), 1);
        // Within the wait: nothing reaches the store.
        for _ in 0..100 {
            let e = up.get("a", 10).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        }
        assert_eq!(switch.reads.load(Ordering::SeqCst), 1);
        // A retry is due: one probe goes through, fails, and the wait doubles.
        up.state.lock().unwrap().down.as_mut().unwrap().retry_at = Instant::now();
        assert!(up.get("a", 10).is_err());
        assert_eq!(switch.reads.load(Ordering::SeqCst), 2);
        assert_eq!(
            up.state.lock().unwrap().down.as_ref().unwrap().wait,
            2 * FIRST_RETRY
        );
        // Back up: the next due probe succeeds and the store is up again.
        switch.up.store(true, Ordering::SeqCst);
        assert!(up.get("a", 10).is_err(), "not due yet");
        up.state.lock().unwrap().down.as_mut().unwrap().retry_at = Instant::now();
        assert_eq!(up.get("a", 10).unwrap(), Some(b"x".to_vec()));
        assert!(!up.is_down());
        assert_eq!(up.get("a", 10).unwrap(), Some(b"x".to_vec()));
    }

    #[test]
    fn a_probe_that_asks_nothing_does_not_block_the_next() {
        let (switch, up) = gated();
        switch.up.store(false, Ordering::SeqCst);
        assert!(up.get("a", 10).is_err());
        up.state.lock().unwrap().down.as_mut().unwrap().retry_at = Instant::now();
        assert_eq!(
            up.list("paths/").unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert!(up.is_down(), "a list an HTTP store cannot do says nothing");
        switch.up.store(true, Ordering::SeqCst);
        assert_eq!(up.get("a", 10).unwrap(), Some(b"x".to_vec()));
        assert!(!up.is_down());
    }

    #[test]
    fn only_one_probe_at_a_time() {
        let (switch, up) = gated();
        switch.up.store(false, Ordering::SeqCst);
        assert!(up.get("a", 10).is_err());
        up.state.lock().unwrap().down.as_mut().unwrap().retry_at = Instant::now();
        assert!(up.admit().unwrap() == Pass::Probe);
        // While that probe is out, others fail at once.
        assert!(up.admit().is_err());
        assert_eq!(switch.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_wait_is_capped() {
        let (switch, up) = gated();
        switch.up.store(false, Ordering::SeqCst);
        for _ in 0..20 {
            if let Some(down) = up.state.lock().unwrap().down.as_mut() {
                down.retry_at = Instant::now();
            }
            assert!(up.get("a", 10).is_err());
        }
        assert_eq!(
            up.state.lock().unwrap().down.as_ref().unwrap().wait,
            LAST_RETRY
        );
    }

    /// Waits until nothing is queued or being fetched ahead.
    fn settle(up: &Upstream) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ahead = up.ahead.lock().unwrap();
            if ahead.workers == 0 {
                return;
            }
            drop(ahead);
            assert!(Instant::now() < deadline, "fetches ahead never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn records_fetched_ahead_are_taken_once_not_fetched_again() {
        let (switch, up) = gated();
        let up = Arc::new(up);
        up.prefetch(["a".to_string(), "missing".to_string(), "a".to_string()]);
        settle(&up);
        assert_eq!(switch.reads.load(Ordering::SeqCst), 2, "each key once");
        assert_eq!(up.get("a", 10).unwrap(), Some(b"x".to_vec()));
        assert_eq!(up.get("missing", 10).unwrap(), None);
        assert_eq!(
            switch.reads.load(Ordering::SeqCst),
            2,
            "both taken from ahead"
        );
        // Taken once: the next read asks the store.
        assert_eq!(up.get("a", 10).unwrap(), Some(b"x".to_vec()));
        assert_eq!(switch.reads.load(Ordering::SeqCst), 3);
        // A file larger than the reader's limit is read again (and refused there).
        up.prefetch(["b".to_string()]);
        settle(&up);
        assert!(up.get("b", 0).is_ok());
        assert_eq!(switch.reads.load(Ordering::SeqCst), 5);
        assert_eq!(up.ahead.lock().unwrap().ready_bytes, 0);
    }

    #[test]
    fn a_read_of_a_record_on_its_way_waits_for_it() {
        let (switch, up) = gated();
        let up = Arc::new(up);
        switch.delay.store(300, Ordering::SeqCst);
        up.prefetch(["slow".to_string()]);
        // Ask once a worker is fetching it.
        while !up.ahead.lock().unwrap().in_flight.contains("slow") {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(up.get("slow", 10).unwrap(), Some(b"x".to_vec()));
        // One read: the second would have been this one's own.
        assert_eq!(switch.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn nothing_is_fetched_ahead_from_a_store_that_is_down() {
        let (switch, up) = gated();
        let up = Arc::new(up);
        switch.up.store(false, Ordering::SeqCst);
        assert!(up.get("a", 10).is_err());
        up.prefetch(["b".to_string(), "c".to_string()]);
        settle(&up);
        assert_eq!(switch.reads.load(Ordering::SeqCst), 1);
    }
}
