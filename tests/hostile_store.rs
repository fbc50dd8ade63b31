//! A hostile store (issue: hardening). Each attack is built with the project's own encoders in a
//! copy of a good store, then every client reads it: substitute (from a directory and over HTTP,
//! signatures checked and not), serve, mount. Whatever the attack: nothing outside ROOT changes (a
//! sentinel tree beside it is compared byte for byte), nothing is registered, Nix's own verify of
//! ROOT stays clean, memory stays bounded, nothing hangs or dies, and the next clean run of the
//! same path succeeds.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use refstrip_read::PathRecord;
use refstrip_strip::varint::{put, Cursor};
use refstrip_tests::operator::{verify_contents, Serving};
use refstrip_tests::{
    corpus_dir, corpus_key, edit_objects, gen1_store, read_record, refstrip_bin, require_nix, run,
    snapshot, static_http_server, write_record_v1,
};

/// Peak RSS any client may reach on these attacks (a restore of the small corpus needs ~30 MB).
const RSS_LIMIT_KB: u64 = 256 * 1024;

fn gen1() -> PathBuf {
    corpus_dir().join("small").join("gen1")
}

/// The gen1 store path whose name is `name`.
fn path_named(name: &str) -> String {
    fs::read_to_string(gen1().join("paths"))
        .unwrap()
        .lines()
        .find(|p| p[44..] == *name)
        .unwrap_or_else(|| panic!("no {name} in gen1"))
        .to_string()
}

fn hash_of(path: &str) -> &str {
    &path[11..43]
}

/// A copy of the good store in `dir`, with `attack` applied to it.
fn hostile_store(dir: &Path, attack: impl FnOnce(&Path)) -> PathBuf {
    let store = dir.join("store");
    run(Command::new("cp").arg("-a").arg(gen1_store()).arg(&store));
    attack(&store);
    store
}

fn record_file(store: &Path, path: &str) -> PathBuf {
    store.join("paths").join(hash_of(path))
}

/// Rewrite the record of `path` through its decoded form (for attacks the decoders accept).
fn edit_record(store: &Path, path: &str, edit: impl FnOnce(&mut PathRecord)) {
    let mut record = read_record(store, hash_of(path));
    edit(&mut record);
    write_record_v1(store, &record);
}

/// Rewrite the decompressed body of `path`'s manifest byte for byte (for attacks the decoders
/// must refuse, which the typed encoders would not even build).
fn edit_manifest_body(store: &Path, path: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let (_, _, frame, _) = split_record(&record_v1(store, path));
    let mut body = zstd::decode_all(&frame[..]).unwrap();
    edit(&mut body);
    replace_manifest_frame(store, path, &zstd::encode_all(&body[..], 3).unwrap());
}

/// The record of `path` in format 1 (one file), whose bytes these tests take apart.
fn record_v1(store: &Path, path: &str) -> Vec<u8> {
    read_record(store, hash_of(path)).encode_v1()
}

/// A record's bytes as (record magic, manifest head: magic + version, manifest's zstd frame, the
/// rest: pack ids and object table).
fn split_record(bytes: &[u8]) -> (&[u8], Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut cur = Cursor { bytes: &bytes[8..] };
    let manifest = cur.bytes().unwrap();
    let rest = cur.bytes.to_vec();
    let mut head = Cursor {
        bytes: &manifest[8..],
    };
    let version = head.varint().unwrap();
    let mut manifest_head = manifest[..8].to_vec();
    put(&mut manifest_head, version);
    (&bytes[..8], manifest_head, head.bytes.to_vec(), rest)
}

