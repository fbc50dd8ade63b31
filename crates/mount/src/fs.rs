//! The FUSE side: lookups, attributes and listings answered from the inode table, file bytes
//! fetched through the object cache, verified and patched per read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use refstrip_cas::{chunks_of_file, Kind, ObjectId, ObjectRead, CHUNK_THRESHOLD};
use refstrip_read::objects::{FetchCounters, Objects, RecordObjects};
use refstrip_strip::{ContentDigest, Patcher};

use crate::tree::{FileNode, Inode, Tree};
use crate::Stats;

/// Nothing in the view ever changes, so the kernel may cache names and attributes for as long as
/// it likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A chunk of a large file: where it starts in the file, its digest and size.
type Chunks = Arc<Vec<(u64, ContentDigest, u64)>>;

pub struct LazyStore {
    pub(crate) tree: Tree,
    pub(crate) objects: Objects,
    /// Decoded chunk lists of the large files read so far, by inode.
    chunk_lists: Mutex<HashMap<u64, Chunks>>,
    pub(crate) record_bytes: u64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    errors: AtomicU64,
    stats_file: Option<PathBuf>,
    /// `fetched_bytes` when the stats file was last written.
    stats_written: AtomicU64,
}

impl LazyStore {
    pub(crate) fn new(
        tree: Tree,
        objects: Objects,
        record_bytes: u64,
        stats_file: Option<PathBuf>,
    ) -> LazyStore {
        LazyStore {
            tree,
            objects,
            chunk_lists: Mutex::new(HashMap::new()),
            record_bytes,
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stats_file,
            stats_written: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            paths: self.tree.paths.len() as u64,
            inodes: self.tree.inodes.len() as u64,
            record_bytes: self.record_bytes,
            fetched_bytes: load(&self.objects.counters.fetched_bytes),
            fetched_blocks: load(&self.objects.counters.fetched_blocks),
            reads: load(&self.reads),
            read_bytes: load(&self.read_bytes),
            errors: load(&self.errors),
        }
    }

    /// Write the stats file if anything was fetched since it was last written, or if `always`.
    pub(crate) fn write_stats(&self, always: bool) {
        let Some(path) = &self.stats_file else {
            return;
        };
        let fetched = FetchCounters::get(&self.objects.counters.fetched_bytes);
        if self.stats_written.swap(fetched, Ordering::Relaxed) == fetched && !always {
            return;
        }
        let write = || -> std::io::Result<()> {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(std::path::Path::new(".")))?;
            serde_json::to_writer(tmp.as_file(), &self.stats())?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            eprintln!("refstrip mount: writing {}: {e}", path.display());
        }
    }

    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        let (kind, perm, size, nlink) = match inode {
            Inode::Dir { .. } => (FileType::Directory, 0o555, 0, 2),
            Inode::File(f) => (
                FileType::RegularFile,
                if f.executable { 0o555 } else { 0o444 },
                f.size,
                1,
            ),
            Inode::Symlink { target } => (FileType::Symlink, 0o777, target.len() as u64, 1),
        };
        // Nix sets every store file's mtime to 1.
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// `len` restored bytes of `file` from `offset`: only the objects (chunks) the range touches
    /// are fetched, each checked against its BLAKE3 name, then the range is patched.
    fn read_range(
        &self,
        ino: u64,
        file: &FileNode,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let end = offset.saturating_add(len).min(file.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let record = &self.tree.paths[file.path];
        let mut objects = self.objects.of(record);
        let mut out = Vec::with_capacity((end - offset) as usize);
        if file.size <= CHUNK_THRESHOLD as u64 {
            let blob = objects
                .get(&ObjectId::new(Kind::Blob, file.digest))
                .map_err(|e| e.to_string())?;
            if blob.len() as u64 != file.size {
                return Err(format!(
                    "object has {} bytes, not {}",
                    blob.len(),
                    file.size
                ));
            }
            out.extend_from_slice(&blob[offset as usize..end as usize]);
        } else {
            let chunks = self.chunks(ino, file, &mut objects)?;
            let first = chunks.partition_point(|(start, _, size)| start + size <= offset);
            for (start, digest, size) in &chunks[first..] {
                if *start >= end {
                    break;
                }
                let chunk = objects
                    .get(&ObjectId::new(Kind::Blob, *digest))
                    .map_err(|e| e.to_string())?;
                if chunk.len() as u64 != *size {
                    return Err("a chunk has the wrong size".into());
                }
                let from = offset.max(*start) - start;
                let to = end.min(start + size) - start;
                out.extend_from_slice(&chunk[from as usize..to as usize]);
            }
        }
        Patcher::starting_at(&file.patches, &record.manifest.refs, offset).apply(&mut out);
        Ok(out)
    }

    /// The chunk list of a large file, decoded once and checked to add up to the file's size.
    fn chunks(
        &self,
        ino: u64,
        file: &FileNode,
        objects: &mut RecordObjects<'_>,
    ) -> Result<Chunks, String> {
        if let Some(c) = self.chunk_lists.lock().expect("poisoned").get(&ino) {
            return Ok(c.clone());
        }
        let list = objects
            .get(&ObjectId::new(Kind::ChunkList, file.digest))
            .map_err(|e| e.to_string())?;
        let list = chunks_of_file(&list, file.size)?;
        let mut start = 0u64;
        let mut chunks = Vec::with_capacity(list.len());
        for (digest, size) in list {
            chunks.push((start, digest, size));
            start += size;
        }
        let chunks = Arc::new(chunks);
        self.chunk_lists
            .lock()
            .expect("poisoned")
            .insert(ino, chunks.clone());
        Ok(chunks)
    }
}

