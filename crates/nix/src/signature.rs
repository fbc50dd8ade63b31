//! Binary-cache signatures: Ed25519 over a narinfo's fingerprint, with Nix's key file formats.
//!
//! A signature does not cover the narinfo text. It covers the *fingerprint*
//! `1;<store path>;<NarHash as sha256:nix32>;<NarSize>;<references as full paths, sorted, joined by ','>`,
//! so `URL`, `Compression`, `FileHash`, `FileSize`, `Deriver` and `CA` may change (recompression!)
//! without invalidating it, while the NAR's hash and size and the reference set may not.
//!
//! Keys are written as `<name>:<base64>`: 32 raw bytes for a public key, and for a secret key the 64
//! bytes libsodium uses (the 32-byte seed followed by the public key), which is what
//! `nix-store --generate-binary-cache-key NAME SECRET PUBLIC` writes. A `Sig` line is
//! `<key name>:<base64 of 64 signature bytes>`; verification looks the key up by that name, as Nix
//! does, so a signature only counts if a *trusted* key with the same name verifies it. Ed25519
//! signing is deterministic, so our signatures equal Nix's byte for byte.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::hash::Hash;
use crate::narinfo::NarInfo;
use crate::store_path::{StoreDir, StorePath};

/// Why a key string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0:?} is not of the form <name>:<base64>")]
    MissingColon(String),
    #[error("key has an empty name")]
    EmptyName,
    #[error("key {name:?}: bad base64")]
    Base64 { name: String },
    #[error("key {name:?}: {got} bytes, expected {expected} ({what})")]
    WrongLength {
        name: String,
        got: usize,
        expected: usize,
        what: &'static str,
    },
    #[error("secret key {name:?}: its public half does not match its seed (corrupt key file)")]
    Inconsistent { name: String },
    #[error("public key {name:?} is not a valid Ed25519 point")]
    BadPoint { name: String },
}

/// Why a narinfo is not validly signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no Sig lines: the narinfo is unsigned")]
    Unsigned,
    #[error("no signature is by a trusted key; signed by {}", .signers.join(", "))]
    Untrusted { signers: Vec<String> },
    #[error("signature by trusted key {} does not match this narinfo (fingerprint {fingerprint})", .key_names.join(", "))]
    Invalid {
        key_names: Vec<String>,
        fingerprint: String,
    },
}

fn split_key(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = text
        .split_once(':')
        .ok_or_else(|| KeyError::MissingColon(text.to_owned()))?;
    if name.is_empty() {
        return Err(KeyError::EmptyName);
    }
    let bytes = STANDARD.decode(b64).map_err(|_| KeyError::Base64 {
        name: name.to_owned(),
    })?;
    Ok((name, bytes))
}

/// A named Ed25519 public key, as in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parse a `trusted-public-keys` value: keys separated by whitespace.
    pub fn parse_list(text: &str) -> Result<Vec<PublicKey>, KeyError> {
        text.split_whitespace().map(str::parse).collect()
    }

    /// True when `sig` (`<name>:<base64>`) is by this key's name and verifies `fingerprint`.
    /// Uses strict verification (rejects small-order points and non-canonical encodings), as
    /// libsodium does.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = STANDARD.decode(b64) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key
            .verify_strict(fingerprint.as_bytes(), &signature)
            .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// `<name>:<base64 of 32 bytes>`, surrounding whitespace ignored (key files end in nothing or a
    /// newline depending on who wrote them).
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(text.trim())?;
        let got = bytes.len();
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::WrongLength {
            name: name.to_owned(),
            got,
            expected: 32,
            what: "an Ed25519 public key",
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPoint {
            name: name.to_owned(),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

/// `<name>:<base64>`, the form `nix-store --generate-binary-cache-key` writes.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

/// A named Ed25519 signing key. Its `Debug` output hides the key material.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, under the same name.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Sign arbitrary data: `<name>:<base64 signature>`, Nix's `signDetached`.
    pub fn sign_detached(&self, data: &[u8]) -> String {
        format!(
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.sign(data).to_bytes())
        )
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;

    /// `<name>:<base64 of 64 bytes>` (seed then public key), surrounding whitespace ignored.
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(text.trim())?;
        let got = bytes.len();
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| KeyError::WrongLength {
            name: name.to_owned(),
            got,
            expected: 64,
            what: "a libsodium Ed25519 secret key (seed + public key)",
        })?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Inconsistent {
            name: name.to_owned(),
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
}

/// Why a secret key file cannot be used for signing.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading secret key file {path}: {error} (make a key pair with `nix-store --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE`)")]
    Io { path: String, error: std::io::Error },
    #[error("{path} holds a public key; signing needs the secret key file (the first file `nix-store --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE` wrote)")]
    PublicKey { path: String },
    #[error("{path} is not a secret key file as `nix-store --generate-binary-cache-key` writes it: {error}")]
    Key { path: String, error: KeyError },
}

