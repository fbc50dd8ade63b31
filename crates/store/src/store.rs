//! A normalized store: path records and packs on a [`Backend`], with a local [`Catalog`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use refstrip_backend::{
    open_for_writing, pack_key, record_key, shape_key, Backend, RequestCounts, StoreUrl, MARKER_KEY,
};
use refstrip_cas::pack::{
    decode_index, decompress_bounded, index_range, Location, PackWriter, FOOTER_LEN,
};
use refstrip_cas::{CasError, ObjectId, ObjectWrite};
use refstrip_read::{
    check_marker, marker_contents, PathRecord, ReadError, StoreReader, StoredRecord, Visit,
    MAX_RECORD_BYTES,
};

use crate::catalog::{Catalog, Claim, Totals};

/// A sealed pack is this large (compressed) at most, give or take the blocks still compressing
/// when it was reached (one per pool thread and one more) and the open block of each class.
pub const PACK_TARGET: u64 = 64 << 20;

/// Where gc on a shared store marks packs it found unreferenced (one empty-ish object per pack,
/// holding the Unix time of condemnation); a later gc deletes them once the grace period is over.
const CONDEMNED: &str = "gc/condemned/";

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_paths: u64,
    pub removed_packs: u64,
    pub freed_bytes: u64,
    /// Shared stores: packs newly marked for deletion by a gc after the grace period.
    pub condemned_packs: u64,
    /// Staging packs left in the scratch space by killed ingests.
    pub removed_scratch_files: u64,
    /// Shape files no remaining path names.
    pub removed_shapes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Url(#[from] refstrip_backend::UrlError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Open(#[from] refstrip_read::OpenError),
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    #[error(transparent)]
    Cas(#[from] CasError),
    #[error("path record {key}: {why}")]
    BadRecord { key: String, why: String },
    #[error("{} of the paths to keep {} not in the store (nothing was removed; --force keeps the rest anyway):\n  {}", .0.len(), if .0.len() == 1 { "is" } else { "are" }, .0.join("\n  "))]
    UnknownRoots(Vec<String>),
    #[error("an ingest is writing to this store; run gc again when it has finished")]
    Busy,
}

pub struct Store {
    pub(crate) backend: Arc<dyn Backend>,
    reader: StoreReader,
    catalog: Mutex<Catalog>,
    /// Objects some staging pack of this process holds, not yet sealed: every other pack leaves
    /// them out, so concurrent workers never store an object twice (records wait for the seal).
    claims: Mutex<HashSet<ObjectId>>,
    /// This process in the catalog's claims (other ingest processes on this machine see them).
    owner: String,
}

/// What gc removes (or, on a dry run, would remove).
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Hash parts of the paths kept: the closure of the roots.
    pub keep: HashSet<String>,
    /// Roots the store does not have (kept nothing for them).
    pub missing_roots: Vec<String>,
    /// `(hash part, store path)` of every path to remove.
    pub remove_paths: Vec<(String, String)>,
    /// `(pack id, size)` of every pack no kept path needs.
    pub remove_packs: Vec<(String, u64)>,
}

