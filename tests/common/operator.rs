//! Helpers for the operator tests (signing, push, metrics): a running `refstrip serve`, stock `nix`
//! invocations, key pairs made by Nix, and local Nix stores with unsigned paths, as a build
//! machine has them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::{corpus_dir, refstrip_bin, run};

/// `nix --extra-experimental-features nix-command ARGS…`.
pub fn nix(args: &[&str]) -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command"])
        .args(args);
    cmd
}

/// The root store path of a corpus generation.
pub fn corpus_root(generation: &str) -> String {
    std::fs::read_to_string(corpus_dir().join("small").join(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
}

/// A key pair made by `nix-store --generate-binary-cache-key NAME SECRET PUBLIC`: the secret key
/// file and the public key's text.
pub fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let (secret, public) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    run(Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&secret)
        .arg(&public));
    (
        secret,
        std::fs::read_to_string(public).unwrap().trim().to_string(),
    )
}

/// A chroot Nix store at `root` holding the closure of `generation`'s root, copied in by Nix, with
/// every signature removed from Nix's database: the paths are then exactly as unsigned as paths a
/// build machine built itself (input-addressed, no CA field, no `sigs`).
pub fn unsigned_local_store(root: &Path, generation: &str) {
    nix_copy_generation(root, generation);
    strip_signatures(root);
}

/// Remove every signature from a local store's database.
pub fn strip_signatures(root: &Path) {
    let db = rusqlite::Connection::open(root.join("nix/var/nix/db/db.sqlite")).unwrap();
    db.execute("UPDATE ValidPaths SET sigs = NULL", []).unwrap();
    let signed: i64 = db
        .query_row(
            "SELECT count(*) FROM ValidPaths WHERE sigs IS NOT NULL AND sigs != '' OR ca IS NOT NULL AND ca != ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(signed, 0, "paths with signatures or CA fields remain");
}

/// `nix copy --from URL --to ROOT PATH` with only `trusted_key` trusted (signatures checked).
pub fn nix_copy_from(url: &str, root: &Path, trusted_key: &str, path: &str) -> Output {
    nix(&["copy", "--from", url, "--to"])
        .arg(root)
        .args(["--option", "trusted-public-keys", trusted_key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .arg(path)
        .output()
        .unwrap()
}

/// `nix-store --verify --check-contents` on a chroot store must pass without complaint.
pub fn verify_contents(root: &Path) {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nix-store --verify --check-contents: {stderr}"
    );
    assert!(
        !stderr.contains("error")
            && !stderr.contains("modified")
            && !stderr.contains("disappeared"),
        "verify complained: {stderr}"
    );
}

/// The local substituter: `refstrip serve --from FROM --local-store ROOT`.
pub fn local_substituter(from: &str, root: &Path, extra: &[&str]) -> Serving {
    let mut args = vec![
        "--store-dir",
        "/nix/store",
        "--local-store",
        root.to_str().unwrap(),
    ];
    args.extend(extra);
    Serving::start_from(from, &args)
}

/// An update as a user makes it: `root` given gen1 by stock Nix from the plain binary cache, then
/// corpus/small's `generation` by stock `nix copy` through a local substituter over `origin`, and
/// the store checked (contents, NAR hashes). The bytes the origin sent during the copy.
pub fn update_through_local_substituter(
    origin: &str,
    root: &Path,
    generation: &str,
    sent: &std::sync::atomic::AtomicU64,
) -> u64 {
    nix_copy_generation(root, "gen1");
    let serve = local_substituter(origin, root, &[]);
    let fetched = nix_copy_counted(&serve.url(), root, &corpus_root(generation), sent);
    drop(serve);
    verify_contents(root);
    hashes_match(root, generation);
    fetched
}

/// Stock `nix copy` of `path` from the cache at `url` into `root`, signatures checked against the
/// corpus key; the bytes the origin sent meanwhile.
pub fn nix_copy_counted(
    url: &str,
    root: &Path,
    path: &str,
    sent: &std::sync::atomic::AtomicU64,
) -> u64 {
    use std::sync::atomic::Ordering;
    let before = sent.load(Ordering::Relaxed);
    // Nix caches narinfos per cache URL (a 404 for an hour): other tests' servers answered on
    // these loopback ports before, some with a 404 for every path.
    run(Command::new("nix")
        .args(["copy", "--option", "trusted-public-keys"])
        .arg(crate::corpus_key())
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--from", url, "--to"])
        .arg(root)
        .arg(path));
    sent.load(Ordering::Relaxed) - before
}

/// A chroot Nix store at `root` given corpus/small's `generation` by stock Nix from the plain
/// binary cache (no refstrip).
pub fn nix_copy_generation(root: &Path, generation: &str) {
    run(nix(&["copy", "--no-check-sigs", "--from"])
        .arg(format!(
            "file://{}",
            corpus_dir().join("small").join(generation).display()
        ))
        .arg("--to")
        .arg(root)
        .arg(corpus_root(generation)));
}

/// `refstrip substitute --json --no-cache --no-check-sigs --from URL --store ROOT EXTRA…` of
/// corpus/small's `generation`: the report, and the bytes the origin counted by `sent` sent
/// meanwhile.
pub fn substitute_generation(
    generation: &str,
    url: &str,
    sent: &std::sync::atomic::AtomicU64,
    root: &Path,
    extra: &[&str],
) -> (serde_json::Value, u64) {
    use std::sync::atomic::Ordering;
    let before = sent.load(Ordering::Relaxed);
    let out = Command::new(refstrip_bin())
        .args(["substitute", "--json", "--no-cache", "--no-check-sigs"])
        .args(["--from", url, "--store"])
        .arg(root)
        .args(extra)
        .arg(corpus_root(generation))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "substitute failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).unwrap();
    (report, sent.load(Ordering::Relaxed) - before)
}

/// The NAR hashes of a corpus generation's closure as its binary cache records them are what the
/// chroot store at `root` reports for it.
pub fn hashes_match(root: &Path, generation: &str) {
    let q = |args: &[&str], paths: &[String]| {
        String::from_utf8(run(Command::new("nix-store")
            .arg("--store")
            .arg(root)
            .args(args)
            .args(paths)))
        .unwrap()
    };
    let closure: Vec<String> = q(&["--query", "--requisites"], &[corpus_root(generation)])
        .lines()
        .map(str::to_string)
        .collect();
    let got = q(&["--query", "--hash"], &closure);
    let dir = crate::corpus_dir().join("small").join(generation);
    for info in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(info.path()).unwrap_or_default();
        if let Some(hash) = text.lines().find_map(|l| l.strip_prefix("NarHash: ")) {
            assert!(
                got.contains(hash),
                "{} missing in {got}",
                info.path().display()
            );
        }
    }
}

/// The closure of `path` in the chroot store at `root`, as Nix lists it.
pub fn closure_in(root: &Path, path: &str) -> Vec<String> {
    let out = run(Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["-qR", path]));
    let mut paths: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    paths.sort();
    paths
}