impl SecretKey {
    /// Read a secret key file as `nix-store --generate-binary-cache-key NAME SECRET PUBLIC` writes
    /// it (`<name>:<base64 of 64 bytes>`, with or without a final newline). A public key file given
    /// by mistake gets its own error.
    pub fn read_file(path: &std::path::Path) -> Result<SecretKey, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Io {
            path: shown.clone(),
            error,
        })?;
        text.parse().map_err(|error| match error {
            KeyError::WrongLength { got: 32, .. } => KeyFileError::PublicKey { path: shown },
            error => KeyFileError::Key { path: shown, error },
        })
    }
}

/// `<name>:<base64>`, the secret key file format. Deliberately the only way to print the key.
impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The string Nix signs for a store path (`ValidPathInfo::fingerprint`, version 1).
///
/// References are sorted and deduplicated because Nix holds them in a set, whatever order the
/// narinfo listed them in.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let mut refs: Vec<&StorePath> = references.into_iter().collect();
    refs.sort();
    refs.dedup();
    let refs: Vec<String> = refs
        .into_iter()
        .map(|r| store_dir.display_path(r))
        .collect();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        store_dir.display_path(path),
        refs.join(",")
    )
}

/// The `Sig` value `key` gives `narinfo` (add it with [`NarInfo::add_sig`]).
pub fn sign(narinfo: &NarInfo, key: &SecretKey) -> String {
    key.sign_detached(narinfo.fingerprint().as_bytes())
}

/// Add `key`'s signature to `narinfo` unless it already carries it; the other `Sig` lines stay.
/// Returns whether a signature was added.
pub fn add_signature(narinfo: &mut NarInfo, key: &SecretKey) -> bool {
    let sig = sign(narinfo, key);
    if narinfo.sigs.contains(&sig) {
        return false;
    }
    narinfo.add_sig(sig);
    true
}

/// True when `narinfo` carries a valid signature by `key`.
pub fn is_signed_by(narinfo: &NarInfo, key: &PublicKey) -> bool {
    let fingerprint = narinfo.fingerprint();
    narinfo.sigs.iter().any(|sig| key.verify(&fingerprint, sig))
}

