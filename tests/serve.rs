//! `refstrip serve` against stock Nix as the client: `nix copy` and `nix-store -r` from the server
//! with the original signatures checked, `nix-store --verify --check-contents` on the result, and
//! tampered stores that must make downloads fail instead of delivering wrong bytes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use refstrip_nix::{Hash, NarInfo, StoreDir};
use refstrip_tests::operator::{verify_contents, Serving};
use refstrip_tests::{
    corpus_dir, corpus_key, read_record, refstrip_bin, require_nix, run, write_record_v1,
    GENERATIONS,
};

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

fn root_of(generation: &str) -> String {
    std::fs::read_to_string(corpus_dir().join("small").join(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
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
    http_get_within(port, path, Duration::from_secs(60))
}

/// `http_get`, giving up on the response after `wait` without data.
fn http_get_within(port: u16, path: &str, wait: Duration) -> Got {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
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
            // Uncompressed, the file is the NAR: FileSize so that Nix shows a download size, and
            // FileHash = NarHash.
            assert_eq!(
                (served.file_hash, served.file_size),
                (Some(original.nar_hash), Some(original.nar_size))
            );
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
            let record = read_record(store, &name);
            (!record.manifest.objects().is_empty()).then_some((record.manifest.nar_size, name))
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
    let record = read_record(store, hash_part);
    let (pack, loc) = record
        .objects
        .map()
        .unwrap()
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
    let mut record = read_record(store, hash_part);
    record.manifest.nar_hash[0] ^= 1;
    write_record_v1(store, &record);
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
    let record = read_record(&store, &big);
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

/// Make the record claim NarSize `nar_size`: a restore of it then produces more (or fewer) bytes
/// than the Content-Length it is announced with.
fn tamper_nar_size(store: &Path, hash_part: &str, nar_size: u64) {
    let mut record = read_record(store, hash_part);
    record.manifest.nar_size = nar_size;
    write_record_v1(store, &record);
}

/// Issue #17 item 3: a manifest that restores to more than NarSize used to give a `200` with
/// exactly Content-Length bytes (hyper cut the unchecked first chunk) whose SHA-256 was not
/// NarHash. The record decoder now refuses manifests whose file bytes or node count NarSize cannot
/// hold, so the NARs here overflow NarSize with directory entries (NAR framing, no file bytes),
/// within what the decoder accepts; the restore, `ChannelWriter` and the response body each
/// refuse to go past NarSize. No response may be complete, and where the first chunk already
/// reaches NarSize the answer is a plain `500`.
#[test]
fn a_restore_longer_than_nar_size_is_never_a_complete_response() {
    let tmp = tempfile::tempdir().unwrap();
    let chunk = refstrip_serve_chunk();
    let (first, eighth, untouched) = (
        "1arg000000000000000000000000000a",
        "1arg000000000000000000000000000b",
        "1arg000000000000000000000000000d",
    );
    // 1,400 entries: about 540 KB, more than two chunks, and few enough nodes for a NarSize of
    // one chunk (NarSize / 184 + 1 = 1,425). 11,000 entries: about 4.2 MB, for 8 chunks.
    let store = store_with_nars(
        tmp.path(),
        &[
            (first, nar_of_empty_files(1_400)),
            (eighth, nar_of_empty_files(11_000)),
            (untouched, nar_of_a_file(1 << 20, 3)),
        ],
    );
    let real_small = read_record(&store, SMALL).manifest.nar_size;
    // The whole NAR fits one chunk and is longer than it claims.
    tamper_nar_size(&store, SMALL, real_small - 8);
    // NarSize exactly one chunk: the first chunk would be the complete body.
    tamper_nar_size(&store, first, chunk);
    // NarSize eight chunks: the eighth chunk would complete the body.
    tamper_nar_size(&store, eighth, 8 * chunk);
    let server = Serving::start(&store, &[]);
    for hash_part in [SMALL, first, eighth] {
        // The premise: the decoder accepts the tampered records (only their NARs are wrong).
        assert_eq!(
            http_get(server.port, &format!("/{hash_part}.narinfo")).status,
            200,
            "{hash_part}.narinfo"
        );
    }
    for (hash_part, claimed) in [(SMALL, real_small - 8), (first, chunk), (eighth, 8 * chunk)] {
        for ext in [".nar", ".nar.zst"] {
            let got = http_get(server.port, &format!("/nar/{hash_part}{ext}"));
            assert!(
                !(got.status == 200 && got.complete),
                "{hash_part}{ext} (NarSize {claimed}): a complete response of {} bytes",
                got.body.len()
            );
            if ext == ".nar" && claimed <= chunk {
                assert_eq!(got.status, 500, "{hash_part}{ext} (NarSize {claimed})");
            }
        }
    }
    // An untouched path is still served completely.
    let record = read_record(&store, untouched);
    let got = http_get(server.port, &format!("/nar/{untouched}.nar"));
    assert!(got.status == 200 && got.complete);
    assert_eq!(
        Hash::digest(&got.body).as_bytes(),
        &record.manifest.nar_hash
    );
    server.stop();
}

/// One request over a fresh connection; the response head (lower-cased) and the body bytes that
/// arrived. HEAD responses have no body whatever their headers say.
fn http_exchange(port: u16, method: &str, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    (
        String::from_utf8_lossy(&raw[..end]).to_lowercase(),
        raw[end..].to_vec(),
    )
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}: "))
            .map(|v| v.trim().to_string())
    })
}

