#![no_main]
//! The read side's parsers on hostile input: a path record (manifest + object locations, read
//! from any backend) either refuses with an error or decodes to a record that encodes back to a
//! record decoding the same, with every block within the decoder's limits; a store URL either
//! refuses or parses, and an `s3://` one to a bucket name and a prefix that is empty or ends in
//! `/` (keys are the prefix plus `packs/…`, `paths/…`).
use libfuzzer_sys::fuzz_target;
use refstrip_backend::StoreUrl;
use refstrip_cas::pack::MAX_BLOCK_RAW_LEN;
use refstrip_read::PathRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = PathRecord::decode(data) {
        for (_, loc) in record.objects.values() {
            assert!(loc.block_raw_len <= MAX_BLOCK_RAW_LEN && loc.check(u64::MAX).is_ok());
        }
        let _ = record.reference_hash_parts().count();
        let again = PathRecord::decode(&record.encode()).expect("an encoded record decodes");
        assert_eq!(again.encode(), record.encode());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(StoreUrl::S3(url)) = StoreUrl::parse(text) {
            assert!(!url.bucket.is_empty() && !url.bucket.contains('/'));
            assert!(url.prefix.is_empty() || url.prefix.ends_with('/'), "{url:?}");
        }
    }
});
