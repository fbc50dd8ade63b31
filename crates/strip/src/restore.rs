//! Manifest + normalized contents + reference table → the exact original NAR (and/or a tree).
//!
//! File contents travel as [`Bytes`]: a source that holds objects in memory already (decoded pack
//! blocks) hands out shared slices of them ([`ContentSource::pieces`]), and restore passes those on
//! to the NAR hash, the NAR output and the visitor without copying them; only the patched regions
//! are new bytes. The NAR's SHA-256 can run on a thread of its own ([`restore_threaded`]) while the
//! caller's thread writes the tree.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;

use bytes::{Bytes, BytesMut};
use refstrip_nar::{Event, NarWriter};
use refstrip_nix::{Hash, HashingWriter};

use crate::error::{Result, StripError};
use crate::manifest::{ContentDigest, Entry, Manifest, Node};
use crate::patch::{apply_all, Patch, PatchKind, Patcher};
use crate::refs::RefTable;
use crate::strip::ContentSink;

/// Where restore reads normalized contents from.
pub trait ContentSource {
    /// A reader over the normalized contents of object `digest`, which should be `size` bytes long.
    fn open(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Box<dyn Read + '_>>;

    /// The same contents as consecutive pieces. A source that holds objects in memory already
    /// hands out shared slices of them, which restore passes on without copying; by default the
    /// pieces are read through [`open`](Self::open).
    ///
    /// An empty piece says the source is about to wait for more: restore then first passes on
    /// the pieces it still holds (batched for its hashing thread), so that a source whose
    /// pieces count against a memory budget is not left waiting for ones restore sits on.
    fn pieces(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Pieces<'_>> {
        let mut reader = self.open(digest, size)?;
        Ok(Box::new(std::iter::from_fn(move || {
            let mut buf = Vec::with_capacity(READ_BUF);
            match reader.by_ref().take(READ_BUF as u64).read_to_end(&mut buf) {
                Ok(0) => None,
                Ok(_) => Some(Ok(Bytes::from(buf))),
                Err(e) => Some(Err(e)),
            }
        })))
    }
}

/// A file's normalized contents as consecutive pieces (see [`ContentSource::pieces`]).
pub type Pieces<'a> = Box<dyn Iterator<Item = io::Result<Bytes>> + 'a>;

/// Receives the restored tree as NAR events (with real names, in NAR order) and file contents,
/// e.g. to write files straight into a store while the NAR hash is computed alongside.
pub trait RestoreVisitor {
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// Called right after the `event` of a file that has no patches, whose restored bytes are
    /// therefore exactly the object `digest`. A visitor that can produce those bytes another way
    /// (e.g. a hard link to an earlier copy) returns `true`, and `contents` is not called for this
    /// file; the bytes are still read and go into the NAR hash.
    fn unpatched(&mut self, _digest: &ContentDigest) -> io::Result<bool> {
        Ok(false)
    }
    fn contents(&mut self, data: &[u8]) -> io::Result<()>;
    /// The file's next bytes in consecutive parts (a piece of an object around its patched
    /// regions): one [`contents`](Self::contents) call each unless the visitor can take them at once.
    fn contents_parts(&mut self, parts: &[Bytes]) -> io::Result<()> {
        parts.iter().try_for_each(|p| self.contents(p))
    }
}

/// No visitor: restore only to the NAR output.
impl RestoreVisitor for () {
    fn event(&mut self, _: &Event) -> io::Result<()> {
        Ok(())
    }
    fn contents(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// SHA-256 and size of a restored NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarDigest {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Restore `manifest` as a NAR into `out`, checking its SHA-256 and size against the manifest.
pub fn restore_nar<W: Write>(
    manifest: &Manifest,
    source: &mut dyn ContentSource,
    out: W,
) -> Result<NarDigest> {
    restore(manifest, source, out, &mut ())
}

/// Restore `manifest`, writing the NAR to `nar_out` (use [`io::sink`] for none) and reporting the
/// tree to `visitor`. Fails with [`StripError::NarHashMismatch`] at the end when the result is not
/// byte-exact: callers must treat everything written as provisional until this returns `Ok`.
///
/// Budgets from the manifest's NarSize (the signed size, for a manifest checked against its
/// narinfo) hold throughout, not just at the end: no NAR byte beyond NarSize is ever passed to
/// `nar_out`, and no file content beyond it to `visitor` (fails with [`StripError::OverBudget`] the
/// moment a write would cross it); at most [`Manifest::max_nodes`] nodes are reported.
pub fn restore<W: Write>(
    manifest: &Manifest,
    source: &mut dyn ContentSource,
    nar_out: W,
    visitor: &mut dyn RestoreVisitor,
) -> Result<NarDigest> {
    let mut out = Inline(HashingWriter::new(nar_out));
    walk(manifest, source, &mut out, visitor)?;
    let Inline(out) = out;
    let (sha256, size, mut inner) = out.finish();
    inner.flush()?;
    check(manifest, sha256, size)
}

/// [`restore`] with the NAR's SHA-256 (and `nar_out`) on a thread of its own, so that hashing
/// runs beside reading and writing the tree instead of after each piece. The same checks and
/// budgets hold; the NAR reaches `nar_out` in order.
pub fn restore_threaded<W: Write + Send>(
    manifest: &Manifest,
    source: &mut dyn ContentSource,
    nar_out: W,
    visitor: &mut dyn RestoreVisitor,
) -> Result<NarDigest> {
    // A few batches in flight keep both threads busy (each at most HASH_BATCH plus one piece).
    let (tx, rx) = mpsc::sync_channel::<Vec<Bytes>>(4);
    let (walked, hashed) = std::thread::scope(|s| {
        let hasher = s.spawn(move || -> io::Result<(Hash, u64, W)> {
            let mut out = HashingWriter::new(nar_out);
            for parts in rx {
                parts.iter().try_for_each(|p| out.write_all(p))?;
            }
            out.flush()?;
            Ok(out.finish())
        });
        let mut out = Threaded {
            tx,
            batch: Vec::new(),
            bytes: 0,
        };
        let walked = walk(manifest, source, &mut out, visitor);
        drop(out); // the hasher's input ends here
        (walked, hasher.join().expect("the hashing thread panicked"))
    });
    // A failed hasher closes its channel, which fails the walk with a less telling error.
    let (sha256, size, _) = hashed?;
    walked?;
    check(manifest, sha256, size)
}

fn check(manifest: &Manifest, sha256: Hash, size: u64) -> Result<NarDigest> {
    let digest = NarDigest {
        sha256: *sha256.as_bytes(),
        size,
    };
    if digest.sha256 != manifest.nar_hash || digest.size != manifest.nar_size {
        return Err(StripError::NarHashMismatch {
            expected: Hash::from_bytes(manifest.nar_hash).to_hex(),
            actual: sha256.to_hex(),
            expected_size: manifest.nar_size,
            actual_size: digest.size,
        });
    }
    Ok(digest)
}

/// Where the NAR's bytes go, in order: hashed right here, or sent to the hashing thread.
trait NarStream {
    fn send(&mut self, parts: Vec<Bytes>) -> io::Result<()>;
    /// Pass on whatever is held back.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Inline<W>(HashingWriter<W>);

impl<W: Write> NarStream for Inline<W> {
    fn send(&mut self, parts: Vec<Bytes>) -> io::Result<()> {
        parts.iter().try_for_each(|p| self.0.write_all(p))
    }
}

/// Bytes sent to the hashing thread at once: a handoff costs two futex calls when the other
/// side waits, which per piece (a small file, a 64 KiB chunk) added up to seconds of CPU.
const HASH_BATCH: usize = 1 << 20;

struct Threaded {
    tx: mpsc::SyncSender<Vec<Bytes>>,
    batch: Vec<Bytes>,
    bytes: usize,
}

impl NarStream for Threaded {
    fn send(&mut self, parts: Vec<Bytes>) -> io::Result<()> {
        self.bytes += parts.iter().map(Bytes::len).sum::<usize>();
        self.batch.extend(parts);
        if self.bytes >= HASH_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.tx
            .send(std::mem::take(&mut self.batch))
            .map_err(|_| io::Error::other("the NAR hashing thread stopped"))
    }
}

/// The NAR's framing (everything but file contents) is collected here and sent once this much
/// is pending, or before the next contents.
const FRAMING_FLUSH: usize = 64 * 1024;
/// Piece size when reading through [`ContentSource::open`].
const READ_BUF: usize = 256 * 1024;
/// A piece with more patched regions than this is copied and patched in place rather than split
/// around them (each region would be a part of its own: an allocation, an iovec).
const MAX_SPLIT_PATCHES: usize = 4;

/// The restore proper: the NAR in order into `out`, the tree to `visitor`.
fn walk(
    manifest: &Manifest,
    source: &mut dyn ContentSource,
    out: &mut dyn NarStream,
    visitor: &mut dyn RestoreVisitor,
) -> Result<()> {
    let mut w = Walker {
        manifest,
        nar: NarWriter::new(Vec::new()),
        out,
        left: manifest.nar_size,
        nodes_left: manifest.max_nodes(),
    };
    in_nar_order(manifest, |step| match step {
        Step::Node(name, node) => w.node(source, visitor, name, node),
        Step::EndDirectory => {
            w.nar.end_directory()?;
            w.framing_within_budget()?;
            visitor.event(&Event::EndDirectory)?;
            Ok(())
        }
    })?;
    let framing = std::mem::take(w.nar.get_mut());
    w.send(vec![Bytes::from(framing)])?;
    w.nar.finish()?;
    w.out.flush()?;
    Ok(())
}

struct Walker<'a> {
    manifest: &'a Manifest,
    /// Writes only the framing (into its `Vec`); contents are accounted with `skip_contents`.
    nar: NarWriter<Vec<u8>>,
    out: &'a mut dyn NarStream,
    /// NAR bytes NarSize still allows.
    left: u64,
    nodes_left: u64,
}

impl Walker<'_> {
    fn over_budget(&self) -> StripError {
        StripError::OverBudget {
            what: "NAR bytes",
            limit: self.manifest.nar_size,
        }
    }

    /// Refuse framing that would already take the NAR past NarSize, before anyone sees its node.
    fn framing_within_budget(&mut self) -> Result<()> {
        if self.nar.get_mut().len() as u64 > self.left {
            return Err(self.over_budget());
        }
        if self.nar.get_mut().len() >= FRAMING_FLUSH {
            let framing = std::mem::take(self.nar.get_mut());
            self.send(vec![Bytes::from(framing)])?;
        }
        Ok(())
    }

    /// Pass `parts` on to the NAR output, within the budget.
    fn send(&mut self, parts: Vec<Bytes>) -> Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len > self.left {
            return Err(self.over_budget());
        }
        self.left -= len;
        self.out.send(parts)?;
        Ok(())
    }

