//! Where NARs come from: Nix binary caches (narinfo + compressed NAR files) and the compressions
//! Nix uses for them.

mod compression;

pub use compression::{decompress, Compression};
