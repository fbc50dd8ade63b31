//! Nix's binary-cache text formats, implemented from their observable behaviour: nix-base32, SHA-256
//! hash spellings, store paths, `.narinfo`, `nix-cache-info` and Ed25519 narinfo signatures.
//!
//! This crate's one job is to turn those formats into checked values and back, exactly as Nix 2.8
//! writes them, so that refstrip can restore a narinfo byte for byte and prove its signatures still
//! hold. It does no I/O apart from the [`HashingReader`]/[`HashingWriter`] adapters and reading
//! nix.conf ([`NixConf`]): bytes in, values out, typed errors for everything Nix would reject.
//!
//! ```
//! use refstrip_nix::{NarInfo, StoreDir};
//!
//! let text = "StorePath: /nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a\n\
//!             URL: nar/0qa62dhmhx2947b66ndaalppnzplds7c3ybf8n3a82xicrwvs8cs.nar.zst\n\
//!             Compression: zstd\n\
//!             NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n\
//!             NarSize: 120\n\
//!             References: \n";
//! let info = NarInfo::parse(&StoreDir::default(), text).unwrap();
//! assert_eq!(info.store_path.hash_part(), "dil2h9darmil79ydspmv2cfwxlnfi03z");
//! assert_eq!(info.to_string(), text);
//! assert_eq!(
//!     info.fingerprint(),
//!     "1;/nix/store/dil2h9darmil79ydspmv2cfwxlnfi03z-refstrip-a;\
//!      sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"
//! );
//! ```

pub mod base32;
pub mod ca;
pub mod cache_info;
pub mod hash;
pub mod narinfo;
pub mod nix_conf;
pub mod signature;
pub mod store_path;

pub use ca::{CaError, CaMethod, ContentAddress, HashAlgo};
pub use cache_info::{CacheInfo, CacheInfoError};
pub use hash::{Hash, HashError, HashingReader, HashingWriter};
pub use narinfo::{check_deriver, Deriver, NarInfo, NarInfoError, NarInfoErrorKind};
pub use nix_conf::NixConf;
pub use signature::{KeyError, KeyFileError, PublicKey, SecretKey, VerifyError};
pub use store_path::{check_base_name, is_hash_part, StoreDir, StorePath, StorePathError};
