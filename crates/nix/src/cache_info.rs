//! `nix-cache-info`: the file at a binary cache's root that names its store directory.
//!
//! `nix copy` writes just `StoreDir: /nix/store\n`; caches such as cache.nixos.org add
//! `WantMassQuery: 1` and `Priority: 40`. Nix reads it leniently (splits at the first `:`, trims the
//! value, treats any `WantMassQuery` other than `1` as false); this parser is stricter about values
//! so that a typo is reported instead of silently changing behaviour, and keeps unknown fields.

use std::fmt;

use crate::store_path::{StoreDir, StorePathError};

/// A parsed `nix-cache-info`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CacheInfo {
    /// The store the cache's paths belong to; Nix refuses a cache whose store differs from its own.
    pub store_dir: Option<StoreDir>,
    /// Whether clients may query many paths at once (`1` / `0`).
    pub want_mass_query: Option<bool>,
    /// Substituter priority; lower is preferred.
    pub priority: Option<u64>,
    /// Fields this crate does not interpret, in file order.
    pub extra: Vec<(String, String)>,
}

/// A `nix-cache-info` that does not parse, with the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nix-cache-info line {line}: {kind}")]
pub struct CacheInfoError {
    pub line: usize,
    pub kind: CacheInfoErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheInfoErrorKind {
    #[error("expected `Name: value`")]
    MissingSeparator,
    #[error("{0} appears more than once")]
    DuplicateField(&'static str),
    #[error("bad StoreDir: {0}")]
    BadStoreDir(StorePathError),
    #[error("WantMassQuery must be 0 or 1, not {0:?}")]
    BadBool(String),
    #[error("Priority is not a decimal number: {0:?}")]
    BadNumber(String),
}

impl CacheInfo {
    /// Parse the file; blank lines are ignored, a missing final newline is accepted.
    pub fn parse(text: &str) -> Result<CacheInfo, CacheInfoError> {
        let mut info = CacheInfo::default();
        for (index, line) in text.lines().enumerate() {
            let at = |kind| CacheInfoError {
                line: index + 1,
                kind,
            };
            if line.trim().is_empty() {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| at(CacheInfoErrorKind::MissingSeparator))?;
            let value = value.trim();
            match name {
                "StoreDir" => {
                    let dir =
                        StoreDir::new(value).map_err(|e| at(CacheInfoErrorKind::BadStoreDir(e)))?;
                    once(&mut info.store_dir, "StoreDir", dir).map_err(at)?;
                }
                "WantMassQuery" => {
                    let want = match value {
                        "1" => true,
                        "0" => false,
                        other => return Err(at(CacheInfoErrorKind::BadBool(other.to_owned()))),
                    };
                    once(&mut info.want_mass_query, "WantMassQuery", want).map_err(at)?;
                }
                "Priority" => {
                    let bad = || at(CacheInfoErrorKind::BadNumber(value.to_owned()));
                    if !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad());
                    }
                    let priority = value.parse().map_err(|_| bad())?;
                    once(&mut info.priority, "Priority", priority).map_err(at)?;
                }
                _ => info.extra.push((name.to_owned(), value.to_owned())),
            }
        }
        Ok(info)
    }
}

fn once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), CacheInfoErrorKind> {
    if slot.is_some() {
        return Err(CacheInfoErrorKind::DuplicateField(field));
    }
    *slot = Some(value);
    Ok(())
}

/// `StoreDir`, `WantMassQuery`, `Priority`, then unknown fields, one per line.
impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.store_dir {
            writeln!(f, "StoreDir: {dir}")?;
        }
        if let Some(want) = self.want_mass_query {
            writeln!(f, "WantMassQuery: {}", u8::from(want))?;
        }
        if let Some(priority) = self.priority {
            writeln!(f, "Priority: {priority}")?;
        }
        for (name, value) in &self.extra {
            writeln!(f, "{name}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_copy_and_cache_nixos_org_forms() {
        // What `nix copy --to file://…` (Nix 2.8) writes.
        let written = "StoreDir: /nix/store\n";
        let info = CacheInfo::parse(written).unwrap();
        assert_eq!(info.store_dir, Some(StoreDir::default()));
        assert_eq!(info.to_string(), written);
        let full = "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 40\nX-Extra: yes\n";
        let info = CacheInfo::parse(full).unwrap();
        assert_eq!(
            (info.want_mass_query, info.priority),
            (Some(true), Some(40))
        );
        assert_eq!(info.to_string(), full);
    }

    #[test]
    fn errors() {
        let err = |t: &str| CacheInfo::parse(t).unwrap_err();
        assert_eq!(err("StoreDir: /nix/store\nnope\n").line, 2);
        assert!(matches!(
            err("StoreDir: nix\n").kind,
            CacheInfoErrorKind::BadStoreDir(_)
        ));
        assert!(matches!(
            err("WantMassQuery: yes\n").kind,
            CacheInfoErrorKind::BadBool(_)
        ));
        assert!(matches!(
            err("Priority: -4\n").kind,
            CacheInfoErrorKind::BadNumber(_)
        ));
        assert!(matches!(
            err("Priority: 1\nPriority: 2\n").kind,
            CacheInfoErrorKind::DuplicateField("Priority")
        ));
    }
}
