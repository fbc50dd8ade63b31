//! The read side shared by every client (issue: one read side): opening a store never writes to
//! it, the wrong kind of location gets its own clear error, every client refuses a record filed
//! under another path's hash, and gc refuses to keep what the store does not have.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use refstrip_tests::operator::Serving;
use refstrip_tests::{corpus_dir, gen1_store, refstrip_bin, require_nix, run, snapshot};

fn gen1() -> PathBuf {
    corpus_dir().join("small").join("gen1")
}

/// Run a refstrip command that must fail within 30 s (serve would otherwise serve for ever).
fn refstrip_fails(args: &[&str], cwd: &Path) -> String {
    let mut child = Command::new(refstrip_bin())
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("refstrip {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "refstrip {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each reading command, pointed at `location`.
fn reading_commands(location: &str, root: &str, mnt: &str) -> Vec<Vec<String>> {
    let hash = "1avrvw4574jhm9g7j8y0y9a6qzakr6nj";
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        s(&[
            "substitute",
            "--no-check-sigs",
            "--no-cache",
            "--from",
            location,
            "--store",
            root,
            hash,
        ]),
        s(&["serve", "--from", location, "--listen", "127.0.0.1:0"]),
        s(&["mount", "--no-cache", "--from", location, mnt, hash]),
        s(&["stats", location]),
        s(&["gc", location, "--keep", hash]),
    ]
}

#[test]
fn the_wrong_kind_of_location_gets_its_own_error_and_is_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let cache = tmp.path().join("binary-cache");
    run(Command::new("cp").arg("-a").arg(gen1()).arg(&cache));
    let missing = tmp.path().join("missing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let root = tmp.path().join("root");
    let cases: Vec<(String, &str)> = vec![
        (missing.display().to_string(), "no normalized store at"),
        (
            empty.display().to_string(),
            "is an empty directory, not a normalized store",
        ),
        (cache.display().to_string(), "is a Nix binary cache"),
        (format!("file://{}", cache.display()), "refstrip ingest"),
        (format!("file:{}", empty.display()), "three slashes"),
        ("ftp://example.invalid/x".to_string(), "unsupported scheme"),
    ];
    for (location, why) in &cases {
        for args in reading_commands(location, root.to_str().unwrap(), mnt.to_str().unwrap()) {
            let before = snapshot(tmp.path());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let stderr = refstrip_fails(&args, tmp.path());
            assert!(
                stderr.contains(why),
                "{args:?}: expected {why:?} in {stderr}"
            );
            assert_eq!(
                stderr.matches(why).count(),
                1,
                "{args:?}: the cause is said once: {stderr}"
            );
            assert_eq!(
                snapshot(tmp.path()),
                before,
                "{args:?} changed the filesystem"
            );
        }
    }
}

#[test]
fn opening_a_store_to_read_it_writes_nothing_there() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new("cp").arg("-a").arg(gen1_store()).arg(&store));
    // A store read by a user who cannot write it must work, and must stay as it was.
    let before = snapshot(&store);
    let root = tmp.path().join("root");
    let roots = fs::read_to_string(gen1().join("roots")).unwrap();
    run(Command::new(refstrip_bin())
        .args(["substitute", "--no-check-sigs", "--no-cache", "--from"])
        .arg(&store)
        .arg("--store")
        .arg(&root)
        .arg(roots.trim()));
    assert_eq!(
        snapshot(&store),
        before,
        "substitute wrote into the store it read"
    );
}

/// Put path `other`'s record where path `victim`'s belongs, in a copy of the gen1 store.
fn store_with_renamed_record(tmp: &Path) -> (PathBuf, String) {
    let store = tmp.join("store");
    run(Command::new("cp").arg("-a").arg(gen1_store()).arg(&store));
    let paths = fs::read_to_string(gen1().join("paths")).unwrap();
    let mut hashes = paths
        .lines()
        .map(|p| p.rsplit('/').next().unwrap()[..32].to_string());
    let victim = hashes.next().unwrap();
    let other = hashes.next().unwrap();
    fs::copy(
        store.join("paths").join(&other),
        store.join("paths").join(&victim),
    )
    .unwrap();
    (store, victim)
}

