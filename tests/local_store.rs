//! The local Nix store as the nearest object source, with real Nix as the oracle: gen1 installed by
//! plain `nix copy` (no refstrip), indexed, then the mass rebuild substituted from a normalized store
//! over HTTP. Bytes are counted at the origin.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use refstrip_tests::operator::{
    local_substituter, nix_copy_counted as nix_copy, update_through_local_substituter,
    verify_contents,
};
use refstrip_tests::{corpus_dir, refstrip_bin, run, static_http_server_counting};

fn gen_dir(generation: &str) -> PathBuf {
    corpus_dir().join("small").join(generation)
}

fn root_path(generation: &str) -> String {
    fs::read_to_string(gen_dir(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
}

/// A chroot Nix store with gen1, as stock Nix installs it from the plain binary cache.
fn gen1_by_nix(root: &Path) {
    refstrip_tests::operator::nix_copy_generation(root, "gen1");
}

fn index(root: &Path) -> String {
    let out = run(Command::new(refstrip_bin())
        .args(["index", "--store"])
        .arg(root));
    String::from_utf8(out).unwrap()
}

/// Substitute the mass generation into `root` from `url`; the JSON report and the bytes the origin
/// sent during the run.
fn substitute_mass(
    url: &str,
    sent: &std::sync::atomic::AtomicU64,
    root: &Path,
    extra: &[&str],
) -> (serde_json::Value, u64) {
    refstrip_tests::operator::substitute_generation("mass", url, sent, root, extra)
}

fn mass_hashes_match(root: &Path) {
    refstrip_tests::operator::hashes_match(root, "mass");
}

/// The largest regular file under `dir`.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best = (0, PathBuf::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.len() > best.0 {
                best = (m.len(), e.path());
            }
        }
    }
    best.1
}

#[test]
fn the_local_store_saves_the_download_and_stale_copies_are_only_misses() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("normalized");
    for g in ["gen1", "mass"] {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "--to"])
            .arg(&store));
    }
    let (url, _, sent) = static_http_server_counting(store.clone());

    // Without the local store: every block the mass generation needs comes from the origin.
    let plain = dir.path().join("plain");
    gen1_by_nix(&plain);
    let (r, without) = substitute_mass(&url, &sent, &plain, &["--no-local-store"]);
    assert_eq!(r["local_objects"], 0);
    verify_contents(&plain);

    // With it (the default for --store's ROOT): indexed ahead by `refstrip index`.
    let local = dir.path().join("local");
    gen1_by_nix(&local);
    let said = index(&local);
    assert!(said.contains("indexed 14 new paths"), "{said}");
    assert!(index(&local).contains("indexed 0 new paths"), "incremental");
    let (r, with) = substitute_mass(&url, &sent, &local, &[]);
    verify_contents(&local);
    mass_hashes_match(&local);
    assert!(r["local_objects"].as_u64().unwrap() > 50, "{r}");
    assert_eq!(
        r["fetched_blocks"], 0,
        "every object was in the local store: {r}"
    );
    eprintln!(
        "origin bytes for the mass generation: {without} without the local store, {with} with it"
    );
    // Measured: 823,397 without, 14,640 with (the path records; every object was local).
    assert!(with * 20 < without, "{with} vs {without}");

    // A store file altered on disk (the largest, a chunked library): its changed chunk is fetched
    // instead, the restore is still exact.
    let altered = dir.path().join("altered");
    gen1_by_nix(&altered);
    index(&altered);
    let victim = largest_file(&altered.join("nix/store"));
    run(Command::new("chmod").arg("u+w").arg(&victim));
    let mut bytes = fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    let (r, fetched) = substitute_mass(&url, &sent, &altered, &[]);
    nix_verify_mass_only(&altered, &victim);
    mass_hashes_match(&altered);
    assert!(
        fetched > with,
        "the altered chunk came from the origin: {fetched} vs {with}"
    );
    assert!(r["local_objects"].as_u64().unwrap() > 50, "{r}");

    // Paths garbage-collected after indexing: misses, not errors.
    let collected = dir.path().join("collected");
    gen1_by_nix(&collected);
    index(&collected);
    run(Command::new("nix-store")
        .arg("--store")
        .arg(&collected)
        .arg("--gc"));
    assert!(!collected
        .join("nix/store")
        .join(root_path("gen1").trim_start_matches("/nix/store/"))
        .exists());
    let (r, fetched) = substitute_mass(&url, &sent, &collected, &[]);
    verify_contents(&collected);
    mass_hashes_match(&collected);
    assert_eq!(r["local_objects"], 0);
    assert!(fetched * 10 > without * 9, "{fetched} vs {without}");
}