    fn node(
        &mut self,
        source: &mut dyn ContentSource,
        visitor: &mut dyn RestoreVisitor,
        name: Option<Vec<u8>>,
        node: &Node,
    ) -> Result<()> {
        let manifest = self.manifest;
        self.nodes_left = self
            .nodes_left
            .checked_sub(1)
            .ok_or(StripError::OverBudget {
                what: "tree nodes",
                limit: manifest.max_nodes(),
            })?;
        let event = match node {
            Node::File {
                executable, size, ..
            } => Event::File {
                name,
                executable: *executable,
                size: *size,
            },
            Node::Symlink { target, patches } => Event::Symlink {
                name,
                target: apply_all(target, patches, &manifest.refs),
            },
            Node::Directory(_) => Event::Directory { name },
        };
        self.nar.event(&event)?;
        self.framing_within_budget()?;
        visitor.event(&event)?;
        if let Node::File {
            size,
            digest,
            patches,
            ..
        } = node
        {
            let reused = patches.is_empty() && visitor.unpatched(digest)?;
            let sink = if reused { None } else { Some(visitor) };
            self.contents(source, sink, digest, *size, patches)?;
        }
        Ok(())
    }

    /// One file's contents, patched, to the NAR output and (unless `None`) the visitor.
    fn contents(
        &mut self,
        source: &mut dyn ContentSource,
        mut visitor: Option<&mut dyn RestoreVisitor>,
        digest: &ContentDigest,
        size: u64,
        patches: &[Patch],
    ) -> Result<()> {
        let refs = &self.manifest.refs;
        let mut done = 0u64;
        let too_long = |actual: u64| StripError::ObjectSize {
            digest: digest.to_hex(),
            expected: size,
            actual,
        };
        let mut pass = |w: &mut Self, parts: Vec<Bytes>, len: u64| -> Result<()> {
            // Framing first, then these bytes, then what `skip_contents` adds (the padding).
            let mut all = Vec::with_capacity(parts.len() + 1);
            let framing = std::mem::take(w.nar.get_mut());
            if !framing.is_empty() {
                all.push(Bytes::from(framing));
            }
            all.extend(parts.iter().cloned());
            w.send(all)?;
            w.nar.skip_contents(len)?;
            if let Some(v) = visitor.as_deref_mut() {
                v.contents_parts(&parts)?;
            }
            Ok(())
        };
        for piece in source.pieces(digest, size)? {
            let piece = piece?;
            let len = piece.len() as u64;
            if len == 0 {
                self.out.flush()?;
                continue;
            }
            if done + len > size {
                return Err(too_long(done + len));
            }
            pass(self, restored_parts(piece, done, patches, refs), len)?;
            done += len;
        }
        if done != size {
            return Err(StripError::ObjectSize {
                digest: digest.to_hex(),
                expected: size,
                actual: done,
            });
        }
        Ok(())
    }
}

/// The restored bytes of `piece`, the object's bytes from `offset` on. A piece nobody else holds
/// is patched in place; a shared one is split: its unpatched runs are slices of it, each patched
/// region is its original bytes (or, with many patches in the piece, it is copied and patched).
fn restored_parts(piece: Bytes, offset: u64, patches: &[Patch], refs: &RefTable) -> Vec<Bytes> {
    let end = offset + piece.len() as u64;
    let first = patches.partition_point(|p| p.end() <= offset);
    let inside = &patches[first..];
    let inside = &inside[..inside.partition_point(|p| p.offset < end)];
    if inside.is_empty() {
        return vec![piece];
    }
    let patched = |mut bytes: BytesMut| {
        Patcher::starting_at(patches, refs, offset).apply(&mut bytes);
        vec![bytes.freeze()]
    };
    let piece = match piece.try_into_mut() {
        Ok(own) => return patched(own),
        Err(shared) if inside.len() > MAX_SPLIT_PATCHES => {
            return patched(BytesMut::from(&shared[..]))
        }
        Err(shared) => shared,
    };
    let mut parts = Vec::with_capacity(2 * inside.len() + 1);
    let mut at = offset;
    for p in inside {
        let (from, to) = (p.offset.max(offset), p.end().min(end));
        if from > at {
            parts.push(piece.slice((at - offset) as usize..(from - offset) as usize));
        }
        let original: &[u8] = match &p.kind {
            PatchKind::Ref(index) => refs.hash_part(*index as usize),
            PatchKind::Literal(bytes) => bytes,
        };
        parts.push(Bytes::copy_from_slice(
            &original[(from - p.offset) as usize..(to - p.offset) as usize],
        ));
        at = to;
    }
    if at < end {
        parts.push(piece.slice((at - offset) as usize..));
    }
    parts
}

/// One step of the walk over a manifest in NAR order.
enum Step<'m> {
    /// A node with its real name (`None` for the root).
    Node(Option<Vec<u8>>, &'m Node),
    EndDirectory,
}

/// Walk `manifest` in NAR order: entries by their real names, as `restore` emits them.
fn in_nar_order<'m>(
    manifest: &'m Manifest,
    mut step: impl FnMut(Step<'m>) -> Result<()>,
) -> Result<()> {
    step(Step::Node(None, &manifest.root))?;
    let mut stack: Vec<OpenDir<'m>> = Vec::new();
    if let Node::Directory(entries) = &manifest.root {
        stack.push((real_order(entries, manifest), 0));
    }
    while let Some((entries, next)) = stack.last_mut() {
        let Some((name, entry)) = entries.get(*next) else {
            stack.pop();
            step(Step::EndDirectory)?;
            continue;
        };
        *next += 1;
        let (name, entry) = (name.clone(), *entry);
        step(Step::Node(Some(name), &entry.node))?;
        if let Node::Directory(children) = &entry.node {
            stack.push((real_order(children, manifest), 0));
        }
    }
    Ok(())
}

/// The regular files ([`Node::File`]) of `manifest` in the order restore reads their contents,
/// for sources that fetch ahead of restore.
pub fn files_in_nar_order(manifest: &Manifest) -> Vec<&Node> {
    let mut files = Vec::new();
    in_nar_order(manifest, |step| {
        if let Step::Node(_, node @ Node::File { .. }) = step {
            files.push(node);
        }
        Ok(())
    })
    .expect("collecting cannot fail");
    files
}

/// A directory being restored: its entries in real-name (NAR) order and the index of the next one.
type OpenDir<'m> = (Vec<(Vec<u8>, &'m Entry)>, usize);

