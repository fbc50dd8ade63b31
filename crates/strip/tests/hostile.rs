//! Hostile normalized input gives typed errors, never a panic or wrong bytes.

use std::io::BufReader;

use refstrip_nar::NarWriter;
use refstrip_strip::{
    restore_nar, strip, ContentDigest, Manifest, MemoryStore, Node, Patch, PatchKind, RefTable,
    StripError, StripOptions,
};

const H0: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const H1: &[u8] = b"zyxwvsrqpnmlkjihgfdcba9876543210";

fn sample() -> (Manifest, MemoryStore, Vec<u8>) {
    let refs = RefTable::new(&[H0, b"-self"].concat(), &[[H1, b"-dep"].concat()]).unwrap();
    let contents = [b"#!".as_slice(), b"/nix/store/", H1, b"-dep/bin/sh\n", H0].concat();
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.directory(None).unwrap();
    w.symlink(Some(b"link"), &[b"/nix/store/", H1, b"-dep"].concat())
        .unwrap();
    w.file(Some(b"script"), true, contents.len() as u64)
        .unwrap();
    w.write_contents(&contents).unwrap();
    w.end_directory().unwrap();
    w.finish().unwrap();
    let mut store = MemoryStore::default();
    let s = strip(
        BufReader::new(&nar[..]),
        &refs,
        &StripOptions::default(),
        &mut store,
    )
    .unwrap();
    assert_eq!(s.stats.ref_patches, 3);
    let m = Manifest {
        store_dir: b"/nix/store".to_vec(),
        references: vec![[H1, b"-dep"].concat()],
        refs,
        nar_hash: s.nar_hash,
        nar_size: s.nar_size,
        info: vec![],
        root: s.root,
    };
    (m, store, nar)
}

fn file_patches(m: &mut Manifest) -> &mut Vec<Patch> {
    let Node::Directory(entries) = &mut m.root else {
        panic!()
    };
    let Node::File { patches, .. } = &mut entries
        .iter_mut()
        .find(|e| e.name == b"script")
        .unwrap()
        .node
    else {
        panic!()
    };
    patches
}

#[test]
fn sample_round_trips() {
    let (m, mut store, nar) = sample();
    let mut out = Vec::new();
    restore_nar(
        &Manifest::decode(&m.encode()).unwrap(),
        &mut store,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, nar);
}

#[test]
fn patch_offsets_past_the_end() {
    let (mut m, _, _) = sample();
    file_patches(&mut m).push(Patch {
        offset: 10_000,
        kind: PatchKind::Ref(1),
    });
    assert!(matches!(
        Manifest::decode(&m.encode()),
        Err(StripError::PatchOutOfRange { .. })
    ));

    let (mut m, _, _) = sample();
    file_patches(&mut m).push(Patch {
        offset: u64::MAX - 3,
        kind: PatchKind::Literal(vec![1, 2, 3, 4, 5]),
    });
    assert!(Manifest::decode(&m.encode()).is_err());
}

#[test]
fn overlapping_or_empty_patches() {
    let (mut m, _, _) = sample();
    let p = file_patches(&mut m);
    let first = p[0].offset;
    p.insert(
        1,
        Patch {
            offset: first + 1,
            kind: PatchKind::Ref(0),
        },
    );
    // Encoding stores gaps from the previous end, so an overlap cannot even be expressed: the
    // decoder sees a later offset. Check validation directly instead.
    let refs = m.refs.clone();
    let patches = file_patches(&mut m).clone();
    assert!(matches!(
        refstrip_strip::validate(&patches, 1000, &refs, "file"),
        Err(StripError::PatchOutOfRange { .. })
    ));
    let empty = [Patch {
        offset: 0,
        kind: PatchKind::Literal(vec![]),
    }];
    assert!(refstrip_strip::validate(&empty, 1000, &refs, "file").is_err());
}

#[test]
fn unknown_reference_index() {
    let (mut m, _, _) = sample();
    file_patches(&mut m)[0].kind = PatchKind::Ref(7);
    assert!(matches!(
        Manifest::decode(&m.encode()),
        Err(StripError::UnknownReference { index: 7, count: 2 })
    ));
}

#[test]
fn wrong_version_and_magic() {
    let (m, _, _) = sample();
    let mut bytes = m.encode();
    bytes[8] = 2;
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(StripError::UnsupportedVersion { found: 2, .. })
    ));
    bytes[0] = b'X';
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(StripError::BadManifest(_))
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let (m, _, _) = sample();
    let bytes = m.encode();
    for len in 0..bytes.len() {
        assert!(
            Manifest::decode(&bytes[..len]).is_err(),
            "prefix of {len} bytes decoded"
        );
    }
}

