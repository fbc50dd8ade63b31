//! The `refstrip` command: a thin layer that parses arguments and calls the library crates.

mod local_store;
mod mount;
mod nar;
mod narinfo;
mod push;
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
    /// Push store paths built on this machine, with their closure, to a normalized store (what
    /// the store lacks only); --watch keeps pushing what the local Nix store gains.
    Push(push::PushArgs),
    /// Show what a normalized store holds and how much it saves.
    Stats(store_cmd::StatsArgs),
    /// Remove paths not kept (with their closure) by roots or retention policies, and the packs
    /// nothing needs any more.
    Gc(store_cmd::GcArgs),
    /// Rewrite packs that are mostly dead (after gc), keeping only what path records point at.
    Repack(store_cmd::RepackArgs),
    /// Substitute store paths and their closure from a normalized store into a Nix store.
    Substitute(substitute::SubstituteArgs),
    /// Index the objects in a local Nix store's valid paths, so that substitute and serve
    /// (`--local-store`) take them from there instead of the network.
    Index(local_store::IndexArgs),
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

/// Exit status when standard output was closed under us (`refstrip … | head -1`): 128 + SIGPIPE,
/// what a tool killed by SIGPIPE reports, but as a quiet exit after the work was done.
const EXIT_STDOUT_CLOSED: u8 = 141;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so writing to a closed pipe is EPIPE, and `println!` panics on it
    // (exit 101, "Broken pipe"). Subcommands print their results with `println!` after their work
    // is done (substitute prints after registering), so that panic becomes a quiet exit here;
    // writers that return errors (nar dump/ls) end the same way through `is_broken_pipe`.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_stdout_closed_panic(info.payload()) {
            default_hook(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command)));
    let result = match result {
        Ok(result) => result,
        Err(payload) if is_stdout_closed_panic(&*payload) => {
            return std::process::ExitCode::from(EXIT_STDOUT_CLOSED)
        }
        Err(payload) => std::panic::resume_unwind(payload),
    };
    // Buffered output not yet written may still meet the closed pipe.
    let flushed = std::io::Write::flush(&mut std::io::stdout());
    match result {
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::from(EXIT_STDOUT_CLOSED),
        Ok(()) => match flushed {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                std::process::ExitCode::from(EXIT_STDOUT_CLOSED)
            }
            _ => std::process::ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("refstrip: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The panic `println!` raises on a closed standard output.
fn is_stdout_closed_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    msg.starts_with("failed printing to stdout") && msg.contains("os error 32")
}

/// Whether an error is, anywhere in its chain, EPIPE from writing our output.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use refstrip_nar::NarError;
    use refstrip_strip::StripError;
    // Transparent variants hide the io::Error from the source chain: look inside them too.
    fn nar_io(e: &NarError) -> Option<&std::io::Error> {
        match e {
            NarError::Io(e) | NarError::PathIo { error: e, .. } => Some(e),
            _ => None,
        }
    }
    e.chain().any(|cause| {
        let io = cause
            .downcast_ref::<std::io::Error>()
            .or_else(|| cause.downcast_ref::<NarError>().and_then(nar_io))
            .or_else(|| match cause.downcast_ref::<StripError>() {
                Some(StripError::Io(e)) => Some(e),
                Some(StripError::Nar(e)) => nar_io(e),
                _ => None,
            });
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Nar(cmd) => nar::run(cmd),
        Command::Narinfo(cmd) => narinfo::run(cmd),
        Command::Strip(args) => strip::strip(args),
        Command::Restore(args) => strip::restore(args),
        Command::Ingest(args) => store_cmd::ingest_cmd(args),
        Command::Push(args) => push::run(args),
        Command::Stats(args) => store_cmd::stats_cmd(args),
        Command::Gc(args) => store_cmd::gc_cmd(args),
        Command::Repack(args) => store_cmd::repack_cmd(args),
        Command::Substitute(args) => substitute::run(args),
        Command::Index(args) => local_store::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Savings(args) => savings::savings(args),
        Command::Explain(args) => savings::explain_cmd(args),
    }
}
