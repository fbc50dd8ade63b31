//! Reference stripping and exact restoration of Nix archives — the heart of refstrip.
//!
//! **Strip** reads a NAR and, in file contents, symlink targets and entry names, replaces every
//! occurrence of a reference's 32-character hash part (the declared references plus the path's own
//! hash) with a fixed [`PLACEHOLDER`], recording each occurrence in a patch list. Bytes derived from
//! content that contained hashes (the ELF build-id) are normalized too, their original bytes kept as
//! literal patches. The result is a [`Manifest`] (tree, patch lists, reference table) plus normalized
//! file contents, identified by BLAKE3, which are identical across rebuilds that changed only hashes.
//!
//! **Restore** walks a manifest, pulls normalized contents from a [`ContentSource`], writes the
//! patches back and re-sorts directory entries by their real names, producing the exact original
//! NAR (and optionally a filesystem tree) while computing its SHA-256, which must equal the NarHash.
//!
//! This crate does no I/O policy of its own: content goes to a [`ContentSink`] and comes from a
//! [`ContentSource`], so stores, bundles and caches plug in from outside. The format is specified in
//! `spec/normalized-format.md`.

mod elf;
mod error;
mod halves;
mod manifest;
mod patch;
mod refs;
mod restore;
mod scan;
mod strip;
pub mod varint;

/// The shared byte slices restore passes contents around in (the `bytes` crate's).
pub use bytes::Bytes;
pub use elf::{build_id_range, HEAD_LEN};
pub use error::{Result, StripError};
pub use halves::{
    compress_shape, compress_shape_quickly, inflate_shape, shape_body, Binding, BINDING_MAGIC,
};
pub use manifest::{
    tree_digest, ContentDigest, Entry, Manifest, Node, MANIFEST_VERSION, MAX_NODES, MAX_PATH_LEN,
    MIN_ENTRY_NAR_BYTES,
};
pub use patch::{apply_all, validate, Patch, PatchKind, Patcher};
pub use refs::{RefTable, HASH_LEN, PLACEHOLDER};
pub use restore::{
    files_in_nar_order, restore, restore_nar, restore_threaded, ContentSource, MemoryStore,
    NarDigest, Pieces, RestoreVisitor,
};
pub use scan::{ScanStream, Scanner};
pub use strip::{strip, ContentSink, StripOptions, StripStats, Stripped};
