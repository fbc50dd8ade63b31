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

/// A delta offer (spec §8): the file whose normalized bytes are `target` (`target_size` of them)
/// can be rebuilt from the file `base` (`base_size` bytes) with the delta object `delta`
/// ([`refstrip_cas::delta`]). `covers` are the chunks of a chunked target: what a client using the
/// delta does not fetch. Nothing here is trusted: the output must hash to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub target: ObjectId,
    pub target_size: u64,
    pub base: ContentDigest,
    pub base_size: u64,
    pub delta: ContentDigest,
    pub covers: Vec<ContentDigest>,
}

impl Offer {
    /// The base file's object (a blob, or a chunk list for a large file).
    pub fn base_object(&self) -> ObjectId {
        refstrip_cas::file_object(&self.base, self.base_size)
    }

    pub fn delta_object(&self) -> ObjectId {
        ObjectId::new(Kind::Delta, self.delta)
    }
}

/// A shape file's object table: where each object lives, and the delta offers.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub objects: ObjectMap,
    pub offers: Vec<Offer>,
}

impl From<ObjectMap> for Table {
    fn from(objects: ObjectMap) -> Self {
        Table {
            objects,
            offers: Vec::new(),
        }
    }
}

type Loader = Box<dyn Fn() -> Result<Table, String> + Send + Sync>;

/// A record's object table, known or fetched on first use: a version 2 record whose shape came
/// from near by (the client's own Nix store) needs its object table only if an object is missing
/// there.
#[derive(Clone)]
pub struct Locations(Arc<LocationsInner>);

struct LocationsInner {
    table: OnceLock<Result<Table, String>>,
    load: Option<Loader>,
}

impl Locations {
    pub fn deferred(load: impl Fn() -> Result<Table, String> + Send + Sync + 'static) -> Self {
        Locations(Arc::new(LocationsInner {
            table: OnceLock::new(),
            load: Some(Box::new(load)),
        }))
    }

