#![no_main]
//! Any byte string fed to the narinfo and store-path parsers yields a value or a typed error, never
//! a panic; whatever parses re-serialises to text that parses to the same value and re-serialises
//! to itself (so the canonical form is a fixed point).
use libfuzzer_sys::fuzz_target;
use refstrip_nix::{CacheInfo, NarInfo, StoreDir, StorePath};

fuzz_target!(|data: &[u8]| {
    let store_dir = StoreDir::default();
    if let Ok(info) = NarInfo::parse_bytes(&store_dir, data) {
        let text = info.to_string();
        let again = NarInfo::parse(&store_dir, &text).expect("serialised narinfo re-parses");
        assert_eq!(again, info);
        assert_eq!(again.to_string(), text);
        let _ = info.fingerprint();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(path) = StorePath::from_base_name(text) {
            assert_eq!(path.to_string(), text);
            assert_eq!(StorePath::from_parts(&path.digest(), path.name()).as_ref(), Ok(&path));
        }
        if let Ok(path) = store_dir.parse_path(text) {
            assert_eq!(store_dir.display_path(&path), text);
        }
        if let Ok(info) = CacheInfo::parse(text) {
            assert_eq!(CacheInfo::parse(&info.to_string()).as_ref(), Ok(&info));
        }
    }
});
