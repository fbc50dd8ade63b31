//! Normalized files as objects: the strip sink and restore source over any object store.

use std::io::{self, Read};

use refstrip_strip::varint::{put, Cursor};
use refstrip_strip::{ContentDigest, ContentSink, ContentSource};

use crate::chunk::{Chunker, CHUNK_MAX, CHUNK_THRESHOLD};
use crate::error::CasError;
use crate::id::{Kind, ObjectId};

/// Somewhere objects can be written (a pack, a store). Writes of an existing object are no-ops.
pub trait ObjectWrite {
    fn has(&mut self, id: &ObjectId) -> io::Result<bool>;
    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()>;
}

/// Somewhere objects can be read from; implementations verify what they return.
pub trait ObjectRead {
    fn get(&mut self, id: &ObjectId) -> Result<Vec<u8>, CasError>;

    /// The whole normalized contents of file `id` (`size` bytes) by another way than its
    /// objects (a client rebuilding it from a delta), already checked against `id`'s digest;
    /// `None` to read it object by object.
    fn file(&mut self, _id: &ObjectId, _size: u64) -> Option<Vec<u8>> {
        None
    }
}

/// Stores each normalized file as one blob, or as chunks plus a chunk list when it is large.
pub struct FileSink<'w, W: ObjectWrite + ?Sized> {
    store: &'w mut W,
    small: Vec<u8>,
    chunker: Option<Chunker>,
    chunks: Vec<(ContentDigest, u64)>,
    /// Every object the files so far need, new or not (what a path record must locate).
    pub needed: Vec<ObjectId>,
    /// Objects newly written, and their bytes: what this sink added to the store.
    pub new_objects: u64,
    pub new_bytes: u64,
}

impl<'w, W: ObjectWrite + ?Sized> FileSink<'w, W> {
    pub fn new(store: &'w mut W) -> Self {
        FileSink {
            store,
            small: Vec::new(),
            chunker: None,
            chunks: Vec::new(),
            needed: Vec::new(),
            new_objects: 0,
            new_bytes: 0,
        }
    }

    fn put_new(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()> {
        self.needed.push(id);
        if !self.store.has(&id)? {
            self.store.put(id, bytes)?;
            self.new_objects += 1;
            self.new_bytes += bytes.len() as u64;
        }
        Ok(())
    }
}

impl<W: ObjectWrite + ?Sized> ContentSink for FileSink<'_, W> {
    fn begin(&mut self, size: u64) -> io::Result<()> {
        self.small.clear();
        self.chunks.clear();
        self.chunker = (size > CHUNK_THRESHOLD as u64).then(Chunker::default);
        Ok(())
    }

    fn write(&mut self, normalized: &[u8]) -> io::Result<()> {
        match self.chunker.take() {
            None => self.small.extend_from_slice(normalized),
            Some(mut chunker) => {
                chunker.feed(normalized, &mut |chunk: &[u8]| self.put_chunk(chunk))?;
                self.chunker = Some(chunker);
            }
        }
        Ok(())
    }

    fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
        match self.chunker.take() {
            None => {
                let small = std::mem::take(&mut self.small);
                self.put_new(ObjectId::new(Kind::Blob, *digest), &small)?;
                self.small = small;
            }
            Some(chunker) => {
                chunker.finish(&mut |chunk: &[u8]| self.put_chunk(chunk))?;
                let list = encode_chunk_list(&self.chunks);
                self.put_new(ObjectId::new(Kind::ChunkList, *digest), &list)?;
            }
        }
        Ok(())
    }
}

impl<W: ObjectWrite + ?Sized> FileSink<'_, W> {
    fn put_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        let id = ObjectId::blob(chunk);
        self.chunks.push((id.digest, chunk.len() as u64));
        self.put_new(id, chunk)
    }
}

/// The chunks of a large file's normalized `contents` (digest and size each), as [`FileSink`]
/// cuts them.
pub fn chunks_of(contents: &[u8]) -> Vec<(ContentDigest, u64)> {
    let mut chunks = Vec::new();
    let mut emit = |c: &[u8]| -> Result<(), ()> {
        chunks.push((ContentDigest::of(c), c.len() as u64));
        Ok(())
    };
    let mut chunker = Chunker::default();
    let _ = chunker.feed(contents, &mut emit);
    let _ = chunker.finish(&mut emit);
    chunks
}

/// The chunk list of a large file's normalized `contents`, as [`FileSink`] makes it (for a
/// reader that has the contents by another way, such as a delta).
pub fn chunk_list_of(contents: &[u8]) -> Vec<u8> {
    encode_chunk_list(&chunks_of(contents))
}

