//! The cache-side normalizer job: read store paths from a [`NarSource`] (a binary cache or a Nix
//! store), strip each into a normalized [`Store`], and say what it cost.
//!
//! Workers (one per core by default) take paths from a shared queue, largest first. Each strips
//! into its own staging pack, verifying the NarHash as the NAR streams by; once a pack is sealed
//! (published under its BLAKE3), the records of the paths whose new objects it holds are written.
//! So a record never points at a missing pack, an interrupted ingest leaves only scratch files
//! and sealed packs behind, and a rerun skips exactly the paths that have records. Memory per
//! worker is bounded by its open pack blocks (one per object class), the blocks compressing on the
//! shared thread pool (at most one per pool thread and one more), one chunk and the NAR reader's
//! buffer, whatever the sizes.

mod delta;
pub mod push;
mod sign;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use refstrip_backend::RequestCounts;
use refstrip_cas::FileSink;
use refstrip_nix::{NarInfo, SecretKey, StorePath};
use refstrip_read::pathinfo::StripNarError;
use refstrip_read::PathRecord;
use refstrip_source::{NarSource, SourceError};
use refstrip_store::{StagingPack, Store, StoreError, PACK_TARGET};
use refstrip_strip::{Manifest, StripOptions};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub jobs: usize,
    /// zstd level of pack blocks.
    pub level: i32,
    /// `(i, n)`: only paths whose shard is `i` of `n` (see [`shard_of`]).
    pub shard: Option<(u64, u64)>,
    pub strip: StripOptions,
    /// Follow references from the given paths.
    pub closure: bool,
    /// The operator's key: every path's record gets its signature (next to the upstream ones), and
    /// records already in the store that lack it are re-signed (one record read each).
    pub sign_key: Option<SecretKey>,
    /// Store deltas from each path's predecessor (spec §8 offers; see `delta`).
    pub deltas: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            level: refstrip_cas::pack::DEFAULT_LEVEL,
            shard: None,
            strip: StripOptions::default(),
            closure: true,
            sign_key: None,
            deltas: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Paths selected (after closure and sharding).
    pub paths: u64,
    pub ingested: u64,
    /// Already in the store.
    pub skipped: u64,
    /// Of those, records that lacked the `sign_key` signature and were rewritten with it.
    pub resigned: u64,
    pub failed: Vec<(String, String)>,
    /// NAR bytes of the ingested paths.
    pub nar_bytes: u64,
    /// Compressed bytes of the cache's own files for the ingested paths (narinfo FileSize).
    pub source_file_bytes: u64,
    pub new_objects: u64,
    /// Uncompressed bytes of new objects.
    pub new_object_bytes: u64,
    /// Bytes added to the store: sealed packs plus path records.
    pub stored_bytes: u64,
    /// Delta offers written (files that a client holding the predecessor rebuilds from a delta),
    /// and the bytes of the new delta objects (part of `stored_bytes`).
    pub deltas: u64,
    pub delta_bytes: u64,
    pub packs: u64,
    pub seconds: f64,
    /// Requests to an object-store destination since it was opened (catalog refresh included).
    pub store_requests: Option<RequestCounts>,
    /// Requests to a source in an object store.
    pub source_requests: Option<RequestCounts>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which of `n` shards a path belongs to: its digest's first 8 bytes modulo `n`, so every worker
/// of a sharded job agrees without talking to the others.
pub fn shard_of(path: &StorePath, n: u64) -> u64 {
    shard_of_digest(&path.digest(), n)
}

/// [`shard_of`] from a hash part alone (a binary cache's listing names its narinfos by it);
/// `None` if it is not one.
pub fn shard_of_hash_part(hash_part: &str, n: u64) -> Option<u64> {
    let mut digest = [0; refstrip_nix::store_path::DIGEST_LEN];
    refstrip_nix::base32::decode_into(hash_part, &mut digest).ok()?;
    Some(shard_of_digest(&digest, n))
}

fn shard_of_digest(digest: &[u8], n: u64) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("20-byte digest")) % n
}

