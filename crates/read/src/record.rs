//! Path records: a manifest plus where each object it needs lives.
//!
//! ```text
//! "rspath01" bytes(manifest)
//! varint(pack_count) bytes(pack id){pack_count}
//! varint(object_count) (digest[32] varint(kind) varint(pack index) varint(block_offset) varint(block_len)
//!                       varint(block_raw_len) varint(offset_in_block) varint(size)){object_count}
//! ```
//! With the record in hand, a client fetches exactly the pack blocks it lacks; no global index
//! or directory listing is needed, which suits static HTTP and object stores.

use std::collections::HashMap;

use refstrip_cas::pack::Location;
use refstrip_cas::{Kind, ObjectId};
use refstrip_strip::varint::{put, put_bytes, Cursor};
use refstrip_strip::{ContentDigest, Manifest};

const MAGIC: &[u8; 8] = b"rspath01";

/// Largest path record a reader fetches (a record holds a manifest and one entry per object;
/// the largest in the corpora is well under 1 MiB).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// One store path in a normalized store.
#[derive(Debug, Clone)]
pub struct PathRecord {
    pub manifest: Manifest,
    /// The encoded manifest, as stored (its BLAKE3 names it).
    pub manifest_bytes: Vec<u8>,
    /// Every object the manifest needs (blobs, chunk lists and the chunks they list).
    pub objects: HashMap<ObjectId, (String, Location)>,
}

impl PathRecord {
    /// The store path's basename, `<hash part>-<name>`.
    pub fn basename(&self) -> String {
        String::from_utf8_lossy(self.manifest.basename()).into_owned()
    }

    /// The store path's hash part (checked by [`decode`](Self::decode)'s manifest decoder).
    pub fn hash_part(&self) -> &str {
        std::str::from_utf8(&self.manifest.basename()[..32]).expect("nix-base32 is ASCII")
    }

    /// The logical store path, `<store dir>/<basename>`.
    pub fn store_path(&self) -> String {
        format!(
            "{}/{}",
            String::from_utf8_lossy(&self.manifest.store_dir),
            self.basename()
        )
    }

    /// The store directory the path belongs to.
    pub fn store_dir(&self) -> String {
        String::from_utf8_lossy(&self.manifest.store_dir).into_owned()
    }

    /// The hash parts of the path's references (itself included if it refers to itself).
    pub fn reference_hash_parts(&self) -> impl Iterator<Item = &str> {
        self.manifest
            .references
            .iter()
            .map(|r| std::str::from_utf8(&r[..32]).expect("nix-base32 is ASCII"))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_bytes(&mut out, &self.manifest_bytes);
        let mut packs: Vec<&str> = self.objects.values().map(|(p, _)| p.as_str()).collect();
        packs.sort_unstable();
        packs.dedup();
        put(&mut out, packs.len() as u64);
        for p in &packs {
            put_bytes(&mut out, p.as_bytes());
        }
        let mut objects: Vec<_> = self.objects.iter().collect();
        objects.sort_by_key(|(id, _)| **id);
        put(&mut out, objects.len() as u64);
        for (id, (pack, loc)) in objects {
            out.extend_from_slice(&id.digest.0);
            let pack_index = packs.binary_search(&pack.as_str()).expect("listed above") as u64;
            for v in [
                id.kind.code(),
                pack_index,
                loc.block_offset,
                loc.block_len,
                loc.block_raw_len,
                loc.offset_in_block,
                loc.size,
            ] {
                put(&mut out, v);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<PathRecord, String> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a refstrip path record (bad magic)")?;
        let mut cur = Cursor { bytes: rest };
        let truncated = || "truncated path record".to_string();
        let manifest_bytes = cur.bytes().ok_or_else(truncated)?.to_vec();
        let manifest = Manifest::decode(&manifest_bytes).map_err(|e| e.to_string())?;
        let n = cur.count().ok_or_else(truncated)?;
        // Each pack id takes at least two bytes: no count read here reaches the allocator unchecked.
        if n > cur.bytes.len() / 2 {
            return Err(truncated());
        }
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = std::str::from_utf8(cur.bytes().ok_or_else(truncated)?)
                .map_err(|_| "pack id is not UTF-8")?;
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad pack id {id:?}"));
            }
            packs.push(id.to_string());
        }
        let n = cur.count().ok_or_else(truncated)?;
        // A digest and seven varints: at least 39 bytes per object.
        if n > cur.bytes.len() / 39 {
            return Err(truncated());
        }
        let mut objects = HashMap::with_capacity(n);
        for _ in 0..n {
            let digest = ContentDigest(
                cur.take(32)
                    .ok_or_else(truncated)?
                    .try_into()
                    .expect("32 bytes"),
            );
            let mut v = [0u64; 7];
            for slot in &mut v {
                *slot = cur.varint().ok_or_else(truncated)?;
            }
            let kind = Kind::from_code(v[0]).ok_or("unknown object kind")?;
            let pack = packs
                .get(v[1] as usize)
                .ok_or("object names a pack the record does not list")?
                .clone();
            let loc = Location {
                block_offset: v[2],
                block_len: v[3],
                block_raw_len: v[4],
                offset_in_block: v[5],
                size: v[6],
            };
            // The pack's length is not known here; the backend checks the range against it.
            loc.check(u64::MAX)?;
            objects.insert(ObjectId::new(kind, digest), (pack, loc));
        }
        if !cur.bytes.is_empty() {
            return Err("trailing bytes in path record".into());
        }
        // The narinfo's References are kept verbatim; each must be in the reference table, whose
        // entries the manifest decoder checked, so that callers may take their hash parts.
        if let Some(r) = manifest
            .references
            .iter()
            .find(|r| !manifest.refs.basenames().contains(r))
        {
            return Err(format!(
                "reference {:?} is not in the reference table",
                String::from_utf8_lossy(r)
            ));
        }
        Ok(PathRecord {
            manifest,
            manifest_bytes,
            objects,
        })
    }
}
