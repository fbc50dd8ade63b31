#![no_main]
//! Hostile normalized input: any bytes as a manifest, any bytes as its objects. Decoding either
//! refuses with a typed error or yields a manifest that restore handles without panicking; a
//! restore that succeeds produced exactly the NAR whose SHA-256 the manifest names.
//!
//! Budgets (issue 17), checked on every restore, successful or not: no more than NarSize bytes
//! reach the NAR output or the visitor, no more than `max_nodes()` nodes are reported, and every
//! name a decoded manifest carries is one Nix accepts. Half the inputs are framed by the target
//! (magic, version, zstd) so the fuzzer explores the manifest body, not zstd's frame format.
use libfuzzer_sys::fuzz_target;
use refstrip_nar::Event;
use refstrip_strip::{restore, varint, Manifest, MemoryStore, Node, RestoreVisitor, StripError};
use sha2::{Digest, Sha256};

/// Counts what restore hands out.
#[derive(Default)]
struct Counter {
    nodes: u64,
    content: u64,
}

impl RestoreVisitor for Counter {
    fn event(&mut self, event: &Event) -> std::io::Result<()> {
        if !matches!(event, Event::EndDirectory) {
            self.nodes += 1;
        }
        Ok(())
    }
    fn contents(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.content += data.len() as u64;
        Ok(())
    }
}

/// Counts NAR bytes written, keeping them only while small enough to hash-check.
#[derive(Default)]
struct Out {
    bytes: Vec<u8>,
    len: u64,
}

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len() as u64;
        if self.len <= 1 << 24 {
            self.bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // Layout: mode byte, manifest length (u16 le), manifest, then the object bytes.
    let Some((&mode, data)) = data.split_first() else { return };
    let Some((len, data)) = data.split_first_chunk::<2>() else { return };
    let (manifest_part, object) = data.split_at(usize::from(u16::from_le_bytes(*len)).min(data.len()));
    let framed;
    let manifest_bytes = if mode & 1 == 1 {
        let mut f = b"rsmanif\n".to_vec();
        varint::put(&mut f, refstrip_strip::MANIFEST_VERSION);
        f.extend(zstd::bulk::compress(manifest_part, 1).expect("in-memory zstd"));
        framed = f;
        &framed[..]
    } else {
        manifest_part
    };
    let Ok(manifest) = Manifest::decode(manifest_bytes) else { return };
    // Whatever decodes names only paths Nix accepts.
    for b in manifest.refs.basenames().iter().chain(&manifest.references) {
        assert!(refstrip_nix::check_base_name(b).is_ok());
    }
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
    let mut out = Out::default();
    let mut seen = Counter::default();
    let result = restore(&manifest, &mut store, &mut out, &mut seen);
    assert!(out.len <= manifest.nar_size, "{} NAR bytes > NarSize {}", out.len, manifest.nar_size);
    assert!(seen.content <= manifest.nar_size);
    assert!(seen.nodes <= manifest.max_nodes());
    match result {
        Ok(_) => {
            assert_eq!(Sha256::digest(&out.bytes).as_slice(), &manifest.nar_hash);
            assert_eq!(out.len, manifest.nar_size);
        }
        Err(StripError::OverBudget { limit, .. }) => assert!(limit <= manifest.nar_size.max(manifest.max_nodes())),
        Err(_) => {}
    }
});
