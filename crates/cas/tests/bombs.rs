//! Issue 17: no length read from a pack reaches an allocator unchecked, and a zstd bomb costs what
//! its block declares, not what it inflates to. Memory is measured with a counting allocator
//! (per thread, so parallel tests do not disturb each other).

// A counting global allocator (the only way to measure what a decoder allocates) is unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read, Write};

use refstrip_cas::pack::{
    decode_block, decode_block_into, decompress_bounded, PackReader, PackWriter, MAX_BLOCK_RAW_LEN,
};
use refstrip_cas::{CasError, ObjectId, ObjectRead};
use refstrip_strip::varint::put;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            l.set(l.get() + layout.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated on this thread while `f` runs, above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// A zstd frame of `n` zero bytes, compressed as a stream (`pledged`: with the content size in
/// the frame header, as `bulk::compress` writes it; without, as a streaming encoder may).
fn zeros_frame(n: u64, pledged: bool) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    if pledged {
        enc.set_pledged_src_size(Some(n)).unwrap();
    }
    io::copy(&mut io::repeat(0).take(n), &mut enc).unwrap();
    enc.finish().unwrap()
}

const MIB: usize = 1 << 20;

#[test]
fn a_1_gib_bomb_declaring_4_mib_costs_about_4_mib() {
    for pledged in [false, true] {
        let bomb = zeros_frame(1 << 30, pledged);
        assert!(bomb.len() < MIB, "a {}-byte bomb", bomb.len());
        let start = std::time::Instant::now();
        let (result, peak) = peak_during(|| decode_block(&bomb, 4 << 20));
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            peak <= 4 * MIB + 64 * 1024,
            "pledged {pledged}: peak {peak} bytes"
        );
        // Inflating all of it would take seconds; stopping at 4 MiB takes milliseconds.
        assert!(start.elapsed().as_millis() < 1000, "{:?}", start.elapsed());
    }
    // The same frame with its true length decodes (the bound is not the only thing refusing).
    let ok = zeros_frame(4 << 20, false);
    assert_eq!(decode_block(&ok, 4 << 20).unwrap(), vec![0u8; 4 << 20]);
    assert!(decode_block(&ok, (4 << 20) - 1).is_err());
    assert!(decode_block(&ok, (4 << 20) + 1).is_err());
}

#[test]
fn a_bomb_behind_a_filter_prefix_costs_the_same() {
    // The x86 filter's prefix (spec §6) in front of a 1 GiB bomb declaring 4 MiB.
    let mut block = 0x184D_2A5Eu32.to_le_bytes().to_vec();
    block.extend_from_slice(&1u32.to_le_bytes());
    block.push(1);
    block.extend(zeros_frame(1 << 30, false));
    let (result, peak) = peak_during(|| decode_block(&block, 4 << 20));
    assert!(result.is_err());
    assert!(peak <= 4 * MIB + 64 * 1024, "peak {peak} bytes");
}

#[test]
fn absurd_declared_lengths_are_refused_before_allocating() {
    let frame = zeros_frame(16, false);
    for raw_len in [MAX_BLOCK_RAW_LEN + 1, 1 << 40, 1 << 63, u64::MAX] {
        let (result, peak) = peak_during(|| decode_block(&frame, raw_len));
        assert!(result.is_err(), "{raw_len}");
        assert!(peak < 64 * 1024, "{raw_len}: {peak} bytes allocated");
    }
}

#[test]
fn index_bombs_are_refused() {
    // 64 MiB of zeros compress to a few KiB: no real index has that ratio.
    let bomb = zeros_frame(64 << 20, false);
    let (result, peak) = peak_during(|| decompress_bounded(&bomb));
    assert!(result.is_err());
    assert!(peak < 4 * MIB, "peak {peak}");
    // A real index still decodes.
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    for i in 0..2000u32 {
        let o = i.to_le_bytes().repeat(10);
        w.add(ObjectId::blob(&o), &o).unwrap();
    }
    let (pack, _) = w.finish().unwrap();
    assert_eq!(
        PackReader::open(Cursor::new(pack)).unwrap().index().len(),
        2000
    );
}

/// A pack whose only index entry says `block_len`/`block_raw_len`, built from the documented
/// format: header, one real block, index frame, footer.
fn pack_with_entry(block_len: u64, block_raw_len: u64) -> (Vec<u8>, ObjectId) {
    let object = b"hello".to_vec();
    let id = ObjectId::blob(&object);
    let block = zstd::bulk::compress(&object, 3).unwrap();
    let mut pack = b"rspack01".to_vec();
    pack.extend_from_slice(&block);
    let mut index = Vec::new();
    put(&mut index, 1);
    index.extend_from_slice(&id.digest.0);
    for v in [
        id.kind.code(),
        8,
        block_len,
        block_raw_len,
        0,
        object.len() as u64,
    ] {
        put(&mut index, v);
    }
    let index_offset = pack.len() as u64;
    let index = zstd::bulk::compress(&index, 3).unwrap();
    pack.extend_from_slice(&index);
    pack.write_all(&index_offset.to_le_bytes()).unwrap();
    pack.write_all(&(index.len() as u64).to_le_bytes()).unwrap();
    pack.extend_from_slice(b"rspackix");
    (pack, id)
}