/// A zstd frame of `n` MiB of zeros, made without holding them in memory.
fn zeros_frame(n: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut frame, 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..n {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap();
    frame
}

/// Replace the compressed body of `path`'s manifest with `frame`.
fn replace_manifest_frame(store: &Path, path: &str, frame: &[u8]) {
    let file = record_file(store, path);
    let bytes = record_v1(store, path);
    let (magic, mut manifest, _, rest) = split_record(&bytes);
    manifest.extend(frame);
    let mut out = magic.to_vec();
    put(&mut out, manifest.len() as u64);
    out.extend(manifest);
    out.extend(rest);
    fs::write(&file, out).unwrap();
}

fn replace_once(body: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = body
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in the manifest");
    body[at..at + to.len()].copy_from_slice(to);
}

/// A sentinel tree beside ROOT that a traversal would reach (`ROOT/../victim` and friends).
fn plant_sentinel(dir: &Path) -> PathBuf {
    let victim = dir.join("victim");
    fs::create_dir_all(victim.join("lib")).unwrap();
    fs::write(victim.join("lib/keep"), b"precious").unwrap();
    victim
}

/// Run refstrip under GNU time: its output and peak RSS in KiB. Fails the test if it runs > 60 s.
fn refstrip_measured(args: &[&str]) -> (Output, u64) {
    let rss = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss.path())
        .arg(refstrip_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("refstrip {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let kb = fs::read_to_string(rss.path())
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (out, kb)
}

fn valid_paths(root: &Path) -> Vec<String> {
    if !root.join("nix/var/nix/db/db.sqlite").exists() {
        return Vec::new();
    }
    let out = run(Command::new("nix")
        .arg("path-info")
        .arg("--store")
        .arg(root)
        .arg("--all"));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn nix_verify_clean(root: &Path) {
    if !root.join("nix/var/nix/db/db.sqlite").exists() {
        return;
    }
    verify_contents(root);
}

/// Substitute `path` from `from` into a fresh ROOT beside a sentinel, with and without signature
/// checks: refused with `why`, within the memory bound, leaving nothing behind; then the same
/// path from the good store into the same ROOT succeeds.
fn substitute_refuses(from: &str, path: &str, why: &str, with_sigs: bool) {
    let dir = tempfile::tempdir().unwrap();
    let victim = plant_sentinel(dir.path());
    let root = dir.path().join("root");
    let before = snapshot(&victim);
    let key = corpus_key();
    let mut modes = vec![vec!["--no-check-sigs"]];
    if with_sigs {
        modes.push(vec!["--trusted-public-keys", &key]);
    }
    for mode in modes {
        let mut args = vec!["substitute", "--no-cache", "--from", from, "--store"];
        args.push(root.to_str().unwrap());
        args.extend(&mode);
        args.push(path);
        let (out, rss) = refstrip_measured(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{mode:?}: substitute accepted the attack"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{mode:?}: a clean error exit, not a crash: {stderr}"
        );
        assert!(
            stderr.contains(why),
            "{mode:?}: expected {why:?} in: {stderr}"
        );
        assert!(rss < RSS_LIMIT_KB, "{mode:?}: peak RSS {rss} KiB");
        assert_eq!(
            snapshot(&victim),
            before,
            "{mode:?}: something outside ROOT changed"
        );
        assert_eq!(
            valid_paths(&root),
            Vec::<String>::new(),
            "{mode:?}: registered"
        );
        nix_verify_clean(&root);
    }
    // The attack poisoned nothing: the real path goes in cleanly afterwards.
    let good = gen1_store().to_str().unwrap().to_string();
    let (out, _) = refstrip_measured(&[
        "substitute",
        "--no-cache",
        "--from",
        &good,
        "--store",
        root.to_str().unwrap(),
        "--trusted-public-keys",
        &key,
        path,
    ]);
    assert!(
        out.status.success(),
        "clean rerun: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(valid_paths(&root).contains(&path.to_string()));
    nix_verify_clean(&root);
}

/// serve on the hostile store: the attacked path's narinfo or NAR is never a complete 200, the
/// server survives, and a good path is still served whole.
fn serve_survives(store: &Path, attacked: &str, good: &str) {
    let mut serving = Serving::start(store, &["--store-dir", "/nix/store"]);
    let port = serving.port;
    let get = |path: &str| -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |p| p + 4);
        let status = String::from_utf8_lossy(&raw[..end.min(12)])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, raw[end..].to_vec())
    };
    let h = hash_of(attacked);
    let (info, _) = get(&format!("/{h}.narinfo"));
    let (nar, body) = get(&format!("/nar/{h}.nar"));
    let expected: u64 = fs::read_to_string(gen1().join(format!("{h}.narinfo")))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NarSize: ")?.parse().ok())
        .unwrap();
    let complete_and_right = nar == 200 && body.len() as u64 == expected;
    assert!(
        info != 200 || !complete_and_right || attacked_content_is_right(attacked, &body),
        "the attacked path was served complete and wrong (narinfo {info}, nar {nar})"
    );
    assert!(serving.is_running(), "serve died");
    // Stock Nix as the client: the attacked path is refused, a good one still copies.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let nix_copy = |path: &str| {
        Command::new("nix")
            .args([
                "copy",
                "--no-check-sigs",
                // Nix caches narinfos per cache URL; other tests' servers had this port before.
                "--option",
                "narinfo-cache-negative-ttl",
                "0",
                "--option",
                "narinfo-cache-positive-ttl",
                "0",
                "--from",
                &format!("http://127.0.0.1:{port}"),
                "--to",
            ])
            .arg(&root)
            .arg(path)
            .output()
            .unwrap()
    };
    let out = nix_copy(attacked);
    assert!(!out.status.success(), "nix copy accepted the attacked path");
    assert!(!valid_paths(&root).contains(&attacked.to_string()));
    let out = nix_copy(good);
    assert!(
        out.status.success(),
        "nix copy of a good path: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nix_verify_clean(&root);
    let g = hash_of(good);
    assert_eq!(
        get(&format!("/{g}.narinfo")).0,
        200,
        "a good path after the attack"
    );
    assert_eq!(get(&format!("/nar/{g}.nar")).0, 200);
    drop(serving);
}

/// Whether `nar` is the path's real NAR (its SHA-256 is the NarHash the corpus signed).
fn attacked_content_is_right(path: &str, nar: &[u8]) -> bool {
    use sha2::Digest;
    let info = fs::read_to_string(gen1().join(format!("{}.narinfo", hash_of(path)))).unwrap();
    let want = info
        .lines()
        .find_map(|l| l.strip_prefix("NarHash: sha256:"))
        .unwrap()
        .to_string();
    let got = refstrip_nix::base32::encode(&sha2::Sha256::digest(nar));
    got == want
}

/// mount refuses a store whose record for `path` its decoders refuse, before mounting anything.
fn mount_refuses(store: &Path, path: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (out, rss) = refstrip_measured(&[
        "mount",
        "--no-cache",
        "--from",
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
        path,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "mount: {stderr}");
    assert!(stderr.contains(why), "mount: expected {why:?} in {stderr}");
    assert!(rss < RSS_LIMIT_KB);
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0, "nothing mounted");
}

/// An attack the decoders refuse: every client, every route.
fn refused_everywhere(attacked: &str, why: &str, attack: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path(), attack);
    substitute_refuses(store.to_str().unwrap(), attacked, why, true);
    let (url, _) = static_http_server(store.clone());
    substitute_refuses(&url, attacked, why, false);
    serve_survives(&store, attacked, &path_named("dash-0.5.12"));
    mount_refuses(&store, attacked, why);
}

