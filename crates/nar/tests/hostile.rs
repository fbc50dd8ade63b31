//! Malformed and hostile archives: every one must give a typed error (never a panic, never a huge
//! allocation), and `unpack` must leave nothing behind.

use refstrip_nar::{unpack, NarError, NarReader, NarWriter};

/// One NAR string: u64 LE length, bytes, zero padding to 8.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(bytes);
    v.resize(v.len() + (8 - bytes.len() % 8) % 8, 0);
    v
}

fn tokens(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| s(p)).collect()
}

/// A directory NAR with the given (name, file contents) entries, written by hand so that invalid
/// names and orders can be expressed.
fn dir_nar(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut v = tokens(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    for (name, contents) in entries {
        v.extend(tokens(&[
            b"entry",
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
        ]));
        v.extend(s(contents));
        v.extend(tokens(&[b")", b")"]));
    }
    v.extend(s(b")"));
    v
}

fn read_all(nar: &[u8]) -> Result<usize, NarError> {
    let mut r = NarReader::new(nar);
    let mut events = 0;
    while r.next_event()?.is_some() {
        events += 1;
    }
    Ok(events)
}

fn sample() -> Vec<u8> {
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.directory(None).unwrap();
    w.file(Some(b"a"), true, 3).unwrap();
    w.write_contents(b"abc").unwrap();
    w.directory(Some(b"d")).unwrap();
    w.symlink(Some(b"l"), b"../a").unwrap();
    w.file(Some(b"z"), false, 0).unwrap();
    w.end_directory().unwrap();
    w.end_directory().unwrap();
    w.finish().unwrap();
    nar
}

#[test]
fn well_formed_sample_reads() {
    assert_eq!(read_all(&sample()).unwrap(), 7);
    assert_eq!(read_all(&dir_nar(&[(b"a", b"x"), (b"b", b"")])).unwrap(), 4);
}

#[test]
fn bad_magic() {
    let mut nar = sample();
    nar[8] = b'N';
    assert!(matches!(read_all(&nar), Err(NarError::BadMagic)));
    assert!(matches!(
        read_all(&tokens(&[b"nix-archive-2"])),
        Err(NarError::BadMagic)
    ));
    assert!(matches!(read_all(&s(&[0u8; 100])), Err(NarError::BadMagic)));
}

#[test]
fn every_truncation_is_an_error() {
    let nar = sample();
    for len in 0..nar.len() {
        match read_all(&nar[..len]) {
            Err(NarError::Truncated { offset }) => assert!(offset <= len as u64),
            other => panic!("prefix of {len} bytes: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn non_zero_padding() {
    // The file "a" holds 3 bytes, so 5 padding bytes follow them.
    let mut nar = sample();
    let at = nar.windows(3).position(|w| w == b"abc").unwrap() + 3;
    nar[at + 2] = 1;
    assert!(matches!(
        read_all(&nar),
        Err(NarError::NonZeroPadding { .. })
    ));
    // Padding of a keyword.
    let mut nar = sample();
    nar[8 + 13] = 7;
    assert!(matches!(
        read_all(&nar),
        Err(NarError::NonZeroPadding { .. })
    ));
}

#[test]
fn hostile_entry_names() {
    for name in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
        let err = read_all(&dir_nar(&[(name, b"x")])).unwrap_err();
        assert!(matches!(err, NarError::BadName { .. }), "{name:?}: {err:?}");
    }
}

#[test]
fn duplicate_and_unsorted_entries() {
    let err = read_all(&dir_nar(&[(b"a", b"1"), (b"a", b"2")])).unwrap_err();
    assert!(matches!(err, NarError::Unsorted { .. }), "{err:?}");
    let err = read_all(&dir_nar(&[(b"b", b""), (b"a", b"")])).unwrap_err();
    assert!(matches!(err, NarError::Unsorted { .. }), "{err:?}");
    // Bytewise order: "B" (0x42) sorts before "a" (0x61), and "a" before "a0".
    assert!(read_all(&dir_nar(&[(b"B", b""), (b"a", b""), (b"a0", b"")])).is_ok());
}

#[test]
fn absurd_lengths_do_not_allocate() {
    // A name claiming u64::MAX bytes.
    let mut v = tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
    ]);
    v.extend(u64::MAX.to_le_bytes());
    assert!(matches!(read_all(&v), Err(NarError::TooLong { .. })));
    // A symlink target claiming 2^40 bytes.
    let mut v = tokens(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]);
    v.extend((1u64 << 40).to_le_bytes());
    assert!(matches!(read_all(&v), Err(NarError::TooLong { .. })));
    // A keyword position holding a long string.
    let mut v = tokens(&[b"nix-archive-1", b"("]);
    v.extend((1u64 << 62).to_le_bytes());
    assert!(matches!(
        read_all(&v),
        Err(NarError::UnexpectedToken { .. })
    ));
    // A file claiming 2^62 bytes of contents is merely truncated (contents are streamed).
    let mut v = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    v.extend((1u64 << 62).to_le_bytes());
    v.extend(b"some");
    assert!(matches!(read_all(&v), Err(NarError::Truncated { .. })));
}

#[test]
fn wrong_tokens() {
    let v = tokens(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]);
    assert!(matches!(
        read_all(&v),
        Err(NarError::UnexpectedToken { .. })
    ));
    let v = tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"executable",
        b"x",
        b"contents",
    ]);
    assert!(matches!(
        read_all(&v),
        Err(NarError::UnexpectedToken { .. })
    ));
    let v = tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"nam",
    ]);
    assert!(matches!(
        read_all(&v),
        Err(NarError::UnexpectedToken { .. })
    ));
}

