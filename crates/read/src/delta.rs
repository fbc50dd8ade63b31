//! Applying delta offers (spec §8) on the client: a file the near source lacks, whose predecessor
//! it has, is rebuilt from that predecessor and a delta object instead of fetched whole. Every
//! failure (base gone or changed, delta missing or undecodable, output too long or not hashing to
//! the target) makes the caller fetch the full object: a delta is only ever a shortcut.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use refstrip_cas::{Kind, ObjectId};
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
    let chunks = refstrip_cas::chunks_of_file(&bytes, size).ok()?;
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
    // A file near by needs no delta, nor the object table (which a path whose shape came from
    // near by has not fetched).
    if near.may_have(target) {
        return None;
    }
    let table = record.objects.table().ok()?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use refstrip_cas::pack::PackWriter;

    use super::*;
    use crate::objects::tests::{record_of, MemoryPack, One};
    use crate::objects::PackBlocks;
    use crate::ObjectMap;

    /// `n` bytes that repeat only every 251 × 256 bytes.
    fn pattern(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i % 251) as u8 ^ (i / 251) as u8 ^ seed)
            .collect()
    }

    #[test]
    fn a_delta_is_used_only_when_its_output_hashes_to_the_target() {
        let base = pattern(1, 100_000);
        let mut target = base.clone();
        target[500..600].fill(7);
        let delta = refstrip_cas::delta::encode(&base, &target, 3).unwrap();
        let (t, d) = (
            ObjectId::blob(&target),
            ObjectId::new(Kind::Delta, ContentDigest::of(&delta)),
        );
        // The full object and the delta in blocks of their own, as ingest writes them.
        let mut w = PackWriter::new(Vec::new(), 1).unwrap();
        w.add(t, &target).unwrap();
        w.end_block().unwrap();
        w.add(d, &delta).unwrap();
        let (bytes, index) = w.finish().unwrap();
        let objects: ObjectMap = index
            .iter()
            .map(|(id, l)| (*id, ("p".to_string(), *l)))
            .collect();
        let offer = Offer {
            target: t,
            target_size: target.len() as u64,
            base: ContentDigest::of(&base),
            base_size: base.len() as u64,
            delta: d.digest,
            covers: Vec::new(),
        };
        let record = record_of(
            t,
            target.len() as u64,
            Table {
                objects,
                offers: vec![offer.clone()],
            }
            .into(),
        );
        let far = Arc::new(MemoryPack {
            bytes,
            fetches: AtomicU64::new(0),
        });
        let packs = PackBlocks::new(far.clone(), 0);
        let counters = FetchCounters::default();

        let good = One(offer.base_object(), base.clone());
        let out = rebuild(&record, &t, &good, &packs, Some(&counters));
        assert_eq!(out.as_deref(), Some(target.as_slice()));
        assert_eq!(FetchCounters::get(&counters.deltas_applied), 1);
        // Only the delta's block is planned for a client with the base; both without it.
        let planned = crate::objects::blocks_of([&record], Some(&good as &dyn NearSource)).unwrap();
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].offset, index[&d].block_offset);
        assert_eq!(crate::objects::blocks_of([&record], None).unwrap().len(), 1);

        // A base whose bytes changed since it was indexed: the output fails its BLAKE3 check.
        let mut wrong = base.clone();
        wrong[50_000] ^= 1;
        let bad = One(offer.base_object(), wrong);
        assert_eq!(rebuild(&record, &t, &bad, &packs, Some(&counters)), None);
        assert_eq!(FetchCounters::get(&counters.deltas_rejected), 1);
        // No base near: nothing tried. The target itself near: nothing tried either.
        let none = One(ObjectId::blob(b"other"), Vec::new());
        assert_eq!(rebuild(&record, &t, &none, &packs, Some(&counters)), None);
        let has_target = One(t, target.clone());
        assert_eq!(
            rebuild(&record, &t, &has_target, &packs, Some(&counters)),
            None
        );
        // ... without reading the object table (a shape from near by has not fetched it).
        let reads = Arc::new(AtomicU64::new(0));
        let counted = reads.clone();
        let deferred = crate::Locations::deferred(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Table::default())
        });
        let unread = record_of(t, target.len() as u64, deferred);
        assert_eq!(rebuild(&unread, &t, &has_target, &packs, None), None);
        assert_eq!(FetchCounters::get(&reads), 0);
        assert_eq!(FetchCounters::get(&counters.deltas_rejected), 1);

        // An offer naming a valid delta of other bytes: the output is wrong, refused.
        let other = refstrip_cas::delta::encode(&base, &pattern(2, 100_000), 3).unwrap();
        let o = ObjectId::new(Kind::Delta, ContentDigest::of(&other));
        let mut w = PackWriter::new(Vec::new(), 1).unwrap();
        w.add(o, &other).unwrap();
        let (bytes, index) = w.finish().unwrap();
        let objects: HashMap<_, _> = index
            .iter()
            .map(|(id, l)| (*id, ("p".to_string(), *l)))
            .collect();
        let swapped = Offer {
            delta: o.digest,
            ..offer
        };
        let record = record_of(
            t,
            target.len() as u64,
            Table {
                objects,
                offers: vec![swapped],
            }
            .into(),
        );
        let packs = PackBlocks::new(
            Arc::new(MemoryPack {
                bytes,
                fetches: AtomicU64::new(0),
            }),
            0,
        );
        assert_eq!(rebuild(&record, &t, &good, &packs, Some(&counters)), None);
        assert_eq!(FetchCounters::get(&counters.deltas_rejected), 2);
    }
}