#[test]
fn tampered_object_fails_the_nar_hash() {
    let (m, mut store, _) = sample();
    let Node::Directory(entries) = &m.root else {
        panic!()
    };
    let Node::File { digest, .. } = &entries[1].node else {
        panic!("{:?}", entries[1])
    };
    store.objects.get_mut(digest).unwrap()[0] ^= 1;
    let err = restore_nar(&m, &mut store, Vec::new()).unwrap_err();
    assert!(matches!(err, StripError::NarHashMismatch { .. }), "{err}");

    store.objects.get_mut(digest).unwrap().pop();
    assert!(matches!(
        restore_nar(&m, &mut store, Vec::new()),
        Err(StripError::ObjectSize { .. })
    ));
    store
        .objects
        .get_mut(digest)
        .unwrap()
        .extend_from_slice(b"xy");
    assert!(matches!(
        restore_nar(&m, &mut store, Vec::new()),
        Err(StripError::ObjectSize { .. })
    ));
    store.objects.clear();
    assert!(matches!(
        restore_nar(&m, &mut store, Vec::new()),
        Err(StripError::Io(_))
    ));
}

#[test]
fn wrong_reference_table_fails_the_nar_hash() {
    let (mut m, mut store, _) = sample();
    m.refs = RefTable::new(
        &[H0, b"-self"].concat(),
        &[[b"11111111111111111111111111111111".as_slice(), b"-dep"].concat()],
    )
    .unwrap();
    assert!(matches!(
        restore_nar(&m, &mut store, Vec::new()),
        Err(StripError::NarHashMismatch { .. })
    ));
}

#[test]
fn digest_hex_round_trip() {
    let d = ContentDigest::of(b"x");
    assert_eq!(ContentDigest::from_hex(&d.to_hex()), Some(d));
    assert_eq!(ContentDigest::from_hex("zz"), None);
}

// ---- Issue 17: names, budgets and bounds, built with the crate's own encoder. ----

/// Encode `body` as a manifest, the way `Manifest::encode` frames it, so a test can put bytes in
/// the body that `RefTable::new` would never let a `Manifest` value hold.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = b"rsmanif\n".to_vec();
    refstrip_strip::varint::put(&mut out, refstrip_strip::MANIFEST_VERSION);
    out.extend(zstd::bulk::compress(body, 3).unwrap());
    out
}

/// `sample()` with `from` replaced by `to` (same length, so the framing stays valid) in its body.
fn tampered(from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let (m, _, _) = sample();
    let mut body = m.body();
    let at = body
        .windows(from.len())
        .position(|w| w == from)
        .expect("present");
    body[at..at + from.len()].copy_from_slice(to);
    frame(&body)
}

#[test]
fn names_that_would_leave_root_are_refused() {
    let (m, _, _) = sample();
    // The untampered frame decodes, so each failure below is the name's.
    assert_eq!(Manifest::decode(&frame(&m.body())).unwrap(), m);
    // The path's own basename and a reference: `<hash>-x/../..` traversals, `.`/`..` names.
    for (from, to) in [
        (&b"-self"[..], &b"-../."[..]),
        (b"-self", b"-s/lf"),
        (b"-self", b"-..-x"),
        (b"-dep", b"-d/p"),
    ] {
        let err = Manifest::decode(&tampered(from, to)).unwrap_err();
        assert!(
            matches!(err, StripError::BadBasename(_)),
            "{}: {err}",
            String::from_utf8_lossy(to)
        );
    }
    // An entry name that is `..` or holds `/` after patching (literal patch writing a slash).
    let err = Manifest::decode(&tampered(b"link", b"../x")).unwrap_err();
    assert!(matches!(err, StripError::BadManifest(_)), "{err}");
    let mut m2 = m.clone();
    let Node::Directory(entries) = &mut m2.root else {
        panic!()
    };
    entries[0].name_patches = vec![Patch {
        offset: 1,
        kind: PatchKind::Literal(b"/".to_vec()),
    }];
    let err = Manifest::decode(&m2.encode()).unwrap_err();
    assert!(err.to_string().contains("entry name"), "{err}");
}

#[test]
fn unsigned_info_fields_nix_would_reject_are_refused() {
    let (mut m, _, _) = sample();
    m.info = vec![(
        "Deriver".into(),
        format!("{}-x.drv", std::str::from_utf8(H1).unwrap()),
    )];
    Manifest::decode(&m.encode()).unwrap();
    for (k, v) in [
        ("Deriver", "../../etc/passwd"),
        ("Deriver", "zyxwvsrqpnmlkjihgfdcba9876543210-x"),
        ("CA", "garbage"),
        ("CA", "fixed:r:sha256:00"),
        ("Sig", "a\nStorePath: /etc"),
        ("A: B", "x"),
    ] {
        m.info = vec![(k.into(), v.into())];
        assert!(Manifest::decode(&m.encode()).is_err(), "{k}: {v}");
    }
}

/// A sample-like manifest whose root holds `n` empty files.
fn many_files(n: usize, nar_size: u64) -> Manifest {
    let (mut m, _, _) = sample();
    let empty = ContentDigest::of(b"");
    m.root = Node::Directory(
        (0..n)
            .map(|i| refstrip_strip::Entry {
                name: format!("f{i:07}").into_bytes(),
                name_patches: vec![],
                node: Node::File {
                    executable: false,
                    size: 0,
                    digest: empty,
                    patches: vec![],
                },
            })
            .collect(),
    );
    m.nar_size = nar_size;
    m
}

