//! The few nix.conf settings refstrip follows, read as Nix reads them: `name = value` lines, `#`
//! comments, a later line overriding an earlier one, `extra-trusted-public-keys` appending.

use std::path::{Path, PathBuf};

/// Nix's built-in `trusted-public-keys`, used when nix.conf sets none.
pub const NIX_DEFAULT_KEYS: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// nix.conf's settings, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NixConf {
    /// Where they were read from (for messages).
    pub path: PathBuf,
    pub settings: Vec<(String, String)>,
}

impl NixConf {
    /// `$NIX_CONF_DIR/nix.conf`, else `/etc/nix/nix.conf`; a missing file sets nothing.
    pub fn read_default() -> std::io::Result<NixConf> {
        let dir = std::env::var_os("NIX_CONF_DIR")
            .map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
        NixConf::read(&dir.join("nix.conf"))
    }

    pub fn read(path: &Path) -> std::io::Result<NixConf> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(NixConf::parse(path, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NixConf {
                path: path.to_path_buf(),
                settings: Vec::new(),
            }),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )),
        }
    }

    pub fn parse(path: &Path, text: &str) -> NixConf {
        let settings = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split('#').next().unwrap_or_default().split_once('=')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect();
        NixConf {
            path: path.to_path_buf(),
            settings,
        }
    }

    /// `trusted-public-keys` (Nix's default when unset) plus `extra-trusted-public-keys`, and a
    /// phrase saying where they came from.
    pub fn trusted_public_keys(&self) -> (String, String) {
        let own = self
            .settings
            .iter()
            .rev()
            .find(|(k, _)| k == "trusted-public-keys");
        let extra: Vec<&str> = self
            .settings
            .iter()
            .filter(|(k, _)| k == "extra-trusted-public-keys")
            .map(|(_, v)| v.as_str())
            .collect();
        let source = match own.is_some() || !extra.is_empty() {
            true => self.path.display().to_string(),
            false => format!(
                "Nix's default ({} sets no trusted-public-keys)",
                self.path.display()
            ),
        };
        let mut all = own.map_or(NIX_DEFAULT_KEYS.to_owned(), |(_, v)| v.clone());
        for e in extra {
            all.push(' ');
            all.push_str(e);
        }
        (all, source)
    }

    /// Whether a boolean setting is `true` (its last occurrence wins).
    pub fn is_true(&self, name: &str) -> bool {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .is_some_and(|(_, v)| v == "true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_as_nix_reads_them() {
        let conf = NixConf::parse(
            Path::new("/etc/nix/nix.conf"),
            "# comment\nauto-optimise-store = false\ntrusted-public-keys = a:1 # a key\nauto-optimise-store = true\nextra-trusted-public-keys = b:2\n",
        );
        assert!(conf.is_true("auto-optimise-store"));
        assert!(!conf.is_true("sandbox"));
        assert_eq!(conf.trusted_public_keys().0, "a:1 b:2");
        let empty = NixConf::parse(Path::new("x"), "");
        let (keys, source) = empty.trusted_public_keys();
        assert_eq!(keys, NIX_DEFAULT_KEYS);
        assert!(source.contains("Nix's default"));
    }
}
