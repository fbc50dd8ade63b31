//! The manifest of one stripped store path and its versioned binary encoding (see
//! `spec/normalized-format.md`).

use std::fmt;
use std::io::Read;

use crate::error::{Result, StripError};
use crate::patch::{apply_all, validate, Patch, PatchKind};
use crate::refs::RefTable;
use crate::varint::{put, put_bytes, Cursor};

pub const MANIFEST_VERSION: u64 = 1;
const MAGIC: &[u8; 8] = b"rsmanif\n";
/// A decoded manifest larger than this is refused: the largest path in the corpora decodes to well
/// under 1 MiB, and one with a million files to ~100 MB; more is a decompression bomb.
const MAX_DECODED: u64 = 128 << 20;
/// Most tree nodes (files, symlinks, directories) a manifest may declare, whatever its NarSize.
pub const MAX_NODES: u64 = 1 << 22;
/// Fewest NAR bytes any entry below the root takes: `entry ( name <n> node ( type directory ) )`
/// or `… regular contents <0> …`, 184 bytes each (a symlink takes 192). So a manifest declaring more
/// than `NarSize / 184 + 1` nodes cannot restore to its NarSize and is refused before any restore.
pub const MIN_ENTRY_NAR_BYTES: u64 = 184;
/// Longest path of any entry, `<store dir>/<basename>/…` included: Linux `PATH_MAX` minus the NUL.
/// Nix itself cannot create, check or delete deeper trees, so no valid path has one.
pub const MAX_PATH_LEN: u64 = 4095;

/// BLAKE3 of a file's normalized contents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentDigest(pub [u8; 32]);

impl ContentDigest {
    pub fn of(bytes: &[u8]) -> Self {
        ContentDigest(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ContentDigest(out))
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentDigest({})", self.to_hex())
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node of the normalized tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: `size` normalized bytes with BLAKE3 `digest`, and the patches that restore it.
    File {
        executable: bool,
        size: u64,
        digest: ContentDigest,
        patches: Vec<Patch>,
    },
    /// A symlink with its normalized target.
    Symlink {
        target: Vec<u8>,
        patches: Vec<Patch>,
    },
    /// Entries sorted by normalized name (ties keep archive order).
    Directory(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The normalized name.
    pub name: Vec<u8>,
    pub name_patches: Vec<Patch>,
    pub node: Node,
}

/// Everything needed to restore one store path besides the content objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The store directory, e.g. `/nix/store` or `/gnu/store`.
    pub store_dir: Vec<u8>,
    /// The path itself (index 0) and its references in canonical order; patches index into this.
    pub refs: RefTable,
    /// The narinfo's `References`, verbatim (it may or may not list the path itself).
    pub references: Vec<Vec<u8>>,
    /// SHA-256 of the original NAR, and its size.
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Further narinfo lines kept untouched (`Deriver`, `Sig`, `CA`, …) as (key, value).
    pub info: Vec<(String, String)>,
    pub root: Node,
}

impl Manifest {
    /// The path's own basename, `<hash>-<name>`.
    pub fn basename(&self) -> &[u8] {
        self.refs.basename(0)
    }

    /// Every distinct content object the tree needs, with its size, in tree order.
    pub fn objects(&self) -> Vec<(ContentDigest, u64)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            match node {
                Node::File { size, digest, .. } => {
                    if seen.insert(*digest) {
                        out.push((*digest, *size));
                    }
                }
                Node::Symlink { .. } => {}
                Node::Directory(entries) => stack.extend(entries.iter().rev().map(|e| &e.node)),
            }
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = self.body();
        let mut out = MAGIC.to_vec();
        put(&mut out, MANIFEST_VERSION);
        out.extend(zstd::bulk::compress(&body, 19).expect("in-memory zstd"));
        out
    }