/// Issue #16: HEAD answers with the headers GET answers with, for every URL: Content-Length of
/// the body for narinfos and nix-cache-info, NarSize for `.nar`, and for the chunked `.nar.zst`
/// no `content-length: 0`.
#[test]
fn head_answers_with_the_headers_of_get() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let hash_part = std::fs::read_dir(store.join("paths"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|name| !name.starts_with('.'))
        .unwrap();
    let server = Serving::start(&store, &[]);
    for path in [
        "/nix-cache-info".to_string(),
        format!("/{hash_part}.narinfo"),
        format!("/nar/{hash_part}.nar"),
        format!("/nar/{hash_part}.nar.zst"),
        "/0000000000000000000000000000000a.narinfo".to_string(),
        "/nar/0000000000000000000000000000000a.nar.zst".to_string(),
    ] {
        let (get, body) = http_exchange(server.port, "GET", &path);
        let (head, head_body) = http_exchange(server.port, "HEAD", &path);
        assert!(head_body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            get.lines().next(),
            head.lines().next(),
            "status line of {path}"
        );
        for name in ["content-type", "content-length", "transfer-encoding"] {
            let (g, h) = (header_of(&get, name), header_of(&head, name));
            if name == "transfer-encoding" {
                // A HEAD answer cannot be chunked; it just must not claim a length instead.
                if g.is_some() {
                    assert_eq!(header_of(&head, "content-length"), None, "HEAD {path}");
                }
                continue;
            }
            assert_eq!(g, h, "{name} of GET and HEAD {path}");
        }
        if let Some(n) = header_of(&get, "content-length") {
            assert_eq!(n.parse::<usize>().unwrap(), body.len(), "GET {path}");
        }
    }
    server.stop();
}

/// Issue #16: `--listen :PORT` listens on all interfaces (tried here over loopback only).
#[test]
fn listen_with_only_a_port_means_all_interfaces() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/single"))
        .args(["--all", "--to"])
        .arg(&store));
    let server = Serving::start_on(store.to_str().unwrap(), |port| format!(":{port}"), &[]);
    let got = http_get(server.port, "/nix-cache-info");
    assert_eq!(got.status, 200);
    assert!(String::from_utf8_lossy(&got.body).contains("StoreDir: /nix/store"));
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Hostile clients (issue #17 item 10), on loopback only. The hostile clients connect from other
// loopback addresses (127.0.0.2 and up: Linux routes all of 127.0.0.0/8 to lo), so the server's
// per-client-IP cap tells them apart from the well-behaved client on 127.0.0.1.

/// A connection to the server on 127.0.0.1 from `source`, with a small receive buffer if given.
fn connect_from(source: [u8; 4], port: u16, recv_buffer: Option<usize>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|e| panic!("binding {source:?}: {e}"));
    socket
        .connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)).into(),
            Duration::from_secs(5),
        )
        .unwrap();
    socket.into()
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Whether the server has closed `s` (end of stream or reset), reading and discarding whatever
/// is still buffered; waits at most `wait`.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

