//! The write side of a normalized store: packs and path records written onto a
//! [`Backend`](refstrip_backend::Backend), the SQLite [`Catalog`] that caches what they say
//! (rebuildable from the files), and gc. Reading a store is `refstrip-read`'s job; every writer
//! here builds on it (record codec, closure walk).
//!
//! Layout of a store (identical on a directory and on an object store; spec/normalized-format.md):
//! ```text
//! refstrip-store                     marker: this is a normalized store, and its format version
//! packs/<BLAKE3 of the pack>.pack    objects (spec/normalized-format.md §6)
//! paths/<hash part>                  one path record per store path (format 2: a binding)
//! shapes/<BLAKE3 of the shape>       format 2 shapes with their object tables (spec §8)
//! catalog.sqlite                     local cache of the above (directory stores only; for s3:// it is
//!                                    in a local cache directory keyed by the URL)
//! gc/condemned/<pack id>             s3:// only: packs gc found unreferenced, deleted by a later gc
//! gc/retired/<pack id>               packs repack replaced, deleted by a later repack (grace period)
//! catalog.lock, catalog.setup-lock   flock files: writers vs gc, one catalog set-up at a time
//! tmp/                               scratch for packs being written
//! ```

pub mod catalog;
pub mod repack;
pub mod retention;
mod store;

pub use catalog::{Catalog, Totals};
pub use refstrip_nix::store_path::{name_of, package_of};
pub use repack::{PackUse, RepackOptions, RepackReport};
pub use retention::{Policy, PolicyEffect, Retention, RetentionPlan};
pub use store::{read_pack_index, GcPlan, GcReport, StagingPack, Store, StoreError, PACK_TARGET};
