//! Repack: rewrite packs that are mostly dead.
//!
//! gc deletes a pack only when none of its objects is needed; a pack with one live object among
//! many dead ones stays whole. Repack measures each pack's **live fraction** — the uncompressed
//! bytes of the objects some path record points at *in that pack*, over the uncompressed bytes of
//! all its objects — and rewrites the packs below a threshold:
//!
//! 1. the live objects are copied (read block by block, each checked against its BLAKE3) into new
//!    packs, which are sealed and published before anything points at them;
//! 2. every record that points into a replaced pack, or at a copy of an object other than the one
//!    kept (an object two machines stored twice: the copy in the first pack by id is kept, the
//!    others count as dead), is rewritten with the new locations (the same manifest; written
//!    atomically, as ingest writes records; on a directory store it keeps its modification time,
//!    which retention counts as its registration);
//! 3. each replaced pack is **retired**: marked under `gc/retired/<pack id>` with the time, and
//!    dropped from the catalog, so no ingest will point a new record into it;
//! 4. a retired pack is deleted by a repack run at least the grace period later, if no record
//!    points into it then (a record written meanwhile by an ingest on another machine un-retires
//!    it).
//!
//! Readers need no lock: a serve or substitute that read a record before step 2 reads the old pack,
//! which stays, unchanged, through the grace period (packs are named by their contents, so a
//! location never names other bytes); one that reads after reads the new pack. Only a reader
//! holding a record from before the rewrite for longer than the grace period finds the old pack
//! gone, and then fails cleanly (a missing file), never with wrong bytes. It is the rule gc follows
//! on shared stores (see [`Store::gc`]), applied here on every kind of store because the readers
//! are what it protects. Repack holds the store's lock exclusively, like gc.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use refstrip_backend::{pack_key, record_key, Backend};
use refstrip_cas::pack::{decode_block, Location};
use refstrip_cas::{ObjectId, ObjectWrite};
use refstrip_read::{PathRecord, Visit};

use crate::store::{read_pack_index, Store, StoreError, PACK_TARGET};

/// Where repack marks the packs it replaced, with the Unix time it did.
const RETIRED: &str = "gc/retired/";

/// How a repack runs.
#[derive(Debug, Clone)]
pub struct RepackOptions {
    /// Packs whose live fraction is below this (0 to 1) are rewritten.
    pub threshold: f64,
    /// Retired packs are deleted only this long after they were retired.
    pub grace: Duration,
    /// zstd level of the new packs' blocks.
    pub level: i32,
    /// Report what would be rewritten; change nothing (retired packs are not deleted either).
    pub dry_run: bool,
}

/// How much of a pack the store's records still use.
#[derive(Debug, Clone)]
pub struct PackUse {
    pub id: String,
    /// Compressed size of the pack file.
    pub size: u64,
    /// Uncompressed bytes of all its objects, and of those a record points at in this pack.
    pub raw_bytes: u64,
    pub live_raw_bytes: u64,
    pub live_objects: usize,
}

impl PackUse {
    pub fn live_fraction(&self) -> f64 {
        self.live_raw_bytes as f64 / self.raw_bytes.max(1) as f64
    }
}

/// What [`Store::repack`] did (or, on a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct RepackReport {
    /// Packs below the threshold: rewritten and retired.
    pub repacked: Vec<PackUse>,
    pub new_packs: u64,
    pub new_pack_bytes: u64,
    pub records_rewritten: u64,
    /// Objects records pointed at in more than one pack, now pointed at one copy.
    pub deduplicated_objects: u64,
    /// Retired packs deleted by this run (their grace period was over), and their bytes.
    pub deleted_packs: u64,
    pub freed_bytes: u64,
    /// Retired packs still in their grace period, and their bytes.
    pub waiting_packs: u64,
    pub waiting_bytes: u64,
    /// Retired packs a record pointed into again, put back into service.
    pub restored_packs: u64,
}

impl RepackReport {
    /// Bytes of the packs rewritten.
    pub fn repacked_bytes(&self) -> u64 {
        self.repacked.iter().map(|p| p.size).sum()
    }
}

