//! Content-address assertions (`CA:` in narinfos, `ca` in Nix's database), parsed as Nix 2.8's
//! `parseContentAddress` parses them, and checked against restored content as Nix's
//! `LocalStore::addToStore` checks them on import.
//!
//! Accepted forms (anything else is refused, as Nix refuses it):
//! - `text:sha256:<hash>` — a text path (`.drv` files, `builtins.toFile`): only SHA-256;
//! - `fixed:<algo>:<hash>` — a flat fixed-output path: one regular file, its contents hashed;
//! - `fixed:r:<algo>:<hash>` — a recursive fixed-output path: its NAR serialisation hashed.
//!
//! `<algo>` is `md5`, `sha1`, `sha256` or `sha512`; `<hash>` is base16 (either case), nix-base32 or
//! base64, chosen by length as `Hash::parseNonSRIUnprefixed` does. One deliberate difference: base64
//! is decoded strictly (canonical padding and trailing bits), where Nix's decoder skips newlines
//! and stops at the first `=`; no Nix writes such a spelling.
//!
//! What [`ContentAddress::check_nar`] checks, exactly as Nix 2.8 (`hashCAPath`): the hash of the
//! content *modulo self-references* — every occurrence of the path's own hash part replaced by NULs,
//! then `|<offset>` appended per occurrence — equals the asserted hash. For `fixed:r:` the content is
//! the whole NAR; for flat `fixed:` and `text:` it is the contents of the single regular file the NAR
//! must consist of. Without self-references (the normal case) `fixed:r:sha256:H` therefore means
//! NarHash = H.
//!
//! What it does not check: that the store path itself is the one the CA implies
//! (`makeFixedOutputPath`/`makeTextPath` over name and references — what lets Nix accept an unsigned
//! content-addressed path); that a text path has no self-reference or that a flat file is not
//! executable (Nix 2.8 does not check those on import either).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::base32;
use crate::store_path::HASH_PART_LEN;

/// The hash algorithms Nix 2.8's `parseHashType` knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "md5" => HashAlgo::Md5,
            "sha1" => HashAlgo::Sha1,
            "sha256" => HashAlgo::Sha256,
            "sha512" => HashAlgo::Sha512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Parse a hash body without algorithm prefix, the encoding chosen by length as Nix does:
    /// base16 first, then nix-base32, then base64.
    pub fn parse_body(self, body: &str) -> Result<Vec<u8>, CaError> {
        let size = self.size();
        let bad = |why: &'static str| CaError::BadHash {
            algo: self.name(),
            body: body.to_owned(),
            why,
        };
        if body.len() == 2 * size {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(bad("bad base16 digit"));
            return body
                .as_bytes()
                .chunks(2)
                .map(|p| Ok((digit(p[0])? * 16 + digit(p[1])?) as u8))
                .collect();
        }
        if body.len() == base32::encoded_len(size) {
            let mut out = vec![0u8; size];
            base32::decode_into(body, &mut out).map_err(|_| bad("bad nix-base32"))?;
            return Ok(out);
        }
        if body.len() == size.div_ceil(3) * 4 {
            let out = STANDARD.decode(body).map_err(|_| bad("bad base64"))?;
            return if out.len() == size {
                Ok(out)
            } else {
                Err(bad("bad base64"))
            };
        }
        Err(bad("wrong length for base16, nix-base32 or base64"))
    }
}

/// How the asserted hash was computed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CaMethod {
    /// `text:`: the contents of a single file, SHA-256.
    Text,
    /// `fixed:`: the contents of a single regular file.
    Flat,
    /// `fixed:r:`: the NAR serialisation of the path.
    Recursive,
}

/// A parsed content address.
#[derive(Clone, PartialEq, Eq, Debug, Hash)]
pub struct ContentAddress {
    pub method: CaMethod,
    pub algo: HashAlgo,
    pub digest: Vec<u8>,
}