#[test]
fn a_store_path_name_that_climbs_out_of_root_is_refused() {
    require_nix!();
    // `<hash>-expat-2.5.0` becomes `<hash>-../../vict0`: same length, so only the name changed.
    let expat = path_named("expat-2.5.0");
    refused_everywhere(&expat, "illegal", |store| {
        edit_manifest_body(store, &expat, |body| {
            replace_once(body, b"-expat-2.5.0", b"-../../vict0")
        });
    });
}

#[test]
fn a_block_of_a_terabyte_is_refused_before_anything_is_allocated() {
    require_nix!();
    let dash = path_named("dash-0.5.12");
    let zlib = path_named("zlib-1.2.13");
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path(), |store| {
        edit_record(store, &zlib, |r| {
            edit_objects(r, |objects| {
                for (_, loc) in objects.values_mut() {
                    loc.block_len = 1 << 40;
                    loc.block_raw_len = 1 << 40;
                }
            })
        })
    });
    substitute_refuses(
        store.to_str().unwrap(),
        &zlib,
        "block larger than the limit",
        true,
    );
    let (url, _) = static_http_server(store.clone());
    substitute_refuses(&url, &zlib, "block larger than the limit", false);
    serve_survives(&store, &zlib, &dash);
    mount_refuses(&store, &zlib, "block larger than the limit");
}

#[test]
fn an_unsigned_deriver_outside_the_store_is_refused() {
    require_nix!();
    let lua = path_named("lua-5.4.4");
    refused_everywhere(&lua, "Deriver", |store| {
        edit_manifest_body(store, &lua, |body| {
            // The Deriver line the manifest keeps, `<hash>-lua-5.4.4.drv`, made to climb out.
            let at = body
                .windows(8)
                .position(|w| w == b"Deriver\x00" || w.starts_with(b"Deriver"))
                .unwrap();
            let value = at + 8;
            let old = &body[value..value + 32 + 14];
            assert!(
                old.ends_with(b"lua-5.4.4.drv"),
                "{}",
                String::from_utf8_lossy(old)
            );
            body[value..value + 32 + 14]
                .copy_from_slice(b"../../../../../../../../../../etc/passwd.drv\0\0");
        });
    });
}

#[test]
fn a_false_content_address_is_refused_even_when_signed() {
    require_nix!();
    // Signatures do not cover CA; a path claiming to be the fixed output of other content is
    // refused as Nix's own import refuses it ("ca hash mismatch").
    let zlib = path_named("zlib-1.2.13");
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path(), |store| {
        edit_record(store, &zlib, |r| {
            r.manifest.info.push((
                "CA".into(),
                "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
            ));
        })
    });
    substitute_refuses(store.to_str().unwrap(), &zlib, "CA fixed:r:sha256", true);
}

