//! The `refstrip` command: a thin layer that parses arguments and calls the library crates.

mod mount;
mod nar;
mod narinfo;
mod savings;
mod serve;
mod store_cmd;
mod strip;
mod substitute;

use clap::{Parser, Subcommand};

/// refstrip makes Nix binary caches dedupe across mass rebuilds: it strips store-path hashes out of
/// NARs into patch lists, stores the normalized content by BLAKE3, and restores the exact original
/// bytes (same NarHash, same signatures) on the client.
#[derive(Parser)]
#[command(name = "refstrip", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with Nix archives (NAR): dump a path, unpack, list.
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with .narinfo files: verify their signatures.
    #[command(subcommand)]
    Narinfo(narinfo::NarinfoCommand),
    /// Strip one store path's NAR into a normalized bundle: hashes of references replaced by
    /// placeholders, their positions kept in patch lists (see spec/normalized-format.md).
    Strip(strip::StripArgs),
    /// Restore a bundle written by `strip` to the exact original NAR (SHA-256 checked).
    Restore(strip::RestoreArgs),
    /// Normalize a binary cache or Nix store into a normalized store (the cache-side job).
    Ingest(store_cmd::IngestArgs),
    /// Show what a normalized store holds and how much it saves.
    Stats(store_cmd::StatsArgs),
    /// Remove paths not kept (with their closure) and the packs nothing needs any more.
    Gc(store_cmd::GcArgs),
    /// Substitute store paths and their closure from a normalized store into a Nix store.
    Substitute(substitute::SubstituteArgs),
    /// Serve a normalized store as a standard Nix binary cache over HTTP (NARs restored on the fly).
    Serve(serve::ServeArgs),
    /// Mount store paths read-only with FUSE: the whole closure listed from manifests, file
    /// contents fetched, verified and patched on first read.
    Mount(mount::MountArgs),
    /// Measure what each substitution granularity (NAR, files, CDC, refstrip) downloads from one
    /// closure to another (see docs/savings.md).
    Savings(savings::SavingsArgs),
    /// Show why a path did not deduplicate after stripping: residual bytes by file and ELF section.
    Explain(savings::ExplainArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Nar(cmd) => nar::run(cmd),
        Command::Narinfo(cmd) => narinfo::run(cmd),
        Command::Strip(args) => strip::strip(args),
        Command::Restore(args) => strip::restore(args),
        Command::Ingest(args) => store_cmd::ingest_cmd(args),
        Command::Stats(args) => store_cmd::stats_cmd(args),
        Command::Gc(args) => store_cmd::gc_cmd(args),
        Command::Substitute(args) => substitute::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Savings(args) => savings::savings(args),
        Command::Explain(args) => savings::explain_cmd(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refstrip: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
