//! Measures what each way of substituting store paths would download across a rebuild: whole NARs
//! (xz, zstd), whole files, content-defined chunks of the NAR stream, and refstrip's stripped forms.
//! Its one job is that measurement (`refstrip savings`) and its diagnosis for one path
//! (`refstrip explain`): every size is obtained by really compressing and chunking, never estimated.

mod codec;
mod deltas;
mod explain;
mod input;
mod measure;
mod svg;

pub use explain::{explain, Explanation, FileResidual};
pub use input::{closure, open_input, resolve, StoreSource};
pub use measure::{measure, Method, Progress, Report, Row, Side};
pub use svg::plot;

/// Everything that can go wrong while measuring, with the input it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SavingsError {
    #[error(transparent)]
    Source(#[from] refstrip_source::SourceError),
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

impl SavingsError {
    fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        SavingsError::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}