/// Ids of the packs repack has retired (and not yet deleted).
pub(crate) fn retired(backend: &dyn Backend) -> Result<Vec<String>, StoreError> {
    Ok(backend
        .list(RETIRED)?
        .iter()
        .filter_map(|k| k.strip_prefix(RETIRED))
        .map(String::from)
        .collect())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Store {
    /// Rewrite the packs whose live fraction is below `opts.threshold`, then delete the packs
    /// earlier runs retired once `opts.grace` has passed (see the module documentation). Refuses
    /// with [`StoreError::Busy`] while an ingest on this machine writes to the store.
    pub fn repack(&self, opts: &RepackOptions) -> Result<RepackReport, StoreError> {
        // A dry run changes nothing and may look while an ingest runs.
        let _lock = match opts.dry_run {
            true => None,
            false => {
                let lock = self.lock_file()?;
                lock.try_lock().map_err(|e| match e {
                    std::fs::TryLockError::WouldBlock => StoreError::Busy,
                    std::fs::TryLockError::Error(e) => StoreError::Io(e),
                })?;
                Some(lock)
            }
        };
        let mut report = RepackReport::default();
        // Every record, from the listing rather than the catalog: a record the catalog missed (an
        // ingest killed before cataloguing it) must be re-pointed too. Fetched in parallel (the
        // closure of all paths is all paths).
        let paths = self.reader().list_paths()?;
        let mut records = self
            .reader()
            .closure(&paths, |_| Ok::<_, StoreError>(Visit::Include))?
            .records;
        let retired: HashSet<String> = retired(&*self.backend)?.into_iter().collect();

        // One copy of each object records point at, where they point at several (ingests on two
        // machines with catalogs of their own stored it twice): the one in the first pack by id
        // that is not retired. Records are pointed at it, so the other copies are dead.
        let mut canonical: HashMap<ObjectId, (&str, Location)> = HashMap::new();
        let mut twice = HashSet::new();
        for record in &records {
            for (id, (pack, loc)) in objects_of(record)? {
                let rank = |p: &str| (retired.contains(p), p.to_string());
                let chosen = canonical.entry(*id).or_insert((pack.as_str(), *loc));
                if chosen.0 != pack {
                    twice.insert(*id);
                    if rank(pack) < rank(chosen.0) {
                        *chosen = (pack.as_str(), *loc);
                    }
                }
            }
        }
        report.deduplicated_objects = twice.len() as u64;
        // What each pack holds that a record points at (its canonical copy).
        let mut live: HashMap<&str, HashMap<ObjectId, Location>> = HashMap::new();
        for (id, (pack, loc)) in &canonical {
            live.entry(pack).or_default().insert(*id, *loc);
        }
        let mut candidates = Vec::new();
        for (id, size, raw_bytes) in self.catalog().pack_sizes()? {
            if retired.contains(&id) || raw_bytes == 0 {
                continue;
            }
            let objects = live.get(id.as_str());
            let usage = PackUse {
                size,
                raw_bytes,
                live_raw_bytes: objects.map_or(0, |o| o.values().map(|l| l.size).sum()),
                live_objects: objects.map_or(0, |o| o.len()),
                id,
            };
            if usage.live_fraction() < opts.threshold {
                candidates.push(usage);
            }
        }
        if opts.dry_run {
            report.repacked = candidates;
            return Ok(report);
        }

        // 1. Copy the live objects into new packs, a block at a time.
        let mut moved: HashMap<ObjectId, (String, Location)> = HashMap::new();
        let mut staging = self.new_pack(opts.level)?;
        let mut copied_to_staging: HashSet<ObjectId> = HashSet::new();
        for pack in &candidates {
            let Some(objects) = live.get(pack.id.as_str()) else {
                continue;
            };
            let mut by_block: BTreeMap<u64, Vec<(&ObjectId, &Location)>> = BTreeMap::new();
            for (id, loc) in objects {
                if !moved.contains_key(id) && !copied_to_staging.contains(id) {
                    by_block
                        .entry(loc.block_offset)
                        .or_default()
                        .push((id, loc));
                }
            }
            let key = pack_key(&pack.id);
            for (offset, members) in by_block {
                let first = members[0].1;
                let compressed = self.backend.get_range(&key, offset, first.block_len)?;
                let block = decode_block(&compressed, first.block_raw_len)?;
                for (id, loc) in members {
                    let bytes = loc.object(id, &block)?;
                    staging.put(*id, &bytes)?;
                    copied_to_staging.insert(*id);
                }
                if staging.written_bytes() >= PACK_TARGET {
                    seal(
                        &mut staging,
                        &mut copied_to_staging,
                        &mut moved,
                        &mut report,
                    )?;
                }
            }
        }
        seal(
            &mut staging,
            &mut copied_to_staging,
            &mut moved,
            &mut report,
        )?;
        drop(staging);

        // 2. Point the records at the new packs (and at the one copy of an object stored twice),
        // keeping each record's time where the backend can.
        let replaced: HashSet<&str> = candidates.iter().map(|p| p.id.as_str()).collect();
        let place_of = |id: &ObjectId| -> (String, Location) {
            let (pack, loc) = canonical[id];
            match replaced.contains(pack) {
                true => moved
                    .get(id)
                    .cloned()
                    .expect("every live object of a replaced pack was copied"),
                false => (pack.to_string(), loc),
            }
        };
        let times = self.registration_times()?;
        let mut rewritten = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let objects = objects_of(record)?;
            if objects.iter().any(|(id, place)| *place != place_of(id)) {
                let repointed: refstrip_read::ObjectMap =
                    objects.keys().map(|id| (*id, place_of(id))).collect();
                rewritten.push((i, repointed));
            }
        }
        for (i, objects) in rewritten {
            let record = &mut records[i];
            // Offers name objects, not places: they stay valid as they are.
            let offers = record
                .objects
                .table()
                .map(|t| t.offers.clone())
                .unwrap_or_default();
            record.objects = refstrip_read::Table { objects, offers }.into();
            // The object table lives in the (shared) shape file: rewrite it with the new places.
            self.replace_record(record)?;
            let key = record_key(record.hash_part());
            if let Some(time) = times.get(record.hash_part()) {
                self.backend.set_modified(&key, *time)?;
            }
            report.records_rewritten += 1;
        }

        // 3. Retire the replaced packs.
        for pack in &candidates {
            self.backend.put(
                &format!("{RETIRED}{}", pack.id),
                unix_now().to_string().as_bytes(),
            )?;
            self.catalog().remove_pack(&pack.id)?;
        }
        report.repacked = candidates;

        // 4. Delete what was retired long enough ago.
        self.finish_retired(&records, opts.grace, &mut report)?;
        Ok(report)
    }

    /// Delete retired packs whose grace period is over and into which no record points; put back
    /// those a record points into again.
    fn finish_retired(
        &self,
        records: &[PathRecord],
        grace: Duration,
        report: &mut RepackReport,
    ) -> Result<(), StoreError> {
        let mut pointed: HashSet<&str> = HashSet::new();
        for r in records {
            pointed.extend(objects_of(r)?.values().map(|(p, _)| p.as_str()));
        }
        let now = unix_now();
        for id in retired(&*self.backend)? {
            let marker = format!("{RETIRED}{id}");
            let key = pack_key(&id);
            let size = self.backend.size(&key)?;
            if pointed.contains(id.as_str()) {
                // An ingest (on another machine) wrote a record into it after all: keep it.
                if let Some(size) = size {
                    let index = read_pack_index(&*self.backend, &key, size)?;
                    let raw: u64 = index.values().map(|l| l.size).sum();
                    self.catalog().add_pack(&id, size, raw, index.iter())?;
                }
                self.backend.delete(&marker)?;
                report.restored_packs += 1;
                continue;
            }
            let since = self
                .backend
                .get(&marker, 64)?
                .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u64>().ok());
            // An unreadable marker counts from now: the pack waits another grace period.
            let since = since.unwrap_or(now);
            if now.saturating_sub(since) < grace.as_secs() {
                report.waiting_packs += 1;
                report.waiting_bytes += size.unwrap_or(0);
                continue;
            }
            self.backend.delete(&key)?;
            self.backend.delete(&marker)?;
            report.deleted_packs += 1;
            report.freed_bytes += size.unwrap_or(0);
        }
        Ok(())
    }
}

/// Seal the staging pack and note where the objects copied into it now live.
fn seal(
    staging: &mut crate::StagingPack<'_>,
    copied: &mut HashSet<ObjectId>,
    moved: &mut HashMap<ObjectId, (String, Location)>,
    report: &mut RepackReport,
) -> Result<(), StoreError> {
    let (id, index, size) = staging.seal()?;
    if size == 0 {
        return Ok(());
    }
    for object in copied.drain() {
        let loc = *index
            .get(&object)
            .expect("a sealed pack indexes every object put into it");
        moved.insert(object, (id.clone(), loc));
    }
    report.new_packs += 1;
    report.new_pack_bytes += size;
    Ok(())
}

/// A record's object table (read from its shape file if it was not yet).
fn objects_of(record: &PathRecord) -> Result<&refstrip_read::ObjectMap, StoreError> {
    record.objects.map().map_err(|why| StoreError::BadRecord {
        key: record_key(record.hash_part()),
        why,
    })
}
