//! Applying delta offers (spec §8) on the client: a file the near source lacks, whose predecessor
//! it has, is rebuilt from that predecessor and a delta object instead of fetched whole. Every
//! failure (base gone or changed, delta missing or undecodable, output too long or not hashing to
//! the target) makes the caller fetch the full object: a delta is only ever a shortcut.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use refstrip_cas::{decode_chunk_list, Kind, ObjectId, CHUNK_MAX};
use refstrip_strip::ContentDigest;

use crate::objects::{FetchCounters, NearSource, ObjectSource};
use crate::{Offer, PathRecord, Table};

/// The offer a client with `near` would use for `target`: the first whose base it may have.
/// `None` if the near source may have the target itself.
pub fn usable<'t>(table: &'t Table, target: &ObjectId, near: &dyn NearSource) -> Option<&'t Offer> {
    if near.may_have(target) {
        return None;
    }
    table
        .offers
        .iter()
        .find(|o| o.target == *target && near.may_have(&o.base_object()))
}

/// What a client with `near` leaves out of a record's fetch because a delta stands in for it
/// (targets and the chunks they cover), and the deltas it fetches instead.
pub fn plan(table: &Table, near: &dyn NearSource) -> (HashSet<ObjectId>, HashSet<ObjectId>) {
    let mut replaced = HashSet::new();
    let mut deltas = HashSet::new();
    for offer in &table.offers {
        if replaced.contains(&offer.target) {
            continue;
        }
        if usable(table, &offer.target, near) == Some(offer) {
            replaced.insert(offer.target);
            replaced.extend(offer.covers.iter().map(|c| ObjectId::new(Kind::Blob, *c)));
            deltas.insert(offer.delta_object());
        }
    }
    (replaced, deltas)
}

/// The normalized bytes of file `digest` (`size` bytes) from the near source, unchecked (the
/// delta's output is what gets checked).
fn near_file(near: &dyn NearSource, digest: &ContentDigest, size: u64) -> Option<Vec<u8>> {
    let id = refstrip_cas::file_object(digest, size);
    let bytes = near.object(&id).ok()??;
    if id.kind == Kind::Blob {
        return Some(bytes);
    }
    let chunks = decode_chunk_list(&bytes)?;
    let total = chunks.iter().try_fold(0u64, |t, c| {
        (c.1 <= CHUNK_MAX as u64)
            .then(|| t.checked_add(c.1))
            .flatten()
    });
    if total != Some(size) {
        return None;
    }
    let mut out = Vec::with_capacity(size as usize);
    for (chunk, len) in chunks {
        let bytes = near.object(&ObjectId::new(Kind::Blob, chunk)).ok()??;
        if bytes.len() as u64 != len {
            return None;
        }
        out.extend_from_slice(&bytes);
    }
    Some(out)
}

/// File `target` (a blob, or a chunk list named by the whole file) of `record`, rebuilt from a
/// delta: `None` unless an offer's base is near and the output hashes to `target`. Reads the
/// record's object table.
pub fn rebuild(
    record: &PathRecord,
    target: &ObjectId,
    near: &dyn NearSource,
    source: &dyn ObjectSource,
    counters: Option<&FetchCounters>,
) -> Option<Vec<u8>> {
    let table = record.objects.table().ok()?;
    if near.may_have(target) || !table.offers.iter().any(|o| o.target == *target) {
        return None;
    }
    for offer in table.offers.iter().filter(|o| o.target == *target) {
        let rejected = || {
            if let Some(c) = counters {
                c.deltas_rejected.fetch_add(1, Ordering::Relaxed);
            }
        };
        if !near.may_have(&offer.base_object()) {
            continue;
        }
        let Some(base) = near_file(near, &offer.base, offer.base_size) else {
            rejected();
            continue;
        };
        let delta_id = offer.delta_object();
        let Some((pack, loc)) = table.objects.get(&delta_id) else {
            continue;
        };
        let Ok(Some(delta)) = source.object(&delta_id, pack, loc) else {
            rejected();
            continue;
        };
        match refstrip_cas::delta::apply(&base, &delta, offer.target_size) {
            Ok(out) if ContentDigest::of(&out) == target.digest => {
                if let Some(c) = counters {
                    c.deltas_applied.fetch_add(1, Ordering::Relaxed);
                    c.delta_bytes
                        .fetch_add(delta.len() as u64, Ordering::Relaxed);
                    c.delta_output_bytes
                        .fetch_add(out.len() as u64, Ordering::Relaxed);
                }
                return Some(out);
            }
            _ => rejected(),
        }
    }
    None
}