/// `http_get` that must answer completely within `limit`; returns the body and the time taken.
fn quick_get(port: u16, path: &str, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let got = http_get_within(port, path, limit + Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        got.status == 200 && got.complete,
        "{path}: status {}, complete {}",
        got.status,
        got.complete
    );
    assert!(took < limit, "{path} took {took:?} (limit {limit:?})");
    (got.body, took)
}

/// A binary cache with one path whose NAR is a single `size`-byte file of pseudo-random bytes,
/// ingested into `store` (with the corpus's first generation, for small NARs).
fn store_with_a_large_nar(dir: &Path, size: usize) -> (PathBuf, String) {
    let hash_part = "1arg0000000000000000000000000bbb".to_string();
    let store = store_with_nars(dir, &[(&hash_part, nar_of_a_file(size, 0))]);
    (store, hash_part)
}

/// A NAR string: length, bytes, zero padding to 8.
fn nar_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// The NAR of a single regular file of `size` pseudo-random bytes (`seed` picks which).
fn nar_of_a_file(size: usize, seed: u64) -> Vec<u8> {
    let mut contents = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 + seed;
    for chunk in contents.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut nar = Vec::with_capacity(size + 256);
    for s in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        nar_string(&mut nar, s);
    }
    nar_string(&mut nar, &contents);
    nar_string(&mut nar, b")");
    nar
}

/// The NAR of a directory of `entries` empty files with 200-character names: about 384 bytes of
/// NAR per entry and no file bytes at all.
fn nar_of_empty_files(entries: usize) -> Vec<u8> {
    let mut nar = Vec::new();
    for s in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        nar_string(&mut nar, s);
    }
    for i in 0..entries {
        let name = format!("{i:0>200}");
        for s in [&b"entry"[..], b"(", b"name", name.as_bytes(), b"node", b"("] {
            nar_string(&mut nar, s);
        }
        for s in [&b"type"[..], b"regular", b"contents", b"", b")", b")"] {
            nar_string(&mut nar, s);
        }
    }
    nar_string(&mut nar, b")");
    nar
}

/// A binary cache with paths `/nix/store/<hash_part>-large` and the given NARs, ingested into
/// `store` with the corpus's first generation.
fn store_with_nars(dir: &Path, paths: &[(&str, Vec<u8>)]) -> PathBuf {
    let cache = dir.join("large-cache");
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    for (hash_part, nar) in paths {
        std::fs::write(cache.join(format!("nar/{hash_part}.nar")), nar).unwrap();
        std::fs::write(
            cache.join(format!("{hash_part}.narinfo")),
            format!(
                "StorePath: /nix/store/{hash_part}-large\nURL: nar/{hash_part}.nar\n\
                 Compression: none\nNarHash: sha256:{}\nNarSize: {}\nReferences: \n",
                Hash::digest(nar).to_nix32(),
                nar.len()
            ),
        )
        .unwrap();
    }
    let store = dir.join("store");
    for source in [cache, corpus_dir().join("small/gen1")] {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(source)
            .args(["--all", "--to"])
            .arg(&store));
    }
    store
}

/// A gen1 path with a small NAR (7,960 bytes), as the well-behaved client's download.
const SMALL: &str = "1avrvw4574jhm9g7j8y0y9a6qzakr6nj";

