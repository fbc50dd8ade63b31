//! Manifest + normalized contents + reference table → the exact original NAR (and/or a tree).

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Write};

use refstrip_nar::{Event, NarWriter};
use refstrip_nix::{Hash, HashingWriter};

use crate::error::{Result, StripError};
use crate::manifest::{ContentDigest, Entry, Manifest, Node};
use crate::patch::{apply_all, Patcher};
use crate::strip::ContentSink;

/// Where restore reads normalized contents from.
pub trait ContentSource {
    /// A reader over the normalized contents of object `digest`, which should be `size` bytes long.
    fn open(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Box<dyn Read + '_>>;
}

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
    let tripped = Cell::new(false);
    let out = BudgetWriter {
        inner: nar_out,
        left: manifest.nar_size,
        tripped: &tripped,
    };
    restore_within(manifest, source, out, visitor).map_err(|e| {
        if tripped.get() {
            StripError::OverBudget {
                what: "NAR bytes",
                limit: manifest.nar_size,
            }
        } else {
            e
        }
    })
}

/// Refuses, before passing anything on, a write that would take the total past `left`.
struct BudgetWriter<'a, W> {
    inner: W,
    left: u64,
    tripped: &'a Cell<bool>,
}

impl<W: Write> Write for BudgetWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.tripped.set(true);
            return Err(io::Error::other("restored NAR would exceed its NarSize"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn restore_within<W: Write>(
    manifest: &Manifest,
    source: &mut dyn ContentSource,
    nar_out: BudgetWriter<'_, W>,
    visitor: &mut dyn RestoreVisitor,
) -> Result<NarDigest> {
    let mut w = NarWriter::new(HashingWriter::new(nar_out));
    let mut nodes_left = manifest.max_nodes();
    let mut buf = vec![0u8; 256 * 1024];
    let mut emit = |w: &mut NarWriter<_>,
                    visitor: &mut dyn RestoreVisitor,
                    name: Option<Vec<u8>>,
                    node: &Node|
     -> Result<()> {
        nodes_left = nodes_left.checked_sub(1).ok_or(StripError::OverBudget {
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
        w.event(&event)?;
        visitor.event(&event)?;
        if let Node::File {
            size,
            digest,
            patches,
            ..
        } = node
        {
            let reused = patches.is_empty() && visitor.unpatched(digest)?;
            let mut reader = source.open(digest, *size)?;
            let mut patcher = Patcher::new(patches, &manifest.refs);
            let mut done = 0u64;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if done + n as u64 > *size {
                    return Err(StripError::ObjectSize {
                        digest: digest.to_hex(),
                        expected: *size,
                        actual: done + n as u64,
                    });
                }
                patcher.apply(&mut buf[..n]);
                w.write_contents(&buf[..n])?;
                if !reused {
                    visitor.contents(&buf[..n])?;
                }
                done += n as u64;
            }
            if done != *size {
                return Err(StripError::ObjectSize {
                    digest: digest.to_hex(),
                    expected: *size,
                    actual: done,
                });
            }
        }
        Ok(())
    };

    emit(&mut w, visitor, None, &manifest.root)?;
    let mut stack: Vec<OpenDir<'_>> = Vec::new();
    if let Node::Directory(entries) = &manifest.root {
        stack.push((real_order(entries, manifest), 0));
    }
    while let Some((entries, next)) = stack.last_mut() {
        let Some((name, entry)) = entries.get(*next) else {
            w.end_directory()?;
            visitor.event(&Event::EndDirectory)?;
            stack.pop();
            continue;
        };
        *next += 1;
        let (name, entry) = (name.clone(), *entry);
        emit(&mut w, visitor, Some(name), &entry.node)?;
        if let Node::Directory(children) = &entry.node {
            stack.push((real_order(children, manifest), 0));
        }
    }

    let size = w.offset();
    let (sha256, _, mut inner) = w.finish()?.finish();
    inner.flush()?;
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
