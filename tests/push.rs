//! `refstrip push` from a build machine's Nix store (issue #16): the closure of what was built,
//! minus what the store has, signed with the operator's key so that stock Nix copies it back
//! through `refstrip serve` with only that key trusted; `--watch` picks up paths the local store
//! gains; the post-build-hook script pushes `$OUT_PATHS` as Nix hands them over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use refstrip_tests::operator::{
    closure_in, corpus_root, key_pair, nix, nix_copy_from, strip_signatures, unsigned_local_store,
    verify_contents, Serving,
};
use refstrip_tests::{corpus_dir, refstrip_bin, require_nix, run};

fn push(local: &Path, store: &Path, extra: &[&str], paths: &[&str]) -> serde_json::Value {
    let out = run(Command::new(refstrip_bin())
        .args(["push", "--json", "--store"])
        .arg(local)
        .arg("--to")
        .arg(store)
        .args(extra)
        .args(paths));
    serde_json::from_slice(&out).unwrap()
}

/// Add a corpus generation's closure to the local store (as a build would) and drop signatures.
fn add_generation(local: &Path, generation: &str) {
    run(nix(&["copy", "--no-check-sigs", "--from"])
        .arg(format!(
            "file://{}",
            corpus_dir().join("small").join(generation).display()
        ))
        .arg("--to")
        .arg(local)
        .arg(corpus_root(generation)));
    strip_signatures(local);
}

/// Store paths (`/nix/store/<base name>`) the normalized store has records for.
fn stored_paths(store: &Path) -> BTreeSet<String> {
    let reader = refstrip_read::StoreReader::open(store.to_str().unwrap()).unwrap();
    reader
        .list_paths()
        .unwrap()
        .into_iter()
        .map(|hash| reader.record(&hash).unwrap().0.store_path())
        .collect()
}

fn packs(store: &Path) -> usize {
    std::fs::read_dir(store.join("packs")).unwrap().count()
}

#[test]
fn push_sends_the_closure_minus_what_the_store_has_and_nix_copies_it_back() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "builder-1");
    let (_, other) = key_pair(tmp.path(), "other-1");
    let sign = ["--sign-key", secret.to_str().unwrap()];
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    add_generation(&local, "single");
    let store = tmp.path().join("store");
    let (gen1, single) = (corpus_root("gen1"), corpus_root("single"));

    let first = push(&local, &store, &sign, &[&gen1]);
    assert_eq!(
        (first["paths"].as_u64(), first["pushed"].as_u64()),
        (Some(14), Some(14))
    );
    let packs_after_first = packs(&store);
    // Idempotent: nothing is sent again.
    let again = push(&local, &store, &sign, &[&gen1]);
    assert_eq!(
        (
            again["pushed"].as_u64(),
            again["present"].as_u64(),
            again["packs"].as_u64()
        ),
        (Some(0), Some(14), Some(0))
    );
    assert_eq!(packs(&store), packs_after_first);
    // Incremental: the single-package rebuild shares 7 of its 14 paths with gen1.
    let rebuild = push(&local, &store, &sign, &[&single]);
    assert_eq!(
        (rebuild["pushed"].as_u64(), rebuild["present"].as_u64()),
        (Some(7), Some(7))
    );
    let expected: BTreeSet<String> = closure_in(&local, &gen1)
        .into_iter()
        .chain(closure_in(&local, &single))
        .collect();
    assert_eq!(stored_paths(&store), expected);

    // Back through serve into a fresh store, with only the builder's key trusted.
    let server = Serving::start(&store, &[]);
    for (path, dest) in [(&single, "dest-single"), (&gen1, "dest-gen1")] {
        let dest = tmp.path().join(dest);
        let out = nix_copy_from(&server.url(), &dest, &public, path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        verify_contents(&dest);
        assert_eq!(closure_in(&dest, path), closure_in(&local, path));
    }
    let refused = nix_copy_from(
        &server.url(),
        &tmp.path().join("dest-other"),
        &other,
        &single,
    );
    assert!(
        !refused.status.success(),
        "accepted with another key trusted"
    );
    server.stop();

    // Not a Nix store: said so, nothing written.
    let out = Command::new(refstrip_bin())
        .args(["push", "--store"])
        .arg(tmp.path())
        .arg("--to")
        .arg(tmp.path().join("nowhere"))
        .arg(&gen1)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Nix store root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!tmp.path().join("nowhere").exists());
}

