//! Path records: a path's manifest plus where each object it needs lives.
//!
//! Version 1 (`paths/<hash part>`, spec §6a) is one file:
//! ```text
//! "rspath01" bytes(manifest)
//! object table
//! ```
//! Version 2 (spec §8) splits it: `paths/<hash part>` holds the path's **binding**
//! ([`refstrip_strip::Binding`], about 200 bytes) and names a **shape** by its BLAKE3; the shape
//! file `shapes/<hex>` holds the shape's body and the object table:
//! ```text
//! "rsshape2" bytes(zstd frame of the shape body) object table
//! ```
//! A mass rebuild leaves shapes alone, so a client that holds the shape (cached, or derived from
//! the previous path in its own Nix store) fetches only the binding. The object table of either
//! version is
//! ```text
//! varint(pack_count) bytes(pack id){pack_count}
//! varint(object_count) (digest[32] varint(kind) varint(pack index) varint(block_offset) varint(block_len)
//!                       varint(block_raw_len) varint(offset_in_block) varint(size)){object_count}
//! ```
//! With the record in hand, a client fetches exactly the pack blocks it lacks; no global index
//! or directory listing is needed, which suits static HTTP and object stores.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use refstrip_cas::pack::Location;
use refstrip_cas::{Kind, ObjectId};
use refstrip_strip::varint::{put, put_bytes, Cursor};
use refstrip_strip::{Binding, ContentDigest, Manifest, BINDING_MAGIC};

const MAGIC_V1: &[u8; 8] = b"rspath01";
const SHAPE_MAGIC: &[u8; 8] = b"rsshape2";

/// Largest path record (or shape file) a reader fetches (one holds a manifest and one entry per
/// object; the largest in the corpora is well under 1 MiB).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Where each object of a path lives: pack id and location, by object.
pub type ObjectMap = HashMap<ObjectId, (String, Location)>;

type Loader = Box<dyn Fn() -> Result<ObjectMap, String> + Send + Sync>;

/// A record's object table, known or fetched on first use: a version 2 record whose shape came
/// from near by (the client's own Nix store) needs its object table only if an object is missing
/// there.
#[derive(Clone)]
pub struct Locations(Arc<LocationsInner>);

struct LocationsInner {
    map: OnceLock<Result<ObjectMap, String>>,
    load: Option<Loader>,
}

impl Locations {
    pub fn deferred(load: impl Fn() -> Result<ObjectMap, String> + Send + Sync + 'static) -> Self {
        Locations(Arc::new(LocationsInner {
            map: OnceLock::new(),
            load: Some(Box::new(load)),
        }))
    }

    /// The table, fetching it first if need be (once; an error is kept and repeated).
    pub fn map(&self) -> Result<&ObjectMap, String> {
        let inner = &*self.0;
        inner
            .map
            .get_or_init(|| match &inner.load {
                Some(load) => load(),
                None => Ok(ObjectMap::new()),
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The table if it is in memory already.
    pub fn loaded(&self) -> Option<&ObjectMap> {
        self.0.map.get().and_then(|r| r.as_ref().ok())
    }
}

impl From<ObjectMap> for Locations {
    fn from(map: ObjectMap) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(Ok(map));
        Locations(Arc::new(LocationsInner {
            map: cell,
            load: None,
        }))
    }
}

impl fmt::Debug for Locations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.map.get() {
            Some(Ok(map)) => write!(f, "Locations({} objects)", map.len()),
            Some(Err(e)) => write!(f, "Locations(error: {e})"),
            None => f.write_str("Locations(not fetched)"),
        }
    }
}

/// One store path in a normalized store.
#[derive(Debug, Clone)]
pub struct PathRecord {
    pub manifest: Manifest,
    /// Every object the manifest needs (blobs, chunk lists and the chunks they list).
    pub objects: Locations,
}

/// A version 2 record as written: the binding (`paths/<hash part>`) and the shape file
/// (`shapes/<hex of shape>`).
pub struct EncodedRecord {
    pub binding: Vec<u8>,
    pub shape: ContentDigest,
    pub shape_file: Vec<u8>,
}

/// What `paths/<hash part>` holds: a whole version 1 record, or a version 2 binding.
pub enum StoredRecord {
    V1(PathRecord),
    V2(Binding),
}

impl StoredRecord {
    pub fn decode(bytes: &[u8]) -> Result<StoredRecord, String> {
        if bytes.starts_with(BINDING_MAGIC) {
            return Binding::decode(bytes)
                .map(StoredRecord::V2)
                .map_err(|e| e.to_string());
        }
        PathRecord::decode_v1(bytes).map(StoredRecord::V1)
    }
}

/// A decoded shape file: the shape's body (checked against its name) and the object table.
pub struct ShapeFile {
    pub body: Vec<u8>,
    pub objects: ObjectMap,
}

