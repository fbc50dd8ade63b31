//! `.narinfo` files: the per-path metadata a binary cache serves at `<hash part>.narinfo`.
//!
//! The format is `Name: value` lines, each ending in `\n`. Nix writes the fields in one fixed order
//! (`StorePath`, `URL`, `Compression`, `FileHash`, `FileSize`, `NarHash`, `NarSize`, `References`,
//! `Deriver`, `Sig`…, `CA`), always writes `References` even when empty (as `References: ` with the
//! trailing space), and writes `Sig` lines sorted because it keeps them in a set. [`NarInfo`]'s
//! [`Display`](fmt::Display) uses that order, so a narinfo written by Nix re-serialises byte for byte;
//! fields Nix would write but the file lacks stay absent, and unknown fields are kept and written
//! last, so nothing is lost.
//!
//! The parser accepts what Nix accepts with a few deliberate refusals, each closing an ambiguity a
//! signature verifier must not have: a repeated single-valued field (Nix silently takes the last),
//! a line without `": "` after the name (Nix skips two bytes blindly), and a final line without `\n`
//! (Nix rejects that too). Required fields are those Nix requires: `StorePath`, `URL`, `NarHash` and
//! a non-zero `NarSize`.

use std::fmt;

use crate::ca::{CaError, ContentAddress};
use crate::hash::{Hash, HashError};
use crate::signature;
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// What Nix assumes when a narinfo has no `Compression` field.
pub const DEFAULT_COMPRESSION: &str = "bzip2";

/// The `Deriver` field: a `.drv` base name, or the literal `unknown-deriver` old tools wrote.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Deriver {
    Path(StorePath),
    Unknown,
}

/// Check a `Deriver` value: `unknown-deriver`, or a store path base name ending in `.drv`.
///
/// Stricter than Nix 2.8's narinfo parser (which takes any base name) on purpose: a deriver is
/// registered in Nix's database and later read as a derivation, so only a `.drv` makes sense.
/// Every decoder of a deriver (narinfos, manifests' kept narinfo lines) goes through this.
pub fn check_deriver(value: &str) -> Result<Deriver, StorePathError> {
    if value == "unknown-deriver" {
        return Ok(Deriver::Unknown);
    }
    let path = StorePath::from_base_name(value)?;
    if !path.name().ends_with(".drv") {
        return Err(StorePathError::NotADerivation(value.to_owned()));
    }
    Ok(Deriver::Path(path))
}

/// A parsed `.narinfo`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NarInfo {
    /// The store the paths belong to; `StorePath` is written as a full path in it.
    pub store_dir: StoreDir,
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root, e.g. `nar/<FileHash>.nar.xz`.
    pub url: String,
    /// `xz`, `zstd`, `bzip2`, `none`…; `None` when absent (Nix then assumes [`DEFAULT_COMPRESSION`]).
    pub compression: Option<String>,
    /// SHA-256 of the file at `url`.
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    /// SHA-256 of the uncompressed NAR: what signatures cover.
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// Base names, in file order (Nix writes them sorted).
    pub references: Vec<StorePath>,
    pub deriver: Option<Deriver>,
    /// Raw `Sig` values, `<key name>:<base64 signature>`, in file order; checked by
    /// [`signature::verify`], kept verbatim even when malformed.
    pub sigs: Vec<String>,
    /// Content-address assertion, verbatim (e.g. `fixed:r:sha256:…`).
    pub ca: Option<String>,
    /// Fields this crate does not interpret, in file order.
    pub extra: Vec<(String, String)>,
}

/// A narinfo that does not parse, with the 1-based line where it went wrong when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfoError {
    pub line: Option<usize>,
    pub kind: NarInfoErrorKind,
}

