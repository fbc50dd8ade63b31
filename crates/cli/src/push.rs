//! `refstrip push`: a build machine's paths (and their closure) into a normalized store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_ingest::push::{local_source, push, stop_on_signals, watch, WatchEvent};
use refstrip_ingest::{IngestOptions, IngestReport};
use refstrip_nix::{SecretKey, StoreDir, StorePath};
use refstrip_store::Store;

use crate::store_cmd::bytes;

#[derive(Args)]
pub struct PushArgs {
    /// Store paths to push with their closure (full paths or `<hash>-<name>`), e.g. what a build
    /// produced (`$OUT_PATHS` in a post-build-hook, see tools/post-build-hook.sh).
    #[arg(required_unless_present = "watch")]
    paths: Vec<String>,
    /// The normalized store to push to: a directory or `file:///dir` (created if missing), or an
    /// S3-compatible bucket, `s3://bucket/prefix?endpoint=URL&region=NAME` (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see docs/s3.md).
    #[arg(long, value_name = "STORE")]
    to: String,
    /// The local Nix store to push from: `/` (the machine's store) or a chroot store's root.
    #[arg(long = "store", value_name = "ROOT", default_value = "/")]
    root: PathBuf,
    /// Sign every pushed path with this secret key file (as `nix-store
    /// --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE` writes it). Locally built paths
    /// have no signature of their own; without one, clients that check signatures refuse them.
    /// Paths the store already has are re-signed if they lack this key's signature.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Keep running and push every path the local store gains (after pushing PATHS, if given):
    /// Nix's database is polled every --interval. SIGINT/SIGTERM stop it after the push in
    /// progress (a second signal stops it at once; nothing half-pushed is ever visible).
    #[arg(long)]
    watch: bool,
    /// With --watch: seconds between polls of the local store's database (one indexed query each).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, requires = "watch", value_parser = parse_interval)]
    interval: f64,
    /// Parallel workers (few by default, leaving the build machine's other cores to builds).
    #[arg(long, short, default_value_t = 2)]
    jobs: usize,
    /// zstd level of pack blocks.
    #[arg(long, default_value_t = refstrip_cas::pack::DEFAULT_LEVEL)]
    level: i32,
    /// The local store's store directory.
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
    /// Print each push's summary as one line of JSON.
    #[arg(long)]
    json: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.05 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected seconds, at least 0.05 (e.g. 5 or 0.5)"
        )),
    }
}

pub fn run(args: PushArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let sign_key = args
        .sign_key
        .as_deref()
        .map(SecretKey::read_file)
        .transpose()?;
    let paths = args
        .paths
        .iter()
        .map(|p| {
            if p.starts_with('/') {
                store_dir.parse_path(p)
            } else {
                StorePath::from_base_name(p)
            }
            .with_context(|| format!("{p:?} is not a store path"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let source = local_source(&args.root, store_dir.clone())?;
    let store = Store::open(&args.to).with_context(|| format!("opening store {}", args.to))?;
    let options = IngestOptions {
        jobs: args.jobs.max(1),
        level: args.level,
        sign_key,
        ..IngestOptions::default()
    };
    let mut failed = 0;
    if !paths.is_empty() {
        let progress = if args.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{spinner} push [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} NAR {msg}",
                )
                .expect("valid template"),
            )
        };
        let report = push(&*source, &store, paths, &options, &progress)?;
        print_report(&report, args.json);
        failed += report.failed.len();
    }
    if args.watch {
        let stop = stop_on_signals().context("installing the SIGINT/SIGTERM handlers")?;
        watch(
            &args.root,
            store_dir,
            &store,
            &options,
            Duration::from_secs_f64(args.interval),
            &stop,
            &mut |event| {
                match event {
                WatchEvent::Started { last_id } => eprintln!(
                    "refstrip push: watching {} for paths registered after id {last_id}, every {} s (SIGINT/SIGTERM to stop)",
                    args.root.display(),
                    args.interval
                ),
                WatchEvent::Pushed(paths, report) => {
                    if !args.json {
                        println!("{} new paths in the local store:", paths.len());
                    }
                    print_report(report, args.json);
                }
                WatchEvent::Failed(paths, error) => eprintln!(
                    "refstrip push: pushing {} new paths failed, trying again next interval: {error}",
                    paths.len()
                ),
            }
            },
        )?;
        eprintln!("refstrip push: stopped");
    }
    if failed > 0 {
        bail!("{failed} paths failed (see above); they were not pushed");
    }
    Ok(())
}

fn print_report(report: &IngestReport, json: bool) {
    if json {
        let line = serde_json::json!({
            "paths": report.paths, "pushed": report.ingested, "present": report.skipped,
            "resigned": report.resigned, "packs": report.packs,
            "failed": report.failed.iter().map(|(p, why)| serde_json::json!({"path": p, "error": why})).collect::<Vec<_>>(),
            "nar_bytes": report.nar_bytes, "stored_bytes": report.stored_bytes,
            "seconds": report.seconds,
        });
        println!("{line}");
        return;
    }
    println!(
        "pushed {} of {} paths in the closure ({} already in the store{}, {} failed): NAR {}, {} stored in {} packs; {:.1} s",
        report.ingested,
        report.paths,
        report.skipped,
        if report.resigned > 0 {
            format!(", {} of them re-signed", report.resigned)
        } else {
            String::new()
        },
        report.failed.len(),
        bytes(report.nar_bytes),
        bytes(report.stored_bytes),
        report.packs,
        report.seconds
    );
    for (path, why) in &report.failed {
        println!("  failed: {path}: {why}");
    }
}
