//! Object sources, composed in layers: the one way every client reads objects out of a store.
//!
//! ```text
//! RecordObjects            an ObjectRead over one path record (what restore consumes)
//!   └─ MemoryObjects       optional: verified objects in memory, shared by concurrent restores
//!        └─ PackBlocks     pack blocks decoded in memory (bounded LRU); objects cut out and
//!             │            checked against their BLAKE3 names
//!             └─ DiskCache optional: compressed blocks on disk, bounded, LRU, shared by processes
//!                  └─ BackendBlocks   ranged reads of the store's packs
//! ```
//! [`ObjectSource`] is the object-level trait: a layer answers `Ok(None)` for an object it does
//! not have. A [`NearSource`] (the local Nix store) is asked first, by object name alone, so a
//! record's object table is needed only for what it lacks. [`BlockSource`] is the
//! block-level trait under [`PackBlocks`]. Nothing any layer hands out is trusted from disk or
//! network: blocks are length-checked when decoded and every object is checked against its name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use refstrip_backend::{pack_key, Backend};
use refstrip_cas::pack::{decode_block_into, Location};
use refstrip_cas::{CasError, ObjectId, ObjectRead};

use crate::held::{HeldObjects, NearLayers};
use crate::PathRecord;

/// One compressed block of one pack. Packs never change, so this names the block's bytes for ever.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub pack: String,
    pub offset: u64,
    pub len: u64,
    pub raw_len: u64,
}

impl BlockKey {
    pub fn of(pack: &str, loc: &Location) -> BlockKey {
        BlockKey {
            pack: pack.to_string(),
            offset: loc.block_offset,
            len: loc.block_len,
            raw_len: loc.block_raw_len,
        }
    }
}

/// Every block of `records` a client with `near` fetches, each once, sorted: those of the
/// objects `near` may not have, except where a delta offer's base is near (spec §8): then the
/// delta's block instead of the target's. Fetches the object table of a record only if `near`
/// lacks one of its files.
pub fn blocks_of<'r>(
    records: impl IntoIterator<Item = &'r PathRecord>,
    near: Option<&dyn NearSource>,
) -> Result<Vec<BlockKey>, String> {
    let wanted = |id: &ObjectId| near.is_none_or(|n| !n.may_have(id));
    let mut blocks = Vec::new();
    for r in records {
        if !r
            .manifest
            .objects()
            .iter()
            .any(|(digest, size)| wanted(&refstrip_cas::file_object(digest, *size)))
        {
            continue;
        }
        let table = r.objects.table()?;
        let (replaced, deltas) = match near {
            Some(near) => crate::delta::plan(table, near),
            None => Default::default(),
        };
        for (id, (pack, loc)) in &table.objects {
            let fetch = match id.kind {
                refstrip_cas::Kind::Delta => deltas.contains(id),
                _ => wanted(id) && !replaced.contains(id),
            };
            if fetch {
                blocks.push(BlockKey::of(pack, loc));
            }
        }
    }
    blocks.sort();
    blocks.dedup();
    Ok(blocks)
}

/// What the block layers did, for reports: blocks read from the store, and blocks a prefetch
/// found in the disk cache already.
#[derive(Debug, Default)]
pub struct FetchCounters {
    pub fetched_blocks: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub reused_blocks: AtomicU64,
    pub reused_bytes: AtomicU64,
    /// Objects the in-memory object layer ([`ObjectOptions::object_memory`]) answered, and those
    /// it had to read from the layers below.
    pub object_memory_hits: AtomicU64,
    pub object_memory_misses: AtomicU64,
    /// Files rebuilt from a near base and a delta (spec §8): how many, the deltas' bytes, the
    /// files' bytes; and deltas tried and not used (base gone or changed, wrong output).
    pub deltas_applied: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub delta_output_bytes: AtomicU64,
    pub deltas_rejected: AtomicU64,
}

impl FetchCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where compressed pack blocks come from.
pub trait BlockSource: Send + Sync {
    /// The block's compressed bytes: exactly `key.len` of them, or an error.
    fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>>;
    /// The block turned out bad: do not hand out the same bytes again.
    fn forget(&self, _key: &BlockKey) {}
    /// Bring these blocks near ahead of reads (in parallel where that helps).
    fn prefetch(&self, _keys: &[BlockKey]) -> io::Result<()> {
        Ok(())
    }
}

/// The far end: ranged reads of the store's packs.
pub struct BackendBlocks {
    backend: Arc<dyn Backend>,
    counters: Arc<FetchCounters>,
}

impl BackendBlocks {
    pub fn new(backend: Arc<dyn Backend>, counters: Arc<FetchCounters>) -> Self {
        BackendBlocks { backend, counters }
    }
}

impl BlockSource for BackendBlocks {
    fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>> {
        let bytes = self
            .backend
            .get_range(&pack_key(&key.pack), key.offset, key.len)?;
        if bytes.len() as u64 != key.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of a block of pack {}", key.pack),
            ));
        }
        self.counters
            .fetched_bytes
            .fetch_add(key.len, Ordering::Relaxed);
        self.counters.fetched_blocks.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Only a hint to the backend (a local directory reads ahead into the page cache), given
    /// from a thread of its own: the hint may block while the reads are submitted.
    fn prefetch(&self, keys: &[BlockKey]) -> io::Result<()> {
        let mut by_pack: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for key in keys {
            by_pack
                .entry(pack_key(&key.pack))
                .or_default()
                .push((key.offset, key.len));
        }
        let backend = self.backend.clone();
        std::thread::spawn(move || {
            for (pack, ranges) in by_pack {
                backend.will_read(&pack, &ranges);
            }
        });
        Ok(())
    }
}

