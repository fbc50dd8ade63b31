//! A store behind an HTTP origin that ignores `Range` (answers a ranged GET with `200` and the
//! whole file, as `python3 -m http.server` does): detected once, reported once naming the origin,
//! and each pack downloaded once for the run rather than once per block. Bytes are counted at the
//! origin.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use refstrip_tests::operator::verify_contents;
use refstrip_tests::{refstrip_bin, run};

/// Serves a directory, ignores Range, and writes the body bytes it has sent to a file after each
/// response (also one the client broke off).
const ORIGIN: &str = r#"
import http.server, os, sys, threading
directory, port, count_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
sent = [0]
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=directory, **k)
    def copyfile(self, source, outputfile):
        # Counted as it goes: a client that hangs up after the bytes it wanted has still been
        # sent those.
        try:
            while True:
                data = source.read(65536)
                if not data:
                    break
                outputfile.write(data)
                with lock:
                    sent[0] += len(data)
        finally:
            with lock:
                with open(count_file + ".tmp", "w") as f:
                    f.write(str(sent[0]))
                os.replace(count_file + ".tmp", count_file)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

struct Origin {
    child: Child,
    port: u16,
    count: std::path::PathBuf,
}

impl Origin {
    fn start(dir: &Path, count: &Path) -> Origin {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-c", ORIGIN])
            .arg(dir)
            .arg(port.to_string())
            .arg(count)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the origin did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Origin {
            child,
            port,
            count: count.to_path_buf(),
        }
    }

    fn sent(&self) -> u64 {
        std::fs::read_to_string(&self.count)
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_origin_that_ignores_range_is_reported_once_and_each_pack_is_fetched_once() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    // A 12 MiB file that does not compress: its pack holds three 4 MiB blocks.
    let big = dir.path().join("big");
    let mut seed = 0x9e3779b97f4a7c15u64;
    let bytes: Vec<u8> = (0..12 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::File::create(&big)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let source = dir.path().join("source");
    let path = String::from_utf8(run(Command::new("nix-store")
        .arg("--store")
        .arg(&source)
        .arg("--add")
        .arg(&big)))
    .unwrap()
    .trim()
    .to_string();
    let store = dir.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&source)
        .args(["--all", "--to"])
        .arg(&store));
    let packs: Vec<u64> = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(packs.len(), 1);
    let pack = packs[0];
    assert!(pack > 12 << 20);

    let origin = Origin::start(&store, &dir.path().join("sent"));
    let url = format!("http://127.0.0.1:{}", origin.port);
    let root = dir.path().join("client");
    let out = Command::new(refstrip_bin())
        .args([
            "substitute",
            "--from",
            &url,
            "--no-cache",
            "--no-check-sigs",
            "--store",
        ])
        .arg(&root)
        .arg(&path)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    verify_contents(&root);
    // The pack once, plus the record and the marker (once per block before this was fixed).
    let sent = origin.sent();
    eprintln!("origin sent {sent} bytes for a pack of {pack} bytes (three blocks)");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ignores HTTP Range"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&url), "{stderr}");
    assert!(
        sent >= pack && sent < pack + (1 << 20),
        "origin sent {sent}, pack {pack}"
    );
}
