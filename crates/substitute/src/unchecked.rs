//! Reading a path's objects ahead of its restore, cut straight out of decoded pack blocks as
//! shared slices and without their per-object BLAKE3 check.
//!
//! Substitute may skip that check because the same pass checks the path's NarHash, which covers
//! every byte these objects contribute, and nothing leaves the pass before it: the tree is written
//! under a temporary name and registered only after the check. If the check fails, the caller
//! reads the path again through the checking layers (`Objects::of`), which find the bad object,
//! drop its block from memory and from the disk cache and fetch it anew, so a damaged copy is
//! healed, or refused, exactly as before. Objects from a near source (the local Nix store) are
//! checked by it as always; whole local files copied for large ones (`copy.rs`) are not, the
//! NarHash covers them too, and the checking layers read no such copy.
//!
//! The [`Feeder`] runs on a thread of its own, fetching and decompressing blocks while restore
//! patches and writes the previous pieces; [`FedSource`] is restore's end of it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};

use refstrip_cas::pack::Location;
use refstrip_cas::{chunks_of_file, Kind, ObjectId, CHUNK_THRESHOLD};
use refstrip_read::objects::{BlockKey, Decoded, FetchCounters, NearSource, PackBlocks};
use refstrip_read::PathRecord;
use refstrip_strip::{Bytes, ContentDigest, ContentSource, Node, Pieces};

use crate::copy::{copy_local, CopyCounters, LocalCopy, Mapping, WINDOW};

/// Where [`FedSource`] puts the copy of the local file restore is reading, for the tree
/// writer to take when it creates that file (both live on restore's thread).
pub type CopySlot = Rc<RefCell<Option<LocalCopy>>>;

/// Bytes of decoded blocks (and objects from the near source) that pieces handed out keep alive,
/// across every path being restored: what bounds memory whatever the store's layout, since one
/// small object keeps its whole block.
///
/// Only a [`Feeder`] waits for it, holding nothing of it meanwhile, and restore passes on what
/// it holds before it waits for a feeder (the empty piece of [`FedSource`]); everything else
/// that holds a share gives it back without waiting for a feeder, so a wait always ends.
pub struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
    cap: u64,
}

impl Budget {
    pub fn new(cap: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            cap,
        })
    }

    /// `n` bytes if they fit now, or if nothing is held (a block larger than the cap goes alone).
    fn try_take(self: &Arc<Self>, n: u64) -> Option<Ticket> {
        let mut used = self.used.lock().expect("poisoned");
        if *used > 0 && *used + n > self.cap {
            return None;
        }
        *used += n;
        Some(self.ticket(n))
    }

    /// `n` bytes, once they fit.
    fn take(self: &Arc<Self>, n: u64) -> Ticket {
        let mut used = self.used.lock().expect("poisoned");
        while *used > 0 && *used + n > self.cap {
            used = self.freed.wait(used).expect("poisoned");
        }
        *used += n;
        self.ticket(n)
    }

    fn ticket(self: &Arc<Self>, n: u64) -> Ticket {
        Ticket {
            budget: self.clone(),
            n,
        }
    }
}

/// Bytes taken from a [`Budget`], given back when dropped.
struct Ticket {
    budget: Arc<Budget>,
    n: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        *self.budget.used.lock().expect("poisoned") -= self.n;
        self.budget.freed.notify_all();
    }
}

/// Bytes in memory as the owner of the slices cut out of them, holding their share of the budget.
struct Held<T> {
    bytes: T,
    _ticket: Ticket,
}

impl AsRef<[u8]> for Held<Vec<u8>> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Held<Arc<Decoded>> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Held<Mapping> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.bytes()
    }
}

/// What a feeder sends: a file's pieces (after the copy of a local file with its contents, if
/// there is one), then its end.
pub enum Fed {
    Local(LocalCopy),
    Piece(Bytes),
    End,
    Failed(io::Error),
}

