//! strip → encode → decode → restore reproduces the NAR byte for byte, on random trees full of
//! references in awkward places; and two generations differing only in hashes normalize alike.

use std::io::BufReader;

use proptest::prelude::*;
use refstrip_nar::NarWriter;
use refstrip_strip::{
    restore, restore_nar, restore_threaded, strip, Binding, Bytes, ContentDigest, ContentSource,
    Manifest, MemoryStore, Node, Pieces, RefTable, RestoreVisitor, StripOptions, PLACEHOLDER,
};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn hash_part() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(ALPHABET), 32)
}

/// A piece of file content, name or target, referring to references by index.
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    /// The full hash part of reference `i % n`.
    Ref(usize),
    /// A prefix of a reference's hash (must not be replaced).
    Partial(usize, usize),
    Placeholder,
}

fn pieces(max: usize) -> impl Strategy<Value = Vec<Piece>> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Bytes),
            // Text made of the hash alphabet, so partial matches are everywhere.
            2 => proptest::collection::vec(proptest::sample::select(ALPHABET), 0..40).prop_map(Piece::Bytes),
            3 => any::<usize>().prop_map(Piece::Ref),
            1 => (any::<usize>(), 1..32usize).prop_map(|(i, n)| Piece::Partial(i, n)),
            1 => Just(Piece::Placeholder),
        ],
        0..max,
    )
}

fn render(pieces: &[Piece], hashes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Bytes(b) => out.extend_from_slice(b),
            Piece::Ref(i) => out.extend_from_slice(&hashes[i % hashes.len()]),
            Piece::Partial(i, n) => out.extend_from_slice(&hashes[i % hashes.len()][..*n]),
            Piece::Placeholder => out.extend_from_slice(&PLACEHOLDER),
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Tree {
    File(bool, Vec<Piece>),
    Symlink(Vec<Piece>),
    Dir(Vec<(Vec<Piece>, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (any::<bool>(), pieces(12)).prop_map(|(x, p)| Tree::File(x, p)),
        pieces(4).prop_map(Tree::Symlink),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        proptest::collection::vec((pieces(3), inner), 0..5).prop_map(Tree::Dir)
    })
}

/// Write the tree as a NAR with the given hashes. Names are made valid (non-empty, no `/` or NUL)
/// and unique; the NAR sorts them by their real bytes, which depend on the hashes.
fn nar_of(tree: &Tree, hashes: &[Vec<u8>]) -> Vec<u8> {
    fn go(t: &Tree, name: Option<&[u8]>, h: &[Vec<u8>], w: &mut NarWriter<&mut Vec<u8>>) {
        match t {
            Tree::File(x, p) => {
                let c = render(p, h);
                w.file(name, *x, c.len() as u64).unwrap();
                w.write_contents(&c).unwrap();
            }
            Tree::Symlink(p) => {
                let mut target = render(p, h);
                target.retain(|b| *b != 0);
                if target.is_empty() {
                    target.push(b'x');
                }
                w.symlink(name, &target).unwrap();
            }
            Tree::Dir(entries) => {
                w.directory(name).unwrap();
                let mut named: Vec<(Vec<u8>, &Tree)> = entries
                    .iter()
                    .enumerate()
                    .map(|(i, (p, t))| {
                        let mut n = render(p, h);
                        n.retain(|b| *b != 0 && *b != b'/');
                        // A unique, hash-free suffix keeps names distinct and never `.`/`..`.
                        n.extend_from_slice(format!("~{i}").as_bytes());
                        (n, t)
                    })
                    .collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                for (n, t) in named {
                    go(t, Some(&n), h, w);
                }
                w.end_directory().unwrap();
            }
        }
    }
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    go(tree, None, hashes, &mut w);
    w.finish().unwrap();
    nar
}

fn table(hashes: &[Vec<u8>]) -> RefTable {
    let basenames: Vec<Vec<u8>> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| [h.clone(), format!("-pkg{i}").into_bytes()].concat())
        .collect();
    RefTable::new(&basenames[0], &basenames[1..]).unwrap()
}

fn strip_with_capacity(nar: &[u8], refs: &RefTable, capacity: usize) -> (Manifest, MemoryStore) {
    let mut store = MemoryStore::default();
    let s = strip(
        BufReader::with_capacity(capacity, nar),
        refs,
        &StripOptions::default(),
        &mut store,
    )
    .unwrap();
    assert_eq!(s.nar_size, nar.len() as u64);
    assert_eq!(s.nar_hash, <[u8; 32]>::from(Sha256::digest(nar)));
    let manifest = Manifest {
        store_dir: b"/nix/store".to_vec(),
        refs: refs.clone(),
        references: refs.basenames()[1..].to_vec(),
        nar_hash: s.nar_hash,
        nar_size: s.nar_size,
        // One line of each encoding a version 2 binding has: a Deriver sharing the path's name, a
        // signature of 64 bytes, and anything else verbatim.
        info: vec![
            (
                "Deriver".into(),
                format!("{}-pkg0.drv", String::from_utf8_lossy(refs.hash_part(0))),
            ),
            (
                "Sig".into(),
                format!("cache-1:{}", "AQID".repeat(21) + "AQ=="),
            ),
            ("Sig".into(), "k:abc".into()),
        ],
        root: s.root,
    };
    (manifest, store)
}

