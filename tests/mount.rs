//! `refstrip mount` against real Nix: every path of a mounted corpus generation hashes (as Nix
//! hashes a path) to its narinfo's NarHash; listing costs no object fetch and a read fetches only
//! the blocks of what it reads, in the middle of a chunked file too; a program runs from the mount
//! over /nix/store in a private mount namespace; a corrupt pack gives EIO; SIGTERM unmounts, even
//! while a shell sits inside the mount.
//!
//! FUSE needs /dev/fuse and root (the pure-Rust mount calls mount(2)); without them these tests
//! print a loud notice and skip.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use refstrip_cas::{Kind, ObjectId};
use refstrip_read::PathRecord;
use refstrip_strip::{ContentDigest, Node};
use refstrip_tests::{corpus_dir, corpus_packages, read_record, refstrip_bin, require_nix, run};

const HEADER: &str = "include/zlib.h";

fn fuse_usable() -> bool {
    let root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !Path::new("/dev/fuse").exists() || !root {
        eprintln!("\n*** SKIPPED: FUSE mounting needs /dev/fuse and root; the mount tests did not run ***\n");
        return false;
    }
    true
}

macro_rules! require_fuse {
    () => {
        require_nix!();
        if !fuse_usable() {
            return;
        }
    };
}

fn gen1() -> PathBuf {
    corpus_dir().join("small/gen1")
}

fn ingest(from: &Path, store: &Path) {
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(from)
        .args(["--all", "--to"])
        .arg(store));
}

/// A running `refstrip mount`.
struct Mount {
    child: Child,
    dir: PathBuf,
    stats: PathBuf,
}

impl Mount {
    fn start(store: &Path, scratch: &Path, flags: &[&str], paths: &[&str]) -> Mount {
        let dir = scratch.join("mnt");
        let stats = scratch.join("stats.json");
        fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(refstrip_bin())
            .args(["mount", "--from"])
            .arg(store)
            .arg("--stats")
            .arg(&stats)
            .args(flags)
            .arg(&dir)
            .args(paths)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("mounted "), "mount failed: {line:?}");
        Mount { child, dir, stats }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(&self.stats).unwrap()).unwrap()
    }

    fn fetched(&self) -> (u64, u64) {
        let s = self.stats();
        (
            s["fetched_bytes"].as_u64().unwrap(),
            s["fetched_blocks"].as_u64().unwrap(),
        )
    }

    /// SIGTERM; the process must exit successfully with the mountpoint free.
    fn stop(mut self) {
        run(Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null()));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "refstrip mount exited with {status}");
        assert!(!mounted(&self.dir), "{} still mounted", self.dir.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A failed test must not leave a mount behind.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

fn nar_hash(narinfo: &str) -> String {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("NarHash: sha256:"))
        .unwrap()
        .to_string()
}

fn nix_hash_path(path: &Path) -> String {
    let out = run(Command::new("nix")
        .args(["hash", "path", "--type", "sha256", "--base32"])
        .arg(path));
    String::from_utf8(out).unwrap().trim().to_string()
}

fn package(name: &str, output: &str) -> String {
    let path = &corpus_packages("gen1")[&(name.to_string(), output.to_string())];
    path.rsplit('/').next().unwrap().to_string()
}

fn record(store: &Path, basename: &str) -> PathRecord {
    read_record(store, &basename[..32])
}

/// The digest of the file at `rel` (names without hashes) in a record's manifest.
fn file_digest(record: &PathRecord, rel: &str) -> ContentDigest {
    let mut node = &record.manifest.root;
    for name in rel.split('/') {
        let Node::Directory(entries) = node else {
            panic!("{rel}: not a directory")
        };
        node = &entries
            .iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap()
            .node;
    }
    let Node::File { digest, .. } = node else {
        panic!("{rel}: not a file")
    };
    *digest
}