/// The ways a narinfo can be malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoErrorKind {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("last line does not end in a newline")]
    MissingNewline,
    #[error("expected `Name: value`")]
    MissingSeparator,
    #[error("field name is empty")]
    EmptyFieldName,
    #[error("{0} appears more than once")]
    DuplicateField(&'static str),
    #[error("required field {0} is missing")]
    MissingField(&'static str),
    #[error("{field} is not a decimal number: {value:?}")]
    BadNumber { field: &'static str, value: String },
    #[error("NarSize is zero")]
    ZeroNarSize,
    #[error("bad {field}: {error}")]
    BadHash {
        field: &'static str,
        error: HashError,
    },
    #[error("bad {field}: {error}")]
    BadPath {
        field: &'static str,
        error: StorePathError,
    },
    #[error("bad CA: {0}")]
    BadCa(CaError),
}

impl fmt::Display for NarInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "narinfo line {line}: {}", self.kind),
            None => write!(f, "narinfo: {}", self.kind),
        }
    }
}

/// The kind's message already includes any underlying error, so there is no separate source.
impl std::error::Error for NarInfoError {}

fn set_once<T>(
    slot: &mut Option<T>,
    field: &'static str,
    value: T,
) -> Result<(), NarInfoErrorKind> {
    if slot.is_some() {
        return Err(NarInfoErrorKind::DuplicateField(field));
    }
    *slot = Some(value);
    Ok(())
}

