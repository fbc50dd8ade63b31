//! The test vectors of spec/normalized-format.md, recomputed from the committed corpus.
//! `REFSTRIP_BLESS=1 cargo nextest run -p refstrip-tests --test spec_vectors` rewrites them
//! (only after a deliberate format change, which also needs a new manifest version).

use std::fs;
use std::io::Read;

use refstrip_nix::StoreDir;
use refstrip_source::open_source;
use refstrip_strip::{strip, tree_digest, Manifest, MemoryStore, Node, PatchKind, StripOptions};
use refstrip_tests::{corpus_dir, corpus_packages};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn entries(node: &Node, path: &str, out: &mut Vec<Value>) {
    let patches = |ps: &[refstrip_strip::Patch]| -> Value {
        ps.iter()
            .map(|p| match &p.kind {
                PatchKind::Ref(i) => json!([p.offset, "ref", i]),
                PatchKind::Literal(b) => json!([p.offset, "literal", hex(b)]),
            })
            .collect()
    };
    match node {
        Node::File { executable, size, digest, patches: ps } => out.push(
            json!({"path": path, "type": "file", "executable": executable, "size": size, "blake3": digest.to_hex(), "patches": patches(ps)}),
        ),
        Node::Symlink { target, patches: ps } => out.push(
            json!({"path": path, "type": "symlink", "target": String::from_utf8_lossy(target), "patches": patches(ps)}),
        ),
        Node::Directory(children) => {
            out.push(json!({"path": path, "type": "directory"}));
            for e in children {
                let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                if !e.name_patches.is_empty() {
                    out.push(json!({"path": child, "name_patches": patches(&e.name_patches)}));
                }
                entries(&e.node, &child, out);
            }
        }
    }
}

/// The vector of one corpus path: inputs (NAR digest, store path, references) and every output a
/// second implementation must reproduce.
fn vector(generation: &str, package: (&str, &str)) -> Value {
    let source = open_source(
        corpus_dir()
            .join("small")
            .join(generation)
            .to_str()
            .unwrap(),
        StoreDir::default(),
    )
    .unwrap();
    let path = &corpus_packages(generation)[&(package.0.to_string(), package.1.to_string())];
    let info = source
        .narinfo(&StoreDir::default().parse_path(path).unwrap())
        .unwrap();
    let mut nar = Vec::new();
    source.nar(&info).unwrap().read_to_end(&mut nar).unwrap();
    let pi = refstrip_read::pathinfo::path_info(&info).unwrap();
    let s = strip(
        &nar[..],
        &pi.refs,
        &StripOptions::default(),
        &mut MemoryStore::default(),
    )
    .unwrap();
    let manifest = Manifest {
        store_dir: pi.store_dir,
        refs: pi.refs.clone(),
        references: pi.references,
        nar_hash: s.nar_hash,
        nar_size: s.nar_size,
        info: pi.info,
        root: s.root,
    };
    let mut list = Vec::new();
    entries(&manifest.root, "", &mut list);
    json!({
        "input": {
            "nar": format!("corpus/small/{generation}/{}", info.url),
            "nar_sha256": hex(&Sha256::digest(&nar)),
            "store_path": info.path(),
            "references": info.references.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        },
        "reference_table": pi.refs.basenames().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>(),
        "tree_digest": tree_digest(&manifest.root).to_hex(),
        "entries": list,
        "manifest_body_hex": hex(&manifest.body()),
        "shape_body_hex": hex(&manifest.shape_body()),
        "shape_digest": refstrip_strip::ContentDigest::of(&manifest.shape_body()).to_hex(),
        "binding_hex": hex(&manifest.binding().unwrap()),
    })
}

