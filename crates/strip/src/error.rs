use refstrip_nar::NarError;

/// Errors of stripping and restoring. Restore errors on hostile or corrupt normalized input are
/// typed so callers can tell a bad manifest from a bad object from a wrong reference table.
#[derive(Debug, thiserror::Error)]
pub enum StripError {
    #[error(transparent)]
    Nar(#[from] NarError),
    // Transparent: the cause is said once however the error is printed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The validator's message, which names the basename.
    #[error("invalid store path basename: {0}")]
    BadBasename(String),
    #[error("manifest: {0}")]
    BadManifest(String),
    #[error("unsupported manifest version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u64, supported: u64 },
    #[error("patch at offset {offset} (+{len}) lies outside a {size}-byte {what}")]
    PatchOutOfRange {
        offset: u64,
        len: u64,
        size: u64,
        what: &'static str,
    },
    #[error("patch names reference #{index} but the reference table has {count} entries")]
    UnknownReference { index: u64, count: usize },
    #[error("content object {digest}: expected {expected} bytes, got {actual}")]
    ObjectSize {
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// A hostile or corrupt manifest or object would make restore exceed what NarSize allows.
    #[error(
        "restore refused: {what} would exceed the limit of {limit} the manifest's NarSize allows"
    )]
    OverBudget { what: &'static str, limit: u64 },
    #[error("restored NAR has SHA-256 {actual} and {actual_size} bytes; expected {expected} and {expected_size} bytes")]
    NarHashMismatch {
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
}

pub type Result<T> = std::result::Result<T, StripError>;
