//! Pack files: many objects in one immutable file.
//!
//! ```text
//! "rspack02"                      8-byte header ("rspack01": no block is filtered)
//! block*                          zstd frames, maybe behind a filter's prefix; each holds the
//!                                 concatenated bytes of ≥1 objects
//! index                           a zstd frame (format below)
//! index_offset u64le, index_len u64le, "rspackix"    24-byte footer
//! ```
//! The index lists every object sorted by (kind, digest): digest (32 bytes), kind, block offset,
//! block compressed length, block decompressed length, offset in block, size (all LEB128 varints
//! but the digest). Small objects share blocks so they compress together (solid compression,
//! close to a compressed NAR); reading one object takes one ranged read of its block. Objects are
//! grouped into blocks by [`Class`] (code, text, compressed data, other), and code blocks go
//! through the x86 branch filter before zstd.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::mpsc;

use refstrip_strip::varint::{put as put_varint, Cursor};
use refstrip_strip::ContentDigest;

use crate::error::CasError;
use crate::files::{ObjectRead, ObjectWrite};
use crate::id::{Kind, ObjectId};

/// Packs written now: blocks may carry a filter (spec §6).
const HEADER: &[u8; 8] = b"rspack02";
/// Packs of the first format, every block a plain zstd frame: still read.
const HEADER_V1: &[u8; 8] = b"rspack01";
/// The first 4 bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
/// A filtered block starts with a zstd *skippable* frame (magic 0x184D2A5E, length 1) whose one
/// byte names the filter. A decoder that skips it hands out filtered bytes, which fail BLAKE3.
const FILTER_MAGIC: [u8; 4] = 0x184D_2A5Eu32.to_le_bytes();
const FILTER_PREFIX_LEN: usize = 9;
const FILTER_X86: u8 = 1;
const FOOTER_MAGIC: &[u8; 8] = b"rspackix";
pub const FOOTER_LEN: u64 = 24;
/// A block is compressed once it holds this many bytes: larger blocks compress better (measured in
/// docs/store.md: 4 MiB is 10 % smaller than 1 MiB on the full corpus) but a client fetching one
/// object reads its whole block.
pub const BLOCK_TARGET: usize = 4 << 20;
/// The zstd level of pack blocks unless told otherwise: with per-class blocks and the x86 filter,
/// level 9 stores 3 % less than level 12 did without them, at 2.4 times its speed (docs/store.md:
/// levels above 9 cost far more time than they save bytes; level 18 and up reach NAR.xz's size at
/// a tenth of the speed).
pub const DEFAULT_LEVEL: i32 = 9;
/// Largest decompressed block a reader accepts, checked before anything is allocated. A block is
/// flushed at [`BLOCK_TARGET`] and objects are at most a 256 KiB chunk, a chunk list (~40 bytes per
/// 64 KiB of file) or an encoded (compressed) manifest, so real blocks stay far below this;
/// [`PackWriter::add`] refuses to write a block above it.
pub const MAX_BLOCK_RAW_LEN: u64 = 256 << 20;
/// Largest compressed index a reader will read into memory.
pub const MAX_INDEX_LEN: u64 = 256 << 20;
/// An index is digests and varints, which zstd cannot shrink much: one that decompresses to more
/// than 16 times its size plus 1 MiB is a bomb, not an index.
const INDEX_MAX_RATIO: u64 = 16;

/// Where one object lives in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub block_offset: u64,
    pub block_len: u64,
    pub block_raw_len: u64,
    pub offset_in_block: u64,
    pub size: u64,
}