fn distinct(hashes: &[Vec<u8>]) -> bool {
    let mut h = hashes.to_vec();
    h.sort();
    h.dedup();
    h.len() == hashes.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn strip_restore_is_exact(
        t in tree(),
        hashes in proptest::collection::vec(hash_part(), 1..5),
        capacity in prop_oneof![Just(8usize), 9..100usize, Just(1 << 16)],
    ) {
        prop_assume!(distinct(&hashes));
        let nar = nar_of(&t, &hashes);
        let refs = table(&hashes);
        let (manifest, mut store) = strip_with_capacity(&nar, &refs, capacity);

        // Scanning must not depend on how the stream was cut.
        let (whole, _) = strip_with_capacity(&nar, &refs, 1 << 20);
        prop_assert_eq!(&manifest, &whole);

        // No reference hash survives in normalized contents.
        for bytes in store.objects.values() {
            for h in &hashes {
                prop_assert!(!bytes.windows(32).any(|w| w == &h[..]));
            }
        }

        let decoded = Manifest::decode(&manifest.encode()).unwrap();
        prop_assert_eq!(&decoded, &manifest);
        // Version 2: the two halves join into the same manifest.
        let binding = Binding::decode(&manifest.binding().unwrap()).unwrap();
        prop_assert_eq!(binding.shape, ContentDigest::of(&manifest.shape_body()));
        let joined = Manifest::from_halves(&manifest.shape_body(), &binding).unwrap();
        prop_assert_eq!(&joined, &manifest);
        let mut out = Vec::new();
        let digest = restore_nar(&decoded, &mut store, &mut out).unwrap();
        prop_assert_eq!(digest.size, nar.len() as u64);
        prop_assert!(out == nar);
    }

    /// Objects handed out as shared slices (which restore must split around patches, never
    /// write into), the hash inline or on its own thread: the NAR and the tree the visitor sees
    /// are still exact.
    #[test]
    fn restore_from_shared_pieces_is_exact(
        t in tree(),
        hashes in proptest::collection::vec(hash_part(), 1..5),
        piece in prop_oneof![1..100usize, Just(1 << 16)],
        threaded in any::<bool>(),
    ) {
        prop_assume!(distinct(&hashes));
        let nar = nar_of(&t, &hashes);
        let (manifest, store) = strip_with_capacity(&nar, &table(&hashes), 1 << 16);
        let mut source = Shared {
            objects: store.objects.iter().map(|(d, b)| (*d, Bytes::from(b.clone()))).collect(),
            piece,
        };
        let mut out = Vec::new();
        let mut tree = Rebuild(NarWriter::new(Vec::new()));
        let digest = if threaded {
            restore_threaded(&manifest, &mut source, &mut out, &mut tree).unwrap()
        } else {
            restore(&manifest, &mut source, &mut out, &mut tree).unwrap()
        };
        prop_assert_eq!(digest.size, nar.len() as u64);
        prop_assert!(out == nar);
        prop_assert!(tree.0.finish().unwrap() == nar);
        // The objects were not written into.
        for (digest, bytes) in &source.objects {
            prop_assert_eq!(&store.objects[digest][..], &bytes[..]);
        }
    }

    #[test]
    fn generations_differing_only_in_hashes_normalize_alike(
        t in tree(),
        old in proptest::collection::vec(hash_part(), 3),
        new in proptest::collection::vec(hash_part(), 3),
    ) {
        let mut all = old.clone();
        all.extend(new.iter().cloned());
        prop_assume!(distinct(&all));
        // A partial hash is ordinary content, which legitimately differs between generations.
        let t = without_partials(&t);
        let (m1, s1) = strip_with_capacity(&nar_of(&t, &old), &table(&old), 64);
        let (m2, s2) = strip_with_capacity(&nar_of(&t, &new), &table(&new), 64);
        prop_assert_eq!(&m1.root, &m2.root);
        prop_assert_eq!(s1.objects, s2.objects);
        // So their version 2 shapes are one object.
        prop_assert_eq!(m1.shape_body(), m2.shape_body());
    }
}

fn without_partials(t: &Tree) -> Tree {
    let clean = |p: &[Piece]| {
        p.iter()
            .filter(|p| !matches!(p, Piece::Partial(..)))
            .cloned()
            .collect()
    };
    match t {
        Tree::File(x, p) => Tree::File(*x, clean(p)),
        Tree::Symlink(p) => Tree::Symlink(clean(p)),
        Tree::Dir(entries) => Tree::Dir(
            entries
                .iter()
                .map(|(p, t)| (clean(p), without_partials(t)))
                .collect(),
        ),
    }
}