fn number(field: &'static str, value: &str) -> Result<u64, NarInfoErrorKind> {
    let bad = || NarInfoErrorKind::BadNumber {
        field,
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

fn hash(field: &'static str, value: &str) -> Result<Hash, NarInfoErrorKind> {
    value
        .parse()
        .map_err(|error| NarInfoErrorKind::BadHash { field, error })
}

fn base_name(field: &'static str, value: &str) -> Result<StorePath, NarInfoErrorKind> {
    StorePath::from_base_name(value).map_err(|error| NarInfoErrorKind::BadPath { field, error })
}

/// Fields while parsing, before the required ones are known to be present.
#[derive(Default)]
struct Partial {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Hash>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Deriver>,
    sigs: Vec<String>,
    ca: Option<String>,
    extra: Vec<(String, String)>,
}

impl Partial {
    fn field(
        &mut self,
        store_dir: &StoreDir,
        name: &str,
        value: &str,
    ) -> Result<(), NarInfoErrorKind> {
        match name {
            "StorePath" => {
                let path =
                    store_dir
                        .parse_path(value)
                        .map_err(|error| NarInfoErrorKind::BadPath {
                            field: "StorePath",
                            error,
                        })?;
                set_once(&mut self.store_path, "StorePath", path)
            }
            "URL" => set_once(&mut self.url, "URL", value.to_owned()),
            "Compression" => set_once(&mut self.compression, "Compression", value.to_owned()),
            "FileHash" => set_once(&mut self.file_hash, "FileHash", hash("FileHash", value)?),
            "FileSize" => set_once(&mut self.file_size, "FileSize", number("FileSize", value)?),
            "NarHash" => set_once(&mut self.nar_hash, "NarHash", hash("NarHash", value)?),
            "NarSize" => set_once(&mut self.nar_size, "NarSize", number("NarSize", value)?),
            "References" => {
                // Nix splits on spaces and drops empty tokens.
                let refs = value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(|r| base_name("References", r));
                set_once(
                    &mut self.references,
                    "References",
                    refs.collect::<Result<_, _>>()?,
                )
            }
            "Deriver" => {
                let deriver = check_deriver(value).map_err(|error| NarInfoErrorKind::BadPath {
                    field: "Deriver",
                    error,
                })?;
                set_once(&mut self.deriver, "Deriver", deriver)
            }
            "Sig" => {
                self.sigs.push(value.to_owned());
                Ok(())
            }
            // Kept verbatim, but only if Nix would parse it (its narinfo parser refuses garbage).
            "CA" => {
                ContentAddress::parse(value).map_err(NarInfoErrorKind::BadCa)?;
                set_once(&mut self.ca, "CA", value.to_owned())
            }
            _ => {
                self.extra.push((name.to_owned(), value.to_owned()));
                Ok(())
            }
        }
    }
}

impl NarInfo {
    /// Parse narinfo text whose `StorePath` must lie in `store_dir`.
    pub fn parse(store_dir: &StoreDir, text: &str) -> Result<NarInfo, NarInfoError> {
        let mut partial = Partial::default();
        for (index, line) in text.split_inclusive('\n').enumerate() {
            let at = |kind| NarInfoError {
                line: Some(index + 1),
                kind,
            };
            let line = line
                .strip_suffix('\n')
                .ok_or_else(|| at(NarInfoErrorKind::MissingNewline))?;
            let (name, value) = line
                .split_once(':')
                .and_then(|(name, rest)| Some((name, rest.strip_prefix(' ')?)))
                .ok_or_else(|| at(NarInfoErrorKind::MissingSeparator))?;
            if name.is_empty() {
                return Err(at(NarInfoErrorKind::EmptyFieldName));
            }
            partial.field(store_dir, name, value).map_err(at)?;
        }
        let missing = |field| NarInfoError {
            line: None,
            kind: NarInfoErrorKind::MissingField(field),
        };
        let nar_size = partial.nar_size.ok_or_else(|| missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError {
                line: None,
                kind: NarInfoErrorKind::ZeroNarSize,
            });
        }
        Ok(NarInfo {
            store_dir: store_dir.clone(),
            store_path: partial.store_path.ok_or_else(|| missing("StorePath"))?,
            url: partial
                .url
                .filter(|url| !url.is_empty())
                .ok_or_else(|| missing("URL"))?,
            compression: partial.compression,
            file_hash: partial.file_hash,
            file_size: partial.file_size,
            nar_hash: partial.nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size,
            references: partial.references.unwrap_or_default(),
            deriver: partial.deriver,
            sigs: partial.sigs,
            ca: partial.ca,
            extra: partial.extra,
        })
    }

    /// [`NarInfo::parse`] for raw bytes (as fetched over HTTP): non-UTF-8 input is an error.
    pub fn parse_bytes(store_dir: &StoreDir, bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            NarInfoError {
                line: Some(line),
                kind: NarInfoErrorKind::NotUtf8,
            }
        })?;
        NarInfo::parse(store_dir, text)
    }

    /// The compression the NAR at `url` uses, with Nix's default when the field is absent.
    pub fn compression(&self) -> &str {
        self.compression.as_deref().unwrap_or(DEFAULT_COMPRESSION)
    }

    /// Full path of the store path.
    pub fn path(&self) -> String {
        self.store_dir.display_path(&self.store_path)
    }

    /// The string signatures cover; see [`signature::fingerprint`].
    pub fn fingerprint(&self) -> String {
        signature::fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Add a `Sig` value the way Nix does: the set stays sorted and free of duplicates.
    pub fn add_sig(&mut self, sig: String) {
        if let Err(pos) = self.sigs.binary_search(&sig) {
            self.sigs.insert(pos, sig);
        }
    }
}