/// Resolve the paths to ingest: the given ones (or all, if none are given), their closure, then the
/// shard. Returns their narinfos, largest NAR first.
pub fn select(
    source: &dyn NarSource,
    roots: Vec<StorePath>,
    options: &IngestOptions,
) -> Result<Vec<NarInfo>, IngestError> {
    let mut infos = if roots.is_empty() {
        // Shard by the listing's names before fetching narinfos: each is fetched by one worker.
        source.list_where(&|hash| match options.shard {
            Some((i, n)) => shard_of_hash_part(hash, n) == Some(i),
            None => true,
        })?
    } else {
        Vec::new()
    };
    let mut queue: VecDeque<StorePath> = roots.into();
    let mut seen = HashSet::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let info = source.narinfo(&path)?;
        if options.closure {
            queue.extend(
                info.references
                    .iter()
                    .filter(|r| !seen.contains(*r))
                    .cloned(),
            );
        }
        infos.push(info);
    }
    if let Some((i, n)) = options.shard {
        infos.retain(|info| shard_of(&info.store_path, n) == i);
    }
    infos.sort_by(|a, b| {
        b.nar_size
            .cmp(&a.nar_size)
            .then_with(|| a.store_path.cmp(&b.store_path))
    });
    Ok(infos)
}

/// A path stripped into a staging pack, waiting for the packs holding its objects to be sealed
/// (its worker's, and those of other workers that claimed an object first).
struct Pending {
    manifest: Manifest,
    needed: Vec<refstrip_cas::ObjectId>,
    offers: Vec<refstrip_read::Offer>,
}

