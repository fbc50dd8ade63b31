#![no_main]
//! Placeholder until crates/nix exposes the narinfo parser.
use libfuzzer_sys::fuzz_target;
fuzz_target!(|_data: &[u8]| {});