    /// The uncompressed body of the encoding (spec §3): deterministic, unlike the zstd frame around
    /// it, whose bytes depend on the compressor; test vectors pin this.
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_bytes(&mut body, &self.store_dir);
        put(&mut body, self.refs.len() as u64);
        for b in self.refs.basenames() {
            put_bytes(&mut body, b);
        }
        put(&mut body, self.references.len() as u64);
        for r in &self.references {
            put_bytes(&mut body, r);
        }
        body.extend_from_slice(&self.nar_hash);
        put(&mut body, self.nar_size);
        put(&mut body, self.info.len() as u64);
        for (k, v) in &self.info {
            put_bytes(&mut body, k.as_bytes());
            put_bytes(&mut body, v.as_bytes());
        }
        encode_node(&mut body, &self.root, Literals::Bytes);
        body
    }

    /// Most tree nodes a restore of this manifest may create: its NarSize cannot hold more.
    pub fn max_nodes(&self) -> u64 {
        max_nodes(self.nar_size)
    }

    /// Decode and validate a manifest: every patch is checked against its file, name or target and
    /// against the reference table, so a manifest that decodes can be restored without panics.
    ///
    /// Everything that becomes a name on disk or a line in Nix's database is checked with Nix's own
    /// rules (the path's basename, every reference, `Deriver`, `CA`, entry names after patching),
    /// and the tree is bounded by what its NarSize can hold: at most [`Manifest::max_nodes`] nodes,
    /// file and symlink bytes summing to at most NarSize, no path longer than [`MAX_PATH_LEN`].
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let bad = |what: &str| StripError::BadManifest(what.to_string());
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a refstrip manifest (bad magic)"))?;
        let mut cur = Cursor { bytes: rest };
        let version = cur.varint().ok_or_else(|| bad("truncated header"))?;
        if version != MANIFEST_VERSION {
            return Err(StripError::UnsupportedVersion {
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        let body = inflate(cur.bytes)?;
        let mut cur = Cursor { bytes: &body };
        let truncated = || bad("truncated body");
        let store_dir = cur.bytes().ok_or_else(truncated)?.to_vec();
        std::str::from_utf8(&store_dir)
            .ok()
            .and_then(|d| refstrip_nix::StoreDir::new(d).ok())
            .ok_or_else(|| bad("invalid store directory"))?;
        let n = cur.count().ok_or_else(truncated)?;
        let mut table = Vec::with_capacity(n);
        for _ in 0..n {
            table.push(cur.bytes().ok_or_else(truncated)?.to_vec());
        }
        let (self_basename, others) = table
            .split_first()
            .ok_or_else(|| bad("empty reference table"))?;
        let refs = RefTable::new(self_basename, others)?;
        if refs.basenames() != table.as_slice() {
            return Err(bad(
                "reference table has duplicates or is not in canonical order",
            ));
        }
        let n = cur.count().ok_or_else(truncated)?;
        let mut references = Vec::with_capacity(n);
        for _ in 0..n {
            let r = cur.bytes().ok_or_else(truncated)?;
            crate::refs::check_basename(r)?;
            references.push(r.to_vec());
        }
        let nar_hash: [u8; 32] = cur
            .take(32)
            .ok_or_else(truncated)?
            .try_into()
            .expect("32 bytes");
        let nar_size = cur.varint().ok_or_else(truncated)?;
        let n = cur.count().ok_or_else(truncated)?;
        let mut info = Vec::with_capacity(n);
        for _ in 0..n {
            let k = cur.bytes().ok_or_else(truncated)?;
            let v = cur.bytes().ok_or_else(truncated)?;
            let utf8 = |b: &[u8]| {
                String::from_utf8(b.to_vec()).map_err(|_| bad("info field is not UTF-8"))
            };
            let (k, v) = (utf8(k)?, utf8(v)?);
            check_info(&k, &v)?;
            info.push((k, v));
        }
        // Path of an entry: `<store dir>/<basename>` then `/<name>` per level.
        let base_len = (store_dir.len() + 1 + refs.basename(0).len()) as u64;
        let mut budget = TreeBudget::for_nar_size(nar_size);
        let root = decode_node(
            &mut cur,
            &refs,
            0,
            base_len,
            &mut budget,
            &mut literal_in_body,
        )?;
        if !cur.bytes.is_empty() {
            return Err(bad("trailing bytes after the tree"));
        }
        Ok(Manifest {
            store_dir,
            refs,
            references,
            nar_hash,
            nar_size,
            info,
            root,
        })
    }
}

/// Decompress a zstd frame of a manifest or shape body, refusing more than [`MAX_DECODED`] bytes.
pub(crate) fn inflate(frame: &[u8]) -> Result<Vec<u8>> {
    let bad = |what: String| StripError::BadManifest(what);
    let mut body = Vec::new();
    zstd::stream::read::Decoder::new(frame)
        .map_err(|e| bad(format!("zstd: {e}")))?
        .take(MAX_DECODED + 1)
        .read_to_end(&mut body)
        .map_err(|e| bad(format!("zstd: {e}")))?;
    if body.len() as u64 > MAX_DECODED {
        return Err(bad("decoded manifest exceeds 128 MiB".into()));
    }
    Ok(body)
}

/// BLAKE3 of a normalized tree: names, modes, sizes, content digests and patch positions, with
/// literal patches reduced to their length (their bytes are the per-build residue). Two builds that
/// differ only in hashes (and derived fields) have the same tree digest.
pub fn tree_digest(root: &Node) -> ContentDigest {
    let mut out = Vec::new();
    encode_node(&mut out, root, Literals::LengthOnly);
    ContentDigest::of(&out)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Literals {
    Bytes,
    LengthOnly,
}

const TAG_FILE: u64 = 0;
const TAG_EXECUTABLE: u64 = 1;
const TAG_SYMLINK: u64 = 2;
const TAG_DIRECTORY: u64 = 3;

pub(crate) fn encode_node(out: &mut Vec<u8>, node: &Node, literals: Literals) {
    match node {
        Node::File {
            executable,
            size,
            digest,
            patches,
        } => {
            put(
                out,
                if *executable {
                    TAG_EXECUTABLE
                } else {
                    TAG_FILE
                },
            );
            put(out, *size);
            out.extend_from_slice(&digest.0);
            encode_patches(out, patches, literals);
        }
        Node::Symlink { target, patches } => {
            put(out, TAG_SYMLINK);
            put_bytes(out, target);
            encode_patches(out, patches, literals);
        }
        Node::Directory(entries) => {
            put(out, TAG_DIRECTORY);
            put(out, entries.len() as u64);
            for e in entries {
                put_bytes(out, &e.name);
                encode_patches(out, &e.name_patches, literals);
                encode_node(out, &e.node, literals);
            }
        }
    }
}

/// Patch list: count, then per patch the gap since the previous patch's end (delta offsets stay
/// small and compress well), then the kind: 0 = literal (length, bytes), k ≥ 1 = reference k-1.
fn encode_patches(out: &mut Vec<u8>, patches: &[Patch], literals: Literals) {
    put(out, patches.len() as u64);
    let mut end = 0;
    for p in patches {
        // Patches are sorted and disjoint (see `validate`); saturate rather than panic otherwise.
        put(out, p.offset.saturating_sub(end));
        match &p.kind {
            PatchKind::Literal(bytes) if literals == Literals::LengthOnly => {
                put(out, 0);
                put(out, bytes.len() as u64);
            }
            PatchKind::Literal(bytes) => {
                put(out, 0);
                put_bytes(out, bytes);
            }
            PatchKind::Ref(index) => put(out, u64::from(*index) + 1),
        }
        end = p.end();
    }
}

/// How a decoder gets a literal patch's bytes: from the body itself (version 1), or as a length
/// whose bytes come from elsewhere (version 2's shape, the bytes being in the binding).
pub(crate) type LiteralReader<'l> = dyn FnMut(&mut Cursor<'_>) -> Option<Vec<u8>> + 'l;

fn literal_in_body(cur: &mut Cursor<'_>) -> Option<Vec<u8>> {
    cur.bytes().map(<[u8]>::to_vec)
}

fn decode_patches(cur: &mut Cursor<'_>, literal: &mut LiteralReader<'_>) -> Result<Vec<Patch>> {
    let truncated = || StripError::BadManifest("truncated patch list".into());
    let n = cur.count().ok_or_else(truncated)?;
    let mut patches = Vec::with_capacity(n);
    let mut end = 0u64;
    for _ in 0..n {
        let gap = cur.varint().ok_or_else(truncated)?;
        let offset = end
            .checked_add(gap)
            .ok_or_else(|| StripError::BadManifest("patch offset overflows".into()))?;
        let kind =
            match cur.varint().ok_or_else(truncated)? {
                0 => PatchKind::Literal(literal(cur).ok_or_else(truncated)?),
                k => PatchKind::Ref(u32::try_from(k - 1).map_err(|_| {
                    StripError::UnknownReference {
                        index: k - 1,
                        count: 0,
                    }
                })?),
            };
        let patch = Patch { offset, kind };
        end = offset
            .checked_add(patch.len())
            .ok_or_else(|| StripError::BadManifest("patch end overflows".into()))?;
        patches.push(patch);
    }
    Ok(patches)
}

impl TreeBudget {
    pub(crate) fn for_nar_size(nar_size: u64) -> Self {
        TreeBudget {
            nodes_left: max_nodes(nar_size),
            bytes_left: nar_size,
        }
    }
}

fn max_nodes(nar_size: u64) -> u64 {
    (nar_size / MIN_ENTRY_NAR_BYTES + 1).min(MAX_NODES)
}

/// Narinfo lines kept in a manifest go back into narinfos and Nix's database: they must be single
/// lines, and the fields Nix interprets must be what Nix would accept.
pub(crate) fn check_info(key: &str, value: &str) -> Result<()> {
    let bad = |what: String| Err(StripError::BadManifest(what));
    // Exactly what NarInfo::parse can have produced: a non-empty name without ':', one line.
    if key.is_empty() || key.contains([':', '\n']) || value.contains('\n') {
        return bad(format!("info field {key:?} is not a single narinfo line"));
    }
    match key {
        "Deriver" => refstrip_nix::check_deriver(value)
            .map(drop)
            .or_else(|e| bad(format!("Deriver: {e}"))),
        "CA" => refstrip_nix::ContentAddress::parse(value)
            .map(drop)
            .or_else(|e| bad(format!("CA: {e}"))),
        _ => Ok(()),
    }
}

/// What is left of a manifest's allowance while its tree is decoded.
pub(crate) struct TreeBudget {
    nodes_left: u64,
    /// NAR bytes left for file contents and symlink targets.
    bytes_left: u64,
}

impl TreeBudget {
    fn node(&mut self) -> Result<()> {
        self.nodes_left = self.nodes_left.checked_sub(1).ok_or_else(|| {
            StripError::BadManifest("more tree nodes than its NarSize can hold".into())
        })?;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<()> {
        self.bytes_left = self.bytes_left.checked_sub(n).ok_or_else(|| {
            StripError::BadManifest("file and symlink bytes exceed its NarSize".into())
        })?;
        Ok(())
    }
}

pub(crate) fn decode_node(
    cur: &mut Cursor<'_>,
    refs: &RefTable,
    depth: usize,
    path_len: u64,
    budget: &mut TreeBudget,
    literal: &mut LiteralReader<'_>,
) -> Result<Node> {
    let bad = |what: &str| StripError::BadManifest(what.to_string());
    if depth > refstrip_nar::MAX_DEPTH {
        return Err(bad("tree nested too deeply"));
    }
    budget.node()?;
    let truncated = || bad("truncated tree");
    Ok(match cur.varint().ok_or_else(truncated)? {
        tag @ (TAG_FILE | TAG_EXECUTABLE) => {
            let size = cur.varint().ok_or_else(truncated)?;
            budget.bytes(size)?;
            let digest = ContentDigest(
                cur.take(32)
                    .ok_or_else(truncated)?
                    .try_into()
                    .expect("32 bytes"),
            );
            let patches = decode_patches(cur, literal)?;
            validate(&patches, size, refs, "file")?;
            Node::File {
                executable: tag == TAG_EXECUTABLE,
                size,
                digest,
                patches,
            }
        }
        TAG_SYMLINK => {
            let target = cur.bytes().ok_or_else(truncated)?.to_vec();
            if target.len() as u64 > refstrip_nar::MAX_TARGET_LEN {
                return Err(bad("symlink target too long"));
            }
            budget.bytes(target.len() as u64)?;
            let patches = decode_patches(cur, literal)?;
            validate(&patches, target.len() as u64, refs, "symlink target")?;
            Node::Symlink { target, patches }
        }
        TAG_DIRECTORY => {
            let n = cur.count().ok_or_else(truncated)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let name = cur.bytes().ok_or_else(truncated)?.to_vec();
                let name_patches = decode_patches(cur, literal)?;
                validate(&name_patches, name.len() as u64, refs, "entry name")?;
                // The name restore will create, checked as the NAR reader checks names.
                let real = apply_all(&name, &name_patches, refs);
                refstrip_nar::validate_name(&real).map_err(|why| {
                    StripError::BadManifest(format!(
                        "entry name {:?}: {why}",
                        String::from_utf8_lossy(&real)
                    ))
                })?;
                let child_len = path_len + 1 + real.len() as u64;
                if child_len > MAX_PATH_LEN {
                    return Err(bad("an entry's path would exceed PATH_MAX"));
                }
                let node = decode_node(cur, refs, depth + 1, child_len, budget, literal)?;
                entries.push(Entry {
                    name,
                    name_patches,
                    node,
                });
            }
            Node::Directory(entries)
        }
        other => return Err(bad(&format!("unknown node tag {other}"))),
    })
}
