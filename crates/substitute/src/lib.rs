//! Substitute store paths from a normalized store into a Nix store: this crate's one job is to make
//! a closure valid in a Nix store (a chroot root or `/`) exactly as `nix copy` from a signed binary
//! cache would, reading only the normalized store's path records and the pack blocks it lacks.
//!
//! What a run does, in order:
//! 1. **Plan.** Walk the closure of the requested paths through their records (`paths/<hash>`,
//!    fetched in parallel level by level), stopping at paths already valid in the Nix store.
//! 2. **Trust.** Rebuild each path's narinfo from its manifest and check its original signatures
//!    against the trusted keys (unless told not to), before anything is fetched or written.
//! 3. **Lock.** Take Nix's locks ([`nixdb`]): the big lock and the GC lock shared, then every path's
//!    `.lock` in sorted order (so two substituters cannot deadlock), re-checking validity under it.
//! 4. **Fetch.** Every pack block the plan needs that the local block cache lacks, in parallel
//!    (`refstrip_read::objects`: the same layered object sources every client reads through).
//! 5. **Restore**, paths in parallel (largest first, one per core), each a pipeline of three
//!    threads: read-ahead cuts its objects out of decoded blocks unchecked (the NarHash covers
//!    them; `unchecked`), [`tree::TreeWriter`] writes the tree into a temporary name in the store
//!    directory while `refstrip_strip::restore_threaded` patches the references back and computes
//!    the NAR's SHA-256 on the third; a NarHash mismatch removes the temporary tree and the path is
//!    written again with every object checked. Then it is renamed into place. Large files whose
//!    normalized contents a local path holds are copied from it once the copy checks out
//!    (`copy`). A file without patches is a hard link to an earlier copy in `<store>/.links`
//!    where one exists ([`tree::Links`]): one `linkat` instead of creating and writing it (its
//!    bytes are still read and hashed).
//! 6. **Register.** `syncfs` the store's file system, then register every new path in one SQLite
//!    transaction. If anything failed, nothing is registered and the written paths are removed.
//!    Unpatched files written by this run are shared in `.links` once durable.
//!
//! A run killed at any moment leaves no registered path with wrong or missing contents: a path is
//! registered only after its contents are complete and durable; leftovers (temporary trees, renamed
//! but unregistered paths) are invalid paths, which the next run (or Nix) deletes before writing.

// The kernel interfaces this crate needs (see the workspace lint) have no safe wrapper in std.
#![allow(unsafe_code)]

mod copy;
pub mod nixdb;
pub mod tree;
mod unchecked;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use indicatif::ProgressBar;
use refstrip_cas::{FileSource, Kind, ObjectId, ObjectRead};
use refstrip_nix::{signature, PublicKey};
use refstrip_read::objects::{blocks_of, FetchCounters, NearSource, ObjectOptions, Objects};
use refstrip_read::{PathRecord, ReadError, StoreReader, Visit};
use refstrip_strip::{ContentDigest, ContentSource, Manifest};

use crate::copy::CopyCounters;
use crate::nixdb::{DbError, NixDb, PathLock, ValidPathInfo};
use crate::tree::{remove_tree, Links, Shareable, TreeWriter};
use crate::unchecked::{Budget, CopySlot, FedSource, Feeder, Sources};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{path}: {why}")]
    Path { path: String, why: String },
    #[error("{} of the paths to substitute failed, nothing was registered:\n  {}", .0.len(), .0.join("\n  "))]
    Failed(Vec<String>),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io {
        what,
        error: source,
    }
}