fn log_lines_with(server: &Serving, needle: &str) -> usize {
    std::fs::read_to_string(&server.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Slow readers: clients that request a large NAR and never read (issue #17: 80 of them took all
/// 64 stream slots and every other NAR request hung). The per-IP cap keeps one address from
/// taking every slot, so a well-behaved client is still answered within a second; where slow
/// readers from several addresses do hold every slot, the send timeout frees them.
#[test]
fn slow_readers_lose_their_stream_slots_to_the_send_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // Larger than what the socket buffers and the stream's channel hold (a few MiB), so that a
    // client that does not read really blocks the server's writes.
    let (store, large) = store_with_a_large_nar(tmp.path(), 24 << 20);
    let send_timeout = 3;
    let server = Serving::start(
        &store,
        &[
            "--max-streams",
            "3",
            "--max-connections-per-ip",
            "2",
            "--send-timeout",
            &send_timeout.to_string(),
        ],
    );
    let (port, pid) = (server.port, server.child.id());
    let small_nar = format!("/nar/{SMALL}.nar");
    quick_get(port, &small_nar, Duration::from_secs(5));
    let baseline = fd_count(pid);
    let request = format!("GET /nar/{large}.nar HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let slow_readers = |source: [u8; 4], n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = connect_from(source, port, Some(4096));
                // Refused connections may already be closed: the write may fail.
                let _ = s.write_all(request.as_bytes());
                s
            })
            .collect()
    };
    let start = Instant::now();
    // Six from 127.0.0.2: two are kept (per-IP cap), four are closed on arrival.
    let mut readers = slow_readers([127, 0, 0, 2], 6);
    std::thread::sleep(Duration::from_millis(1500));
    let attached = fd_count(pid);
    eprintln!("fds: baseline {baseline}, with 6 slow readers from one address {attached}");
    for path in [
        "/nix-cache-info".to_string(),
        format!("/{SMALL}.narinfo"),
        small_nar.clone(),
    ] {
        let (_, took) = quick_get(port, &path, Duration::from_secs(1));
        eprintln!("{path} with slow readers attached: {took:?}");
    }
    // Two more from 127.0.0.3: one takes the last stream slot, one waits for a slot.
    readers.extend(slow_readers([127, 0, 0, 3], 2));
    std::thread::sleep(Duration::from_millis(1000));
    // Every stream slot is held by a client that does not read: this NAR request waits until the
    // send timeout frees a slot (without one it would wait forever).
    let (body, took) = quick_get(port, &small_nar, Duration::from_secs(send_timeout + 6));
    assert_eq!(body.len(), 7960);
    eprintln!(
        "a NAR request with every stream slot held by slow readers: {took:?} (at {:?})",
        start.elapsed()
    );
    // The last slow reader got its slot when the first ones were disconnected: by two send
    // timeouts (and some) after the start, every slow reader has been disconnected. Only then are
    // they read (reading earlier would make them fast readers): each gets what the kernel
    // buffered, then the end.
    let deadline = start + Duration::from_millis(2 * send_timeout * 1000 + 2500);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    for (i, s) in readers.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(3)),
            "slow reader {i} still connected at {:?}",
            start.elapsed()
        );
    }
    let timed_out = log_lines_with(&server, "within the send timeout");
    assert!(
        timed_out >= 4,
        "{timed_out} send timeouts logged, expected 4"
    );
    // The slots are free again: NAR requests are answered at once, and the descriptors of the
    // slow readers are closed.
    for _ in 0..3 {
        quick_get(port, &small_nar, Duration::from_secs(1));
    }
    let after = fd_count(pid);
    eprintln!("fds after the send timeouts: {after}");
    assert!(after <= baseline + 2, "{after} fds, baseline {baseline}");
    server.stop();
}