impl Location {
    /// Check the lengths a pack index or a record declares before any of them reaches an
    /// allocator: the block within [`MAX_BLOCK_RAW_LEN`], its compressed length within zstd's bound
    /// for that, the object inside the block, and the block inside a pack of `pack_len` bytes.
    pub fn check(&self, pack_len: u64) -> Result<(), &'static str> {
        if self.block_raw_len > MAX_BLOCK_RAW_LEN {
            return Err("block larger than the limit for a block");
        }
        // A filtered block carries its filter's prefix in front of the frame.
        let bound = zstd::zstd_safe::compress_bound(self.block_raw_len as usize) as u64
            + FILTER_PREFIX_LEN as u64;
        if self.block_len > bound {
            return Err("compressed block longer than any zstd frame of its length");
        }
        if self
            .block_offset
            .checked_add(self.block_len)
            .is_none_or(|end| end > pack_len)
        {
            return Err("block lies outside the pack");
        }
        if self
            .offset_in_block
            .checked_add(self.size)
            .is_none_or(|end| end > self.block_raw_len)
        {
            return Err("object lies outside its block");
        }
        Ok(())
    }

    /// Cut this object out of its decompressed block (see [`decode_block`]) and check that its
    /// bytes hash to `id`: the one way readers of any pack source hand out an object.
    pub fn object(&self, id: &ObjectId, block: &[u8]) -> Result<Vec<u8>, CasError> {
        let bytes = self
            .offset_in_block
            .checked_add(self.size)
            .and_then(|end| block.get(self.offset_in_block as usize..end as usize))
            .ok_or_else(|| CasError::Corrupt {
                id: *id,
                why: "object lies outside its block".into(),
            })?
            .to_vec();
        verify(id, &bytes)?;
        Ok(bytes)
    }
}

/// Decompress one block as read from a pack, undo its filter (spec §6) and check it has the length
/// its index entry declares.
///
/// Bounded by the declared length, not by what the frame inflates to: `raw_len` above
/// [`MAX_BLOCK_RAW_LEN`] is refused before allocating, and decompression goes into a buffer of
/// exactly `raw_len` bytes in one shot (no window buffer besides), failing as soon as the frame
/// has more. A bomb declaring 4 MiB that inflates to 1 GiB costs 4 MiB. The filter is one linear
/// pass over that buffer. ([`decode_block_into`] with a reused, larger buffer lets a frame run on
/// to that buffer's capacity before it fails: no more memory, a little more time.)
pub fn decode_block(compressed: &[u8], raw_len: u64) -> io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    decode_block_into(compressed, raw_len, &mut raw)?;
    Ok(raw)
}

/// [`decode_block`] into `raw` (cleared first; its allocation is reused, so a reader that
/// decodes many blocks recycles their buffers instead of having the kernel zero fresh pages).
pub fn decode_block_into(compressed: &[u8], raw_len: u64, raw: &mut Vec<u8>) -> io::Result<()> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if raw_len > MAX_BLOCK_RAW_LEN {
        return Err(invalid("block declares more than the block size limit"));
    }
    let (filter, frame) = match compressed.get(..4) {
        Some(magic) if magic == FILTER_MAGIC => {
            let prefix = compressed
                .get(..FILTER_PREFIX_LEN)
                .ok_or_else(|| invalid("truncated block filter"))?;
            if prefix[4..8] != 1u32.to_le_bytes() {
                return Err(invalid("block filter frame of the wrong length"));
            }
            match prefix[8] {
                FILTER_X86 => (Filter::X86, &compressed[FILTER_PREFIX_LEN..]),
                other => return Err(invalid(&format!("unknown block filter {other}"))),
            }
        }
        _ => (Filter::None, compressed),
    };
    // A frame that does not start with zstd's magic (a second skippable frame, say) is refused
    // rather than handed to a decoder that would skip it.
    if frame.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(invalid("block is not a zstd frame"));
    }
    raw.clear();
    raw.reserve_exact(raw_len as usize);
    // The output buffer's capacity bounds the output: it may be larger than `raw_len` when
    // reused, so the length is checked after.
    DECOMPRESSOR
        .with_borrow_mut(|d| d.decompress_to_buffer(frame, raw))
        .map_err(|e| {
            invalid(&format!(
                "block does not decompress to its declared {raw_len} bytes ({e})"
            ))
        })?;
    if raw.len() as u64 != raw_len {
        return Err(invalid("block has the wrong length"));
    }
    if filter == Filter::X86 {
        crate::filter::decode(raw);
    }
    Ok(())
}

thread_local! {
    /// One decompression context per thread, reused across blocks.
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("a zstd context"));
}