pub struct Options {
    /// The Nix store root: `/` for the system store, or a chroot store's root.
    pub root: PathBuf,
    /// The logical store directory.
    pub store_dir: String,
    /// How objects are read: the local block cache (`cache_dir: None`: fetch every block) and
    /// what is kept in memory.
    pub objects: ObjectOptions,
    /// Keys one of which must have signed each path; `None` skips the check (`--no-check-sigs`).
    pub trusted_keys: Option<Vec<PublicKey>>,
    /// Worker threads for fetching and restoring (0: one per core).
    pub jobs: usize,
    /// Hard-link unpatched files from copies in `<store>/.links` and share the ones written.
    pub links: bool,
    pub progress: ProgressBar,
    /// A source tried before the store for every object (the local Nix store), or none.
    pub near: Option<Arc<dyn NearSource>>,
    /// Hand back what indexing the written paths needs ([`Report::written`]), for a local-store
    /// index of the target store.
    pub keep_written: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Paths written and registered.
    pub paths: u64,
    /// Paths of the closure that were valid already (not walked further).
    pub already_valid: u64,
    pub nar_bytes: u64,
    pub files: u64,
    /// Files that became hard links to a copy in `<store>/.links` instead of being written.
    pub linked_files: u64,
    /// Files written now and shared in `<store>/.links` for later runs.
    pub shared_files: u64,
    /// Bytes read from the normalized store: path records plus pack blocks.
    pub fetched_bytes: u64,
    pub record_bytes: u64,
    pub fetched_blocks: u64,
    pub fetched_block_bytes: u64,
    /// Pack blocks found in the local cache instead.
    pub reused_blocks: u64,
    pub reused_bytes: u64,
    /// Objects (and their bytes) the disk cache answered by name (noted as earlier paths were
    /// restored), wherever the records say the store keeps them and without their object tables.
    pub cached_objects: u64,
    pub cached_bytes: u64,
    /// Objects (and their bytes) taken from the near source (the local Nix store) instead.
    pub local_objects: u64,
    pub local_bytes: u64,
    /// Files rebuilt from their predecessor in the local Nix store and a delta (spec §8), the
    /// deltas' bytes, the files' bytes; deltas tried and not used (the full object was fetched).
    pub delta_files: u64,
    pub delta_bytes: u64,
    pub delta_file_bytes: u64,
    pub deltas_rejected: u64,
    /// Large files copied from files of the local Nix store (reflinked where the file system
    /// shares extents), and their bytes; local files that did not check out and were written.
    pub copied_files: u64,
    pub copied_bytes: u64,
    pub reflinked_files: u64,
    pub refused_copies: u64,
    pub seconds: f64,
    /// Where the time went: planning (reading records), fetching blocks, writing the trees
    /// (decompress, patch, hash, write), making them durable (`syncfs`), registering.
    pub phases: Phases,
    /// The paths registered, with [`Options::keep_written`].
    #[serde(skip)]
    pub written: Vec<WrittenPath>,
}

/// A path this run wrote and registered: its manifest and the chunk lists of its large files (by
/// file digest), which together say where each of its objects lies in the written files.
#[derive(Debug, Clone)]
pub struct WrittenPath {
    pub manifest: Manifest,
    pub chunk_lists: HashMap<ContentDigest, Vec<u8>>,
}

/// Seconds per phase of a run (see [`Report::phases`]).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Phases {
    pub plan: f64,
    pub fetch: f64,
    pub restore: f64,
    pub sync: f64,
    pub register: f64,
}

/// The default object cache: `$XDG_CACHE_HOME/refstrip`, else `~/.cache/refstrip`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("refstrip"))
}

struct Planned {
    record: PathRecord,
    /// Logical store path.
    path: String,
    basename: String,
}

/// Substitute the closures of `roots` (hash parts) from `store` into the Nix store `opts.root`.
pub fn substitute(store: &StoreReader, roots: &[String], opts: &Options) -> Result<Report, Error> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs)
        .build()
        .map_err(|e| io_err("starting worker threads")(io::Error::other(e)))?;
    pool.install(|| substitute_in_pool(store, roots, opts))
}

