#![no_main]
//! Any bytes as a pack: opening refuses or yields an index; every object read back is either an
//! error or bytes that hash to the object's name.
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use refstrip_cas::pack::PackReader;
use refstrip_cas::{Kind, ObjectRead};
use refstrip_strip::ContentDigest;

fuzz_target!(|data: &[u8]| {
    // Any bytes as one block with a declared length (issue 17: bounded by the declared length).
    if let Some((len, block)) = data.split_first_chunk::<4>() {
        // Mostly small declared lengths (to explore decoding), sometimes absurd ones (up to 2^39).
        let raw_len = if len[3] & 0x80 != 0 {
            u64::from(u32::from_le_bytes(*len)) << (len[3] & 7)
        } else {
            u64::from(u16::from_le_bytes([len[0], len[1]]))
        };
        if let Ok(raw) = refstrip_cas::pack::decode_block(block, raw_len) {
            assert_eq!(raw.len() as u64, raw_len);
        }
    }
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