#[test]
fn adjacent_and_boundary_references() {
    let hashes: Vec<Vec<u8>> = vec![
        b"0123456789abcdfghijklmnpqrsvwxyz".to_vec(),
        b"zyxwvsrqpnmlkjihgfdcba9876543210".to_vec(),
    ];
    let refs = table(&hashes);
    let mut content = hashes[0].clone();
    content.extend_from_slice(&hashes[1]);
    content.extend_from_slice(&hashes[0]);
    content.extend_from_slice(b"/nix/store/");
    content.extend_from_slice(&hashes[1]);
    let t = Tree::File(false, vec![Piece::Bytes(content)]);
    let nar = nar_of(&t, &hashes);
    for capacity in [8, 13, 31, 32, 33, 64, 4096] {
        let (m, mut store) = strip_with_capacity(&nar, &refs, capacity);
        let Node::File { patches, .. } = &m.root else {
            panic!()
        };
        assert_eq!(
            patches.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![0, 32, 64, 107],
            "capacity {capacity}"
        );
        let mut out = Vec::new();
        restore_nar(&m, &mut store, &mut out).unwrap();
        assert_eq!(out, nar);
    }
}

/// Objects held as shared `Bytes`, handed out in slices of `piece` bytes.
struct Shared {
    objects: std::collections::HashMap<ContentDigest, Bytes>,
    piece: usize,
}

impl ContentSource for Shared {
    fn open(&mut self, _: &ContentDigest, _: u64) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        unreachable!("restore takes the pieces")
    }

    fn pieces(&mut self, digest: &ContentDigest, _: u64) -> std::io::Result<Pieces<'_>> {
        let bytes = self.objects[digest].clone();
        let piece = self.piece;
        let starts = (0..bytes.len()).step_by(piece);
        Ok(Box::new(starts.map(move |at| {
            Ok(bytes.slice(at..(at + piece).min(bytes.len())))
        })))
    }
}

/// The tree a visitor sees, written back as a NAR.
struct Rebuild(NarWriter<Vec<u8>>);

impl RestoreVisitor for Rebuild {
    fn event(&mut self, event: &refstrip_nar::Event) -> std::io::Result<()> {
        self.0.event(event).map_err(std::io::Error::other)
    }
    fn contents(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_contents(data).map_err(std::io::Error::other)
    }
}

/// An ELF file whose GNU build-id note lies past the first 64 KiB (as in glibc's gconv modules):
/// spec §2.2 leaves it alone, however the NAR is read. Strip once zeroed it when the file's first
/// piece happened to be longer than 64 KiB, so ingest (large reads) and the local-store index
/// (64 KiB pipe reads) made different objects of the same file.
#[test]
fn a_build_id_past_the_head_is_kept_whatever_the_read_size() {
    const NOTE_AT: u64 = 70_000;
    let mut elf = vec![0u8; NOTE_AT as usize];
    elf[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let header: [(usize, &[u8]); 8] = [
        (16, &2u16.to_le_bytes()),    // e_type: executable
        (18, &0x3eu16.to_le_bytes()), // e_machine: x86-64
        (20, &1u32.to_le_bytes()),    // e_version
        (32, &64u64.to_le_bytes()),   // e_phoff
        (52, &64u16.to_le_bytes()),   // e_ehsize
        (54, &56u16.to_le_bytes()),   // e_phentsize
        (56, &1u16.to_le_bytes()),    // e_phnum
        (58, &64u16.to_le_bytes()),   // e_shentsize
    ];
    for (at, bytes) in header {
        elf[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let phdr: [(usize, &[u8]); 5] = [
        (64, &4u32.to_le_bytes()),    // p_type: PT_NOTE
        (72, &NOTE_AT.to_le_bytes()), // p_offset
        (96, &36u64.to_le_bytes()),   // p_filesz
        (104, &36u64.to_le_bytes()),  // p_memsz
        (112, &4u64.to_le_bytes()),   // p_align
    ];
    for (at, bytes) in phdr {
        elf[at..at + bytes.len()].copy_from_slice(bytes);
    }
    elf.extend(4u32.to_le_bytes()); // namesz
    elf.extend(20u32.to_le_bytes()); // descsz
    elf.extend(3u32.to_le_bytes()); // NT_GNU_BUILD_ID
    elf.extend(b"GNU\0");
    elf.extend((1..=20u8).collect::<Vec<_>>());
    // Long enough that a reader handing out 64 KiB pieces has the note in its first two.
    elf.resize(200_000, 0);
    assert!(
        refstrip_strip::build_id_range(&elf).is_some(),
        "the note is found in the whole file"
    );
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.file(None, true, elf.len() as u64).unwrap();
    w.write_contents(&elf).unwrap();
    w.finish().unwrap();
    let hashes = vec![b"0000000000000000000000000000000z".to_vec()];
    let (whole, _) = strip_with_capacity(&nar, &table(&hashes), 1 << 20);
    let (pieces, _) = strip_with_capacity(&nar, &table(&hashes), 1 << 12);
    assert_eq!(whole, pieces);
    let Node::File { patches, .. } = &whole.root else {
        panic!("a file")
    };
    assert!(patches.is_empty(), "{patches:?}");
}