#[test]
fn a_zstd_bomb_costs_what_its_block_declares() {
    require_nix!();
    // One object's block is replaced by a frame that inflates to 1 GiB while its record declares
    // a real block's length.
    let dash = path_named("dash-0.5.12");
    let bomb_pack = "f".repeat(64);
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path(), |store| {
        let frame = zeros_frame(1024);
        let mut pack = b"rspack01".to_vec();
        pack.extend(&frame);
        fs::write(store.join("packs").join(format!("{bomb_pack}.pack")), &pack).unwrap();
        edit_record(store, &dash, |r| {
            edit_objects(r, |objects| {
                for (pack, loc) in objects.values_mut() {
                    *pack = bomb_pack.clone();
                    loc.block_offset = 8;
                    loc.block_len = frame.len() as u64;
                    // A full block's length: dash's code may sit in a small block of its class,
                    // too small for the bomb's frame to pass `Location::check` at all.
                    loc.block_raw_len = loc.block_raw_len.max(4 << 20);
                }
            })
        })
    });
    substitute_refuses(store.to_str().unwrap(), &dash, "corrupt", true);
    serve_survives(&store, &dash, &path_named("zlib-1.2.13"));
}

#[test]
fn the_same_path_twice_is_substituted_once() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let zlib = path_named("zlib-1.2.13");
    let (out, _) = refstrip_measured(&[
        "substitute",
        "--no-cache",
        "--no-check-sigs",
        "--from",
        gen1_store().to_str().unwrap(),
        "--store",
        root.to_str().unwrap(),
        &zlib,
        &zlib,
        hash_of(&zlib),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(valid_paths(&root), vec![zlib]);
}

#[test]
fn a_silent_server_and_a_fifo_cost_an_error_not_a_hang() {
    require_nix!();
    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/store?stalled-download-timeout=2&connect-timeout=2",
        silent.local_addr().unwrap()
    );
    let _held = std::thread::spawn(move || {
        let conns: Vec<_> = silent.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(conns);
    });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let zlib = path_named("zlib-1.2.13");
    let start = Instant::now();
    let (out, _) = refstrip_measured(&[
        "substitute",
        "--no-cache",
        "--no-check-sigs",
        "--from",
        &url,
        "--store",
        root.to_str().unwrap(),
        &zlib,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timeout"), "{stderr}");
    assert_eq!(
        stderr.matches("timeout").count(),
        1,
        "the cause is said once: {stderr}"
    );

    // A pack that is a FIFO (nobody will ever write to it).
    let store = hostile_store(dir.path(), |store| {
        let record = read_record(store, hash_of(&zlib));
        for (pack, _) in record.objects.map().unwrap().values() {
            let file = store.join("packs").join(format!("{pack}.pack"));
            let _ = fs::remove_file(&file);
            run(Command::new("mkfifo").arg(&file));
        }
    });
    let start = Instant::now();
    substitute_refuses(store.to_str().unwrap(), &zlib, "not a regular file", false);
    assert!(start.elapsed() < Duration::from_secs(60));
}

/// Peak RSS of a process so far, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

#[test]
fn a_manifest_that_inflates_to_a_gigabyte_is_refused_within_bounded_memory() {
    require_nix!();
    let lua = path_named("lua-5.4.4");
    let dir = tempfile::tempdir().unwrap();
    let store = hostile_store(dir.path(), |store| {
        replace_manifest_frame(store, &lua, &zeros_frame(1024))
    });
    substitute_refuses(store.to_str().unwrap(), &lua, "exceeds", false);
    mount_refuses(&store, &lua, "exceeds");

    // serve: three clients ask for the bomb at once; decoding is bounded and so is memory.
    let mut serving = Serving::start(&store, &["--store-dir", "/nix/store"]);
    let port = serving.port;
    let h = hash_of(&lua).to_string();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                write!(
                    s,
                    "GET /{h}.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut raw = Vec::new();
                let _ = s.read_to_end(&mut raw);
                String::from_utf8_lossy(&raw)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string()
            })
        })
        .collect();
    let statuses: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let rss = peak_rss_kb(serving.pid());
    assert!(serving.is_running(), "serve died");
    drop(serving);
    assert_eq!(statuses, vec!["500"; 3]);
    assert!(rss < 512 * 1024, "serve peaked at {rss} KiB");
}
