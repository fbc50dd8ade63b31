//! `refstrip ingest`, `refstrip stats`, `refstrip gc`, `refstrip repack`: the cache-side job and
//! store upkeep.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_backend::RequestCounts;
use refstrip_ingest::{ingest, select, IngestOptions};
use refstrip_nix::{StoreDir, StorePath};
use refstrip_read::{hash_part_of, StoreReader};
use refstrip_source::open_source;
use refstrip_store::{Policy, RepackOptions, Retention, Store};
use refstrip_strip::StripOptions;

#[derive(Args)]
pub struct IngestArgs {
    /// Where to read from: a binary cache (`file:///dir`, `http(s)://…`, `s3://bucket/prefix…`,
    /// or a directory with nix-cache-info) or a Nix store root (`/`, or a chroot store's root directory).
    source: String,
    /// Store paths to ingest (with their closure); full paths or `<hash>-<name>`.
    paths: Vec<String>,
    /// The normalized store to write to: a directory or `file:///dir` (created if missing), or an
    /// S3-compatible bucket, `s3://bucket/prefix?endpoint=URL&region=NAME` (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see docs/s3.md).
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
    #[arg(long, default_value_t = refstrip_cas::pack::DEFAULT_LEVEL)]
    level: i32,
    /// Keep ELF build-ids as they are instead of normalizing them.
    #[arg(long)]
    no_build_id: bool,
    /// Store no deltas from each path's predecessor (the store's newest other path of the same
    /// package and output); clients holding the predecessor then fetch changed files whole.
    #[arg(long)]
    no_deltas: bool,
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
    /// Sign every path with this secret key file (as `nix-store --generate-binary-cache-key NAME
    /// SECRET-FILE PUBLIC-FILE` writes it), next to the upstream signatures, which stay. Paths the
    /// store already has are re-signed if they lack this key's signature. Clients then need only
    /// the public key in `trusted-public-keys`. The signature vouches for the paths: use it on
    /// sources you trust (a build machine's own store, a cache whose signatures you checked).
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// The normalized store (a directory, `file:///dir` or `s3://bucket/prefix…`).
    store: String,
    /// Rebuild the catalog from the store's files first (after copying a store, or if in doubt).
    #[arg(long)]
    rebuild_catalog: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// The normalized store (a directory, `file:///dir` or `s3://bucket/prefix…`).
    store: String,
    /// Store paths to keep, with their closure; everything else not kept by a policy below is
    /// removed.
    #[arg(long, num_args = 1..)]
    keep: Vec<String>,
    /// A file listing store paths to keep, one per line.
    #[arg(long)]
    keep_file: Option<PathBuf>,
    /// Object stores only: delete a pack only if an earlier gc condemned it at least this long
    /// ago (seconds, or with a suffix s, m, h, d). Every ingest writing to the store must finish
    /// within this time of starting (docs/s3.md).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
    /// Keep what the given paths the store has even if some are not in it (without this, a path
    /// to keep that the store lacks, e.g. a typo, stops gc before it removes anything).
    #[arg(long)]
    force: bool,
    /// Also keep (with their closure) the paths registered — their record written by ingest or
    /// push — or last served (see --served-state) within this long (seconds, or with a suffix
    /// s, m, h, d: 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
    /// Also keep (with their closure) the newest N paths of each package (the name without its
    /// version, as Nix splits it, and the output: hello-2.12-man is package hello, output man),
    /// newest by registration.
    #[arg(long, value_name = "N")]
    keep_newest: Option<usize>,
    /// The directory `refstrip serve --served-state` notes served paths in, for --keep-within
    /// (several: repeat the flag).
    #[arg(long, value_name = "DIR", requires = "keep_within")]
    served_state: Vec<PathBuf>,
    /// Print what gc would remove and the bytes each policy alone, and all together, would free;
    /// remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct RepackArgs {
    /// The normalized store (a directory, `file:///dir` or `s3://bucket/prefix…`).
    #[arg(long, value_name = "STORE")]
    store: String,
    /// Rewrite the packs whose live fraction (uncompressed bytes of the objects records point at
    /// in the pack, over all its objects' bytes) is below this.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    threshold: f64,
    /// Delete a replaced pack only this long after it was replaced (seconds, or with a suffix s, m,
    /// h, d): readers holding an old record (a running serve, substitute or mount) read it until
    /// then. Packs replaced by earlier runs are deleted by the run after their grace period.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
    /// zstd level of the new packs' blocks.
    #[arg(long, default_value_t = refstrip_cas::pack::DEFAULT_LEVEL)]
    level: i32,
    /// Print which packs would be rewritten and what that would free; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Open an existing store for upkeep: never make one where there is none (a typo would otherwise
/// create an empty store and report on it).
fn open_existing(url: &str) -> anyhow::Result<Store> {
    StoreReader::open(url)?;
    Store::open(url).with_context(|| format!("opening store {url}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?}: expected a number from 0 to 1")),
    }
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
        deltas: !args.no_deltas,
        sign_key: args
            .sign_key
            .as_deref()
            .map(refstrip_nix::SecretKey::read_file)
            .transpose()?,
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
            "resigned": report.resigned,
            "failed": report.failed.iter().map(|(p, why)| serde_json::json!({"path": p, "error": why})).collect::<Vec<_>>(),
            "nar_bytes": report.nar_bytes, "source_file_bytes": report.source_file_bytes,
            "new_objects": report.new_objects, "new_object_bytes": report.new_object_bytes,
            "stored_bytes": report.stored_bytes, "packs": report.packs, "seconds": report.seconds,
            "deltas": report.deltas, "delta_bytes": report.delta_bytes,
            "store_requests": report.store_requests.map(|r| requests_json(&r, report.nar_bytes)),
            "source_requests": report.source_requests.map(|r| requests_json(&r, report.nar_bytes)),
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
        if report.resigned > 0 {
            println!(
                "signed {} paths the store already had with {}",
                report.resigned,
                options.sign_key.as_ref().map_or("", |k| k.name())
            );
        }
        for (which, r) in [
            ("store", report.store_requests),
            ("source", report.source_requests),
        ] {
            if let Some(r) = r {
                println!(
                    "{which} requests: {} GET, {} ranged GET, {} PUT, {} LIST, {} HEAD, {} DELETE ({:.0} per GB of NAR ingested); {} up, {} down",
                    r.get,
                    r.get_range,
                    r.put,
                    r.list,
                    r.head,
                    r.delete,
                    per_gb(r.total(), report.nar_bytes),
                    bytes(r.bytes_up),
                    bytes(r.bytes_down)
                );
            }
        }
    }
    if !report.failed.is_empty() {
        bail!(
            "{} paths failed (see above); they were not added",
            report.failed.len()
        );
    }
    Ok(())
}