/// A running `refstrip serve`, stopped with SIGTERM (and checked to exit 0) by [`Serving::stop`],
/// killed on drop otherwise.
pub struct Serving {
    pub child: Child,
    pub port: u16,
    /// Where its stderr (the request log) goes.
    pub log: PathBuf,
}

impl Serving {
    pub fn start(store: &Path, extra: &[&str]) -> Serving {
        Serving::start_from(store.to_str().expect("UTF-8 test path"), extra)
    }

    /// `refstrip serve --from FROM` (a store path or URL) on a free loopback port.
    pub fn start_from(from: &str, extra: &[&str]) -> Serving {
        Serving::start_on(from, |port| format!("127.0.0.1:{port}"), extra)
    }

    /// Start with `--listen listen(port)`, `port` a free one; clients connect to 127.0.0.1.
    pub fn start_on(from: &str, listen: impl Fn(u16) -> String, extra: &[&str]) -> Serving {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("refstrip-serve-{port}.log"));
        let child = Command::new(refstrip_bin())
            .args(["serve", "--from", from])
            .args(["--listen", &listen(port)])
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting refstrip serve");
        let mut serving = Serving { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = serving.child.try_wait().unwrap() {
                panic!(
                    "refstrip serve exited early ({status}): {}",
                    serving.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "refstrip serve did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server is still running (it must survive whatever clients do).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: graceful shutdown must exit 0.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "refstrip serve exited with {status} after SIGTERM"
        );
    }

    /// SIGTERM and wait (at most 30 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "refstrip serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- refstrip serve log:\n{}", self.log_text());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `GET path` over a fresh HTTP/1.1 connection to 127.0.0.1:`port`: the status and the body
/// (read until the server closes the connection, as the request asks; an aborted body is returned
/// as far as it arrived).
pub fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    // An aborted response ends in a reset: keep what arrived.
    let _ = stream.read_to_end(&mut response);
    // A connection closed (or reset) before a whole head arrived is a failed request: status 0.
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let head = String::from_utf8_lossy(&response[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = response[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

/// The body of a chunked response, without its framing.
pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
