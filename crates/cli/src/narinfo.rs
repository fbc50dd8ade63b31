//! `refstrip narinfo …` (owned by the nix-formats work; filled in with crates/nix).

use clap::Subcommand;

#[derive(Subcommand)]
pub enum NarinfoCommand {}

pub fn run(cmd: NarinfoCommand) -> anyhow::Result<()> {
    match cmd {}
}
