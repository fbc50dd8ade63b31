//! `refstrip-bench`: throughput measurements of refstrip next to its peers, printed as Markdown
//! (exact command line, machine facts, median/min/max MB/s) ready for `docs/benchmarks.md`.
//!
//! These are measurements reported with their command, not timed tests: nothing here passes or
//! fails on a number.

mod gen;
mod nar;
mod packs;
mod proto;
mod report;
mod strip;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "refstrip-bench",
    about = "Throughput benchmarks of refstrip against nix-store and SHA-256"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NAR codec: dump vs `nix-store --dump`, in-memory read and write, unpack vs `nix-store --restore`.
    Nar(nar::NarArgs),
    /// Strip, strip + pack and restore over a binary cache's NARs, per core, vs SHA-256.
    Strip(strip::StripArgs),
    /// Pack blocks: a store's objects compressed in other groupings, filters and levels.
    Packs(packs::PacksArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Nar(args) => nar::run(args),
        Command::Strip(args) => strip::run(args),
        Command::Packs(args) => packs::run(args),
    }
}