/// Compressed blocks kept on disk as `blocks/<pack>/<offset>-<len>`, at most `cap` bytes: when a
/// process takes it over the cap, it evicts the least recently used blocks (by mtime, which a hit
/// refreshes) down to 90 % of it. Several processes may use one cache at once: files appear by
/// rename, eviction runs under an exclusive lock, and a block evicted under a reader is just a
/// miss (the reader's open file stays readable).
pub struct DiskCache {
    dir: PathBuf,
    cap: u64,
    far: Box<dyn BlockSource>,
    /// Bytes of blocks in the cache as this process last counted them, plus what it added since.
    used: AtomicU64,
    /// Bytes this process is writing into the cache right now.
    writing: AtomicU64,
    counters: Arc<FetchCounters>,
    /// Which cached block holds which object ([`crate::held`]).
    pub(crate) index: crate::held::CacheIndex,
}

/// Scratch files older than this are leftovers of killed processes.
const STALE_TMP: Duration = Duration::from_secs(3600);

impl DiskCache {
    pub fn open(
        dir: &Path,
        cap: u64,
        far: Box<dyn BlockSource>,
        counters: Arc<FetchCounters>,
    ) -> io::Result<DiskCache> {
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
        fs::create_dir_all(dir.join("blocks")).map_err(with_path)?;
        fs::create_dir_all(dir.join("tmp")).map_err(with_path)?;
        for entry in fs::read_dir(dir.join("tmp"))?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
        let used = cached_blocks(dir)?.iter().map(|b| b.1).sum();
        let index = crate::held::CacheIndex::open(dir)?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            cap,
            far,
            used: AtomicU64::new(used),
            writing: AtomicU64::new(0),
            counters,
            index,
        })
    }

    /// Note the objects of `map` that sit in cached blocks in the object index, keeping the index
    /// within the cap too.
    fn note_held(&self, map: &crate::ObjectMap) {
        // Many objects share a block: look each block up on disk once.
        let mut held = std::collections::HashMap::new();
        let cached = map
            .iter()
            .filter(|(_, (pack, loc))| {
                let key = BlockKey::of(pack, loc);
                *held.entry(key).or_insert_with_key(|key| self.holds(key))
            })
            .map(|(id, (pack, loc))| (id, pack.as_str(), loc));
        // A cache that cannot note objects only costs later fetches.
        let _ = self.index.note(cached);
        let index = self.index_bytes();
        if self.used.load(Ordering::Relaxed) + index > self.cap {
            let _ = self.evict(index);
        }
    }

    /// The object index's share of the cap.
    fn index_bytes(&self) -> u64 {
        fs::metadata(self.dir.join(crate::held::INDEX_FILE)).map_or(0, |m| m.len())
    }

    /// Whether the cache has the block now (with the right length).
    pub(crate) fn holds(&self, key: &BlockKey) -> bool {
        fs::metadata(self.file(key)).is_ok_and(|m| m.len() == key.len)
    }

    fn file(&self, key: &BlockKey) -> PathBuf {
        self.dir
            .join("blocks")
            .join(&key.pack)
            .join(format!("{}-{}", key.offset, key.len))
    }

    /// The cached block if it is there with the right length (refreshing its place in the LRU).
    fn cached(&self, key: &BlockKey) -> Option<Vec<u8>> {
        let mut file = File::open(self.file(key)).ok()?;
        if file.metadata().ok()?.len() != key.len {
            return None;
        }
        let mut bytes = Vec::with_capacity(key.len as usize);
        file.read_to_end(&mut bytes).ok()?;
        let _ = file.set_modified(SystemTime::now());
        (bytes.len() as u64 == key.len).then_some(bytes)
    }

    fn keep(&self, key: &BlockKey, bytes: &[u8]) -> io::Result<()> {
        self.keep_file(&self.file(key), bytes)
    }

    fn shape_file(&self, digest: &refstrip_strip::ContentDigest) -> PathBuf {
        self.dir.join("blocks").join("shapes").join(digest.to_hex())
    }

    /// Keep `bytes` at `path`, making room first: what is on disk plus what this process is writing
    /// never exceeds the cap (a file larger than the cap is not kept).
    fn keep_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        if len > self.cap {
            return Ok(());
        }
        let writing = self.writing.fetch_add(len, Ordering::Relaxed) + len;
        let kept = (|| {
            let room = writing + self.index_bytes();
            if self.used.load(Ordering::Relaxed) + room > self.cap {
                self.evict(room)?;
            }
            fs::create_dir_all(path.parent().expect("has a parent"))?;
            let tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))?;
            fs::write(tmp.path(), bytes)?;
            tmp.persist(path).map_err(|e| e.error)?;
            self.used.fetch_add(len, Ordering::Relaxed);
            Ok(())
        })();
        self.writing.fetch_sub(len, Ordering::Relaxed);
        kept
    }

    /// Delete the least recently used blocks until the cache holds at most 90 % of its cap, and
    /// leaves `room` bytes free (for the files being written and the object index).
    fn evict(&self, room: u64) -> io::Result<()> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("evict.lock"))?;
        lock.lock()?;
        let mut blocks = cached_blocks(&self.dir)?;
        blocks.sort_by_key(|b| b.2);
        let mut total: u64 = blocks.iter().map(|b| b.1).sum();
        let target = (self.cap / 10 * 9).min(self.cap.saturating_sub(room));
        let mut evicted = Vec::new();
        for (path, size, _) in blocks {
            if total <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= size;
                evicted.extend(block_of_file(&path));
            }
        }
        self.used.store(total, Ordering::Relaxed);
        // Entries left behind would only be misses; dropping them keeps the index small.
        let _ = self.index.forget_blocks(&evicted);
        Ok(())
    }
}

