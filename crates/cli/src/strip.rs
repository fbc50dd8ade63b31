//! `refstrip strip` and `refstrip restore`: one store path to a normalized bundle and back.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use refstrip_cas::bundle::{write_bundle, Bundle};
use refstrip_nix::{HashingReader, NarInfo, StoreDir};
use refstrip_source::{decompress, Compression};
use refstrip_strip::{restore_nar, tree_digest, StripOptions, StripStats};
use serde::Serialize;

#[derive(Args)]
pub struct StripArgs {
    /// The path's .narinfo (from a binary cache): gives the store path, references, NarHash and
    /// NarSize to check, and the NAR's compression.
    #[arg(long)]
    narinfo: PathBuf,
    /// The NAR file, compressed as the narinfo's Compression says (.nar, .nar.xz, .nar.zst, .nar.bz2).
    #[arg(long)]
    nar: PathBuf,
    /// Where to write the bundle (normalized contents + manifest in one pack file).
    #[arg(short, long)]
    output: PathBuf,
    /// Override the narinfo's Compression (none, xz, zstd, bzip2).
    #[arg(long)]
    compression: Option<String>,
    /// The store directory the narinfo's paths live in.
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
    /// Keep ELF build-ids as they are instead of normalizing them.
    #[arg(long)]
    no_build_id: bool,
    /// zstd level for the bundle's blocks.
    #[arg(long, default_value_t = refstrip_cas::pack::DEFAULT_LEVEL)]
    level: i32,
    /// Print a machine-readable summary instead of one line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A bundle written by `refstrip strip`.
    bundle: PathBuf,
    /// Where to write the restored NAR (only once its SHA-256 matches the original NarHash).
    #[arg(short, long)]
    output: PathBuf,
    /// Print a machine-readable summary instead of one line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct StripSummary {
    store_path: String,
    nar_size: u64,
    nar_hash: String,
    bundle_size: u64,
    /// BLAKE3 of the normalized tree (names, modes, content digests, patch positions): equal for
    /// two builds that differ only in hashes.
    normalized_digest: String,
    #[serde(flatten)]
    stats: StatsJson,
}

#[derive(Serialize)]
struct StatsJson {
    files: u64,
    symlinks: u64,
    directories: u64,
    patched_files: u64,
    placeholders: u64,
    literal_patches: u64,
    content_bytes: u64,
}

impl From<&StripStats> for StatsJson {
    fn from(s: &StripStats) -> Self {
        StatsJson {
            files: s.files,
            symlinks: s.symlinks,
            directories: s.directories,
            patched_files: s.patched_files,
            placeholders: s.ref_patches,
            literal_patches: s.literal_patches,
            content_bytes: s.content_bytes,
        }
    }
}

pub fn strip(args: StripArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let text =
        fs::read(&args.narinfo).with_context(|| format!("reading {}", args.narinfo.display()))?;
    let narinfo = NarInfo::parse_bytes(&store_dir, &text)
        .with_context(|| format!("parsing {}", args.narinfo.display()))?;
    let compression = match &args.compression {
        Some(c) => Compression::from_narinfo(Some(c))?,
        None => Compression::from_narinfo(narinfo.compression.as_deref())?,
    };
    let file = File::open(&args.nar).with_context(|| format!("opening {}", args.nar.display()))?;
    let mut hashing = HashingReader::new(file);
    let path_info = refstrip_read::pathinfo::path_info(&narinfo)?;
    let options = StripOptions {
        normalize_build_id: !args.no_build_id,
    };

    let (manifest, stripped) = write_atomically(&args.output, |out| {
        let nar = decompress(&mut hashing, compression)?;
        let (manifest, stripped, out) = write_bundle(nar, path_info, &options, args.level, out)
            .with_context(|| {
                format!(
                    "stripping {} ({} compression)",
                    args.nar.display(),
                    compression.name()
                )
            })?;
        check_same(&narinfo, &stripped.nar_hash, stripped.nar_size)?;
        Ok(((manifest, stripped), out))
    })?;
    let (file_hash, file_size, _) = hashing.finish();
    if let (Some(expected), Some(expected_size)) = (narinfo.file_hash, narinfo.file_size) {
        if expected != file_hash || expected_size != file_size {
            fs::remove_file(&args.output).ok();
            bail!(
                "{}: FileHash/FileSize differ from the narinfo (wrong or damaged file)",
                args.nar.display()
            );
        }
    }

    let summary = StripSummary {
        store_path: narinfo.path(),
        nar_size: stripped.nar_size,
        nar_hash: narinfo.nar_hash.to_string(),
        bundle_size: fs::metadata(&args.output)?.len(),
        normalized_digest: tree_digest(&manifest.root).to_hex(),
        stats: (&stripped.stats).into(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let s = &summary.stats;
        println!(
            "stripped {}: {} files ({} patched), {} placeholders, {} literal patches; NAR {} bytes -> bundle {} bytes",
            summary.store_path, s.files, s.patched_files, s.placeholders, s.literal_patches, summary.nar_size, summary.bundle_size
        );
    }
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let file =
        File::open(&args.bundle).with_context(|| format!("opening {}", args.bundle.display()))?;
    let mut bundle = Bundle::open(BufReader::new(file))
        .with_context(|| format!("reading bundle {}", args.bundle.display()))?;
    let manifest = bundle.manifest.clone();
    let digest = write_atomically(&args.output, |mut out| {
        let digest = restore_nar(&manifest, &mut bundle.source(), &mut out).context("restoring")?;
        Ok((digest, out))
    })?;
    let path = format!(
        "{}/{}",
        String::from_utf8_lossy(&manifest.store_dir),
        String::from_utf8_lossy(manifest.basename())
    );
    let nar_hash = refstrip_nix::Hash::from_bytes(digest.sha256);
    if args.json {
        let json = serde_json::json!({ "store_path": path, "nar_size": digest.size, "nar_hash": nar_hash.to_string() });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "restored {path}: {} bytes, NarHash {nar_hash} verified",
            digest.size
        );
    }
    Ok(())
}

fn check_same(narinfo: &NarInfo, sha256: &[u8; 32], size: u64) -> anyhow::Result<()> {
    let got = refstrip_nix::Hash::from_bytes(*sha256);
    if got != narinfo.nar_hash || size != narinfo.nar_size {
        bail!(
            "NAR does not match the narinfo: got {got} ({size} bytes), expected {} ({} bytes)",
            narinfo.nar_hash,
            narinfo.nar_size
        );
    }
    Ok(())
}

/// Write `path` through a temporary sibling that is renamed into place only if `write` succeeds,
/// so a failed or interrupted run never leaves a plausible-looking output behind.
fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(BufWriter<File>) -> anyhow::Result<(T, BufWriter<File>)>,
) -> anyhow::Result<T> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = write(BufWriter::with_capacity(1 << 20, file)).and_then(|(value, out)| {
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(value)
    });
    match result {
        Ok(value) => {
            fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
            Ok(value)
        }
        Err(e) => {
            fs::remove_file(&tmp).ok();
            Err(e)
        }
    }
}
