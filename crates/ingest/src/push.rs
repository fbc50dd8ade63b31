//! `refstrip push`: a build machine sends what it built. A push is an ingest whose source is the
//! machine's own Nix store and whose paths are the closure of what was built, minus what the store
//! already has; [`watch`] pushes whatever the local store gains, for as long as it runs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use refstrip_nix::{StoreDir, StorePath};
use refstrip_source::watch::{nix_db_path, NewPaths};
use refstrip_source::{open_source, NarSource, SourceError};
use refstrip_store::Store;

use crate::{ingest, select, IngestError, IngestOptions, IngestReport};

/// The local Nix store at `root` (`/` or a chroot store's root) as a source; anything else (a
/// binary cache, a typo) is refused.
pub fn local_source(root: &Path, store_dir: StoreDir) -> Result<Box<dyn NarSource>, IngestError> {
    if !nix_db_path(root).exists() {
        return Err(SourceError::Invalid {
            what: root.display().to_string(),
            why: format!(
                "not a Nix store root ({} does not exist); push reads the machine's own Nix store: --store / or a chroot store's root",
                nix_db_path(root).display()
            ),
        }
        .into());
    }
    let spec = root.to_str().ok_or_else(|| SourceError::Invalid {
        what: root.display().to_string(),
        why: "not valid UTF-8".into(),
    })?;
    Ok(open_source(spec, store_dir)?)
}

/// Push `paths` and their closure from `source` into `store`: the paths the store lacks are
/// stripped and stored, those it has are skipped (and re-signed if `options.sign_key` is set and
/// their record lacks that signature). Pushing the same paths again stores nothing.
pub fn push(
    source: &dyn NarSource,
    store: &Store,
    paths: Vec<StorePath>,
    options: &IngestOptions,
    progress: &ProgressBar,
) -> Result<IngestReport, IngestError> {
    let options = IngestOptions {
        closure: true,
        shard: None,
        ..options.clone()
    };
    let infos = select(source, paths, &options)?;
    ingest(source, store, infos, &options, progress)
}

/// What [`watch`] did in one round.
pub enum WatchEvent<'a> {
    /// Watching has begun: paths registered from now on (database id above this one) are pushed.
    Started { last_id: i64 },
    /// These paths were new in the local store; their push ended with this report (per-path
    /// failures are in it; those paths are not retried).
    Pushed(&'a [StorePath], &'a IngestReport),
    /// Pushing these paths failed as a whole (store or source unreachable, …); they are tried
    /// again after the next interval, with whatever else is new by then.
    Failed(&'a [StorePath], &'a IngestError),
}

/// Push what the local Nix store at `root` gains until `stop` is set: every `interval`, one query
/// of its database for paths registered since the last one ([`NewPaths`]), then a [`push`] of
/// them. Paths valid when the watch starts are not pushed (push them explicitly first). `stop` is
/// checked at least every 100 ms while waiting; a push in progress is finished first.
pub fn watch(
    root: &Path,
    store_dir: StoreDir,
    store: &Store,
    options: &IngestOptions,
    interval: Duration,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(WatchEvent<'_>),
) -> Result<(), IngestError> {
    let source = local_source(root, store_dir)?;
    let mut new_paths = NewPaths::open(root, source.store_dir().clone())?;
    on_event(WatchEvent::Started {
        last_id: new_paths.last_id(),
    });
    let mut pending: Vec<StorePath> = Vec::new();
    let progress = ProgressBar::hidden();
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + interval;
        match new_paths.poll() {
            Ok(paths) => pending.extend(paths),
            Err(e) => on_event(WatchEvent::Failed(&pending, &e.into())),
        }
        if !pending.is_empty() {
            match push(&*source, store, pending.clone(), options, &progress) {
                Ok(report) => {
                    on_event(WatchEvent::Pushed(&pending, &report));
                    pending.clear();
                }
                Err(e) => on_event(WatchEvent::Failed(&pending, &e)),
            }
        }
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
        }
    }
    Ok(())
}

/// A flag set by SIGINT or SIGTERM, for [`watch`]'s `stop`. A second signal while the first is
/// being honoured (a push finishing) ends the process at once with status 1: whatever a push has
/// not published is scratch, and the next push redoes it.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag before the second handler sets it: the second
        // signal terminates.
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}