/// Idle connections (issue #17: 1,100 of them exhausted a 1,024-fd limit) and slowloris
/// connections (headers trickled a byte at a time; 300 were never closed): the per-IP and total
/// caps bound the server's descriptors while they are attached, a well-behaved client is
/// answered within a second, and the idle and header timeouts close them all.
#[test]
fn idle_and_slowloris_connections_are_bounded_and_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let (max_total, per_ip, idle_timeout, header_timeout) = (48, 12, 2, 4);
    let server = Serving::start(
        &store,
        &[
            "--max-connections",
            &max_total.to_string(),
            "--max-connections-per-ip",
            &per_ip.to_string(),
            "--idle-timeout",
            &idle_timeout.to_string(),
            "--header-timeout",
            &header_timeout.to_string(),
        ],
    );
    let (port, pid) = (server.port, server.child.id());
    quick_get(port, &format!("/nar/{SMALL}.nar"), Duration::from_secs(5));
    let baseline = fd_count(pid);
    let start = Instant::now();

    // Slowloris from 127.0.0.5: 8 connections, a request head that never ends, one byte per
    // connection every 250 ms, for at most 40 rounds. Returns when each was closed.
    let slowloris: Vec<TcpStream> = (0..8)
        .map(|_| connect_from([127, 0, 0, 5], port, None))
        .collect();
    let trickler = std::thread::spawn(move || {
        let head = b"GET /nix-cache-info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        let mut closed_at: Vec<Option<Duration>> = vec![None; slowloris.len()];
        for round in 0..40 {
            for (s, closed) in slowloris.iter().zip(closed_at.iter_mut()) {
                if closed.is_some() {
                    continue;
                }
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 512];
                let gone = match (&*s).read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                let byte = head.get(round).copied().unwrap_or(b'a');
                if gone || (&*s).write_all(&[byte]).is_err() {
                    *closed = Some(start.elapsed());
                }
            }
            if closed_at.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        closed_at
    });

    // 60 idle connections from three addresses: 12 of each are kept, 8 closed on arrival.
    let mut idle: Vec<TcpStream> = (2..=4)
        .flat_map(|last| (0..20).map(move |_| connect_from([127, 0, 0, last], port, None)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let attached = fd_count(pid);
    eprintln!("fds: baseline {baseline}, with 36 idle and 8 slowloris connections {attached}");
    assert!(
        attached >= baseline + 40,
        "the hostile connections were not accepted ({attached} fds, baseline {baseline})"
    );
    assert!(
        attached <= baseline + 3 * per_ip + 8 + 2,
        "per-IP cap: {attached} fds, baseline {baseline}"
    );
    for path in [
        "/nix-cache-info".to_string(),
        format!("/{SMALL}.narinfo"),
        format!("/nar/{SMALL}.nar"),
    ] {
        let (_, took) = quick_get(port, &path, Duration::from_secs(1));
        eprintln!("{path} with idle and slowloris connections attached: {took:?}");
    }
    // 40 more from four other addresses, within the per-IP cap: the total cap keeps all but 4 of
    // them in the listen queue, outside the server's descriptors.
    let mut queued: Vec<TcpStream> = (6..=9)
        .flat_map(|last| (0..10).map(move |_| connect_from([127, 0, 0, last], port, None)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let full = fd_count(pid);
    eprintln!("fds with {} hostile connections open: {full}", 60 + 8 + 40);
    assert!(
        full <= baseline + max_total + 2,
        "total cap: {full} fds, baseline {baseline}"
    );

    // The idle timeout closes the idle connections (then the queued ones get their turn and are
    // closed in turn), the header timeout the slowloris ones.
    let deadline = start + Duration::from_secs(2 * idle_timeout + header_timeout + 4);
    for (i, s) in idle.iter_mut().chain(queued.iter_mut()).enumerate() {
        let wait = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_by_server(s, wait),
            "idle connection {i} still open at {:?}",
            start.elapsed()
        );
    }
    let closed_at = trickler.join().unwrap();
    eprintln!("slowloris connections closed at {closed_at:?}");
    for (i, at) in closed_at.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("slowloris connection {i} never closed"));
        // Still sending, so not idle: closed by the header timeout (the check runs every 250 ms).
        assert!(
            at >= Duration::from_millis(header_timeout * 1000 - 500)
                && at <= Duration::from_secs(header_timeout + 3),
            "slowloris connection {i} closed at {at:?}"
        );
    }
    assert!(log_lines_with(&server, "within the header timeout") >= 8);
    let settle = Instant::now() + Duration::from_secs(5);
    while fd_count(pid) > baseline + 2 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = fd_count(pid);
    eprintln!("fds after the timeouts: {after} (at {:?})", start.elapsed());
    assert!(after <= baseline + 2, "{after} fds, baseline {baseline}");
    quick_get(port, "/nix-cache-info", Duration::from_secs(1));
    server.stop();
}

/// Graceful shutdown through the connection layer: on SIGTERM the listener closes, an idle
/// connection is closed at once, a download in flight completes (byte-exact), and the server then
/// exits 0.
#[test]
fn sigterm_finishes_downloads_in_flight_and_closes_idle_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, large) = store_with_a_large_nar(tmp.path(), 24 << 20);
    let mut server = Serving::start(&store, &[]);
    let port = server.port;
    let record = read_record(&store, &large);
    let mut idle = connect_from([127, 0, 0, 2], port, None);
    // A download that reads its first MiB, then waits for the signal, then reads the rest.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /nar/{large}.nar HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![0u8; 1 << 20];
    s.read_exact(&mut raw).unwrap();
    assert!(
        !closed_by_server(&mut idle, Duration::from_millis(300)),
        "idle connection closed before SIGTERM"
    );
    run(Command::new("kill").args(["-TERM", &server.child.id().to_string()]));
    let signalled = Instant::now();
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(2)),
        "idle connection still open 2 s after SIGTERM"
    );
    let closed_in = signalled.elapsed();
    // No new connections once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &raw[end..];
    assert_eq!(
        body.len() as u64,
        record.manifest.nar_size,
        "download cut short"
    );
    assert_eq!(Hash::digest(body).as_bytes(), &record.manifest.nar_hash);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "refstrip serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status} after SIGTERM");
    eprintln!(
        "idle connection closed {closed_in:?} after SIGTERM; exit {:?} after it",
        signalled.elapsed()
    );
}

