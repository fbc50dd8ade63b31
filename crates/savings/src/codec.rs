//! Real compressed sizes: streaming encoders writing into a byte counter, and a cache so that an
//! object met twice (same BLAKE3) is compressed once.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;

/// Nix compresses `compression=xz` NARs through libarchive's xz filter at its default, preset 6
/// (`xz -6`), with a CRC64 check.
pub(crate) const XZ_PRESET: u32 = 6;
/// `compression=zstd` in Nix (libarchive) uses zstd's default level, 3.
pub(crate) const ZSTD_LEVEL: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Codec {
    Xz,
    Zstd,
}

/// Counts what is written, keeps nothing.
#[derive(Default)]
pub(crate) struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The compressed size of a stream, computed as it is fed.
pub(crate) enum StreamSize {
    Xz(liblzma::write::XzEncoder<Counter>),
    Zstd(zstd::stream::write::Encoder<'static, Counter>),
}

impl StreamSize {
    pub(crate) fn new(codec: Codec) -> io::Result<Self> {
        Ok(match codec {
            Codec::Xz => StreamSize::Xz(liblzma::write::XzEncoder::new(
                Counter::default(),
                XZ_PRESET,
            )),
            Codec::Zstd => StreamSize::Zstd(zstd::stream::write::Encoder::new(
                Counter::default(),
                ZSTD_LEVEL,
            )?),
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            StreamSize::Xz(e) => e.write_all(data),
            StreamSize::Zstd(e) => e.write_all(data),
        }
    }

    pub(crate) fn finish(self) -> io::Result<u64> {
        Ok(match self {
            StreamSize::Xz(e) => e.finish()?.0,
            StreamSize::Zstd(e) => e.finish()?.0,
        })
    }
}

/// The compressed size of `data` as one stream (one file, one chunk).
pub(crate) fn compressed_size(codec: Codec, data: &[u8]) -> io::Result<u64> {
    let mut s = StreamSize::new(codec)?;
    s.write(data)?;
    s.finish()
}

/// Compressed sizes by (codec, BLAKE3 of the uncompressed bytes), shared by all workers.
#[derive(Default)]
pub(crate) struct SizeCache(Mutex<HashMap<(Codec, [u8; 32]), u64>>);

impl SizeCache {
    pub(crate) fn get(&self, codec: Codec, key: &[u8; 32]) -> Option<u64> {
        self.lock().get(&(codec, *key)).copied()
    }

    pub(crate) fn put(&self, codec: Codec, key: [u8; 32], size: u64) {
        self.lock().insert((codec, key), size);
    }

    /// The size of `data` (named `key`), compressing it only the first time.
    pub(crate) fn size_of(&self, codec: Codec, key: &[u8; 32], data: &[u8]) -> io::Result<u64> {
        if let Some(size) = self.get(codec, key) {
            return Ok(size);
        }
        let size = compressed_size(codec, data)?;
        self.put(codec, *key, size);
        Ok(size)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Codec, [u8; 32]), u64>> {
        // A worker that panicked left the map consistent (inserts are atomic): keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_whole_sizes_agree_and_compress() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [Codec::Xz, Codec::Zstd] {
            let whole = compressed_size(codec, &data).unwrap();
            let mut s = StreamSize::new(codec).unwrap();
            for piece in data.chunks(7919) {
                s.write(piece).unwrap();
            }
            assert_eq!(s.finish().unwrap(), whole, "{codec:?}");
            assert!(
                whole > 0 && whole < data.len() as u64 / 10,
                "{codec:?}: {whole}"
            );
        }
    }

    #[test]
    fn xz_output_is_a_real_xz_stream() {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), XZ_PRESET);
        e.write_all(b"hello hello hello").unwrap();
        let out = e.finish().unwrap();
        assert_eq!(&out[..6], b"\xfd7zXZ\0");
        assert_eq!(
            compressed_size(Codec::Xz, b"hello hello hello").unwrap(),
            out.len() as u64
        );
    }

    #[test]
    fn cache_compresses_once_per_key() {
        let cache = SizeCache::default();
        let key = [7u8; 32];
        let first = cache.size_of(Codec::Zstd, &key, b"some bytes").unwrap();
        // Same key, other bytes: the cached size wins, proving no second compression.
        assert_eq!(
            cache.size_of(Codec::Zstd, &key, &[0; 100_000]).unwrap(),
            first
        );
    }
}
