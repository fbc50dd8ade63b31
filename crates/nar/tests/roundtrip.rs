//! Property tests: any tree the writer accepts reads back as the same events, re-encodes to the same
//! bytes, and survives unpack → dump unchanged.

use proptest::prelude::*;
use refstrip_nar::{copy, dump, unpack, Event, NarReader, NarWriter};

#[derive(Debug, Clone)]
enum Node {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(std::collections::BTreeMap<Vec<u8>, Node>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(executable, contents)| Node::File {
                executable,
                contents
            }),
        proptest::collection::vec(1u8..=255, 1..40).prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map(name(), inner, 0..6).prop_map(Node::Dir)
    })
}

fn write(
    node: &Node,
    name: Option<&[u8]>,
    w: &mut NarWriter<&mut Vec<u8>>,
    events: &mut Vec<Event>,
) {
    let owned = name.map(<[u8]>::to_vec);
    match node {
        Node::File {
            executable,
            contents,
        } => {
            w.file(name, *executable, contents.len() as u64).unwrap();
            // Split writes to exercise partial contents.
            for chunk in contents.chunks(7) {
                w.write_contents(chunk).unwrap();
            }
            events.push(Event::File {
                name: owned,
                executable: *executable,
                size: contents.len() as u64,
            });
        }
        Node::Symlink(target) => {
            w.symlink(name, target).unwrap();
            events.push(Event::Symlink {
                name: owned,
                target: target.clone(),
            });
        }
        Node::Dir(entries) => {
            w.directory(name).unwrap();
            events.push(Event::Directory { name: owned });
            for (n, child) in entries {
                write(child, Some(n), w, events);
            }
            w.end_directory().unwrap();
            events.push(Event::EndDirectory);
        }
    }
}

proptest! {
    #[test]
    fn write_read_copy(root in node()) {
        let mut nar = Vec::new();
        let mut expected = Vec::new();
        let mut w = NarWriter::new(&mut nar);
        write(&root, None, &mut w, &mut expected);
        w.finish().unwrap();
        prop_assert_eq!(nar.len() % 8, 0);

        // Small buffer so reads straddle the reader's internal buffer boundaries.
        let mut r = NarReader::new(std::io::BufReader::with_capacity(16, &nar[..]));
        let mut seen = Vec::new();
        let mut contents = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            if let Event::File { .. } = e {
                std::io::Read::read_to_end(&mut r.contents(), &mut contents).unwrap();
            }
            seen.push(e);
        }
        prop_assert_eq!(&seen, &expected);
        prop_assert_eq!(r.offset(), nar.len() as u64);

        let mut again = Vec::new();
        let mut w = NarWriter::new(&mut again);
        copy(&mut NarReader::new(&nar[..]), &mut w).unwrap();
        w.finish().unwrap();
        prop_assert_eq!(&again, &nar);
    }

    #[test]
    fn unpack_then_dump_is_identity(root in node()) {
        let mut nar = Vec::new();
        write(&root, None, &mut NarWriter::new(&mut nar), &mut Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t");
        unpack(&mut NarReader::new(&nar[..]), &dest).unwrap();
        let mut redumped = Vec::new();
        dump(&dest, &mut redumped).unwrap();
        prop_assert_eq!(redumped, nar);
    }
}