/// Every name, type, mode, size and link target under `dir`, as `ls -lR` would show them.
fn walk(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let m = fs::symlink_metadata(e.path()).unwrap();
        let target = fs::read_link(e.path()).map(|t| t.display().to_string());
        out.push(format!(
            "{} {:o} {} {}",
            e.path().display(),
            m.permissions().mode(),
            m.len(),
            target.unwrap_or_default()
        ));
        if m.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn every_path_hashes_to_its_nar_hash() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[]);
    let mut checked = 0;
    for e in fs::read_dir(gen1()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "narinfo") {
            let text = fs::read_to_string(&p).unwrap();
            let path = text.lines().next().unwrap().rsplit('/').next().unwrap();
            assert_eq!(nix_hash_path(&m.path(path)), nar_hash(&text), "{path}");
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
    // Modes as in a Nix store: 0555 directories and executables, 0444 other files.
    let mode = |rel: &str| fs::metadata(m.path(rel)).unwrap().permissions().mode() & 0o7777;
    let (lua, lua_dev) = (package("lua", "out"), package("lua", "dev"));
    assert_eq!(mode(&format!("{lua}/bin")), 0o555);
    assert_eq!(mode(&format!("{lua}/bin/lua")), 0o555);
    assert_eq!(mode(&format!("{lua_dev}/include/lua.h")), 0o444);
    assert_eq!(m.stats()["errors"], 0);
    m.stop();
}

#[test]
fn listing_fetches_nothing_and_a_read_fetches_only_its_block() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let cache = tmp.path().join("cache");
    let m = Mount::start(
        &store,
        tmp.path(),
        &["--cache", cache.to_str().unwrap()],
        &[],
    );
    let mut listing = Vec::new();
    walk(&m.dir, &mut listing);
    assert!(listing.len() > 200, "{} entries", listing.len());
    assert_eq!(m.fetched(), (0, 0), "listing fetched objects");

    let zlib_dev = package("zlib", "dev");
    let header = fs::read(m.path(&format!("{zlib_dev}/{HEADER}"))).unwrap();
    assert!(header.starts_with(b"/* zlib.h"));
    let rec = record(&store, &zlib_dev);
    let id = ObjectId::new(Kind::Blob, file_digest(&rec, HEADER));
    let (_, loc) = &rec.objects.map().unwrap()[&id];
    assert_eq!(m.fetched(), (loc.block_len, 1), "one block: the header's");
    // The block is in the object cache now: it is exactly what was fetched.
    let cached: u64 = walkdir_sizes(&cache.join("blocks"));
    assert_eq!(cached, loc.block_len);
    m.stop();
}

fn walkdir_sizes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walkdir_sizes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn paths_limit_the_view_to_their_closure() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let lua_zlib = package("lua-zlib", "out");
    let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[&lua_zlib]);
    let shown: BTreeSet<String> = fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = [lua_zlib, package("zlib", "out")].into();
    assert_eq!(shown, want);
    m.stop();
}

/// xorshift bytes: incompressible, so a large file spans several pack blocks.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_read_in_a_large_file_fetches_only_the_chunks_it_touches() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    // A hand-made binary cache of one path whose 24 MiB file mentions lua's store path in the
    // middle (a reference, so the read range carries a patch), next to gen1 in one store.
    let lua = package("lua", "out");
    let big = "00000000000000000000000000000b1g-big";
    let at = 12 << 20;
    let mut data = noise(24 << 20);
    let mention = format!("/nix/store/{lua}/lib");
    data[at..at + mention.len()].copy_from_slice(mention.as_bytes());
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("big.bin"), &data).unwrap();
    let nar = run(Command::new("nix-store").arg("--dump").arg(&tree));
    let hash = refstrip_nix::Hash::digest(&nar).to_nix32();
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(cache.join(format!("nar/{hash}.nar")), &nar).unwrap();
    fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    fs::write(
        cache.join(format!("{}.narinfo", &big[..32])),
        format!(
            "StorePath: /nix/store/{big}\nURL: nar/{hash}.nar\nCompression: none\n\
             FileHash: sha256:{hash}\nFileSize: {len}\nNarHash: sha256:{hash}\nNarSize: {len}\n\
             References: {lua}\n",
            len = nar.len()
        ),
    )
    .unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    ingest(&cache, &store);

    let rec = record(&store, big);
    let mut blocks: Vec<_> = rec
        .objects
        .map()
        .unwrap()
        .values()
        .map(|(p, l)| (p.clone(), l.block_offset, l.block_len))
        .collect();
    blocks.sort();
    blocks.dedup();
    assert!(blocks.len() >= 5, "the file spans {} blocks", blocks.len());
    let largest_block = blocks.iter().map(|b| b.2).max().unwrap();

    let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[big]);
    let mut f = fs::File::open(m.path(&format!("{big}/big.bin"))).unwrap();
    f.seek(SeekFrom::Start(at as u64 - 100)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, data[at - 100..at - 100 + 4096], "patched range");
    let (bytes, n) = m.fetched();
    assert!(
        n <= 2 && bytes <= 2 * largest_block,
        "fetched {bytes} bytes in {n} blocks for a 4 KiB read"
    );
    // The whole path, read through, is still the exact NAR.
    assert_eq!(nix_hash_path(&m.path(big)), hash);
    m.stop();
}