/// Requests per GB (10^9 bytes) of NAR ingested.
fn per_gb(n: u64, nar_bytes: u64) -> f64 {
    n as f64 * 1e9 / nar_bytes.max(1) as f64
}

fn requests_json(r: &RequestCounts, nar_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "get": r.get, "get_range": r.get_range, "put": r.put, "list": r.list, "head": r.head,
        "delete": r.delete, "total": r.total(), "bytes_up": r.bytes_up, "bytes_down": r.bytes_down,
        "per_gb_nar": per_gb(r.total(), nar_bytes),
    })
}

pub fn stats_cmd(args: StatsArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.store)?;
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
    let store = open_existing(&args.store)?;
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
    if roots.is_empty() && args.keep_within.is_none() && args.keep_newest.is_none() {
        bail!("refusing to remove everything: give --keep PATHS, --keep-file FILE, --keep-within DURATION or --keep-newest N");
    }
    let roots = roots
        .iter()
        .map(|r| hash_part_of(r).with_context(|| format!("{r:?} is not a store path")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut served = std::collections::HashMap::new();
    for dir in &args.served_state {
        let noted = refstrip_serve::served::read(dir)
            .with_context(|| format!("reading --served-state {}", dir.display()))?;
        for (hash_part, time) in noted {
            let latest = served.entry(hash_part).or_insert(time);
            *latest = (*latest).max(time);
        }
    }
    let retention = Retention {
        roots,
        keep_within: args.keep_within,
        keep_newest: args.keep_newest,
    };
    // Keep the closures of everything a policy names, as Nix keeps the closure of its GC roots.
    let retained = store.retention_plan(
        &retention,
        &served,
        std::time::SystemTime::now(),
        args.force,
    )?;
    let plan = &retained.plan;
    for missing in &plan.missing_roots {
        eprintln!("refstrip: warning: {missing} is not in the store (--force: gc goes on)");
    }
    if args.dry_run {
        for (_, path) in &plan.remove_paths {
            println!("would remove {path}");
        }
        for effect in &retained.policies {
            if effect.policy == Policy::Roots && retention.roots.is_empty() {
                continue;
            }
            let detail = match effect.policy {
                Policy::Within => format!(
                    " ({} registered, {} served within)",
                    retained.registered_within, retained.served_within
                ),
                _ => String::new(),
            };
            println!(
                "policy {:<12} names {} paths{detail}, keeps {} with their closure; alone it would remove {} paths, freeing {}",
                effect.policy.name(),
                effect.roots,
                effect.keep,
                effect.remove_paths,
                bytes(effect.freed_bytes)
            );
        }
        let freed: u64 = plan.remove_packs.iter().map(|(_, size)| size).sum();
        println!(
            "would remove {} paths and {} packs, freeing {}; would keep {} paths",
            plan.remove_paths.len(),
            plan.remove_packs.len(),
            bytes(freed),
            plan.keep.len()
        );
        return Ok(());
    }
    let r = store.gc(plan, args.grace)?;
    println!(
        "removed {} paths and {} packs, freed {}; kept {} paths",
        r.removed_paths,
        r.removed_packs,
        bytes(r.freed_bytes),
        plan.keep.len()
    );
    if r.removed_scratch_files > 0 {
        println!(
            "removed {} staging packs left by killed ingests",
            r.removed_scratch_files
        );
    }
    if r.condemned_packs > 0 {
        println!(
            "condemned {} unreferenced packs: a gc at least {} s from now deletes them if still unreferenced",
            r.condemned_packs,
            args.grace.as_secs()
        );
    }
    let dead = store.catalog().unreferenced_object_bytes()?;
    if dead > 0 {
        println!(
            "{} of objects no path needs remain in packs still in use; `refstrip repack --store {}` rewrites such packs",
            bytes(dead),
            args.store
        );
    }
    Ok(())
}

pub fn repack_cmd(args: RepackArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.store)?;
    let report = store.repack(&RepackOptions {
        threshold: args.threshold,
        grace: args.grace,
        level: args.level,
        dry_run: args.dry_run,
    })?;
    let verb = if args.dry_run {
        "would rewrite"
    } else {
        "rewrote"
    };
    for pack in &report.repacked {
        println!(
            "{verb} pack {} ({}, {:.1} % live: {} objects)",
            pack.id,
            bytes(pack.size),
            pack.live_fraction() * 100.0,
            pack.live_objects
        );
    }
    if args.dry_run {
        // Compressed as well as before, the live objects would take about their share.
        let estimate: f64 = report
            .repacked
            .iter()
            .map(|p| p.size as f64 * p.live_fraction())
            .sum();
        println!(
            "would rewrite {} packs of {} below {:.0} % live into about {}, freeing about {} once their grace period is over",
            report.repacked.len(),
            bytes(report.repacked_bytes()),
            args.threshold * 100.0,
            bytes(estimate as u64),
            bytes(report.repacked_bytes().saturating_sub(estimate as u64))
        );
        return Ok(());
    }
    println!(
        "rewrote {} packs of {} below {:.0} % live into {} new packs of {}; {} path records rewritten ({} objects stored twice now pointed at one copy)",
        report.repacked.len(),
        bytes(report.repacked_bytes()),
        args.threshold * 100.0,
        report.new_packs,
        bytes(report.new_pack_bytes),
        report.records_rewritten,
        report.deduplicated_objects
    );
    println!(
        "deleted {} replaced packs, freeing {}; {} replaced packs ({}) wait for their grace period of {} s (run repack again after it)",
        report.deleted_packs,
        bytes(report.freed_bytes),
        report.waiting_packs,
        bytes(report.waiting_bytes),
        args.grace.as_secs()
    );
    if report.restored_packs > 0 {
        println!(
            "put back {} replaced packs that a record written since points into",
            report.restored_packs
        );
    }
    Ok(())
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
