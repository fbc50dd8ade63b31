use std::fmt;

use refstrip_strip::ContentDigest;

/// What an object's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Normalized bytes: a whole small file or one chunk of a large one; named by their BLAKE3.
    Blob,
    /// The chunks of a large normalized file, named by the BLAKE3 of the whole file.
    ChunkList,
    /// An encoded manifest, named by the BLAKE3 of its encoding.
    Manifest,
    /// A zstd frame that rebuilds one file's normalized bytes from another's (see [`crate::delta`]);
    /// named by the BLAKE3 of its own bytes.
    Delta,
}

impl Kind {
    pub fn code(self) -> u64 {
        match self {
            Kind::Blob => 0,
            Kind::ChunkList => 1,
            Kind::Manifest => 2,
            Kind::Delta => 3,
        }
    }

    pub fn from_code(code: u64) -> Option<Kind> {
        Some(match code {
            0 => Kind::Blob,
            1 => Kind::ChunkList,
            2 => Kind::Manifest,
            3 => Kind::Delta,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::ChunkList => "chunklist",
            Kind::Manifest => "manifest",
            Kind::Delta => "delta",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: Kind,
    pub digest: ContentDigest,
}

impl ObjectId {
    pub fn new(kind: Kind, digest: ContentDigest) -> Self {
        ObjectId { kind, digest }
    }

    pub fn blob(bytes: &[u8]) -> Self {
        ObjectId {
            kind: Kind::Blob,
            digest: ContentDigest::of(bytes),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.digest)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
