//! `refstrip narinfo …`: check and inspect `.narinfo` files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use refstrip_nix::{is_hash_part, signature, Deriver, NarInfo, PublicKey, StoreDir};

/// Nix's built-in `trusted-public-keys` when nix.conf does not set it.
#[derive(Subcommand)]
pub enum NarinfoCommand {
    /// Check that each FILE carries a valid signature by a trusted key.
    ///
    /// A narinfo is valid when at least one of its Sig lines verifies with a trusted key of the
    /// same name, over the fingerprint "1;<store path>;<NarHash>;<NarSize>;<references>", exactly
    /// as Nix checks substitutes. A file named `<hash part>.narinfo` must describe that hash part.
    /// Prints one line per file naming the key that verified it, and exits non-zero if any file
    /// fails to parse or verify.
    ///
    /// Trusted keys come from --trusted-public-keys; without it, from `trusted-public-keys` and
    /// `extra-trusted-public-keys` in $NIX_CONF_DIR/nix.conf (default /etc/nix/nix.conf), falling
    /// back to Nix's built-in default (cache.nixos.org-1) as Nix does.
    Verify {
        /// .narinfo files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Space-separated `name:base64` public keys, the format of nix.conf's trusted-public-keys
        /// (e.g. the contents of the public key file `nix-store --generate-binary-cache-key` wrote).
        #[arg(long, value_name = "KEYS")]
        trusted_public_keys: Option<String>,
        /// The store directory the narinfo's paths live in.
        #[arg(long, value_name = "DIR", default_value = "/nix/store")]
        store_dir: String,
    },
    /// Print the parsed fields of FILE and the fingerprint its signatures cover.
    Show {
        file: PathBuf,
        /// The store directory the narinfo's paths live in.
        #[arg(long, value_name = "DIR", default_value = "/nix/store")]
        store_dir: String,
    },
}

pub fn run(cmd: NarinfoCommand) -> anyhow::Result<()> {
    match cmd {
        NarinfoCommand::Verify {
            files,
            trusted_public_keys,
            store_dir,
        } => {
            let store_dir = parse_store_dir(&store_dir)?;
            let (keys, source) = match trusted_public_keys {
                Some(keys) => (keys, "--trusted-public-keys".to_owned()),
                None => keys_from_nix_conf()?,
            };
            let trusted = PublicKey::parse_list(&keys)
                .with_context(|| format!("parsing trusted keys from {source}"))?;
            if trusted.is_empty() {
                bail!("no trusted public keys (from {source}): nothing can verify");
            }
            let mut failures = 0;
            for file in &files {
                match verify_file(&store_dir, file, &trusted) {
                    Ok(key) => println!("{}: OK, signed by {key}", file.display()),
                    Err(e) => {
                        failures += 1;
                        println!("{}: FAILED: {e:#}", file.display());
                    }
                }
            }
            if failures > 0 {
                bail!("{failures} of {} narinfo files failed verification (trusted keys from {source})", files.len());
            }
        }
        NarinfoCommand::Show { file, store_dir } => {
            let store_dir = parse_store_dir(&store_dir)?;
            let info = read_narinfo(&store_dir, &file)?;
            show(&info);
        }
    }
    Ok(())
}

fn parse_store_dir(dir: &str) -> anyhow::Result<StoreDir> {
    StoreDir::new(dir).context("--store-dir")
}

fn read_narinfo(store_dir: &StoreDir, file: &Path) -> anyhow::Result<NarInfo> {
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(NarInfo::parse_bytes(store_dir, &bytes)?)
}

fn verify_file(store_dir: &StoreDir, file: &Path, trusted: &[PublicKey]) -> anyhow::Result<String> {
    let info = read_narinfo(store_dir, file)?;
    // A cache serves a path's narinfo at <hash part>.narinfo; a validly signed narinfo of another
    // path under that name would make a client substitute the wrong path.
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if file.extension().is_some_and(|e| e == "narinfo")
        && is_hash_part(stem.as_bytes())
        && stem != info.store_path.hash_part()
    {
        bail!(
            "file is named for hash part {stem} but describes {}",
            info.path()
        );
    }
    Ok(signature::verify(&info, trusted)?.name().to_owned())
}

/// `trusted-public-keys` plus `extra-trusted-public-keys` from nix.conf (Nix's default key when
/// it sets none), and where they came from.
pub(crate) fn keys_from_nix_conf() -> anyhow::Result<(String, String)> {
    Ok(refstrip_nix::NixConf::read_default()?.trusted_public_keys())
}

fn show(info: &NarInfo) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    println!("store path:   {}", info.path());
    println!("hash part:    {}", info.store_path.hash_part());
    println!("url:          {}", info.url);
    println!(
        "compression:  {}{}",
        info.compression(),
        if info.compression.is_none() {
            " (default)"
        } else {
            ""
        }
    );
    println!(
        "file hash:    {}",
        opt(info.file_hash.map(|h| h.to_string()))
    );
    println!(
        "file size:    {}",
        opt(info.file_size.map(|n| n.to_string()))
    );
    println!("nar hash:     {}", info.nar_hash);
    println!("nar size:     {}", info.nar_size);
    println!("references:   {}", info.references.len());
    for r in &info.references {
        println!("  {}", info.store_dir.display_path(r));
    }
    let deriver = match &info.deriver {
        Some(Deriver::Path(p)) => info.store_dir.display_path(p),
        Some(Deriver::Unknown) => "unknown-deriver".to_owned(),
        None => "-".to_owned(),
    };
    println!("deriver:      {deriver}");
    println!("ca:           {}", opt(info.ca.clone()));
    println!("signatures:   {}", info.sigs.len());
    for s in &info.sigs {
        println!("  {s}");
    }
    for (name, value) in &info.extra {
        println!("extra field:  {name}: {value}");
    }
    println!("fingerprint:  {}", info.fingerprint());
}