fn substitute_in_pool(
    store: &StoreReader,
    roots: &[String],
    opts: &Options,
) -> Result<Report, Error> {
    let start = Instant::now();
    if store.expected_store_dir() != Some(opts.store_dir.as_str()) {
        return Err(Error::Path {
            path: store.describe(),
            why: format!(
                "must be opened expecting store directory {}",
                opts.store_dir
            ),
        });
    }
    let mut report = Report::default();
    let mut db = NixDb::open(&opts.root, &opts.store_dir)?;
    // Opened before the records are read: its disk cache keeps their shapes too.
    let mut objects = store
        .objects(&opts.objects)
        .map_err(io_err("opening the object cache"))?;

    // 1. Plan: the closure, minus what is valid already. The reader checks every record (filed
    // under its own hash, in this store directory, within its limits).
    let closure = store.closure(roots, |record| {
        Ok::<_, Error>(match db.is_valid(&record.store_path())? {
            true => Visit::Exclude,
            false => Visit::Include,
        })
    })?;
    report.record_bytes = closure.record_bytes;
    report.already_valid = closure.excluded;
    let mut plan: Vec<Planned> = closure
        .records
        .into_iter()
        .map(|record| Planned {
            path: format!("{}/{}", opts.store_dir, record.basename()),
            basename: record.basename(),
            record,
        })
        .collect();

    // 2. Trust: the original signatures over the original narinfo fields.
    if let Some(keys) = &opts.trusted_keys {
        for p in &plan {
            let info = refstrip_read::pathinfo::narinfo(
                &p.record.manifest,
                String::new(),
                None,
                None,
                None,
            )
            .map_err(|e| Error::Path {
                path: p.path.clone(),
                why: e.to_string(),
            })?;
            signature::verify(&info, keys).map_err(|e| Error::Path {
                path: p.path.clone(),
                why: format!("refusing it: {e}"),
            })?;
        }
    }

    // 3. Lock every path (sorted, so concurrent substituters cannot deadlock), then re-check.
    plan.sort_by(|a, b| a.path.cmp(&b.path));
    let real_store = db.real_store().to_path_buf();
    let mut locks = Vec::with_capacity(plan.len());
    let mut unlocked = Vec::with_capacity(plan.len());
    for p in plan {
        let lock = PathLock::lock(&real_store.join(&p.basename))
            .map_err(io_err(format!("locking {}", p.path)))?;
        if db.is_valid(&p.path)? {
            report.already_valid += 1; // another process substituted it meanwhile
            continue;
        }
        locks.push(lock);
        unlocked.push(p);
    }
    let mut plan = unlocked;
    let total_nar: u64 = plan.iter().map(|p| p.record.manifest.nar_size).sum();

    report.phases.plan = start.elapsed().as_secs_f64();
    let mut phase = Instant::now();
    let mut lap = || {
        std::mem::replace(&mut phase, Instant::now())
            .elapsed()
            .as_secs_f64()
    };

    // 4. Fetch the missing blocks.
    let near_before = opts.near.as_ref().map(|n| n.served());
    // Only the blocks of objects the near sources (the local store, the disk cache's objects by
    // name) cannot give (one they turn out not to have after all is fetched when read); a
    // record's object table is fetched only if it has such objects.
    if let Some(near) = &opts.near {
        objects = objects.with_near(near.clone());
    }
    let near = objects.near().cloned();
    let blocks = blocks_of(plan.iter().map(|p| &p.record), near.as_deref())
        .map_err(|why| io_err("reading object tables")(io::Error::other(why)))?;
    opts.progress.set_length(total_nar);
    opts.progress.set_message("fetching");
    objects
        .prefetch(&blocks)
        .map_err(io_err(format!("fetching blocks from {}", store.describe())))?;

    report.phases.fetch = lap();

    // 5. Restore, largest paths first so the parallel tail is short.
    opts.progress.set_message("restoring");
    plan.sort_by_key(|p| std::cmp::Reverse(p.record.manifest.nar_size));
    let store_fd =
        File::open(&real_store).map_err(io_err(format!("opening {}", real_store.display())))?;
    let links = if opts.links {
        // Its map lives beside Nix's state (`ROOT/nix/var/nix`): it describes this store.
        let state = opts.root.join("nix/var/refstrip");
        let wanted: HashSet<ContentDigest> = plan
            .iter()
            .flat_map(|p| p.record.manifest.objects())
            .map(|(digest, _)| digest)
            .collect();
        Some(
            Links::open(&real_store, &state, wanted.iter())
                .map_err(io_err(format!("opening {}/.links", real_store.display())))?,
        )
    } else {
        None
    };
    let failures = Mutex::new(Vec::new());
    let written = Mutex::new(Vec::new());
    let copies = CopyCounters::default();
    let chunk_lists = Mutex::new(HashMap::new());
    let sources = Sources {
        packs: objects.packs(),
        counters: &objects.counters,
        chunk_lists: opts.keep_written.then_some(&chunk_lists),
        near: near.as_deref(),
        store: &store_fd,
        copies: &copies,
        budget: Budget::new(PINNED_BYTES),
    };
    // Paths in flight, largest first, each a pipeline of three threads (see `restore_path`), so
    // the largest path is not written by one thread while the others go idle.
    let next = AtomicUsize::new(0);
    let syncer = Syncer::default();
    std::thread::scope(|s| {
        s.spawn(|| syncer.run(&store_fd));
        let workers: Vec<_> = (0..rayon::current_num_threads())
            .map(|_| {
                s.spawn(|| {
                    while let Some(p) = plan.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let restored = restore_path(
                            p,
                            &objects,
                            &sources,
                            &store_fd,
                            &real_store,
                            links.as_ref(),
                        );
                        match restored {
                            Ok(w) => {
                                syncer.wrote(p.record.manifest.nar_size);
                                objects.remember(&p.record);
                                opts.progress.inc(p.record.manifest.nar_size);
                                written.lock().expect("poisoned").push(w);
                            }
                            Err(e) => {
                                let msg = match e {
                                    Error::Path { .. } => e.to_string(),
                                    e => format!("{}: {e}", p.path),
                                };
                                failures.lock().expect("poisoned").push(msg);
                            }
                        }
                    }
                })
            })
            .collect();
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        // The syncer must stop before a worker's panic goes on, or the scope would wait for it.
        syncer.finish();
        for result in joined {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let written: Vec<Written> = written.into_inner().expect("poisoned");
    let failures = failures.into_inner().expect("poisoned");
    let remove_all = |plan: &[Planned]| {
        for p in plan {
            let _ = remove_tree(&real_store.join(&p.basename));
        }
    };
    if !failures.is_empty() {
        remove_all(&plan);
        return Err(Error::Failed(failures));
    }

    report.phases.restore = lap();

    // 6. Durable, then registered, all at once.
    // SAFETY: syncfs on a valid descriptor.
    if unsafe { libc::syncfs(store_fd.as_raw_fd()) } != 0 {
        return Err(io_err("syncfs")(io::Error::last_os_error()));
    }
    report.phases.sync = lap();
    // Only durable, verified files become shared copies.
    if let Some(links) = &links {
        let files = written
            .iter()
            .flat_map(|w| w.shareable.iter().map(|f| (w.dest.as_path(), f)));
        report.shared_files = links
            .publish(files)
            .map_err(io_err("sharing files in .links"))?;
    }
    let infos: Vec<ValidPathInfo> = plan
        .iter()
        .map(|p| valid_path_info(p, &opts.store_dir, &real_store))
        .collect();
    if let Err(e) = db.register(&infos) {
        remove_all(&plan);
        return Err(e.into());
    }
    drop(locks);
    report.phases.register = lap();

    report.paths = plan.len() as u64;
    report.nar_bytes = total_nar;
    report.files = written.iter().map(|w| w.files).sum();
    report.linked_files = written.iter().map(|w| w.linked).sum();
    let counters = &objects.counters;
    report.fetched_blocks = FetchCounters::get(&counters.fetched_blocks);
    report.fetched_block_bytes = FetchCounters::get(&counters.fetched_bytes);
    report.reused_blocks = FetchCounters::get(&counters.reused_blocks);
    report.reused_bytes = FetchCounters::get(&counters.reused_bytes);
    (report.cached_objects, report.cached_bytes) = objects.held_served();
    report.delta_files = FetchCounters::get(&counters.deltas_applied);
    report.delta_bytes = FetchCounters::get(&counters.delta_bytes);
    report.delta_file_bytes = FetchCounters::get(&counters.delta_output_bytes);
    report.deltas_rejected = FetchCounters::get(&counters.deltas_rejected);
    report.record_bytes += store.deferred_bytes();
    report.fetched_bytes = report.record_bytes + report.fetched_block_bytes;
    if let (Some(near), Some((objects, bytes))) = (&opts.near, near_before) {
        let (o, b) = near.served();
        report.local_objects = o - objects;
        report.local_bytes = b - bytes;
    }
    if opts.keep_written {
        // Registered already: a chunk list that cannot be read now only leaves that path to the
        // index's next update.
        report.written = plan
            .into_iter()
            .filter_map(|p| {
                let chunk_lists = chunk_lists_of(&p.record, &objects, &chunk_lists).ok()?;
                Some(WrittenPath {
                    manifest: p.record.manifest,
                    chunk_lists,
                })
            })
            .collect();
    }
    report.copied_files = copies.files.load(Ordering::Relaxed);
    report.copied_bytes = copies.bytes.load(Ordering::Relaxed);
    report.reflinked_files = copies.reflinked.load(Ordering::Relaxed);
    report.refused_copies = copies.refused.load(Ordering::Relaxed);
    report.seconds = start.elapsed().as_secs_f64();
    opts.progress.finish_and_clear();
    Ok(report)
}

/// Writes back what the restore has written while it goes on, so that the `syncfs` before
/// registration finds little left to do: a `syncfs` whenever [`SYNC_EVERY`] bytes more are written.
/// (Measured on ext4, large profile: the final `syncfs` alone took 0.9 s; starting writeback of
/// each file of 1 MiB or more as it closed, 0.35 s, and slowed the restore by as much when
/// combined with this; this alone, 0.15 s and the least time in all, 64 MiB to 512 MiB alike.)
#[derive(Default)]
struct Syncer {
    state: Mutex<(u64, bool)>,
    more: std::sync::Condvar,
}

const SYNC_EVERY: u64 = 256 << 20;

impl Syncer {
    fn wrote(&self, bytes: u64) {
        self.state.lock().expect("poisoned").0 += bytes;
        self.more.notify_one();
    }

    fn finish(&self) {
        self.state.lock().expect("poisoned").1 = true;
        self.more.notify_one();
    }

    fn run(&self, store: &File) {
        let mut synced = 0;
        loop {
            let state = self
                .more
                .wait_while(self.state.lock().expect("poisoned"), |(written, done)| {
                    !*done && *written < synced + SYNC_EVERY
                })
                .expect("poisoned");
            if state.1 {
                return;
            }
            synced = state.0;
            drop(state);
            // SAFETY: syncfs on a valid descriptor. Best effort: the final one is the guarantee.
            unsafe { libc::syncfs(store.as_raw_fd()) };
        }
    }
}

/// What [`restore_path`] wrote.
struct Written {
    dest: PathBuf,
    files: u64,
    linked: u64,
    /// Unpatched files written (not linked).
    shareable: Vec<Shareable>,
}

/// The chunk lists of a written path's large files: with the manifest, they say where each chunk
/// lies in the files written, which a local-store index needs (a few dozen bytes per 64 KiB).
/// Those the restore kept, else read through the checking layers (a file copied from the local
/// store, or a path written again through them).
fn chunk_lists_of(
    record: &PathRecord,
    objects: &Objects,
    kept: &Mutex<HashMap<ContentDigest, Vec<u8>>>,
) -> Result<HashMap<ContentDigest, Vec<u8>>, refstrip_cas::CasError> {
    let mut source = objects.of(record);
    let mut lists = HashMap::new();
    for (digest, size) in record.manifest.objects() {
        let id = refstrip_cas::file_object(&digest, size);
        if id.kind == Kind::ChunkList {
            let list = kept.lock().expect("poisoned").get(&digest).cloned();
            let list = match list {
                Some(list) => list,
                None => source.get(&ObjectId::new(Kind::ChunkList, digest))?,
            };
            lists.insert(digest, list);
        }
    }
    Ok(lists)
}

/// Bytes of decoded blocks that read-ahead may keep alive across all paths in flight (besides
/// the decoded-block cache): a few 4 MiB blocks per path.
const PINNED_BYTES: u64 = 48 << 20;
/// Batches of pieces read ahead of a path's restore.
const FEED_AHEAD: usize = 4;

/// Write one path under a temporary name, check its NarHash, and rename it into place.
///
/// Three threads work on a path at once: one reads its objects ahead in NAR order (fetching and
/// decompressing blocks), this one patches and writes the files, and one computes the NAR's
/// SHA-256 (`restore_threaded`). Objects are cut out of their blocks without their own BLAKE3
/// check, which the NarHash check makes redundant ([`unchecked`]); if that restore fails for any
/// reason, the path is written again through the checking layers, which heal a damaged cached
/// block or name the bad object, so the outcome is what checking every object would have given.
fn restore_path(
    p: &Planned,
    objects: &Objects,
    sources: &Sources<'_>,
    store_fd: &File,
    real_store: &Path,
    links: Option<&Links>,
) -> Result<Written, Error> {
    let files = refstrip_strip::files_in_nar_order(&p.record.manifest);
    // This path's copies of local files count only if it is written from them.
    let copies = CopyCounters::default();
    let fast = std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel(FEED_AHEAD);
        let ours = Sources {
            copies: &copies,
            budget: sources.budget.clone(),
            ..*sources
        };
        let feeder = Feeder::new(&p.record, ours, tx);
        s.spawn(|| feeder.run(&files));
        let copy = CopySlot::default();
        // The source (and with it the channel) is dropped here, which stops the feeder early.
        write_path(
            p,
            &mut FedSource::new(rx, &files, copy.clone()),
            Some(copy),
            store_fd,
            real_store,
            links,
        )
    });
    sources.copies.add(&copies, fast.is_ok());
    fast.or_else(|_| {
        let mut checked = objects.of(&p.record);
        write_path(
            p,
            &mut FileSource::new(&mut checked),
            None,
            store_fd,
            real_store,
            links,
        )
    })
}

