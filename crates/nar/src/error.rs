use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, writing, dumping or unpacking a NAR.
///
/// Offsets are byte positions in the archive, so a corrupt NAR can be inspected with `xxd -s`.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    // Transparent so the cause is said once, with or without `{:#}` (a `{0}` in the message plus
    // `#[from]` made anyhow print it twice).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// An I/O error on a named file (ENOSPC and friends say which). The error is part of the
    /// message and deliberately not a `source`, so it is printed once.
    #[error("{path}: {error}")]
    PathIo { path: PathBuf, error: io::Error },
    #[error("not a NAR: the archive does not start with \"nix-archive-1\"")]
    BadMagic,
    #[error("NAR truncated at byte {offset}")]
    Truncated { offset: u64 },
    #[error("non-zero padding at byte {offset}")]
    NonZeroPadding { offset: u64 },
    #[error("expected {expected} at byte {offset}, found {found}")]
    UnexpectedToken {
        offset: u64,
        expected: &'static str,
        found: String,
    },
    #[error("string of {len} bytes at byte {offset} exceeds the limit of {limit} bytes")]
    TooLong { offset: u64, len: u64, limit: u64 },
    #[error("invalid entry name {name} at byte {offset}: {reason}")]
    BadName {
        offset: u64,
        name: String,
        reason: &'static str,
    },
    #[error("entry {name} at byte {offset} does not sort after {previous}: NAR directories must be strictly sorted")]
    Unsorted {
        offset: u64,
        name: String,
        previous: String,
    },
    #[error("directories nested deeper than {limit} levels at byte {offset}")]
    TooDeep { offset: u64, limit: usize },
    #[error("file contents: {written} bytes written but {declared} declared")]
    SizeMismatch { declared: u64, written: u64 },
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
    #[error(
        "{path}: unsupported file type (only regular files, symlinks and directories fit in a NAR)"
    )]
    UnsupportedFileType { path: PathBuf },
    #[error("{path} already exists; refusing to unpack over it")]
    DestinationExists { path: PathBuf },
}

impl NarError {
    pub(crate) fn at(path: &std::path::Path) -> impl FnOnce(io::Error) -> NarError + '_ {
        move |error| NarError::PathIo {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Render possibly non-UTF-8 bytes for an error message.
pub(crate) fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}
