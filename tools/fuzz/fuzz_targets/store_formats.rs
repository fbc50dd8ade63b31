#![no_main]
//! The store's own parsers on hostile input: a path record (manifest + object locations, read
//! from any backend) either refuses with an error or decodes to a record that encodes back to a
//! record decoding the same; an `s3://` URL either refuses or parses to a bucket name and a prefix
//! that is empty or ends in `/` (keys are the prefix plus `packs/…`, `paths/…`).
use libfuzzer_sys::fuzz_target;
use refstrip_store::s3::S3Url;
use refstrip_store::PathRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = PathRecord::decode(data) {
        let again = PathRecord::decode(&record.encode()).expect("an encoded record decodes");
        assert_eq!(again.encode(), record.encode());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(url) = S3Url::parse(text) {
            assert!(!url.bucket.is_empty() && !url.bucket.contains('/'));
            assert!(url.prefix.is_empty() || url.prefix.ends_with('/'), "{url:?}");
        }
    }
});