impl ShapeFile {
    pub fn encode(body: &[u8], objects: &ObjectMap) -> Vec<u8> {
        let mut out = SHAPE_MAGIC.to_vec();
        put_bytes(&mut out, &refstrip_strip::compress_shape(body));
        encode_objects(&mut out, objects);
        out
    }

    /// Decode a shape file stored under `digest`, refusing one whose body hashes to anything else.
    pub fn decode(bytes: &[u8], digest: &ContentDigest) -> Result<ShapeFile, String> {
        let rest = bytes
            .strip_prefix(SHAPE_MAGIC.as_slice())
            .ok_or("not a refstrip shape (bad magic)")?;
        let mut cur = Cursor { bytes: rest };
        let frame = cur.bytes().ok_or("truncated shape")?;
        let body = refstrip_strip::inflate_shape(frame).map_err(|e| e.to_string())?;
        if ContentDigest::of(&body) != *digest {
            return Err(format!("shape filed under {digest} has other contents"));
        }
        let objects = decode_objects(&mut cur)?;
        if !cur.bytes.is_empty() {
            return Err("trailing bytes in shape".into());
        }
        Ok(ShapeFile { body, objects })
    }

    /// Only the object table, for a reader that has the body already.
    pub fn decode_objects(bytes: &[u8]) -> Result<ObjectMap, String> {
        let rest = bytes
            .strip_prefix(SHAPE_MAGIC.as_slice())
            .ok_or("not a refstrip shape (bad magic)")?;
        let mut cur = Cursor { bytes: rest };
        cur.bytes().ok_or("truncated shape")?;
        let objects = decode_objects(&mut cur)?;
        if !cur.bytes.is_empty() {
            return Err("trailing bytes in shape".into());
        }
        Ok(objects)
    }
}

impl PathRecord {
    /// The store path's basename, `<hash part>-<name>`.
    pub fn basename(&self) -> String {
        String::from_utf8_lossy(self.manifest.basename()).into_owned()
    }

    /// The store path's hash part (checked by the manifest decoders).
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

    /// The version 2 encoding (what writers write). The object table must be loaded.
    pub fn encode(&self) -> Result<EncodedRecord, String> {
        let objects = self.objects.map()?;
        let body = self.manifest.shape_body();
        Ok(EncodedRecord {
            binding: self.manifest.binding().map_err(|e| e.to_string())?,
            shape: ContentDigest::of(&body),
            shape_file: ShapeFile::encode(&body, objects),
        })
    }

    /// The version 1 encoding, one file (readers still take it; tests craft records with it).
    pub fn encode_v1(&self) -> Vec<u8> {
        let mut out = MAGIC_V1.to_vec();
        put_bytes(&mut out, &self.manifest.encode());
        encode_objects(&mut out, self.objects.map().expect("a loaded object table"));
        out
    }

    /// Decode a version 1 record.
    pub fn decode_v1(bytes: &[u8]) -> Result<PathRecord, String> {
        let rest = bytes
            .strip_prefix(MAGIC_V1.as_slice())
            .ok_or("not a refstrip path record (bad magic)")?;
        let mut cur = Cursor { bytes: rest };
        let manifest_bytes = cur.bytes().ok_or("truncated path record")?;
        let manifest = Manifest::decode(manifest_bytes).map_err(|e| e.to_string())?;
        let objects = decode_objects(&mut cur)?;
        if !cur.bytes.is_empty() {
            return Err("trailing bytes in path record".into());
        }
        PathRecord::checked(manifest, objects.into())
    }

    /// Join a version 2 binding with its shape's body.
    pub fn join(
        shape_body: &[u8],
        binding: &Binding,
        objects: Locations,
    ) -> Result<PathRecord, String> {
        let manifest = Manifest::from_halves(shape_body, binding).map_err(|e| e.to_string())?;
        PathRecord::checked(manifest, objects)
    }

    fn checked(manifest: Manifest, objects: Locations) -> Result<PathRecord, String> {
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
        Ok(PathRecord { manifest, objects })
    }
}

fn encode_objects(out: &mut Vec<u8>, objects: &ObjectMap) {
    let mut packs: Vec<&str> = objects.values().map(|(p, _)| p.as_str()).collect();
    packs.sort_unstable();
    packs.dedup();
    put(out, packs.len() as u64);
    for p in &packs {
        put_bytes(out, p.as_bytes());
    }
    let mut sorted: Vec<_> = objects.iter().collect();
    sorted.sort_by_key(|(id, _)| **id);
    put(out, sorted.len() as u64);
    for (id, (pack, loc)) in sorted {
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
            put(out, v);
        }
    }
}

fn decode_objects(cur: &mut Cursor<'_>) -> Result<ObjectMap, String> {
    let truncated = || "truncated object table".to_string();
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
    Ok(objects)
}