impl Store {
    /// Open the store at `url` for writing (a directory or `file:///dir`, created if needed, or an
    /// `s3://` bucket), marking it as a normalized store if it is not marked yet.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let url = StoreUrl::parse(url)?;
        let backend: Arc<dyn Backend> = open_for_writing(&url)?.into();
        // A store of an older format is upgraded in place (readers take every older record
        // version); one of a newer format is refused.
        let marker = backend.get(MARKER_KEY, 4096)?;
        if let Some(bytes) = &marker {
            check_marker(&url.to_string(), bytes)?;
        }
        if marker.as_deref() != Some(marker_contents().as_bytes()) {
            backend.put(MARKER_KEY, marker_contents().as_bytes())?;
        }
        std::fs::create_dir_all(backend.scratch_dir())?;
        let catalog_path = backend.catalog_path();
        if let Some(dir) = catalog_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Two processes creating the catalog at once can get SQLITE_BUSY without the busy handler
        // being called (switching to WAL, WAL recovery); set it up one process at a time.
        let setup = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(catalog_path.with_extension("setup-lock"))?;
        setup.lock()?;
        let catalog = Catalog::open(&catalog_path)?;
        drop(setup);
        let store = Store {
            reader: StoreReader::from_backend(backend.clone(), url),
            backend,
            catalog: Mutex::new(catalog),
            claims: Mutex::new(HashSet::new()),
            owner: process_token(std::process::id()).unwrap_or_default(),
        };
        // Other machines write to a shared store: catch up with what they added or removed.
        if store.backend.is_shared() {
            store.refresh_catalog(false)?;
        }
        Ok(store)
    }

    /// Requests made to the backend so far (object stores only).
    pub fn requests(&self) -> Option<RequestCounts> {
        self.backend.requests()
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The store's read side (records, closures, objects).
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().expect("catalog lock poisoned")
    }

    pub fn has_path(&self, hash_part: &str) -> Result<bool, StoreError> {
        if self.catalog().has_path(hash_part)? {
            return Ok(true);
        }
        // A shared store's catalog was refreshed from the listing when it was opened; asking again
        // for every new path would cost a request each.
        if self.backend.is_shared() {
            return Ok(false);
        }
        // A record without a catalog entry was written by an ingest killed before it catalogued the
        // path; catalog it now, or stats and gc (which work from the catalog) would never see it.
        let Some((record, _)) = self.reader.try_record(hash_part)? else {
            return Ok(false);
        };
        self.catalog_record(&record)?;
        Ok(true)
    }

    /// Start a pack for new objects, in the backend's scratch space.
    pub fn new_pack(&self, level: i32) -> Result<StagingPack<'_>, StoreError> {
        let (writer, path) = self.pack_file(level)?;
        Ok(StagingPack {
            store: self,
            writer: Some(writer),
            path,
            level,
        })
    }

    fn pack_file(&self, level: i32) -> Result<(PackWriter<HashingFile>, PathBuf), StoreError> {
        // Mode 0666 minus the umask, like the store's other files (see `published_tempfile`).
        let tmp = refstrip_backend::published_tempfile()
            .prefix("pack-")
            .tempfile_in(self.backend.scratch_dir())?;
        let (file, path) = tmp.keep().map_err(|e| e.error)?;
        let hashing = HashingFile {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
        };
        Ok((PackWriter::new(hashing, level)?, path))
    }

    /// Make a path available: write its record and catalog it. Its objects must be in sealed packs.
    /// Returns the record's size in bytes.
    ///
    /// Writes the shape file before the binding that names it (spec §8), so a reader that finds
    /// the binding finds its shape. A shape file already there is kept (a mass rebuild's paths
    /// share their predecessors') if its object table names only packs the catalog has: copies of
    /// the same objects, as valid as this record's. One naming a pack gc condemned or repack
    /// retired is rewritten.
    pub fn add_record(&self, record: &PathRecord) -> Result<u64, StoreError> {
        self.write_record(record, false)
    }

    /// As [`add_record`](Self::add_record), rewriting the shape file too: for a writer that moved
    /// the record's objects (its object table must name the new copies).
    pub fn replace_record(&self, record: &PathRecord) -> Result<u64, StoreError> {
        self.write_record(record, true)
    }

    fn write_record(&self, record: &PathRecord, replace_shape: bool) -> Result<u64, StoreError> {
        let hash_part = record.hash_part().to_string();
        let encoded = record.encode().map_err(|why| StoreError::BadRecord {
            key: record_key(&hash_part),
            why,
        })?;
        let shape_key = shape_key(&encoded.shape.to_hex());
        let mut size = encoded.binding.len() as u64;
        if replace_shape || !self.shape_is_live(&shape_key)? {
            self.backend.put(&shape_key, &encoded.shape_file)?;
            size += encoded.shape_file.len() as u64;
        }
        self.backend
            .put(&record_key(&hash_part), &encoded.binding)?;
        self.catalog_record(record)?;
        Ok(size)
    }

    /// Catalog a path. Its record size is its binding's (format 2), whichever format its file has:
    /// shapes are shared between paths and not counted per path.
    /// Whether the shape file exists and every pack its object table names is catalogued.
    fn shape_is_live(&self, key: &str) -> Result<bool, StoreError> {
        let Some(bytes) = self.backend.get(key, MAX_RECORD_BYTES)? else {
            return Ok(false);
        };
        let Ok(table) = refstrip_read::ShapeFile::decode_objects(&bytes) else {
            return Ok(false);
        };
        let packs: HashSet<&str> = table.objects.values().map(|(p, _)| p.as_str()).collect();
        for pack in packs {
            if !self.catalog().has_pack(pack)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn catalog_record(&self, record: &PathRecord) -> Result<(), StoreError> {
        let record_size = record.manifest.binding().map_or(0, |b| b.len() as u64);
        let manifest = &record.manifest;
        let hash_part = String::from_utf8_lossy(&manifest.basename()[..32]).into_owned();
        let store_path = format!(
            "{}/{}",
            String::from_utf8_lossy(&manifest.store_dir),
            String::from_utf8_lossy(manifest.basename())
        );
        self.catalog().add_path(
            &hash_part,
            &store_path,
            &manifest.nar_hash,
            manifest.nar_size,
            record_size,
            record
                .objects
                .map()
                .map_err(|why| StoreError::BadRecord {
                    key: record_key(&hash_part),
                    why,
                })?
                .keys(),
        )?;
        Ok(())
    }

    /// Where a sealed object lives, per the catalog.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<(String, Location)>, StoreError> {
        Ok(self.catalog().locate(id)?)
    }

    /// The other live process (`pid:start time`) storing `id` now, if one is.
    pub fn claimed_elsewhere(&self, id: &ObjectId) -> Result<Option<String>, StoreError> {
        let owner = self.catalog().claimant(id)?;
        Ok(owner.filter(|o| *o != self.owner && process_alive(o)))
    }

    /// Drop this process's claims in the catalog (its ingest is over).
    pub fn release_claims(&self) -> Result<(), StoreError> {
        Ok(self.catalog().release_claims(&self.owner)?)
    }

    pub fn totals(&self) -> Result<Totals, StoreError> {
        Ok(self.catalog().totals()?)
    }

    /// Rebuild the catalog from the files: every pack's index and every path record.
    pub fn rebuild_catalog(&self) -> Result<(), StoreError> {
        self.catalog().clear()?;
        self.refresh_catalog(false)
    }

    /// Bring the catalog in line with the store's listing: catalog packs and records it lacks,
    /// forget those deleted since (by gc, maybe on another machine). Packs condemned by gc are
    /// left out unless `with_condemned`, so ingests never reuse their objects.
    pub(crate) fn refresh_catalog(&self, with_condemned: bool) -> Result<(), StoreError> {
        let mut condemned: HashSet<String> = if with_condemned {
            HashSet::new()
        } else {
            self.condemned()?.into_iter().collect()
        };
        // Packs repack replaced are never catalogued again: no new record may point into them.
        condemned.extend(crate::repack::retired(&*self.backend)?);
        let listed: HashSet<String> = self
            .backend
            .list("packs/")?
            .iter()
            .filter_map(|k| k.strip_prefix("packs/")?.strip_suffix(".pack"))
            .filter(|id| !condemned.contains(*id))
            .map(String::from)
            .collect();
        let known: HashSet<String> = self.catalog().packs()?.into_iter().collect();
        for id in known.difference(&listed) {
            self.catalog().remove_pack(id)?;
        }
        for id in listed.difference(&known) {
            let key = pack_key(id);
            // Listed a moment ago; gone now means another gc deleted it: nothing to catalog.
            let Some(size) = self.backend.size(&key)? else {
                continue;
            };
            let index = read_pack_index(&*self.backend, &key, size)?;
            let raw: u64 = index.values().map(|l| l.size).sum();
            self.catalog().add_pack(id, size, raw, index.iter())?;
        }
        let listed: HashSet<String> = self
            .backend
            .list("paths/")?
            .iter()
            .filter_map(|k| k.strip_prefix("paths/"))
            .map(String::from)
            .collect();
        let known: HashSet<String> = self
            .catalog()
            .paths()?
            .into_iter()
            .map(|(hash_part, _)| hash_part)
            .collect();
        for hash_part in known.difference(&listed) {
            self.catalog().remove_path(hash_part)?;
        }
        for hash_part in listed.difference(&known) {
            // Listed a moment ago; gone now means a gc removed it.
            if let Some((record, _)) = self.reader.try_record(hash_part)? {
                self.catalog_record(&record)?;
            }
        }
        Ok(())
    }

    /// Ids of the packs gc has condemned.
    fn condemned(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .backend
            .list(CONDEMNED)?
            .iter()
            .filter_map(|k| k.strip_prefix(CONDEMNED))
            .map(String::from)
            .collect())
    }

    /// Hold this while writing to the store: any number of writers share it, gc needs it alone.
    /// An ingest decides an object exists (and will not write it again) long before it writes the
    /// record that points at it; gc must not delete the object's pack in between.
    pub fn write_lock(&self) -> Result<File, StoreError> {
        let file = self.lock_file()?;
        file.lock_shared()?;
        Ok(file)
    }

    pub(crate) fn lock_file(&self) -> Result<File, StoreError> {
        let path = self.backend.catalog_path().with_extension("lock");
        Ok(File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?)
    }

    /// What gc would remove to keep the closures of `roots` (hash parts). A root the store does
    /// not have is an error ([`StoreError::UnknownRoots`]) unless `force`, so that a mistyped path
    /// cannot empty the store.
    pub fn gc_plan(&self, roots: &[String], force: bool) -> Result<GcPlan, StoreError> {
        let mut plan = GcPlan::default();
        let mut present = Vec::new();
        for root in roots {
            match self.reader.try_record(root)? {
                Some(_) => present.push(root.clone()),
                None => plan.missing_roots.push(root.clone()),
            }
        }
        if !plan.missing_roots.is_empty() && !force {
            return Err(StoreError::UnknownRoots(plan.missing_roots));
        }
        let closure = self
            .reader
            .closure(&present, |_| Ok::<_, StoreError>(Visit::Include))?;
        plan.keep = closure
            .records
            .iter()
            .map(|r| r.hash_part().to_string())
            .collect();
        if self.backend.is_shared() {
            // Judge references by every record in the bucket now, condemned packs included.
            self.refresh_catalog(true)?;
        }
        plan.remove_paths = self
            .catalog()
            .paths()?
            .into_iter()
            .filter(|(h, _)| !plan.keep.contains(h))
            .collect();
        plan.remove_packs = self.catalog().packs_unreferenced_by(&plan.keep)?;
        Ok(plan)
    }

    /// The shapes (hex) the store's bindings name, read from the bindings themselves.
    fn named_shapes(&self) -> Result<HashSet<String>, StoreError> {
        let mut named = HashSet::new();
        for key in self.backend.list("paths/")? {
            let Some(binding) = self.backend.get(&key, MAX_RECORD_BYTES)? else {
                continue;
            };
            if let Ok(StoredRecord::V2(b)) = StoredRecord::decode(&binding) {
                named.insert(b.shape.to_hex());
            }
        }
        Ok(named)
    }

    /// Remove every path not in `plan.keep`, then every pack no remaining path needs.
    /// Refuses with [`StoreError::Busy`] while an ingest on this machine holds
    /// [`write_lock`](Self::write_lock).
    ///
    /// On a shared store (an object store written by many machines) no lock reaches the other
    /// writers, so packs go in two steps: an unreferenced pack is first condemned (marked under
    /// `gc/condemned/`; ingests that open the store from then on do not reuse its objects), and
    /// deleted by a later gc only if it is still unreferenced and was condemned at least `grace`
    /// ago. That is safe as long as every ingest finishes within `grace` of opening the store:
    /// an ingest that opened it before the condemnation and reuses an object from the pack has
    /// written its record by then, which makes the pack referenced again (and un-condemned). An
    /// ingest that writes a byte-identical pack (the same objects again) un-condemns it too;
    /// only if that upload lands between this gc's last look at the marker and its DELETE (one
    /// request) is the pack lost. `grace` is ignored for local stores.
    pub fn gc(&self, plan: &GcPlan, grace: Duration) -> Result<GcReport, StoreError> {
        let keep = &plan.keep;
        let lock = self.lock_file()?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => StoreError::Busy,
            std::fs::TryLockError::Error(e) => StoreError::Io(e),
        })?;
        let shared = self.backend.is_shared();
        let mut report = GcReport::default();
        // No ingest on this machine holds the write lock, so every staging pack in the scratch
        // space is a leftover of a killed one.
        for entry in std::fs::read_dir(self.backend.scratch_dir())?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("pack-")
                && std::fs::remove_file(entry.path()).is_ok()
            {
                report.removed_scratch_files += 1;
            }
        }
        // Collect first: a guard in the loop head would live through the loop and deadlock.
        let paths = self.catalog().paths()?;
        for (hash_part, _) in paths {
            if !keep.contains(&hash_part) {
                self.backend.delete(&record_key(&hash_part))?;
                self.catalog().remove_path(&hash_part)?;
                report.removed_paths += 1;
            }
        }
        // An ingest writes a shape file before the binding naming it, so a shape without one is
        // garbage only while no ingest runs: true here under the lock, not on a shared store.
        if !shared {
            let named = self.named_shapes()?;
            for key in self.backend.list("shapes/")? {
                if !named.contains(key.strip_prefix("shapes/").unwrap_or_default()) {
                    self.backend.delete(&key)?;
                    report.removed_shapes += 1;
                }
            }
        }
        let unreferenced: HashSet<String> =
            self.catalog().unreferenced_packs()?.into_iter().collect();
        let condemned: HashSet<String> = if shared {
            self.condemned()?.into_iter().collect()
        } else {
            HashSet::new()
        };
        // A condemned pack that a record needs again (or that is gone) is no longer condemned.
        for id in condemned.difference(&unreferenced) {
            self.backend.delete(&format!("{CONDEMNED}{id}"))?;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for id in unreferenced {
            let key = pack_key(&id);
            let marker = format!("{CONDEMNED}{id}");
            if shared {
                let since = match condemned.contains(&id) {
                    true => self.backend.get(&marker, 64)?,
                    false => None,
                }
                .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u64>().ok());
                match since {
                    Some(t) if now.saturating_sub(t) >= grace.as_secs() => {}
                    Some(_) => {
                        self.catalog().remove_pack(&id)?;
                        continue;
                    }
                    // Newly unreferenced (or an unreadable marker): condemn it now.
                    None => {
                        self.backend.put(&marker, now.to_string().as_bytes())?;
                        self.catalog().remove_pack(&id)?;
                        report.condemned_packs += 1;
                        continue;
                    }
                }
            }
            report.freed_bytes += self.backend.size(&key)?.unwrap_or(0);
            self.backend.delete(&key)?;
            if shared {
                self.backend.delete(&marker)?;
            }
            self.catalog().remove_pack(&id)?;
            report.removed_packs += 1;
        }
        Ok(report)
    }
}

