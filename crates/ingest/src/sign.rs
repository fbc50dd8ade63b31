//! The operator's own signature on path records (`--sign-key`): added to each path as it is
//! ingested, and to the record of a path the store already has but that lacks it, so that pushing
//! or ingesting again with a key signs what an earlier run without one stored.
//!
//! The signature goes where the upstream `Sig` lines are kept (the manifest's narinfo fields), next
//! to them: a path ingested from a signed cache keeps its upstream signatures and gains the
//! operator's. It covers Nix's fingerprint (store path, NarHash, NarSize, references), so it
//! verifies for every narinfo served from the record, whatever URL or compression it names.

use refstrip_nix::signature::{add_signature, is_signed_by};
use refstrip_nix::{NarInfo, SecretKey};
use refstrip_read::PathRecord;
use refstrip_store::{Store, StoreError};

/// `info` with `key`'s signature added (if it lacks it).
pub(crate) fn signed(info: &NarInfo, key: &SecretKey) -> NarInfo {
    let mut info = info.clone();
    add_signature(&mut info, key);
    info
}

/// Add `key`'s signature to the record of `hash_part` if it lacks one. Returns whether the record
/// was rewritten. The record is replaced atomically; its objects stay where they are.
pub(crate) fn sign_existing(
    store: &Store,
    hash_part: &str,
    key: &SecretKey,
) -> Result<bool, StoreError> {
    let (record, _) = store.reader().record(hash_part)?;
    let bad = |why: String| StoreError::BadRecord {
        key: hash_part.to_string(),
        why,
    };
    let mut info =
        refstrip_read::pathinfo::narinfo(&record.manifest, String::new(), None, None, None)
            .map_err(|e| bad(e.to_string()))?;
    if is_signed_by(&info, &key.public_key()) {
        return Ok(false);
    }
    add_signature(&mut info, key);
    let path = refstrip_read::pathinfo::path_info(&info).map_err(|e| bad(e.to_string()))?;
    let mut manifest = record.manifest;
    manifest.info = path.info;
    let record = PathRecord {
        manifest,
        objects: record.objects,
    };
    store.add_record(&record)?;
    Ok(true)
}
