//! The `stripped-cdc-zstd-delta` row: what a client holding the old closure fetches from a
//! refstrip store that offers deltas (spec §8). Each new path whose predecessor (same package and
//! output, as ingest splits names: `refstrip_nix::store_path::package_of`) is in the old closure is stripped again beside it; their files
//! are paired and a delta made exactly as ingest does (`refstrip_cas::delta`); where ingest would
//! store one, the target's objects (a blob, or a chunk list and its chunks) give way to the delta.

use std::collections::{HashMap, HashSet};
use std::io;

use refstrip_cas::delta::{files, pair, worth_making, Keep};
use refstrip_nix::NarInfo;
use refstrip_source::NarSource;
use refstrip_strip::{ContentDigest, Manifest, StripOptions};

use crate::measure::{Method, Units};
use crate::SavingsError;

fn stripped(
    source: &dyn NarSource,
    info: &NarInfo,
) -> Result<(Manifest, HashMap<ContentDigest, Vec<u8>>), SavingsError> {
    let mut keep = Keep::new(io::sink(), true);
    let manifest = refstrip_read::pathinfo::strip_nar(
        source.nar(info)?,
        info,
        &StripOptions::default(),
        &mut keep,
    )
    .map_err(|e| SavingsError::invalid(info.store_path.to_string(), e.to_string()))?;
    Ok((manifest, keep.kept.into_iter().collect()))
}

/// Replace, in the delta method's units of `new`'s paths, the objects of files that come as
/// deltas by those deltas.
pub(crate) fn apply(
    (old, old_infos): (&dyn NarSource, &[NarInfo]),
    (new, new_infos): (&dyn NarSource, &[NarInfo]),
    old_units: &[Units],
    new_units: &mut [Units],
) -> Result<(), SavingsError> {
    let m = Method::StrippedCdcZstdDelta.index();
    let have: HashSet<[u8; 32]> = old_units
        .iter()
        .flat_map(|u| u[m].iter().map(|(k, _)| *k))
        .collect();
    let old_paths: HashSet<String> = old_infos.iter().map(|i| i.store_path.to_string()).collect();
    let mut predecessor: HashMap<(&str, &str), &NarInfo> = HashMap::new();
    for info in old_infos {
        predecessor
            .entry(refstrip_nix::store_path::package_of(info.store_path.name()))
            .or_insert(info);
    }
    for (info, units) in new_infos.iter().zip(new_units.iter_mut()) {
        if old_paths.contains(&info.store_path.to_string()) {
            continue; // the client has this very path
        }
        let Some(base) = predecessor.get(&refstrip_nix::store_path::package_of(
            info.store_path.name(),
        )) else {
            continue;
        };
        let (new_manifest, targets) = stripped(new, info)?;
        let (old_manifest, bases) = stripped(old, base)?;
        let (tfiles, bfiles) = (files(&new_manifest), files(&old_manifest));
        // As ingest: contents several files share get one delta.
        let mut made = HashSet::new();
        for (t, b) in pair(&tfiles, &bfiles) {
            let (digest, size) = (tfiles[t].1, tfiles[t].2);
            if made.contains(&digest) {
                continue;
            }
            let (Some(target), Some(base)) = (targets.get(&digest), bases.get(&bfiles[b].1)) else {
                continue;
            };
            // The target's units, as `FileMeter` names them: its blob, or its chunk list (named
            // by the file) and chunks.
            let mut keys: HashSet<[u8; 32]> = HashSet::from([digest.0]);
            if refstrip_cas::file_object(&digest, size).kind == refstrip_cas::Kind::ChunkList {
                keys.extend(refstrip_cas::chunks_of(target).iter().map(|(d, _)| d.0));
            }
            if keys.iter().all(|k| have.contains(k)) {
                continue;
            }
            let Some(delta) = worth_making(base, target, refstrip_cas::pack::DEFAULT_LEVEL)
                .map_err(|e| SavingsError::invalid(info.store_path.to_string(), e.to_string()))?
            else {
                continue;
            };
            units[m].retain(|(k, _)| !keys.contains(k));
            units[m].push((*blake3::hash(&delta).as_bytes(), delta.len() as u64));
            made.insert(digest);
        }
    }
    Ok(())
}
