//! Shared helpers for the end-to-end tests: finding real Nix (the oracle) and the built binary.

pub mod operator;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// True when Nix's command-line tools are installed. When they are not, tests that need them print
/// a loud notice and skip, except under CI (`CI` set), where a missing oracle is a failure:
/// `.ci/run` installs Nix, so its absence there means the set-up is broken.
pub fn nix_available() -> bool {
    let found = Command::new("nix-store")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!(
                "nix-store not found but CI is set: tools/setup.sh should have installed nix-bin"
            );
        }
        eprintln!("\n*** SKIPPED: real Nix (nix-store) is not installed; run tools/setup.sh to test against it ***\n");
    }
    found
}

/// Skip the current test (with a loud message) when real Nix is absent.
#[macro_export]
macro_rules! require_nix {
    () => {
        if !$crate::nix_available() {
            return;
        }
    };
}

/// The `refstrip` binary, built from the current sources once per test process: test runners
/// build a package's test targets but not other packages' binaries, so without this a test could
/// run a stale binary.
pub fn refstrip_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "refstrip", "--bin", "refstrip"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo build");
            assert!(status.success(), "cargo build -p refstrip failed");
            let exe = std::env::current_exe().expect("test executable path");
            let bin = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps")
                .join("refstrip");
            assert!(bin.exists(), "{} missing after cargo build", bin.display());
            bin
        })
        .clone()
}

/// Run a command with `input` on its standard input, panicking if it fails; returns stdout.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Feed from a thread so a child that writes a lot before reading cannot deadlock us.
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("waiting for child");
    feeder.join().expect("stdin feeder").expect("writing stdin");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run a command, panicking with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The committed corpus (see corpus/README.md).
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus"))
}

/// The public key that signed the committed corpus (`name:base64`).
pub fn corpus_key() -> String {
    fs::read_to_string(corpus_dir().join("keys/refstrip-corpus-1.pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// One generation of the small corpus (a binary cache directory).
pub fn generation_dir(generation: &str) -> PathBuf {
    corpus_dir().join("small").join(generation)
}

/// A normalized store of corpus/small gen1, ingested once per test process.
pub fn gen1_store() -> &'static std::path::Path {
    static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        // Kept for the life of the test process.
        let dir = tempfile::tempdir().unwrap().keep();
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(generation_dir("gen1"))
            .args(["--all", "--to"])
            .arg(dir.join("store")));
        dir.join("store")
    })
}

/// Every file and directory below `dir` (and `dir` itself) with its size and mtime in ns: what
/// "left unchanged" means in tests.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, (u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |m: &fs::Metadata| {
        (
            m.len(),
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        )
    };
    let mut out = std::collections::BTreeMap::new();
    out.insert(
        dir.to_path_buf(),
        stamp(&fs::symlink_metadata(dir).unwrap()),
    );
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            out.insert(e.path(), stamp(&m));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// The generations of the small corpus that the store and serving tests ingest, oldest first
/// (their path counts are asserted throughout those tests).
pub const GENERATIONS: [&str; 4] = ["gen1", "mass", "single", "bump"];

/// Every committed generation of the small corpus: [`GENERATIONS`] and `channel` (a channel update:
/// a mass rebuild and version bumps together), for the tests that check each generation's paths
/// on their own; the ingesting tests leave `channel` out to keep CI time flat.
pub const ALL_GENERATIONS: [&str; 5] = ["gen1", "mass", "single", "bump", "channel"];

/// `(name, output) -> store path` of one corpus generation, from its `packages` index.
pub fn corpus_packages(generation: &str) -> std::collections::BTreeMap<(String, String), String> {
    let text =
        std::fs::read_to_string(corpus_dir().join("small").join(generation).join("packages"))
            .unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            ((f[0].to_string(), f[2].to_string()), f[3].to_string())
        })
        .collect()
}

