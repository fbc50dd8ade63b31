//! SHA-256 hashes as narinfo files spell them, and streaming adapters that compute them.
//!
//! Nix writes `NarHash` and `FileHash` as `sha256:<nix32>` and that is what [`Hash`](struct@Hash) prints, because
//! the signature fingerprint embeds exactly that text. On input it accepts every spelling Nix's
//! `Hash::parseAnyPrefixed` accepts for SHA-256: `sha256:` followed by 52 nix32, 64 hex or 44 base64
//! characters (told apart by length), or SRI `sha256-<base64>`. Other algorithms are rejected:
//! binary caches only ever use SHA-256 here (Nix asserts it when writing a narinfo).

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::base32;

/// Length of a SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;

/// A SHA-256 digest: a NAR hash or a compressed-file hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; SHA256_LEN]);

/// Why a string is not a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("hash {0:?} has no algorithm prefix (expected sha256:… or sha256-…)")]
    MissingAlgorithm(String),
    #[error("hash algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    #[error("sha256 hash body has {0} characters; expected 52 (nix32), 64 (hex) or 44 (base64)")]
    WrongLength(usize),
    #[error("bad nix-base32 in hash: {0}")]
    Base32(base32::Base32Error),
    #[error("bad hex digit in hash")]
    Hex,
    #[error("bad base64 in hash")]
    Base64,
}

impl From<base32::Base32Error> for HashError {
    fn from(e: base32::Base32Error) -> Self {
        HashError::Base32(e)
    }
}

impl Hash {
    /// Wrap a raw digest.
    pub const fn from_bytes(bytes: [u8; SHA256_LEN]) -> Self {
        Hash(bytes)
    }

    /// SHA-256 of `data`.
    pub fn digest(data: impl AsRef<[u8]>) -> Self {
        Hash(Sha256::digest(data.as_ref()).into())
    }

    pub const fn as_bytes(&self) -> &[u8; SHA256_LEN] {
        &self.0
    }

    /// The 52-character nix32 body, without the `sha256:` prefix (as in `nar/<FileHash>.nar.xz`).
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Subresource-integrity form `sha256-<base64>`, as newer Nix prints by default.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", STANDARD.encode(self.0))
    }

    /// Parse the body of a `sha256:` hash, choosing the encoding by length as Nix does.
    pub fn parse_body(body: &str) -> Result<Self, HashError> {
        let mut bytes = [0u8; SHA256_LEN];
        match body.len() {
            52 => base32::decode_into(body, &mut bytes)?,
            64 => {
                for (out, pair) in bytes.iter_mut().zip(body.as_bytes().chunks(2)) {
                    let digit = |c: u8| (c as char).to_digit(16).ok_or(HashError::Hex);
                    *out = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
                }
            }
            44 => bytes = decode_base64(body)?,
            n => return Err(HashError::WrongLength(n)),
        }
        Ok(Hash(bytes))
    }
}

fn decode_base64(body: &str) -> Result<[u8; SHA256_LEN], HashError> {
    let bytes = STANDARD.decode(body).map_err(|_| HashError::Base64)?;
    bytes.try_into().map_err(|_| HashError::Base64)
}

fn check_algorithm(algo: &str, text: &str) -> Result<(), HashError> {
    match algo {
        "sha256" => Ok(()),
        "" => Err(HashError::MissingAlgorithm(text.to_owned())),
        other => Err(HashError::UnsupportedAlgorithm(other.to_owned())),
    }
}

impl FromStr for Hash {
    type Err = HashError;

    /// `sha256:<nix32|hex|base64>` or SRI `sha256-<base64>`.
    fn from_str(text: &str) -> Result<Self, HashError> {
        if let Some((algo, body)) = text.split_once(':') {
            check_algorithm(algo, text)?;
            Hash::parse_body(body)
        } else if let Some((algo, body)) = text.split_once('-') {
            check_algorithm(algo, text)?;
            Ok(Hash(decode_base64(body)?))
        } else {
            Err(HashError::MissingAlgorithm(text.to_owned()))
        }
    }
}