/// The pack and block offset a cached block file `blocks/<pack>/<offset>-<len>` holds.
fn block_of_file(path: &Path) -> Option<(String, u64)> {
    let pack = path.parent()?.file_name()?.to_str()?;
    let offset = path
        .file_name()?
        .to_str()?
        .split_once('-')?
        .0
        .parse()
        .ok()?;
    Some((pack.to_string(), offset))
}

/// Every cached block file: path, size, last use.
fn cached_blocks(dir: &Path) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    for pack in fs::read_dir(dir.join("blocks"))?.flatten() {
        let Ok(files) = fs::read_dir(pack.path()) else {
            continue;
        };
        for file in files.flatten() {
            if let Ok(m) = file.metadata() {
                let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((file.path(), m.len(), used));
            }
        }
    }
    Ok(out)
}

/// Shapes (spec §8) are kept beside the blocks as `blocks/shapes/<hex>` (zstd), counted against the
/// same cap and evicted by the same rule.
impl crate::ShapeSource for DiskCache {
    fn shape(&self, digest: &refstrip_strip::ContentDigest) -> Option<Vec<u8>> {
        let path = self.shape_file(digest);
        let frame = fs::read(&path).ok()?;
        let _ = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        refstrip_strip::inflate_shape(&frame).ok()
    }

    fn keep(&self, digest: &refstrip_strip::ContentDigest, body: &[u8]) {
        // A cache that cannot keep a shape only costs a later fetch.
        let _ = self.keep_file(
            &self.shape_file(digest),
            &refstrip_strip::compress_shape(body),
        );
    }
}

impl BlockSource for DiskCache {
    fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>> {
        if let Some(bytes) = self.cached(key) {
            return Ok(bytes);
        }
        let bytes = self.far.fetch(key)?;
        self.keep(key, &bytes)?;
        Ok(bytes)
    }

    fn forget(&self, key: &BlockKey) {
        let _ = fs::remove_file(self.file(key));
        let _ = self.index.forget_blocks(&[(key.pack.clone(), key.offset)]);
    }

