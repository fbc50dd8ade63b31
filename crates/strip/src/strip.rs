//! NAR → normalized tree + patch lists + normalized contents.

use std::io::{self, BufRead};

use refstrip_nar::{Event, NarReader};
use refstrip_nix::HashingReader;

use crate::elf::{build_id_range, HEAD_LEN};
use crate::error::Result;
use crate::manifest::{ContentDigest, Entry, Node};
use crate::patch::{Patch, PatchKind};
use crate::refs::RefTable;
use crate::scan::Scanner;

/// Where normalized file contents go (a bundle, a chunk store, or nowhere). Called once per
/// regular file: `begin`, `write` for each chunk in order, then `end` with the BLAKE3 digest of
/// everything written, so a content-addressed sink can keep or drop what it received.
pub trait ContentSink {
    fn begin(&mut self, size: u64) -> io::Result<()>;
    fn write(&mut self, normalized: &[u8]) -> io::Result<()>;
    fn end(&mut self, digest: &ContentDigest) -> io::Result<()>;
}

/// A sink that keeps nothing, for measuring and for tests that only need the tree.
impl ContentSink for io::Sink {
    fn begin(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: &ContentDigest) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct StripOptions {
    /// Zero ELF `.note.gnu.build-id` descriptors (kept as literal patches).
    pub normalize_build_id: bool,
}

impl Default for StripOptions {
    fn default() -> Self {
        StripOptions {
            normalize_build_id: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StripStats {
    pub files: u64,
    pub symlinks: u64,
    pub directories: u64,
    /// Regular files whose normalized contents differ from the original.
    pub patched_files: u64,
    /// Reference occurrences replaced (in contents, names and targets).
    pub ref_patches: u64,
    /// Literal patches (derived fields such as build-ids).
    pub literal_patches: u64,
    /// Bytes of regular-file contents.
    pub content_bytes: u64,
}

/// The result of [`strip`]: the normalized tree and facts about the NAR that was read.
#[derive(Debug, Clone)]
pub struct Stripped {
    pub root: Node,
    /// SHA-256 and size of the NAR as read, to check against the narinfo's NarHash and NarSize.
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    pub stats: StripStats,
}

/// Strip one NAR: normalize every regular file's contents into `sink` and return the tree.
///
/// The NAR is read exactly once, as a stream; memory holds the tree, one file's first
/// [`HEAD_LEN`] bytes and a scanning window, whatever the file sizes.
pub fn strip<R: BufRead>(
    nar: R,
    refs: &RefTable,
    options: &StripOptions,
    sink: &mut dyn ContentSink,
) -> Result<Stripped> {
    let scanner = Scanner::new(refs);
    // The reader hashes exactly the bytes the NAR parser consumes: the NarHash, checked in this pass.
    let mut reader = NarReader::new(HashingReader::new(nar));
    let mut stats = StripStats::default();
    let mut open: Vec<OpenDir> = Vec::new();
    let mut root = None;

    while let Some(event) = reader.next_event()? {
        let named = event.name().map(|n| {
            let (normalized, patches) = scanner.strip_bytes(n);
            stats.ref_patches += patches.len() as u64;
            (normalized, patches)
        });
        let node = match event {
            Event::Directory { .. } => {
                stats.directories += 1;
                open.push((named, Vec::new()));
                continue;
            }
            Event::EndDirectory => {
                let (name, mut entries) = open.pop().expect("reader balances directories");
                // Normalized order; the stable sort keeps archive order among equal normalized names.
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                attach(&mut open, &mut root, name, Node::Directory(entries));
                continue;
            }
            Event::Symlink { target, .. } => {
                stats.symlinks += 1;
                let (target, patches) = scanner.strip_bytes(&target);
                stats.ref_patches += patches.len() as u64;
                Node::Symlink { target, patches }
            }
            Event::File {
                executable, size, ..
            } => {
                stats.files += 1;
                stats.content_bytes += size;
                let (digest, patches) = strip_file(&mut reader, &scanner, options, size, sink)?;
                for p in &patches {
                    match p.kind {
                        PatchKind::Ref(_) => stats.ref_patches += 1,
                        PatchKind::Literal(_) => stats.literal_patches += 1,
                    }
                }
                stats.patched_files += !patches.is_empty() as u64;
                Node::File {
                    executable,
                    size,
                    digest,
                    patches,
                }
            }
        };
        attach(&mut open, &mut root, named, node);
    }
    let nar_size = reader.offset();
    let (nar_hash, _, _) = reader.into_inner().finish();
    Ok(Stripped {
        root: root.expect("a complete NAR has a root"),
        nar_hash: *nar_hash.as_bytes(),
        nar_size,
        stats,
    })
}

/// An open directory: its normalized name and name patches (none for the root), and its entries so far.
type OpenDir = (Option<(Vec<u8>, Vec<Patch>)>, Vec<Entry>);

/// Put a finished node into its parent directory, or make it the root.
fn attach(
    open: &mut [OpenDir],
    root: &mut Option<Node>,
    named: Option<(Vec<u8>, Vec<Patch>)>,
    node: Node,
) {
    match (open.last_mut(), named) {
        (Some((_, entries)), Some((name, name_patches))) => entries.push(Entry {
            name,
            name_patches,
            node,
        }),
        _ => *root = Some(node),
    }
}

/// Largest piece of file contents handed to the scanner at once.
const FEED_MAX: usize = 256 * 1024;

/// Stream one file's contents through the scanner (and, for its head, the ELF normalizer) into the
/// sink, hashing the normalized bytes with BLAKE3.
fn strip_file<R: BufRead>(
    reader: &mut NarReader<R>,
    scanner: &Scanner,
    options: &StripOptions,
    size: u64,
    sink: &mut dyn ContentSink,
) -> Result<(ContentDigest, Vec<Patch>)> {
    sink.begin(size)?;
    let mut hasher = blake3::Hasher::new();
    let mut stream = scanner.stream();
    // Normalized bytes are held here until the head is complete (or the file ends), so derived
    // fields in it can be normalized before anything reaches the sink.
    let mut head = Vec::new();
    let mut head_pending = options.normalize_build_id;
    let mut literal = None;
    let mut at_end = false;
    while !at_end {
        let chunk = reader.content_chunk()?;
        at_end = chunk.is_empty();
        // An in-memory reader hands out whole files; feeding the scanner bounded pieces keeps its
        // window (which copies) small and in cache.
        let pieces = chunk
            .chunks(FEED_MAX)
            .map(Some)
            .chain(at_end.then_some(None));
        for piece in pieces {
            let out = match piece {
                Some(piece) => stream.feed(piece),
                None => stream.finish(),
            };
            if !head_pending {
                hasher.update(out);
                sink.write(out)?;
                continue;
            }
            head.extend_from_slice(out);
            if head.len() >= HEAD_LEN || piece.is_none() {
                literal = normalize_head(&mut head, stream.patches());
                hasher.update(&head);
                sink.write(&head)?;
                head = Vec::new();
                head_pending = false;
            }
        }
    }
    let mut patches = stream.into_patches();
    if let Some(literal) = literal {
        let at = patches.partition_point(|p| p.offset < literal.offset);
        patches.insert(at, literal);
    }
    let digest = ContentDigest(*hasher.finalize().as_bytes());
    sink.end(&digest)?;
    Ok((digest, patches))
}

/// Zero the ELF build-id in a file's head, returning the literal patch that restores it. A build-id
/// that overlaps a replaced reference is left alone (patches never overlap).
fn normalize_head(head: &mut [u8], ref_patches: &[Patch]) -> Option<Patch> {
    // Only the first HEAD_LEN bytes count (spec §2.2), however long the first piece read was.
    let range = build_id_range(&head[..head.len().min(HEAD_LEN)])?;
    let (start, end) = (range.start as u64, range.end as u64);
    if ref_patches
        .iter()
        .any(|p| p.offset < end && p.end() > start)
    {
        return None;
    }
    let original = head[range.clone()].to_vec();
    head[range].fill(0);
    Some(Patch {
        offset: start,
        kind: PatchKind::Literal(original),
    })
}