#[test]
fn spec_vectors_match() {
    let cases = [
        ("gen1", ("lua", "out")),
        ("gen1", ("zlib", "dev")),
        ("gen1", ("profile", "out")),
        ("mass", ("lua", "out")),
    ];
    let bless = std::env::var_os("REFSTRIP_BLESS").is_some();
    for (generation, package) in cases {
        let file = format!("{VECTORS}/{generation}-{}-{}.json", package.0, package.1);
        let computed = vector(generation, package);
        if bless {
            fs::write(
                &file,
                serde_json::to_string_pretty(&computed).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let committed: Value = serde_json::from_str(
            &fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")),
        )
        .unwrap();
        assert_eq!(
            computed, committed,
            "{file} no longer matches what strip produces"
        );
    }
}

#[test]
fn mass_rebuild_vector_differs_from_gen1_only_in_hashes() {
    let a = vector("gen1", ("lua", "out"));
    let b = vector("mass", ("lua", "out"));
    assert_eq!(a["tree_digest"], b["tree_digest"]);
    // Format 2: one shape for both, two bindings.
    assert_eq!(a["shape_digest"], b["shape_digest"]);
    assert_ne!(a["binding_hex"], b["binding_hex"]);
    assert_ne!(a["input"]["nar_sha256"], b["input"]["nar_sha256"]);
}

/// Spec §6's x86 filter, against a vector computed by an independent implementation of the text
/// (calls to one target, a displacement beyond 25 bits, a backward jump, an opcode whose test
/// byte a later conversion would change, an opcode too close to the end).
#[test]
fn x86_filter_vector() {
    let vector: Value =
        serde_json::from_str(&fs::read_to_string(format!("{VECTORS}/x86-filter.json")).unwrap())
            .unwrap();
    let bytes = |key: &str| decode_hex(vector[key].as_str().unwrap());
    let (input, filtered) = (bytes("input_hex"), bytes("filtered_hex"));
    let mut b = input.clone();
    refstrip_cas::filter::encode(&mut b);
    assert_eq!(hex(&b), hex(&filtered));
    refstrip_cas::filter::decode(&mut b);
    assert_eq!(b, input);
}

/// §8's delta offers: a fixed object table with two offers encoded as a shape file's tail, and
/// §5's delta object: a frame that rebuilds its target from its base as a zstd prefix. The frame
/// is checked by decoding (compressors may encode differently; every decoder must decode alike).
#[test]
fn delta_offer_vector_matches() {
    use refstrip_cas::pack::Location;
    use refstrip_cas::{Kind, ObjectId};
    use refstrip_read::{ObjectMap, Offer, ShapeFile, Table};
    use refstrip_strip::ContentDigest;

    let file = format!("{VECTORS}/delta-offers.json");
    let bless = std::env::var_os("REFSTRIP_BLESS").is_some();
    let committed: Option<Value> = fs::read_to_string(&file)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());

    let base = b"local lua = require('lua') -- version 5.4.4, built 2023\n".repeat(8);
    let mut target = base.clone();
    target[38..43].copy_from_slice(b"5.4.7");
    target.extend_from_slice(b"-- one more line\n");
    let delta = match (&committed, bless) {
        (Some(v), false) => decode_hex(v["delta"]["delta_hex"].as_str().unwrap()),
        _ => refstrip_cas::delta::encode(&base, &target, refstrip_cas::delta::DELTA_LEVEL).unwrap(),
    };
    assert_eq!(
        refstrip_cas::delta::apply(&base, &delta, target.len() as u64).unwrap(),
        target
    );

    let d = |n: u8| ContentDigest::of(&[n]);
    let at = |block_offset, size| Location {
        block_offset,
        block_len: 40,
        block_raw_len: 300_000,
        offset_in_block: 0,
        size,
    };
    let small = ObjectId::blob(&target);
    let delta_id = ObjectId::new(Kind::Delta, ContentDigest::of(&delta));
    let large = ObjectId::new(Kind::ChunkList, d(2));
    let chunk = ObjectId::new(Kind::Blob, d(3));
    let large_delta = ObjectId::new(Kind::Delta, d(4));
    let objects: ObjectMap = [
        (small, ("aa".to_string(), at(8, target.len() as u64))),
        (delta_id, ("bb".to_string(), at(48, delta.len() as u64))),
        (large, ("aa".to_string(), at(88, 40))),
        (chunk, ("aa".to_string(), at(88, 270_000))),
        (large_delta, ("bb".to_string(), at(128, 900))),
    ]
    .into_iter()
    .collect();
    let offers = vec![
        Offer {
            target: small,
            target_size: target.len() as u64,
            base: ContentDigest::of(&base),
            base_size: base.len() as u64,
            delta: delta_id.digest,
            covers: vec![],
        },
        Offer {
            target: large,
            target_size: 270_000,
            base: d(5),
            base_size: 269_000,
            delta: large_delta.digest,
            covers: vec![chunk.digest],
        },
    ];
    let table = Table { objects, offers };
    // A shape file whose body frame is empty: what follows it is the object table and offers.
    let shape_file = ShapeFile::encode(b"", &table);
    let prefix = ShapeFile::encode(b"", &Table::default());
    let prefix_len = prefix.len() - 2; // the empty table: two zero counts
    let tail = &shape_file[prefix_len..];
    let decoded = ShapeFile::decode_objects(&shape_file).unwrap();
    let mut offers_sorted = table.offers.clone();
    offers_sorted.sort_by_key(|o| (o.target, o.base));
    assert_eq!(decoded.offers, offers_sorted);
    let offer_json = |o: &Offer| {
        json!({"target": o.target.digest.to_hex(), "target_kind": o.target.kind.name(),
               "target_size": o.target_size, "base": o.base.to_hex(), "base_size": o.base_size,
               "delta": o.delta.to_hex(),
               "covers": o.covers.iter().map(|c| c.to_hex()).collect::<Vec<_>>()})
    };
    let computed = json!({
        "table_and_offers_hex": hex(tail),
        "offers": decoded.offers.iter().map(offer_json).collect::<Vec<_>>(),
        "delta": {
            "base_hex": hex(&base),
            "delta_hex": hex(&delta),
            "target_hex": hex(&target),
            "target_blake3": ContentDigest::of(&target).to_hex(),
        },
    });
    if bless || committed.is_none() {
        assert!(bless, "{file} is missing: run with REFSTRIP_BLESS=1");
        fs::write(
            &file,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    assert_eq!(computed, committed.unwrap(), "{file} no longer matches");
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
