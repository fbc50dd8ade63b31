//! Store directories and store paths: `<store dir>/<32-char nix32 hash>-<name>`.
//!
//! Validation follows Nix's `StorePath` constructor and `checkName`: the hash part is 32 characters
//! of the nix32 alphabet (a 20-byte digest), and the name is 1 to 211 characters from
//! `[0-9A-Za-z+-._?=]`, whose first dash-separated component is not `.` or `..` (the rule Nix added
//! in 2.20; Nix 2.8 accepted such names, but no real path has one and every later Nix refuses them).
//! It is deliberately stricter than Nix in two places, both so that text and value correspond one to
//! one: the 33rd character must be `-` (Nix 2.8 never looks at it), and a full path must be exactly
//! `<store dir>/<base name>` (Nix canonicalises `//`, `.` and `..` first).
//!
//! [`check_base_name`] is the one check every decoder of untrusted basenames (narinfos, manifests,
//! records) goes through; a basename it accepts is a single, harmless path component.
//!
//! The store directory is a value, not a constant: Guix uses `/gnu/store` with the same path format.

use std::fmt;
use std::str::FromStr;

use crate::base32;

/// Characters in a store path's hash part.
pub const HASH_PART_LEN: usize = 32;
/// Bytes in the digest the hash part encodes.
pub const DIGEST_LEN: usize = 20;
/// Longest name Nix 2.8 accepts, in bytes.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path or store directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("{path:?} is not directly inside the store directory {store_dir}")]
    NotInStore { path: String, store_dir: String },
    #[error("{0:?} is too short to be a store path base name (<32-char hash>-<name>)")]
    TooShort(String),
    #[error("store path {path:?} has illegal nix-base32 character {:?} in its hash part", char::from(*byte))]
    BadHashChar { path: String, byte: u8 },
    #[error("store path {0:?} has no '-' between its hash part and its name")]
    MissingDash(String),
    #[error("store path {0:?} has an empty name")]
    EmptyName(String),
    #[error("store path {path:?} has a name of {len} bytes, longer than 211")]
    NameTooLong { path: String, len: usize },
    #[error("store path {path:?} contains illegal character {ch:?} in its name")]
    BadNameChar { path: String, ch: char },
    #[error("store path {path:?} has an invalid name: its first dash-separated component is {component:?}")]
    DotName {
        path: String,
        component: &'static str,
    },
    #[error("deriver {0:?} is not a derivation (its name does not end in .drv)")]
    NotADerivation(String),
    #[error("invalid store directory {dir:?}: {reason}")]
    BadStoreDir { dir: String, reason: &'static str },
}

/// True when `bytes` is exactly a store-path hash part: 32 characters of the nix32 alphabet.
///
/// Every such string decodes to a 20-byte digest (32 × 5 = 160 bits, no overflow possible).
pub fn is_hash_part(bytes: &[u8]) -> bool {
    bytes.len() == HASH_PART_LEN && bytes.iter().all(|&b| base32::is_base32_char(b))
}

/// True for the characters Nix allows in a store path name.
pub const fn is_name_char(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// The name of a store path (`/nix/store/<hash>-<name>` → `<name>`), as [`package_of`] takes it.
pub fn name_of(store_path: &str) -> &str {
    let base = store_path.rsplit('/').next().unwrap_or(store_path);
    base.get(HASH_PART_LEN + 1..).unwrap_or("")
}

/// The package a store path name belongs to (retention's `--keep-newest`, ingest's and savings'
/// delta predecessors): the name without its version,
/// split as Nix's `DrvName` does (at the first `-` not followed by a letter), plus the output when
/// the version ends in one (`hello-2.12-man` → `hello`, `man`): a path's outputs are counted
/// separately, so that keeping the newest `hello` does not drop its newest manual.
pub fn package_of(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    let split = (0..bytes.len())
        .find(|&i| bytes[i] == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()));
    let Some(i) = split else {
        return (name, "");
    };
    let version = &name[i + 1..];
    let output = match version.rsplit_once('-') {
        Some((_, last)) if !last.is_empty() && last.bytes().all(|c| c.is_ascii_lowercase()) => last,
        _ => "",
    };
    (&name[..i], output)
}

