//! The normalized store: one path record (manifest + object locations) per store path over
//! immutable, content-addressed pack files, on a [`Backend`] chosen by URL, with a SQLite
//! [`Catalog`] as a local, rebuildable cache. Also the mapping between a Nix narinfo and a manifest
//! ([`pathinfo`]).
//!
//! Layout of a store (identical on a directory and on an object store):
//! ```text
//! packs/<BLAKE3 of the pack>.pack    objects (spec/normalized-format.md §6)
//! paths/<hash part>                  one path record per store path
//! catalog.sqlite                     local cache of the above (directory stores only; for s3:// it is
//!                                    in a local cache directory keyed by the URL)
//! gc/condemned/<pack id>             s3:// only: packs gc found unreferenced, deleted by a later gc
//! catalog.lock, catalog.setup-lock   flock files: writers vs gc, one catalog set-up at a time
//! tmp/                               scratch for packs being written
//! ```

pub mod backend;
pub mod catalog;
pub mod http;
pub mod pathinfo;
pub mod record;
pub mod s3;
mod store;

pub use backend::{Backend, LocalDir, RequestCounts};
pub use catalog::{Catalog, Totals};
pub use record::PathRecord;
pub use store::{
    pack_key, read_pack_index, record_key, GcReport, RecordObjects, StagingPack, Store, StoreError,
    PACK_TARGET,
};