/// Compress one block's concatenated objects: `filter` applied, then one zstd frame at `level`,
/// behind the filter's prefix (spec §6). Reversed by [`decode_block`].
pub fn encode_block(raw: &[u8], filter: Filter, level: i32) -> io::Result<Vec<u8>> {
    match filter {
        Filter::None => zstd::bulk::compress(raw, level),
        Filter::X86 => {
            let mut filtered = raw.to_vec();
            crate::filter::encode(&mut filtered);
            let frame = zstd::bulk::compress(&filtered, level)?;
            let mut out = Vec::with_capacity(FILTER_PREFIX_LEN + frame.len());
            out.extend_from_slice(&FILTER_MAGIC);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.push(FILTER_X86);
            out.extend_from_slice(&frame);
            Ok(out)
        }
    }
}

/// A reversible transform applied to a block's bytes before compression (spec §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    /// x86 branch targets made absolute ([`crate::filter`]).
    X86,
}

/// What kind of bytes an object holds, judged from its first bytes: objects of one class share
/// blocks, so each block gets the filter and level that suit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// An ELF file's start, or a chunk that looks like x86 code.
    Code,
    /// Text: no NUL and few control bytes.
    Text,
    /// Formats that are compressed already (gzip, xz, zstd, bzip2, PNG, JPEG, zip).
    Compressed,
    Other,
}

/// How many leading bytes [`classify`] looks at.
const SNIFF_LEN: usize = 4096;

/// The [`Class`] of an object from its bytes.
pub fn classify(bytes: &[u8]) -> Class {
    const COMPRESSED: &[&[u8]] = &[
        b"\x1f\x8b",
        b"\xfd7zXZ\0",
        b"\x28\xb5\x2f\xfd",
        b"BZh",
        b"\x89PNG",
        b"\xff\xd8\xff",
        b"PK\x03\x04",
    ];
    if bytes.starts_with(b"\x7fELF") {
        return Class::Code;
    }
    if COMPRESSED.iter().any(|m| bytes.starts_with(m)) {
        return Class::Compressed;
    }
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];
    let control = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c))
        .count();
    if !head.contains(&0) && control * 100 <= head.len() {
        return Class::Text;
    }
    // A chunk from the middle of an ELF file: calls with short displacements are frequent.
    let calls = head
        .windows(5)
        .filter(|w| w[0] == 0xE8 && matches!(w[4], 0x00 | 0xFF))
        .count();
    if calls * 200 >= head.len() {
        Class::Code
    } else {
        Class::Other
    }
}

/// The filter and zstd level of a block of `class` in a pack written at `level` (measured in
/// docs/store.md): x86 code gets the branch filter; data that is compressed already gains nothing
/// from effort, so it gets zstd's fastest level.
fn codec(class: Class, level: i32) -> (Filter, i32) {
    match class {
        Class::Code => (Filter::X86, level),
        Class::Compressed => (Filter::None, level.min(1)),
        Class::Text | Class::Other => (Filter::None, level),
    }
}

/// A block still taking objects: one per [`Class`].
struct OpenBlock {
    class: Class,
    bytes: Vec<u8>,
    /// (id, offset in block, size).
    objects: Vec<(ObjectId, u64, u64)>,
}

/// A full block being compressed on the thread pool.
struct InFlight {
    raw_len: u64,
    objects: Vec<(ObjectId, u64, u64)>,
    frame: mpsc::Receiver<io::Result<Vec<u8>>>,
}

/// Writes a pack. Objects are buffered into one open block per [`Class`]; a full block is
/// compressed on rayon's thread pool while more objects arrive, and blocks are written in the
/// order they filled, so one writer keeps every core busy and its output does not depend on
/// thread timing.
pub struct PackWriter<W: Write> {
    w: W,
    level: i32,
    offset: u64,
    open: Vec<OpenBlock>,
    in_flight: VecDeque<InFlight>,
    /// Objects in open or in-flight blocks.
    unwritten: HashSet<ObjectId>,
    index: HashMap<ObjectId, Location>,
    raw_bytes: u64,
}