/// Read a pack's index with two ranged reads (footer, then index).
pub fn read_pack_index(
    backend: &dyn Backend,
    key: &str,
    size: u64,
) -> Result<HashMap<ObjectId, Location>, StoreError> {
    let with_key = |e: CasError| CasError::BadPack(format!("{key}: {e}"));
    let footer = match size.checked_sub(FOOTER_LEN) {
        Some(at) => backend.get_range(key, at, FOOTER_LEN)?,
        None => Vec::new(),
    };
    let (offset, len) = index_range(&footer, size).map_err(with_key)?;
    let raw = decompress_bounded(&backend.get_range(key, offset, len)?)?;
    Ok(decode_index(&raw, offset)?)
}

/// A pack being filled by one ingest worker; [`seal`](Self::seal) publishes it under its BLAKE3.
pub struct StagingPack<'s> {
    store: &'s Store,
    writer: Option<PackWriter<HashingFile>>,
    path: PathBuf,
    level: i32,
}

impl StagingPack<'_> {
    pub fn written_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.written_bytes())
    }

    pub fn is_empty(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.is_empty())
    }

    /// See [`PackWriter::end_block`].
    pub fn end_block(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("writer present").end_block()
    }

    /// Finish the pack, move it into the store and catalog its objects. Returns its id, index and
    /// size (empty and 0 when nothing was added, in which case nothing is published). The staging
    /// pack is ready for new objects afterwards.
    pub fn seal(&mut self) -> Result<(String, HashMap<ObjectId, Location>, u64), StoreError> {
        let writer = self
            .writer
            .take()
            .expect("a staging pack always has a writer between calls");
        if writer.is_empty() {
            self.writer = Some(writer);
            return Ok((String::new(), HashMap::new(), 0));
        }
        let raw = writer.raw_bytes();
        let (file, index) = writer.finish()?;
        let HashingFile { inner, hasher } = file;
        let size = inner.get_ref().metadata()?.len();
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let id = hasher.finalize().to_hex().to_string();
        self.store.backend.put_file(&pack_key(&id), &self.path)?;
        if self.store.backend.is_shared() {
            // Byte-identical to a pack gc condemned (the same objects again): now it is needed.
            self.store.backend.delete(&format!("{CONDEMNED}{id}"))?;
        }
        // Under the claims lock, as in `has`: an object is claimed or catalogued at every moment.
        let mut claims = self.store.claims.lock().expect("claims lock");
        self.store
            .catalog()
            .add_pack(&id, size, raw, index.iter())?;
        for id in index.keys() {
            claims.remove(id);
        }
        drop(claims);
        let (writer, path) = self.store.pack_file(self.level)?;
        self.writer = Some(writer);
        self.path = path;
        Ok((id, index, size))
    }
}

