use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::NarError;
use crate::write::NarWriter;

/// Serialise the tree at `path` as a NAR into `out`, byte for byte as `nix-store --dump` does:
/// entries sorted bytewise, a regular file is executable when its owner-execute bit is set,
/// symlinks are stored by target and never followed. Returns the NAR size.
pub fn dump<W: Write>(path: &Path, out: W) -> Result<u64, NarError> {
    let mut w = NarWriter::new(out);
    let mut buf = vec![0u8; 1 << 20];
    dump_node(path, None, &mut w, &mut buf)?;
    let size = w.offset();
    w.finish()?;
    Ok(size)
}

fn dump_node<W: Write>(
    path: &Path,
    name: Option<&[u8]>,
    w: &mut NarWriter<W>,
    buf: &mut [u8],
) -> Result<(), NarError> {
    let meta = fs::symlink_metadata(path).map_err(NarError::at(path))?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(NarError::at(path))?;
        w.symlink(name, target.as_os_str().as_bytes())
    } else if file_type.is_file() {
        let mut file = File::open(path).map_err(NarError::at(path))?;
        let size = meta.len();
        w.file(name, meta.permissions().mode() & 0o100 != 0, size)?;
        let mut copied = 0u64;
        loop {
            let n = file.read(buf).map_err(NarError::at(path))?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > size {
                break;
            }
            w.write_contents(&buf[..n])?;
        }
        if copied != size {
            // The file changed while it was read: a NAR of it would be a lie.
            return Err(NarError::SizeMismatch {
                declared: size,
                written: copied,
            });
        }
        Ok(())
    } else if file_type.is_dir() {
        w.directory(name)?;
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(NarError::at(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(NarError::at(path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for entry in names {
            dump_node(&path.join(&entry), Some(entry.as_bytes()), w, buf)?;
        }
        w.end_directory()
    } else {
        Err(NarError::UnsupportedFileType {
            path: path.to_path_buf(),
        })
    }
}