/// Check a store-path name (the part after `<hash>-`) the way Nix 2.8 does.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    validate_name_in(name, name)
}

fn validate_name_in(name: &str, path: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(path.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong {
            path: path.to_owned(),
            len: name.len(),
        });
    }
    // Nix's checkName: the first dash-separated component must not be `.` or `..`.
    for component in [".", ".."] {
        let rest = name.strip_prefix(component);
        if rest.is_some_and(|r| r.is_empty() || r.starts_with('-')) {
            return Err(StorePathError::DotName {
                path: path.to_owned(),
                component,
            });
        }
    }
    if let Some(ch) = name
        .chars()
        .find(|&c| !c.is_ascii() || !is_name_char(c as u8))
    {
        return Err(StorePathError::BadNameChar {
            path: path.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Check that `base` is a store path base name `<32 nix32 chars>-<name>` with Nix's name rules, as
/// raw bytes (the form manifests and records carry). The one validator every decoder uses: what it
/// accepts contains no `/`, NUL or non-ASCII byte and is never `.` or `..`.
pub fn check_base_name(base: &[u8]) -> Result<&str, StorePathError> {
    // Non-UTF-8 can only be a bad name character (the hash part is checked byte-wise below).
    let text = std::str::from_utf8(base).map_err(|_| StorePathError::BadNameChar {
        path: String::from_utf8_lossy(base).into_owned(),
        ch: char::REPLACEMENT_CHARACTER,
    })?;
    check_base_name_str(text)?;
    Ok(text)
}

fn check_base_name_str(base: &str) -> Result<(), StorePathError> {
    let bytes = base.as_bytes();
    if bytes.len() < HASH_PART_LEN + 1 {
        return Err(StorePathError::TooShort(base.to_owned()));
    }
    if let Some(&byte) = bytes[..HASH_PART_LEN]
        .iter()
        .find(|&&b| !base32::is_base32_char(b))
    {
        return Err(StorePathError::BadHashChar {
            path: base.to_owned(),
            byte,
        });
    }
    if bytes[HASH_PART_LEN] != b'-' {
        return Err(StorePathError::MissingDash(base.to_owned()));
    }
    validate_name_in(&base[HASH_PART_LEN + 1..], base)
}

/// The directory store paths live in; `/nix/store` unless configured otherwise.
///
/// Always absolute and canonical (no trailing `/`, no empty, `.` or `..` components) so that joining
/// and splitting paths is plain string work.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct StoreDir(String);

impl StoreDir {
    pub fn new(dir: impl Into<String>) -> Result<Self, StorePathError> {
        let dir = dir.into();
        let bad = |reason| {
            Err(StorePathError::BadStoreDir {
                dir: dir.clone(),
                reason,
            })
        };
        if !dir.starts_with('/') {
            return bad("not absolute");
        }
        if dir.len() == 1 {
            return bad("the root directory cannot be a store");
        }
        if dir[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("not canonical (trailing '/', '//', '.' or '..')");
        }
        if dir
            .bytes()
            .any(|b| b == 0 || b == b'\n' || b == b';' || b == b',')
        {
            return bad("contains NUL, newline, ';' or ','");
        }
        Ok(StoreDir(dir))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse a full path `<store dir>/<hash>-<name>`.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let base = path
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: path.to_owned(),
                store_dir: self.0.clone(),
            })?;
        StorePath::from_base_name(base)
    }

    /// The full path of `path` in this store.
    pub fn display_path(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path.0)
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_owned())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StoreDir {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        StoreDir::new(s)
    }
}

/// A store path, held as its base name `<hash>-<name>` (independent of the store directory, as in
/// narinfo `References`). Ordering is by base name, which is also the order of full paths within
/// one store, the order Nix sorts references in.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePath(String);

