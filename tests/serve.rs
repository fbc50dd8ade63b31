//! `refstrip serve` against stock Nix as the client: `nix copy` and `nix-store -r` from the server
//! with the original signatures checked, `nix-store --verify --check-contents` on the result, and
//! tampered stores that must make downloads fail instead of delivering wrong bytes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use refstrip_nix::{Hash, NarInfo, StoreDir};
use refstrip_read::PathRecord;
use refstrip_tests::{corpus_dir, refstrip_bin, require_nix, run, GENERATIONS};

/// A normalized store holding every corpus generation.
fn corpus_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    for generation in GENERATIONS {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(corpus_dir().join("small").join(generation))
            .args(["--all", "--to"])
            .arg(&store));
    }
    store
}

fn corpus_key() -> String {
    std::fs::read_to_string(corpus_dir().join("keys/refstrip-corpus-1.pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn root_of(generation: &str) -> String {
    std::fs::read_to_string(corpus_dir().join("small").join(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
}

/// A running `refstrip serve`, stopped (SIGTERM, then checked to exit cleanly) on drop.
struct Serving {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Serving {
    fn start(store: &Path, extra: &[&str]) -> Serving {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = store.with_file_name(format!("serve-{port}.log"));
        let child = Command::new(refstrip_bin())
            .args(["serve", "--from"])
            .arg(store)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting refstrip serve");
        let mut serving = Serving { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                serving.child.try_wait().unwrap().is_none(),
                "refstrip serve exited early"
            );
            assert!(
                Instant::now() < deadline,
                "refstrip serve did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: graceful shutdown must exit 0.
    fn stop(mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "refstrip serve exited with {status} after SIGTERM"
        );
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
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
            eprintln!(
                "--- refstrip serve log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 GET over a fresh connection: status, body, and whether the body arrived complete
/// (all of Content-Length, or the terminating chunk of a chunked body).
struct Got {
    status: u16,
    body: Vec<u8>,
    complete: bool,
    content_length: Option<u64>,
}

fn http_get(port: u16, path: &str) -> Got {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // A connection aborted by the server may end in a reset: keep what arrived.
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response headers")
        + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    let content_length = header("content-length").map(|v| v.parse().unwrap());
    let rest = &raw[end..];
    if header("transfer-encoding").as_deref() == Some("chunked") {
        let (mut body, mut at, mut complete) = (Vec::new(), 0, false);
        while let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..at + eol]).unwrap().trim(), 16)
                    .unwrap();
            at += eol + 2;
            if size == 0 {
                complete = true;
                break;
            }
            if rest.len() < at + size + 2 {
                body.extend_from_slice(&rest[at.min(rest.len())..]);
                break;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        Got {
            status,
            body,
            complete,
            content_length,
        }
    } else {
        let complete = content_length.is_some_and(|n| rest.len() as u64 == n);
        Got {
            status,
            body: rest.to_vec(),
            complete,
            content_length,
        }
    }
}

fn nix(args: &[&str]) -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command"])
        .args(args);
    cmd
}

/// Options that point Nix at the server only, with the corpus key as the only trusted one, and no
/// cached narinfo lookups from earlier runs.
fn substituter_options(cmd: &mut Command, url: &str) {
    cmd.args(["--option", "substituters", url])
        .args(["--option", "trusted-public-keys", &corpus_key()])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"]);
}

fn closure_in(root: &Path, path: &str) -> BTreeSet<String> {
    let out = run(Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["-qR", path]));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn corpus_paths(generation: &str) -> BTreeSet<String> {
    std::fs::read_to_string(corpus_dir().join("small").join(generation).join("paths"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn verify_contents(root: &Path) {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nix-store --verify --check-contents failed: {stderr}"
    );
    assert!(
        !stderr.contains("error") && !stderr.contains("modified"),
        "verify complained: {stderr}"
    );
}

#[test]
fn nix_copies_every_generation_with_signatures_checked() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    for compression in ["none", "zstd"] {
        let server = Serving::start(&store, &["--compression", compression]);
        let info = http_get(server.port, "/nix-cache-info");
        assert_eq!(info.status, 200);
        assert_eq!(
            String::from_utf8(info.body).unwrap(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        for generation in GENERATIONS {
            let root = tmp.path().join(format!("root-{compression}-{generation}"));
            let target = root_of(generation);
            let mut cmd = nix(&["copy", "--from", &server.url(), "--to"]);
            cmd.arg(&root);
            cmd.args(["--option", "trusted-public-keys", &corpus_key()])
                .arg(&target);
            run(&mut cmd);
            verify_contents(&root);
            assert_eq!(
                closure_in(&root, &target),
                corpus_paths(generation),
                "{generation} ({compression})"
            );
        }
        server.stop();
    }
}

#[test]
fn nix_refuses_paths_without_a_trusted_signature() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let server = Serving::start(&store, &[]);
    let root = tmp.path().join("root");
    let mut cmd = nix(&["copy", "--from", &server.url(), "--to"]);
    cmd.arg(&root)
        .args([
            "--option",
            "trusted-public-keys",
            "other-key:OJ6pGuMUWKKbsMtWccaErvuM11qEU1nIUX0eY1T+0+I=",
        ])
        .arg(root_of("gen1"));
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "nix copy accepted paths signed by an untrusted key"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks a valid signature"));
    server.stop();
}

#[test]
fn nix_store_realise_substitutes_from_the_server() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let server = Serving::start(&store, &[]);
    for generation in ["single", "bump"] {
        let root = tmp.path().join(format!("root-{generation}"));
        let target = root_of(generation);
        let mut cmd = Command::new("nix-store");
        cmd.arg("--store").arg(&root).args(["-r", &target]);
        substituter_options(&mut cmd, &server.url());
        let out = String::from_utf8(run(&mut cmd)).unwrap();
        assert_eq!(out.trim(), target);
        verify_contents(&root);
        assert_eq!(closure_in(&root, &target), corpus_paths(generation));
    }
    server.stop();
}

/// Every narinfo matches the corpus's original (path fields and Sig lines), every NAR hashes to
/// its NarHash, and unknown or malformed names are 404.
#[test]
fn narinfos_and_nars_are_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let server = Serving::start(&store, &[]);
    let store_dir = StoreDir::new("/nix/store").unwrap();
    let mut seen = 0;
    for generation in GENERATIONS {
        let dir = corpus_dir().join("small").join(generation);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(hash_part) = name.strip_suffix(".narinfo") else {
                continue;
            };
            let original = NarInfo::parse(
                &store_dir,
                &std::fs::read_to_string(dir.join(&name)).unwrap(),
            )
            .unwrap();
            let got = http_get(server.port, &format!("/{name}"));
            assert_eq!(got.status, 200, "{name}");
            let served =
                NarInfo::parse(&store_dir, std::str::from_utf8(&got.body).unwrap()).unwrap();
            assert_eq!(served.url, format!("nar/{hash_part}.nar"));
            assert_eq!(served.compression.as_deref(), Some("none"));
            assert_eq!((served.file_hash, served.file_size), (None, None));
            assert_eq!(served.store_path, original.store_path);
            assert_eq!(served.nar_hash, original.nar_hash);
            assert_eq!(served.nar_size, original.nar_size);
            assert_eq!(served.references, original.references);
            assert_eq!(served.deriver, original.deriver);
            assert_eq!(served.sigs, original.sigs);
            let nar = http_get(server.port, &format!("/{}", served.url));
            assert!(nar.status == 200 && nar.complete, "{name}");
            assert_eq!(nar.content_length, Some(original.nar_size));
            assert_eq!(Hash::digest(&nar.body), original.nar_hash, "{name}");
            seen += 1;
        }
    }
    assert!(seen >= 40, "only {seen} narinfos checked");
    for missing in [
        "/00000000000000000000000000000000.narinfo",
        "/nar/00000000000000000000000000000000.nar",
        "/short.narinfo",
        "/nar/..%2f..%2fetc%2fpasswd.nar",
        "/nar/1avrvw4574jhm9g7j8y0y9a6qzakr6nj.nar.xz",
    ] {
        assert_eq!(http_get(server.port, missing).status, 404, "{missing}");
    }
    server.stop();
}

/// The largest NAR of the corpus (more than two body chunks, so its response starts before the
/// restore ends) and the smallest one that has file contents (objects in packs).
fn largest_and_smallest(store: &Path) -> (String, String) {
    let mut sizes: Vec<(u64, String)> = std::fs::read_dir(store.join("paths"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let record =
                PathRecord::decode(&std::fs::read(store.join("paths").join(&name)).unwrap())
                    .unwrap();
            (!record.objects.is_empty()).then_some((record.manifest.nar_size, name))
        })
        .collect();
    sizes.sort();
    let (big, small) = (sizes.last().unwrap().clone(), sizes[0].clone());
    assert!(
        big.0 > 2 * refstrip_serve_chunk(),
        "corpus has no NAR larger than two chunks"
    );
    (big.1, small.1)
}

/// `refstrip_serve::CHUNK` (256 KiB), without depending on the crate.
fn refstrip_serve_chunk() -> u64 {
    256 * 1024
}

/// Flip bytes all over the pack block holding the largest object of `hash_part` (one flipped
/// byte may land in a part of the block that another object uses).
fn tamper_pack(store: &Path, hash_part: &str) {
    let record =
        PathRecord::decode(&std::fs::read(store.join("paths").join(hash_part)).unwrap()).unwrap();
    let (pack, loc) = record
        .objects
        .values()
        .max_by_key(|(_, loc)| loc.size)
        .expect("a path with files");
    let path = store.join("packs").join(format!("{pack}.pack"));
    let mut bytes = std::fs::read(&path).unwrap();
    for at in (loc.block_offset + 16..loc.block_offset + loc.block_len - 8).step_by(97) {
        bytes[at as usize] ^= 0x40;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Make the record claim a different NarHash: the restore then produces every byte and fails only
/// at its final SHA-256 check, the case where holding back the last chunk matters.
fn tamper_nar_hash(store: &Path, hash_part: &str) {
    let path = store.join("paths").join(hash_part);
    let mut record = PathRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
    record.manifest.nar_hash[0] ^= 1;
    record.manifest_bytes = record.manifest.encode();
    std::fs::write(&path, record.encode()).unwrap();
}

#[test]
fn a_corrupt_pack_fails_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let (big, small) = largest_and_smallest(&store);
    tamper_pack(&store, &big);
    tamper_pack(&store, &small);
    for compression in ["none", "zstd"] {
        let server = Serving::start(&store, &["--compression", compression]);
        let ext = if compression == "zstd" {
            ".nar.zst"
        } else {
            ".nar"
        };
        for hash_part in [&big, &small] {
            let got = http_get(server.port, &format!("/nar/{hash_part}{ext}"));
            assert!(
                !(got.status == 200 && got.complete),
                "{hash_part}{ext}: a corrupt NAR was served as complete"
            );
            // And the narinfo is still served: only the NAR is unavailable.
            assert_eq!(
                http_get(server.port, &format!("/{hash_part}.narinfo")).status,
                200
            );
        }
        server.stop();
    }
}

#[test]
fn a_nar_hash_mismatch_at_the_end_is_never_a_complete_response() {
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let (big, small) = largest_and_smallest(&store);
    tamper_nar_hash(&store, &big);
    tamper_nar_hash(&store, &small);
    let record =
        PathRecord::decode(&std::fs::read(store.join("paths").join(&big)).unwrap()).unwrap();
    for compression in ["none", "zstd"] {
        let server = Serving::start(&store, &["--compression", compression]);
        let ext = if compression == "zstd" {
            ".nar.zst"
        } else {
            ".nar"
        };
        let got = http_get(server.port, &format!("/nar/{big}{ext}"));
        assert!(
            !(got.status == 200 && got.complete),
            "{big}{ext}: complete body despite the hash mismatch"
        );
        if compression == "none" {
            // More than two chunks: the body started before the restore ended, and stops short.
            assert_eq!(got.status, 200);
            assert_eq!(got.content_length, Some(record.manifest.nar_size));
            assert!((got.body.len() as u64) < record.manifest.nar_size);
            assert!(!got.body.is_empty());
        }
        // A NAR smaller than two chunks is checked before the status line: a clean 500.
        let got = http_get(server.port, &format!("/nar/{small}{ext}"));
        assert_eq!(got.status, 500, "{small}{ext}");
        server.stop();
    }
}

#[test]
fn nix_copy_fails_on_a_tampered_store() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let (big, _) = largest_and_smallest(&store);
    tamper_pack(&store, &big);
    let server = Serving::start(&store, &[]);
    let target = std::fs::read_to_string(corpus_dir().join("small/gen1/paths"))
        .unwrap()
        .lines()
        .chain(
            std::fs::read_to_string(corpus_dir().join("small/mass/paths"))
                .unwrap()
                .lines(),
        )
        .chain(
            std::fs::read_to_string(corpus_dir().join("small/single/paths"))
                .unwrap()
                .lines(),
        )
        .chain(
            std::fs::read_to_string(corpus_dir().join("small/bump/paths"))
                .unwrap()
                .lines(),
        )
        .find(|p| p.contains(&big))
        .unwrap()
        .to_string();
    let root = tmp.path().join("root");
    let mut cmd = nix(&["copy", "--from", &server.url(), "--to"]);
    cmd.arg(&root)
        .args(["--option", "trusted-public-keys", &corpus_key()])
        .arg(&target);
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "nix copy succeeded from a tampered store"
    );
    let valid = Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .args(["--check-validity", &target])
        .output()
        .unwrap();
    assert!(!valid.status.success(), "{target} became valid");
    server.stop();
}

/// The load tool, short: 32 clients for 8 s, every NAR checked, no errors, bounded server memory,
/// clean exit on SIGTERM.
#[test]
fn short_load_test() {
    let tmp = tempfile::tempdir().unwrap();
    let store = corpus_store(tmp.path());
    let mut cmd = Command::new("python3");
    cmd.arg(corpus_dir().join("../tools/serve_load.py"))
        .arg("--refstrip")
        .arg(refstrip_bin())
        .arg("--store")
        .arg(&store)
        .args(["--clients", "32", "--seconds", "8", "--json"]);
    for generation in GENERATIONS {
        cmd.args(["--root", &root_of(generation)]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "serve_load failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["errors"], 0);
    assert_eq!(result["closure_paths"], 40);
    assert!(result["nars"].as_u64().unwrap() >= 40, "{result}");
    let peak = result["server_peak_rss_mib"].as_f64().unwrap();
    assert!(peak > 0.0 && peak < 512.0, "server peak RSS {peak} MiB");
}