    fn prefetch(&self, keys: &[BlockKey]) -> io::Result<()> {
        keys.par_iter().try_for_each(|key| {
            if !self.holds(key) {
                return self.keep(key, &self.far.fetch(key)?);
            }
            let _ = File::options()
                .write(true)
                .open(self.file(key))
                .and_then(|f| f.set_modified(SystemTime::now()));
            self.counters
                .reused_bytes
                .fetch_add(key.len, Ordering::Relaxed);
            self.counters.reused_blocks.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// Where verified objects come from. A source that does not have an object answers `Ok(None)`;
/// one that has it hands out bytes that hash to its name, or an error.
pub trait ObjectSource: Send + Sync {
    /// The object `id`, which the store keeps in block `loc` of pack `pack`.
    fn object(
        &self,
        id: &ObjectId,
        pack: &str,
        loc: &Location,
    ) -> Result<Option<Vec<u8>>, CasError>;
}

/// A source put in front of a store's (the local Nix store): it finds objects by name alone, so
/// a record's object table is fetched only for what it lacks; it can tell cheaply whether it may
/// have an object, so that prefetching leaves those blocks alone, and it counts what it served.
pub trait NearSource: Send + Sync {
    /// The object `id` (verified), or `Ok(None)`.
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, CasError>;
    /// Whether an object might be had here (a later read may still miss).
    fn may_have(&self, id: &ObjectId) -> bool;
    /// Objects and bytes handed out so far.
    fn served(&self) -> (u64, u64);
    /// A whole file here whose normalized contents should be `id` (a small file's blob, or a
    /// large file's chunk list), for a client that copies files rather than writing their bytes;
    /// `None` if there is none. Nothing about it is checked: the client must cover every byte
    /// it takes from the file with a check of its own (substitute: the path's NarHash, computed
    /// over the very bytes it writes, with the checking layers to fall back on).
    fn file(&self, _id: &ObjectId) -> Option<NearFile> {
        None
    }
}

/// A file of a near source (see [`NearSource::file`]).
pub struct NearFile {
    /// Opened without following symlinks; a regular file of `size` bytes when opened.
    pub file: File,
    pub size: u64,
}

impl ObjectSource for Box<dyn ObjectSource> {
    fn object(
        &self,
        id: &ObjectId,
        pack: &str,
        loc: &Location,
    ) -> Result<Option<Vec<u8>>, CasError> {
        (**self).object(id, pack, loc)
    }
}

/// A least-recently-used map bounded by the total size of its values (sizes as the caller weighs
/// them); a value larger than the whole budget is not kept.
pub struct SizedLru<K: std::hash::Hash + Eq, V> {
    lru: lru::LruCache<K, (V, u64)>,
    used: u64,
    budget: u64,
}

impl<K: std::hash::Hash + Eq, V: Clone> SizedLru<K, V> {
    pub fn new(budget: u64) -> Self {
        SizedLru {
            lru: lru::LruCache::unbounded(),
            used: 0,
            budget,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        self.lru.get(key).map(|(v, _)| v.clone())
    }

    pub fn put(&mut self, key: K, value: V, size: u64) {
        if size > self.budget {
            return;
        }
        if let Some((_, old)) = self.lru.put(key, (value, size)) {
            self.used -= old;
        }
        self.used += size;
        while self.used > self.budget {
            match self.lru.pop_lru() {
                Some((_, (_, old))) => self.used -= old,
                None => break,
            }
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((_, size)) = self.lru.pop(key) {
            self.used -= size;
        }
    }
}

/// Objects cut out of pack blocks from a [`BlockSource`], with decoded blocks kept in memory:
/// consecutive files of a path usually share a block.
pub struct PackBlocks {
    blocks: Arc<dyn BlockSource>,
    memory: Mutex<SizedLru<BlockKey, Arc<Decoded>>>,
    buffers: Arc<BufferPool>,
    /// Threads wanting the same block at once: one fetches it, the others find it in memory
    /// (without this, parallel restores fetched shared blocks two or three times over HTTP).
    fetching: [Mutex<()>; FETCH_STRIPES],
}

/// A decoded block, shared by its readers; its buffer goes back to the pool it came from when the
/// last of them drops it.
pub struct Decoded {
    bytes: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl std::ops::Deref for Decoded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.bytes));
    }
}

/// Buffers of blocks no longer held, for the next blocks decoded: fresh pages cost the kernel a
/// fault and a zeroing each (5 % of a cold substitute's cycles before). A few suffice, as blocks
/// leave memory about as fast as new ones are decoded; the rest are freed.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

const POOLED_BUFFERS: usize = 4;
/// Larger buffers (of blocks larger than ingest makes) are not kept.
const POOLED_CAPACITY: usize = 16 << 20;

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.0.lock().expect("poisoned").pop().unwrap_or_default()
    }

    fn give(&self, buffer: Vec<u8>) {
        let mut pool = self.0.lock().expect("poisoned");
        if pool.len() < POOLED_BUFFERS && buffer.capacity() <= POOLED_CAPACITY {
            pool.push(buffer);
        }
    }
}

/// Blocks being fetched at once map onto this many locks (two blocks sharing one just wait).
const FETCH_STRIPES: usize = 64;

impl PackBlocks {
    /// `memory`: bytes of decoded blocks kept (a few blocks per thread suffice; this bounds RSS
    /// whatever the closure size).
    pub fn new(blocks: Arc<dyn BlockSource>, memory: u64) -> Self {
        PackBlocks {
            blocks,
            memory: Mutex::new(SizedLru::new(memory)),
            buffers: Arc::default(),
            fetching: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    fn decoded(&self, key: &BlockKey) -> io::Result<Arc<Decoded>> {
        if let Some(block) = self.memory.lock().expect("poisoned").get(key) {
            return Ok(block);
        }
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            h.finish() as usize % FETCH_STRIPES
        };
        let _fetching = self.fetching[stripe].lock().expect("poisoned");
        // Another thread may have fetched it while this one waited.
        if let Some(block) = self.memory.lock().expect("poisoned").get(key) {
            return Ok(block);
        }
        let mut raw = Decoded {
            bytes: self.buffers.take(),
            pool: self.buffers.clone(),
        };
        if decode_block_into(&self.blocks.fetch(key)?, key.raw_len, &mut raw.bytes).is_err() {
            // A bad copy in a cache: fetch it once more from further away.
            self.blocks.forget(key);
            decode_block_into(&self.blocks.fetch(key)?, key.raw_len, &mut raw.bytes).map_err(
                |e| {
                    // Bad at the far end too: keep no copy of it.
                    self.blocks.forget(key);
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "block at {} of pack {} is corrupt: {e}",
                            key.offset, key.pack
                        ),
                    )
                },
            )?;
        }
        let raw = Arc::new(raw);
        self.memory
            .lock()
            .expect("poisoned")
            .put(key.clone(), raw.clone(), key.raw_len);
        Ok(raw)
    }

    /// The decoded block `key` (of the declared length), shared: for a reader that cuts objects
    /// out itself and does **not** check them against their names, because a check of the whole
    /// result covers their bytes (substitute's NarHash). It must then [`forget`](Self::forget)
    /// the blocks it used if that check fails, or read them again through [`ObjectSource`].
    pub fn block(&self, key: &BlockKey) -> io::Result<Arc<Decoded>> {
        self.decoded(key)
    }

    /// Drop block `key` from memory and from the cache below, so the next read fetches it anew.
    pub fn forget(&self, key: &BlockKey) {
        self.memory.lock().expect("poisoned").remove(key);
        self.blocks.forget(key);
    }
}