/// Ingest `paths` (from [`select`]) into `store`. Per-path failures (bad NarHash, truncated or
/// undecodable NAR) are reported and skipped; they leave no record behind.
pub fn ingest(
    source: &dyn NarSource,
    store: &Store,
    paths: Vec<NarInfo>,
    options: &IngestOptions,
    progress: &ProgressBar,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let _writing = store.write_lock()?;
    let total = paths.len() as u64;
    progress.set_length(paths.iter().map(|p| p.nar_size).sum());
    let queue = Mutex::new(VecDeque::from(paths));
    let report = Mutex::new(IngestReport {
        paths: total,
        ..IngestReport::default()
    });
    let stored = AtomicU64::new(0);
    let waiting = Mutex::new(Vec::new());
    // Predecessors are paths the store had before this run: a run's own paths are not read
    // back while other workers may still be writing them.
    let predecessors = match options.deltas {
        true => Some(delta::Predecessors::of(store)?),
        false => None,
    };
    let objects = store
        .reader()
        .objects(&refstrip_read::objects::ObjectOptions::default())
        .map_err(StoreError::from)?;

    std::thread::scope(|scope| -> Result<(), IngestError> {
        let workers: Vec<_> = (0..options.jobs.max(1))
            .map(|_| {
                let shared = Shared {
                    queue: &queue,
                    report: &report,
                    stored: &stored,
                    waiting: &waiting,
                    predecessors: predecessors.as_ref(),
                    objects: &objects,
                };
                scope.spawn(move || worker(source, store, shared, options, progress))
            })
            .collect();
        for w in workers {
            w.join().expect("ingest worker panicked")?;
        }
        Ok(())
    })?;
    // Every pack of this process is sealed now; paths still waiting need objects another ingest
    // process claimed (or that vanished).
    let mut report = report.into_inner().expect("report lock");
    let mut waiting = waiting.into_inner().expect("waiting lock");
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for p in waiting {
            if let Some(objects) = locate_all(store, &p, "", &HashMap::new())? {
                stored.fetch_add(write_record(store, p, objects)?, Ordering::Relaxed);
            } else if can_complete(store, &p)? {
                still.push(p);
            } else {
                report.failed.push((
                    String::from_utf8_lossy(p.manifest.basename()).into_owned(),
                    "an object it needs was claimed by another ingest process that stopped \
                     before storing it; run ingest again"
                        .into(),
                ));
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            progress.set_message("waiting for another ingest process");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    store.release_claims()?;

    report.stored_bytes = stored.into_inner();
    report.seconds = started.elapsed().as_secs_f64();
    report.store_requests = store.requests();
    report.source_requests = source.requests();
    progress.finish_and_clear();
    Ok(report)
}

/// What the workers of one ingest share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    queue: &'a Mutex<VecDeque<NarInfo>>,
    report: &'a Mutex<IngestReport>,
    stored: &'a AtomicU64,
    /// Paths whose objects include some in another worker's pack, not sealed yet.
    waiting: &'a Mutex<Vec<Pending>>,
    predecessors: Option<&'a delta::Predecessors>,
    /// The store's objects, for reading delta bases.
    objects: &'a refstrip_read::objects::Objects,
}

fn worker(
    source: &dyn NarSource,
    store: &Store,
    shared: Shared<'_>,
    options: &IngestOptions,
    progress: &ProgressBar,
) -> Result<(), IngestError> {
    let Shared { queue, report, .. } = shared;
    let mut pack = store.new_pack(options.level)?;
    let mut pending = Vec::new();
    loop {
        let next = queue.lock().expect("queue lock").pop_front();
        let Some(info) = next else { break };
        let hash_part = info.store_path.hash_part().to_string();
        if store.has_path(&hash_part)? {
            let resigned = match &options.sign_key {
                Some(key) => sign::sign_existing(store, &hash_part, key),
                None => Ok(false),
            };
            let mut r = report.lock().expect("report lock");
            r.skipped += 1;
            match resigned {
                Ok(resigned) => r.resigned += u64::from(resigned),
                // A record that cannot be read (or rewritten) fails this path, not the job.
                Err(e) => {
                    progress.println(format!("refstrip: not re-signing {}: {e}", info.store_path));
                    r.failed
                        .push((info.store_path.to_string(), format!("re-signing: {e}")));
                }
            }
            progress.inc(info.nar_size);
            continue;
        }
        progress.set_message(info.store_path.name().to_string());
        // A predecessor that cannot be read only costs this path its deltas.
        let base = shared
            .predecessors
            .and_then(|p| p.of_path(&hash_part, info.store_path.name()))
            .and_then(|h| store.reader().record(h).ok())
            .map(|(record, _)| record);
        let base = base.as_ref().map(|b| (b, shared.objects));
        match strip_path(source, &info, options, base, &mut pack) {
            Ok((p, new_objects, new_bytes, made)) => {
                let mut r = report.lock().expect("report lock");
                r.ingested += 1;
                r.nar_bytes += info.nar_size;
                r.source_file_bytes += info.file_size.unwrap_or(0);
                r.new_objects += new_objects;
                r.new_object_bytes += new_bytes;
                r.deltas += made.offers.len() as u64;
                r.delta_bytes += made.bytes;
                pending.push(p);
            }
            Err(why) => {
                progress.println(format!("refstrip: skipping {}: {why}", info.store_path));
                report
                    .lock()
                    .expect("report lock")
                    .failed
                    .push((info.store_path.to_string(), why));
            }
        }
        progress.inc(info.nar_size);
        if pack.written_bytes() >= PACK_TARGET {
            publish(store, &mut pack, &mut pending, shared)?;
        }
    }
    publish(store, &mut pack, &mut pending, shared)
}

/// Strip one path into the staging pack, checking the NAR against its narinfo, then add the
/// deltas from `base` (its predecessor's record, and the store's objects to read it with).
fn strip_path(
    source: &dyn NarSource,
    info: &NarInfo,
    options: &IngestOptions,
    base: Option<(&PathRecord, &refstrip_read::objects::Objects)>,
    pack: &mut StagingPack<'_>,
) -> Result<(Pending, u64, u64, delta::Made), String> {
    let nar = source.nar(info).map_err(|e| e.to_string())?;
    // Signed before the NarHash/NarSize check below, which fails the path (and drops the
    // signature) if the NAR does not match what the signature covers.
    let signed_info;
    let info = match &options.sign_key {
        Some(key) => {
            signed_info = sign::signed(info, key);
            &signed_info
        }
        None => info,
    };
    let mut sink = refstrip_cas::delta::Keep::new(FileSink::new(&mut *pack), base.is_some());
    let manifest = refstrip_read::pathinfo::strip_nar(nar, info, &options.strip, &mut sink)
        .map_err(|e| match e {
            StripNarError::Strip(e) => format!("reading NAR: {e}"),
            e => e.to_string(),
        })?;
    let kept = sink.kept;
    let sink = sink.inner;
    let (mut new_objects, mut new_bytes, mut needed) =
        (sink.new_objects, sink.new_bytes, sink.needed);
    let mut made = match base {
        Some((base, objects)) => delta::make(objects, base, &manifest, &kept, options.level)
            .map_err(|e| format!("making deltas: {e}"))?,
        None => delta::Made::default(),
    };
    let (objects, bytes, more) =
        delta::write(pack, kept, &mut made).map_err(|e| format!("writing objects: {e}"))?;
    new_objects += objects;
    new_bytes += bytes;
    needed.extend(more);
    let pending = Pending {
        manifest,
        needed,
        offers: made.offers.clone(),
    };
    Ok((pending, new_objects, new_bytes, made))
}

/// Seal the staging pack, then write the records of the paths waiting on it whose objects are
/// all sealed now; the others wait for another worker's seal.
fn publish(
    store: &Store,
    pack: &mut StagingPack<'_>,
    pending: &mut Vec<Pending>,
    shared: Shared<'_>,
) -> Result<(), IngestError> {
    if !pack.is_empty() {
        shared.report.lock().expect("report lock").packs += 1;
    }
    let (pack_id, index, pack_bytes) = pack.seal()?;
    shared.stored.fetch_add(pack_bytes, Ordering::Relaxed);
    let waiting = std::mem::take(&mut *shared.waiting.lock().expect("waiting lock"));
    for p in pending.drain(..).chain(waiting) {
        match locate_all(store, &p, &pack_id, &index)? {
            Some(objects) => {
                let size = write_record(store, p, objects)?;
                shared.stored.fetch_add(size, Ordering::Relaxed);
            }
            None => shared.waiting.lock().expect("waiting lock").push(p),
        }
    }
    Ok(())
}

/// Where every object of `p` lives: in the pack just sealed, or per the catalog. `None` while one
/// is claimed by a pack not sealed yet.
fn locate_all(
    store: &Store,
    p: &Pending,
    pack_id: &str,
    index: &HashMap<refstrip_cas::ObjectId, refstrip_cas::pack::Location>,
) -> Result<Option<refstrip_read::ObjectMap>, IngestError> {
    let mut objects = HashMap::new();
    for id in &p.needed {
        let location = match index.get(id) {
            Some(loc) => (pack_id.to_string(), *loc),
            None => match store.locate(id)? {
                Some(location) => location,
                None => return Ok(None),
            },
        };
        objects.insert(*id, location);
    }
    Ok(Some(objects))
}

/// Whether `p` can still complete: every object it needs that is not catalogued yet is being
/// stored by another live ingest process.
fn can_complete(store: &Store, p: &Pending) -> Result<bool, IngestError> {
    for id in &p.needed {
        // The claim first: sealing catalogues an object and drops its claim at once, so an object
        // unclaimed now is either catalogued already or stored by nobody.
        if store.claimed_elsewhere(id)?.is_none() && store.locate(id)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_record(
    store: &Store,
    p: Pending,
    objects: refstrip_read::ObjectMap,
) -> Result<u64, IngestError> {
    let record = PathRecord {
        manifest: p.manifest,
        objects: refstrip_read::Table {
            objects,
            offers: p.offers,
        }
        .into(),
    };
    Ok(store.add_record(&record)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_part_alone_picks_the_same_shard_as_its_store_path() {
        for hash in [
            "00g43sadg9wq30ml2bh9hnw47p8a79l0",
            "xm2mkgvyihnmjjz5dz885nfn42djn91s",
            "5kg8hg69m51k6pmj4242wh048bjbjm3i",
        ] {
            let path = StorePath::from_base_name(&format!("{hash}-x")).unwrap();
            for n in 1..8 {
                assert_eq!(
                    shard_of_hash_part(hash, n),
                    Some(shard_of(&path, n)),
                    "{hash} {n}"
                );
            }
        }
        assert_eq!(shard_of_hash_part("not-a-hash", 3), None);
    }
}