#[test]
fn excessive_nesting_is_bounded() {
    let mut v = tokens(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    for _ in 0..refstrip_nar::MAX_DEPTH + 1 {
        v.extend(tokens(&[
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
            b"(",
            b"type",
            b"directory",
        ]));
    }
    assert!(matches!(read_all(&v), Err(NarError::TooDeep { .. })));
}

#[test]
fn writer_refuses_invalid_archives() {
    let mut w = NarWriter::new(Vec::new());
    w.directory(None).unwrap();
    w.file(Some(b"b"), false, 0).unwrap();
    assert!(matches!(
        w.file(Some(b"a"), false, 0),
        Err(NarError::Unsorted { .. })
    ));
    assert!(matches!(
        w.file(Some(b".."), false, 0),
        Err(NarError::BadName { .. })
    ));
    assert!(matches!(w.file(None, false, 0), Err(NarError::Misuse(_))));
    w.file(Some(b"c"), false, 2).unwrap();
    assert!(matches!(
        w.write_contents(b"xyz"),
        Err(NarError::SizeMismatch { .. })
    ));
    assert!(matches!(w.end_directory(), Err(NarError::Misuse(_))));

    let mut w = NarWriter::new(Vec::new());
    w.file(None, false, 4).unwrap();
    w.write_contents(b"ab").unwrap();
    assert!(matches!(
        w.finish(),
        Err(NarError::SizeMismatch {
            declared: 4,
            written: 2
        })
    ));
}

/// A symlink named `a` pointing outside, followed by a second `a` trying to write through it: the
/// reader rejects the duplicate, and unpack removes everything it had made.
#[test]
fn symlink_write_through_is_impossible() {
    let outside = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut v = tokens(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    v.extend(tokens(&[
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target",
    ]));
    v.extend(s(outside.path().to_str().unwrap().as_bytes()));
    v.extend(tokens(&[b")", b")"]));
    v.extend(tokens(&[
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
        b"(",
        b"type",
        b"directory",
    ]));
    v.extend(tokens(&[
        b"entry",
        b"(",
        b"name",
        b"evil",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
    ]));
    v.extend(s(b"pwned"));
    v.extend(tokens(&[b")", b")", b")", b")", b")"]));

    let dest = work.path().join("out");
    let err = unpack(&mut NarReader::new(&v[..]), &dest).unwrap_err();
    assert!(matches!(err, NarError::Unsorted { .. }), "{err:?}");
    assert!(!outside.path().join("evil").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "unpack left debris behind"
    );
}

#[test]
fn unpack_refuses_existing_destination_and_cleans_up_on_error() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let err = unpack(&mut NarReader::new(&sample()[..]), &dest).unwrap_err();
    assert!(matches!(err, NarError::DestinationExists { .. }));
    std::fs::remove_dir(&dest).unwrap();

    let nar = sample();
    for len in [40, nar.len() / 2, nar.len() - 1] {
        assert!(unpack(&mut NarReader::new(&nar[..len]), &dest).is_err());
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            0,
            "debris after a {len}-byte prefix"
        );
    }
    unpack(&mut NarReader::new(&nar[..]), &dest).unwrap();
    assert_eq!(
        std::fs::read_link(dest.join("d/l")).unwrap().to_str(),
        Some("../a")
    );
}

/// Issue 17: unpack used the fixed temp name `.DEST.refstrip-unpack-PID` and removed whatever was
/// there on failure. Directories (and a symlink to one) at that name and at likely next names must
/// survive a failed and a successful unpack, and unpack must leave nothing else behind.
#[test]
fn unpack_never_removes_what_it_did_not_create() {
    let work = tempfile::tempdir().unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    std::fs::write(victim_dir.path().join("keep"), b"x").unwrap();
    let pid = std::process::id();
    let mut planted = vec![format!(".out.refstrip-unpack-{pid}")];
    planted.extend((0..4).map(|n| format!(".out.refstrip-unpack-{pid}-{n}")));
    for name in &planted {
        std::fs::create_dir(work.path().join(name)).unwrap();
        std::fs::write(work.path().join(name).join("keep"), b"x").unwrap();
    }
    std::os::unix::fs::symlink(
        victim_dir.path(),
        work.path().join(format!(".out.refstrip-unpack-{pid}-link")),
    )
    .unwrap();
    let dest = work.path().join("out");
    let nar = sample();
    assert!(unpack(&mut NarReader::new(&nar[..nar.len() / 2]), &dest).is_err());
    unpack(&mut NarReader::new(&nar[..]), &dest).unwrap();
    for name in &planted {
        assert!(
            work.path().join(name).join("keep").exists(),
            "{name} was touched"
        );
    }
    assert!(victim_dir.path().join("keep").exists());
    // Only what was planted, the link and the result remain.
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        planted.len() + 2
    );
}

/// An I/O error names the file once; the cause is not repeated in a source chain.
#[test]
fn io_errors_name_the_file_and_say_the_cause_once() {
    let work = tempfile::tempdir().unwrap();
    let err = unpack(
        &mut NarReader::new(&sample()[..]),
        &work.path().join("missing-parent/out"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("missing-parent"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    let mut chain = String::new();
    let mut e: Option<&dyn std::error::Error> = Some(&err);
    while let Some(x) = e {
        chain.push_str(&x.to_string());
        e = x.source();
    }
    assert_eq!(
        chain.matches("No such file or directory").count(),
        1,
        "{chain}"
    );
}