impl ObjectSource for PackBlocks {
    fn object(
        &self,
        id: &ObjectId,
        pack: &str,
        loc: &Location,
    ) -> Result<Option<Vec<u8>>, CasError> {
        let key = BlockKey::of(pack, loc);
        match loc.object(id, &self.decoded(&key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(CasError::Corrupt { .. }) => {
                // The block decoded but holds other bytes than its objects' names say: a damaged
                // cached copy, or a bad store. Try the far end once before giving up, and keep
                // no copy of a block that is bad there too.
                self.forget(&key);
                let again = loc.object(id, &self.decoded(&key)?);
                if again.is_err() {
                    self.forget(&key);
                }
                again.map(Some)
            }
            Err(e) => Err(e),
        }
    }
}

impl ObjectSource for Arc<PackBlocks> {
    fn object(
        &self,
        id: &ObjectId,
        pack: &str,
        loc: &Location,
    ) -> Result<Option<Vec<u8>>, CasError> {
        (**self).object(id, pack, loc)
    }
}

/// Verified objects kept in memory in front of another source and shared by everything reading
/// through it (serve's concurrent downloads of popular files).
pub struct MemoryObjects<F> {
    far: F,
    memory: Mutex<SizedLru<ObjectId, Arc<[u8]>>>,
    /// Objects larger than this are not kept: they would evict many small ones for little gain.
    largest: u64,
    counters: Option<Arc<FetchCounters>>,
}

impl<F: ObjectSource> MemoryObjects<F> {
    pub fn new(far: F, budget: u64) -> Self {
        MemoryObjects {
            far,
            memory: Mutex::new(SizedLru::new(budget)),
            largest: budget / 16,
            counters: None,
        }
    }

    /// Count hits and misses in `counters` ([`FetchCounters::object_memory_hits`]).
    pub fn counting(self, counters: Arc<FetchCounters>) -> Self {
        MemoryObjects {
            counters: Some(counters),
            ..self
        }
    }

    fn count(&self, hit: bool) {
        if let Some(c) = &self.counters {
            let counter = if hit {
                &c.object_memory_hits
            } else {
                &c.object_memory_misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes of objects held now.
    pub fn used(&self) -> u64 {
        self.memory.lock().expect("poisoned").used
    }
}

impl<F: ObjectSource> ObjectSource for MemoryObjects<F> {
    fn object(
        &self,
        id: &ObjectId,
        pack: &str,
        loc: &Location,
    ) -> Result<Option<Vec<u8>>, CasError> {
        if let Some(bytes) = self.memory.lock().expect("poisoned").get(id) {
            self.count(true);
            return Ok(Some(bytes.to_vec()));
        }
        self.count(false);
        let found = self.far.object(id, pack, loc)?;
        if let Some(bytes) = &found {
            if bytes.len() as u64 <= self.largest {
                self.memory.lock().expect("poisoned").put(
                    *id,
                    Arc::from(bytes.as_slice()),
                    bytes.len() as u64,
                );
            }
        }
        Ok(found)
    }
}

/// The objects of one path record, read through a source: what `restore` consumes.
pub struct RecordObjects<'a> {
    pub record: &'a PathRecord,
    pub near: Option<&'a dyn NearSource>,
    pub source: &'a dyn ObjectSource,
    pub counters: Option<&'a FetchCounters>,
}

impl ObjectRead for RecordObjects<'_> {
    /// A file the near source lacks, rebuilt from its predecessor there and a delta.
    fn file(&mut self, id: &ObjectId, size: u64) -> Option<Vec<u8>> {
        let near = self.near?;
        let bytes = crate::delta::rebuild(self.record, id, near, self.source, self.counters)?;
        (bytes.len() as u64 == size).then_some(bytes)
    }

    fn get(&mut self, id: &ObjectId) -> Result<Vec<u8>, CasError> {
        if let Some(bytes) = self.near.map(|n| n.object(id)).transpose()?.flatten() {
            return Ok(bytes);
        }
        let objects = self.record.objects.map().map_err(|why| {
            CasError::Io(io::Error::other(format!(
                "the object table of {}: {why}",
                self.record.basename()
            )))
        })?;
        let (pack, loc) = objects.get(id).ok_or(CasError::NotFound(*id))?;
        self.source
            .object(id, pack, loc)?
            .ok_or(CasError::NotFound(*id))
    }
}

/// How a client wants its objects read.
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    /// The on-disk block cache, or none (every block is fetched when read).
    pub cache_dir: Option<PathBuf>,
    /// Its size cap in bytes.
    pub cache_bytes: u64,
    /// Decoded blocks kept in memory.
    pub block_memory: u64,
    /// Verified objects kept in memory (0: no such layer).
    pub object_memory: u64,
}

/// The default cap of the disk cache: 8 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 8 << 30;
/// Decoded blocks kept in memory by default (512 MiB once measured 715 MiB peak RSS on the large
/// corpus; 64 MiB decoded a cold substitute's 319 blocks 440 times, 128 MiB 360 times at 210 MiB
/// peak RSS).
pub const DEFAULT_BLOCK_MEMORY: u64 = 128 << 20;

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            cache_dir: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            block_memory: DEFAULT_BLOCK_MEMORY,
            object_memory: 0,
        }
    }
}

/// A store's objects through the layers [`ObjectOptions`] asks for, with their counters.
pub struct Objects {
    near: Option<Arc<dyn NearSource>>,
    /// The disk cache's objects by name, asked after `near`.
    held: Option<Arc<HeldObjects>>,
    disk: Option<Arc<DiskCache>>,
    source: Box<dyn ObjectSource>,
    blocks: Arc<dyn BlockSource>,
    packs: Arc<PackBlocks>,
    pub counters: Arc<FetchCounters>,
}