#[test]
fn a_program_runs_from_the_mount_over_nix_store() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let lua = package("lua", "out");
    let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[&lua]);
    // A private mount namespace: the host's /nix/store is untouched.
    let script = format!(
        "mount --bind {} /nix/store && /nix/store/{lua}/bin/lua -e 'print(_VERSION)'",
        m.dir.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Lua 5.4");
    m.stop();
}

#[test]
fn a_corrupt_pack_gives_eio_not_wrong_bytes() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let zlib_dev = package("zlib", "dev");
    let rec = record(&store, &zlib_dev);
    let id = ObjectId::new(Kind::Blob, file_digest(&rec, HEADER));
    let (pack, loc) = &rec.objects.map().unwrap()[&id];
    let pack = store.join("packs").join(format!("{pack}.pack"));
    let original = fs::read(&pack).unwrap();
    let block = original[loc.block_offset as usize..][..loc.block_len as usize].to_vec();

    // 1. A block that decompresses fine to the right length, with one byte of the header changed:
    //    only the object's BLAKE3 check can catch it. The frame is padded to the block's length
    //    with a zstd skippable frame, so every offset in the pack stays valid.
    let mut raw = zstd::decode_all(&block[..]).unwrap();
    raw[(loc.offset_in_block + loc.size / 2) as usize] ^= 1;
    let mut forged = zstd::bulk::compress(&raw, 19).unwrap();
    let pad = block.len() - forged.len();
    assert!(pad >= 8, "the forged block must fit");
    forged.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    forged.extend_from_slice(&(pad as u32 - 8).to_le_bytes());
    forged.resize(block.len(), 0);
    assert_eq!(zstd::decode_all(&forged[..]).unwrap(), raw);
    // 2. A block of garbage.
    let garbage: Vec<u8> = block.iter().map(|b| b ^ 0x5a).collect();

    for bad_block in [forged, garbage] {
        let mut bytes = original.clone();
        bytes[loc.block_offset as usize..][..loc.block_len as usize].copy_from_slice(&bad_block);
        fs::write(&pack, bytes).unwrap();
        let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[]);
        match fs::read(m.path(&format!("{zlib_dev}/{HEADER}"))) {
            Ok(_) => panic!("read a corrupt block without an error"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(5), "{e}"),
        }
        // The listing does not depend on objects and still works.
        assert!(fs::read_dir(m.path(&zlib_dev)).unwrap().count() > 0);
        m.stop();
        assert!(stopped_mount_errors(tmp.path()) >= 1);
    }
}

/// The error count in the stats file a stopped mount left in `scratch`.
fn stopped_mount_errors(scratch: &Path) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_slice(&fs::read(scratch.join("stats.json")).unwrap()).unwrap();
    stats["errors"].as_u64().unwrap()
}

#[test]
fn sigterm_unmounts_even_while_the_mount_is_busy() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ingest(&gen1(), &store);
    let m = Mount::start(&store, tmp.path(), &["--no-cache"], &[]);
    let mut shell = Command::new("sh")
        .args(["-c", "cd \"$0\" && exec sleep 30"])
        .arg(&m.dir)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait until the shell has its working directory inside the mount.
    while fs::read_link(format!("/proc/{}/cwd", shell.id())).ok()
        != Some(m.dir.canonicalize().unwrap())
    {
        assert!(
            Instant::now() < deadline,
            "the shell never entered the mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.stop();
    shell.kill().unwrap();
    shell.wait().unwrap();
}
