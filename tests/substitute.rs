//! `refstrip substitute` against real Nix: the Nix store it writes must pass
//! `nix-store --verify --check-contents` and report exactly the path infos of the source binary
//! cache; tampered inputs must be refused with nothing registered; a run killed at any moment must
//! never leave a registered path with wrong contents; a mass rebuild must fetch almost nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use refstrip_strip::Node;
use refstrip_tests::{
    corpus_dir, corpus_key, read_record, refstrip_bin, require_nix, run, write_record_v1,
    GENERATIONS,
};

fn gen_dir(generation: &str) -> PathBuf {
    corpus_dir().join("small").join(generation)
}

fn root_path(generation: &str) -> String {
    fs::read_to_string(gen_dir(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
}

/// A normalized store holding every generation (as a cache would after four ingests), built once.
fn shared_store() -> &'static Path {
    static STORE: OnceLock<tempfile::TempDir> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            for g in GENERATIONS {
                run(Command::new(refstrip_bin())
                    .arg("ingest")
                    .arg(gen_dir(g))
                    .args(["--all", "--to"])
                    .arg(dir.path()));
            }
            dir
        })
        .path()
}

fn copy_store(to: &Path) {
    run(Command::new("cp").arg("-a").arg(shared_store()).arg(to));
}

fn substitute(
    store: &str,
    root: &Path,
    cache: Option<&Path>,
    extra: &[&str],
    paths: &[String],
) -> Output {
    let mut cmd = Command::new(refstrip_bin());
    cmd.args(["substitute", "--json", "--from", store, "--store"])
        .arg(root);
    match cache {
        Some(c) => cmd.arg("--cache").arg(c),
        None => cmd.arg("--no-cache"),
    };
    if !extra.contains(&"--no-check-sigs") && !extra.contains(&"--trusted-public-keys") {
        cmd.args(["--trusted-public-keys", &corpus_key()]);
    }
    cmd.args(extra).args(paths).output().unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "substitute failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (narHash, narSize, sorted references) of every path in `root`'s closure, as Nix reports them.
fn path_infos(store: &str, root: &str) -> BTreeMap<String, (String, u64, Vec<String>)> {
    let out = run(Command::new("nix").args(["path-info", "--store", store, "--json", "-r", root]));
    let infos: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
    infos
        .into_iter()
        .map(|i| {
            let mut refs: Vec<String> = i["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            refs.sort();
            (
                i["path"].as_str().unwrap().to_string(),
                (
                    i["narHash"].as_str().unwrap().to_string(),
                    i["narSize"].as_u64().unwrap(),
                    refs,
                ),
            )
        })
        .collect()
}

fn nix_verify(root: &Path) -> Result<(), String> {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && !stderr.contains("modified") && !stderr.contains("disappeared") {
        Ok(())
    } else {
        Err(stderr)
    }
}

/// Every path Nix considers valid in `root`.
fn valid_paths(root: &Path) -> Vec<String> {
    let out = run(Command::new("nix")
        .arg("path-info")
        .arg("--store")
        .arg(root)
        .arg("--all"));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn check_like_nix(root: &Path, generation: &str) {
    nix_verify(root)
        .unwrap_or_else(|e| panic!("{generation}: nix-store --verify --check-contents: {e}"));
    let r = root_path(generation);
    let source = format!("file://{}", gen_dir(generation).display());
    assert_eq!(
        path_infos(root.to_str().unwrap(), &r),
        path_infos(&source, &r),
        "{generation}: path infos differ from the cache's"
    );
    let closure = run(Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .arg("-qR")
        .arg(&r));
    let expected = fs::read_to_string(gen_dir(generation).join("paths")).unwrap();
    let mut got: Vec<&str> = std::str::from_utf8(&closure).unwrap().lines().collect();
    got.sort();
    let mut want: Vec<&str> = expected.lines().collect();
    want.sort();
    assert_eq!(got, want, "{generation}: nix-store -qR");
}

#[test]
fn every_generation_substitutes_like_nix_copy() {
    require_nix!();
    let store = shared_store().to_str().unwrap().to_string();
    for g in GENERATIONS {
        let root = tempfile::tempdir().unwrap();
        let r = report(&substitute(&store, root.path(), None, &[], &[root_path(g)]));
        let n = fs::read_to_string(gen_dir(g).join("paths"))
            .unwrap()
            .lines()
            .count() as u64;
        assert_eq!(r["paths"].as_u64(), Some(n), "{g}");
        check_like_nix(root.path(), g);
        // Again: everything is valid, nothing is fetched or written.
        let again = report(&substitute(&store, root.path(), None, &[], &[root_path(g)]));
        assert_eq!(
            (
                again["paths"].as_u64(),
                again["already_valid"].as_u64(),
                again["fetched_block_bytes"].as_u64()
            ),
            (Some(0), Some(1), Some(0))
        );
    }
}

/// NAR+xz bytes of a generation: the xz cache's FileSize sum if it exists, else xz -6 of its NARs.
fn nar_xz_bytes(generation: &str) -> u64 {
    let xz = Path::new("/var/cache/refstrip-corpus/xz/small").join(generation);
    if xz.is_dir() {
        let mut total = 0;
        for e in fs::read_dir(&xz).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "narinfo") {
                let text = fs::read_to_string(&p).unwrap();
                total += text
                    .lines()
                    .find_map(|l| l.strip_prefix("FileSize: "))
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        return total;
    }
    let mut total = 0;
    for e in fs::read_dir(gen_dir(generation).join("nar")).unwrap() {
        let nar = zstd::decode_all(fs::File::open(e.unwrap().path()).unwrap()).unwrap();
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(&nar).unwrap();
        total += enc.finish().unwrap().len() as u64;
    }
    total
}

#[test]
fn mass_rebuild_fetches_under_five_percent_of_nar_xz() {
    require_nix!();
    let store = shared_store().to_str().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let first = report(&substitute(
        &store,
        root.path(),
        Some(cache.path()),
        &[],
        &[root_path("gen1")],
    ));
    assert!(first["fetched_block_bytes"].as_u64().unwrap() > 0);
    let mass = report(&substitute(
        &store,
        root.path(),
        Some(cache.path()),
        // The block cache is what this measures; tests/local_store.rs measures the local store.
        &["--no-local-store"],
        &[root_path("mass")],
    ));
    check_like_nix(root.path(), "mass");
    check_like_nix(root.path(), "gen1");
    let fetched = mass["fetched_bytes"].as_u64().unwrap();
    let xz = nar_xz_bytes("mass");
    eprintln!(
        "mass rebuild after gen1: fetched {fetched} bytes = {:.2} % of NAR+xz {xz}; report {mass}",
        100.0 * fetched as f64 / xz as f64
    );
    assert!(
        fetched * 20 <= xz,
        "fetched {fetched} bytes, more than 5 % of {xz}"
    );
    assert!(
        mass["cached_bytes"].as_u64().unwrap() > 0,
        "the cache was not used: {mass}"
    );
    assert_eq!(mass["fetched_blocks"], 0, "{mass}");
}

/// (device, inode) of every regular file under `dir`, by path relative to `dir`.
fn inodes(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    (meta.dev(), meta.ino()),
                );
            }
        }
    }
    out
}