impl Objects {
    pub fn new(backend: Arc<dyn Backend>, opts: &ObjectOptions) -> io::Result<Objects> {
        let counters = Arc::new(FetchCounters::default());
        let far = Box::new(BackendBlocks::new(backend, counters.clone()));
        let (disk, blocks): (_, Arc<dyn BlockSource>) = match &opts.cache_dir {
            Some(dir) => {
                let disk = Arc::new(DiskCache::open(
                    dir,
                    opts.cache_bytes,
                    far,
                    counters.clone(),
                )?);
                (Some(disk.clone()), disk)
            }
            None => (None, Arc::from(far as Box<dyn BlockSource>)),
        };
        let packs = Arc::new(PackBlocks::new(blocks.clone(), opts.block_memory));
        let source: Box<dyn ObjectSource> = match opts.object_memory {
            0 => Box::new(packs.clone()),
            n => Box::new(MemoryObjects::new(packs.clone(), n).counting(counters.clone())),
        };
        let held = disk
            .clone()
            .map(|disk| Arc::new(HeldObjects::new(disk, packs.clone())));
        Ok(Objects {
            near: held.clone().map(|h| h as Arc<dyn NearSource>),
            held,
            disk,
            source,
            blocks,
            packs,
            counters,
        })
    }

    /// The disk cache, as a cache of shapes too.
    pub fn disk_cache(&self) -> Option<Arc<dyn crate::ShapeSource>> {
        self.disk.clone().map(|d| d as Arc<dyn crate::ShapeSource>)
    }

    /// Put a nearer source in front of the store's (e.g. the local Nix store); the disk cache's
    /// objects by name come after it.
    pub fn with_near(self, near: Arc<dyn NearSource>) -> Objects {
        let near: Arc<dyn NearSource> = match &self.held {
            Some(held) => Arc::new(NearLayers(vec![near, held.clone()])),
            None => near,
        };
        Objects {
            near: Some(near),
            ..self
        }
    }

    /// What is asked for objects by name before the record's object table: the near source,
    /// then the disk cache's objects.
    pub fn near(&self) -> Option<&Arc<dyn NearSource>> {
        self.near.as_ref()
    }

    /// Objects (and bytes) the disk cache handed out by name so far.
    pub fn held_served(&self) -> (u64, u64) {
        self.held.as_ref().map_or((0, 0), |h| h.served())
    }

    /// Note the objects of `record` (a path restored and checked) that sit in cached blocks, so
    /// that a later record naming another copy of one finds it ([`crate::held`]). Only a record
    /// whose object table was read has anything to note.
    pub fn remember(&self, record: &PathRecord) {
        let (Some(disk), Some(map)) = (&self.disk, record.objects.loaded()) else {
            return;
        };
        disk.note_held(map);
    }

    pub fn source(&self) -> &dyn ObjectSource {
        &*self.source
    }

    /// The decoded-block layer under the object layers, for readers that cut objects out of
    /// blocks themselves ([`PackBlocks::block`]).
    pub fn packs(&self) -> &PackBlocks {
        &self.packs
    }

    /// The objects of `record`, for `restore`.
    pub fn of<'a>(&'a self, record: &'a PathRecord) -> RecordObjects<'a> {
        RecordObjects {
            record,
            near: self.near.as_deref(),
            source: &*self.source,
            counters: Some(&self.counters),
        }
    }

    /// Fetch these blocks into the disk cache ahead of reading, in parallel (nothing without one).
    pub fn prefetch(&self, keys: &[BlockKey]) -> io::Result<()> {
        self.blocks.prefetch(keys)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use refstrip_cas::pack::PackWriter;
    use std::collections::HashMap;

    /// A pack in memory, served as blocks, counting fetches.
    pub(crate) struct MemoryPack {
        pub(crate) bytes: Vec<u8>,
        pub(crate) fetches: AtomicU64,
    }

    impl BlockSource for MemoryPack {
        fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>> {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            Ok(self.bytes[key.offset as usize..(key.offset + key.len) as usize].to_vec())
        }
    }

    /// A near source that has exactly one object, whatever bytes it is given for it (and says so
    /// for no other).
    pub(crate) struct One(pub(crate) ObjectId, pub(crate) Vec<u8>);

    impl NearSource for One {
        fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, CasError> {
            Ok((*id == self.0).then(|| self.1.clone()))
        }
        fn may_have(&self, id: &ObjectId) -> bool {
            *id == self.0
        }
        fn served(&self) -> (u64, u64) {
            (0, 0)
        }
    }

    #[test]
    fn blocks_evicted_and_dropped_lend_their_buffers_to_the_next_ones() {
        let (source, locs) = pack(6, 3 << 20);
        let keys: std::collections::BTreeSet<_> =
            locs.values().map(|loc| BlockKey::of("p", loc)).collect();
        assert!(keys.len() >= 3);
        let largest = keys.iter().map(|k| k.raw_len).max().unwrap();
        let mut keys = keys.into_iter();
        let packs = PackBlocks::new(source, largest + 1); // room for one decoded block
        let first = packs.block(&keys.next().unwrap()).unwrap();
        let first_buffer = first.as_ptr();
        let _second = packs.block(&keys.next().unwrap()).unwrap();
        // Out of memory now, but held here: its buffer is not free yet.
        assert_eq!(packs.buffers.0.lock().unwrap().len(), 0);
        drop(first);
        assert_eq!(packs.buffers.0.lock().unwrap().len(), 1);
        let third_key = keys.next().unwrap();
        let third = packs.block(&third_key).unwrap();
        assert_eq!(
            third.as_ptr(),
            first_buffer,
            "decoded into the first block's buffer"
        );
        assert_eq!(third.len() as u64, third_key.raw_len);
        // The pool keeps a few buffers of ordinary size, not more and not huge ones.
        let pool = BufferPool::default();
        for _ in 0..POOLED_BUFFERS + 2 {
            pool.give(Vec::with_capacity(4 << 20));
        }
        pool.give(Vec::with_capacity(POOLED_CAPACITY + 1));
        assert_eq!(pool.0.lock().unwrap().len(), POOLED_BUFFERS);
        assert!(pool
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.capacity() <= POOLED_CAPACITY));
    }