/// What fuser owns while mounted; the mount handle keeps the other reference for statistics.
pub(crate) struct View(pub(crate) Arc<LazyStore>);

impl std::ops::Deref for View {
    type Target = LazyStore;
    fn deref(&self) -> &LazyStore {
        &self.0
    }
}

impl Filesystem for View {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(Inode::Dir { entries, .. }) = self.tree.get(parent.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let name = name.as_bytes();
        match entries.binary_search_by(|(n, _)| n.as_slice().cmp(name)) {
            Ok(i) => {
                let ino = entries[i].1;
                match self.tree.get(ino) {
                    Some(inode) => reply.entry(&TTL, &self.attr(ino, inode), Generation(0)),
                    None => reply.error(Errno::EIO),
                }
            }
            Err(_) => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.get(ino.0) {
            Some(inode) => reply.attr(&TTL, &self.attr(ino.0, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.get(ino.0) {
            Some(Inode::Symlink { target }) => reply.data(target),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.get(ino.0) {
            // Contents never change: pages read once stay valid across opens.
            Some(Inode::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Some(Inode::Dir { .. }) => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(Inode::File(file)) = self.tree.get(ino.0) else {
            return reply.error(Errno::EINVAL);
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.read_range(ino.0, file, offset, size.into());
        if let Ok(bytes) = &result {
            self.read_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        // Before replying, so that whoever waits for the read sees what it cost.
        self.write_stats(false);
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => {
                let path = &self.tree.paths[file.path];
                eprintln!(
                    "refstrip mount: EIO reading {size} bytes at {offset} of inode {} in {}: {e}",
                    ino.0,
                    String::from_utf8_lossy(path.manifest.basename())
                );
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(Inode::Dir { parent, entries }) = self.tree.get(ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(b".".as_slice(), ino.0), (b"..".as_slice(), *parent)];
        let all = dots
            .into_iter()
            .chain(entries.iter().map(|(n, i)| (n.as_slice(), *i)));
        // An entry's offset is the position of the next one, so a listing resumes after it.
        for (position, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match self.tree.get(child) {
                Some(Inode::Dir { .. }) => FileType::Directory,
                Some(Inode::File(_)) => FileType::RegularFile,
                Some(Inode::Symlink { .. }) => FileType::Symlink,
                None => continue,
            };
            if reply.add(
                INodeNo(child),
                position as u64 + 1,
                kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }
}
