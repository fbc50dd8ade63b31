//! Packs and bundles: what goes in comes out verified; damage is reported, never returned.

use std::io::{BufReader, Cursor};

use refstrip_cas::bundle::{write_bundle, Bundle, PathInfo};
use refstrip_cas::pack::{PackReader, PackWriter};
use refstrip_cas::{CasError, Kind, ObjectId, ObjectRead, CHUNK_THRESHOLD};
use refstrip_nar::NarWriter;
use refstrip_strip::{restore_nar, RefTable, StripOptions};

fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn pack_of(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    for o in objects {
        w.add(ObjectId::blob(o), o).unwrap();
    }
    assert!(
        !w.add(ObjectId::blob(&objects[0]), &objects[0]).unwrap(),
        "duplicates are skipped"
    );
    w.finish().unwrap().0
}

#[test]
fn objects_round_trip_across_blocks() {
    let objects: Vec<Vec<u8>> = (0..120)
        .map(|i| noise(50_000 + i * 1000, i as u32))
        .collect();
    let pack = pack_of(&objects);
    let mut r = PackReader::open(Cursor::new(pack)).unwrap();
    assert_eq!(r.index().len(), objects.len());
    let blocks: std::collections::HashSet<u64> =
        r.index().values().map(|l| l.block_offset).collect();
    assert!(blocks.len() > 1, "objects span several blocks");
    for o in objects.iter().rev() {
        assert_eq!(&r.get(&ObjectId::blob(o)).unwrap(), o);
    }
    assert!(matches!(
        r.get(&ObjectId::blob(b"absent")),
        Err(CasError::NotFound(_))
    ));
}

#[test]
fn damaged_packs_are_refused() {
    let objects: Vec<Vec<u8>> = (0..3).map(|i| noise(1000, i)).collect();
    let pack = pack_of(&objects);
    for len in 0..pack.len() {
        assert!(
            PackReader::open(Cursor::new(pack[..len].to_vec())).is_err(),
            "truncated to {len}"
        );
    }
    // Any flipped byte: zstd, the index checks or BLAKE3 notice, or the flip was harmless (a
    // frame-header detail); wrong bytes are never returned.
    let mut refused = 0;
    for at in 0..pack.len() {
        let mut bad = pack.clone();
        bad[at] ^= 0x40;
        let Ok(mut r) = PackReader::open(Cursor::new(bad)) else {
            refused += 1;
            continue;
        };
        for o in &objects {
            match r.get(&ObjectId::blob(o)) {
                Ok(bytes) => assert_eq!(&bytes, o, "flip at {at} returned wrong bytes"),
                Err(_) => refused += 1,
            }
        }
    }
    assert!(
        refused > pack.len() / 2,
        "only {refused} refusals for {} flips",
        pack.len()
    );
    let mut bad = pack.clone();
    bad[0] = b'X';
    assert!(matches!(
        PackReader::open(Cursor::new(bad)),
        Err(CasError::BadPack(_))
    ));
}

#[test]
fn bundle_round_trips_a_large_chunked_file() {
    let own = b"0123456789abcdfghijklmnpqrsvwxyz-big".to_vec();
    let dep = b"zyxwvsrqpnmlkjihgfdcba9876543210-dep".to_vec();
    let refs = RefTable::new(&own, std::slice::from_ref(&dep)).unwrap();
    let mut big = noise(3 * CHUNK_THRESHOLD + 12345, 7);
    big[1000..1032].copy_from_slice(&dep[..32]);
    big[CHUNK_THRESHOLD..CHUNK_THRESHOLD + 32].copy_from_slice(&own[..32]);
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.directory(None).unwrap();
    w.file(Some(b"big"), false, big.len() as u64).unwrap();
    w.write_contents(&big).unwrap();
    w.file(Some(b"small"), true, 5).unwrap();
    w.write_contents(b"small").unwrap();
    w.end_directory().unwrap();
    w.finish().unwrap();

    let info = PathInfo {
        store_dir: b"/nix/store".to_vec(),
        refs,
        references: vec![dep],
        info: vec![],
    };
    let (_, stripped, out) = write_bundle(
        BufReader::new(&nar[..]),
        info,
        &StripOptions::default(),
        3,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(stripped.stats.ref_patches, 2);
    let mut bundle = Bundle::open(Cursor::new(out.clone())).unwrap();
    let chunk_lists = bundle
        .pack
        .index()
        .keys()
        .filter(|id| id.kind == Kind::ChunkList)
        .count();
    assert_eq!(chunk_lists, 1);
    let manifest = bundle.manifest.clone();
    let mut restored = Vec::new();
    restore_nar(&manifest, &mut bundle.source(), &mut restored).unwrap();
    assert!(restored == nar);
}
