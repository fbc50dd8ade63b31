//! `refstrip mount`: a lazy, read-only view of store paths (see docs/mount.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use refstrip_mount::{block_termination_signals, load_records, mount, Options};

#[derive(Args)]
pub struct MountArgs {
    /// The normalized store: a directory, `file:///dir`, or `http(s)://` serving such a directory.
    #[arg(long, value_name = "STORE")]
    from: String,
    /// An empty directory to mount on, e.g. `/nix/store` inside a private mount namespace.
    mountpoint: PathBuf,
    /// Show these store paths and their closure (`/nix/store/<hash>-<name>`, `<hash>-<name>` or
    /// the hash part) [default: every path the store holds; a directory store only].
    paths: Vec<String>,
    /// Local object cache, shared with `refstrip substitute`
    /// [default: $XDG_CACHE_HOME/refstrip or ~/.cache/refstrip].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Keep fetched blocks in memory only.
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
    /// Largest size of the object cache (bytes, or with a suffix K, M, G, T).
    #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = crate::substitute::parse_size)]
    cache_size: u64,
    /// Rewrite this JSON file with what the mount has fetched, after every read that fetched.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Threads answering file system requests.
    #[arg(short, long, default_value_t = 4)]
    jobs: usize,
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread leaves SIGINT/SIGTERM to the wait below.
    block_termination_signals().context("blocking SIGINT/SIGTERM")?;
    let store = refstrip_read::StoreReader::open(&args.from)?;
    let roots = crate::substitute::hash_parts(&args.paths)?;
    let objects = crate::substitute::object_options(args.no_cache, args.cache, args.cache_size)?;
    let (records, record_bytes) =
        load_records(&store, (!roots.is_empty()).then_some(roots.as_slice()))?;
    let opts = Options {
        objects,
        stats_file: args.stats,
        threads: args.jobs,
    };
    let mounted = mount(&store, records, record_bytes, &args.mountpoint, &opts)?;
    let stats = mounted.stats();
    println!(
        "mounted {} paths ({} inodes, {} bytes of path records) at {}",
        stats.paths,
        stats.inodes,
        stats.record_bytes,
        args.mountpoint.display()
    );
    let signal = mounted.wait();
    let stats = mounted.stats();
    mounted
        .unmount()
        .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
    eprintln!(
        "unmounted {}{}: fetched {} bytes in {} blocks, {} reads ({} errors)",
        args.mountpoint.display(),
        match signal {
            Some(n) => format!(" on signal {n}"),
            None => String::new(),
        },
        stats.fetched_bytes,
        stats.fetched_blocks,
        stats.reads,
        stats.errors
    );
    Ok(())
}