#[test]
fn hostile_index_lengths_never_reach_the_allocator() {
    let real = zstd::bulk::compress(b"hello", 3).unwrap().len() as u64;
    let (pack, id) = pack_with_entry(real, 5);
    assert_eq!(
        PackReader::open(Cursor::new(pack))
            .unwrap()
            .get(&id)
            .unwrap(),
        b"hello"
    );
    // Issue 17: block_len 2^40 aborted on a 1 TiB allocation, 2^63 panicked ("capacity overflow").
    for (block_len, raw_len) in [
        (1 << 40, 5),
        (1 << 63, 5),
        (u64::MAX, 5),
        (real, 1 << 40),
        (real, u64::MAX),
    ] {
        let (pack, _) = pack_with_entry(block_len, raw_len);
        let (result, peak) = peak_during(|| PackReader::open(Cursor::new(pack)).map(drop));
        assert!(
            matches!(result, Err(CasError::BadPack(_))),
            "{block_len} {raw_len}: {result:?}"
        );
        assert!(peak < 4 * MIB, "{block_len} {raw_len}: {peak} bytes");
    }
    // A declared raw length that is in range but wrong is caught when the block is read.
    let (pack, id) = pack_with_entry(real, 6);
    let mut r = PackReader::open(Cursor::new(pack)).unwrap();
    assert!(matches!(r.get(&id), Err(CasError::Corrupt { .. })));
}

#[test]
fn writer_never_writes_a_block_readers_refuse() {
    let mut w = PackWriter::new(io::sink(), 1).unwrap();
    let big = vec![7u8; MAX_BLOCK_RAW_LEN as usize + 1];
    assert!(w.add(ObjectId::blob(&big), &big).is_err());
}

/// A chunk list whose sizes overflow u64 (or exceed a chunk's maximum) is corrupt, not a panic
/// in debug builds or a wrapped total that passes the size check in release.
#[test]
fn chunk_lists_with_overflowing_sizes_are_corrupt() {
    use refstrip_cas::{FileSource, Kind, CHUNK_THRESHOLD};
    use refstrip_strip::{ContentDigest, ContentSource};

    struct One(ObjectId, Vec<u8>);
    impl ObjectRead for One {
        fn get(&mut self, id: &ObjectId) -> Result<Vec<u8>, CasError> {
            if *id == self.0 {
                Ok(self.1.clone())
            } else {
                Err(CasError::NotFound(*id))
            }
        }
    }
    let file = ContentDigest([9; 32]);
    let size = CHUNK_THRESHOLD as u64 + 1;
    // Two chunks whose sizes wrap around to `size`, and one chunk larger than CHUNK_MAX.
    for sizes in [vec![u64::MAX, size + 1], vec![size]] {
        let mut list = Vec::new();
        put(&mut list, sizes.len() as u64);
        for s in &sizes {
            list.extend_from_slice(&[1; 32]);
            put(&mut list, *s);
        }
        let mut store = One(ObjectId::new(Kind::ChunkList, file), list);
        let err = FileSource::new(&mut store)
            .open(&file, size)
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("chunk sizes"), "{sizes:?}: {err}");
    }
}

#[test]
fn a_reused_buffer_bounds_a_bomb_by_its_capacity_and_yields_exact_blocks() {
    // A reader recycles block buffers: one larger than the next block's declared length must not
    // let that block decode to more than it declares, nor keep bytes of the block before.
    let mut buffer = Vec::new();
    decode_block_into(&zeros_frame(8 << 20, false), 8 << 20, &mut buffer).unwrap();
    assert_eq!(buffer.len(), 8 << 20);
    let bomb = zeros_frame(1 << 30, true);
    let err = decode_block_into(&bomb, 4 << 20, &mut buffer).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(
        buffer.capacity() < 16 * MIB,
        "grew to {}",
        buffer.capacity()
    );
    let small = zstd::bulk::compress(b"one small block", 3).unwrap();
    decode_block_into(&small, 15, &mut buffer).unwrap();
    assert_eq!(buffer, b"one small block");
    assert!(decode_block_into(&zeros_frame(4 << 20, false), (4 << 20) - 1, &mut buffer).is_err());
}

#[test]
fn a_chunk_list_is_taken_only_if_its_sizes_make_the_file_exactly() {
    use refstrip_cas::{chunk_list_of, chunks_of_file, CHUNK_MAX};
    let file: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let list = chunk_list_of(&file);
    let chunks = chunks_of_file(&list, file.len() as u64).unwrap();
    assert_eq!(chunks.iter().map(|c| c.1).sum::<u64>(), file.len() as u64);
    assert!(chunks_of_file(&list, file.len() as u64 + 1).is_err());
    assert!(chunks_of_file(&list[..list.len() - 1], file.len() as u64).is_err());
    // Hand-made lists: a chunk over the limit, and sizes whose sum wraps around to the size.
    let made = |sizes: &[u64]| {
        let mut list = Vec::new();
        put(&mut list, sizes.len() as u64);
        for &s in sizes {
            list.extend_from_slice(&[7u8; 32]);
            put(&mut list, s);
        }
        list
    };
    let over = CHUNK_MAX as u64 + 1;
    assert!(chunks_of_file(&made(&[over]), over).is_err());
    assert!(chunks_of_file(&made(&[u64::MAX, 11]), 10).is_err());
    assert_eq!(chunks_of_file(&made(&[5, 6]), 11).unwrap().len(), 2);
}
