//! Format version 2 of a path's description (spec §8): a [`Manifest`] split into two halves.
//!
//! The **shape** is everything a rebuild that changes only hashes leaves alone: the store directory,
//! the reference table's names, the tree with its patch positions and content digests, literal
//! patches by length only. It is named by the BLAKE3 of its body, so the shapes of a path and of
//! its mass-rebuilt successor are one object, which clients cache (or derive from the path they
//! already have) and never fetch twice.
//!
//! The **binding** is the rest, per path and tightly encoded: the shape's digest, the references'
//! hash parts as 20 raw bytes, the narinfo `References` by index, NarHash and NarSize, the literal
//! patch bytes (ELF build-ids) and the narinfo lines (a `Deriver` as a hash and a name suffix, a
//! `Sig` as key name and 64 raw bytes). The path's own hash part is in it too, although a binding
//! is filed under it: so a binding copied under another path's name is refused as a v1 record is.
//!
//! Joining the halves goes through the same checks as decoding a version 1 manifest.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::{Result, StripError};
use crate::manifest::{check_info, decode_node, encode_node, inflate, Literals, TreeBudget};
use crate::refs::{RefTable, HASH_LEN};
use crate::varint::{put, put_bytes, Cursor};
use crate::{ContentDigest, Manifest, Node, PatchKind};

pub const BINDING_MAGIC: &[u8; 8] = b"rsbind02";
/// Raw bytes of a store path's hash part (32 nix-base32 characters are exactly 160 bits).
const HASH_BYTES: usize = 20;
/// Length of an Ed25519 signature.
const SIG_BYTES: usize = 64;

const REFS_ALL: u64 = 0;
const REFS_ALL_BUT_SELF: u64 = 1;
const REFS_LISTED: u64 = 2;

const INFO_VERBATIM: u64 = 0;
const INFO_DERIVER: u64 = 1;
const INFO_SIG: u64 = 2;

fn bad(what: impl Into<String>) -> StripError {
    StripError::BadManifest(what.into())
}

impl Manifest {
    /// The shape's body (deterministic; its BLAKE3 names the shape).
    pub fn shape_body(&self) -> Vec<u8> {
        shape_body(&self.store_dir, &self.refs, &self.root)
    }

    /// Encode the binding of this manifest to the shape whose body [`Manifest::shape_body`] gives.
    /// Fails only for values no Nix tool writes (a hash part that is not nix-base32).
    pub fn binding(&self) -> Result<Vec<u8>> {
        let shape = ContentDigest::of(&self.shape_body());
        let mut out = BINDING_MAGIC.to_vec();
        out.extend_from_slice(&shape.0);
        put(&mut out, self.refs.len() as u64);
        for i in 0..self.refs.len() {
            out.extend_from_slice(&hash_bytes(self.refs.hash_part(i))?);
        }
        encode_references(&mut out, &self.refs, &self.references);
        out.extend_from_slice(&self.nar_hash);
        put(&mut out, self.nar_size);
        let mut literals = Vec::new();
        collect_literals(&self.root, &mut literals);
        put_bytes(&mut out, &literals);
        put(&mut out, self.info.len() as u64);
        let name = &self.refs.basename(0)[HASH_LEN..];
        for (key, value) in &self.info {
            encode_info(&mut out, name, key, value);
        }
        Ok(out)
    }