/// A `refstrip push --watch` child, killed on drop if the test did not stop it.
struct Watching(std::process::Child, PathBuf);

impl Drop for Watching {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- push --watch stderr:\n{}",
                std::fs::read_to_string(&self.1).unwrap_or_default()
            );
        }
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn watch_pushes_the_paths_the_local_store_gains_and_stops_on_sigterm() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "builder-1");
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    let store = tmp.path().join("store");
    let log = tmp.path().join("watch.log");
    let child = Command::new(refstrip_bin())
        .args(["push", "--watch", "--interval", "0.5", "--json", "--store"])
        .arg(&local)
        .arg("--to")
        .arg(&store)
        .arg("--sign-key")
        .arg(&secret)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut watching = Watching(child, log.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("watching") {
        assert!(
            watching.0.try_wait().unwrap().is_none(),
            "push --watch exited early"
        );
        assert!(Instant::now() < deadline, "push --watch did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing that was there when it started is pushed.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!store.join("paths").exists() || stored_paths(&store).is_empty());

    // A "build" adds the single-package rebuild (7 new paths, 7 shared with gen1).
    add_generation(&local, "single");
    let added = Instant::now();
    let single = corpus_root("single");
    let expected: BTreeSet<String> = closure_in(&local, &single).into_iter().collect();
    loop {
        if store.join("paths").exists() && stored_paths(&store) == expected {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(60),
            "push --watch did not push the new closure within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "pushed {} paths {:.1} s after they were registered",
        expected.len(),
        added.elapsed().as_secs_f64()
    );

    run(Command::new("kill").args(["-TERM", &watching.0.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = watching.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "push --watch ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "push --watch exited with {status} after SIGTERM"
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(watching.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let pushed: u64 = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["pushed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(pushed, 14, "{stdout}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped"));

    let server = Serving::start(&store, &[]);
    let dest = tmp.path().join("dest");
    let out = nix_copy_from(&server.url(), &dest, &public, &single);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(&dest);
    server.stop();
}

#[test]
fn the_post_build_hook_pushes_out_paths_and_does_not_fail_builds_by_default() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = key_pair(tmp.path(), "builder-1");
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    let store = tmp.path().join("store");
    let hook = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/post-build-hook.sh"
    ));
    let gen1 = corpus_root("gen1");
    // Two outputs, as Nix passes them: space-separated in OUT_PATHS.
    let closure = closure_in(&local, &gen1);
    let lua = closure
        .iter()
        .find(|p| p.contains("-lua-"))
        .unwrap()
        .clone();
    let hook_run = |to: &Path, strict: &str| {
        Command::new("sh")
            .arg(&hook)
            .env("OUT_PATHS", format!("{gen1} {lua}"))
            .env(
                "DRV_PATH",
                "/nix/store/00000000000000000000000000000000-x.drv",
            )
            .env("REFSTRIP", refstrip_bin())
            .env("REFSTRIP_PUSH_CONFIG", tmp.path().join("no-such.conf"))
            .env("REFSTRIP_PUSH_TO", to)
            .env("REFSTRIP_PUSH_STORE", &local)
            .env("REFSTRIP_SIGN_KEY", &secret)
            .env("REFSTRIP_PUSH_STRICT", strict)
            .output()
            .unwrap()
    };
    let out = hook_run(&store, "0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_paths(&store), closure.into_iter().collect());

    // A push that fails (the store is a file) is reported; only strict mode fails the hook.
    let bad = tmp.path().join("a-file");
    std::fs::write(&bad, "x").unwrap();
    let lenient = hook_run(&bad, "0");
    assert!(lenient.status.success());
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("failed"));
    assert!(!hook_run(&bad, "1").status.success());
}