impl<W: Write> PackWriter<W> {
    pub fn new(mut w: W, level: i32) -> io::Result<Self> {
        w.write_all(HEADER)?;
        Ok(PackWriter {
            w,
            level,
            offset: HEADER.len() as u64,
            open: Vec::new(),
            in_flight: VecDeque::new(),
            unwritten: HashSet::new(),
            index: HashMap::new(),
            raw_bytes: 0,
        })
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.contains_key(id) || self.unwritten.contains(id)
    }

    /// Objects added so far.
    pub fn len(&self) -> usize {
        self.index.len() + self.unwritten.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uncompressed bytes of the objects added so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Compressed bytes written so far (header and blocks written; not those still compressing).
    pub fn written_bytes(&self) -> u64 {
        self.offset
    }

    /// Add an object unless the pack has it already. Returns whether it was added.
    pub fn add(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<bool> {
        if self.contains(&id) {
            return Ok(false);
        }
        // Never write a block readers would refuse.
        if bytes.len() as u64 > MAX_BLOCK_RAW_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "object {id} of {} bytes exceeds the block size limit",
                    bytes.len()
                ),
            ));
        }
        let class = classify(bytes);
        let i = match self.open.iter().position(|b| b.class == class) {
            Some(i) => i,
            None => {
                self.open.push(OpenBlock {
                    class,
                    bytes: Vec::new(),
                    objects: Vec::new(),
                });
                self.open.len() - 1
            }
        };
        if (self.open[i].bytes.len() + bytes.len()) as u64 > MAX_BLOCK_RAW_LEN {
            self.flush_block(i)?;
            return self.add(id, bytes);
        }
        let block = &mut self.open[i];
        block
            .objects
            .push((id, block.bytes.len() as u64, bytes.len() as u64));
        block.bytes.extend_from_slice(bytes);
        self.unwritten.insert(id);
        self.raw_bytes += bytes.len() as u64;
        if self.open[i].bytes.len() >= BLOCK_TARGET {
            self.flush_block(i)?;
        }
        Ok(true)
    }

    /// Close the open blocks now, so that the next objects start blocks of their own (a path's
    /// deltas share blocks only with each other: a client fetching them does not fetch the full
    /// objects they stand in for). In class order, so the output does not depend on which class
    /// came first.
    pub fn end_block(&mut self) -> io::Result<()> {
        self.open.sort_by_key(|b| b.class);
        while !self.open.is_empty() {
            self.flush_block(0)?;
        }
        Ok(())
    }

    /// Send open block `i` to the pool, then write what the pool has finished (waiting while more
    /// blocks are in flight than the pool has threads, which bounds memory).
    fn flush_block(&mut self, i: usize) -> io::Result<()> {
        let OpenBlock {
            class,
            bytes,
            objects,
        } = self.open.swap_remove(i);
        let (filter, level) = codec(class, self.level);
        let (tx, rx) = mpsc::sync_channel(1);
        let raw_len = bytes.len() as u64;
        let job = move || {
            // The receiver is gone only if the writer was dropped unfinished.
            let _ = tx.send(encode_block(&bytes, filter, level));
        };
        // On a pool thread already, waiting for the pool could wait for itself: compress here.
        match rayon::current_thread_index() {
            Some(_) => job(),
            None => rayon::spawn(job),
        }
        self.in_flight.push_back(InFlight {
            raw_len,
            objects,
            frame: rx,
        });
        self.write_finished(rayon::current_num_threads() + 1)
    }

    /// Write finished blocks in order; wait for the oldest while more than `max_in_flight` remain.
    fn write_finished(&mut self, max_in_flight: usize) -> io::Result<()> {
        while let Some(oldest) = self.in_flight.front() {
            let frame = if self.in_flight.len() > max_in_flight {
                oldest.frame.recv().map_err(io::Error::other)?
            } else {
                match oldest.frame.try_recv() {
                    Ok(frame) => frame,
                    Err(mpsc::TryRecvError::Empty) => return Ok(()),
                    Err(e) => return Err(io::Error::other(e)),
                }
            }?;
            let block = self.in_flight.pop_front().expect("the oldest block");
            self.w.write_all(&frame)?;
            for (id, offset_in_block, size) in block.objects {
                self.unwritten.remove(&id);
                self.index.insert(
                    id,
                    Location {
                        block_offset: self.offset,
                        block_len: frame.len() as u64,
                        block_raw_len: block.raw_len,
                        offset_in_block,
                        size,
                    },
                );
            }
            self.offset += frame.len() as u64;
        }
        Ok(())
    }

    /// Write the last blocks, the index and the footer.
    pub fn finish(mut self) -> io::Result<(W, HashMap<ObjectId, Location>)> {
        self.end_block()?;
        self.write_finished(0)?;
        let index = zstd::bulk::compress(&encode_index(&self.index), self.level)?;
        self.w.write_all(&index)?;
        self.w.write_all(&self.offset.to_le_bytes())?;
        self.w.write_all(&(index.len() as u64).to_le_bytes())?;
        self.w.write_all(FOOTER_MAGIC)?;
        self.w.flush()?;
        Ok((self.w, self.index))
    }
}

