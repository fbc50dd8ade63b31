//! The core on the committed corpus (real software built by real Nix, see corpus/README.md):
//! every NAR of every generation strips and restores byte for byte with SHA-256 = NarHash, and
//! rebuilds that changed no source normalize to identical trees.

use std::collections::BTreeMap;
use std::io::Read;

use refstrip_nix::{StoreDir, StorePath};
use refstrip_source::{open_source, NarSource};
use refstrip_strip::{restore_nar, strip, tree_digest, Manifest, MemoryStore, Node, StripOptions};
use refstrip_tests::{corpus_dir, corpus_packages, ALL_GENERATIONS};
use sha2::{Digest, Sha256};

fn source(generation: &str) -> Box<dyn NarSource> {
    open_source(
        corpus_dir()
            .join("small")
            .join(generation)
            .to_str()
            .unwrap(),
        StoreDir::default(),
    )
    .unwrap()
}

/// Strip one corpus path, restore it, and return (package key, tree digest, per-file digests).
fn round_trip(
    src: &dyn NarSource,
    path: &StorePath,
    options: &StripOptions,
) -> (Manifest, Vec<u8>) {
    let info = src.narinfo(path).unwrap();
    let mut original = Vec::new();
    src.nar(&info).unwrap().read_to_end(&mut original).unwrap();
    assert_eq!(
        Sha256::digest(&original).as_slice(),
        info.nar_hash.as_bytes(),
        "{path}: corpus NAR vs narinfo"
    );

    let pi = refstrip_read::pathinfo::path_info(&info).unwrap();
    let mut store = MemoryStore::default();
    let s = strip(&original[..], &pi.refs, options, &mut store).unwrap();
    assert_eq!(
        (s.nar_hash, s.nar_size),
        (*info.nar_hash.as_bytes(), info.nar_size)
    );
    let manifest = Manifest {
        store_dir: pi.store_dir,
        refs: pi.refs,
        references: pi.references,
        nar_hash: s.nar_hash,
        nar_size: s.nar_size,
        info: pi.info,
        root: s.root,
    };
    let decoded = Manifest::decode(&manifest.encode()).unwrap();
    let mut restored = Vec::new();
    let digest = restore_nar(&decoded, &mut store, &mut restored).unwrap();
    assert_eq!(&digest.sha256, info.nar_hash.as_bytes());
    assert!(restored == original, "{path}: restored NAR differs");
    (decoded, original)
}

