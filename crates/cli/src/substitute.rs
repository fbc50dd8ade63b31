//! `refstrip substitute`: the client side, from a normalized store into a Nix store.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_nix::PublicKey;
use refstrip_read::objects::ObjectOptions;
use refstrip_read::{hash_part_of, StoreReader};
use refstrip_substitute::{default_cache_dir, substitute, Options};

#[derive(Args)]
pub struct SubstituteArgs {
    /// Store paths to substitute with their closure (`/nix/store/<hash>-<name>`, `<hash>-<name>`
    /// or the hash part). Paths already valid in the target are skipped, and so are their closures.
    #[arg(required_unless_present = "all")]
    paths: Vec<String>,
    /// Every path the normalized store holds (not over HTTP, which cannot list).
    #[arg(long, conflicts_with = "paths")]
    all: bool,
    /// The normalized store: a directory, `file:///dir`, `s3://bucket/prefix…`, or `http(s)://`
    /// serving such a directory.
    #[arg(long, value_name = "STORE")]
    from: String,
    /// The Nix store root to substitute into: `/` for the system store, or the root of a chroot
    /// store (`ROOT/nix/store`, `ROOT/nix/var/nix/db`), created if it does not exist. Nix reads it
    /// with `nix-store --store ROOT` / `nix --store ROOT`.
    #[arg(long = "store", value_name = "ROOT")]
    root: PathBuf,
    /// The logical store directory of the paths.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    store_dir: String,
    /// Local object cache: pack blocks fetched earlier are reused from here
    /// [default: $XDG_CACHE_HOME/refstrip or ~/.cache/refstrip].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Keep no object cache: fetch every block this run needs.
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
    /// Largest size of the object cache: least recently used blocks are evicted beyond it
    /// (bytes, or with a suffix K, M, G, T).
    #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = parse_size)]
    cache_size: u64,
    /// Space-separated `name:base64` keys one of which must have signed each path's original
    /// narinfo [default: trusted-public-keys and extra-trusted-public-keys from nix.conf, as
    /// `refstrip narinfo verify` reads them].
    #[arg(long, value_name = "KEYS")]
    trusted_public_keys: Option<String>,
    /// Do not check signatures (as Nix's `--no-check-sigs`).
    #[arg(long, conflicts_with = "trusted_public_keys")]
    no_check_sigs: bool,
    /// Worker threads for fetching and restoring [default: one per core].
    #[arg(short, long, default_value_t = 0)]
    jobs: usize,
    /// Hard-link each file that needs no reference patched back to an identical copy an earlier
    /// run shared in `<store>/.links`, and share the ones written, as Nix's `auto-optimise-store`
    /// does: after a rebuild most such files are in the store already, so this saves their disk
    /// space and file creation, at the cost of hashing them once more when first written
    /// (measured in docs/benchmarks.md §4) [default: nix.conf's `auto-optimise-store`, false].
    #[arg(long, overrides_with = "no_links")]
    links: bool,
    /// Write every file, whatever nix.conf's `auto-optimise-store` says.
    #[arg(long)]
    no_links: bool,
    /// A Nix store whose valid paths are the nearest source of objects: files whose normalized
    /// contents are there are read from it (re-normalized and checked) instead of fetched. Its
    /// index is brought up to date first (see `refstrip index`); when it is the --store ROOT, the
    /// paths written are added to it as they are registered [default: the --store ROOT, when it
    /// has a Nix db].
    #[arg(long, value_name = "ROOT")]
    local_store: Option<PathBuf>,
    /// Take nothing from a local store.
    #[arg(long, conflicts_with = "local_store")]
    no_local_store: bool,
    /// Where the local store's index lives [default: ROOT/nix/var/refstrip].
    #[arg(long, value_name = "DIR")]
    local_state: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Whether nix.conf asks Nix to share identical files (`auto-optimise-store = true`).
fn auto_optimise_store() -> anyhow::Result<bool> {
    Ok(refstrip_nix::NixConf::read_default()?.is_true("auto-optimise-store"))
}

/// The hash parts of store paths given on the command line.
pub(crate) fn hash_parts(paths: &[String]) -> anyhow::Result<Vec<String>> {
    paths
        .iter()
        .map(|p| hash_part_of(p).with_context(|| format!("{p:?} is not a store path or hash part")))
        .collect()
}

/// How objects are read, from `--cache DIR` / `--no-cache` / `--cache-size` (shared by substitute
/// and mount).
pub(crate) fn object_options(
    no_cache: bool,
    cache: Option<PathBuf>,
    cache_size: u64,
) -> anyhow::Result<ObjectOptions> {
    let cache_dir = match no_cache {
        true => None,
        false => Some(
            cache
                .or_else(default_cache_dir)
                .context("no cache directory: set --cache, XDG_CACHE_HOME or HOME")?,
        ),
    };
    Ok(ObjectOptions {
        cache_dir,
        cache_bytes: cache_size,
        ..ObjectOptions::default()
    })
}

/// A size in bytes, with an optional binary suffix: `512M`, `8G`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional K, M, G or T"))?;
    let shift = match unit.trim_end_matches(['B', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (K, M, G, T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(args: SubstituteArgs) -> anyhow::Result<()> {
    let store = StoreReader::open(&args.from)?.expect_store_dir(args.store_dir.clone());
    let mut roots = Vec::new();
    if args.all {
        roots = store.list_paths()?;
    }
    roots.extend(hash_parts(&args.paths)?);
    let trusted_keys = if args.no_check_sigs {
        None
    } else {
        let (keys, source) = match args.trusted_public_keys {
            Some(keys) => (keys, "--trusted-public-keys".to_owned()),
            None => crate::narinfo::keys_from_nix_conf()?,
        };
        let keys = PublicKey::parse_list(&keys)
            .with_context(|| format!("parsing trusted keys from {source}"))?;
        if keys.is_empty() {
            bail!("no trusted public keys (from {source}): nothing can verify; use --no-check-sigs to skip the check");
        }
        Some(keys)
    };
    let objects = object_options(args.no_cache, args.cache, args.cache_size)?;
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} NAR {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // The paths written are indexed as they are registered when the local store is the target
    // (the default), so that the next run need not strip them again.
    let same = |a: &std::path::Path, b: &std::path::Path| {
        std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    };
    let index_target = !args.no_local_store
        && args
            .local_store
            .as_deref()
            .is_none_or(|l| same(l, &args.root));
    let local_root = match (args.no_local_store, args.local_store) {
        (true, _) => None,
        (false, Some(root)) => Some(root),
        // A target without a db yet has nothing to give.
        (false, None) => {
            Some(args.root.clone()).filter(|r| r.join("nix/var/nix/db/db.sqlite").exists())
        }
    };
    let mut local = None;
    if let Some(root) = &local_root {
        let (opened, r) = crate::local_store::open_updated(
            root,
            &args.store_dir,
            args.local_state.as_deref(),
            args.json,
        )?;
        if !args.json {
            println!(
                "local store {}: indexed {} new paths ({} NAR bytes)",
                root.display(),
                r.paths,
                r.nar_bytes
            );
        }
        local = Some(opened);
    }
    let near = local
        .clone()
        .map(|l| l as std::sync::Arc<dyn refstrip_read::objects::NearSource>);
    // The local store's paths also give the shapes of their rebuilt successors (spec §8).
    let store = match &local {
        Some(local) => store.with_near_shapes(local.clone()),
        None => store,
    };
    let opts = Options {
        root: args.root,
        store_dir: args.store_dir,
        objects,
        trusted_keys,
        jobs: args.jobs,
        links: args.links || (!args.no_links && auto_optimise_store()?),
        progress,
        near,
        keep_written: index_target,
    };
    let mut report = substitute(&store, &roots, &opts)?;
    let indexed = match index_target && !report.written.is_empty() {
        true => index_written(
            local,
            &opts.root,
            &opts.store_dir,
            args.local_state.as_deref(),
            std::mem::take(&mut report.written),
        ),
        false => 0,
    };
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["indexed_written_paths"] = indexed.into();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "substituted {} paths ({} already valid), {} NAR bytes in {} files, in {:.2} s",
            report.paths, report.already_valid, report.nar_bytes, report.files, report.seconds
        );
        println!(
            "{} files hard-linked from earlier copies in .links, {} shared there for later runs",
            report.linked_files, report.shared_files
        );
        println!(
            "fetched {} bytes ({} of path records, {} in {} blocks); reused {} bytes in {} blocks from the cache, and {} objects ({} bytes) it had by name",
            report.fetched_bytes,
            report.record_bytes,
            report.fetched_block_bytes,
            report.fetched_blocks,
            report.reused_bytes,
            report.reused_blocks,
            report.cached_objects,
            report.cached_bytes
        );
        println!(
            "took {} objects ({} bytes) from the local store, and copied {} large files from it ({} bytes, {} reflinked; {} did not check out); indexed the {indexed} paths written",
            report.local_objects,
            report.local_bytes,
            report.copied_files,
            report.copied_bytes,
            report.reflinked_files,
            report.refused_copies
        );
        if report.delta_files + report.deltas_rejected > 0 {
            println!(
                "rebuilt {} files ({} bytes) from their predecessors in the local store and {} bytes of deltas; {} deltas not used (the full objects were fetched)",
                report.delta_files, report.delta_file_bytes, report.delta_bytes, report.deltas_rejected
            );
        }
        let t = &report.phases;
        println!(
            "time: plan {:.2} s, fetch {:.2} s, restore {:.2} s, sync {:.2} s, register {:.2} s",
            t.plan, t.fetch, t.restore, t.sync, t.register
        );
    }
    Ok(())
}

/// Add the paths just written to the local-store index of the target `root` (opened now if the
/// run did not use it, e.g. a store made by this run); how many were indexed. A failure only
/// costs the next run the stripping, so it is a warning.
fn index_written(
    local: Option<std::sync::Arc<refstrip_localstore::LocalStore>>,
    root: &std::path::Path,
    store_dir: &str,
    state: Option<&std::path::Path>,
    written: Vec<refstrip_substitute::WrittenPath>,
) -> u64 {
    use refstrip_localstore::{LocalStore, Restored};
    let local = match local {
        Some(local) => local,
        None => {
            let state = state
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| LocalStore::default_state_dir(root));
            match LocalStore::open(root, store_dir, &state) {
                Ok(local) => std::sync::Arc::new(local),
                Err(e) => {
                    eprintln!("warning: not indexing the paths written: {e}");
                    return 0;
                }
            }
        }
    };
    let restored: Vec<Restored> = written
        .iter()
        .map(|w| Restored {
            manifest: &w.manifest,
            chunk_lists: &w.chunk_lists,
        })
        .collect();
    match local.add_restored(&restored) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: not indexing the paths written (the next run will): {e}");
            0
        }
    }
}