/// `sha256:<nix32>`, the form in narinfo files and signature fingerprints.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// A reader that hashes and counts every byte its consumer takes, so a NAR can be checked against
/// its `NarHash`/`NarSize` while it streams through a decoder.
///
/// When the inner reader is [`BufRead`] so is this one, and only *consumed* bytes are hashed: a
/// decoder that peeks with `fill_buf` and stops early hashes exactly what it used.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read (consumed) so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash and size of everything read, and the inner reader.
    pub fn finish(self) -> (Hash, u64, R) {
        (Hash(self.hasher.finalize().into()), self.count, self.inner)
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.absorb(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // The inner buffer still holds the bytes being consumed, so fill_buf returns them
        // without doing I/O.
        if amt > 0 {
            if let Ok(buf) = self.inner.fill_buf() {
                let n = amt.min(buf.len());
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
            }
        }
        self.inner.consume(amt);
    }
}

/// A writer that hashes and counts every byte the inner writer accepted.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash and size of everything written, and the inner writer.
    pub fn finish(self) -> (Hash, u64, W) {
        (Hash(self.hasher.finalize().into()), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // sha256("") in the three forms real Nix prints (`nix hash to-base32` / `to-sri`).
    const EMPTY_NIX32: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_HEX: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_SRI: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn parses_every_nix_spelling() {
        let empty = Hash::digest(b"");
        assert_eq!(empty.to_string(), EMPTY_NIX32);
        assert_eq!(empty.to_sri(), EMPTY_SRI);
        for text in [
            EMPTY_NIX32,
            EMPTY_HEX,
            &EMPTY_HEX.to_uppercase().replace("SHA256", "sha256"),
            EMPTY_SRI,
        ] {
            assert_eq!(text.parse::<Hash>().unwrap(), empty, "{text}");
        }
        let b64 = format!("sha256:{}", &EMPTY_SRI[7..]);
        assert_eq!(b64.parse::<Hash>().unwrap(), empty);
    }

    #[test]
    fn rejects_bad_hashes() {
        let body = &EMPTY_NIX32[7..];
        assert!(matches!(
            body.parse::<Hash>(),
            Err(HashError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            format!("sha512:{body}").parse::<Hash>(),
            Err(HashError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            format!(":{body}").parse::<Hash>(),
            Err(HashError::MissingAlgorithm(_))
        ));
        assert_eq!(
            format!("sha256:{}", &body[1..]).parse::<Hash>(),
            Err(HashError::WrongLength(51))
        );
        assert!(matches!(
            format!("sha256:e{}", &body[1..]).parse::<Hash>(),
            Err(HashError::Base32(_))
        ));
        assert_eq!(
            format!("sha256:g{}", &EMPTY_HEX[8..]).parse::<Hash>(),
            Err(HashError::Hex)
        );
        assert_eq!(
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=".parse::<Hash>(),
            Err(HashError::Base64)
        );
        assert_eq!("sha256-AAAA".parse::<Hash>(), Err(HashError::Base64));
    }

    #[test]
    fn bufread_hashes_only_consumed_bytes() {
        let data = b"0123456789";
        let mut r = HashingReader::new(io::BufReader::with_capacity(4, &data[..]));
        assert_eq!(r.fill_buf().unwrap(), b"0123");
        r.consume(3);
        let mut rest = [0u8; 2];
        r.read_exact(&mut rest).unwrap();
        let (hash, n, _) = r.finish();
        assert_eq!(n, 5);
        assert_eq!(hash, Hash::digest(b"01234"));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 32]>()) {
            let h = Hash::from_bytes(bytes);
            prop_assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
            prop_assert_eq!(h.to_sri().parse::<Hash>().unwrap(), h);
            prop_assert_eq!(format!("sha256:{}", h.to_hex()).parse::<Hash>().unwrap(), h);
        }

        #[test]
        fn adapters_match_one_shot(data in proptest::collection::vec(any::<u8>(), 0..5000), cap in 1usize..64) {
            let mut r = HashingReader::new(io::BufReader::with_capacity(cap, &data[..]));
            let mut copy = HashingWriter::new(Vec::new());
            io::copy(&mut r, &mut copy).unwrap();
            let (rh, rn, _) = r.finish();
            let (wh, wn, out) = copy.finish();
            prop_assert_eq!(rh, Hash::digest(&data));
            prop_assert_eq!(wh, rh);
            prop_assert_eq!((rn, wn), (data.len() as u64, data.len() as u64));
            prop_assert_eq!(out, data);
        }
    }
}