/// Bytes of pieces sent to restore at once: a handoff between threads costs two futex calls when
/// the other side waits, which per piece (a small file, a 64 KiB chunk) added up.
const FEED_BATCH: usize = 1 << 20;

/// Why feeding stopped early.
enum Stop {
    Failed(io::Error),
    /// Restore is gone (it failed): nobody to tell.
    Gone,
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(e)
    }
}

fn corrupt(id: &ObjectId, why: &str) -> Stop {
    Stop::Failed(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("object {id}: {why}"),
    ))
}

/// Where a feeder reads objects from and copies local files to.
pub struct Sources<'a> {
    pub packs: &'a PackBlocks,
    pub counters: &'a FetchCounters,
    /// Where to keep the chunk lists of the large files written (as read, or made from a delta's
    /// output), when the written paths are to be indexed: then the lists need not be read again.
    pub chunk_lists: Option<&'a Mutex<HashMap<ContentDigest, Vec<u8>>>>,
    pub near: Option<&'a dyn NearSource>,
    /// The store directory, where copies of local files are made.
    pub store: &'a File,
    pub copies: &'a CopyCounters,
    pub budget: Arc<Budget>,
}

/// Reads one path's file contents, in the order restore asks for them, and sends them on.
pub struct Feeder<'a> {
    record: &'a PathRecord,
    from: Sources<'a>,
    tx: SyncSender<Vec<Fed>>,
    batch: Vec<Fed>,
    bytes: usize,
    /// The block the last object came from (consecutive objects usually share one), and the
    /// range of it that the pieces since are: adjacent chunks of a file become one piece.
    block: Option<(BlockKey, Bytes)>,
    run: Option<Range<usize>>,
}

impl<'a> Feeder<'a> {
    pub fn new(record: &'a PathRecord, from: Sources<'a>, tx: SyncSender<Vec<Fed>>) -> Self {
        Feeder {
            record,
            from,
            tx,
            batch: Vec::new(),
            bytes: 0,
            block: None,
            run: None,
        }
    }

    /// Send the contents of `files` ([`Node::File`]s) in restore's order.
    pub fn run(mut self, files: &[&Node]) {
        for file in files {
            match self.file(file) {
                Ok(()) => self.batch.push(Fed::End),
                Err(Stop::Failed(e)) => {
                    self.batch.push(Fed::Failed(e));
                    break;
                }
                Err(Stop::Gone) => return,
            }
        }
        let _ = self.flush();
    }

    fn file(&mut self, file: &Node) -> Result<(), Stop> {
        let Node::File {
            digest,
            size,
            executable,
            patches,
        } = file
        else {
            return Ok(());
        };
        let size = *size;
        if let Some(near) = self.from.near {
            let id = refstrip_cas::file_object(digest, size);
            // A delta's output is the whole file in memory: its share of the budget is taken
            // first, and only when an offer's base is near (which needs the object table only if
            // the file itself is not near).
            let usable = !near.may_have(&id)
                && self
                    .record
                    .objects
                    .table()
                    .is_ok_and(|t| refstrip_read::delta::usable(t, &id, near).is_some());
            if usable {
                self.end_run()?;
                let ticket = self.take(size)?;
                let counters = Some(self.from.counters);
                let rebuilt = refstrip_read::delta::rebuild(
                    self.record,
                    &id,
                    near,
                    self.from.packs,
                    counters,
                );
                if let Some(bytes) = rebuilt {
                    if size > CHUNK_THRESHOLD as u64 {
                        self.keep_chunk_list(digest, || refstrip_cas::chunk_list_of(&bytes));
                    }
                    self.push(Bytes::from_owner(Held {
                        bytes,
                        _ticket: ticket,
                    }))?;
                    return self.end_run();
                }
            }
        }
        if size <= CHUNK_THRESHOLD as u64 {
            self.object(&ObjectId::new(Kind::Blob, *digest))?;
            return self.end_run();
        }
        let id = ObjectId::new(Kind::ChunkList, *digest);
        if let Some(local) = self.from.near.and_then(|near| near.file(&id)) {
            let mode = if *executable { 0o555 } else { 0o444 };
            if let Some(copy) = copy_local(self.from.store, &local, mode, patches, self.from.copies)
            {
                return self.copied(copy, size);
            }
        }
        let list = self.bytes_of(&id)?;
        let chunks = chunks_of_file(&list, size).map_err(|why| corrupt(&id, &why))?;
        for (chunk, len) in chunks {
            let id = ObjectId::new(Kind::Blob, chunk);
            if self.object(&id)? != len {
                return Err(corrupt(&id, "a chunk has the wrong size"));
            }
        }
        self.keep_chunk_list(digest, || list.to_vec());
        self.end_run()
    }

