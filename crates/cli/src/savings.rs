//! `refstrip savings` and `refstrip explain`: what each substitution granularity would download
//! across a rebuild, and why one path did not deduplicate (logic in `refstrip-savings`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_nix::StoreDir;
use refstrip_savings::{closure, explain, measure, open_input, plot, Method, Progress};
use refstrip_strip::StripOptions;

#[derive(Args)]
pub struct SavingsArgs {
    /// What the client already has: a binary cache (`file:///dir`, `http(s)://…`, a directory with
    /// nix-cache-info), a Nix store root, or a normalized refstrip store directory.
    #[arg(long)]
    old: String,
    /// What the client wants, in the same forms as --old.
    #[arg(long)]
    new: String,
    /// Measure the closures of these paths (store paths, `<hash>-<name>`, or names, which pick the
    /// paths of that name in each source, else of that package name and output, as across a
    /// version bump) instead of every path of each source.
    #[arg(long, num_args = 1..)]
    roots: Vec<String>,
    /// Roots of the old closure when they cannot be found from --roots (an HTTP cache cannot be
    /// listed, so names do not resolve there: give its store paths).
    #[arg(long, num_args = 1..)]
    old_roots: Vec<String>,
    /// Methods to measure, comma-separated (default: all): nar-xz, nar-zstd, file, file-xz,
    /// file-zstd, cdc-nar-zstd, stripped-file, stripped-file-zstd, stripped-cdc-zstd,
    /// stripped-file-zstd-keep-build-id, stripped-cdc-zstd-keep-build-id, stripped-cdc-zstd-delta.
    #[arg(long, value_delimiter = ',', value_parser = parse_method)]
    methods: Vec<Method>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the study's bar chart (closure vs downloaded per method) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Title of the chart (default: "<old> -> <new>").
    #[arg(long)]
    title: Option<String>,
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
}

#[derive(Args)]
pub struct ExplainArgs {
    /// What the client already has (same forms as `refstrip savings --old`).
    #[arg(long)]
    old: String,
    /// Where the path comes from (same forms as `refstrip savings --new`).
    #[arg(long)]
    new: String,
    /// The path in --new: a store path, `<hash>-<name>`, or a name; compared with the path of the
    /// same name in --old.
    path: String,
    /// The path in --old to compare with (default: same name, else same package name and output).
    #[arg(long)]
    old_path: Option<String>,
    /// Keep ELF build-ids as they are instead of normalizing them.
    #[arg(long)]
    no_build_id: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        format!("unknown method {s:?}; one of {}", names.join(", "))
    })
}

pub fn savings(args: SavingsArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let old =
        open_input(&args.old, store_dir.clone()).with_context(|| format!("--old {}", args.old))?;
    let new = open_input(&args.new, store_dir).with_context(|| format!("--new {}", args.new))?;
    let old_roots = if args.old_roots.is_empty() {
        &args.roots
    } else {
        &args.old_roots
    };
    let old_infos = closure(&*old, old_roots).with_context(|| format!("--old {}", args.old))?;
    let new_infos = closure(&*new, &args.roots).with_context(|| format!("--new {}", args.new))?;
    let methods = if args.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        args.methods.clone()
    };

    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} closure [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} NAR ({bytes_per_sec}) of {msg}",
        )
        .expect("valid template"),
    );
    let on_progress = |p: Progress| match p {
        Progress::Begin { side, paths, bytes } => {
            bar.reset();
            bar.set_prefix(side.to_string());
            bar.set_length(bytes);
            bar.set_message(format!("{paths} paths"));
        }
        Progress::Path { nar_size } => bar.inc(nar_size),
    };
    let report = measure(
        (&*old, &old_infos),
        (&*new, &new_infos),
        &methods,
        &on_progress,
    )?;
    bar.finish_and_clear();

    if let Some(path) = &args.plot {
        let title = args
            .title
            .clone()
            .unwrap_or_else(|| format!("{} -> {}", args.old, args.new));
        std::fs::write(path, plot(&report, &title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

pub fn explain_cmd(args: ExplainArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let old =
        open_input(&args.old, store_dir.clone()).with_context(|| format!("--old {}", args.old))?;
    let new = open_input(&args.new, store_dir).with_context(|| format!("--new {}", args.new))?;
    let options = StripOptions {
        normalize_build_id: !args.no_build_id,
    };
    let explanation = explain(&*old, &*new, &args.path, args.old_path.as_deref(), &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", explanation.text());
    }
    Ok(())
}
