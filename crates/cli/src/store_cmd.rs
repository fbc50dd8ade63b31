//! `refstrip ingest`, `refstrip stats`, `refstrip gc`: the cache-side job and store upkeep.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_ingest::{ingest, select, IngestOptions};
use refstrip_nix::{StoreDir, StorePath};
use refstrip_source::open_source;
use refstrip_store::Store;
use refstrip_strip::StripOptions;

#[derive(Args)]
pub struct IngestArgs {
    /// Where to read from: a binary cache (`file:///dir`, `http(s)://…`, or a directory with
    /// nix-cache-info) or a Nix store root (`/`, or a chroot store's root directory).
    source: String,
    /// Store paths to ingest (with their closure); full paths or `<hash>-<name>`.
    paths: Vec<String>,
    /// The normalized store to write to: a directory or `file:///dir` (created if missing).
    #[arg(long)]
    to: String,
    /// Ingest every path the source has.
    #[arg(long, conflicts_with = "paths")]
    all: bool,
    /// Only this shard of the paths, as I/N (0-based): N machines with I = 0…N-1 split the work
    /// deterministically and end in the same store as one machine.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    /// Do not follow references of the given paths.
    #[arg(long)]
    no_closure: bool,
    /// Parallel workers (default: number of cores).
    #[arg(long, short)]
    jobs: Option<usize>,
    /// zstd level of pack blocks.
    #[arg(long, default_value_t = 12)]
    level: i32,
    /// Keep ELF build-ids as they are instead of normalizing them.
    #[arg(long)]
    no_build_id: bool,
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// The normalized store (a directory or `file:///dir`).
    store: String,
    /// Rebuild the catalog from the store's files first (after copying a store, or if in doubt).
    #[arg(long)]
    rebuild_catalog: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// The normalized store (a directory or `file:///dir`).
    store: String,
    /// Store paths to keep, with their closure; everything else is removed.
    #[arg(long, num_args = 1..)]
    keep: Vec<String>,
    /// A file listing store paths to keep, one per line.
    #[arg(long)]
    keep_file: Option<PathBuf>,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let (i, n): (u64, u64) = (
        i.parse().map_err(|_| "bad I")?,
        n.parse().map_err(|_| "bad N")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn parse_path(store_dir: &StoreDir, s: &str) -> anyhow::Result<StorePath> {
    let parsed = if s.starts_with('/') {
        store_dir.parse_path(s)
    } else {
        StorePath::from_base_name(s)
    };
    parsed.with_context(|| format!("{s:?} is not a store path"))
}

pub fn ingest_cmd(args: IngestArgs) -> anyhow::Result<()> {
    if args.paths.is_empty() && !args.all {
        bail!("name the store paths to ingest, or pass --all");
    }
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let source = open_source(&args.source, store_dir.clone())?;
    let store = Store::open(&args.to).with_context(|| format!("opening store {}", args.to))?;
    let roots = args
        .paths
        .iter()
        .map(|p| parse_path(&store_dir, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = IngestOptions {
        jobs: args.jobs.unwrap_or(IngestOptions::default().jobs),
        level: args.level,
        shard: args.shard,
        strip: StripOptions {
            normalize_build_id: !args.no_build_id,
        },
        closure: !args.no_closure,
    };
    let paths = select(&*source, roots, &options).context("listing paths")?;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} ingest [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} NAR ({bytes_per_sec}) {msg}")
            .expect("valid template"),
    );
    let report = ingest(&*source, &store, paths, &options, &progress)?;
    let ratio = report.nar_bytes as f64 / report.stored_bytes.max(1) as f64;
    if args.json {
        let json = serde_json::json!({
            "source": source.describe(), "store": store.describe(),
            "paths": report.paths, "ingested": report.ingested, "skipped": report.skipped,
            "failed": report.failed.iter().map(|(p, why)| serde_json::json!({"path": p, "error": why})).collect::<Vec<_>>(),
            "nar_bytes": report.nar_bytes, "source_file_bytes": report.source_file_bytes,
            "new_objects": report.new_objects, "new_object_bytes": report.new_object_bytes,
            "stored_bytes": report.stored_bytes, "packs": report.packs, "seconds": report.seconds,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "ingested {} of {} paths ({} already present, {} failed) from {}: NAR {} in, {} stored ({:.1}x smaller; the source's files: {}); {} new objects in {} packs; {:.1} s",
            report.ingested,
            report.paths,
            report.skipped,
            report.failed.len(),
            source.describe(),
            bytes(report.nar_bytes),
            bytes(report.stored_bytes),
            ratio,
            bytes(report.source_file_bytes),
            report.new_objects,
            report.packs,
            report.seconds
        );
    }
    if !report.failed.is_empty() {
        bail!(
            "{} paths failed (see above); they were not added",
            report.failed.len()
        );
    }
    Ok(())
}

pub fn stats_cmd(args: StatsArgs) -> anyhow::Result<()> {
    let store =
        Store::open(&args.store).with_context(|| format!("opening store {}", args.store))?;
    if args.rebuild_catalog {
        store.rebuild_catalog().context("rebuilding the catalog")?;
    }
    let t = store.totals()?;
    let unreferenced = store.catalog().unreferenced_object_bytes()?;
    if args.json {
        let json = serde_json::json!({
            "paths": t.paths, "nar_bytes": t.nar_bytes, "packs": t.packs, "pack_bytes": t.pack_bytes,
            "objects": t.objects, "object_bytes": t.object_bytes, "record_bytes": t.record_bytes,
            "unreferenced_object_bytes": unreferenced,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("store {}", store.describe());
        println!(
            "  paths           {:>10}   NAR bytes {}",
            t.paths,
            bytes(t.nar_bytes)
        );
        println!(
            "  stored          {:>10}   ({} packs + {} path records)",
            bytes(t.pack_bytes + t.record_bytes),
            bytes(t.pack_bytes),
            bytes(t.record_bytes)
        );
        println!(
            "  objects         {:>10}   {} uncompressed",
            t.objects,
            bytes(t.object_bytes)
        );
        println!(
            "  NAR / stored    {:>10.2}x",
            t.nar_bytes as f64 / (t.pack_bytes + t.record_bytes).max(1) as f64
        );
        println!(
            "  unreferenced    {:>10}   (objects no path needs)",
            bytes(unreferenced)
        );
    }
    Ok(())
}

pub fn gc_cmd(args: GcArgs) -> anyhow::Result<()> {
    let store =
        Store::open(&args.store).with_context(|| format!("opening store {}", args.store))?;
    let mut roots: Vec<String> = args.keep.clone();
    if let Some(file) = &args.keep_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        roots.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if roots.is_empty() {
        bail!("refusing to remove everything: give --keep PATHS or --keep-file FILE");
    }
    // Keep the closure of the roots, as Nix keeps the closure of its GC roots.
    let mut keep = HashSet::new();
    let mut queue: Vec<String> = roots
        .iter()
        .map(|r| {
            r.rsplit('/')
                .next()
                .unwrap_or(r)
                .get(..32)
                .map(String::from)
                .with_context(|| format!("{r:?} is not a store path"))
        })
        .collect::<anyhow::Result<_>>()?;
    while let Some(hash) = queue.pop() {
        if !keep.insert(hash.clone()) {
            continue;
        }
        match store.read_record(&hash) {
            Ok(record) => queue.extend(
                record
                    .manifest
                    .references
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r[..32]).into_owned()),
            ),
            Err(refstrip_store::StoreError::NoSuchPath(_)) => {
                eprintln!("refstrip: note: {hash} is not in the store")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (paths, packs, freed) = store.gc(&keep)?;
    println!(
        "removed {paths} paths and {packs} packs, freed {}; kept {} paths",
        bytes(freed),
        keep.len()
    );
    Ok(())
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
