//! What a measurement reads: binary caches and Nix stores (through `refstrip-source`) and
//! normalized refstrip stores, all seen as a [`NarSource`]; and which paths to read from them.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use refstrip_cas::FileSource;
use refstrip_nix::store_path::package_of;
use refstrip_nix::{NarInfo, StoreDir, StorePath};
use refstrip_read::objects::{ObjectOptions, Objects};
use refstrip_read::{ReadError, StoreReader};
use refstrip_source::{open_source, NarSource, SourceError};

use crate::SavingsError;

/// Open `spec` as a normalized store (a directory with `paths/` and `packs/`) or else as anything
/// [`open_source`] accepts (binary cache directory or URL, local Nix store root).
pub fn open_input(spec: &str, store_dir: StoreDir) -> Result<Box<dyn NarSource>, SavingsError> {
    let dir = Path::new(spec.strip_prefix("file://").unwrap_or(spec));
    if dir.join("paths").is_dir() && dir.join("packs").is_dir() {
        let store = StoreReader::open(spec)
            .map_err(|e| SourceError::Invalid {
                what: spec.into(),
                why: e.to_string(),
            })?
            .expect_store_dir(store_dir.as_str());
        let objects =
            store
                .objects(&ObjectOptions::default())
                .map_err(|source| SourceError::Io {
                    what: spec.into(),
                    error: source,
                })?;
        return Ok(Box::new(StoreSource {
            store,
            objects: Arc::new(objects),
            store_dir,
        }));
    }
    Ok(open_source(spec, store_dir)?)
}

/// A normalized refstrip store read back as NARs: every NAR is restored (and its SHA-256 checked
/// against the manifest) on the fly.
pub struct StoreSource {
    store: StoreReader,
    objects: Arc<Objects>,
    store_dir: StoreDir,
}

fn read_err(e: ReadError) -> SourceError {
    match e {
        ReadError::NotFound { hash_part, .. } => SourceError::NotFound(hash_part),
        e => SourceError::Invalid {
            what: "normalized store".into(),
            why: e.to_string(),
        },
    }
}

impl NarSource for StoreSource {
    fn describe(&self) -> String {
        format!("normalized store {}", self.store.describe())
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn list(&self) -> Result<Vec<StorePath>, SourceError> {
        let mut paths = self
            .store
            .list_paths()
            .map_err(read_err)?
            .iter()
            .map(|h| {
                let path = self.store.record(h).map_err(read_err)?.0.store_path();
                self.store_dir
                    .parse_path(&path)
                    .map_err(|e| SourceError::Invalid {
                        what: path,
                        why: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        paths.sort_by_key(|p| p.to_string());
        Ok(paths)
    }

    fn narinfo(&self, path: &StorePath) -> Result<NarInfo, SourceError> {
        let record = match self.store.try_record(path.hash_part()).map_err(read_err)? {
            Some((record, _)) => record,
            None => return Err(SourceError::NotFound(path.to_string())),
        };
        let info =
            refstrip_read::pathinfo::narinfo(&record.manifest, "local".into(), None, None, None)
                .map_err(|e| SourceError::Invalid {
                    what: path.to_string(),
                    why: e.to_string(),
                })?;
        if info.store_path != *path {
            return Err(SourceError::Invalid {
                what: path.to_string(),
                why: format!("its record is for {}", info.store_path),
            });
        }
        Ok(info)
    }

    fn nar(&self, info: &NarInfo) -> Result<Box<dyn BufRead + Send>, SourceError> {
        let (record, _) = self
            .store
            .record(info.store_path.hash_part())
            .map_err(read_err)?;
        let objects = self.objects.clone();
        let (reader, writer) = io::pipe().map_err(|source| SourceError::Io {
            what: "pipe".into(),
            error: source,
        })?;
        // As for a local Nix store: a failed restore closes the pipe early and the reader's NarHash
        // check fails, and the reason is printed here.
        std::thread::spawn(move || {
            let mut objects = objects.of(&record);
            let mut source = FileSource::new(&mut objects);
            let out = io::BufWriter::with_capacity(1 << 20, writer);
            if let Err(e) = refstrip_strip::restore_nar(&record.manifest, &mut source, out) {
                eprintln!(
                    "refstrip: restoring {}: {e}",
                    String::from_utf8_lossy(record.manifest.basename())
                );
            }
        });
        Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
    }
}

/// The paths of `source` that `spec` names: the store path itself (`/nix/store/<hash>-<name>` or
/// `<hash>-<name>`) if the source has it, otherwise every path with the same name, otherwise every
/// path with the same package name and output (`lua-5.4.4-dev` for `lua-5.4.7-dev`), so one spec
/// names "the same package" in two generations, across a version bump too.
pub fn resolve(source: &dyn NarSource, spec: &str) -> Result<Vec<StorePath>, SavingsError> {
    let dir = source.store_dir();
    let exact = dir
        .parse_path(spec)
        .or_else(|_| StorePath::from_base_name(spec))
        .ok();
    let name = match &exact {
        Some(path) => match source.narinfo(path) {
            Ok(_) => return Ok(vec![path.clone()]),
            Err(SourceError::NotFound(_)) => path.name().to_string(),
            Err(e) => return Err(e.into()),
        },
        None => spec.to_string(),
    };
    if name.is_empty() || name.contains('/') {
        return Err(SavingsError::invalid(
            spec,
            "neither a store path nor a store path name",
        ));
    }
    let all = source.list()?;
    let mut found: Vec<StorePath> = all.iter().filter(|p| p.name() == name).cloned().collect();
    if found.is_empty() {
        let key = package_of(&name);
        found = all
            .into_iter()
            .filter(|p| package_of(p.name()) == key)
            .collect();
    }
    found.sort_by(|a, b| a.base_name().cmp(b.base_name()));
    if found.is_empty() {
        return Err(SavingsError::invalid(
            spec,
            format!(
                "no path named {name} (nor of package {}) in {}",
                package_of(&name).0,
                source.describe()
            ),
        ));
    }
    Ok(found)
}

/// The narinfos of the closure of `roots` (see [`resolve`]), or of every path of the source when
/// `roots` is empty; largest NAR first, so parallel workers finish together.
pub fn closure(source: &dyn NarSource, roots: &[String]) -> Result<Vec<NarInfo>, SavingsError> {
    let mut infos = BTreeMap::new();
    if roots.is_empty() {
        for info in source.list_where(&|_| true)? {
            infos.insert(info.store_path.base_name().to_string(), info);
        }
    } else {
        let mut todo = Vec::new();
        for root in roots {
            todo.extend(resolve(source, root)?);
        }
        let mut seen = HashSet::new();
        while let Some(path) = todo.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let info = source.narinfo(&path)?;
            todo.extend(info.references.iter().cloned());
            infos.insert(path.base_name().to_string(), info);
        }
    }
    let mut out: Vec<NarInfo> = infos.into_values().collect();
    out.sort_by_key(|i| std::cmp::Reverse(i.nar_size));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_keys_ignore_versions_but_not_outputs() {
        assert_eq!(package_of("lua-5.4.7"), ("lua", ""));
        assert_eq!(package_of("lua-5.4.4-dev"), ("lua", "dev"));
        assert_eq!(package_of("lua-zlib-1.3"), ("lua-zlib", ""));
        assert_eq!(
            package_of("refstrip-corpus-small-env"),
            ("refstrip-corpus-small-env", "")
        );
        assert_eq!(package_of("pcre2-10.42-2"), ("pcre2", ""));
    }
}