impl StorePath {
    /// Parse a base name `<32-char hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        check_base_name_str(base)?;
        Ok(StorePath(base.to_owned()))
    }

    /// Build a store path from its digest and name.
    pub fn from_parts(digest: &[u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        StorePath::from_base_name(&format!("{}-{name}", base32::encode(digest)))
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        &self.0
    }

    /// The 32 nix32 characters: what appears inside files that refer to this path, and what the
    /// stripper searches for.
    pub fn hash_part(&self) -> &str {
        &self.0[..HASH_PART_LEN]
    }

    pub fn name(&self) -> &str {
        &self.0[HASH_PART_LEN + 1..]
    }

    /// The 20-byte digest the hash part encodes.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut digest = [0; DIGEST_LEN];
        base32::decode_into(self.hash_part(), &mut digest)
            .expect("hash part validated on construction");
        digest
    }
}

/// The base name `<hash>-<name>`; use [`StoreDir::display_path`] for the full path.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        StorePath::from_base_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "dil2h9darmil79ydspmv2cfwxlnfi03z";

    #[test]
    fn parses_full_and_base() {
        let dir = StoreDir::default();
        let p = dir
            .parse_path(&format!("/nix/store/{HASH}-refstrip-a"))
            .unwrap();
        assert_eq!(p.hash_part(), HASH);
        assert_eq!(p.name(), "refstrip-a");
        assert_eq!(p.to_string(), format!("{HASH}-refstrip-a"));
        assert_eq!(
            dir.display_path(&p),
            format!("/nix/store/{HASH}-refstrip-a")
        );
        assert_eq!(StorePath::from_parts(&p.digest(), "refstrip-a").unwrap(), p);
        assert_eq!(
            format!("{HASH}-refstrip-a").parse::<StorePath>().unwrap(),
            p
        );

        let gnu = StoreDir::new("/gnu/store").unwrap();
        let g = gnu
            .parse_path(&format!("/gnu/store/{HASH}-guile-3.0.9"))
            .unwrap();
        assert_eq!(
            gnu.display_path(&g),
            format!("/gnu/store/{HASH}-guile-3.0.9")
        );
        assert!(matches!(
            dir.parse_path(&gnu.display_path(&g)),
            Err(StorePathError::NotInStore { .. })
        ));
    }

    #[test]
    fn rejects_what_nix_rejects() {
        let dir = StoreDir::default();
        let err = |s: &str| StorePath::from_base_name(s).unwrap_err();
        assert!(matches!(err(HASH), StorePathError::TooShort(_)));
        assert!(matches!(
            err(&format!("{HASH}-")),
            StorePathError::EmptyName(_)
        ));
        assert!(matches!(
            err(&format!("{}e-x", &HASH[..31])),
            StorePathError::BadHashChar { byte: b'e', .. }
        ));
        assert!(matches!(
            err(&format!("{}A-x", &HASH[..31])),
            StorePathError::BadHashChar { byte: b'A', .. }
        ));
        assert!(matches!(
            err(&format!("{HASH}-a b")),
            StorePathError::BadNameChar { ch: ' ', .. }
        ));
        assert!(matches!(
            err(&format!("{HASH}-a/b")),
            StorePathError::BadNameChar { ch: '/', .. }
        ));
        assert!(matches!(
            err(&format!("{HASH}-é")),
            StorePathError::BadNameChar { ch: 'é', .. }
        ));
        assert!(matches!(
            err(&format!("{HASH}xfoo")),
            StorePathError::MissingDash(_)
        ));
        let long = "x".repeat(MAX_NAME_LEN);
        assert!(StorePath::from_base_name(&format!("{HASH}-{long}")).is_ok());
        assert!(matches!(
            err(&format!("{HASH}-{long}y")),
            StorePathError::NameTooLong { len: 212, .. }
        ));
        // Every character Nix allows, including a leading dot that does not make `.`/`..`.
        assert!(StorePath::from_base_name(&format!("{HASH}-.aZ09+-._?=")).is_ok());
        for bad in [
            format!("/nix/store//{HASH}-x"),
            format!("/nix/store/{HASH}-x/bin"),
            format!("/nix/store/./{HASH}-x"),
            format!("/nix/storex/{HASH}-x"),
            format!("nix/store/{HASH}-x"),
            format!("{HASH}-x"),
        ] {
            assert!(dir.parse_path(&bad).is_err(), "{bad}");
        }
    }

    /// Nix's checkName, case by case (name, accepted?).
    #[test]
    fn name_rules_table() {
        let long = "x".repeat(MAX_NAME_LEN);
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("zlib-1.2.13", true),
            ("a", true),
            (".", false),
            ("..", false),
            (".-foo", false),
            ("..-foo", false),
            ("...", true),
            (".foo", true),
            ("..foo", true),
            ("foo-..", true),
            ("foo-.", true),
            ("...-x", true),
            ("", false),
            (&long, true),
            (&too_long, false),
            ("a/b", false),
            ("../../etc", false),
            ("a\0b", false),
            ("a\nb", false),
            ("a b", false),
            ("a:b", false),
            ("a@b", false),
            ("a%b", false),
            ("a~b", false),
            ("+-._?=", true),
            ("é", false),
        ];
        for &(name, ok) in cases {
            let base = format!("{HASH}-{name}");
            assert_eq!(validate_name(name).is_ok(), ok, "name {name:?}");
            assert_eq!(check_base_name(base.as_bytes()).is_ok(), ok, "{base:?}");
            assert_eq!(StorePath::from_base_name(&base).is_ok(), ok, "{base:?}");
        }
        assert!(matches!(
            validate_name(".-x"),
            Err(StorePathError::DotName { component: ".", .. })
        ));
        assert!(matches!(
            validate_name(".."),
            Err(StorePathError::DotName {
                component: "..",
                ..
            })
        ));
        // The attack from issue 17: a valid hash, then a traversal in the name.
        let attack = format!("{HASH}-zlib-1.2.13/../../../../../victim");
        assert!(check_base_name(attack.as_bytes()).is_err());
        assert!(check_base_name(format!("{HASH}-lib/x").as_bytes()).is_err());
        assert!(check_base_name(b"\xff\xfe").is_err());
        let mut non_utf8 = format!("{HASH}-a").into_bytes();
        non_utf8.push(0xff);
        assert!(matches!(
            check_base_name(&non_utf8),
            Err(StorePathError::BadNameChar { .. })
        ));
    }

    #[test]
    fn store_dir_validation() {
        for good in ["/nix/store", "/gnu/store", "/a"] {
            assert_eq!(StoreDir::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/./store",
            "/nix/../store",
            "/a;b",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_part_recognition() {
        assert!(is_hash_part(HASH.as_bytes()));
        assert!(!is_hash_part(&HASH.as_bytes()[1..]));
        assert!(!is_hash_part(format!("{HASH}0").as_bytes()));
        assert!(!is_hash_part(HASH.replace('d', "e").as_bytes()));
        assert!(!is_hash_part(HASH.to_uppercase().as_bytes()));
    }

    proptest! {
        #[test]
        fn round_trip(digest in any::<[u8; 20]>(), name in "[0-9A-Za-z+_?=][0-9A-Za-z+._?=-]{0,210}") {
            let p = StorePath::from_parts(&digest, &name).unwrap();
            prop_assert_eq!(p.digest(), digest);
            prop_assert_eq!(p.name(), name.as_str());
            prop_assert!(is_hash_part(p.hash_part().as_bytes()));
            let dir = StoreDir::default();
            prop_assert_eq!(dir.parse_path(&dir.display_path(&p)).unwrap(), p);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = StorePath::from_base_name(&s);
            let _ = StoreDir::default().parse_path(&s);
        }

        /// Whatever the bytes, an accepted basename is one harmless path component.
        #[test]
        fn accepted_basenames_are_single_components(bytes in proptest::collection::vec(any::<u8>(), 0..260), dots in 0usize..3) {
            let mut b = HASH.as_bytes().to_vec();
            b.push(b'-');
            b.extend(std::iter::repeat_n(b'.', dots));
            b.extend(&bytes);
            if let Ok(s) = check_base_name(&b) {
                prop_assert!(!s.contains('/') && !s.contains('\0'));
                prop_assert!(s != "." && s != "..");
                prop_assert!(s.len() <= HASH_PART_LEN + 1 + MAX_NAME_LEN);
                let p = StorePath::from_base_name(s).unwrap();
                prop_assert_eq!(p.base_name(), s);
            }
            prop_assert_eq!(check_base_name(&b).is_ok(), StorePath::from_base_name(&String::from_utf8_lossy(&b)).is_ok() && std::str::from_utf8(&b).is_ok());
        }
    }
}
