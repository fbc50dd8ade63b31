#![no_main]
//! Any bytes as a pack: opening refuses or yields an index; every object read back is either an
//! error or bytes that hash to the object's name.
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use refstrip_cas::pack::PackReader;
use refstrip_cas::{Kind, ObjectRead};
use refstrip_strip::ContentDigest;

fuzz_target!(|data: &[u8]| {
    let Ok(mut pack) = PackReader::open(Cursor::new(data)) else { return };
    let ids: Vec<_> = pack.index().keys().copied().collect();
    for id in ids {
        if let Ok(bytes) = pack.get(&id) {
            if id.kind != Kind::ChunkList {
                assert_eq!(ContentDigest::of(&bytes), id.digest);
            }
        }
    }
});
