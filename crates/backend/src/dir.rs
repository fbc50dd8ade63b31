//! A store in a local directory: the embedded default.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{check_key, Backend};

/// Open `path` for reading if it is a regular file, with its size; `None` if it does not exist.
/// Opened non-blocking, so a FIFO planted in a store cannot hang the reader in `open`.
fn open_regular(path: &Path) -> io::Result<Option<(File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(Some((file, meta.len())))
}

pub(crate) fn too_large(what: &dyn std::fmt::Display, size: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: {size} bytes, more than the {limit} allowed"),
    )
}

/// A temporary file that will be published into the store: created with mode 0666 minus the
/// umask (0644 under the usual 022), as any program's new file is, instead of tempfile's 0600. A
/// store is often served as static files by a web server running as another user, which must be
/// able to read it; an operator who wants it private says so with the umask (077).
pub fn published_tempfile() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.permissions(fs::Permissions::from_mode(0o666));
    builder
}

/// The mode [`published_tempfile`] gives files: 0666 minus the process's umask, found once by
/// making such a file in `dir` (reading the umask means changing it, which is racy in a threaded
/// process).
fn published_file_mode(dir: &Path) -> io::Result<u32> {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(mode) = MODE.get() {
        return Ok(*mode);
    }
    let probe = published_tempfile().tempfile_in(dir)?;
    let mode = probe.as_file().metadata()?.permissions().mode() & 0o777;
    Ok(*MODE.get_or_init(|| mode))
}

/// The embedded default: a directory on the local filesystem.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store at `root`, as it is: nothing is created (reading never writes).
    pub fn open(root: &Path) -> Self {
        LocalDir {
            root: root.to_path_buf(),
        }
    }

    /// The store at `root`, with its directories created if missing (for writers).
    pub fn create(root: &Path) -> io::Result<Self> {
        for sub in ["packs", "paths", "shapes", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(LocalDir::open(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl Backend for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = published_tempfile().tempfile_in(self.scratch_dir())?;
        tmp.as_file().write_all(bytes)?;
        tmp.as_file().sync_all()?;
        let path = self.path(key)?;
        match tmp.persist(&path) {
            Ok(_) => Ok(()),
            // The first file of a directory the layout does not create (gc/condemned/).
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                e.file.persist(&path).map(drop).map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        let file = File::open(path)?;
        file.sync_all()?;
        // Scratch files may have been made private (tempfile's 0600): published, they are
        // readable as any new file is under the umask.
        file.set_permissions(fs::Permissions::from_mode(published_file_mode(
            &self.scratch_dir(),
        )?))?;
        fs::rename(path, self.path(key)?)
    }

    fn get(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let Some((file, size)) = open_regular(&path)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(too_large(&path.display(), size, limit));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // The file may grow between fstat and read; never read past the limit.
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(too_large(&path.display(), bytes.len() as u64, limit));
        }
        Ok(Some(bytes))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let path = self.path(key)?;
        let (mut f, size) = open_regular(&path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })?;
        // Lengths come from records, which a hostile store controls: check them against the file
        // before they reach the allocator.
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: range of {len} bytes at {offset} lies outside the file ({size} bytes)",
                    path.display()
                ),
            ));
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn will_read(&self, key: &str, ranges: &[(u64, u64)]) {
        let Ok(Some((file, _))) = self.path(key).and_then(|p| open_regular(&p)) else {
            return;
        };
        for &(offset, len) in ranges {
            let _ = rustix::fs::fadvise(
                &file,
                offset,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
        }
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(key)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (dir, name_prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.root.join(dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(name_prefix) && !name.starts_with('.') {
                out.push(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
        Ok(out)
    }

    fn list_modified(&self, prefix: &str) -> io::Result<Vec<(String, SystemTime)>> {
        let mut out = Vec::new();
        for key in self.list(prefix)? {
            match fs::metadata(self.path(&key)?) {
                Ok(m) => out.push((key, m.modified()?)),
                // Removed since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn set_modified(&self, key: &str, time: SystemTime) -> io::Result<bool> {
        File::options()
            .write(true)
            .open(self.path(key)?)?
            .set_modified(time)?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.sqlite")
    }
}
