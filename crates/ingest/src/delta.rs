//! Deltas for version bumps (spec §8 "offers"): a new path's files are paired with the files of
//! its predecessor (the store's newest other path of the same package and output), and for each
//! pair whose contents differ a zstd patch-from delta is stored beside the full object when it is
//! small enough to be worth a client's while.
//!
//! Pairing (`refstrip_cas::delta::pair`) follows OSTree's rule: the same relative path, else the
//! same path with every run of digits wildcarded (`lib/liblua.so.5.4.4` ~ `lib/liblua.so.5.4.7`,
//! `lib/python3.11/x` ~ `lib/python3.12/x`), ties broken by the closest size. Deltas are made on
//! the worker that stripped the path, from bytes it kept while stripping and the base read back
//! from the store.

use std::collections::HashMap;
use std::io::{self, Read};

use refstrip_cas::delta::{files, pair, MAX_DELTA_INPUT};
use refstrip_cas::{FileSource, Kind, ObjectId, ObjectWrite};
use refstrip_read::objects::Objects;
use refstrip_read::{Offer, PathRecord};
use refstrip_store::{name_of, package_of, StagingPack, Store, StoreError};
use refstrip_strip::{ContentDigest, ContentSink, ContentSource, Manifest};

/// The newest path of each (package, output) in the store when the ingest started, by hash part:
/// newest as retention's `--keep-newest` counts it (registered last; in the same second, as one
/// ingest registers many paths, the highest name, then hash part).
pub struct Predecessors(HashMap<(String, String), (std::time::SystemTime, String, String)>);

impl Predecessors {
    pub fn of(store: &Store) -> Result<Predecessors, StoreError> {
        let times = store.registration_times()?;
        let paths = store.catalog().paths()?.into_iter();
        Ok(Self::among(paths.filter_map(|(hash_part, store_path)| {
            let time = *times.get(&hash_part)?;
            Some((hash_part, store_path, time))
        })))
    }

    /// The newest of these `(hash part, store path, registration time)`s per package.
    fn among(paths: impl Iterator<Item = (String, String, std::time::SystemTime)>) -> Self {
        let mut newest: HashMap<_, (std::time::SystemTime, String, String)> = HashMap::new();
        for (hash_part, store_path, time) in paths {
            let name = name_of(&store_path);
            let (package, output) = package_of(name);
            let key = (package.to_string(), output.to_string());
            let age = (time, name.to_string(), hash_part);
            if newest.get(&key).is_none_or(|newer| *newer < age) {
                newest.insert(key, age);
            }
        }
        Predecessors(newest)
    }

    /// The hash part of `store_path`'s predecessor, if the store has one.
    pub fn of_path(&self, hash_part: &str, name: &str) -> Option<&str> {
        let (package, output) = package_of(name);
        self.0
            .get(&(package.to_string(), output.to_string()))
            .map(|(_, _, h)| h.as_str())
            .filter(|h| *h != hash_part)
    }
}

/// The deltas of one path.
#[derive(Default)]
pub struct Made {
    pub offers: Vec<Offer>,
    /// The delta objects, by the offers' order.
    deltas: Vec<(ObjectId, Vec<u8>)>,
    /// Bytes of the delta objects this path added to the pack.
    pub bytes: u64,
}

/// Deltas from `base` (the predecessor's record) to the files of `manifest` held back in `kept`.
pub fn make(
    objects: &Objects,
    base: &PathRecord,
    manifest: &Manifest,
    kept: &[(ContentDigest, Vec<u8>)],
    level: i32,
) -> io::Result<Made> {
    let kept: HashMap<&ContentDigest, &[u8]> =
        kept.iter().map(|(d, b)| (d, b.as_slice())).collect();
    let targets = files(manifest);
    let bases = files(&base.manifest);
    let mut made = Made::default();
    for (t, b) in pair(&targets, &bases) {
        let (_, digest, size) = &targets[t];
        let (_, base_digest, base_size) = &bases[b];
        let Some(target) = kept.get(digest) else {
            continue;
        };
        if *base_size > MAX_DELTA_INPUT
            || *base_size == 0
            || made.offers.iter().any(|o| o.target.digest == *digest)
        {
            continue;
        }
        let mut base_bytes = Vec::with_capacity(*base_size as usize);
        let mut read = objects.of(base);
        if FileSource::new(&mut read)
            .open(base_digest, *base_size)
            .and_then(|mut r| r.read_to_end(&mut base_bytes))
            .is_err()
        {
            continue; // a base the store cannot read gets no delta; the full object is there
        }
        let Some(delta) = refstrip_cas::delta::worth_making(&base_bytes, target, level)? else {
            continue;
        };
        let target_id = refstrip_cas::file_object(digest, *size);
        let covers = match target_id.kind {
            Kind::ChunkList => refstrip_cas::chunks_of(target)
                .into_iter()
                .map(|(digest, _)| digest)
                .collect(),
            _ => Vec::new(),
        };
        let delta_id = ObjectId::new(Kind::Delta, ContentDigest::of(&delta));
        made.offers.push(Offer {
            target: target_id,
            target_size: *size,
            base: *base_digest,
            base_size: *base_size,
            delta: delta_id.digest,
            covers,
        });
        made.deltas.push((delta_id, delta));
    }
    Ok(made)
}