/// Every row of a local-store index (`state/local-objects.sqlite`), path ids aside, sorted.
fn index_rows(state: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(state.join("local-objects.sqlite")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT p.basename, p.refs, o.kind, hex(o.digest), hex(o.file), o.file_size, o.offset,
                    o.size, o.zero_start, o.zero_end, hex(o.list)
             FROM objects o JOIN paths p ON p.id = o.path",
        )
        .unwrap();
    let mut rows: Vec<String> = stmt
        .query_map([], |r| {
            let cells: rusqlite::Result<Vec<String>> = (0..11)
                .map(|i| Ok(format!("{:?}", r.get::<_, rusqlite::types::Value>(i)?)))
                .collect();
            Ok(cells?.join(" "))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows.sort();
    rows
}

#[test]
fn substitute_indexes_the_paths_it_writes() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("normalized");
    for g in ["gen1", "mass"] {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "--to"])
            .arg(&store));
    }
    let (url, _, sent) = static_http_server_counting(store.clone());
    // A store this run makes: nothing to read from, the 14 paths written are indexed.
    let root = dir.path().join("root");
    let (r, _) = refstrip_tests::operator::substitute_generation("gen1", &url, &sent, &root, &[]);
    assert_eq!(r["paths"], 14, "{r}");
    assert_eq!(r["indexed_written_paths"], 14, "{r}");
    assert!(index(&root).contains("indexed 0 new paths"));
    // The update: gen1 is the source, the paths written are indexed as they are registered.
    let (r, _) = substitute_mass(&url, &sent, &root, &[]);
    assert!(r["local_objects"].as_u64().unwrap() > 50, "{r}");
    assert!(r["paths"].as_u64().unwrap() > 0);
    assert_eq!(r["indexed_written_paths"], r["paths"], "{r}");
    let said = index(&root);
    assert!(
        said.contains("indexed 0 new paths"),
        "nothing to strip: {said}"
    );
    verify_contents(&root);
    // What was indexed is exactly what stripping the written files finds.
    let state = root.join("nix/var/refstrip");
    let stripped = dir.path().join("stripped-index");
    run(Command::new(refstrip_bin())
        .args(["index", "--store"])
        .arg(&root)
        .arg("--state")
        .arg(&stripped));
    let rows = index_rows(&state);
    assert!(rows.len() > 100, "{} rows", rows.len());
    let want = index_rows(&stripped);
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|r| !b.contains(r))
            .take(5)
            .cloned()
            .collect()
    };
    assert!(
        rows == want,
        "only in the index written: {:#?}\nonly in the stripped one: {:#?}",
        only(&rows, &want),
        only(&want, &rows)
    );
    // Not the target store: nothing written is added to another store's index.
    let other = dir.path().join("other");
    gen1_by_nix(&other);
    let (r, _) = substitute_mass(
        &url,
        &sent,
        &other,
        &["--local-store", root.to_str().unwrap()],
    );
    assert_eq!(r["indexed_written_paths"], 0, "{r}");
    assert_eq!(index_rows(&state), rows);
    verify_contents(&other);
}

/// `--verify --check-contents` over the mass generation only: the altered gen1 file is (rightly)
/// reported by Nix, so check that it is the only complaint.
fn nix_verify_mass_only(root: &Path, altered: &Path) {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(root)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = altered
        .strip_prefix(root.join("nix/store"))
        .unwrap()
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    for line in stderr.lines().filter(|l| l.contains("modified")) {
        assert!(
            line.contains(&name),
            "only the altered path may be reported: {line}"
        );
    }
}