/// Restore `p` from `source` under a temporary name and rename it into place; `copy` is where
/// the source puts copies of local files for the tree writer.
fn write_path(
    p: &Planned,
    source: &mut dyn ContentSource,
    copy: Option<CopySlot>,
    store_fd: &File,
    real_store: &Path,
    links: Option<&Links>,
) -> Result<Written, Error> {
    let dest = real_store.join(&p.basename);
    let tmp_name = format!(".{}.refstrip-tmp", p.basename);
    let tmp = real_store.join(&tmp_name);
    // A content address (`CA:`, which no signature covers) must hold for the NAR restored, as
    // Nix checks on import; the NAR stream passes through the check on its way to the hash.
    let ca = p.record.manifest.info.iter().find(|(k, _)| k == "CA");
    let refused = |ca: &str, why: String| Error::Path {
        path: p.path.clone(),
        why: format!("refusing it: CA {ca}: {why}"),
    };
    let mut verifier = match ca {
        Some((_, ca)) => Some(
            refstrip_nix::ContentAddress::parse(ca)
                .map_err(|e| refused(ca, e.to_string()))?
                .verifier(p.record.hash_part()),
        ),
        None => None,
    };
    // We hold the path's lock and it is not valid: anything under either name is a leftover.
    remove_tree(&tmp).map_err(io_err(format!("removing stale {}", tmp.display())))?;
    remove_tree(&dest).map_err(io_err(format!("removing invalid {}", dest.display())))?;
    let mut writer =
        TreeWriter::new(store_fd, tmp_name.as_bytes(), links).map_err(io_err("temporary name"))?;
    writer.copies_from(copy);
    let nar_out: Box<dyn io::Write + Send + '_> = match verifier.as_mut() {
        Some(v) => Box::new(v),
        None => Box::new(io::sink()),
    };
    let restored =
        refstrip_strip::restore_threaded(&p.record.manifest, source, nar_out, &mut writer)
            .map_err(|e| Error::Path {
                path: p.path.clone(),
                why: e.to_string(),
            })
            .and_then(|_| writer.finish().map_err(io_err("writing")))
            .and_then(|_| match (verifier, ca) {
                (Some(v), Some((_, ca))) => v.finish().map_err(|e| refused(ca, e.to_string())),
                _ => Ok(()),
            });
    if let Err(e) = restored {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(io_err(format!("renaming into {}", dest.display())))?;
    Ok(Written {
        files: writer.files,
        linked: writer.linked,
        shareable: std::mem::take(&mut writer.shareable),
        dest,
    })
}