/// Write the files held back and the deltas into `pack`: the files that got a delta in blocks
/// of their own, then the deltas in blocks of their own, then the other files held back.
/// Returns the objects the path needs beyond what `sink` recorded: its new objects and bytes,
/// and every object id written or found.
pub fn write(
    pack: &mut StagingPack<'_>,
    kept: Vec<(ContentDigest, Vec<u8>)>,
    made: &mut Made,
) -> io::Result<(u64, u64, Vec<ObjectId>)> {
    let with_delta: std::collections::HashSet<ContentDigest> =
        made.offers.iter().map(|o| o.target.digest).collect();
    let (first, rest): (Vec<_>, Vec<_>) =
        kept.into_iter().partition(|(d, _)| with_delta.contains(d));
    let mut needed = Vec::new();
    let (mut new_objects, mut new_bytes) = (0, 0);
    let mut files = |pack: &mut StagingPack<'_>, files: Vec<(ContentDigest, Vec<u8>)>| {
        let mut sink = refstrip_cas::FileSink::new(pack);
        for (digest, bytes) in files {
            sink.begin(bytes.len() as u64)?;
            sink.write(&bytes)?;
            sink.end(&digest)?;
        }
        new_objects += sink.new_objects;
        new_bytes += sink.new_bytes;
        needed.extend(sink.needed);
        io::Result::Ok(())
    };
    if !first.is_empty() {
        pack.end_block()?;
        files(pack, first)?;
        pack.end_block()?;
    }
    for (id, bytes) in &made.deltas {
        if !pack.has(id)? {
            made.bytes += bytes.len() as u64;
            pack.put(*id, bytes)?;
        }
    }
    if !made.deltas.is_empty() {
        pack.end_block()?;
    }
    files(pack, rest)?;
    needed.extend(made.deltas.iter().map(|(id, _)| *id));
    Ok((new_objects, new_bytes, needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_predecessor_is_the_newest_path_and_in_one_second_the_highest_name() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let path = |h: char, name: &str| format!("/nix/store/{}-{name}", h.to_string().repeat(32));
        let h = |c: char| c.to_string().repeat(32);
        // lua 5.4.6 and 5.4.4 in one ingest (the same second), listed in either order; 5.4.0
        // later; zlib alone; lua's manual is a package of its own.
        for order in [["a", "b"], ["b", "a"]] {
            let mut paths = vec![
                (h('c'), path('c', "lua-5.4.0"), at(10)),
                (h('d'), path('d', "zlib-1.3"), at(5)),
                (h('e'), path('e', "lua-5.4.4-man"), at(1)),
            ];
            for which in order {
                paths.push(match which {
                    "a" => (h('a'), path('a', "lua-5.4.6"), at(20)),
                    _ => (h('b'), path('b', "lua-5.4.4"), at(20)),
                });
            }
            let p = Predecessors::among(paths.into_iter());
            assert_eq!(p.of_path(&h('z'), "lua-5.4.7"), Some(h('a').as_str()));
            assert_eq!(p.of_path(&h('z'), "zlib-1.3.1"), Some(h('d').as_str()));
            assert_eq!(p.of_path(&h('z'), "lua-5.4.7-man"), Some(h('e').as_str()));
            assert_eq!(p.of_path(&h('a'), "lua-5.4.6"), None, "not its own");
            assert_eq!(p.of_path(&h('z'), "libpng-1.6"), None);
        }
    }
}
