#![no_main]
//! The read side's parsers on hostile input. The first byte picks the parser:
//! - 0: a path record (format 1 record or format 2 binding, as `paths/<hash part>` holds) either
//!   refuses or decodes; a format 1 record encodes back to a record decoding the same, with every
//!   block within the decoder's limits;
//! - 1: a format 2 binding and a shape body (split at a little-endian u16 length) either refuse to
//!   join or join into a manifest that splits into halves joining to the same manifest;
//! - 2: a shape file's object table and delta offers, with every block within the limits, every
//!   offer's sizes within the delta limit and its delta in the table; the table encodes back to
//!   one decoding the same;
//! - anything else: a store URL either refuses or parses, and an `s3://` one to a bucket name and
//!   a prefix that is empty or ends in `/` (keys are the prefix plus `packs/…`, `paths/…`).
use libfuzzer_sys::fuzz_target;
use refstrip_backend::StoreUrl;
use refstrip_cas::pack::MAX_BLOCK_RAW_LEN;
use refstrip_cas::delta::MAX_DELTA_INPUT;
use refstrip_read::{ObjectMap, PathRecord, ShapeFile, StoredRecord};
use refstrip_strip::{Binding, Manifest};

fn check_locations(objects: &ObjectMap) {
    for (_, loc) in objects.values() {
        assert!(loc.block_raw_len <= MAX_BLOCK_RAW_LEN && loc.check(u64::MAX).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Ok(StoredRecord::V1(record)) = StoredRecord::decode(rest) {
                check_locations(record.objects.map().unwrap());
                let _ = record.reference_hash_parts().count();
                let again =
                    PathRecord::decode_v1(&record.encode_v1()).expect("an encoded record decodes");
                assert_eq!(again.encode_v1(), record.encode_v1());
            }
        }
        1 => {
            let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
            let (binding, shape) = rest.split_at(len);
            let Ok(binding) = Binding::decode(binding) else {
                return;
            };
            if let Ok(manifest) = Manifest::from_halves(shape, &binding) {
                let again = Binding::decode(&manifest.binding().unwrap()).unwrap();
                let joined = Manifest::from_halves(&manifest.shape_body(), &again).unwrap();
                assert_eq!(joined, manifest);
            }
        }
        2 => {
            if let Ok(table) = ShapeFile::decode_objects(rest) {
                check_locations(&table.objects);
                for o in &table.offers {
                    assert!(o.target_size <= MAX_DELTA_INPUT && o.base_size <= MAX_DELTA_INPUT);
                    assert!(table.objects.contains_key(&o.delta_object()));
                }
                let again = ShapeFile::decode_objects(&ShapeFile::encode(b"", &table))
                    .expect("an encoded table decodes");
                assert_eq!(again.objects, table.objects);
                assert_eq!(again.offers, table.offers);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(StoreUrl::S3(url)) = StoreUrl::parse(text) {
                    assert!(!url.bucket.is_empty() && !url.bucket.contains('/'));
                    assert!(url.prefix.is_empty() || url.prefix.ends_with('/'), "{url:?}");
                }
            }
        }
    }
});