    /// The table, fetching it first if need be (once; an error is kept and repeated).
    pub fn table(&self) -> Result<&Table, String> {
        let inner = &*self.0;
        inner
            .table
            .get_or_init(|| match &inner.load {
                Some(load) => load(),
                None => Ok(Table::default()),
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Where each object lives (see [`table`](Self::table)).
    pub fn map(&self) -> Result<&ObjectMap, String> {
        self.table().map(|t| &t.objects)
    }

    /// The table if it is in memory already.
    pub fn loaded(&self) -> Option<&ObjectMap> {
        self.0
            .table
            .get()
            .and_then(|r| r.as_ref().ok())
            .map(|t| &t.objects)
    }
}

impl From<Table> for Locations {
    fn from(table: Table) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(Ok(table));
        Locations(Arc::new(LocationsInner {
            table: cell,
            load: None,
        }))
    }
}

impl From<ObjectMap> for Locations {
    fn from(map: ObjectMap) -> Self {
        Table::from(map).into()
    }
}

impl fmt::Debug for Locations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.table.get() {
            Some(Ok(t)) => write!(
                f,
                "Locations({} objects, {} offers)",
                t.objects.len(),
                t.offers.len()
            ),
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
    pub table: Table,
}

impl ShapeFile {
    pub fn encode(body: &[u8], table: &Table) -> Vec<u8> {
        let mut out = SHAPE_MAGIC.to_vec();
        put_bytes(&mut out, &refstrip_strip::compress_shape(body));
        let order = encode_objects(&mut out, &table.objects);
        encode_offers(&mut out, &table.offers, &order);
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
        let table = decode_table(&mut cur)?;
        Ok(ShapeFile { body, table })
    }

    /// Only the object table, for a reader that has the body already.
    pub fn decode_objects(bytes: &[u8]) -> Result<Table, String> {
        let rest = bytes
            .strip_prefix(SHAPE_MAGIC.as_slice())
            .ok_or("not a refstrip shape (bad magic)")?;
        let mut cur = Cursor { bytes: rest };
        cur.bytes().ok_or("truncated shape")?;
        decode_table(&mut cur)
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
        let table = self.objects.table()?;
        let body = self.manifest.shape_body();
        Ok(EncodedRecord {
            binding: self.manifest.binding().map_err(|e| e.to_string())?,
            shape: ContentDigest::of(&body),
            shape_file: ShapeFile::encode(&body, table),
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
        let (objects, _) = decode_objects(&mut cur)?;
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

/// Writes the table; returns its entries in the order written (offers refer to them by index).
fn encode_objects(out: &mut Vec<u8>, objects: &ObjectMap) -> Vec<ObjectId> {
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
    for &(id, (pack, loc)) in &sorted {
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
    sorted.into_iter().map(|(id, _)| *id).collect()
}

/// The offers section (spec §8), written only when there are offers, so that a shape file
/// without any is byte for byte what it was before offers existed. Offers naming an object the
/// table lacks are left out.
fn encode_offers(out: &mut Vec<u8>, offers: &[Offer], order: &[ObjectId]) {
    let index = |id: &ObjectId| order.binary_search(id).ok().map(|i| i as u64);
    let mut rows: Vec<(u64, &Offer, u64, Vec<u64>)> = offers
        .iter()
        .filter_map(|o| {
            let covers = o
                .covers
                .iter()
                .map(|c| index(&ObjectId::new(Kind::Blob, *c)))
                .collect::<Option<Vec<u64>>>()?;
            Some((index(&o.target)?, o, index(&o.delta_object())?, covers))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|a| (a.0, a.1.base));
    rows.dedup_by(|a, b| (a.0, a.1.base) == (b.0, b.1.base));
    put(out, rows.len() as u64);
    for (target, o, delta, covers) in rows {
        put(out, target);
        put(out, o.target_size);
        out.extend_from_slice(&o.base.0);
        put(out, o.base_size);
        put(out, delta);
        put(out, covers.len() as u64);
        for c in covers {
            put(out, c);
        }
    }
}

/// The object table and, if bytes follow it, the offers; nothing may follow those.
fn decode_table(cur: &mut Cursor<'_>) -> Result<Table, String> {
    let (objects, order) = decode_objects(cur)?;
    let offers = if cur.bytes.is_empty() {
        Vec::new()
    } else {
        decode_offers(cur, &objects, &order)?
    };
    if !cur.bytes.is_empty() {
        return Err("trailing bytes in shape".into());
    }
    Ok(Table { objects, offers })
}

fn decode_offers(
    cur: &mut Cursor<'_>,
    objects: &ObjectMap,
    order: &[ObjectId],
) -> Result<Vec<Offer>, String> {
    use refstrip_cas::delta::MAX_DELTA_INPUT;
    let truncated = || "truncated delta offers".to_string();
    let n = cur.count().ok_or_else(truncated)?;
    // A section is written only with offers; each takes at least 37 bytes.
    if n == 0 || n > cur.bytes.len() / 37 {
        return Err(truncated());
    }
    let entry = |i: u64, kinds: &[Kind]| -> Result<(ObjectId, u64), String> {
        let id = *order
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .ok_or("delta offer names an object the table does not list")?;
        if !kinds.contains(&id.kind) {
            return Err(format!(
                "delta offer names a {} where it needs {kinds:?}",
                id.kind.name()
            ));
        }
        Ok((id, objects[&id].1.size))
    };
    let mut offers: Vec<Offer> = Vec::with_capacity(n);
    for _ in 0..n {
        let (target, stored) = entry(
            cur.varint().ok_or_else(truncated)?,
            &[Kind::Blob, Kind::ChunkList],
        )?;
        let target_size = cur.varint().ok_or_else(truncated)?;
        let base = ContentDigest(cur.take(32).ok_or_else(truncated)?.try_into().expect("32"));
        let base_size = cur.varint().ok_or_else(truncated)?;
        let (delta, _) = entry(cur.varint().ok_or_else(truncated)?, &[Kind::Delta])?;
        let c = cur.count().ok_or_else(truncated)?;
        if c > cur.bytes.len() {
            return Err(truncated());
        }
        let mut covers = Vec::with_capacity(c);
        for _ in 0..c {
            covers.push(
                entry(cur.varint().ok_or_else(truncated)?, &[Kind::Blob])?
                    .0
                    .digest,
            );
        }
        // The sizes bound what a client allocates to apply the delta: checked here once.
        let blob_size_ok = match target.kind {
            Kind::Blob => target_size == stored && covers.is_empty(),
            _ => target_size > refstrip_cas::CHUNK_THRESHOLD as u64,
        };
        if !blob_size_ok || target_size > MAX_DELTA_INPUT || base_size > MAX_DELTA_INPUT {
            return Err("delta offer with impossible sizes".into());
        }
        let offer = Offer {
            target,
            target_size,
            base,
            base_size,
            delta: delta.digest,
            covers,
        };
        if offers
            .last()
            .is_some_and(|last| (last.target, last.base) >= (offer.target, offer.base))
        {
            return Err("delta offers not sorted".into());
        }
        offers.push(offer);
    }
    Ok(offers)
}

/// Whether `id` can name a pack: hex digits only, so that it is one plain file name under
/// `packs/` or a cache's `blocks/`, wherever it was read.
pub(crate) fn is_pack_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn decode_objects(cur: &mut Cursor<'_>) -> Result<(ObjectMap, Vec<ObjectId>), String> {
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
        if !is_pack_id(id) {
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
    let mut order = Vec::with_capacity(n);
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
        let id = ObjectId::new(kind, digest);
        order.push(id);
        objects.insert(id, (pack, loc));
    }
    Ok((objects, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> ContentDigest {
        ContentDigest::of(&[n])
    }

    fn loc(size: u64) -> Location {
        Location {
            block_offset: 8,
            block_len: 100,
            block_raw_len: 1 << 20,
            offset_in_block: 0,
            size,
        }
    }

    /// A table with a small target, a chunked one (two chunks) and their deltas.
    fn table() -> Table {
        let mut objects = ObjectMap::new();
        let mut add = |kind, n, size| {
            let id = ObjectId::new(kind, digest(n));
            objects.insert(id, ("ab12".to_string(), loc(size)));
            id
        };
        let small = add(Kind::Blob, 1, 5000);
        let large = add(Kind::ChunkList, 2, 80);
        add(Kind::Blob, 3, 200_000);
        add(Kind::Blob, 4, 100_000);
        add(Kind::Delta, 5, 700);
        add(Kind::Delta, 6, 9000);
        let offers = vec![
            Offer {
                target: small,
                target_size: 5000,
                base: digest(7),
                base_size: 4900,
                delta: digest(5),
                covers: vec![],
            },
            Offer {
                target: large,
                target_size: 300_000,
                base: digest(8),
                base_size: 290_000,
                delta: digest(6),
                covers: vec![digest(3), digest(4)],
            },
        ];
        Table { objects, offers }
    }

    fn sorted(mut offers: Vec<Offer>) -> Vec<Offer> {
        offers.sort_by_key(|o| (o.target, o.base));
        offers
    }

    /// The shape file bytes after the frame: the object table and the offers.
    fn tail(table: &Table) -> Vec<u8> {
        let mut out = Vec::new();
        let order = encode_objects(&mut out, &table.objects);
        encode_offers(&mut out, &table.offers, &order);
        out
    }

    fn decode_tail(bytes: &[u8]) -> Result<Table, String> {
        decode_table(&mut Cursor { bytes })
    }

    #[test]
    fn offers_round_trip_and_a_table_without_offers_is_unchanged() {
        let t = table();
        let file = ShapeFile::encode(b"body", &t);
        let back = ShapeFile::decode(&file, &ContentDigest::of(b"body")).unwrap();
        assert_eq!(back.table.objects, t.objects);
        assert_eq!(back.table.offers, sorted(t.offers.clone()));
        // No offers: nothing after the object table, as before offers existed.
        let plain = Table::from(t.objects.clone());
        let mut before = Vec::new();
        encode_objects(&mut before, &plain.objects);
        assert_eq!(tail(&plain), before);
        assert!(decode_tail(&before).unwrap().offers.is_empty());
        // Offers naming objects the table lacks are left out when writing.
        let mut dangling = t.clone();
        dangling.offers[0].delta = digest(99);
        assert_eq!(decode_tail(&tail(&dangling)).unwrap().offers.len(), 1);
    }

    /// The offers section of `t` (what follows its object table), edited, then decoded.
    fn with_offers(t: &Table, edit: impl FnOnce(&mut Vec<u8>)) -> Result<Table, String> {
        let mut objects = Vec::new();
        encode_objects(&mut objects, &t.objects);
        let all = tail(t);
        let mut offers = all[objects.len()..].to_vec();
        edit(&mut offers);
        objects.extend_from_slice(&offers);
        decode_tail(&objects)
    }

    /// One offer written by hand: (target index, target size, base, base size, delta index, covers).
    fn offer_bytes(target: u64, size: u64, base_size: u64, delta: u64, covers: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, 1);
        put(&mut out, target);
        put(&mut out, size);
        out.extend_from_slice(&digest(7).0);
        put(&mut out, base_size);
        put(&mut out, delta);
        put(&mut out, covers.len() as u64);
        for c in covers {
            put(&mut out, *c);
        }
        out
    }

    #[test]
    fn hostile_offers_are_refused() {
        let t = table();
        // Table order: sorted by (kind, digest); find the indices of each kind.
        let mut order: Vec<ObjectId> = t.objects.keys().copied().collect();
        order.sort();
        let at = |kind: Kind, n: u8| {
            order
                .iter()
                .position(|id| *id == ObjectId::new(kind, digest(n)))
                .unwrap() as u64
        };
        let (small, large, delta) = (
            at(Kind::Blob, 1),
            at(Kind::ChunkList, 2),
            at(Kind::Delta, 5),
        );
        let chunk = at(Kind::Blob, 3);
        let refused = |bytes: Vec<u8>, why: &str| {
            let err = with_offers(&t, |o| *o = bytes).unwrap_err();
            assert!(err.contains(why), "{err} (expected {why})");
        };
        assert!(with_offers(&t, |o| *o = offer_bytes(small, 5000, 10, delta, &[])).is_ok());
        assert!(with_offers(&t, |o| *o =
            offer_bytes(large, 300_000, 10, delta, &[chunk]))
        .is_ok());
        // Counts beyond the bytes left, and an empty section.
        refused(vec![0], "truncated");
        refused(
            {
                let mut b = Vec::new();
                put(&mut b, u64::MAX);
                b
            },
            "truncated",
        );
        refused(
            {
                let mut b = offer_bytes(small, 5000, 10, delta, &[]);
                b.pop();
                put(&mut b, 1 << 40);
                b
            },
            "truncated",
        );
        refused(
            offer_bytes(small, 5000, 10, delta, &[])[..30].to_vec(),
            "truncated",
        );
        // Indices outside the table, and objects of the wrong kind.
        refused(offer_bytes(1000, 5000, 10, delta, &[]), "does not list");
        refused(offer_bytes(u64::MAX, 5000, 10, delta, &[]), "does not list");
        refused(offer_bytes(small, 5000, 10, small, &[]), "needs");
        refused(offer_bytes(delta, 5000, 10, delta, &[]), "needs");
        refused(offer_bytes(large, 300_000, 10, delta, &[large]), "needs");
        // Sizes: a blob target's must be its object's; a chunked one's above the chunk
        // threshold; neither may exceed the delta limit (they size the client's buffers).
        refused(offer_bytes(small, 5001, 10, delta, &[]), "impossible sizes");
        refused(
            offer_bytes(small, 5000, 10, delta, &[chunk]),
            "impossible sizes",
        );
        refused(offer_bytes(large, 1000, 10, delta, &[]), "impossible sizes");
        refused(
            offer_bytes(large, u64::MAX, 10, delta, &[]),
            "impossible sizes",
        );
        refused(
            offer_bytes(small, 5000, u64::MAX, delta, &[]),
            "impossible sizes",
        );
        // Two offers out of order (or twice the same).
        let mut two = offer_bytes(small, 5000, 10, delta, &[]);
        two.remove(0);
        let mut twice = Vec::new();
        put(&mut twice, 2);
        twice.extend_from_slice(&two);
        twice.extend_from_slice(&two);
        refused(twice, "not sorted");
        // Bytes after the offers.
        refused(
            {
                let mut b = offer_bytes(small, 5000, 10, delta, &[]);
                b.push(0);
                b
            },
            "trailing",
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_after_a_table_decode_or_refuse(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let t = table();
            if let Ok(back) = with_offers(&t, |o| *o = bytes) {
                for o in &back.offers {
                    proptest::prop_assert!(o.target_size <= refstrip_cas::delta::MAX_DELTA_INPUT);
                    proptest::prop_assert!(back.objects.contains_key(&o.delta_object()));
                }
            }
        }
    }
}
