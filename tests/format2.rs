//! Store format 2 next to format 1 (spec §6, §8): a format 1 store (its records and its unfiltered
//! `rspack01` packs) still restores byte for byte, a writer upgrades it in place, and a store
//! holding records of both formats serves stock Nix.

use std::collections::HashMap;
use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use refstrip_cas::pack::{decode_block, Location, PackReader};
use refstrip_strip::varint::put;
use refstrip_strip::ContentDigest;

use refstrip_tests::operator::{corpus_root, nix_copy_from, verify_contents, Serving};
use refstrip_tests::{
    corpus_dir, corpus_key, edit_objects, read_record, refstrip_bin, require_nix, run,
    write_record_v1,
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

/// Rewrite every pack as the first pack format was written ("rspack01", each block one plain zstd
/// frame, spec §6) and point the records at the copies: a store from before block filters.
/// Returns how many filtered blocks the packs had.
fn downgrade_packs_to_v1(store: &Path) -> usize {
    let mut filtered = 0;
    let mut moved: HashMap<(String, u64), (String, u64, u64)> = HashMap::new();
    for e in fs::read_dir(store.join("packs")).unwrap() {
        let path = e.unwrap().path();
        let old_id = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        let index = PackReader::open(Cursor::new(&bytes))
            .unwrap()
            .index()
            .clone();
        let mut blocks: Vec<Location> = index.values().copied().collect();
        blocks.sort_by_key(|l| l.block_offset);
        blocks.dedup_by_key(|l| l.block_offset);
        let mut pack = b"rspack01".to_vec();
        let mut new_block = HashMap::new();
        for l in blocks {
            let frame = &bytes[l.block_offset as usize..(l.block_offset + l.block_len) as usize];
            filtered += usize::from(!frame.starts_with(&0xFD2F_B528u32.to_le_bytes()));
            let raw = decode_block(frame, l.block_raw_len).unwrap();
            let plain = zstd::bulk::compress(&raw, 3).unwrap();
            new_block.insert(l.block_offset, (pack.len() as u64, plain.len() as u64));
            pack.extend_from_slice(&plain);
        }
        let mut entries: Vec<_> = index.iter().collect();
        entries.sort_by_key(|(id, _)| **id);
        let mut raw_index = Vec::new();
        put(&mut raw_index, entries.len() as u64);
        for (id, l) in &entries {
            let (offset, len) = new_block[&l.block_offset];
            raw_index.extend_from_slice(&id.digest.0);
            for v in [
                id.kind.code(),
                offset,
                len,
                l.block_raw_len,
                l.offset_in_block,
                l.size,
            ] {
                put(&mut raw_index, v);
            }
        }
        let index_frame = zstd::bulk::compress(&raw_index, 3).unwrap();
        let index_offset = pack.len() as u64;
        pack.extend_from_slice(&index_frame);
        pack.extend_from_slice(&index_offset.to_le_bytes());
        pack.extend_from_slice(&(index_frame.len() as u64).to_le_bytes());
        pack.extend_from_slice(b"rspackix");
        let new_id = ContentDigest::of(&pack).to_hex();
        fs::write(store.join("packs").join(format!("{new_id}.pack")), &pack).unwrap();
        fs::remove_file(&path).unwrap();
        for (offset, (new_offset, new_len)) in new_block {
            moved.insert(
                (old_id.clone(), offset),
                (new_id.clone(), new_offset, new_len),
            );
        }
    }
    for e in fs::read_dir(store.join("paths")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let mut record = read_record(store, &name);
        edit_objects(&mut record, |map| {
            for (pack, l) in map.values_mut() {
                let (new_pack, offset, len) = moved[&(pack.clone(), l.block_offset)].clone();
                (*pack, l.block_offset, l.block_len) = (new_pack, offset, len);
            }
        });
        write_record_v1(store, &record);
    }
    run(Command::new(refstrip_bin())
        .arg("stats")
        .arg(store)
        .arg("--rebuild-catalog"));
    filtered
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
    // Packs too: gen1's ELF files were in filtered blocks, now every block is a plain frame.
    assert!(downgrade_packs_to_v1(&store) > 0);
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
    assert!(
        marker.contains(&format!("StoreFormat: {}", refstrip_read::STORE_FORMAT)),
        "{marker}"
    );
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
