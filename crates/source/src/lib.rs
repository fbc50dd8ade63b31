//! Where NARs come from: Nix binary caches (narinfo + compressed NAR files, over `file://`,
//! `http(s)://` or `s3://`) and local Nix stores (their SQLite database and the store directory
//! itself).

mod compression;
mod sources;
pub mod watch;

pub use compression::{decompress, Compression};
pub use sources::{open_source, BinaryCache, LocalStore, NarSource, SourceError};