fn encode_chunk_list(chunks: &[(ContentDigest, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 36);
    put(&mut out, chunks.len() as u64);
    for (digest, size) in chunks {
        out.extend_from_slice(&digest.0);
        put(&mut out, *size);
    }
    out
}

/// Decode a chunk list: (chunk digest, chunk size) in file order.
pub fn decode_chunk_list(bytes: &[u8]) -> Option<Vec<(ContentDigest, u64)>> {
    let mut cur = Cursor { bytes };
    let n = cur.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let digest = ContentDigest(cur.take(32)?.try_into().ok()?);
        out.push((digest, cur.varint()?));
    }
    cur.bytes.is_empty().then_some(out)
}

/// The chunks of a large file of `size` bytes, from its chunk list: an error unless the list is
/// well formed, no chunk is larger than [`CHUNK_MAX`] and their sizes add up to `size` exactly
/// (summed with checks: a hostile list's sizes could overflow).
pub fn chunks_of_file(list: &[u8], size: u64) -> Result<Vec<(ContentDigest, u64)>, String> {
    let chunks = decode_chunk_list(list).ok_or("malformed chunk list")?;
    let total = chunks.iter().try_fold(0u64, |t, c| {
        (c.1 <= CHUNK_MAX as u64)
            .then(|| t.checked_add(c.1))
            .flatten()
    });
    if total != Some(size) {
        return Err(format!("chunk sizes do not add up to {size} bytes"));
    }
    Ok(chunks)
}

/// Restores normalized files from objects; a large file's chunks are fetched one at a time, and
/// the whole file's BLAKE3 is checked against its name before the last byte is handed out.
pub struct FileSource<'r, R: ObjectRead + ?Sized> {
    store: &'r mut R,
}

/// The object a normalized file of `size` bytes with content digest `digest` is stored as: its blob,
/// or for a large file its chunk list (spec §5).
pub fn file_object(digest: &ContentDigest, size: u64) -> ObjectId {
    match size <= CHUNK_THRESHOLD as u64 {
        true => ObjectId::new(Kind::Blob, *digest),
        false => ObjectId::new(Kind::ChunkList, *digest),
    }
}

impl<'r, R: ObjectRead + ?Sized> FileSource<'r, R> {
    pub fn new(store: &'r mut R) -> Self {
        FileSource { store }
    }
}

impl<R: ObjectRead + ?Sized> ContentSource for FileSource<'_, R> {
    fn open(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Box<dyn Read + '_>> {
        let id = file_object(digest, size);
        if let Some(bytes) = self.store.file(&id, size) {
            return Ok(Box::new(io::Cursor::new(bytes)));
        }
        if id.kind == Kind::Blob {
            let bytes = self.store.get(&id)?;
            return Ok(Box::new(io::Cursor::new(bytes)));
        }
        let list = self.store.get(&id)?;
        let chunks = chunks_of_file(&list, size)
            .map_err(|why| io::Error::from(CasError::Corrupt { id, why }))?;
        Ok(Box::new(ChunkReader {
            store: &mut *self.store,
            id,
            chunks,
            next: 0,
            current: io::Cursor::new(Vec::new()),
            hasher: blake3::Hasher::new(),
        }))
    }
}

struct ChunkReader<'r, R: ObjectRead + ?Sized> {
    store: &'r mut R,
    id: ObjectId,
    chunks: Vec<(ContentDigest, u64)>,
    next: usize,
    current: io::Cursor<Vec<u8>>,
    hasher: blake3::Hasher,
}

impl<R: ObjectRead + ?Sized> Read for ChunkReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let Some((digest, size)) = self.chunks.get(self.next).copied() else {
                return Ok(0);
            };
            self.next += 1;
            let chunk = self.store.get(&ObjectId::new(Kind::Blob, digest))?;
            if chunk.len() as u64 != size {
                return Err(CasError::Corrupt {
                    id: self.id,
                    why: "a chunk has the wrong size".into(),
                }
                .into());
            }
            self.hasher.update(&chunk);
            if self.next == self.chunks.len()
                && ContentDigest(*self.hasher.finalize().as_bytes()) != self.id.digest
            {
                return Err(CasError::Corrupt {
                    id: self.id,
                    why: "chunks do not hash to the file's name".into(),
                }
                .into());
            }
            self.current = io::Cursor::new(chunk);
        }
    }
}