#[test]
fn substitute_refuses_a_record_filed_under_another_hash() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, victim) = store_with_renamed_record(tmp.path());
    let root = tmp.path().join("root");
    let stderr = refstrip_fails(
        &[
            "substitute",
            "--no-check-sigs",
            "--no-cache",
            "--from",
            store.to_str().unwrap(),
            "--store",
            root.to_str().unwrap(),
            &victim,
        ],
        tmp.path(),
    );
    assert!(stderr.contains("describes"), "{stderr}");
    assert!(
        !root.join("nix/store").exists()
            || fs::read_dir(root.join("nix/store"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn mount_refuses_a_record_filed_under_another_hash() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, victim) = store_with_renamed_record(tmp.path());
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let stderr = refstrip_fails(
        &[
            "mount",
            "--no-cache",
            "--from",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            &victim,
        ],
        tmp.path(),
    );
    assert!(stderr.contains("describes"), "{stderr}");
    // Every path, as the default mount shows them, is refused the same way.
    let stderr = refstrip_fails(
        &[
            "mount",
            "--no-cache",
            "--from",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(stderr.contains("describes"), "{stderr}");
}

fn http_status(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[test]
fn serve_refuses_a_record_filed_under_another_hash() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, victim) = store_with_renamed_record(tmp.path());
    let serving = Serving::start(&store, &["--store-dir", "/nix/store"]);
    let port = serving.port;
    let other = fs::read_to_string(gen1().join("paths")).unwrap();
    let other = other.lines().nth(2).unwrap().rsplit('/').next().unwrap()[..32].to_string();
    let statuses = (
        http_status(port, &format!("/{victim}.narinfo")),
        http_status(port, &format!("/nar/{victim}.nar")),
        http_status(port, &format!("/{other}.narinfo")),
    );
    drop(serving);
    assert_eq!(
        statuses,
        (500, 500, 200),
        "refused, refused, and a good path still served"
    );
}

fn gc_out(store: &Path, args: &[&str]) -> Output {
    Command::new(refstrip_bin())
        .arg("gc")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn gc_refuses_a_path_to_keep_that_the_store_lacks_and_dry_run_removes_nothing() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new("cp").arg("-a").arg(gen1_store()).arg(&store));
    let typo = "/nix/store/00000000000000000000000000000000-zlib-1.2.13";
    let keep = fs::read_to_string(gen1().join("roots")).unwrap();
    let keep = keep.trim();
    let packs_and_paths = |s: &Path| {
        let mut v: Vec<_> = ["packs", "paths"]
            .iter()
            .flat_map(|d| fs::read_dir(s.join(d)).unwrap())
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let before = packs_and_paths(&store);

    let out = gc_out(&store, &["--keep", typo]);
    assert!(!out.status.success(), "gc with an unknown --keep succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not in the store") && stderr.contains("00000000000000000000000000000000"),
        "{stderr}"
    );
    assert_eq!(packs_and_paths(&store), before, "gc removed something");
    let out = gc_out(&store, &["--keep", keep, typo]);
    assert!(
        !out.status.success(),
        "one unknown path among known ones still stops gc"
    );
    assert_eq!(packs_and_paths(&store), before);

    // A dry run lists what would go and removes nothing; the real run removes exactly that.
    let lib = fs::read_to_string(gen1().join("paths")).unwrap();
    let lib = lib
        .lines()
        .find(|p| p.contains("zlib"))
        .unwrap()
        .to_string();
    let out = gc_out(&store, &["--dry-run", "--keep", &lib]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        packs_and_paths(&store),
        before,
        "--dry-run removed something"
    );
    let would: Vec<&str> = dry
        .lines()
        .filter_map(|l| l.strip_prefix("would remove /"))
        .collect();
    assert!(!would.is_empty(), "{dry}");
    // A killed ingest's staging pack: only a real gc (no ingest running) removes it.
    let leftover = store.join("tmp/pack-killed");
    fs::write(&leftover, b"half a pack").unwrap();
    let out = gc_out(&store, &["--force", "--keep", &lib, typo]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!leftover.exists(), "gc left a killed ingest's staging pack");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the store"));
    let removed = before.len() - packs_and_paths(&store).len();
    let summary = dry.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("would remove {} paths and ", would.len())),
        "{summary}"
    );
    assert!(
        removed >= would.len(),
        "removed {removed} files, dry run said {} paths",
        would.len()
    );
    assert!(fs::read_dir(store.join("paths")).unwrap().count() >= 1);
}
