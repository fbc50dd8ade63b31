//! `refstrip index` and the `--local-store` options of substitute and serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use refstrip_localstore::LocalStore;

#[derive(Args)]
pub struct IndexArgs {
    /// The Nix store root whose valid paths to index: `/` for the system store, or a chroot root
    /// (`ROOT/nix/store`, `ROOT/nix/var/nix/db/db.sqlite`, which is only read).
    #[arg(long = "store", value_name = "ROOT")]
    root: PathBuf,
    /// Where the index lives [default: ROOT/nix/var/refstrip].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The logical store directory of the paths.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    store_dir: String,
}

/// Open the local store at `root` and bring its index up to date, with a progress bar unless
/// `quiet`. Prints nothing else.
pub(crate) fn open_updated(
    root: &Path,
    store_dir: &str,
    state: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<(Arc<LocalStore>, refstrip_localstore::UpdateReport)> {
    let state = state
        .map(Path::to_path_buf)
        .unwrap_or_else(|| LocalStore::default_state_dir(root));
    let local = LocalStore::open(root, store_dir, &state)
        .with_context(|| format!("opening the local store {}", root.display()))?;
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} paths {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = local
        .update(&progress)
        .with_context(|| format!("indexing the local store {}", root.display()))?;
    progress.finish_and_clear();
    Ok((Arc::new(local), report))
}

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    let (_, r) = open_updated(&args.root, &args.store_dir, args.state.as_deref(), false)?;
    println!(
        "indexed {} new paths ({} NAR bytes, {} objects); {} could not be read, {} dropped as no longer valid",
        r.paths, r.nar_bytes, r.objects, r.skipped, r.dropped
    );
    Ok(())
}