/// One request with extra headers over a fresh connection: the response head (lower-cased) and
/// the body bytes that arrived.
fn exchange_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let body = match header_of(&head, "transfer-encoding").as_deref() {
        Some("chunked") => refstrip_tests::operator::dechunk(&raw[end..]),
        _ => raw[end..].to_vec(),
    };
    (head, body)
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn narinfo_of(port: u16, hash_part: &str, headers: &[(&str, &str)]) -> (String, NarInfo) {
    let (head, body) = exchange_with(port, "GET", &format!("/{hash_part}.narinfo"), headers);
    assert_eq!(status_of(&head), 200, "{head}");
    (
        head,
        NarInfo::parse_bytes(&StoreDir::default(), &body).unwrap(),
    )
}

/// Issue #16: `.nar` answers single ranges with exactly those bytes (206), refuses ranges outside
/// the NAR (416), answers several ranges, or a range with If-Range, with the whole NAR; its
/// narinfo has FileHash = NarHash and FileSize = NarSize, which the bytes sent match.
#[test]
fn ranges_of_a_nar_are_exactly_those_bytes_and_file_hash_is_the_nar_hash() {
    let tmp = tempfile::tempdir().unwrap();
    // A NAR of several body chunks (ranges across chunk boundaries) next to gen1's.
    let (store, large) = store_with_a_large_nar(tmp.path(), 1 << 20);
    let server = Serving::start(&store, &[]);
    let port = server.port;
    for hash_part in [SMALL, large.as_str()] {
        let path = format!("/nar/{hash_part}.nar");
        let (head, whole) = exchange_with(port, "GET", &path, &[]);
        assert_eq!(status_of(&head), 200);
        assert_eq!(header_of(&head, "accept-ranges").as_deref(), Some("bytes"));
        let n = whole.len() as u64;
        let (_, info) = narinfo_of(port, hash_part, &[]);
        assert_eq!(info.nar_size, n);
        assert_eq!(Hash::digest(&whole), info.nar_hash);
        assert_eq!(info.file_size, Some(n), "FileSize");
        assert_eq!(info.file_hash, Some(info.nar_hash), "FileHash");
        let (head_only, _) = exchange_with(port, "HEAD", &path, &[]);
        assert_eq!(
            header_of(&head_only, "accept-ranges").as_deref(),
            Some("bytes")
        );

        let chunk = refstrip_serve_chunk();
        let mut ranges = vec![
            (format!("bytes=0-{}", 99), 0, 99),
            (format!("bytes={}-", n - 10), n - 10, n - 1),
            ("bytes=-50".to_string(), n - 50, n - 1),
            (format!("bytes={}-{}", n - 1, n - 1), n - 1, n - 1),
            (format!("bytes=100-{}", n + 1000), 100, n - 1),
            ("bytes=0-".to_string(), 0, n - 1),
        ];
        if n > 3 * chunk {
            ranges.push((
                format!("bytes={}-{}", chunk - 5, 2 * chunk + 5),
                chunk - 5,
                2 * chunk + 5,
            ));
            ranges.push((format!("bytes={}-", 3 * chunk), 3 * chunk, n - 1));
        }
        for (range, start, end) in ranges {
            let (head, body) = exchange_with(port, "GET", &path, &[("Range", &range)]);
            assert_eq!(status_of(&head), 206, "{hash_part} {range}: {head}");
            assert_eq!(
                header_of(&head, "content-range"),
                Some(format!("bytes {start}-{end}/{n}")),
                "{range}"
            );
            assert_eq!(
                header_of(&head, "content-length"),
                Some((end - start + 1).to_string())
            );
            assert!(
                body == whole[start as usize..=end as usize],
                "{hash_part} {range}: {} bytes, not those asked for",
                body.len()
            );
        }
        for range in [
            format!("bytes={n}-"),
            format!("bytes={}-{}", n + 5, n + 9),
            "bytes=-0".to_string(),
        ] {
            let (head, _) = exchange_with(port, "GET", &path, &[("Range", &range)]);
            assert_eq!(status_of(&head), 416, "{range}");
            assert_eq!(
                header_of(&head, "content-range"),
                Some(format!("bytes */{n}"))
            );
        }
        // Answered whole: several ranges, a range with If-Range, a range of the zstd file.
        for headers in [
            vec![("Range", "bytes=0-1,5-6")],
            vec![("Range", "bytes=0-1"), ("If-Range", "\"x\"")],
        ] {
            let (head, body) = exchange_with(port, "GET", &path, &headers);
            assert_eq!(status_of(&head), 200, "{headers:?}");
            assert!(body == whole, "{headers:?}");
        }
        let (head, body) = exchange_with(
            port,
            "GET",
            &format!("{path}.zst"),
            &[("Range", "bytes=0-1")],
        );
        assert_eq!(status_of(&head), 200);
        assert!(zstd::decode_all(&body[..]).unwrap() == whole);
    }
    server.stop();
}

