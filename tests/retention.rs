//! gc by retention policy: paths registered or served within a duration (`--keep-within`, with
//! `serve --served-state`), the newest N of each package (`--keep-newest`), and explicit roots,
//! each kept with its closure; `--dry-run` tells what each policy alone would free.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use refstrip_tests::operator::{corpus_root, nix, Serving};
use refstrip_tests::{corpus_key, corpus_packages, generation_dir, refstrip_bin, run, snapshot};

const DAY: Duration = Duration::from_secs(86400);

fn refstrip(args: &[&str]) -> Output {
    Command::new(refstrip_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = refstrip(args);
    assert!(
        out.status.success(),
        "refstrip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Hash parts with records in the store.
fn records(store: &Path) -> BTreeSet<String> {
    fs::read_dir(store.join("paths"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn hash_part(store_path: &str) -> String {
    store_path.rsplit('/').next().unwrap()[..32].to_string()
}

/// The hash parts of a generation's paths.
fn generation(name: &str) -> BTreeSet<String> {
    corpus_packages(name)
        .values()
        .map(|p| hash_part(p))
        .collect()
}

/// A store with each generation ingested in turn, the records each one added dated `age` ago (as
/// if it had been registered then).
fn store_of(dir: &Path, generations: &[(&str, Duration)]) -> std::path::PathBuf {
    let store = dir.join("store");
    let mut seen = BTreeSet::new();
    for (name, age) in generations {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(generation_dir(name))
            .args(["--all", "--to"])
            .arg(&store));
        let when = SystemTime::now() - *age;
        for h in records(&store) {
            if seen.insert(h.clone()) {
                fs::File::options()
                    .write(true)
                    .open(store.join("paths").join(&h))
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
        }
    }
    store
}

/// The paths a `gc --dry-run` output says it would remove, as hash parts.
fn would_remove(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("would remove /"))
        .map(|p| hash_part(&format!("/{p}")))
        .collect()
}

/// The line of a dry run about one policy.
fn policy_line<'a>(output: &'a str, policy: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(&format!("policy {policy} ")))
        .unwrap_or_else(|| panic!("no line for {policy} in:\n{output}"))
}

/// The bytes a gc said it would free (dry run) or freed, from its summary line.
fn freed(output: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains(" packs, freeing ") || l.contains(" packs, freed "))
        .unwrap_or_else(|| panic!("no summary in:\n{output}"));
    let at = match line.find("freeing ") {
        Some(i) => i + "freeing ".len(),
        None => line.find("freed ").unwrap() + "freed ".len(),
    };
    line[at..].split(';').next().unwrap().trim().to_string()
}

#[test]
fn keep_within_keeps_paths_registered_or_served_recently_with_their_closure() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(dir.path(), &[("gen1", 60 * DAY), ("bump", Duration::ZERO)]);
    let s = store.to_str().unwrap();
    let (gen1, bump) = (generation("gen1"), generation("bump"));
    let gen1_only: BTreeSet<String> = gen1.difference(&bump).cloned().collect();
    assert_eq!(gen1_only.len(), 5, "the bump generation changes five paths");

    // Registered 60 days ago and never served: gen1's own paths go; what bump shares stays.
    let dry = ok(&["gc", s, "--keep-within", "30d", "--dry-run"]);
    assert_eq!(would_remove(&dry), gen1_only, "{dry}");
    assert!(
        policy_line(&dry, "keep-within").contains("(5 registered, 0 served within)"),
        "{dry}"
    );

    // Stock Nix fetches gen1 through serve, which notes what it served outside the store.
    let state = dir.path().join("served");
    let before = snapshot(&store);
    let server = Serving::start(&store, &["--served-state", state.to_str().unwrap()]);
    let root = dir.path().join("client");
    let out = nix(&["copy", "--from", &server.url(), "--to"])
        .arg(&root)
        .args(["--option", "trusted-public-keys", &corpus_key()])
        // Nix keeps narinfos per cache URL for a month; another test's server may have had this port.
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .arg(corpus_root("gen1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    assert_eq!(snapshot(&store), before, "serve wrote into the store");
    assert!(state.join("served.sqlite").exists());

    // Served just now: gen1's paths are kept too.
    let served = ok(&[
        "gc",
        s,
        "--keep-within",
        "30d",
        "--served-state",
        state.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(would_remove(&served).is_empty(), "{served}");
    assert!(
        policy_line(&served, "keep-within").contains("(5 registered, 14 served within)"),
        "{served}"
    );
    // A shorter window than the registration and no serving: only what was served counts.
    let within_day = ok(&["gc", s, "--keep-within", "1d", "--dry-run"]);
    assert_eq!(would_remove(&within_day), gen1_only);

    // The real gc removes what the dry run said, and frees what it said.
    let done = ok(&["gc", s, "--keep-within", "30d"]);
    assert_eq!(records(&store), bump, "{done}");
    assert_eq!(freed(&done), freed(&dry), "dry run:\n{dry}\ngc:\n{done}");
}

#[test]
fn keep_newest_keeps_the_newest_paths_of_each_package_and_roots_add_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(dir.path(), &[("gen1", 10 * DAY), ("bump", Duration::ZERO)]);
    let s = store.to_str().unwrap();
    let (gen1, bump) = (generation("gen1"), generation("bump"));
    let gen1_only: BTreeSet<String> = gen1.difference(&bump).cloned().collect();
    let bump_only: BTreeSet<String> = bump.difference(&gen1).cloned().collect();

    // lua 5.4.4 → 5.4.7 (out and dev), lua-env, lua-zlib-1.3 (same name, new hash) and the profile:
    // the newest of each is bump's.
    let newest = ok(&["gc", s, "--keep-newest", "1", "--dry-run"]);
    assert_eq!(would_remove(&newest), gen1_only, "{newest}");
    let two = ok(&["gc", s, "--keep-newest", "2", "--dry-run"]);
    assert!(would_remove(&two).is_empty(), "{two}");

    // Each policy alone, and together: gen1's root keeps gen1's closure.
    let gen1_root = corpus_root("gen1");
    let both = ok(&[
        "gc",
        s,
        "--keep-newest",
        "1",
        "--keep",
        &gen1_root,
        "--dry-run",
    ]);
    assert!(would_remove(&both).is_empty(), "{both}");
    assert!(
        policy_line(&both, "roots").contains("alone it would remove 5 paths"),
        "{both}"
    );
    assert!(
        policy_line(&both, "keep-newest").contains("alone it would remove 5 paths"),
        "{both}"
    );
    assert_eq!(bump_only.len(), 5);

    let done = ok(&["gc", s, "--keep-newest", "1"]);
    assert_eq!(records(&store), bump, "{done}");

    // Nothing to keep is refused, as before.
    let refused = refstrip(&["gc", s]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--keep-newest"));
}
