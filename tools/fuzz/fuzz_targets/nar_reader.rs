#![no_main]
//! Any byte string fed to the NAR reader yields events or a typed error, never a panic; whatever it
//! accepts, the writer re-encodes to the very same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = refstrip_nar::NarReader::new(data);
    let mut out = Vec::new();
    let mut writer = refstrip_nar::NarWriter::new(&mut out);
    if refstrip_nar::copy(&mut reader, &mut writer).is_ok() {
        let consumed = reader.offset() as usize;
        writer.finish().expect("a NAR the reader accepts is complete");
        assert_eq!(out, &data[..consumed]);
    }
});
