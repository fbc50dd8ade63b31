use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::NarError;
use crate::read::{Event, NarReader};

/// Unpack a NAR into a new filesystem object at `dest`, as `nix-store --restore` does.
///
/// The tree is built under a temporary sibling of `dest` and renamed into place only once the
/// whole archive has been read and validated, so a corrupt NAR leaves nothing behind. Entry names
/// are validated by the reader (no `/`, `.`, `..`), files are created with `O_CREAT | O_EXCL`,
/// and directories only contain what this function made, so nothing is ever written outside `dest`
/// or through a symlink. Returns the number of filesystem objects created.
pub fn unpack<R: BufRead>(nar: &mut NarReader<R>, dest: &Path) -> Result<u64, NarError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(NarError::DestinationExists {
            path: dest.to_path_buf(),
        });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest.file_name().unwrap_or(OsStr::new("nar"));
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(file_name.as_bytes());
    tmp_name.extend_from_slice(format!(".refstrip-unpack-{}", std::process::id()).as_bytes());
    let tmp = parent.join(OsStr::from_bytes(&tmp_name));

    match unpack_into(nar, &tmp) {
        Ok(count) => {
            fs::rename(&tmp, dest).map_err(NarError::at(dest))?;
            Ok(count)
        }
        Err(e) => {
            remove_tree(&tmp);
            Err(e)
        }
    }
}

fn unpack_into<R: BufRead>(nar: &mut NarReader<R>, root: &Path) -> Result<u64, NarError> {
    let mut path = PathBuf::new();
    let mut count = 0u64;
    while let Some(event) = nar.next_event()? {
        if let Some(name) = event.name() {
            path.push(OsStr::from_bytes(name));
        } else if !matches!(event, Event::EndDirectory) {
            path = root.to_path_buf();
        }
        match event {
            Event::Directory { .. } => {
                fs::create_dir(&path).map_err(NarError::at(&path))?;
                count += 1;
                continue; // stays pushed until EndDirectory
            }
            Event::File { executable, .. } => {
                let mut file = OpenOptions::new()
                    .write(true)
                    // O_CREAT|O_EXCL: never opens an existing file and never follows a symlink.
                    .create_new(true)
                    .mode(0o666)
                    .open(&path)
                    .map_err(NarError::at(&path))?;
                loop {
                    let chunk = nar.content_chunk()?;
                    if chunk.is_empty() {
                        break;
                    }
                    file.write_all(chunk).map_err(NarError::at(&path))?;
                }
                if executable {
                    let mut perms = file.metadata().map_err(NarError::at(&path))?.permissions();
                    perms.set_mode(perms.mode() | 0o111);
                    file.set_permissions(perms).map_err(NarError::at(&path))?;
                }
            }
            Event::Symlink { ref target, .. } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                    .map_err(NarError::at(&path))?;
            }
            Event::EndDirectory => {}
        }
        count += !matches!(event, Event::EndDirectory) as u64;
        // Leave this node (or, after EndDirectory, the directory that just closed).
        path.pop();
    }
    Ok(count)
}

fn remove_tree(path: &Path) {
    let _ = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
}