/// Why a content address is malformed or does not match the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("content address {0:?} is not <prefix>:<rest> with prefix 'text' or 'fixed'")]
    BadPrefix(String),
    #[error("content address {0:?} has no <algo>:<hash>")]
    MissingAlgo(String),
    #[error("content address {ca:?}: unknown hash algorithm {algo:?}")]
    UnknownAlgo { ca: String, algo: String },
    #[error("content address {0:?}: a text content address must use sha256")]
    TextNotSha256(String),
    #[error("{algo} hash {body:?}: {why}")]
    BadHash {
        algo: &'static str,
        body: String,
        why: &'static str,
    },
    #[error(
        "content address {ca}: the path is not a single regular file, so it cannot be {method}"
    )]
    NotAFile { ca: String, method: &'static str },
    #[error("content address mismatch: the CA says {expected} but the content hashes to {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("content address check: reading the NAR: {0}")]
    Nar(String),
}

impl ContentAddress {
    /// Parse as Nix 2.8's `parseContentAddress`.
    pub fn parse(ca: &str) -> Result<Self, CaError> {
        let (prefix, rest) = ca
            .split_once(':')
            .ok_or_else(|| CaError::BadPrefix(ca.to_owned()))?;
        let (method, rest) = match prefix {
            "text" => (CaMethod::Text, rest),
            "fixed" => match rest.strip_prefix("r:") {
                Some(rest) => (CaMethod::Recursive, rest),
                None => (CaMethod::Flat, rest),
            },
            _ => return Err(CaError::BadPrefix(ca.to_owned())),
        };
        let (algo, body) = rest
            .split_once(':')
            .ok_or_else(|| CaError::MissingAlgo(ca.to_owned()))?;
        let algo = HashAlgo::parse(algo).ok_or_else(|| CaError::UnknownAlgo {
            ca: ca.to_owned(),
            algo: algo.to_owned(),
        })?;
        if method == CaMethod::Text && algo != HashAlgo::Sha256 {
            return Err(CaError::TextNotSha256(ca.to_owned()));
        }
        let digest = algo.parse_body(body)?;
        Ok(ContentAddress {
            method,
            algo,
            digest,
        })
    }

    /// Check the content of a restored path, given as its NAR, against this content address.
    /// `self_hash_part` is the path's own 32-character hash part (see the module docs).
    pub fn check_nar(&self, self_hash_part: &str, mut nar: impl Read) -> Result<(), CaError> {
        let mut verifier = self.verifier(self_hash_part);
        std::io::copy(&mut nar, &mut verifier).map_err(|e| CaError::Nar(e.to_string()))?;
        verifier.finish()
    }

    /// A writer to pass the restored NAR through (e.g. as restore's NAR output, or teed beside
    /// it), whose [`CaVerifier::finish`] says whether the content matches; nothing is buffered
    /// beyond a flat NAR's 128-byte header.
    pub fn verifier(&self, self_hash_part: &str) -> CaVerifier {
        CaVerifier {
            ca: self.clone(),
            hasher: ModuloHasher::new(self.algo, self_hash_part),
            state: match self.method {
                CaMethod::Recursive => Flat::Recursive,
                CaMethod::Flat | CaMethod::Text => Flat::Header(Vec::new()),
            },
        }
    }

    fn with_digest(&self, digest: Vec<u8>) -> Self {
        ContentAddress {
            digest,
            ..self.clone()
        }
    }
}

/// Checks a NAR streamed through it against a content address (see [`ContentAddress::verifier`]).
/// Writes never fail; a NAR that is not what the method needs is reported by `finish`.
pub struct CaVerifier {
    ca: ContentAddress,
    hasher: ModuloHasher,
    state: Flat,
}

/// Where a flat (single-file) NAR stream is; the whole NAR is hashed for `fixed:r:`.
enum Flat {
    Recursive,
    /// Collecting the header up to and including the contents length.
    Header(Vec<u8>),
    /// `left` content bytes to hash, then `padding` zero bytes and `)`.
    Contents {
        left: u64,
        padding: usize,
    },
    Trailer {
        expected: Vec<u8>,
        got: Vec<u8>,
    },
    /// Not a NAR of one regular file.
    NotAFile,
}

/// A NAR string: length (u64 le), bytes, zero padding to 8.
fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

