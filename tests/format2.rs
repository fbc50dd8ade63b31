//! Store format 2 next to format 1 (spec §8): a format 1 store still restores byte for byte, a
//! writer upgrades it in place, and a store holding records of both formats serves stock Nix.

use std::fs;
use std::path::Path;
use std::process::Command;

use refstrip_tests::operator::{corpus_root, nix_copy_from, verify_contents, Serving};
use refstrip_tests::{
    corpus_dir, corpus_key, read_record, refstrip_bin, require_nix, run, write_record_v1,
};

fn ingest(generation: &str, store: &Path) {
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small").join(generation))
        .args(["--all", "--to"])
        .arg(store));
}

/// Rewrite a store as format 1 wrote it: every record one file, no shapes, a format 1 marker.
fn downgrade_to_format_1(store: &Path) {
    for e in fs::read_dir(store.join("paths")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let record = read_record(store, &name);
        write_record_v1(store, &record);
    }
    fs::remove_dir_all(store.join("shapes")).unwrap();
    fs::write(
        store.join("refstrip-store"),
        "refstrip normalized store\nStoreFormat: 1\n",
    )
    .unwrap();
}

fn magic(store: &Path, path: &str) -> Vec<u8> {
    let hash = &path.rsplit('/').next().unwrap()[..32];
    fs::read(store.join("paths").join(hash)).unwrap()[..8].to_vec()
}

#[test]
fn format_1_stores_restore_exactly_and_mixed_stores_serve_stock_nix() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ingest("gen1", &store);
    downgrade_to_format_1(&store);
    let gen1 = corpus_root("gen1");
    assert_eq!(magic(&store, &gen1), b"rspath01");

    // A format 1 store substitutes byte for byte (nix-store --verify checks every NarHash).
    let root = dir.path().join("root1");
    run(Command::new(refstrip_bin())
        .args(["substitute", "--no-local-store", "--trusted-public-keys"])
        .arg(corpus_key())
        .arg("--from")
        .arg(&store)
        .arg("--store")
        .arg(&root)
        .arg(&gen1));
    verify_contents(&root);

    // A writer upgrades it: the marker says 2, new paths get format 2 records, old ones stay.
    ingest("mass", &store);
    let marker = fs::read_to_string(store.join("refstrip-store")).unwrap();
    assert!(marker.contains("StoreFormat: 2"), "{marker}");
    let mass = corpus_root("mass");
    assert_eq!(magic(&store, &mass), b"rsbind02");
    assert_eq!(magic(&store, &gen1), b"rspath01");

    // Stock Nix copies both generations through serve from the mixed store.
    let server = Serving::start(&store, &[]);
    let root = dir.path().join("root2");
    for path in [&gen1, &mass] {
        let out = nix_copy_from(&server.url(), &root, &corpus_key(), path);
        assert!(
            out.status.success(),
            "nix copy {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop();
    verify_contents(&root);
}