#[test]
fn more_nodes_than_nar_size_holds_are_refused() {
    // The real NAR of 1,000 empty files: the manifest for it decodes, the bound is not too tight.
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.directory(None).unwrap();
    for i in 0..1000 {
        w.file(Some(format!("f{i:07}").as_bytes()), false, 0)
            .unwrap();
    }
    w.end_directory().unwrap();
    w.finish().unwrap();
    let m = many_files(1000, nar.len() as u64);
    assert!(m.max_nodes() >= 1001);
    Manifest::decode(&m.encode()).unwrap();
    // Every entry takes at least 184 NAR bytes.
    assert!(nar.len() as u64 >= 1000 * refstrip_strip::MIN_ENTRY_NAR_BYTES);
    // 200,000 entries for a 128 KB path (issue 17): refused at decode.
    let hostile = many_files(200_000, 128 * 1024);
    let err = Manifest::decode(&hostile.encode()).unwrap_err();
    assert!(err.to_string().contains("tree nodes"), "{err}");
    // And restore on such a manifest value (never decoded) stops at the bound, not at the end.
    let mut store = MemoryStore::default();
    store.objects.insert(ContentDigest::of(b""), Vec::new());
    let mut events = 0u64;
    struct Count<'a>(&'a mut u64);
    impl refstrip_strip::RestoreVisitor for Count<'_> {
        fn event(&mut self, _: &refstrip_nar::Event) -> std::io::Result<()> {
            *self.0 += 1;
            Ok(())
        }
        fn contents(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = refstrip_strip::restore(
        &hostile,
        &mut store,
        std::io::sink(),
        &mut Count(&mut events),
    )
    .unwrap_err();
    assert!(matches!(err, StripError::OverBudget { .. }), "{err}");
    assert!(events <= hostile.max_nodes(), "{events} events");
}

#[test]
fn file_bytes_beyond_nar_size_are_refused_at_decode() {
    let (mut m, _, _) = sample();
    let Node::Directory(entries) = &mut m.root else {
        panic!()
    };
    let Node::File { size, patches, .. } = &mut entries[1].node else {
        panic!()
    };
    *size = 777 << 20;
    patches.clear();
    let err = Manifest::decode(&m.encode()).unwrap_err();
    assert!(err.to_string().contains("NarSize"), "{err}");
}

/// A writer that records how many bytes reached it.
struct Counting(u64);
impl std::io::Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 17's disk fill: a file whose object is one chunk repeated 8,192 times. However the
/// manifest declares it, no more than NarSize bytes ever leave restore.
#[test]
fn restore_never_emits_more_than_nar_size() {
    let (m, _, _) = sample();
    let chunk = vec![b'A'; 64 * 1024];
    let huge: Vec<u8> = chunk.repeat(8192 / 64); // 8 MiB here; the same code path as 8,192 chunks
    let digest = ContentDigest::of(&huge);
    let mut hostile = m.clone();
    let Node::Directory(entries) = &mut hostile.root else {
        panic!()
    };
    entries[1].node = Node::File {
        executable: true,
        size: huge.len() as u64,
        digest,
        patches: vec![],
    };
    let mut store = MemoryStore::default();
    store.objects.insert(digest, huge);
    let mut out = Counting(0);
    let mut seen = 0u64;
    struct Sink<'a>(&'a mut u64);
    impl refstrip_strip::RestoreVisitor for Sink<'_> {
        fn event(&mut self, _: &refstrip_nar::Event) -> std::io::Result<()> {
            Ok(())
        }
        fn contents(&mut self, data: &[u8]) -> std::io::Result<()> {
            *self.0 += data.len() as u64;
            Ok(())
        }
    }
    let err =
        refstrip_strip::restore(&hostile, &mut store, &mut out, &mut Sink(&mut seen)).unwrap_err();
    assert!(
        matches!(err, StripError::OverBudget { limit, .. } if limit == m.nar_size),
        "{err}"
    );
    assert!(out.0 <= m.nar_size, "{} > {}", out.0, m.nar_size);
    assert!(
        seen <= m.nar_size,
        "{seen} content bytes reached the visitor"
    );
    // The decoder refuses the same manifest outright.
    assert!(Manifest::decode(&hostile.encode()).is_err());
}

#[test]
fn deep_trees_past_path_max_are_refused() {
    let (mut m, _, _) = sample();
    let mut node = Node::Symlink {
        target: b"x".to_vec(),
        patches: vec![],
    };
    // 2,100 levels of one-character names: 4,200 bytes of path below the store path.
    for _ in 0..2100 {
        node = Node::Directory(vec![refstrip_strip::Entry {
            name: b"d".to_vec(),
            name_patches: vec![],
            node,
        }]);
    }
    m.root = node;
    m.nar_size = u64::MAX / 2;
    let bytes = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let bytes = m.encode();
            let err = Manifest::decode(&bytes).unwrap_err();
            assert!(err.to_string().contains("PATH_MAX"), "{err}");
            std::mem::forget(m); // dropping a 2,100-deep tree recurses too
            bytes.len()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(bytes > 0);
}