/// A directory's entries with their real names, sorted as the NAR has them.
fn real_order<'m>(entries: &'m [Entry], manifest: &Manifest) -> Vec<(Vec<u8>, &'m Entry)> {
    let mut out: Vec<_> = entries
        .iter()
        .map(|e| (apply_all(&e.name, &e.name_patches, &manifest.refs), e))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Objects kept in memory: a [`ContentSink`] and [`ContentSource`] for tests, tools and small jobs.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    pub objects: HashMap<ContentDigest, Vec<u8>>,
    current: Vec<u8>,
}

impl ContentSink for MemoryStore {
    fn begin(&mut self, _: u64) -> io::Result<()> {
        self.current.clear();
        Ok(())
    }
    fn write(&mut self, normalized: &[u8]) -> io::Result<()> {
        self.current.extend_from_slice(normalized);
        Ok(())
    }
    fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
        self.objects
            .entry(*digest)
            .or_insert_with(|| std::mem::take(&mut self.current));
        Ok(())
    }
}

impl ContentSource for MemoryStore {
    fn open(&mut self, digest: &ContentDigest, _: u64) -> io::Result<Box<dyn Read + '_>> {
        match self.objects.get(digest) {
            Some(bytes) => Ok(Box::new(&bytes[..])),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("object {digest} missing"),
            )),
        }
    }
}