    fn keep_chunk_list(&self, file: &ContentDigest, list: impl FnOnce() -> Vec<u8>) {
        if let Some(lists) = self.from.chunk_lists {
            lists.lock().expect("poisoned").insert(*file, list());
        }
    }

    /// Object `id` as the file's next piece; returns its size.
    fn object(&mut self, id: &ObjectId) -> Result<u64, Stop> {
        if let Some(near) = self.from.near {
            if let Some(bytes) = near.object(id).map_err(io::Error::from)? {
                self.end_run()?;
                let size = bytes.len() as u64;
                let ticket = self.take(size)?;
                self.push(Bytes::from_owner(Held {
                    bytes,
                    _ticket: ticket,
                }))?;
                return Ok(size);
            }
        }
        let (pack, loc) = self.locate(id)?;
        let key = BlockKey::of(pack, loc);
        if self.block.as_ref().is_none_or(|(k, _)| *k != key) {
            self.end_run()?;
            // Let go of the last block before waiting for the budget (see `Budget`).
            self.block = None;
            let ticket = self.take(key.raw_len)?;
            let block = Bytes::from_owner(Held {
                bytes: self.from.packs.block(&key)?,
                _ticket: ticket,
            });
            self.block = Some((key, block));
        }
        let len = self.block.as_ref().expect("just set").1.len() as u64;
        let range = loc
            .offset_in_block
            .checked_add(loc.size)
            .filter(|end| *end <= len)
            .map(|end| loc.offset_in_block as usize..end as usize)
            .ok_or_else(|| corrupt(id, "lies outside its block"))?;
        match &mut self.run {
            Some(run) if run.end == range.start && run.len() < FEED_BATCH => run.end = range.end,
            _ => {
                self.end_run()?;
                self.run = Some(range);
            }
        }
        Ok(loc.size)
    }

    /// A file copied from the local store: the copy for the tree writer, then its bytes as the
    /// object's, mapped (see [`crate::copy`]: the path's NarHash check covers them).
    fn copied(&mut self, copy: LocalCopy, size: u64) -> Result<(), Stop> {
        let file = copy.file.try_clone()?;
        self.end_run()?;
        self.batch.push(Fed::Local(copy));
        let mut at = 0;
        while at < size {
            let end = (at + WINDOW).min(size);
            let ticket = self.take(end - at)?;
            self.push(Bytes::from_owner(Held {
                bytes: Mapping::new(&file, at..end)?,
                _ticket: ticket,
            }))?;
            at = end;
        }
        Ok(())
    }

    /// Where the store keeps `id` (the record's object table, read from its shape file the first
    /// time an object is not near by).
    fn locate(&self, id: &ObjectId) -> Result<(&'a str, &'a Location), Stop> {
        let objects = self
            .record
            .objects
            .map()
            .map_err(|why| Stop::from(io::Error::other(why)))?;
        let (pack, loc) = objects
            .get(id)
            .ok_or_else(|| corrupt(id, "not in the path's record"))?;
        Ok((pack.as_str(), loc))
    }