#[test]
fn unpatched_files_are_hard_links_that_nix_verifies_and_collects() {
    require_nix!();
    let store = shared_store().to_str().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let first = report(&substitute(
        &store,
        root.path(),
        None,
        &["--links"],
        &[root_path("gen1")],
    ));
    assert_eq!(first["linked_files"].as_u64(), Some(0));
    let shared = first["shared_files"].as_u64().unwrap();
    assert!(
        shared > 0 && shared < first["files"].as_u64().unwrap(),
        "{first}"
    );
    let mass = report(&substitute(
        &store,
        root.path(),
        None,
        &["--links"],
        &[root_path("mass")],
    ));
    let linked = mass["linked_files"].as_u64().unwrap();
    assert!(linked > 0, "{mass}");
    check_like_nix(root.path(), "mass");
    check_like_nix(root.path(), "gen1");

    // The same package in both generations: its unpatched files share inodes, the rest do not.
    let real_store = root.path().join("nix/store");
    let by_name = |g: &str| -> BTreeMap<String, PathBuf> {
        fs::read_to_string(gen_dir(g).join("paths"))
            .unwrap()
            .lines()
            .map(|p| {
                let base = p.rsplit('/').next().unwrap();
                (base[33..].to_string(), real_store.join(base))
            })
            .collect()
    };
    let (gen1, mass_paths) = (by_name("gen1"), by_name("mass"));
    let gen1_inodes: std::collections::HashSet<(u64, u64)> = gen1
        .values()
        .flat_map(|p| inodes(p).into_values())
        .collect();
    let (mut same, mut shared_with_gen1, mut different) = (0, 0, 0);
    for (name, old) in &gen1 {
        let (old, new) = (inodes(old), inodes(&mass_paths[name]));
        assert_eq!(
            old.keys().collect::<Vec<_>>(),
            new.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (file, inode) in &new {
            if old[file] == *inode {
                same += 1;
            } else {
                different += 1;
            }
            if gen1_inodes.contains(inode) {
                shared_with_gen1 += 1;
            }
        }
    }
    // A linked file shares an inode with gen1 (usually the same file; identical files elsewhere
    // share one copy).
    assert_eq!(
        shared_with_gen1, linked,
        "every linked file is a gen1 inode"
    );
    // Nix's optimiser takes the entries for its own (same names), and everything still verifies.
    run(Command::new("nix-store")
        .arg("--store")
        .arg(root.path())
        .arg("--optimise"));
    check_like_nix(root.path(), "mass");
    let plain = tempfile::tempdir().unwrap();
    let without = report(&substitute(
        &store,
        plain.path(),
        None,
        &[],
        &[root_path("gen1")],
    ));
    assert_eq!(
        (
            without["linked_files"].as_u64(),
            without["shared_files"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(
        !plain.path().join("nix/store/.links").exists(),
        "off by default"
    );
    // Nix's own switch for this, auto-optimise-store in nix.conf, turns it on; --no-links wins.
    let conf = tempfile::tempdir().unwrap();
    fs::write(conf.path().join("nix.conf"), "auto-optimise-store = true\n").unwrap();
    let with_conf = |extra: &[&str]| {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new(refstrip_bin())
            .env("NIX_CONF_DIR", conf.path())
            .args([
                "substitute",
                "--json",
                "--no-cache",
                "--no-check-sigs",
                "--from",
                &store,
                "--store",
            ])
            .arg(root.path())
            .args(extra)
            .arg(root_path("gen1"))
            .output()
            .unwrap();
        report(&out)["shared_files"].as_u64().unwrap()
    };
    assert_eq!(with_conf(&[]), shared);
    assert_eq!(with_conf(&["--no-links"]), 0);
    assert!(
        same > 0 && different > 0,
        "{same} same, {different} written"
    );

    // Nix deletes gen1 (unlinking its names), the mass paths stay intact (and keep the shared
    // entries alive); once nothing uses a `.links` entry, Nix's own garbage collector removes it.
    let links = || fs::read_dir(real_store.join(".links")).unwrap().count();
    let gc = |root: &Path| {
        let out = Command::new("nix-store")
            .arg("--store")
            .arg(root)
            .arg("--gc")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let add_root = |g: &str| {
        run(Command::new("nix-store")
            .arg("--store")
            .arg(root.path())
            .args(["--add-root"])
            .arg(root.path().join(format!("gcroot-{g}")))
            .args(["--indirect", "-r"])
            .arg(root_path(g)));
    };
    add_root("mass");
    gc(root.path());
    assert!(gen1.values().all(|p| !p.exists()), "gen1 was collected");
    nix_verify(root.path()).unwrap();
    check_like_nix(root.path(), "mass");
    fs::remove_file(root.path().join("gcroot-mass")).unwrap();
    gc(root.path());
    assert_eq!(links(), 0, "every .links entry was collected");
    assert!(valid_paths(root.path()).is_empty());
}

#[test]
fn http_store_with_ranged_block_reads() {
    require_nix!();
    let (url, ranged) = refstrip_tests::static_http_server(shared_store().to_path_buf());
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let r = report(&substitute(
        &url,
        root.path(),
        Some(cache.path()),
        &[],
        &[root_path("single")],
    ));
    check_like_nix(root.path(), "single");
    assert_eq!(
        ranged.load(Ordering::Relaxed),
        r["fetched_blocks"].as_u64().unwrap(),
        "one ranged GET per block"
    );
    assert!(r["fetched_blocks"].as_u64().unwrap() > 0);
}

/// Nothing registered and nothing left in the store directory but Nix's own `.links`.
fn assert_untouched(root: &Path, what: &str) {
    assert_eq!(
        valid_paths(root),
        Vec::<String>::new(),
        "{what}: paths were registered"
    );
    let left: Vec<String> = fs::read_dir(root.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".links")
        .collect();
    assert!(left.is_empty(), "{what}: left in the store: {left:?}");
}

fn refused(out: &Output, what: &str, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: substitute succeeded");
    assert!(
        stderr.contains(why),
        "{what}: expected {why:?} in: {stderr}"
    );
}

#[test]
fn tampered_inputs_are_refused_and_nothing_is_registered() {
    require_nix!();
    let gen1 = root_path("gen1");
    let hash_of = |p: &str| p.rsplit('/').next().unwrap()[..32].to_string();

    // A flipped byte in a pack block.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    copy_store(&store);
    let record = read_record(&store, &hash_of(&gen1));
    let (pack, loc) = record
        .objects
        .map()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    let pack_file = store.join("packs").join(format!("{pack}.pack"));
    let mut bytes = fs::read(&pack_file).unwrap();
    bytes[(loc.block_offset + loc.block_len / 2) as usize] ^= 0x40;
    fs::write(&pack_file, bytes).unwrap();
    let root = tmp.path().join("root");
    refused(
        &substitute(
            store.to_str().unwrap(),
            &root,
            None,
            &[],
            std::slice::from_ref(&gen1),
        ),
        "pack",
        "nothing was registered",
    );
    assert_untouched(&root, "tampered pack");

    // A record whose NarHash was changed: the signature no longer covers it; without the signature
    // check the restored NAR does not match it.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    copy_store(&store);
    let mut record = read_record(&store, &hash_of(&gen1));
    record.manifest.nar_hash[0] ^= 1;
    write_record_v1(&store, &record);
    let root = tmp.path().join("root");
    refused(
        &substitute(
            store.to_str().unwrap(),
            &root,
            None,
            &[],
            std::slice::from_ref(&gen1),
        ),
        "record",
        "refusing it",
    );
    assert_untouched(&root, "tampered record, signatures checked");
    refused(
        &substitute(
            store.to_str().unwrap(),
            &root,
            None,
            &["--no-check-sigs"],
            std::slice::from_ref(&gen1),
        ),
        "record",
        "restored NAR has SHA-256",
    );
    assert_untouched(&root, "tampered record, --no-check-sigs");

    // A record served under another path's name.
    let other = fs::read_to_string(gen_dir("gen1").join("paths"))
        .unwrap()
        .lines()
        .find(|p| *p != gen1)
        .unwrap()
        .to_string();
    fs::copy(
        store.join("paths").join(hash_of(&other)),
        store.join("paths").join(hash_of(&gen1)),
    )
    .unwrap();
    refused(
        &substitute(
            store.to_str().unwrap(),
            &root,
            None,
            &[],
            std::slice::from_ref(&gen1),
        ),
        "renamed record",
        "describes",
    );
    assert_untouched(&root, "renamed record");

    // Signatures by a key that is not trusted.
    let root = tmp.path().join("root2");
    let untrusted = "other-1:OJ6pGuMUWKKbsMtWccaErvuM11qEU1nIUX0eY1T+0+I=";
    refused(
        &substitute(
            shared_store().to_str().unwrap(),
            &root,
            None,
            &["--trusted-public-keys", untrusted],
            &[gen1],
        ),
        "untrusted",
        "refusing it",
    );
    assert_untouched(&root, "untrusted key");
}

/// Every node of a tree.
fn files(node: &Node) -> Vec<&Node> {
    match node {
        Node::Directory(entries) => entries.iter().flat_map(|e| files(&e.node)).collect(),
        node => vec![node],
    }
}

/// `compressed`, a zstd block of `raw_len` bytes, with byte `at` of its contents flipped: still a
/// block that decodes to `raw_len` bytes, of the same length (padded with a skippable frame), so
/// only an object's check or the NarHash can tell.
fn decodable_but_wrong(compressed: &[u8], raw_len: u64, at: usize) -> Vec<u8> {
    let mut raw = refstrip_cas::pack::decode_block(compressed, raw_len).unwrap();
    raw[at] ^= 0x20;
    let mut out = zstd::bulk::compress(&raw, 19).unwrap();
    let pad = compressed.len().checked_sub(out.len()).unwrap();
    assert!(pad >= 8, "level 19 saved only {pad} bytes");
    out.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    out.extend_from_slice(&(pad as u32 - 8).to_le_bytes());
    out.resize(compressed.len(), 0);
    assert_eq!(
        refstrip_cas::pack::decode_block(&out, raw_len).unwrap(),
        raw
    );
    out
}

/// Substitute cuts objects out of blocks without checking each one (the NarHash covers them).
/// A block that decodes but holds wrong bytes must still end as a checked read would: a bad
/// cached copy is healed and the run succeeds; a block bad in the store fails the run with the
/// object named and registers nothing, and the disk cache it went through serves a good run
/// once the store is repaired.
#[test]
fn wrong_bytes_in_a_block_are_caught_without_per_object_checks() {
    require_nix!();
    let gen1 = root_path("gen1");
    // A file without patches, one object: any byte of it that changes changes the NAR.
    let unpatched = |node: &Node| match node {
        Node::File {
            digest,
            size,
            patches,
            ..
        } if patches.is_empty() && (1..=65536).contains(size) => Some(*digest),
        _ => None,
    };
    let (record, digest) = fs::read_to_string(gen_dir("gen1").join("paths"))
        .unwrap()
        .lines()
        .map(|p| {
            let hash = &p.rsplit('/').next().unwrap()[..32];
            read_record(shared_store(), hash)
        })
        .find_map(|r| {
            let digest = files(&r.manifest.root).into_iter().find_map(unpatched)?;
            Some((r, digest))
        })
        .unwrap();
    let id = refstrip_cas::ObjectId::new(refstrip_cas::Kind::Blob, digest);
    let (pack, loc) = &record.objects.map().unwrap()[&id];
    eprintln!(
        "corrupting {id} in block {} of pack {pack}",
        loc.block_offset
    );
    let pack_file = |store: &Path| store.join("packs").join(format!("{pack}.pack"));
    let range = loc.block_offset as usize..(loc.block_offset + loc.block_len) as usize;
    let good = fs::read(pack_file(shared_store())).unwrap()[range.clone()].to_vec();
    let at = (loc.offset_in_block + loc.size / 2) as usize;
    let bad = decodable_but_wrong(&good, loc.block_raw_len, at);
    let cached = |cache: &Path| {
        cache
            .join("blocks")
            .join(pack)
            .join(format!("{}-{}", loc.block_offset, loc.block_len))
    };

    // A damaged copy in the disk cache, a good store: healed, and the run succeeds.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = shared_store().to_str().unwrap();
    let first = tmp.path().join("first");
    report(&substitute(
        store,
        &first,
        Some(&cache),
        &[],
        std::slice::from_ref(&gen1),
    ));
    fs::write(cached(&cache), &bad).unwrap();
    let root = tmp.path().join("root");
    report(&substitute(
        store,
        &root,
        Some(&cache),
        &[],
        std::slice::from_ref(&gen1),
    ));
    check_like_nix(&root, "gen1");
    assert!(
        fs::read(cached(&cache)).unwrap() == good,
        "the cached copy was healed"
    );

    // The store itself holds the wrong bytes: refused, nothing registered, nothing cached.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    copy_store(&store);
    let mut bytes = fs::read(pack_file(&store)).unwrap();
    bytes[range.clone()].copy_from_slice(&bad);
    fs::write(pack_file(&store), bytes).unwrap();
    let cache = tmp.path().join("cache");
    let root = tmp.path().join("root");
    let out = substitute(
        store.to_str().unwrap(),
        &root,
        Some(&cache),
        &["--no-check-sigs"],
        std::slice::from_ref(&gen1),
    );
    refused(
        &out,
        "bad block in the store",
        "BLAKE3 of its bytes does not match",
    );
    assert_untouched(&root, "bad block in the store");
    // Other paths' objects in that block are fine, so the cache may hold it again; it must not
    // matter: once the store is repaired, the same cache gives a good run and a good copy.
    let mut bytes = fs::read(pack_file(&store)).unwrap();
    bytes[range].copy_from_slice(&good);
    fs::write(pack_file(&store), bytes).unwrap();
    report(&substitute(
        store.to_str().unwrap(),
        &root,
        Some(&cache),
        &["--no-check-sigs"],
        std::slice::from_ref(&gen1),
    ));
    check_like_nix(&root, "gen1");
    assert!(fs::read(cached(&cache)).unwrap() == good);
}

/// A large file whose normalized contents a local path already holds is copied from it (issue
/// 14), but only if the copy checks out: a local file altered on disk is not copied, and the
/// paths are exact either way.
#[test]
fn local_files_are_copied_only_when_the_copy_checks_out() {
    require_nix!();
    let store = shared_store().to_str().unwrap();
    let gen1 = || vec![root_path("gen1")];
    let mass = || vec![root_path("mass")];
    // The one file of the small corpus large enough to be chunked.
    let large = |root: &Path| {
        let lua = fs::read_to_string(gen_dir("gen1").join("paths"))
            .unwrap()
            .lines()
            .find(|p| p.ends_with("-lua-5.4.4"))
            .unwrap()
            .to_string();
        root.join(lua.trim_start_matches('/'))
            .join("lib/liblua.so.5.4.4")
    };
    let copies = |r: &serde_json::Value| {
        (
            r["copied_files"].as_u64().unwrap(),
            r["refused_copies"].as_u64().unwrap(),
        )
    };

    let root = tempfile::tempdir().unwrap();
    report(&substitute(store, root.path(), None, &[], &gen1()));
    assert!(fs::metadata(large(root.path())).unwrap().len() > 256 << 10);
    let r = report(&substitute(store, root.path(), None, &[], &mass()));
    assert_eq!(copies(&r), (1, 0), "{r}");
    check_like_nix(root.path(), "mass");

    // Altered after it was indexed (an altered path is not indexed at all).
    let root = tempfile::tempdir().unwrap();
    report(&substitute(store, root.path(), None, &[], &gen1()));
    run(Command::new(refstrip_bin())
        .args(["index", "--store"])
        .arg(root.path()));
    let file = large(root.path());
    let flip = |file: &Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(file, bytes).unwrap();
        fs::set_permissions(file, fs::Permissions::from_mode(0o555)).unwrap();
    };
    flip(&file);
    let r = report(&substitute(store, root.path(), None, &[], &mass()));
    assert_eq!(copies(&r), (0, 1), "{r}");
    flip(&file);
    check_like_nix(root.path(), "mass");
    check_like_nix(root.path(), "gen1");
}

#[test]
fn sigkill_at_random_moments_never_leaves_bad_registrations() {
    require_nix!();
    let store = shared_store().to_str().unwrap().to_string();
    // How long a whole run takes here (warm cache, as in the trials), to spread the kills over it.
    let cache = tempfile::tempdir().unwrap();
    let probe = tempfile::tempdir().unwrap();
    report(&substitute(
        &store,
        probe.path(),
        Some(cache.path()),
        &[],
        &[root_path("gen1")],
    ));
    let probe = tempfile::tempdir().unwrap();
    let t = Instant::now();
    report(&substitute(
        &store,
        probe.path(),
        Some(cache.path()),
        &[],
        &[root_path("gen1")],
    ));
    let full = t.elapsed().as_micros() as u64;

    let root = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut full = full;
    let mut killed_before_end = 0;
    let mut trials = 0;
    while killed_before_end < 50 {
        assert!(
            trials < 200,
            "only {killed_before_end} of {trials} runs were interrupted"
        );
        let trial = trials;
        trials += 1;
        let g = GENERATIONS[trial % 2];
        // Start over when this generation is complete, so every run has work to be killed in.
        if valid_paths(root.path()).contains(&root_path(g)) {
            for e in fs::read_dir(root.path()).unwrap() {
                let p = e.unwrap().path();
                run(Command::new("chmod").arg("-R").arg("u+w").arg(&p));
                fs::remove_dir_all(p).unwrap();
            }
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = (seed >> 33) % (full + 1);
        let mut cmd = Command::new(refstrip_bin());
        cmd.args(["substitute", "--json", "--from", &store, "--store"])
            .arg(root.path())
            .arg("--cache")
            .arg(cache.path());
        cmd.args(["--trusted-public-keys", &corpus_key(), &root_path(g)]);
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        if child.try_wait().unwrap().is_none() {
            killed_before_end += 1;
        } else {
            full = full * 3 / 4; // runs got faster (warm caches, less load): aim earlier
        }
        child.kill().ok();
        child.wait().unwrap();
        // Whatever is registered is complete and correct.
        nix_verify(root.path())
            .unwrap_or_else(|e| panic!("trial {trial} ({g}, killed after {delay} µs): {e}"));
    }
    eprintln!("{killed_before_end} of {trials} runs were killed before they finished (full run {full} µs)");
    // Rerunning completes every generation.
    for g in GENERATIONS {
        report(&substitute(
            &store,
            root.path(),
            Some(cache.path()),
            &[],
            &[root_path(g)],
        ));
        check_like_nix(root.path(), g);
    }
}

#[test]
fn untouched_helper_reads_nix_state() {
    // Guards the helpers above: a fresh root is untouched, a substituted one is not.
    require_nix!();
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("nix/store")).unwrap();
    let out = substitute(
        shared_store().to_str().unwrap(),
        root.path(),
        None,
        &[],
        &[root_path("bump")],
    );
    report(&out);
    assert!(!valid_paths(root.path()).is_empty());
    let mut f = fs::File::open(root.path().join("nix/var/nix/db/schema")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "10");
}

#[test]
fn content_addressed_paths_keep_their_ca_and_a_wrong_one_is_refused() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let file = tmp.path().join("hello.txt");
    fs::write(&file, b"hello, content addressing\n").unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/a"), b"a").unwrap();
    let add = |args: &[&str], what: &Path| -> String {
        let out = run(Command::new("nix-store")
            .arg("--store")
            .arg(&src)
            .arg("--add-fixed")
            .args(args)
            .arg(what));
        String::from_utf8(out).unwrap().trim().to_string()
    };
    let flat = add(&["sha256"], &file);
    let recursive = add(&["--recursive", "sha1"], &dir);
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&src)
        .args(["--all", "--to"])
        .arg(&store));
    let root = tmp.path().join("root");
    let out = substitute(
        store.to_str().unwrap(),
        &root,
        None,
        &["--no-check-sigs"],
        &[flat.clone(), recursive.clone()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nix_verify(&root).unwrap();
    let ca_of = |root: &Path, path: &str| {
        let out = run(Command::new("nix")
            .args(["path-info", "--json", "--store"])
            .arg(root)
            .arg(path));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v[0]["ca"].as_str().unwrap_or_default().to_string()
    };
    for path in [&flat, &recursive] {
        let ca = ca_of(&src, path);
        assert!(ca.starts_with("fixed:"), "{path}: {ca}");
        assert_eq!(
            ca_of(&root, path),
            ca,
            "{path}: CA registered as Nix registered it"
        );
    }

    // The same record claiming the other path's content address: refused, nothing registered.
    let mut record = read_record(&store, &flat[11..43]);
    let other_ca = ca_of(&src, &recursive);
    for (k, v) in &mut record.manifest.info {
        if k == "CA" {
            *v = other_ca.clone();
        }
    }
    write_record_v1(&store, &record);
    let root = tmp.path().join("root2");
    refused(
        &substitute(
            store.to_str().unwrap(),
            &root,
            None,
            &["--no-check-sigs"],
            &[flat],
        ),
        "wrong CA",
        "refusing it: CA",
    );
    assert_untouched(&root, "wrong CA");
}