/// Issue #16: with `--compression auto` the narinfo advertises zstd to clients that accept it
/// and the plain NAR (with FileHash and FileSize) to the others, saying so in `Vary`; each answer
/// names a file that is what its Compression says. Stock Nix 2.8 sends no Accept-Encoding and so
/// downloads `.nar`.
#[test]
fn auto_compression_follows_accept_encoding_and_stock_nix_gets_the_nar() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let server = Serving::start(&store, &["--compression", "auto"]);
    let port = server.port;
    let (head, plain) = narinfo_of(port, SMALL, &[]);
    assert_eq!(header_of(&head, "vary").as_deref(), Some("accept-encoding"));
    assert_eq!(plain.url, format!("nar/{SMALL}.nar"));
    assert_eq!(plain.compression.as_deref(), Some("none"));
    assert_eq!(plain.file_hash, Some(plain.nar_hash));
    for accept in ["zstd", "gzip, deflate, br, zstd", "*"] {
        let (head, zstd_info) = narinfo_of(port, SMALL, &[("Accept-Encoding", accept)]);
        assert_eq!(header_of(&head, "vary").as_deref(), Some("accept-encoding"));
        assert_eq!(zstd_info.url, format!("nar/{SMALL}.nar.zst"), "{accept}");
        assert_eq!(zstd_info.compression.as_deref(), Some("zstd"));
        assert_eq!((zstd_info.file_hash, zstd_info.file_size), (None, None));
        let (_, body) = exchange_with(port, "GET", &format!("/{}", zstd_info.url), &[]);
        let nar = zstd::decode_all(&body[..]).unwrap();
        assert_eq!(Hash::digest(&nar), zstd_info.nar_hash);
    }
    for accept in ["gzip, deflate", "zstd;q=0", "identity"] {
        let (_, info) = narinfo_of(port, SMALL, &[("Accept-Encoding", accept)]);
        assert_eq!(info.url, format!("nar/{SMALL}.nar"), "{accept}");
    }
    // Without auto, the narinfo does not vary.
    let fixed = Serving::start(&store, &["--compression", "zstd"]);
    let (head, info) = narinfo_of(fixed.port, SMALL, &[]);
    assert_eq!(header_of(&head, "vary"), None);
    assert_eq!(info.compression.as_deref(), Some("zstd"));
    fixed.stop();

    let root = tmp.path().join("client");
    let mut copy = nix(&["copy", "--from", &server.url(), "--to"]);
    copy.arg(&root).arg(root_of("gen1"));
    substituter_options(&mut copy, &server.url());
    let out = copy.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(&root);
    let log = server.log_text();
    assert!(log_lines_with(&server, ".nar\" 200") >= 10, "{log}");
    assert_eq!(log_lines_with(&server, ".nar.zst\" 200"), 3, "{log}");
    server.stop();
}