impl<W: Write> ObjectWrite for PackWriter<W> {
    fn has(&mut self, id: &ObjectId) -> io::Result<bool> {
        Ok(self.contains(id))
    }

    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()> {
        self.add(id, bytes).map(drop)
    }
}

fn encode_index(index: &HashMap<ObjectId, Location>) -> Vec<u8> {
    let mut entries: Vec<_> = index.iter().collect();
    entries.sort_by_key(|(id, _)| **id);
    let mut out = Vec::new();
    put_varint(&mut out, entries.len() as u64);
    for (id, loc) in entries {
        out.extend_from_slice(&id.digest.0);
        for v in [
            id.kind.code(),
            loc.block_offset,
            loc.block_len,
            loc.block_raw_len,
            loc.offset_in_block,
            loc.size,
        ] {
            put_varint(&mut out, v);
        }
    }
    out
}

/// Decode a pack index (the decompressed index frame).
pub fn decode_index(bytes: &[u8], pack_len: u64) -> Result<HashMap<ObjectId, Location>, CasError> {
    let bad = |why: &str| CasError::BadPack(why.to_string());
    let mut cur = Cursor { bytes };
    let count = cur.varint().ok_or_else(|| bad("truncated index"))?;
    if count > cur.bytes.len() as u64 / 33 {
        return Err(bad("index entry count exceeds its size"));
    }
    let mut index = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let digest = cur.take(32).ok_or_else(|| bad("truncated index"))?;
        let digest = ContentDigest(digest.try_into().expect("32 bytes"));
        let mut v = [0u64; 6];
        for slot in &mut v {
            *slot = cur.varint().ok_or_else(|| bad("truncated index"))?;
        }
        let kind = Kind::from_code(v[0]).ok_or_else(|| bad("unknown object kind"))?;
        let loc = Location {
            block_offset: v[1],
            block_len: v[2],
            block_raw_len: v[3],
            offset_in_block: v[4],
            size: v[5],
        };
        loc.check(pack_len)
            .map_err(|why| bad(&format!("index entry: {why}")))?;
        index.insert(ObjectId::new(kind, digest), loc);
    }
    if !cur.bytes.is_empty() {
        return Err(bad("trailing bytes in index"));
    }
    Ok(index)
}

/// Reads objects from a pack held in any seekable reader. Blocks are verified on the way out: an
/// object whose bytes do not hash to its name is reported corrupt, never returned.
pub struct PackReader<R> {
    r: R,
    index: HashMap<ObjectId, Location>,
    /// The last decompressed block, since consecutive objects usually share one.
    cached: Option<(u64, Vec<u8>)>,
}

/// Where a pack of `pack_len` bytes keeps its index, from its last [`FOOTER_LEN`] bytes: the one
/// footer parser, for packs read whole and packs read by ranges alike.
pub fn index_range(footer: &[u8], pack_len: u64) -> Result<(u64, u64), CasError> {
    let bad = |why: &str| CasError::BadPack(why.to_string());
    if pack_len < HEADER.len() as u64 + FOOTER_LEN || footer.len() as u64 != FOOTER_LEN {
        return Err(bad("too short to be a pack"));
    }
    if &footer[16..] != FOOTER_MAGIC {
        return Err(bad("bad footer (truncated pack?)"));
    }
    let index_offset = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    let index_len = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
    if index_offset.checked_add(index_len) != Some(pack_len - FOOTER_LEN) {
        return Err(bad("footer points outside the pack"));
    }
    if index_len > MAX_INDEX_LEN {
        return Err(bad("index larger than the limit for an index"));
    }
    Ok((index_offset, index_len))
}

