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
/// The tree is built inside a fresh temporary directory beside `dest` and renamed into place only
/// once the whole archive has been read and validated, so a corrupt NAR leaves nothing behind.
/// The temporary directory is created with `mkdir` under a name nothing holds yet (`mkdtemp`
/// semantics: `EEXIST` means try another name), so cleanup only ever removes what this call made,
/// never a pre-existing directory or a symlink someone put at a predictable name. Entry names
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
    let tmp_dir = create_temp_dir(&parent, file_name.as_bytes())?;
    let tmp = tmp_dir.join("nar");

    let result = unpack_into(nar, &tmp).and_then(|count| {
        fs::rename(&tmp, dest)
            .map_err(NarError::at(dest))
            .map(|()| count)
    });
    // Everything under tmp_dir is ours: this call created it and only this call writes there.
    remove_tree(&tmp_dir);
    result
}

/// Create a new, private (0700) directory `.<name>.refstrip-unpack-<pid>-<n>` in `parent`, trying
/// further `n` while the name exists: `mkdir` fails on any existing entry, a symlink included, so
/// the directory returned is always one this process just made.
fn create_temp_dir(parent: &Path, name: &[u8]) -> Result<PathBuf, NarError> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0u32..1000 {
        let mut tmp_name = b".".to_vec();
        tmp_name.extend_from_slice(name);
        tmp_name.extend_from_slice(
            format!(
                ".refstrip-unpack-{}-{:x}",
                std::process::id(),
                nanos.wrapping_add(attempt)
            )
            .as_bytes(),
        );
        let tmp = parent.join(OsStr::from_bytes(&tmp_name));
        match fs::DirBuilder::new().mode(0o700).create(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(NarError::at(&tmp)(e)),
        }
    }
    Err(NarError::at(parent)(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary name for unpacking",
    )))
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
