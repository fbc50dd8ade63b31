//! The local substituter never costs stock Nix a build: with `refstrip serve`'s store unreachable
//! (killed, a closed port, a server that accepts and never answers) Nix 2.8 takes every path from
//! its next substituter, in bounded time, and the result passes `nix-store --verify
//! --check-contents`. A store that was down at start is used once it answers. And the disk block
//! cache stays under its cap for a whole run, measured while it runs.
//!
//! Each Nix run gets a fresh HOME/XDG_CACHE_HOME (Nix's narinfo cache), zero narinfo TTLs and
//! explicit `?priority=` parameters, so what Nix asks is decided by this run alone.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use refstrip_tests::operator::{corpus_root, http_get, nix, verify_contents, Serving};
use refstrip_tests::{corpus_dir, corpus_key, gen1_store, refstrip_bin, require_nix};

/// A free loopback port (nothing listens on it once this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `python3 -m http.server` over `dir` on `port`, as a process the test can kill.
struct PyServer(Child);

impl PyServer {
    fn start(dir: &Path, port: u16) -> PyServer {
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PyServer(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server that accepts connections and never answers, holding them open.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// A stock Nix command with a home of its own (so Nix's narinfo cache starts empty) and the
/// settings that keep Nix from remembering answers between runs.
fn with_fresh_home(mut cmd: Command, home: &Path, substituters: &str) -> Command {
    std::fs::create_dir_all(home).unwrap();
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .args(["--option", "substituters", substituters])
        .args(["--option", "trusted-public-keys", &corpus_key()])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"]);
    cmd
}

/// The substituters: the local substituter first, the plain zstd cache of gen1 second.
fn serve_then_plain(serve: &Serving) -> String {
    format!(
        "{}?priority=10 file://{}?priority=20",
        serve.url(),
        corpus_dir().join("small/gen1").display()
    )
}

/// `nix-store -r` of gen1's root into the chroot store `root`.
fn nix_store_realise(root: &Path, home: &Path, substituters: &str) -> Output {
    let mut cmd = Command::new("nix-store");
    cmd.arg("--store")
        .arg(root)
        .arg("-r")
        .arg(corpus_root("gen1"));
    with_fresh_home(cmd, home, substituters).output().unwrap()
}

/// `nix build --no-link` of gen1's root (a store path: substituted) into the chroot store `root`.
fn nix_build(root: &Path, home: &Path, substituters: &str) -> Output {
    let mut cmd = nix(&["build", "--no-link", "--store"]);
    cmd.arg(root).arg(corpus_root("gen1"));
    with_fresh_home(cmd, home, substituters).output().unwrap()
}

fn succeeded(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

/// The request log lines of `serve` (status, path) for narinfo and NAR requests.
fn requests(serve: &Serving) -> Vec<(u16, String)> {
    serve
        .log_text()
        .lines()
        .filter_map(|l| {
            // `CLIENT "METHOD PATH" STATUS …` (serve's request log).
            let mut quoted = l.split('"');
            let request = quoted.nth(1)?;
            let status = quoted.next()?.split_whitespace().next()?;
            let path = request.split_whitespace().nth(1)?;
            Some((status.parse().ok()?, path.to_string()))
        })
        .filter(|(_, p)| p.ends_with(".narinfo") || p.starts_with("/nar/"))
        .collect()
}

/// Nix asked the local substituter for narinfos, got a miss for every one, and took no NAR from it.
fn fell_through(serve: &Serving) {
    let asked = requests(serve);
    assert!(
        asked.iter().any(|(_, p)| p.ends_with(".narinfo")),
        "Nix did not ask the local substituter: {}",
        serve.log_text()
    );
    for (status, path) in &asked {
        assert_eq!(*status, 404, "{path}: {}", serve.log_text());
    }
}

/// Every path of gen1's closure is valid in `root` and checks out.
fn gen1_arrived(root: &Path) {
    let closure = refstrip_tests::operator::closure_in(root, &corpus_root("gen1"));
    assert_eq!(closure.len(), 14, "{closure:?}");
    verify_contents(root);
}

#[test]
fn a_killed_upstream_makes_nix_take_paths_from_its_next_substituter() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstream = PyServer::start(gen1_store(), port);
    let serve = Serving::start_from(
        &format!("http://127.0.0.1:{port}"),
        &["--store-dir", "/nix/store"],
    );
    assert!(
        !serve.log_text().contains("cannot be reached"),
        "{}",
        serve.log_text()
    );
    upstream.kill();

    let started = Instant::now();
    let out = nix_store_realise(
        &dir.path().join("root"),
        &dir.path().join("home"),
        &serve_then_plain(&serve),
    );
    let stderr = succeeded("nix-store -r", &out);
    let took = started.elapsed();
    assert!(stderr.contains("from 'file://"), "{stderr}");
    fell_through(&serve);
    gen1_arrived(&dir.path().join("root"));
    eprintln!("killed upstream: nix-store -r took {took:?}");
    // Refused connections fail at once; a 5xx would have cost Nix five tries per path.
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_store_down_at_start_is_served_once_it_answers() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing listens on the port: serve starts anyway.
    let serve = Serving::start_from(
        &format!("http://127.0.0.1:{port}"),
        &["--store-dir", "/nix/store"],
    );
    assert!(
        serve.log_text().contains("cannot be reached"),
        "{}",
        serve.log_text()
    );
    let started = Instant::now();
    let out = nix_build(
        &dir.path().join("built"),
        &dir.path().join("home1"),
        &serve_then_plain(&serve),
    );
    succeeded("nix build", &out);
    eprintln!("closed port: nix build took {:?}", started.elapsed());
    fell_through(&serve);
    gen1_arrived(&dir.path().join("built"));

    // The store comes up: within the retry wait, serve checks its marker and serves from it.
    let _upstream = PyServer::start(gen1_store(), port);
    let narinfo = format!("/{}.narinfo", &corpus_root("gen1")[11..43]);
    let up = Instant::now();
    while http_get(serve.port, &narinfo).0 != 200 {
        assert!(
            up.elapsed() < Duration::from_secs(120),
            "{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("served {:?} after the store came up", up.elapsed());
    assert!(serve.log_text().contains("answers again"));
    // Now with the local substituter as the only one: everything comes from it.
    let out = nix_store_realise(
        &dir.path().join("served"),
        &dir.path().join("home2"),
        &format!("{}?priority=10", serve.url()),
    );
    succeeded("nix-store -r", &out);
    gen1_arrived(&dir.path().join("served"));
    let nars = requests(&serve)
        .into_iter()
        .filter(|(status, p)| *status == 200 && p.starts_with("/nar/"))
        .count();
    assert_eq!(nars, 14, "{}", serve.log_text());
}

#[test]
fn a_silent_upstream_costs_one_timeout_not_a_hang() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let port = silent_server();
    let started = Instant::now();
    let serve = Serving::start_from(
        &format!("http://127.0.0.1:{port}?connect-timeout=2&stalled-download-timeout=3"),
        &["--store-dir", "/nix/store"],
    );
    // The open at start waited for the stall timeout once, then served anyway.
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        serve.log_text().contains("cannot be reached"),
        "{}",
        serve.log_text()
    );
    // Past the first retry wait: Nix's first request probes the silent store again.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let out = nix_store_realise(
        &dir.path().join("root"),
        &dir.path().join("home"),
        &serve_then_plain(&serve),
    );
    succeeded("nix-store -r", &out);
    let took = started.elapsed();
    fell_through(&serve);
    gen1_arrived(&dir.path().join("root"));
    eprintln!("silent upstream: nix-store -r took {took:?}");
    // 14 paths: a probe or two of 3 s each, never one wait per path.
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

/// Bytes of the files under `dir` (blocks and scratch files), as `du --apparent-size` counts
/// them without the directories.
fn file_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if e.file_name() != "evict.lock" => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// Samples `file_bytes(dir)` every few milliseconds until dropped; the largest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Sampler {
        let (stop, peak, samples) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p, n) = (stop.clone(), peak.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(file_bytes(&dir), Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        });
        Sampler {
            stop,
            peak,
            samples,
            thread: Some(thread),
        }
    }