#[test]
fn every_corpus_nar_round_trips() {
    // Every committed generation is covered: a new one must be added to ALL_GENERATIONS.
    let mut committed: Vec<String> = std::fs::read_dir(corpus_dir().join("small"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    committed.sort();
    let mut listed = ALL_GENERATIONS.map(String::from).to_vec();
    listed.sort();
    assert_eq!(committed, listed);

    let mut count = 0;
    for generation in ALL_GENERATIONS {
        let src = source(generation);
        for path in src.list().unwrap() {
            for normalize_build_id in [true, false] {
                round_trip(&*src, &path, &StripOptions { normalize_build_id });
            }
            count += 1;
        }
    }
    assert_eq!(count, 5 * 14, "every path of every generation");
}

/// Tree digests of every package output of a generation, keyed by (name, output).
fn tree_digests(
    generation: &str,
    options: &StripOptions,
) -> BTreeMap<(String, String), (String, Node)> {
    let src = source(generation);
    corpus_packages(generation)
        .into_iter()
        .map(|(key, path)| {
            let path = StoreDir::default().parse_path(&path).unwrap();
            let (manifest, _) = round_trip(&*src, &path, options);
            (key, (tree_digest(&manifest.root).to_hex(), manifest.root))
        })
        .collect()
}

fn files(node: &Node, out: &mut Vec<(refstrip_strip::ContentDigest, u64)>) {
    match node {
        Node::File { digest, size, .. } => out.push((*digest, *size)),
        Node::Symlink { .. } => {}
        Node::Directory(entries) => entries.iter().for_each(|e| files(&e.node, out)),
    }
}

/// Count (identical, total) regular files between the trees of each package in two generations.
fn compare(
    old: &BTreeMap<(String, String), (String, Node)>,
    new: &BTreeMap<(String, String), (String, Node)>,
) -> (Vec<String>, usize, usize) {
    let mut differing_packages = Vec::new();
    let (mut same, mut total) = (0, 0);
    for (key, (digest, root)) in new {
        let (old_digest, old_root) = &old[key];
        if digest != old_digest {
            differing_packages.push(format!("{}-{}", key.0, key.1));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        files(old_root, &mut a);
        files(root, &mut b);
        total += b.len();
        same += b.iter().filter(|f| a.contains(f)).count();
    }
    (differing_packages, same, total)
}

#[test]
fn mass_rebuild_normalizes_identically() {
    let gen1 = tree_digests("gen1", &StripOptions::default());
    let mass = tree_digests("mass", &StripOptions::default());
    let (differing, same, total) = compare(&gen1, &mass);
    eprintln!("mass rebuild: {same} of {total} files identical after stripping; packages differing: {differing:?}");
    // Every hash changed and no source did: every package and every file must normalize alike.
    assert!(differing.is_empty(), "{differing:?}");
    assert_eq!(same, total);
    assert!(
        total >= 60,
        "the small corpus has 68 regular files; got {total}"
    );

    // Without build-id normalization, the ELF files are what still differs.
    let gen1_raw = tree_digests(
        "gen1",
        &StripOptions {
            normalize_build_id: false,
        },
    );
    let mass_raw = tree_digests(
        "mass",
        &StripOptions {
            normalize_build_id: false,
        },
    );
    let (differing_raw, same_raw, _) = compare(&gen1_raw, &mass_raw);
    eprintln!("without build-id normalization: {same_raw} of {total} files identical; {differing_raw:?} differ");
    assert!(
        same_raw < same,
        "build-id normalization must matter on this corpus"
    );
}

#[test]
fn single_package_rebuild_changes_only_that_package() {
    let gen1 = tree_digests("gen1", &StripOptions::default());
    let single = tree_digests("single", &StripOptions::default());
    let (differing, same, total) = compare(&gen1, &single);
    eprintln!("single-package rebuild: {same} of {total} files identical; packages differing: {differing:?}");
    // zlib was built with other CFLAGS, so its library differs; its reverse dependencies were only
    // rebuilt (their hashes changed) and must normalize exactly as before.
    assert!(
        differing.iter().all(|p| p.starts_with("zlib-")),
        "{differing:?}"
    );
    assert!(differing.contains(&"zlib-out".to_string()), "{differing:?}");
}

#[test]
fn channel_update_changes_only_the_bumped_packages() {
    let gen1 = tree_digests("gen1", &StripOptions::default());
    let channel = tree_digests("channel", &StripOptions::default());
    let (differing, same, total) = compare(&gen1, &channel);
    eprintln!(
        "channel update: {same} of {total} files identical; packages differing: {differing:?}"
    );
    // Every hash changed (a new stdenv revision) and lua, zlib and libpng took new versions: what
    // was only rebuilt (dash, bzip2, expat) normalizes exactly as in gen1.
    let expected = [
        "libpng-dev",
        "libpng-out",
        "lua-dev",
        "lua-out",
        "lua-env-out",
        "lua-zlib-out",
        "profile-out",
        "zlib-dev",
        "zlib-out",
    ];
    assert_eq!(differing, expected);

    // Against bump (which already has lua 5.4.7), lua is a mass rebuild too: only the zlib and
    // libpng bumps and what links or names them differ.
    let bump = tree_digests("bump", &StripOptions::default());
    let (differing, same, total) = compare(&bump, &channel);
    eprintln!(
        "bump -> channel: {same} of {total} files identical; packages differing: {differing:?}"
    );
    assert_eq!(
        differing,
        [
            "libpng-dev",
            "libpng-out",
            "lua-zlib-out",
            "profile-out",
            "zlib-dev",
            "zlib-out"
        ]
    );
}
