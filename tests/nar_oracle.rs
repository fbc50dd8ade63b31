//! The NAR codec against real Nix: `refstrip nar dump` must equal `nix-store --dump` byte for byte,
//! `refstrip nar unpack` must give a tree Nix dumps to the same bytes, and `nix hash path` must agree
//! with our SHA-256 of the NAR.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use refstrip_tests::{refstrip_bin, require_nix, run, run_with_stdin};
use sha2::{Digest, Sha256};

fn write_file(path: &Path, contents: &[u8], executable: bool) {
    fs::write(path, contents).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every shape the issue names: empty file and directory, executable, relative/absolute/dangling
/// symlinks, deep nesting, many entries, non-ASCII names, sizes on and off the 8-byte boundary.
fn build_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    write_file(&root.join("empty"), b"", false);
    fs::create_dir(root.join("empty-dir")).unwrap();
    write_file(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", true);
    write_file(&root.join("eight"), b"12345678", false);
    write_file(&root.join("sixteen"), b"0123456789abcdef", true);
    write_file(&root.join("odd"), b"123456789", false);
    symlink("run.sh", root.join("rel-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("../does/not/exist", root.join("dangling")).unwrap();
    write_file(&root.join("ünïcødé-名前"), "non-ASCII ✓".as_bytes(), false);
    write_file(&root.join("B-upper-sorts-first"), b"x", false);
    let mut deep = root.join("deep");
    for level in 0..40 {
        fs::create_dir(&deep).unwrap();
        write_file(
            &deep.join(format!("f{level}")),
            format!("{level}").as_bytes(),
            level % 3 == 0,
        );
        deep = deep.join("d");
    }
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..3000 {
        write_file(
            &many.join(format!("entry-{i}")),
            &vec![b'a' + (i % 26) as u8; i % 37],
            i % 5 == 0,
        );
    }
}

fn nix_dump(path: &Path) -> Vec<u8> {
    run(Command::new("nix-store").arg("--dump").arg(path))
}

fn refstrip_dump(path: &Path) -> Vec<u8> {
    run(Command::new(refstrip_bin()).args(["nar", "dump"]).arg(path))
}

#[test]
fn dump_equals_nix_store_dump() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    build_tree(&root);
    let ours = refstrip_dump(&root);
    let nix = nix_dump(&root);
    assert_eq!(ours.len(), nix.len());
    assert!(
        ours == nix,
        "refstrip nar dump differs from nix-store --dump"
    );

    // Single-node archives: a lone file, a lone executable and a lone symlink at the root.
    for name in ["odd", "run.sh", "rel-link", "empty", "empty-dir"] {
        assert!(
            refstrip_dump(&root.join(name)) == nix_dump(&root.join(name)),
            "root node {name}"
        );
    }
}

#[test]
fn unpack_redumps_identically_and_hash_matches_nix() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    build_tree(&root);
    let nar_path = dir.path().join("tree.nar");
    fs::write(&nar_path, nix_dump(&root)).unwrap();

    let dest = dir.path().join("unpacked");
    run(Command::new(refstrip_bin())
        .args(["nar", "unpack"])
        .arg(&nar_path)
        .arg(&dest));
    let nar = fs::read(&nar_path).unwrap();
    assert!(
        nix_dump(&dest) == nar,
        "nix-store --dump of our unpack differs from the original NAR"
    );

    let nix_hash = run(Command::new("nix")
        .args(["hash", "path", "--base16"])
        .arg(&dest));
    let ours = hex(&Sha256::digest(&nar));
    assert_eq!(String::from_utf8(nix_hash).unwrap().trim(), ours);

    // Unpacking from standard input works too.
    let dest2 = dir.path().join("from-stdin");
    run_with_stdin(
        Command::new(refstrip_bin())
            .args(["nar", "unpack", "-"])
            .arg(&dest2),
        &nar,
    );
    assert!(nix_dump(&dest2) == nar);
}

#[test]
fn nix_restores_what_we_dump() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    build_tree(&root);
    let ours = refstrip_dump(&root);
    let dest = dir.path().join("restored-by-nix");
    run_with_stdin(Command::new("nix-store").arg("--restore").arg(&dest), &ours);
    assert!(refstrip_dump(&dest) == ours);
}

#[test]
fn ls_lists_every_entry() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    build_tree(&root);
    let nar_path = dir.path().join("tree.nar");
    fs::write(&nar_path, nix_dump(&root)).unwrap();
    let listing = String::from_utf8(run(Command::new(refstrip_bin())
        .args(["nar", "ls"])
        .arg(&nar_path)))
    .unwrap();
    let entries = walkdir_count(&root);
    assert_eq!(listing.lines().count(), entries);
    assert!(
        listing.contains("-r-xr-xr-x           18 ./run.sh"),
        "{listing:.400}"
    );
    assert!(listing.contains("lrwxrwxrwx            0 ./rel-link -> run.sh"));
}

fn walkdir_count(path: &Path) -> usize {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        1 + fs::read_dir(path)
            .unwrap()
            .map(|e| walkdir_count(&e.unwrap().path()))
            .sum::<usize>()
    } else {
        1
    }
}

/// A >100 MiB sparse file, streamed through both dumpers and compared by SHA-256 so neither NAR has
/// to sit in memory or on disk.
#[test]
fn large_sparse_file_matches_nix() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("big");
    fs::create_dir(&root).unwrap();
    let big = root.join("sparse.bin");
    let mut f = fs::File::create(&big).unwrap();
    let size: u64 = 150 * 1024 * 1024 + 3; // not a multiple of 8
    f.set_len(size).unwrap();
    for at in [0, 4096 * 7 + 1, 100 << 20, size - 5] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(b"mark!").unwrap();
    }
    drop(f);

    let hash_of = |cmd: &mut Command| {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
        }
        assert!(child.wait().unwrap().success());
        (total, hex(&hasher.finalize()))
    };
    let ours = hash_of(
        Command::new(refstrip_bin())
            .args(["nar", "dump"])
            .arg(&root),
    );
    let nix = hash_of(Command::new("nix-store").arg("--dump").arg(&root));
    assert!(ours.0 > size);
    assert_eq!(ours, nix);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