fn valid_path_info(p: &Planned, store_dir: &str, real_store: &Path) -> ValidPathInfo {
    let m = &p.record.manifest;
    let full = |base: &str| format!("{store_dir}/{base}");
    let mut info = ValidPathInfo {
        path: p.path.clone(),
        nar_hash: m.nar_hash,
        nar_size: m.nar_size,
        deriver: None,
        sigs: Vec::new(),
        ca: None,
        references: m
            .references
            .iter()
            .map(|r| full(&String::from_utf8_lossy(r)))
            .collect(),
        derivation_outputs: Vec::new(),
    };
    for (key, value) in &m.info {
        match key.as_str() {
            "Deriver" if value != "unknown-deriver" => info.deriver = Some(full(value)),
            "Sig" => info.sigs.push(value.clone()),
            "CA" => info.ca = Some(value.clone()),
            _ => {}
        }
    }
    if p.basename.ends_with(".drv") {
        if let Ok(text) = std::fs::read_to_string(real_store.join(&p.basename)) {
            info.derivation_outputs = derivation_outputs(&text);
        }
    }
    info
}

/// The `(name, path)` outputs of a derivation in ATerm form: `Derive([("out","/nix/store/…",…),…],…`.
pub fn derivation_outputs(aterm: &str) -> Vec<(String, String)> {
    let Some(rest) = aterm.strip_prefix("Derive([") else {
        return Vec::new();
    };
    let mut out = BTreeMap::new();
    let mut rest = rest;
    while let Some(r) = rest.strip_prefix("(\"") {
        let Some((name, r)) = r.split_once("\",\"") else {
            break;
        };
        let Some((path, r)) = r.split_once('"') else {
            break;
        };
        if !path.is_empty() {
            out.insert(name.to_string(), path.to_string());
        }
        // Skip the hash algorithm and hash fields to the end of this tuple.
        let Some((_, r)) = r.split_once(')') else {
            break;
        };
        rest = r.strip_prefix(',').unwrap_or(r);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drv_outputs() {
        let drv = r#"Derive([("dev","/nix/store/aaa-x-dev","",""),("out","/nix/store/bbb-x","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        assert_eq!(
            derivation_outputs(drv),
            vec![
                ("dev".into(), "/nix/store/aaa-x-dev".into()),
                ("out".into(), "/nix/store/bbb-x".into())
            ]
        );
        assert!(derivation_outputs("garbage").is_empty());
    }
}
