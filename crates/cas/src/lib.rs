//! Content-addressed objects for refstrip, kept apart from Nix's formats.
//!
//! Every object is named by its [`ObjectId`]: a kind and the BLAKE3 digest of the bytes it stands
//! for. A normalized file of up to [`CHUNK_THRESHOLD`] bytes is one [`Kind::Blob`]; a larger one is
//! cut by FastCDC into blobs, listed by a [`Kind::ChunkList`] named after the whole file's digest,
//! so a small edit to a large file stores only the chunks around it. Manifests are objects too.
//!
//! Objects are written into [pack files](pack): solid zstd blocks of several objects followed by an
//! index, so storage and request counts grow with packs, not with files, while one object can still
//! be read with a single ranged read of its block. Everything here is immutable once written, which
//! is what an object store wants. [`FileSink`] and [`FileSource`] connect packs to the strip and
//! restore traits of `refstrip-strip`.

pub mod bundle;
mod chunk;
pub mod delta;
mod error;
mod files;
pub mod filter;
mod id;
pub mod pack;

pub use chunk::{Chunker, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, CHUNK_THRESHOLD};
pub use error::CasError;
pub use files::{
    chunk_list_of, chunks_of, chunks_of_file, decode_chunk_list, file_object, FileSink, FileSource,
    ObjectRead, ObjectWrite,
};
pub use id::{Kind, ObjectId};