/// The header of a one-file NAR before the contents length, without and with `executable`.
fn flat_headers() -> (Vec<u8>, Vec<u8>) {
    let mut start = Vec::new();
    for s in ["nix-archive-1", "(", "type", "regular"] {
        nar_str(&mut start, s.as_bytes());
    }
    let mut plain = start.clone();
    nar_str(&mut plain, b"contents");
    let mut exec = start;
    nar_str(&mut exec, b"executable");
    nar_str(&mut exec, b"");
    nar_str(&mut exec, b"contents");
    (plain, exec)
}

impl std::io::Write for CaVerifier {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            match &mut self.state {
                Flat::Recursive => {
                    self.hasher.update(buf);
                    buf = &[];
                }
                Flat::NotAFile => buf = &[],
                Flat::Header(h) => {
                    // The header is `plain` or `exec` (they differ from byte 64 on), then the
                    // 8-byte contents length. Take no byte past it: the contents follow.
                    let (plain, exec) = flat_headers();
                    let is_prefix = |p: &[u8]| {
                        let k = h.len().min(p.len());
                        h[..k] == p[..k]
                    };
                    let full = if is_prefix(&plain) {
                        plain.len()
                    } else if is_prefix(&exec) {
                        exec.len()
                    } else {
                        self.state = Flat::NotAFile;
                        continue;
                    };
                    if h.len() == full + 8 {
                        let left = u64::from_le_bytes(h[full..].try_into().expect("8 bytes"));
                        self.state = Flat::Contents {
                            left,
                            padding: ((8 - left % 8) % 8) as usize,
                        };
                        continue;
                    }
                    let take = (full + 8 - h.len()).min(buf.len());
                    h.extend_from_slice(&buf[..take]);
                    buf = &buf[take..];
                }
                Flat::Contents { left, padding } => {
                    let take = (*left).min(buf.len() as u64) as usize;
                    self.hasher.update(&buf[..take]);
                    *left -= take as u64;
                    buf = &buf[take..];
                    if *left == 0 {
                        // The contents' padding, then the closing `)` string.
                        let mut expected = vec![0u8; *padding];
                        let mut close = Vec::new();
                        nar_str(&mut close, b")");
                        expected.extend(close);
                        self.state = Flat::Trailer {
                            expected,
                            got: Vec::new(),
                        };
                    }
                }
                Flat::Trailer { expected, got } => {
                    if got.len() + buf.len() > expected.len() {
                        self.state = Flat::NotAFile;
                    } else {
                        got.extend_from_slice(buf);
                        buf = &[];
                    }
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CaVerifier {
    /// Whether the NAR written was content the content address describes.
    pub fn finish(self) -> Result<(), CaError> {
        let complete = match &self.state {
            Flat::Recursive => true,
            Flat::Trailer { expected, got } => expected == got,
            _ => false,
        };
        if !complete {
            return Err(CaError::NotAFile {
                ca: self.ca.to_string(),
                method: if self.ca.method == CaMethod::Text {
                    "text"
                } else {
                    "flat"
                },
            });
        }
        let actual = self.hasher.finish();
        if actual != self.ca.digest {
            return Err(CaError::Mismatch {
                expected: self.ca.to_string(),
                actual: self.ca.with_digest(actual).to_string(),
            });
        }
        Ok(())
    }
}

impl FromStr for ContentAddress {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        ContentAddress::parse(s)
    }
}

/// Nix's canonical spelling: nix-base32 body.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.method {
            CaMethod::Text => "text:",
            CaMethod::Flat => "fixed:",
            CaMethod::Recursive => "fixed:r:",
        };
        write!(
            f,
            "{prefix}{}:{}",
            self.algo.name(),
            base32::encode(&self.digest)
        )
    }
}

enum AnyHasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl AnyHasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            AnyHasher::Md5(h) => h.update(data),
            AnyHasher::Sha1(h) => h.update(data),
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            AnyHasher::Md5(h) => h.finalize().to_vec(),
            AnyHasher::Sha1(h) => h.finalize().to_vec(),
            AnyHasher::Sha256(h) => h.finalize().to_vec(),
            AnyHasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// Nix's `HashModuloSink`: hashes a stream with every occurrence of `modulus` (the path's hash part)
