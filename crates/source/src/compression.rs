use std::io::{self, BufRead, BufReader, Read};

/// A NAR file's compression, as a narinfo's `Compression` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    /// Parse a narinfo `Compression` value; Nix treats a missing field as `bzip2`.
    pub fn from_narinfo(value: Option<&str>) -> io::Result<Self> {
        Ok(match value.unwrap_or("bzip2") {
            "none" | "" => Compression::None,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            "bzip2" => Compression::Bzip2,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "unsupported NAR compression {other:?} (supported: none, xz, zstd, bzip2)"
                    ),
                ))
            }
        })
    }

    /// Guess from a file name's extension (`.nar.xz`, `.nar.zst`, `.nar.bz2`, `.nar`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        Some(match name.rsplit_once('.')?.1 {
            "nar" => Compression::None,
            "xz" => Compression::Xz,
            "zst" => Compression::Zstd,
            "bz2" => Compression::Bzip2,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

/// Wrap `r` so that reading yields the decompressed NAR, buffered for the NAR reader. Corrupt or
/// truncated input surfaces as an I/O error from the reads.
pub fn decompress<'a, R: Read + Send + 'a>(
    r: R,
    compression: Compression,
) -> io::Result<Box<dyn BufRead + Send + 'a>> {
    const BUF: usize = 1 << 20;
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(BUF, r)),
        Compression::Xz => Box::new(BufReader::with_capacity(
            BUF,
            liblzma::read::XzDecoder::new_multi_decoder(r),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUF,
            zstd::stream::read::Decoder::new(r)?,
        )),
        Compression::Bzip2 => Box::new(BufReader::with_capacity(
            BUF,
            bzip2::read::MultiBzDecoder::new(r),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_compression_round_trips_and_truncation_fails() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        for (c, bytes) in [
            (Compression::Xz, xz),
            (Compression::Zstd, zst),
            (Compression::Bzip2, bz),
            (Compression::None, data.clone()),
        ] {
            let mut out = Vec::new();
            decompress(&bytes[..], c)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data, "{c:?}");
            if c != Compression::None {
                let mut out = Vec::new();
                let r = decompress(&bytes[..bytes.len() / 2], c)
                    .and_then(|mut d| d.read_to_end(&mut out));
                assert!(r.is_err(), "{c:?} truncated input must fail");
            }
        }
        assert_eq!(Compression::from_narinfo(None).unwrap(), Compression::Bzip2);
        assert!(Compression::from_narinfo(Some("lz4")).is_err());
        assert_eq!(
            Compression::from_file_name("abc.nar.zst"),
            Some(Compression::Zstd)
        );
    }
}