    /// Join a shape and a binding into a manifest, checking everything [`Manifest::decode`]
    /// checks. The caller has checked that the shape's body hashes to [`Binding::shape`].
    pub fn from_halves(shape_body: &[u8], binding: &Binding) -> Result<Manifest> {
        let truncated = || bad("truncated shape");
        let mut cur = Cursor { bytes: shape_body };
        let store_dir = cur.bytes().ok_or_else(truncated)?.to_vec();
        std::str::from_utf8(&store_dir)
            .ok()
            .and_then(|d| refstrip_nix::StoreDir::new(d).ok())
            .ok_or_else(|| bad("invalid store directory"))?;
        let n = cur.count().ok_or_else(truncated)?;
        if n != binding.ref_hashes.len() {
            return Err(bad(
                "the binding and the shape disagree on the number of references",
            ));
        }
        let mut table = Vec::with_capacity(n);
        for i in 0..n {
            let name = cur.bytes().ok_or_else(truncated)?;
            let hash = refstrip_nix::base32::encode(&binding.ref_hashes[i]);
            table.push([hash.as_bytes(), name].concat());
        }
        let (self_basename, others) = table.split_first().ok_or_else(|| bad("empty table"))?;
        let refs = RefTable::new(self_basename, others)?;
        if refs.basenames() != table.as_slice() {
            return Err(bad(
                "reference table has duplicates or is not in canonical order",
            ));
        }
        let references = decode_references(&refs, &binding.references)?;
        let base_len = (store_dir.len() + 1 + refs.basename(0).len()) as u64;
        let mut budget = TreeBudget::for_nar_size(binding.nar_size);
        let mut literals = Cursor {
            bytes: &binding.literals,
        };
        let root = decode_node(&mut cur, &refs, 0, base_len, &mut budget, &mut |c| {
            let len = c.varint()?;
            literals.take(len).map(<[u8]>::to_vec)
        })?;
        if !cur.bytes.is_empty() {
            return Err(bad("trailing bytes after the shape's tree"));
        }
        if !literals.bytes.is_empty() {
            return Err(bad("the binding has literal bytes the shape does not use"));
        }
        let name = &refs.basename(0)[HASH_LEN..];
        let mut info = Vec::with_capacity(binding.info.len());
        for line in &binding.info {
            let (key, value) = line.to_text(name)?;
            check_info(&key, &value)?;
            info.push((key, value));
        }
        Ok(Manifest {
            store_dir,
            refs,
            references,
            nar_hash: binding.nar_hash,
            nar_size: binding.nar_size,
            info,
            root,
        })
    }
}

/// The shape body of a tree (see the module doc).
pub fn shape_body(store_dir: &[u8], refs: &RefTable, root: &Node) -> Vec<u8> {
    let mut body = Vec::new();
    put_bytes(&mut body, store_dir);
    put(&mut body, refs.len() as u64);
    for b in refs.basenames() {
        put_bytes(&mut body, &b[HASH_LEN..]);
    }
    encode_node(&mut body, root, Literals::LengthOnly);
    body
}

/// A shape as stored: its body in a zstd frame.
pub fn compress_shape(body: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(body, 19).expect("in-memory zstd")
}

/// A shape for a local cache of shapes (the local Nix store's index): a zstd frame as
/// [`compress_shape`] makes, at a level that costs little to write for every path indexed (level
/// 19 was 4 % of a substitute's CPU, indexing the paths it wrote).
pub fn compress_shape_quickly(body: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(body, 3).expect("in-memory zstd")
}

/// The body of a stored shape, bounded like a manifest's.
pub fn inflate_shape(frame: &[u8]) -> Result<Vec<u8>> {
    inflate(frame)
}