/// Check that at least one `Sig` of `narinfo` is by a key in `trusted` (matched by name) and
/// verifies; returns the first trusted key that does.
pub fn verify<'k>(
    narinfo: &NarInfo,
    trusted: &'k [PublicKey],
) -> Result<&'k PublicKey, VerifyError> {
    if narinfo.sigs.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    let fingerprint = narinfo.fingerprint();
    let mut failed = Vec::new();
    for sig in &narinfo.sigs {
        let name = sig.split_once(':').map_or(sig.as_str(), |(name, _)| name);
        let mut candidates = trusted.iter().filter(|key| key.name == name).peekable();
        if candidates.peek().is_none() {
            continue;
        }
        if let Some(key) = candidates.find(|key| key.verify(&fingerprint, sig)) {
            return Ok(key);
        }
        failed.push(name.to_owned());
    }
    if failed.is_empty() {
        let signers = narinfo
            .sigs
            .iter()
            .map(|s| s.split_once(':').map_or(s.as_str(), |(n, _)| n).to_owned());
        return Err(VerifyError::Untrusted {
            signers: signers.collect(),
        });
    }
    Err(VerifyError::Invalid {
        key_names: failed,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair from `nix-store --generate-binary-cache-key test1 sec pub` (Nix 2.8) and the
    // narinfo `nix store sign --key-file sec` + `nix copy` wrote with it.
    const SECRET: &str =
        "test1:s+SMIV1qZ+o9LUTYtTaLaq8T73UPAZdooc2+w28LZFtr9HJ85tnA4Zz7NvVTg93uKyUtP96oBl1MpC1ebt9V9g==";
    const PUBLIC: &str = "test1:a/RyfObZwOGc+zb1U4Pd7islLT/eqAZdTKQtXm7fVfY=";
    const NARINFO: &str = "\
StorePath: /nix/store/bxs7ymj185m74jprwsmw27q00c6dgj3v-refstrip-b
URL: nar/0x4kjsf94gsgcwvksvzrhmajyfdh19alxn06zvkxbv8ai648lz16.nar.zst
Compression: zstd
FileHash: sha256:0x4kjsf94gsgcwvksvzrhmajyfdh19alxn06zvkxbv8ai648lz16
FileSize: 130
NarHash: sha256:079kcs71qrzamyyx8zvpbs7jzz510mj47dr27qlqly3fb0iby6cl
NarSize: 168
References: dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a
Deriver: kamsxl53k1xsvrzp66i2aiwjzlfl6v61-refstrip-b.drv
Sig: test1:s6U2gyWcy0pqaWiVqUlDTC5xQguJr+HEIS8a0Jdh4YLOi9kE2dRy03ussTmhjbTIe8nQ2tBiUptDQk9oUb7iAA==
";

    fn info() -> NarInfo {
        NarInfo::parse(&StoreDir::default(), NARINFO).unwrap()
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(
            info().fingerprint(),
            "1;/nix/store/bxs7ymj185m74jprwsmw27q00c6dgj3v-refstrip-b;\
             sha256:079kcs71qrzamyyx8zvpbs7jzz510mj47dr27qlqly3fb0iby6cl;168;\
             /nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a"
        );
        let mut reordered = info();
        let b: StorePath = "00000000000000000000000000000000-z".parse().unwrap();
        reordered.references = vec![reordered.references[0].clone(), b.clone(), b];
        assert!(reordered.fingerprint().ends_with(
            ";/nix/store/00000000000000000000000000000000-z,/nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a"
        ));
    }

    #[test]
    fn keys_round_trip_and_match() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let public: PublicKey = PUBLIC.parse().unwrap();
        assert_eq!(secret.to_string(), SECRET);
        assert_eq!(public.to_string(), PUBLIC);
        assert_eq!(secret.public_key(), public);
        assert!(!format!("{secret:?}").contains(&SECRET[6..20]));
        assert_eq!(
            PublicKey::parse_list(&format!(
                "  {PUBLIC}\n cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= "
            ))
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn same_signature_as_nix_and_verifies() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let public: PublicKey = PUBLIC.parse().unwrap();
        let info = info();
        assert_eq!(sign(&info, &secret), info.sigs[0]);
        assert_eq!(
            verify(&info, std::slice::from_ref(&public)).unwrap().name(),
            "test1"
        );
    }

    #[test]
    fn tampering_fails() {
        let public: Vec<PublicKey> = vec![PUBLIC.parse().unwrap()];
        let mut i = info();
        i.nar_size += 1;
        assert!(matches!(
            verify(&i, &public),
            Err(VerifyError::Invalid { .. })
        ));
        let mut i = info();
        i.references.clear();
        assert!(matches!(
            verify(&i, &public),
            Err(VerifyError::Invalid { .. })
        ));
        let mut i = info();
        i.sigs[0] = i.sigs[0].replace("s6U2", "s6U3");
        assert!(matches!(
            verify(&i, &public),
            Err(VerifyError::Invalid { .. })
        ));
        let mut i = info();
        i.sigs[0] = i.sigs[0].replace("test1:", "test2:");
        assert_eq!(
            verify(&i, &public),
            Err(VerifyError::Untrusted {
                signers: vec!["test2".into()]
            })
        );
        let mut i = info();
        i.sigs.clear();
        assert_eq!(verify(&i, &public), Err(VerifyError::Unsigned));
        // Fields outside the fingerprint may change freely.
        let mut i = info();
        i.url = "nar/other.nar.xz".into();
        i.compression = Some("xz".into());
        i.file_hash = None;
        assert!(verify(&i, &public).is_ok());
        // A second, bad signature does not spoil a good one.
        let mut i = info();
        i.add_sig("test1:AAAA".into());
        assert!(verify(&i, &public).is_ok());
    }

    #[test]
    fn adding_a_signature_keeps_the_others_and_is_idempotent() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let other: SecretKey = "other-1:eiDXXbzXZlFSQEbTUaEk2yPT0ZPWfFhs0EwhgZg3fgnrBQU3IUUzg6W88O2GdXDt1W2xdoWaheigiOe/bAZ/uw=="
            .parse()
            .unwrap();
        let mut i = info();
        i.sigs.clear();
        assert!(!is_signed_by(&i, &secret.public_key()));
        assert!(add_signature(&mut i, &other));
        assert!(add_signature(&mut i, &secret));
        assert!(!add_signature(&mut i, &secret), "the same signature twice");
        assert_eq!(i.sigs.len(), 2);
        assert!(is_signed_by(&i, &secret.public_key()));
        assert!(is_signed_by(&i, &other.public_key()));
        // Ed25519 is deterministic: the signature Nix made with this key, byte for byte.
        assert!(i.sigs.contains(&info().sigs[0]));
        i.nar_size += 1;
        assert!(!is_signed_by(&i, &secret.public_key()));
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("refstrip-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (sec, public) = (dir.join("sec"), dir.join("pub"));
        std::fs::write(&sec, SECRET).unwrap();
        std::fs::write(&public, format!("{PUBLIC}\n")).unwrap();
        assert_eq!(SecretKey::read_file(&sec).unwrap().to_string(), SECRET);
        let e = SecretKey::read_file(&public).unwrap_err();
        assert!(matches!(e, KeyFileError::PublicKey { .. }), "{e}");
        assert!(e.to_string().contains("secret key file"), "{e}");
        let e = SecretKey::read_file(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().contains("--generate-binary-cache-key"), "{e}");
        std::fs::write(&sec, "nonsense").unwrap();
        assert!(matches!(
            SecretKey::read_file(&sec),
            Err(KeyFileError::Key { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_errors() {
        assert!(matches!(
            "nocolon".parse::<PublicKey>(),
            Err(KeyError::MissingColon(_))
        ));
        assert_eq!(":abc=".parse::<PublicKey>(), Err(KeyError::EmptyName));
        assert!(matches!(
            "k:!!".parse::<PublicKey>(),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            SECRET.parse::<PublicKey>(),
            Err(KeyError::WrongLength { got: 64, .. })
        ));
        assert!(matches!(
            PUBLIC.parse::<SecretKey>(),
            Err(KeyError::WrongLength { got: 32, .. })
        ));
        // Flip a bit in the public half of the secret key: seed and public key disagree.
        let mut bytes = STANDARD.decode(&SECRET[6..]).unwrap();
        bytes[40] ^= 1;
        let corrupt = format!("test1:{}", STANDARD.encode(bytes));
        assert!(matches!(
            corrupt.parse::<SecretKey>(),
            Err(KeyError::Inconsistent { .. })
        ));
    }
}