impl<R: Read + Seek> PackReader<R> {
    pub fn open(mut r: R) -> Result<Self, CasError> {
        let bad = |why: &str| CasError::BadPack(why.to_string());
        let len = r.seek(SeekFrom::End(0))?;
        if len < HEADER.len() as u64 + FOOTER_LEN {
            return Err(bad("too short to be a pack"));
        }
        r.seek(SeekFrom::Start(0))?;
        let mut header = [0u8; 8];
        r.read_exact(&mut header)?;
        if &header != HEADER && &header != HEADER_V1 {
            return Err(bad(
                "bad header (not a refstrip pack, or an unsupported version)",
            ));
        }
        r.seek(SeekFrom::Start(len - FOOTER_LEN))?;
        let mut footer = [0u8; FOOTER_LEN as usize];
        r.read_exact(&mut footer)?;
        let (index_offset, index_len) = index_range(&footer, len)?;
        r.seek(SeekFrom::Start(index_offset))?;
        let mut compressed = vec![0u8; checked_usize(index_len)?];
        r.read_exact(&mut compressed)?;
        let raw = decompress_bounded(&compressed).map_err(|e| bad(&format!("index: {e}")))?;
        let index = decode_index(&raw, index_offset)?;
        Ok(PackReader {
            r,
            index,
            cached: None,
        })
    }

    pub fn index(&self) -> &HashMap<ObjectId, Location> {
        &self.index
    }
}

impl<R: Read + Seek> ObjectRead for PackReader<R> {
    fn get(&mut self, id: &ObjectId) -> Result<Vec<u8>, CasError> {
        let loc = *self.index.get(id).ok_or(CasError::NotFound(*id))?;
        if self.cached.as_ref().map(|(o, _)| *o) != Some(loc.block_offset) {
            self.r.seek(SeekFrom::Start(loc.block_offset))?;
            // The index was checked on open (`Location::check`): block_len is bounded.
            let mut compressed = vec![0u8; checked_usize(loc.block_len)?];
            self.r.read_exact(&mut compressed)?;
            let raw =
                decode_block(&compressed, loc.block_raw_len).map_err(|e| CasError::Corrupt {
                    id: *id,
                    why: e.to_string(),
                })?;
            self.cached = Some((loc.block_offset, raw));
        }
        loc.object(id, &self.cached.as_ref().expect("just cached").1)
    }
}

/// Check that an object's bytes hash to its name.
pub fn verify(id: &ObjectId, bytes: &[u8]) -> Result<(), CasError> {
    // Chunk lists are named after the file they describe, which `FileSource` checks as it reads.
    if id.kind != Kind::ChunkList && ContentDigest::of(bytes) != id.digest {
        return Err(CasError::Corrupt {
            id: *id,
            why: "BLAKE3 of its bytes does not match its name".into(),
        });
    }
    Ok(())
}

/// Decompress a pack index (whose raw length no footer records), refusing output beyond what an
/// index of that compressed size can be: `16 × compressed + 1 MiB` (see `INDEX_MAX_RATIO`), and
/// refusing compressed input above [`MAX_INDEX_LEN`]. Stops reading at the bound + 1 byte.
pub fn decompress_bounded(compressed: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if compressed.len() as u64 > MAX_INDEX_LEN {
        return Err(invalid("index larger than the limit for an index".into()));
    }
    let limit = compressed.len() as u64 * INDEX_MAX_RATIO + (1 << 20);
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)?
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(invalid(format!(
            "a {}-byte index decompresses to more than {limit} bytes",
            compressed.len()
        )));
    }
    Ok(out)
}

/// A length that is about to size a buffer, as `usize`, or an error (32-bit hosts).
fn checked_usize(len: u64) -> io::Result<usize> {
    usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "length does not fit in memory"))
}
