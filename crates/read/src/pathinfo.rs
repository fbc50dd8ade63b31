//! narinfo ⇄ manifest: which narinfo fields a manifest keeps, and how the narinfo comes back.

use std::io::BufRead;

use refstrip_cas::bundle::PathInfo;
use refstrip_nix::{Deriver, Hash, NarInfo, StoreDir, StorePath};
use refstrip_strip::{ContentSink, Manifest, RefTable, StripError, StripOptions};

/// Why [`strip_nar`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StripNarError {
    #[error(transparent)]
    Strip(#[from] StripError),
    #[error("the NAR has SHA-256 {got_hash} and {got_size} bytes, but the narinfo says {want_hash} and {want_size} bytes")]
    Mismatch {
        got_hash: Hash,
        got_size: u64,
        want_hash: Hash,
        want_size: u64,
    },
}

/// Strip the NAR of the path `narinfo` describes into `sink`, check it against the narinfo's
/// NarHash and NarSize (computed over exactly the bytes parsed), and build its manifest: the one
/// sequence every ingest and measurement runs.
pub fn strip_nar(
    nar: impl BufRead,
    narinfo: &NarInfo,
    options: &StripOptions,
    sink: &mut dyn ContentSink,
) -> Result<Manifest, StripNarError> {
    let path = path_info(narinfo)?;
    let stripped = refstrip_strip::strip(nar, &path.refs, options, sink)?;
    if stripped.nar_hash != *narinfo.nar_hash.as_bytes() || stripped.nar_size != narinfo.nar_size {
        return Err(StripNarError::Mismatch {
            got_hash: Hash::from_bytes(stripped.nar_hash),
            got_size: stripped.nar_size,
            want_hash: narinfo.nar_hash,
            want_size: narinfo.nar_size,
        });
    }
    Ok(Manifest {
        store_dir: path.store_dir,
        refs: path.refs,
        references: path.references,
        nar_hash: stripped.nar_hash,
        nar_size: stripped.nar_size,
        info: path.info,
        root: stripped.root,
    })
}

/// Everything a manifest needs from a narinfo besides the NAR: the reference table and the fields
/// that describe the path rather than the cache's copy of it (Deriver, Sig, CA and unknown fields).
/// URL, Compression, FileHash and FileSize belong to one cache's compressed file and are dropped.
pub fn path_info(narinfo: &NarInfo) -> Result<PathInfo, refstrip_strip::StripError> {
    let references: Vec<Vec<u8>> = narinfo
        .references
        .iter()
        .map(|r| r.base_name().as_bytes().to_vec())
        .collect();
    let refs = RefTable::new(narinfo.store_path.base_name().as_bytes(), &references)?;
    let mut info = Vec::new();
    match &narinfo.deriver {
        Some(Deriver::Path(drv)) => info.push(("Deriver".to_string(), drv.base_name().to_string())),
        Some(Deriver::Unknown) => info.push(("Deriver".to_string(), "unknown-deriver".to_string())),
        None => {}
    }
    info.extend(narinfo.sigs.iter().map(|s| ("Sig".to_string(), s.clone())));
    if let Some(ca) = &narinfo.ca {
        info.push(("CA".to_string(), ca.clone()));
    }
    info.extend(narinfo.extra.iter().cloned());
    Ok(PathInfo {
        store_dir: narinfo.store_dir.as_str().as_bytes().to_vec(),
        refs,
        references,
        info,
    })
}

/// Why a manifest cannot be turned back into a narinfo.
#[derive(Debug, thiserror::Error)]
#[error("manifest of {path}: {why}")]
pub struct ManifestInfoError {
    path: String,
    why: String,
}

/// The narinfo of a manifest's path as it would be served: the original path fields (so the
/// original signatures verify) with the given file fields.
pub fn narinfo(
    manifest: &Manifest,
    url: String,
    compression: Option<String>,
    file_hash: Option<Hash>,
    file_size: Option<u64>,
) -> Result<NarInfo, ManifestInfoError> {
    let basename = String::from_utf8_lossy(manifest.basename()).into_owned();
    let err = |why: String| ManifestInfoError {
        path: basename.clone(),
        why,
    };
    let store_dir = StoreDir::new(String::from_utf8_lossy(&manifest.store_dir).into_owned())
        .map_err(|e| err(e.to_string()))?;
    let parse = |b: &str| StorePath::from_base_name(b).map_err(|e| err(e.to_string()));
    let store_path = parse(&basename)?;
    let references = manifest
        .references
        .iter()
        .map(|r| parse(&String::from_utf8_lossy(r)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut deriver = None;
    let mut sigs = Vec::new();
    let mut ca = None;
    let mut extra = Vec::new();
    for (key, value) in &manifest.info {
        match key.as_str() {
            "Deriver" if value == "unknown-deriver" => deriver = Some(Deriver::Unknown),
            "Deriver" => deriver = Some(Deriver::Path(parse(value)?)),
            "Sig" => sigs.push(value.clone()),
            "CA" => ca = Some(value.clone()),
            _ => extra.push((key.clone(), value.clone())),
        }
    }
    Ok(NarInfo {
        store_dir,
        store_path,
        url,
        compression,
        file_hash,
        file_size,
        nar_hash: Hash::from_bytes(manifest.nar_hash),
        nar_size: manifest.nar_size,
        references,
        deriver,
        sigs,
        ca,
        extra,
    })
}