/// A static file server that honours `Range: bytes=a-b` (206) and counts ranged answers.
pub fn static_http_server(dir: PathBuf) -> (String, Arc<AtomicU64>) {
    let (url, ranged, _) = static_http_server_counting(dir);
    (url, ranged)
}

/// [`static_http_server`], also counting the body bytes it sent (what a client fetched from the
/// origin, measured there rather than taken from the client's own report).
pub fn static_http_server_counting(dir: PathBuf) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let sent_counter = sent.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranged = Arc::new(AtomicU64::new(0));
    let counter = ranged.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let dir = dir.clone();
            let counter = counter.clone();
            let sent = sent_counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let head = line.starts_with("HEAD");
                    let mut range = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            let (a, b) = v.trim().split_once('-').unwrap_or(("", ""));
                            range = Some((a.parse().unwrap_or(usize::MAX), b.parse().unwrap_or(0)));
                        }
                    }
                    let (status, body) = match fs::read(dir.join(path.trim_start_matches('/'))) {
                        Ok(bytes) => match range {
                            Some((a, b)) if a <= b && b < bytes.len() => {
                                counter.fetch_add(1, Ordering::Relaxed);
                                ("206 Partial Content", bytes[a..=b].to_vec())
                            }
                            Some(_) => ("416 Range Not Satisfiable", Vec::new()),
                            None => ("200 OK", bytes),
                        },
                        Err(_) => ("404 Not Found", Vec::new()),
                    };
                    let header = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(header.as_bytes()).is_err() {
                        return;
                    }
                    if !head {
                        if stream.write_all(&body).is_err() {
                            return;
                        }
                        sent.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (url, ranged, sent)
}

/// The record of `hash_part` in the directory store `store`, read as every client reads it (a
/// format 2 binding joined with its shape, or a format 1 record), its object table loaded.
pub fn read_record(store: &std::path::Path, hash_part: &str) -> refstrip_read::PathRecord {
    let reader = refstrip_read::StoreReader::open(store.to_str().unwrap()).unwrap();
    let (record, _) = reader.record(hash_part).unwrap();
    record.objects.map().unwrap();
    record
}

/// Replace the record of a path with `record` in format 1 (one file, which every client still
/// reads): how tests plant a record the writer would never write.
pub fn write_record_v1(store: &std::path::Path, record: &refstrip_read::PathRecord) {
    fs::write(
        store.join("paths").join(record.hash_part()),
        record.encode_v1(),
    )
    .unwrap();
}

/// Change a record's object table.
pub fn edit_objects(
    record: &mut refstrip_read::PathRecord,
    edit: impl FnOnce(&mut refstrip_read::ObjectMap),
) {
    let mut map = record.objects.map().unwrap().clone();
    edit(&mut map);
    record.objects = map.into();
}

/// Bytes of every NAR of a generation compressed with xz at Nix's level (6): the NAR+xz baseline.
pub fn xz_bytes(generation: &str) -> u64 {
    xz_bytes_new(generation, None)
}

/// [`xz_bytes`] of the paths of `generation` that `base` (another generation) lacks: what a
/// plain binary cache sends a client updating from `base`.
pub fn xz_bytes_new(generation: &str, base: Option<&str>) -> u64 {
    let open = |g: &str| {
        refstrip_source::open_source(
            generation_dir(g).to_str().unwrap(),
            refstrip_nix::StoreDir::default(),
        )
        .unwrap()
    };
    let source = open(generation);
    let old: std::collections::HashSet<_> = match base {
        Some(b) => open(b).list().unwrap().into_iter().collect(),
        None => Default::default(),
    };
    source
        .list()
        .unwrap()
        .iter()
        .filter(|p| !old.contains(*p))
        .map(|p| {
            let mut nar = Vec::new();
            use std::io::Read;
            source
                .nar(&source.narinfo(p).unwrap())
                .unwrap()
                .read_to_end(&mut nar)
                .unwrap();
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&nar).unwrap();
            e.finish().unwrap().len() as u64
        })
        .sum()
}
