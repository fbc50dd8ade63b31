//! Objects for restore cut straight out of decoded pack blocks, as shared slices and without
//! their per-object BLAKE3 check.
//!
//! Substitute may skip that check because the same pass checks the path's NarHash, which covers
//! every byte these objects contribute, and nothing leaves the pass before it: the tree is written
//! under a temporary name and registered only after the check. If the check fails, the caller
//! reads the path again through the checking layers (`Objects::of`), which find the bad object,
//! drop its block from memory and from the disk cache and fetch it anew, so a damaged copy is
//! healed, or refused, exactly as before. Objects from a near source (the local Nix store) are
//! checked by it as always.

use std::io;
use std::sync::Arc;

use refstrip_cas::{decode_chunk_list, Kind, ObjectId, CHUNK_MAX, CHUNK_THRESHOLD};
use refstrip_read::objects::{BlockKey, NearSource, PackBlocks};
use refstrip_read::PathRecord;
use refstrip_strip::{Bytes, ContentDigest, ContentSource, Pieces};

/// A decoded block as the owner of the slices cut out of it.
struct Block(Arc<Vec<u8>>);

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The objects of one path record, cut out of the blocks of `packs` unchecked.
pub struct Unchecked<'a> {
    pub record: &'a PathRecord,
    pub packs: &'a PackBlocks,
    pub near: Option<&'a dyn NearSource>,
    /// The block the last object came from: consecutive objects usually share one.
    last: Option<(BlockKey, Bytes)>,
}

fn corrupt(id: &ObjectId, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("object {id}: {why}"))
}

impl<'a> Unchecked<'a> {
    pub fn new(
        record: &'a PathRecord,
        packs: &'a PackBlocks,
        near: Option<&'a dyn NearSource>,
    ) -> Self {
        Unchecked {
            record,
            packs,
            near,
            last: None,
        }
    }

    /// Object `id`'s bytes: from the near source (checked there), else a slice of its block.
    fn object(&mut self, id: &ObjectId) -> io::Result<Bytes> {
        let (pack, loc) = self
            .record
            .objects
            .get(id)
            .ok_or_else(|| corrupt(id, "not in the path's record"))?;
        if let Some(near) = self.near {
            if let Some(bytes) = near.object(id, pack, loc)? {
                return Ok(Bytes::from(bytes));
            }
        }
        let key = BlockKey::of(pack, loc);
        let block = match &self.last {
            Some((last, block)) if *last == key => block.clone(),
            _ => {
                let block = Bytes::from_owner(Block(self.packs.block(&key)?));
                self.last = Some((key, block.clone()));
                block
            }
        };
        let range = loc
            .offset_in_block
            .checked_add(loc.size)
            .filter(|end| *end <= block.len() as u64)
            .map(|end| loc.offset_in_block as usize..end as usize)
            .ok_or_else(|| corrupt(id, "lies outside its block"))?;
        Ok(block.slice(range))
    }
}

impl ContentSource for Unchecked<'_> {
    fn open(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Box<dyn io::Read + '_>> {
        // Restore reads through `pieces`; this serves any other caller the same bytes.
        let mut bytes = Vec::new();
        for piece in self.pieces(digest, size)? {
            bytes.extend_from_slice(&piece?);
        }
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn pieces(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Pieces<'_>> {
        if size <= CHUNK_THRESHOLD as u64 {
            let bytes = self.object(&ObjectId::new(Kind::Blob, *digest))?;
            return Ok(Box::new(std::iter::once(Ok(bytes))));
        }
        let id = ObjectId::new(Kind::ChunkList, *digest);
        let list = self.object(&id)?;
        let chunks =
            decode_chunk_list(&list).ok_or_else(|| corrupt(&id, "malformed chunk list"))?;
        let total = chunks.iter().try_fold(0u64, |t, c| {
            (c.1 <= CHUNK_MAX as u64)
                .then(|| t.checked_add(c.1))
                .flatten()
        });
        if total != Some(size) {
            return Err(corrupt(
                &id,
                &format!("chunks do not add up to {size} bytes"),
            ));
        }
        Ok(Box::new(chunks.into_iter().map(move |(digest, size)| {
            let id = ObjectId::new(Kind::Blob, digest);
            let chunk = self.object(&id)?;
            if chunk.len() as u64 != size {
                return Err(corrupt(&id, "a chunk has the wrong size"));
            }
            Ok(chunk)
        })))
    }
}