    /// A small object's bytes, which are not a piece of the file (a chunk list).
    fn bytes_of(&mut self, id: &ObjectId) -> Result<Bytes, Stop> {
        if let Some(near) = self.from.near {
            if let Some(bytes) = near.object(id).map_err(io::Error::from)? {
                return Ok(Bytes::from(bytes));
            }
        }
        let (pack, loc) = self.locate(id)?;
        let block = self.from.packs.block(&BlockKey::of(pack, loc))?;
        let start = loc.offset_in_block as usize;
        loc.offset_in_block
            .checked_add(loc.size)
            .and_then(|end| block.get(start..end as usize))
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| corrupt(id, "lies outside its block"))
    }

    /// Send the run of adjacent slices as one piece.
    fn end_run(&mut self) -> Result<(), Stop> {
        if let (Some(run), Some((_, block))) = (self.run.take(), &self.block) {
            let piece = block.slice(run);
            self.push(piece)?;
        }
        Ok(())
    }

    fn push(&mut self, piece: Bytes) -> Result<(), Stop> {
        self.bytes += piece.len();
        self.batch.push(Fed::Piece(piece));
        if self.bytes >= FEED_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.tx
            .send(std::mem::take(&mut self.batch))
            .map_err(|_| Stop::Gone)
    }

    /// `n` bytes of the budget, first sending what is batched if it has to wait for them.
    fn take(&mut self, n: u64) -> Result<Ticket, Stop> {
        if let Some(ticket) = self.from.budget.try_take(n) {
            return Ok(ticket);
        }
        self.flush()?;
        Ok(self.from.budget.take(n))
    }
}

/// The contents a [`Feeder`] sends, as restore's source: it must ask for them in the same order.
/// The copy of a local file goes into `copy`, where the tree writer takes it.
pub struct FedSource<'m> {
    rx: Receiver<Vec<Fed>>,
    received: std::vec::IntoIter<Fed>,
    files: std::slice::Iter<'m, &'m Node>,
    copy: CopySlot,
}

impl<'m> FedSource<'m> {
    pub fn new(rx: Receiver<Vec<Fed>>, files: &'m [&'m Node], copy: CopySlot) -> Self {
        FedSource {
            rx,
            received: Vec::new().into_iter(),
            files: files.iter(),
            copy,
        }
    }
}

impl ContentSource for FedSource<'_> {
    fn open(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Box<dyn io::Read + '_>> {
        let mut bytes = Vec::new();
        for piece in self.pieces(digest, size)? {
            bytes.extend_from_slice(&piece?);
        }
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn pieces(&mut self, digest: &ContentDigest, size: u64) -> io::Result<Pieces<'_>> {
        if !matches!(self.files.next(), Some(Node::File { digest: d, size: s, .. }) if d == digest && *s == size)
        {
            return Err(io::Error::other(format!(
                "object {digest} asked for out of the order it was read ahead in"
            )));
        }
        self.copy.borrow_mut().take();
        let mut told = false;
        Ok(Box::new(std::iter::from_fn(move || loop {
            match self.received.next() {
                Some(Fed::Local(copy)) => {
                    *self.copy.borrow_mut() = Some(copy);
                    continue;
                }
                Some(Fed::Piece(piece)) => return Some(Ok(piece)),
                Some(Fed::End) => return None,
                Some(Fed::Failed(e)) => return Some(Err(e)),
                None => {}
            }
            let batch = match self.rx.try_recv() {
                Err(TryRecvError::Empty) if !told => {
                    // About to wait: restore passes on what it holds first (see `Budget`).
                    told = true;
                    return Some(Ok(Bytes::new()));
                }
                Err(TryRecvError::Empty) => self.rx.recv().ok(),
                batch => batch.ok(),
            };
            told = false;
            match batch {
                Some(batch) => self.received = batch.into_iter(),
                None => return Some(Err(io::Error::other("the reading-ahead thread stopped"))),
            }
        })))
    }
}
