//! Pack files: many objects in one immutable file.
//!
//! ```text
//! "rspack01"                      8-byte header
//! block*                          zstd frames; each holds the concatenated bytes of ≥1 objects
//! index                           a zstd frame (format below)
//! index_offset u64le, index_len u64le, "rspackix"    24-byte footer
//! ```
//! The index lists every object sorted by (kind, digest): digest (32 bytes), kind, block offset,
//! block compressed length, block decompressed length, offset in block, size (all LEB128 varints
//! but the digest). Small objects share blocks so they compress together (solid compression,
//! close to a compressed NAR); reading one object takes one ranged read of its block.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use refstrip_strip::varint::{put as put_varint, Cursor};
use refstrip_strip::ContentDigest;

use crate::error::CasError;
use crate::files::{ObjectRead, ObjectWrite};
use crate::id::{Kind, ObjectId};

const HEADER: &[u8; 8] = b"rspack01";
const FOOTER_MAGIC: &[u8; 8] = b"rspackix";
pub const FOOTER_LEN: u64 = 24;
/// A block is compressed once it holds this many bytes: larger blocks compress better (measured in
/// docs/store.md: 4 MiB is 10 % smaller than 1 MiB on the full corpus) but a client fetching one
/// object reads its whole block.
pub const BLOCK_TARGET: usize = 4 << 20;
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
        let bound = zstd::zstd_safe::compress_bound(self.block_raw_len as usize) as u64;
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

/// Decompress one block as read from a pack and check it has the length its index entry declares.
///
/// Bounded by the declared length, not by what the frame inflates to: `raw_len` above
/// [`MAX_BLOCK_RAW_LEN`] is refused before allocating, and decompression goes into a buffer of
/// exactly `raw_len` bytes in one shot (no window buffer besides), failing as soon as the frame
/// has more. A bomb declaring 4 MiB that inflates to 1 GiB costs 4 MiB.
pub fn decode_block(compressed: &[u8], raw_len: u64) -> io::Result<Vec<u8>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if raw_len > MAX_BLOCK_RAW_LEN {
        return Err(invalid("block declares more than the block size limit"));
    }
    let raw = zstd::bulk::decompress(compressed, raw_len as usize).map_err(|e| {
        invalid(&format!(
            "block does not decompress to its declared {raw_len} bytes ({e})"
        ))
    })?;
    if raw.len() as u64 != raw_len {
        return Err(invalid("block has the wrong length"));
    }
    Ok(raw)
}

/// Writes a pack: objects are buffered into the current block, compressed block by block.
pub struct PackWriter<W: Write> {
    w: W,
    level: i32,
    offset: u64,
    block: Vec<u8>,
    /// Objects in the current, not yet written block: (id, offset in block, size).
    pending: Vec<(ObjectId, u64, u64)>,
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
            block: Vec::new(),
            pending: Vec::new(),
            index: HashMap::new(),
            raw_bytes: 0,
        })
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.contains_key(id) || self.pending.iter().any(|(p, _, _)| p == id)
    }

    /// Objects added so far.
    pub fn len(&self) -> usize {
        self.index.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uncompressed bytes of the objects added so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Compressed bytes written so far (header and complete blocks).
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
        if (self.block.len() + bytes.len()) as u64 > MAX_BLOCK_RAW_LEN {
            self.flush_block()?;
        }
        self.pending
            .push((id, self.block.len() as u64, bytes.len() as u64));
        self.block.extend_from_slice(bytes);
        self.raw_bytes += bytes.len() as u64;
        if self.block.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(true)
    }

    /// Compress the current block now, so that the next objects start a block of their own (a
    /// path's deltas share blocks only with each other: a client fetching them does not fetch
    /// the full objects they stand in for).
    pub fn end_block(&mut self) -> io::Result<()> {
        self.flush_block()
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = zstd::bulk::compress(&self.block, self.level)?;
        self.w.write_all(&frame)?;
        for (id, offset_in_block, size) in self.pending.drain(..) {
            self.index.insert(
                id,
                Location {
                    block_offset: self.offset,
                    block_len: frame.len() as u64,
                    block_raw_len: self.block.len() as u64,
                    offset_in_block,
                    size,
                },
            );
        }
        self.offset += frame.len() as u64;
        self.block.clear();
        Ok(())
    }

    /// Write the last block, the index and the footer.
    pub fn finish(mut self) -> io::Result<(W, HashMap<ObjectId, Location>)> {
        self.flush_block()?;
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
        if &header != HEADER {
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