impl Drop for StagingPack<'_> {
    fn drop(&mut self) {
        // An unsealed pack is scratch: nothing refers to it.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ObjectWrite for StagingPack<'_> {
    fn has(&mut self, id: &ObjectId) -> io::Result<bool> {
        if self.writer.as_ref().is_some_and(|w| w.contains(id)) {
            return Ok(true);
        }
        let mut claims = self.store.claims.lock().expect("claims lock");
        if claims.contains(id) {
            return Ok(true);
        }
        let claim = self
            .store
            .catalog()
            .claim(id, &self.store.owner, process_alive)
            .map_err(io::Error::other)?;
        if claim != Claim::Ours {
            // Stored, or another process is storing it: the path's record waits for its seal.
            return Ok(true);
        }
        // Ours to write (`FileSink` puts what `has` denies).
        claims.insert(*id);
        Ok(false)
    }

    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> io::Result<()> {
        self.writer
            .as_mut()
            .expect("writer present")
            .add(id, bytes)
            .map(drop)
    }
}

/// Computes the pack's BLAKE3 (its name) while it is written.
struct HashingFile {
    inner: BufWriter<File>,
    hasher: blake3::Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A process as the catalog's claims name it: its pid and start time (so a reused pid is not
/// taken for the process that claimed).
fn process_token(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses); start time is 22nd.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process a claim names still runs.
fn process_alive(owner: &str) -> bool {
    owner
        .split_once(':')
        .and_then(|(pid, _)| pid.parse().ok())
        .and_then(process_token)
        .is_some_and(|now| now == owner)
}