    /// `n` objects of `size` random-ish bytes, in blocks of up to 4 MiB.
    fn pack(n: u8, size: usize) -> (Arc<MemoryPack>, HashMap<ObjectId, Location>) {
        let mut w = PackWriter::new(Vec::new(), 1).unwrap();
        for i in 0..n {
            // Incompressible, so that blocks on disk are as large as the objects.
            let mut bytes = vec![0u8; size];
            blake3::Hasher::new()
                .update(&[i])
                .finalize_xof()
                .fill(&mut bytes);
            w.add(ObjectId::blob(&bytes), &bytes).unwrap();
        }
        let (bytes, index) = w.finish().unwrap();
        (
            Arc::new(MemoryPack {
                bytes,
                fetches: AtomicU64::new(0),
            }),
            index,
        )
    }

    struct Shared(Arc<MemoryPack>);
    impl BlockSource for Shared {
        fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>> {
            self.0.fetch(key)
        }
    }

    #[test]
    fn the_disk_cache_stays_under_its_cap_and_evicts_the_least_recently_used() {
        let (far, index) = pack(12, 5 << 20); // one 5 MiB block per object
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(FetchCounters::default());
        let cap = 24 << 20;
        let cache =
            DiskCache::open(dir.path(), cap, Box::new(Shared(far.clone())), counters).unwrap();
        let keys: Vec<BlockKey> = {
            let mut k: Vec<_> = index.values().map(|l| BlockKey::of("p", l)).collect();
            k.sort();
            k.dedup();
            k
        };
        let on_disk = || {
            cached_blocks(dir.path())
                .unwrap()
                .iter()
                .map(|b| b.1)
                .sum::<u64>()
        };
        for key in &keys {
            cache.fetch(key).unwrap();
            assert!(on_disk() <= cap, "{} bytes on disk", on_disk());
            // Keep the first block in use: it must survive every eviction.
            std::thread::sleep(Duration::from_millis(5));
            cache.fetch(&keys[0]).unwrap();
        }
        let fetched = far.fetches.load(Ordering::Relaxed);
        cache.fetch(&keys[0]).unwrap();
        assert_eq!(
            far.fetches.load(Ordering::Relaxed),
            fetched,
            "the hot block was kept"
        );
        cache.fetch(&keys[1]).unwrap();
        assert_eq!(
            far.fetches.load(Ordering::Relaxed),
            fetched + 1,
            "a cold one was evicted"
        );
        // Another process (a second cache over the same directory) sees the same blocks.
        let other = DiskCache::open(
            dir.path(),
            cap,
            Box::new(Shared(far.clone())),
            Arc::default(),
        )
        .unwrap();
        other.fetch(&keys[0]).unwrap();
        assert_eq!(far.fetches.load(Ordering::Relaxed), fetched + 1);
    }

    #[test]
    fn a_damaged_cached_block_is_fetched_again_and_never_handed_out() {
        let (far, index) = pack(3, 1000);
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(FetchCounters::default());
        let disk: Arc<dyn BlockSource> = Arc::new(
            DiskCache::open(dir.path(), 1 << 30, Box::new(Shared(far.clone())), counters).unwrap(),
        );
        let (id, loc) = index.iter().next().unwrap();
        disk.prefetch(&[BlockKey::of("p", loc)]).unwrap();
        // Same length, other bytes: decodes to garbage or not at all.
        let file = cached_blocks(dir.path()).unwrap()[0].0.clone();
        let mut bytes = fs::read(&file).unwrap();
        for b in bytes.iter_mut().skip(4) {
            *b ^= 0x55;
        }
        fs::write(&file, &bytes).unwrap();
        let source = PackBlocks::new(disk, 1 << 20);
        let got = source.object(id, "p", loc).unwrap().unwrap();
        assert_eq!(ObjectId::blob(&got), *id);
        assert_eq!(far.fetches.load(Ordering::Relaxed), 2, "fetched again once");
    }