/// A decoded binding: the fields as stored, checked for framing only (joining checks the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// BLAKE3 of the shape body this binding completes.
    pub shape: ContentDigest,
    /// Hash parts (raw) of the reference table's entries (entry 0 is the path itself).
    pub ref_hashes: Vec<[u8; HASH_BYTES]>,
    references: References,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Literal patch bytes, concatenated in tree order.
    literals: Vec<u8>,
    info: Vec<InfoLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum References {
    All,
    AllButSelf,
    Listed(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InfoLine {
    Verbatim(String, String),
    /// `Deriver: <hash>-<name>`, the name stored as the length it shares with the path's name
    /// (`lua-5.4.4-dev` → `lua-5.4.4.drv`) and the rest.
    Deriver {
        hash: [u8; HASH_BYTES],
        shared: usize,
        rest: Vec<u8>,
    },
    Sig {
        key: String,
        sig: [u8; SIG_BYTES],
    },
}

impl InfoLine {
    fn to_text(&self, name: &[u8]) -> Result<(String, String)> {
        Ok(match self {
            InfoLine::Verbatim(k, v) => (k.clone(), v.clone()),
            InfoLine::Deriver { hash, shared, rest } => {
                // `name` starts with the '-' after the hash part.
                let prefix = name
                    .get(..*shared)
                    .ok_or_else(|| bad("Deriver shares more than the path's name"))?;
                let text = [refstrip_nix::base32::encode(hash).as_bytes(), prefix, rest].concat();
                let text = String::from_utf8(text).map_err(|_| bad("Deriver is not UTF-8"))?;
                ("Deriver".into(), text)
            }
            InfoLine::Sig { key, sig } => ("Sig".into(), format!("{key}:{}", STANDARD.encode(sig))),
        })
    }
}

impl Binding {
    /// Decode a binding's framing. Nothing here allocates more than the input's length.
    pub fn decode(bytes: &[u8]) -> Result<Binding> {
        let truncated = || bad("truncated binding");
        let rest = bytes
            .strip_prefix(BINDING_MAGIC.as_slice())
            .ok_or_else(|| bad("not a refstrip binding (bad magic)"))?;
        let mut cur = Cursor { bytes: rest };
        let shape = ContentDigest(take_array(&mut cur).ok_or_else(truncated)?);
        let n = cur.count().ok_or_else(truncated)?;
        if n > cur.bytes.len() / HASH_BYTES {
            return Err(truncated());
        }
        let ref_hashes = (0..n)
            .map(|_| take_array(&mut cur).ok_or_else(truncated))
            .collect::<Result<Vec<_>>>()?;
        let references = match cur.varint().ok_or_else(truncated)? {
            REFS_ALL => References::All,
            REFS_ALL_BUT_SELF => References::AllButSelf,
            REFS_LISTED => {
                let m = cur.count().ok_or_else(truncated)?;
                let list = (0..m)
                    .map(|_| {
                        cur.varint()
                            .and_then(|i| usize::try_from(i).ok())
                            .ok_or_else(truncated)
                    })
                    .collect::<Result<Vec<_>>>()?;
                References::Listed(list)
            }
            other => return Err(bad(format!("unknown references encoding {other}"))),
        };
        let nar_hash = take_array(&mut cur).ok_or_else(truncated)?;
        let nar_size = cur.varint().ok_or_else(truncated)?;
        let literals = cur.bytes().ok_or_else(truncated)?.to_vec();
        let k = cur.count().ok_or_else(truncated)?;
        let mut info = Vec::with_capacity(k);
        for _ in 0..k {
            let utf8 =
                |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("info is not UTF-8"));
            info.push(match cur.varint().ok_or_else(truncated)? {
                INFO_VERBATIM => {
                    let key = utf8(cur.bytes().ok_or_else(truncated)?)?;
                    InfoLine::Verbatim(key, utf8(cur.bytes().ok_or_else(truncated)?)?)
                }
                INFO_DERIVER => InfoLine::Deriver {
                    hash: take_array(&mut cur).ok_or_else(truncated)?,
                    shared: cur
                        .varint()
                        .and_then(|s| usize::try_from(s).ok())
                        .ok_or_else(truncated)?,
                    rest: cur.bytes().ok_or_else(truncated)?.to_vec(),
                },
                INFO_SIG => InfoLine::Sig {
                    key: utf8(cur.bytes().ok_or_else(truncated)?)?,
                    sig: take_array(&mut cur).ok_or_else(truncated)?,
                },
                other => return Err(bad(format!("unknown info encoding {other}"))),
            });
        }
        if !cur.bytes.is_empty() {
            return Err(bad("trailing bytes in binding"));
        }
        Ok(Binding {
            shape,
            ref_hashes,
            references,
            nar_hash,
            nar_size,
            literals,
            info,
        })
    }
}

fn take_array<const N: usize>(cur: &mut Cursor<'_>) -> Option<[u8; N]> {
    cur.take(N as u64)?.try_into().ok()
}

fn hash_bytes(hash_part: &[u8]) -> Result<[u8; HASH_BYTES]> {
    let mut out = [0; HASH_BYTES];
    refstrip_nix::base32::decode_into(hash_part, &mut out)
        .map_err(|e| bad(format!("hash part is not nix-base32: {e}")))?;
    Ok(out)
}

/// The narinfo's `References` relative to the table: usually every entry (with or without the path
/// itself) in the order Nix prints them, bytewise; anything else is listed by index.
fn encode_references(out: &mut Vec<u8>, refs: &RefTable, references: &[Vec<u8>]) {
    let mut sorted: Vec<&[u8]> = refs.basenames().iter().map(Vec::as_slice).collect();
    sorted.sort_unstable();
    let listed: Vec<&[u8]> = references.iter().map(Vec::as_slice).collect();
    let without_self: Vec<&[u8]> = sorted
        .iter()
        .copied()
        .filter(|b| *b != refs.basename(0))
        .collect();
    if listed == sorted {
        put(out, REFS_ALL);
    } else if listed == without_self {
        put(out, REFS_ALL_BUT_SELF);
    } else {
        put(out, REFS_LISTED);
        put(out, listed.len() as u64);
        for r in listed {
            let i = refs.basenames().iter().position(|b| b == r);
            // A reference outside the table cannot be bound; the record decoder refuses such
            // manifests anyway, so index past the table to make joining fail loudly.
            put(out, i.unwrap_or(refs.len()) as u64);
        }
    }
}

fn decode_references(refs: &RefTable, references: &References) -> Result<Vec<Vec<u8>>> {
    let mut sorted: Vec<Vec<u8>> = refs.basenames().to_vec();
    sorted.sort_unstable();
    Ok(match references {
        References::All => sorted,
        References::AllButSelf => sorted
            .into_iter()
            .filter(|b| b.as_slice() != refs.basename(0))
            .collect(),
        References::Listed(list) => list
            .iter()
            .map(|&i| {
                refs.basenames()
                    .get(i)
                    .cloned()
                    .ok_or_else(|| bad("a reference index outside the table"))
            })
            .collect::<Result<_>>()?,
    })
}

fn encode_info(out: &mut Vec<u8>, name: &[u8], key: &str, value: &str) {
    if key == "Deriver" {
        if let Some(hash) = value
            .as_bytes()
            .get(..HASH_LEN)
            .and_then(|h| hash_bytes(h).ok())
            .filter(|h| refstrip_nix::base32::encode(h).as_bytes() == &value.as_bytes()[..HASH_LEN])
        {
            let rest = &value.as_bytes()[HASH_LEN..];
            let shared = rest.iter().zip(name).take_while(|(a, b)| a == b).count();
            put(out, INFO_DERIVER);
            out.extend_from_slice(&hash);
            put(out, shared as u64);
            put_bytes(out, &rest[shared..]);
            return;
        }
    }
    if key == "Sig" {
        if let Some((name, sig)) = value.split_once(':').and_then(|(name, b64)| {
            let sig: [u8; SIG_BYTES] = STANDARD.decode(b64).ok()?.try_into().ok()?;
            (STANDARD.encode(sig) == b64).then_some((name, sig))
        }) {
            put(out, INFO_SIG);
            put_bytes(out, name.as_bytes());
            out.extend_from_slice(&sig);
            return;
        }
    }
    put(out, INFO_VERBATIM);
    put_bytes(out, key.as_bytes());
    put_bytes(out, value.as_bytes());
}

/// Literal patch bytes in the order [`encode_node`] meets them.
fn collect_literals(node: &Node, out: &mut Vec<u8>) {
    fn push(patches: &[crate::Patch], out: &mut Vec<u8>) {
        for p in patches {
            if let PatchKind::Literal(bytes) = &p.kind {
                out.extend_from_slice(bytes);
            }
        }
    }
    match node {
        Node::File { patches, .. } | Node::Symlink { patches, .. } => push(patches, out),
        Node::Directory(entries) => {
            for e in entries {
                push(&e.name_patches, out);
                collect_literals(&e.node, out);
            }
        }
    }
}
