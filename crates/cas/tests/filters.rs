//! Block classes and the x86 filter (spec §6): objects of each class share blocks, code blocks
//! are filtered, packs come out the same whatever the thread timing, first-format packs still
//! read, and hostile filter prefixes are refused.

use std::collections::HashMap;
use std::io::Cursor;

use proptest::prelude::*;
use refstrip_cas::pack::{
    classify, decode_block, encode_block, Class, Filter, PackReader, PackWriter,
};
use refstrip_cas::{ObjectId, ObjectRead};

/// Something like x86-64 code: calls to a few targets from everywhere, inside an ELF file.
fn code(n: usize, seed: u32) -> Vec<u8> {
    let mut out = b"\x7fELF\x02\x01\x01".to_vec();
    let mut x = seed | 1;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let target = 4096 * (x % 8) as i64;
        let rel = (target - (out.len() as i64 + 5)) as i32;
        out.push(0xE8);
        out.extend_from_slice(&rel.to_le_bytes());
        out.extend_from_slice(&[0x48, 0x89, 0xC7, (x >> 8) as u8]);
    }
    out.truncate(n);
    out
}

fn text(n: usize, seed: u32) -> Vec<u8> {
    format!("line {seed} of some text\n")
        .repeat(n / 20 + 1)
        .into_bytes()[..n]
        .to_vec()
}

fn gzip_like(n: usize, seed: u32) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0];
    out.extend((0..n as u32).map(|i| (i.wrapping_mul(seed | 1) >> 3) as u8));
    out
}

fn pack_of(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    for o in objects {
        w.add(ObjectId::blob(o), o).unwrap();
    }
    w.finish().unwrap().0
}

#[test]
fn classes_are_recognized() {
    assert_eq!(classify(&code(10_000, 1)), Class::Code);
    // A chunk from the middle of code, without the ELF header.
    assert_eq!(classify(&code(10_000, 1)[5000..]), Class::Code);
    assert_eq!(classify(&text(10_000, 1)), Class::Text);
    assert_eq!(classify(&gzip_like(10_000, 1)), Class::Compressed);
    assert_eq!(classify(&[0u8; 100]), Class::Other);
    assert_eq!(classify(b""), Class::Text);
}

#[test]
fn each_class_gets_its_own_blocks_and_code_blocks_are_filtered() {
    let objects: Vec<Vec<u8>> = (0..30)
        .map(|i| match i % 3 {
            0 => code(20_000, i),
            1 => text(20_000, i),
            _ => gzip_like(20_000, i),
        })
        .collect();
    let pack = pack_of(&objects);
    let mut r = PackReader::open(Cursor::new(pack.clone())).unwrap();
    let mut class_of_block: HashMap<u64, Class> = HashMap::new();
    for o in &objects {
        let id = ObjectId::blob(o);
        assert_eq!(&r.get(&id).unwrap(), o);
        let loc = r.index()[&id];
        let class = *class_of_block
            .entry(loc.block_offset)
            .or_insert(classify(o));
        assert_eq!(class, classify(o), "one class per block");
        let block = &pack[loc.block_offset as usize..][..4];
        let filtered = block == 0x184D_2A5Eu32.to_le_bytes();
        assert_eq!(filtered, class == Class::Code, "{class:?}");
    }
    assert_eq!(class_of_block.len(), 3);
    // Filtering pays: the same code compresses better filtered than not.
    let raw: Vec<u8> = objects.iter().step_by(3).flatten().copied().collect();
    let plain = encode_block(&raw, Filter::None, 3).unwrap().len();
    let x86 = encode_block(&raw, Filter::X86, 3).unwrap().len();
    assert!(x86 < plain, "filtered {x86} vs plain {plain}");
}

#[test]
fn packs_do_not_depend_on_thread_timing() {
    // Many blocks in flight on the pool at once; the pack is the same bytes every time.
    let objects: Vec<Vec<u8>> = (0..40)
        .map(|i| match i % 2 {
            0 => code(300_000, i),
            _ => text(300_000, i),
        })
        .collect();
    let first = pack_of(&objects);
    for _ in 0..3 {
        assert_eq!(pack_of(&objects), first);
    }
}

#[test]
fn first_format_packs_still_read() {
    // Without code, no block is filtered: the same bytes under the first header are a first-format
    // pack (tests/format2.rs restores a whole store of them).
    let objects = vec![text(5000, 1), gzip_like(3000, 2)];
    let mut pack = pack_of(&objects);
    assert_eq!(&pack[..8], b"rspack02");
    pack[..8].copy_from_slice(b"rspack01");
    let mut r = PackReader::open(Cursor::new(pack)).unwrap();
    for o in &objects {
        assert_eq!(&r.get(&ObjectId::blob(o)).unwrap(), o);
    }
}

#[test]
fn hostile_filter_prefixes_are_refused() {
    let raw = code(10_000, 7);
    let good = encode_block(&raw, Filter::X86, 3).unwrap();
    assert_eq!(decode_block(&good, raw.len() as u64).unwrap(), raw);
    let frame = &good[9..];
    let prefix = |len: u32, id: u8| {
        let mut b = 0x184D_2A5Eu32.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.push(id);
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown filter", [prefix(1, 2), frame.to_vec()].concat()),
        ("filter 0", [prefix(1, 0), frame.to_vec()].concat()),
        (
            "prefix of length 2",
            [prefix(2, 1), vec![0], frame.to_vec()].concat(),
        ),
        ("truncated prefix", good[..6].to_vec()),
        ("prefix alone", good[..9].to_vec()),
        ("two prefixes", [prefix(1, 1), good.clone()].concat()),
        (
            "garbage after the prefix",
            [prefix(1, 1), vec![0; 64]].concat(),
        ),
        // Another skippable frame, which libzstd itself would skip.
        (
            "other skippable frame",
            [
                0x184D_2A50u32.to_le_bytes().to_vec(),
                vec![0; 4],
                frame.to_vec(),
            ]
            .concat(),
        ),
    ];
    for (what, block) in cases {
        assert!(decode_block(&block, raw.len() as u64).is_err(), "{what}");
    }
    // The filtered frame without its prefix is a valid zstd frame of the wrong bytes: decoding
    // succeeds, and the object check (BLAKE3) is what refuses them.
    assert_ne!(decode_block(frame, raw.len() as u64).unwrap(), raw);
}

fn any_object() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (1usize..40_000, any::<u32>()).prop_map(|(n, s)| code(n, s)),
        (1usize..40_000, any::<u32>()).prop_map(|(n, s)| text(n, s)),
        prop::collection::vec(
            prop_oneof![Just(0xE8u8), Just(0xFF), Just(0), any::<u8>()],
            0..5000
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_objects_round_trip_through_a_pack(objects in prop::collection::vec(any_object(), 1..20)) {
        let pack = pack_of(&objects);
        let mut r = PackReader::open(Cursor::new(pack)).unwrap();
        for o in &objects {
            prop_assert_eq!(&r.get(&ObjectId::blob(o)).unwrap(), o);
        }
    }

    #[test]
    fn filtered_blocks_round_trip(raw in prop::collection::vec(
        prop_oneof![Just(0xE8u8), Just(0xE9), Just(0xFF), Just(0), any::<u8>()], 0..20_000)) {
        let block = encode_block(&raw, Filter::X86, 1).unwrap();
        prop_assert_eq!(decode_block(&block, raw.len() as u64).unwrap(), raw);
    }
}