    #[test]
    fn a_block_bad_at_the_far_end_is_not_kept_in_the_disk_cache() {
        let (good, index) = pack(2, 1000);
        // The same pack, but the first object's bytes differ from its name: every block still
        // decodes (to the declared length), one holds the wrong bytes.
        let mut w = PackWriter::new(Vec::new(), 1).unwrap();
        let mut ids: Vec<_> = index.iter().collect();
        ids.sort_by_key(|(_, l)| (l.block_offset, l.offset_in_block));
        for (n, (id, loc)) in ids.iter().enumerate() {
            let block = &good.bytes[loc.block_offset as usize..][..loc.block_len as usize];
            let raw = refstrip_cas::pack::decode_block(block, loc.block_raw_len).unwrap();
            let mut bytes = raw[loc.offset_in_block as usize..][..loc.size as usize].to_vec();
            bytes[0] ^= (n == 0) as u8;
            w.add(**id, &bytes).unwrap();
        }
        let (bytes, bad_index) = w.finish().unwrap();
        assert_eq!(bad_index, index, "same layout");
        let (id, loc) = ids[0];
        let key = BlockKey::of("p", loc);
        let far = Arc::new(MemoryPack {
            bytes,
            fetches: AtomicU64::new(0),
        });
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(dir.path(), 1 << 30, Box::new(Shared(far)), Arc::default());
        let source = PackBlocks::new(Arc::new(disk.unwrap()), 1 << 20);
        // Cut out unchecked, the block is handed out (restore's NarHash is what catches it)...
        assert_ne!(ObjectId::blob(&source.block(&key).unwrap()), *id);
        // ...read as an object, it is refused, and no copy of it stays on disk.
        let err = source.object(id, "p", loc).unwrap_err();
        assert!(err.to_string().contains("BLAKE3"), "{err}");
        assert!(cached_blocks(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn threads_wanting_one_block_fetch_it_once() {
        /// A far end slow enough that every thread misses memory before the first fetch lands.
        struct Slow(Arc<MemoryPack>);
        impl BlockSource for Slow {
            fn fetch(&self, key: &BlockKey) -> io::Result<Vec<u8>> {
                std::thread::sleep(Duration::from_millis(50));
                self.0.fetch(key)
            }
        }
        let (far, index) = pack(4, 1000);
        let source = PackBlocks::new(Arc::new(Slow(far.clone())), 1 << 20);
        let objects: Vec<_> = index.iter().collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for (id, loc) in &objects {
                        source.object(id, "p", loc).unwrap().unwrap();
                    }
                });
            }
        });
        let blocks = index
            .values()
            .map(|l| l.block_offset)
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(far.fetches.load(Ordering::Relaxed), blocks.len() as u64);
    }

    #[test]
    fn memory_layers_stay_within_their_budgets_and_near_sources_come_first() {
        let (far, index) = pack(40, 100);
        let blocks = PackBlocks::new(Arc::new(Shared(far.clone())), 1 << 20);
        let memory = MemoryObjects::new(blocks, 16 * 100);
        for (id, loc) in &index {
            assert_eq!(
                memory
                    .object(id, "p", loc)
                    .unwrap()
                    .map(|b| ObjectId::blob(&b)),
                Some(*id)
            );
            assert!(memory.used() <= 1600);
        }

        let (id, loc) = index.iter().next().unwrap();
        let (other, _) = index.iter().nth(1).unwrap();
        let table: crate::ObjectMap = index
            .iter()
            .map(|(id, loc)| (*id, ("p".to_string(), *loc)))
            .collect();
        let table_reads = Arc::new(AtomicU64::new(0));
        let reads = table_reads.clone();
        let record = record_of(
            *id,
            loc.size,
            crate::Locations::deferred(move || {
                reads.fetch_add(1, Ordering::Relaxed);
                Ok(table.clone().into())
            }),
        );
        let near = One(*id, b"near".to_vec());
        let packs = PackBlocks::new(Arc::new(Shared(far.clone())), 0);
        let mut objects = RecordObjects {
            counters: None,
            record: &record,
            near: Some(&near),
            source: &packs,
        };
        let before = far.fetches.load(Ordering::Relaxed);
        assert_eq!(objects.get(id).unwrap(), b"near");
        assert_eq!(
            far.fetches.load(Ordering::Relaxed),
            before,
            "the near hit fetched nothing"
        );
        assert_eq!(
            table_reads.load(Ordering::Relaxed),
            0,
            "nor the object table"
        );
        let got = objects.get(other).unwrap();
        assert_eq!(ObjectId::blob(&got), *other);
        assert_eq!(far.fetches.load(Ordering::Relaxed), before + 1);
        assert_eq!(table_reads.load(Ordering::Relaxed), 1);
        objects.get(other).unwrap();
        assert_eq!(
            table_reads.load(Ordering::Relaxed),
            1,
            "the table is fetched once"
        );
    }

    /// A record of one file made of the object `id`.
    pub(crate) fn record_of(id: ObjectId, size: u64, objects: crate::Locations) -> PathRecord {
        use refstrip_strip::{Manifest, Node, RefTable};
        PathRecord {
            manifest: Manifest {
                store_dir: b"/nix/store".to_vec(),
                refs: RefTable::new(b"0000000000000000000000000000000z-x", &[]).unwrap(),
                references: Vec::new(),
                nar_hash: [0; 32],
                nar_size: 1 << 20,
                info: Vec::new(),
                root: Node::File {
                    executable: false,
                    size,
                    digest: id.digest,
                    patches: Vec::new(),
                },
            },
            objects,
        }
    }
}