/// replaced by as many NULs, then `|<offset>` for each occurrence, in order. Streaming like Nix's
/// `RewritingSink`: the last 31 bytes are held back so an occurrence across two writes is found.
pub struct ModuloHasher {
    hasher: AnyHasher,
    finder: memchr::memmem::Finder<'static>,
    carry: Vec<u8>,
    /// Bytes passed to the hasher so far (offset of `carry` in the stream).
    pos: u64,
    matches: Vec<u64>,
}

impl ModuloHasher {
    pub fn new(algo: HashAlgo, modulus: &str) -> Self {
        let hasher = match algo {
            HashAlgo::Md5 => AnyHasher::Md5(Md5::new()),
            HashAlgo::Sha1 => AnyHasher::Sha1(Sha1::new()),
            HashAlgo::Sha256 => AnyHasher::Sha256(Sha256::new()),
            HashAlgo::Sha512 => AnyHasher::Sha512(Sha512::new()),
        };
        ModuloHasher {
            hasher,
            finder: memchr::memmem::Finder::new(modulus.as_bytes()).into_owned(),
            carry: Vec::new(),
            pos: 0,
            matches: Vec::new(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let needle_len = self.finder.needle().len();
        if needle_len == 0 {
            self.hasher.update(data);
            self.pos += data.len() as u64;
            return;
        }
        self.carry.extend_from_slice(data);
        let s = &mut self.carry;
        let mut j = 0;
        while let Some(i) = self.finder.find(&s[j..]) {
            let at = j + i;
            self.matches.push(self.pos + at as u64);
            s[at..at + needle_len].fill(0);
            j = at + needle_len;
        }
        // Hold back what could still be the start of an occurrence.
        let keep = s.len().min(needle_len - 1);
        let consumed = s.len() - keep;
        self.hasher.update(&s[..consumed]);
        self.pos += consumed as u64;
        s.drain(..consumed);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.hasher.update(&self.carry);
        for m in &self.matches {
            self.hasher.update(format!("|{m}").as_bytes());
        }
        self.hasher.finish()
    }
}

// The hash part is what `ModuloHasher` is given; keep the lengths tied together.
const _: () = assert!(HASH_PART_LEN == 32);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A NAR holding one regular file, as `nix-store --dump` writes it.
    fn file_nar(contents: &[u8], executable: bool) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
            out.resize(out.len().div_ceil(8) * 8, 0);
        }
        let mut out = Vec::new();
        for t in ["nix-archive-1", "(", "type", "regular"] {
            s(&mut out, t.as_bytes());
        }
        if executable {
            s(&mut out, b"executable");
            s(&mut out, b"");
        }
        s(&mut out, b"contents");
        s(&mut out, contents);
        s(&mut out, b")");
        out
    }

    const SELF: &str = "dil2h9darmil79ydspmv2cfwxlnfi03z";

    #[test]
    fn parse_table() {
        let sha256_hex = "a".repeat(64);
        let sha256_nix32 = "0".repeat(52);
        let sha256_b64 = STANDARD.encode([7u8; 32]);
        let cases: Vec<(String, Option<(CaMethod, HashAlgo)>)> = vec![
            (
                format!("fixed:r:sha256:{sha256_nix32}"),
                Some((CaMethod::Recursive, HashAlgo::Sha256)),
            ),
            (
                format!("fixed:sha256:{sha256_hex}"),
                Some((CaMethod::Flat, HashAlgo::Sha256)),
            ),
            (
                format!("fixed:sha256:{}", sha256_hex.to_uppercase()),
                Some((CaMethod::Flat, HashAlgo::Sha256)),
            ),
            (
                format!("text:sha256:{sha256_b64}"),
                Some((CaMethod::Text, HashAlgo::Sha256)),
            ),
            (
                format!("fixed:md5:{}", "0".repeat(26)),
                Some((CaMethod::Flat, HashAlgo::Md5)),
            ),
            (
                format!("fixed:r:sha1:{}", "f".repeat(40)),
                Some((CaMethod::Recursive, HashAlgo::Sha1)),
            ),
            (
                format!("fixed:r:sha1:{}", "0".repeat(32)),
                Some((CaMethod::Recursive, HashAlgo::Sha1)),
            ),
            (
                format!("fixed:sha512:{}", "0".repeat(103)),
                Some((CaMethod::Flat, HashAlgo::Sha512)),
            ),
            (
                format!("fixed:sha512:{}", STANDARD.encode([1u8; 64])),
                Some((CaMethod::Flat, HashAlgo::Sha512)),
            ),
            ("garbage".into(), None),
            ("".into(), None),
            (format!("text:sha1:{}", "f".repeat(40)), None),
            (format!("text:r:sha256:{sha256_nix32}"), None),
            (format!("fixed:r:sha257:{sha256_nix32}"), None),
            (format!("fixed:r:{sha256_nix32}"), None),
            (format!("fixed:sha256-{sha256_b64}"), None),
            (format!("sha256:{sha256_nix32}"), None),
            (format!("fixed:r:sha256:{}", &sha256_nix32[1..]), None),
            (format!("fixed:r:sha256:{}e", &sha256_nix32[1..]), None),
            // nix-base32 with bits beyond 256: Nix refuses it as invalid.
            (format!("fixed:r:sha256:z{}", &sha256_nix32[1..]), None),
            (format!("fixed:sha256:{}g", &sha256_hex[1..]), None),
            (format!("fixed:sha256:{}", STANDARD.encode([7u8; 31])), None),
            (format!("fixed:r:sha256:{sha256_nix32}\n"), None),
            (format!("FIXED:r:sha256:{sha256_nix32}"), None),
        ];
        for (ca, want) in cases {
            let got = ContentAddress::parse(&ca).map(|c| (c.method, c.algo));
            assert_eq!(got.ok(), want, "{ca:?}");
        }
        // Canonical spelling round-trips.
        let ca = ContentAddress::parse(&format!("fixed:sha256:{sha256_hex}")).unwrap();
        assert_eq!(ContentAddress::parse(&ca.to_string()).unwrap(), ca);
        assert_eq!(ca.digest, vec![0xaa; 32]);
    }

    #[test]
    fn recursive_sha256_is_the_nar_hash_without_self_references() {
        let nar = file_nar(b"hello\n", false);
        let nar_hash = Sha256::digest(&nar);
        let ca = ContentAddress::parse(&format!("fixed:r:sha256:{}", base32::encode(&nar_hash)))
            .unwrap();
        ca.check_nar(SELF, &nar[..]).unwrap();
        let other = file_nar(b"hellp\n", false);
        assert!(matches!(
            ca.check_nar(SELF, &other[..]),
            Err(CaError::Mismatch { .. })
        ));
    }

    #[test]
    fn flat_and_text_hash_the_single_file() {
        let contents = b"Derive([...])";
        let nar = file_nar(contents, false);
        for prefix in ["fixed:sha256", "text:sha256"] {
            let ca = ContentAddress::parse(&format!(
                "{prefix}:{}",
                base32::encode(&Sha256::digest(contents))
            ))
            .unwrap();
            ca.check_nar(SELF, &nar[..]).unwrap();
            // The NAR hash is not the flat hash.
            let wrong = ContentAddress::parse(&format!(
                "{prefix}:{}",
                base32::encode(&Sha256::digest(&nar))
            ))
            .unwrap();
            assert!(matches!(
                wrong.check_nar(SELF, &nar[..]),
                Err(CaError::Mismatch { .. })
            ));
        }
        // md5/sha1/sha512 flat hashes.
        for (algo, digest) in [
            ("md5", Md5::digest(contents).to_vec()),
            ("sha1", Sha1::digest(contents).to_vec()),
            ("sha512", Sha512::digest(contents).to_vec()),
        ] {
            let ca = ContentAddress::parse(&format!("fixed:{algo}:{}", base32::encode(&digest)))
                .unwrap();
            ca.check_nar(SELF, &nar[..]).unwrap();
        }
        // A directory cannot be flat.
        let ca = ContentAddress::parse(&format!("fixed:sha256:{}", "0".repeat(52))).unwrap();
        let mut dir = Vec::new();
        for t in ["nix-archive-1", "(", "type", "directory", ")"] {
            dir.extend_from_slice(&(t.len() as u64).to_le_bytes());
            dir.extend_from_slice(t.as_bytes());
            dir.resize(dir.len().div_ceil(8) * 8, 0);
        }
        assert!(matches!(
            ca.check_nar(SELF, &dir[..]),
            Err(CaError::NotAFile { .. })
        ));
    }

    /// Self-references are hashed as NULs plus `|offset` markers, as Nix's HashModuloSink does.
    #[test]
    fn self_references_hash_modulo() {
        let contents = format!("x{SELF}yy{SELF}");
        let nar = file_nar(contents.as_bytes(), false);
        let mut expected = Sha256::new();
        expected.update(format!("x{}yy{}", "\0".repeat(32), "\0".repeat(32)));
        expected.update("|1|35");
        let ca = ContentAddress::parse(&format!(
            "fixed:sha256:{}",
            base32::encode(&expected.finalize())
        ))
        .unwrap();
        ca.check_nar(SELF, &nar[..]).unwrap();
        let plain = ContentAddress::parse(&format!(
            "fixed:sha256:{}",
            base32::encode(&Sha256::digest(contents.as_bytes()))
        ))
        .unwrap();
        assert!(plain.check_nar(SELF, &nar[..]).is_err());
    }

    /// The streaming verifier gives the same answer however the NAR is split, refuses truncated
    /// or extended NARs, and reads an executable file's header too.
    #[test]
    fn verifier_is_split_independent_and_strict() {
        use std::io::Write;
        for (contents, executable) in [
            (&b""[..], false),
            (b"x", true),
            (b"12345678", false),
            (b"hello, world\n", true),
        ] {
            let nar = file_nar(contents, executable);
            let flat = ContentAddress::parse(&format!(
                "fixed:sha256:{}",
                base32::encode(&Sha256::digest(contents))
            ))
            .unwrap();
            let rec = ContentAddress::parse(&format!(
                "fixed:r:sha256:{}",
                base32::encode(&Sha256::digest(&nar))
            ))
            .unwrap();
            for ca in [&flat, &rec] {
                for step in [1, 3, 7, 8, 64, nar.len()] {
                    let mut v = ca.verifier(SELF);
                    for chunk in nar.chunks(step) {
                        v.write_all(chunk).unwrap();
                    }
                    v.finish()
                        .unwrap_or_else(|e| panic!("{ca} step {step}: {e}"));
                }
            }
            // Truncated anywhere, or followed by anything: not one complete file.
            for cut in [0, 8, 72, 95, nar.len() - 16, nar.len() - 1] {
                assert!(flat.check_nar(SELF, &nar[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = nar.clone();
            longer.extend_from_slice(&[0; 8]);
            assert!(matches!(
                flat.check_nar(SELF, &longer[..]),
                Err(CaError::NotAFile { .. })
            ));
        }
    }

    fn modulo_whole(data: &[u8], modulus: &str) -> Vec<u8> {
        let mut h = ModuloHasher::new(HashAlgo::Sha256, modulus);
        h.update(data);
        h.finish()
    }

    proptest! {
        /// However the stream is split, the modulo hash is the same (occurrences across writes found).
        #[test]
        fn modulo_hash_independent_of_splits(
            parts in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    Just(SELF.as_bytes().to_vec()),
                    Just(SELF.as_bytes()[..20].to_vec()),
                    Just(SELF.as_bytes()[20..].to_vec()),
                ],
                0..12),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let data = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut h = ModuloHasher::new(HashAlgo::Sha256, SELF);
            let mut prev = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[prev..c]);
                prev = c;
            }
            prop_assert_eq!(h.finish(), modulo_whole(&data, SELF));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,140}") {
            let _ = ContentAddress::parse(&s);
        }

        #[test]
        fn canonical_round_trip(digest in proptest::collection::vec(any::<u8>(), 32), r in any::<bool>()) {
            let ca = ContentAddress { method: if r { CaMethod::Recursive } else { CaMethod::Flat }, algo: HashAlgo::Sha256, digest };
            prop_assert_eq!(ContentAddress::parse(&ca.to_string()).unwrap(), ca);
        }
    }
}