#[test]
fn stock_nix_updates_through_serve_drawing_on_the_local_store() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("normalized");
    for g in ["gen1", "mass"] {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "--to"])
            .arg(&store));
    }
    let (origin, _, sent) = static_http_server_counting(store.clone());

    // The peer in the same run: stock Nix from the plain binary cache of the mass generation.
    let (plain_cache, _, plain_sent) = static_http_server_counting(gen_dir("mass"));
    let plain = dir.path().join("plain");
    gen1_by_nix(&plain);
    let baseline = nix_copy(&plain_cache, &plain, &root_path("mass"), &plain_sent);

    // gen1 installed by plain nix copy (no refstrip); the local substituter started afterwards.
    let fetched =
        update_through_local_substituter(&origin, &dir.path().join("root"), "mass", &sent);
    eprintln!("mass through the local substituter: {fetched} bytes from the origin; plain cache: {baseline}");
    // Issue 14's bound: at most 1.5 % of the mass generation's NAR.xz (measured: 3,704 bytes, the
    // 14 format 2 bindings, 0.51 %; the shapes come from the local store's own paths).
    let xz = refstrip_tests::xz_bytes("mass");
    assert!(fetched * 1000 <= xz * 15, "{fetched} bytes vs NAR.xz {xz}");
    assert!(fetched * 20 < baseline, "{fetched} vs {baseline}");

    // gen1 installed through the substituter itself, which is then restarted before the update.
    let root = dir.path().join("through");
    // An empty Nix store, as on a fresh machine (Nix creates it on first use).
    run(Command::new("nix")
        .args(["path-info", "--all", "--store"])
        .arg(&root));
    let serve = local_substituter(&origin, &root, &[]);
    nix_copy(&serve.url(), &root, &root_path("gen1"), &sent);
    drop(serve);
    let serve = local_substituter(&origin, &root, &[]);
    let fetched_after_restart = nix_copy(&serve.url(), &root, &root_path("mass"), &sent);
    drop(serve);
    verify_contents(&root);
    mass_hashes_match(&root);
    eprintln!("after a restart: {fetched_after_restart} bytes from the origin");
    assert!(
        fetched_after_restart * 1000 <= xz * 15,
        "{fetched_after_restart} bytes vs NAR.xz {xz}"
    );

    // A daemon that keeps running picks up what Nix installed through it without a restart.
    let root = dir.path().join("running");
    run(Command::new("nix")
        .args(["path-info", "--all", "--store"])
        .arg(&root));
    let serve = local_substituter(&origin, &root, &["--local-refresh", "1"]);
    nix_copy(&serve.url(), &root, &root_path("gen1"), &sent);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let fetched_running = nix_copy(&serve.url(), &root, &root_path("mass"), &sent);
    drop(serve);
    verify_contents(&root);
    mass_hashes_match(&root);
    eprintln!("without a restart: {fetched_running} bytes from the origin");
    assert!(
        fetched_running * 20 < baseline,
        "{fetched_running} vs {baseline}"
    );
}

/// Bytes of the block files under a disk cache.
fn cached_bytes(cache: &Path) -> u64 {
    let mut total = 0;
    let blocks = cache.join("blocks");
    for pack in fs::read_dir(&blocks).into_iter().flatten().flatten() {
        for file in fs::read_dir(pack.path()).unwrap().flatten() {
            total += file.metadata().unwrap().len();
        }
    }
    total
}