/// Issue #16: the request log is one line per request that a person reads as it is (client,
/// method and path, status, bytes, duration), or JSON with a field each, or off.
#[test]
fn the_request_log_is_a_readable_line_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let text = Serving::start(&store, &[]);
    let (_, body) = exchange_with(text.port, "GET", &format!("/nar/{SMALL}.nar"), &[]);
    exchange_with(text.port, "GET", "/nix-cache-info", &[]);
    exchange_with(
        text.port,
        "GET",
        &format!("/nar/{SMALL}.nar"),
        &[("Range", "bytes=0-9")],
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = text.log_text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
            .to_string()
    };
    let nar = line(&format!("127.0.0.1 \"GET /nar/{SMALL}.nar\" 200 "));
    let rest = nar.split("\" 200 ").nth(1).unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    assert_eq!(fields[0], body.len().to_string(), "{nar}");
    assert_eq!(fields[1], "bytes");
    assert!(
        fields[2].parse::<f64>().is_ok() && fields[3] == "ms" && fields.len() == 4,
        "{nar}"
    );
    line("127.0.0.1 \"GET /nix-cache-info\" 200 ");
    line(&format!("127.0.0.1 \"GET /nar/{SMALL}.nar\" 206 10 bytes "));
    text.stop();

    let json = Serving::start(&store, &["--log-format", "json"]);
    exchange_with(json.port, "GET", "/nix-cache-info", &[]);
    std::thread::sleep(Duration::from_millis(300));
    let log = json.log_text();
    let request = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .find(|v| v["fields"]["path"] == "/nix-cache-info")
        .unwrap_or_else(|| panic!("{log}"));
    let f = &request["fields"];
    assert_eq!(f["client"], "127.0.0.1");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["status"], 200);
    assert!(f["bytes"].as_u64().unwrap() > 0);
    json.stop();

    let quiet = Serving::start(&store, &["--no-request-log"]);
    exchange_with(quiet.port, "GET", "/nix-cache-info", &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log_lines_with(&quiet, "/nix-cache-info"), 0);
    quiet.stop();
}

/// A proxy in front of a server that forwards one request per connection (asking the server to
/// close after it), and cuts the first answer to a request for `cut` without a Range after the
/// head and `after` body bytes, as a broken network would. Returns its port and the Range headers
/// of the requests for `cut` it saw.
fn cutting_proxy(
    upstream: u16,
    cut: String,
    after: usize,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (seen_by_proxy, done) = (seen.clone(), Arc::new(AtomicBool::new(false)));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let (seen, done, cut) = (seen_by_proxy.clone(), done.clone(), cut.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let range = text.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: ")
                        .map(String::from)
                });
                let mut request: String = text
                    .lines()
                    .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                request.push_str("Connection: close\r\n\r\n");
                let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                server.write_all(request.as_bytes()).unwrap();
                let wanted = text.lines().next().unwrap_or("").contains(&cut);
                if wanted {
                    seen.lock().unwrap().push(range.clone());
                }
                if wanted && range.is_none() && !done.swap(true, Ordering::SeqCst) {
                    // Forward the head and `after` bytes of the body, then break the connection.
                    let mut got = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = server.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            if got.len() >= end + 4 + after {
                                let _ = client.write_all(&got[..end + 4 + after]);
                                break;
                            }
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    return;
                }
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
    (port, seen)
}

/// Issue #16: stock Nix resumes a NAR download that broke with a Range request (its curl does
/// when the answer said `Accept-Ranges: bytes` and had no Content-Encoding), and the 206 carries
/// exactly the rest: the path is complete and verifies.
#[test]
fn stock_nix_resumes_a_broken_download_with_a_range() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, large) = store_with_a_large_nar(tmp.path(), 1 << 20);
    let server = Serving::start(&store, &[]);
    let half = 600_000;
    let (port, seen) = cutting_proxy(server.port, format!("/nar/{large}.nar"), half);
    let url = format!("http://127.0.0.1:{port}");
    let root = tmp.path().join("client");
    let out = nix(&["copy", "--no-check-sigs", "--from", &url, "--to"])
        .arg(&root)
        .arg(format!("/nix/store/{large}-large"))
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    verify_contents(&root);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "requests for the NAR: {seen:?}\n{stderr}");
    let resumed_from: u64 = seen[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("the retry was not a range from an offset: {seen:?}"));
    assert!(resumed_from > 0 && resumed_from <= half as u64, "{seen:?}");
    assert_eq!(
        log_lines_with(&server, &format!("/nar/{large}.nar\" 206 ")),
        1
    );
    server.stop();
}
