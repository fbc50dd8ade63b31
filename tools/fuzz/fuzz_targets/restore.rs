#![no_main]
//! Hostile normalized input: any bytes as a manifest, any bytes as its objects. Decoding either
//! refuses with a typed error or yields a manifest that restore handles without panicking; a
//! restore that succeeds produced exactly the NAR whose SHA-256 the manifest names.
use libfuzzer_sys::fuzz_target;
use refstrip_strip::{restore_nar, Manifest, MemoryStore, Node};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize).min(data.len().saturating_sub(1));
    let (manifest_bytes, object) = data.get(1..).unwrap_or_default().split_at(split.min(data.len().saturating_sub(1)));
    let Ok(manifest) = Manifest::decode(manifest_bytes) else { return };
    // Offer `object` under every digest the manifest asks for, so restore gets past lookups.
    let mut store = MemoryStore::default();
    let mut stack = vec![&manifest.root];
    while let Some(node) = stack.pop() {
        match node {
            Node::File { digest, .. } => {
                store.objects.insert(*digest, object.to_vec());
            }
            Node::Directory(entries) => stack.extend(entries.iter().map(|e| &e.node)),
            Node::Symlink { .. } => {}
        }
    }
    let mut out = Vec::new();
    if restore_nar(&manifest, &mut store, &mut out).is_ok() {
        assert_eq!(Sha256::digest(&out).as_slice(), &manifest.nar_hash);
        assert_eq!(out.len() as u64, manifest.nar_size);
    }
});