#[test]
fn serve_keeps_its_disk_cache_under_the_cap_and_reuses_it() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("normalized");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(gen_dir("gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let (origin, _, sent) = static_http_server_counting(store.clone());
    let cache = dir.path().join("cache");
    // A cap that holds the largest block (a block over the cap is evicted as soon as it is kept)
    // but not all of them, so eviction must happen; how ingest groups objects into blocks varies.
    let mut blocks = std::collections::BTreeMap::new();
    for e in fs::read_dir(store.join("paths")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let record = refstrip_tests::read_record(&store, &name);
        for (pack, loc) in record.objects.map().unwrap().values() {
            blocks.insert((pack.clone(), loc.block_offset), loc.block_len);
        }
    }
    let largest = *blocks.values().max().unwrap();
    let all: u64 = blocks.values().sum();
    let cap = largest + (all - largest) / 4;
    assert!(
        cap < all,
        "a cap of {cap} would hold all {all} bytes of blocks"
    );
    let cap_arg = cap.to_string();
    let cache_args = ["--cache", cache.to_str().unwrap(), "--cache-size", &cap_arg];
    // Nothing local: every object comes through the cache.
    let empty = dir.path().join("empty");
    run(Command::new("nix")
        .args(["path-info", "--all", "--store"])
        .arg(&empty));
    let root = dir.path().join("root");
    let serve = local_substituter(&origin, &empty, &cache_args);
    let first = nix_copy(&serve.url(), &root, &root_path("gen1"), &sent);
    drop(serve);
    verify_contents(&root);
    let kept = cached_bytes(&cache);
    assert!(kept > 0 && kept <= cap, "{kept} bytes cached, cap {cap}");
    // With room for all of it, a second process fetches no block again, only the path records.
    let big = dir.path().join("big-cache");
    let big_args = ["--cache", big.to_str().unwrap(), "--cache-size", "64M"];
    let copy = |name: &str| {
        let serve = local_substituter(&origin, &empty, &big_args);
        let root = dir.path().join(name);
        let fetched = nix_copy(&serve.url(), &root, &root_path("gen1"), &sent);
        drop(serve);
        verify_contents(&root);
        fetched
    };
    let cold = copy("cold");
    let warm = copy("warm");
    eprintln!(
        "cap {cap}: {first} bytes from the origin, {kept} cached; 64M: cold {cold}, warm {warm}"
    );
    assert!(warm * 20 < cold, "warm {warm} vs cold {cold}");
    assert!(cached_bytes(&cache) <= cap);
}

/// The deployment files in deploy/ use only flags `refstrip serve` has, and the NixOS module parses.
#[test]
fn deployment_files_match_the_command_line() {
    refstrip_tests::require_nix!();
    let deploy = corpus_dir().join("../deploy");
    let help =
        String::from_utf8(run(Command::new(refstrip_bin()).args(["serve", "--help"]))).unwrap();
    for file in ["refstrip-substituter.service", "nixos-module.nix"] {
        let text = fs::read_to_string(deploy.join(file)).unwrap();
        let flags: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '"'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .collect();
        assert!(flags.len() >= 6, "{file}: {flags:?}");
        for flag in flags {
            assert!(
                help.contains(&format!("{flag} ")),
                "{file}: serve has no {flag}"
            );
        }
    }
    run(Command::new("nix-instantiate")
        .arg("--parse")
        .arg(deploy.join("nixos-module.nix")));
}

/// The server module (deploy/nixos-server-module.nix) parses, and each command it runs uses only
/// flags that command has: its commands are the `"${refstrip} CMD` lines of its `let` block, each
/// with the flags up to the next command.
#[test]
fn server_module_matches_the_command_line() {
    refstrip_tests::require_nix!();
    let module = corpus_dir().join("../deploy/nixos-server-module.nix");
    run(Command::new("nix-instantiate").arg("--parse").arg(&module));
    let text = fs::read_to_string(&module).unwrap();
    let bindings = text.split("\nin\n").next().unwrap();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    for line in bindings
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        if let Some(rest) = line.split("\"${refstrip} ").nth(1) {
            let command = rest.split([' ', '"']).next().unwrap().to_string();
            commands.push((command, Vec::new()));
        }
        if let Some((_, flags)) = commands.last_mut() {
            flags.extend(
                line.split(|c: char| c.is_whitespace() || c == '"')
                    .filter(|w| w.starts_with("--") && w.len() > 2)
                    .map(String::from),
            );
        }
    }
    let names: Vec<&str> = commands.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["serve", "ingest", "gc", "repack"]);
    for (command, flags) in &commands {
        let help =
            String::from_utf8(run(Command::new(refstrip_bin()).args([command, "--help"]))).unwrap();
        assert!(flags.len() >= 2, "{command}: {flags:?}");
        for flag in flags {
            assert!(
                help.contains(&format!("{flag} ")),
                "the server module runs `refstrip {command} {flag}`, which refstrip {command} does not have"
            );
        }
    }
}
