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
    let bytes = |key: &str| {
        let s = vector[key].as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let (input, filtered) = (bytes("input_hex"), bytes("filtered_hex"));
    let mut b = input.clone();
    refstrip_cas::filter::encode(&mut b);
    assert_eq!(hex(&b), hex(&filtered));
    refstrip_cas::filter::decode(&mut b);
    assert_eq!(b, input);
}