    /// (peak bytes, samples taken).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.peak.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

// Before the disk cache made room before writing, blocks fetched at the same moment were each
// written before the cache was trimmed (all 808 KB of blocks on disk at once under a ~570 KB cap).
#[test]
fn the_disk_cache_stays_under_its_cap_for_a_whole_run() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = gen1_store();
    // A cap that holds the largest block but not all of them, so eviction must happen.
    let mut blocks = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(store.join("paths")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let record = refstrip_tests::read_record(store, &name);
        for (pack, loc) in record.objects.map().unwrap().values() {
            blocks.insert((pack.clone(), loc.block_offset), loc.block_len);
        }
    }
    let largest = *blocks.values().max().unwrap();
    let all: u64 = blocks.values().sum();
    let cap = largest + (all - largest) / 4;
    assert!(cap < all, "a cap of {cap} would hold all {all} bytes");
    let cache = dir.path().join("cache");
    let port = free_port();
    let _upstream = PyServer::start(store, port);
    let serve = Serving::start_from(
        &format!("http://127.0.0.1:{port}"),
        &[
            "--store-dir",
            "/nix/store",
            "--cache",
            cache.to_str().unwrap(),
            "--cache-size",
            &cap.to_string(),
        ],
    );
    let sampler = Sampler::start(cache.clone());
    let out = nix_store_realise(
        &dir.path().join("root"),
        &dir.path().join("home"),
        &format!("{}?priority=10", serve.url()),
    );
    let (peak, samples) = sampler.finish();
    succeeded("nix-store -r", &out);
    gen1_arrived(&dir.path().join("root"));
    eprintln!("cap {cap} (blocks: {all} bytes, largest {largest}): peak {peak} bytes on disk over {samples} samples");
    assert!(samples > 10, "{samples} samples");
    assert!(peak > 0, "nothing was cached");
    assert!(peak <= cap, "{peak} bytes on disk, cap {cap}");
}

/// A local directory store that cannot be read is a mistake to fix: serve refuses to start, as
/// before. Only remote stores are served while down.
#[test]
fn a_missing_local_store_is_still_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(refstrip_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--from"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no normalized store"), "{stderr}");
    // Nor is a reachable server that is no store served: it says so at once.
    let plain = corpus_dir().join("small/gen1");
    let port = free_port();
    let _upstream = PyServer::start(&plain, port);
    let out = Command::new(refstrip_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--from"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a Nix binary cache"), "{stderr}");
}