/// The narinfo text in Nix's field order (see the module documentation).
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.path())?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(compression) = &self.compression {
            writeln!(f, "Compression: {compression}")?;
        }
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "FileHash: {file_hash}")?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "FileSize: {file_size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        f.write_str("References:")?;
        for reference in &self.references {
            write!(f, " {reference}")?;
        }
        // Nix joins with spaces after "References: ", so an empty list still has the space.
        if self.references.is_empty() {
            f.write_str(" ")?;
        }
        f.write_str("\n")?;
        match &self.deriver {
            Some(Deriver::Path(drv)) => writeln!(f, "Deriver: {drv}")?,
            Some(Deriver::Unknown) => writeln!(f, "Deriver: unknown-deriver")?,
            None => {}
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        for (name, value) in &self.extra {
            writeln!(f, "{name}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by `nix copy --to file://…?compression=zstd` (Nix 2.8) for a path with references,
    /// one of them to itself.
    const NIX_WRITTEN: &str = "\
StorePath: /nix/store/s8p0yh1ycydyd9f3njs0rb0z164y6fa9-refstrip-c
URL: nar/1z4d00wk55mcbgcqk7n7dpxrkdmrfnzk1x3792nrk4jz4g4apcfy.nar.zst
Compression: zstd
FileHash: sha256:1z4d00wk55mcbgcqk7n7dpxrkdmrfnzk1x3792nrk4jz4g4apcfy
FileSize: 199
NarHash: sha256:073mr3ljzs27js5aqajwijrk2092w69j07m477rdn2vc70yda8hw
NarSize: 280
References: bxs7ymj185m74jprwsmw27q00c6dgj3v-refstrip-b dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a s8p0yh1ycydyd9f3njs0rb0z164y6fa9-refstrip-c
Deriver: 90gs1s7x8k12jqdiq9h7xcwa1yvygzm9-refstrip-c.drv
Sig: test1:oHgYumlowfsLd8nEpk2/Gk3XKyJvbxZdRcbPYpCxi86/M5KD8lrae3CACvOi6C/RbIXK4Ju2WoonLV+C2grxCg==
";

    /// Same producer, a path without references: note the space after `References:`.
    const NIX_NO_REFS: &str = "\
StorePath: /nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a
URL: nar/0qa62dhmhx2947b66ndaalppnzplds7c3ybf8n3a82xicrwvs8cs.nar.zst
Compression: zstd
FileHash: sha256:0qa62dhmhx2947b66ndaalppnzplds7c3ybf8n3a82xicrwvs8cs
FileSize: 91
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Deriver: h3hysc6si4cdv264dy36hii2bw0yndhr-refstrip-a.drv
Sig: test1:UP59+56Q3oWXN3zlKVjjJfnDsULYOx65cqgbZXAbEz0U9bgSTTazYWBQv3D0BvG1VBNQ50ayisHwPocJyqAoBQ==
";

    fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse(&StoreDir::default(), text)
    }

    #[test]
    fn nix_written_round_trips_byte_for_byte() {
        for text in [NIX_WRITTEN, NIX_NO_REFS] {
            let info = parse(text).unwrap();
            assert_eq!(info.to_string(), text);
        }
        let info = parse(NIX_WRITTEN).unwrap();
        assert_eq!(info.store_path.name(), "refstrip-c");
        assert_eq!(info.references.len(), 3);
        assert_eq!(info.nar_size, 280);
        assert_eq!(info.file_size, Some(199));
        assert_eq!(info.compression(), "zstd");
        assert_eq!(info.sigs.len(), 1);
        assert!(parse(NIX_NO_REFS).unwrap().references.is_empty());
    }

    #[test]
    fn keeps_unknown_fields_and_accepts_other_hash_spellings() {
        let text = NIX_NO_REFS.replace(
            "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "NarHash: sha256-7vl5UNMN/kJVvQGAmi5WVPGS7nkJOUe4gHkpQLuO9zI=",
        ) + "System: x86_64-linux\nX-Note: a: b\n";
        let info = parse(&text).unwrap();
        assert_eq!(
            info.extra,
            vec![
                ("System".into(), "x86_64-linux".into()),
                ("X-Note".into(), "a: b".into())
            ]
        );
        let again = parse(&info.to_string()).unwrap();
        assert_eq!(again, info);
        assert!(info
            .to_string()
            .ends_with("System: x86_64-linux\nX-Note: a: b\n"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: Vec<(String, Option<usize>, NarInfoErrorKind)> = vec![
            (
                NIX_WRITTEN.replace("NarSize: 280", "NarSize: 2x0"),
                Some(7),
                NarInfoErrorKind::BadNumber {
                    field: "NarSize",
                    value: "2x0".into(),
                },
            ),
            (
                NIX_WRITTEN.replace("NarSize: 280", "NarSize: -1"),
                Some(7),
                NarInfoErrorKind::BadNumber {
                    field: "NarSize",
                    value: "-1".into(),
                },
            ),
            (
                NIX_WRITTEN.replace("NarSize: 280", "NarSize: 0"),
                None,
                NarInfoErrorKind::ZeroNarSize,
            ),
            (
                NIX_WRITTEN.replace("NarSize: 280\n", ""),
                None,
                NarInfoErrorKind::MissingField("NarSize"),
            ),
            (
                NIX_WRITTEN.replace("URL: ", "X: "),
                None,
                NarInfoErrorKind::MissingField("URL"),
            ),
            (
                NIX_WRITTEN.replace("StorePath", "Path"),
                None,
                NarInfoErrorKind::MissingField("StorePath"),
            ),
            (
                NIX_WRITTEN.replace("NarHash", "NarHush"),
                None,
                NarInfoErrorKind::MissingField("NarHash"),
            ),
            (
                NIX_WRITTEN.replace("Compression: ", "Compression:"),
                Some(3),
                NarInfoErrorKind::MissingSeparator,
            ),
            (
                format!("{NIX_WRITTEN}no colon\n"),
                Some(11),
                NarInfoErrorKind::MissingSeparator,
            ),
            (
                format!("{NIX_WRITTEN}: x\n"),
                Some(11),
                NarInfoErrorKind::EmptyFieldName,
            ),
            (
                format!("{NIX_WRITTEN}NarSize: 280\n"),
                Some(11),
                NarInfoErrorKind::DuplicateField("NarSize"),
            ),
            (
                NIX_WRITTEN.trim_end().to_owned(),
                Some(10),
                NarInfoErrorKind::MissingNewline,
            ),
        ];
        for (text, line, kind) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!((err.line, &err.kind), (line, &kind), "{text}");
        }
        let bad_hash =
            parse(&NIX_WRITTEN.replace("NarHash: sha256:0", "NarHash: sha256:e")).unwrap_err();
        assert!(
            matches!(
                bad_hash.kind,
                NarInfoErrorKind::BadHash {
                    field: "NarHash",
                    ..
                }
            ) && bad_hash.line == Some(6)
        );
        let bad_ref = parse(&NIX_WRITTEN.replace("-refstrip-b ", "-refstrip/b ")).unwrap_err();
        assert!(matches!(
            bad_ref.kind,
            NarInfoErrorKind::BadPath {
                field: "References",
                ..
            }
        ));
        let other_store =
            NarInfo::parse(&StoreDir::new("/gnu/store").unwrap(), NIX_WRITTEN).unwrap_err();
        assert!(matches!(
            other_store.kind,
            NarInfoErrorKind::BadPath {
                field: "StorePath",
                ..
            }
        ));
        let not_utf8 =
            NarInfo::parse_bytes(&StoreDir::default(), b"StorePath: x\nURL: \xff\n").unwrap_err();
        assert_eq!(
            (not_utf8.line, not_utf8.kind),
            (Some(2), NarInfoErrorKind::NotUtf8)
        );
        assert_eq!(
            bad_hash.to_string().split(':').next(),
            Some("narinfo line 6")
        );
    }

    #[test]
    fn unknown_deriver_and_missing_optionals() {
        let text = "StorePath: /nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-a\nURL: x\n\
                    NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 1\n\
                    References: \nDeriver: unknown-deriver\n";
        let info = parse(text).unwrap();
        assert_eq!(info.deriver, Some(Deriver::Unknown));
        assert_eq!(info.compression(), "bzip2");
        assert_eq!(info.to_string(), text);
    }

    #[test]
    fn add_sig_keeps_nix_set_order() {
        let mut info = parse(NIX_NO_REFS).unwrap();
        info.add_sig("a:x".into());
        info.add_sig("z:y".into());
        info.add_sig("a:x".into());
        assert_eq!(info.sigs.len(), 3);
        assert!(info.sigs.windows(2).all(|w| w[0] < w[1]));
    }

    /// Unsigned fields Nix would reject (issue 17: `CA: garbage`, `Deriver: ../../etc/passwd`).
    #[test]
    fn refuses_unsigned_fields_nix_would_reject() {
        let head = "StorePath: /nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a\n\
                    URL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n\
                    NarSize: 120\nReferences: \n";
        let ok = format!(
            "{head}CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n\
             Deriver: 90gs1s7x8k12jqdiq9h7xcwa1yvygzm9-refstrip-c.drv\n"
        );
        assert!(parse(&ok).is_ok());
        for bad in [
            "CA: garbage\n",
            "CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dq\n",
            "Deriver: ../../etc/passwd\n",
            "Deriver: 90gs1s7x8k12jqdiq9h7xcwa1yvygzm9-refstrip-c\n",
            "Deriver: 90gs1s7x8k12jqdiq9h7xcwa1yvygzm9-../x.drv\n",
        ] {
            let err = parse(&format!("{head}{bad}")).unwrap_err();
            assert_eq!(err.line, Some(6), "{bad}");
        }
        assert_eq!(check_deriver("unknown-deriver").unwrap(), Deriver::Unknown);
        assert!(check_deriver("unknown").is_err());
    }

    fn arb_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[0-9A-Za-z+_?=][0-9A-Za-z+._?=-]{0,19}")
            .prop_map(|(d, n)| StorePath::from_parts(&d, &n).unwrap())
    }

    fn arb_drv() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[0-9A-Za-z+_?=][0-9A-Za-z+._?=-]{0,15}")
            .prop_map(|(d, n)| StorePath::from_parts(&d, &format!("{n}.drv")).unwrap())
    }

    fn arb_ca() -> impl Strategy<Value = String> {
        (any::<[u8; 32]>(), 0..3u8).prop_map(|(d, m)| {
            let prefix = ["fixed:r:sha256", "fixed:sha256", "text:sha256"][m as usize];
            format!("{prefix}:{}", crate::base32::encode(&d))
        })
    }

    fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
        (
            (
                arb_path(),
                "[!-~]{1,30}",
                proptest::option::of("[a-z0-9]{1,6}"),
            ),
            (
                proptest::option::of(any::<[u8; 32]>()),
                proptest::option::of(any::<u64>()),
            ),
            (any::<[u8; 32]>(), 1..u64::MAX),
            (
                proptest::collection::vec(arb_path(), 0..4),
                proptest::option::of(arb_drv()),
            ),
            (
                proptest::collection::vec("[!-~]{1,20}", 0..3),
                proptest::option::of(arb_ca()),
            ),
            proptest::collection::vec(("[A-Z][a-z]{0,8}", "[ -~]{0,20}"), 0..3),
        )
            .prop_map(
                |(
                    (store_path, url, compression),
                    (fh, file_size),
                    (nh, nar_size),
                    (references, drv),
                    (sigs, ca),
                    extra,
                )| {
                    NarInfo {
                        store_dir: StoreDir::default(),
                        store_path,
                        url,
                        compression,
                        file_hash: fh.map(Hash::from_bytes),
                        file_size,
                        nar_hash: Hash::from_bytes(nh),
                        nar_size,
                        references,
                        deriver: drv.map(Deriver::Path),
                        sigs,
                        ca,
                        // Names this crate interprets would be parsed into their fields instead.
                        extra: extra
                            .into_iter()
                            .filter(|(n, _)| !KNOWN.contains(&n.as_str()))
                            .collect(),
                    }
                },
            )
    }

    const KNOWN: &[&str] = &[
        "StorePath",
        "URL",
        "Compression",
        "FileHash",
        "FileSize",
        "NarHash",
        "NarSize",
        "References",
        "Deriver",
        "Sig",
        "CA",
    ];

    proptest! {
        #[test]
        fn serialize_parse_round_trip(info in arb_narinfo()) {
            let text = info.to_string();
            let parsed = parse(&text).unwrap();
            prop_assert_eq!(&parsed, &info);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "(([A-Za-z]{1,10}: [ -~]{0,60})?\n){0,12}") {
            if let Ok(info) = parse(&text) {
                prop_assert_eq!(parse(&info.to_string()).unwrap(), info);
            }
        }
    }
}
