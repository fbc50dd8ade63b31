//! Deltas for version bumps (spec §8 offers), with real Nix as the oracle and the client: gen1
//! installed by plain `nix copy`, then corpus/small's lua 5.4.4 → 5.4.7 bump fetched from a
//! normalized store holding gen1 and bump over HTTP, by `refstrip substitute` and by stock
//! `nix copy` through `refstrip serve --local-store`. Bytes are counted at the origin. A delta is
//! only a shortcut: without the base, with a changed base, or with a delta that does not rebuild
//! the target, the full object is fetched and the restore stays exact.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;

use refstrip_tests::operator::{
    hashes_match, nix_copy_generation, substitute_generation, update_through_local_substituter,
    verify_contents,
};
use refstrip_tests::{
    generation_dir, refstrip_bin, run, static_http_server_counting, xz_bytes_new,
};

/// A normalized store with gen1 and then bump ingested (`extra`: more ingest arguments).
fn store_with_bump(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let store = dir.join(name);
    for g in ["gen1", "bump"] {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(generation_dir(g))
            .args(["--all", "--to"])
            .arg(&store)
            .args(extra));
    }
    store
}

fn gen1_by_nix(root: &Path) {
    nix_copy_generation(root, "gen1");
}

fn substitute_bump(url: &str, sent: &AtomicU64, root: &Path) -> (serde_json::Value, u64) {
    substitute_generation("bump", url, sent, root, &[])
}

fn count(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[test]
fn a_version_bump_comes_as_deltas_through_substitute_and_serve() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_bump(dir.path(), "normalized", &[]);
    let (origin, _, sent) = static_http_server_counting(store.clone());
    let xz = xz_bytes_new("bump", Some("gen1"));

    // The peer in the same run: the same store without deltas.
    let plain = store_with_bump(dir.path(), "no-deltas", &["--no-deltas"]);
    let (plain_origin, _, plain_sent) = static_http_server_counting(plain);
    let root = dir.path().join("peer");
    gen1_by_nix(&root);
    let (_, without) = substitute_bump(&plain_origin, &plain_sent, &root);

    let root = dir.path().join("substitute");
    gen1_by_nix(&root);
    let (report, fetched) = substitute_bump(&origin, &sent, &root);
    verify_contents(&root);
    hashes_match(&root, "bump");
    eprintln!(
        "bump by substitute: {fetched} bytes from the origin ({} files from deltas, {} delta \
         bytes); without deltas {without}; NAR.xz of the new paths {xz}",
        count(&report, "delta_files"),
        count(&report, "delta_bytes"),
    );
    // liblua, luac and lua change with the version and pair across it (liblua.so.5.4.4 ~ 5.4.7).
    assert!(count(&report, "delta_files") >= 3, "{report}");
    assert_eq!(count(&report, "deltas_rejected"), 0, "{report}");
    // Measured: 87,551 bytes, 53.8 % of NAR.xz (without deltas 251,398).
    assert!(fetched * 100 <= xz * 60, "{fetched} bytes vs NAR.xz {xz}");
    assert!(
        fetched * 2 < without,
        "{fetched} vs {without} without deltas"
    );

    // Stock Nix through the local substituter.
    let fetched =
        update_through_local_substituter(&origin, &dir.path().join("serve"), "bump", &sent);
    eprintln!("bump by nix copy through serve: {fetched} bytes from the origin");
    assert!(fetched * 100 <= xz * 60, "{fetched} bytes vs NAR.xz {xz}");
}

/// The regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Overwrite bytes in the middle of `file`, a read-only file of a Nix store.
fn alter(file: &Path) {
    let mut perms = fs::metadata(file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(file, perms.clone()).unwrap();
    let mut bytes = fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(file, bytes).unwrap();
}

#[test]
fn deltas_without_a_sound_base_or_with_wrong_output_are_never_applied() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_bump(dir.path(), "normalized", &[]);
    let (origin, _, sent) = static_http_server_counting(store.clone());

    // No base: a client without gen1 fetches everything whole.
    let root = dir.path().join("empty");
    let (report, _) = substitute_bump(&origin, &sent, &root);
    verify_contents(&root);
    hashes_match(&root, "bump");
    assert_eq!(count(&report, "delta_files"), 0, "{report}");

    // A changed base: gen1's liblua altered in the client's store after Nix installed it. The
    // local store notices (a changed file makes its path's objects misses; a base read back
    // wrong would fail the output's BLAKE3, see `refstrip_read::delta`'s tests), so lua's files
    // come whole.
    let root = dir.path().join("altered");
    gen1_by_nix(&root);
    let liblua = files_under(&root.join("nix/store"))
        .into_iter()
        .find(|f| f.to_string_lossy().ends_with("lib/liblua.so.5.4.4"))
        .unwrap();
    alter(&liblua);
    let (altered, _) = substitute_bump(&origin, &sent, &root);
    hashes_match(&root, "bump");

    // A delta that rebuilds the wrong file: the offers of lua's record point at each other's
    // deltas (each a valid object, named by its bytes), so every output fails its BLAKE3 check.
    let (clean, _) = {
        let root = dir.path().join("clean");
        gen1_by_nix(&root);
        substitute_bump(&origin, &sent, &root)
    };
    let applied = count(&clean, "delta_files");
    assert!(
        count(&altered, "delta_files") < applied,
        "{altered} vs {clean}"
    );
    let hash_part = fs::read_dir(generation_dir("bump"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .find_map(|t| {
            let p = t
                .lines()
                .find_map(|l| l.strip_prefix("StorePath: /nix/store/"))?;
            p.ends_with("-lua-5.4.7").then(|| p[..32].to_string())
        })
        .unwrap();
    let mut record = refstrip_tests::read_record(&store, &hash_part);
    let mut table = record.objects.table().unwrap().clone();
    assert!(table.offers.len() >= 2, "{:?}", table.offers);
    let first = table.offers[0].delta;
    let n = table.offers.len();
    for i in 0..n {
        table.offers[i].delta = if i + 1 < n {
            table.offers[i + 1].delta
        } else {
            first
        };
    }
    record.objects = table.into();
    refstrip_store::Store::open(store.to_str().unwrap())
        .unwrap()
        .replace_record(&record)
        .unwrap();
    let root = dir.path().join("wrong");
    gen1_by_nix(&root);
    let (report, _) = substitute_bump(&origin, &sent, &root);
    verify_contents(&root);
    hashes_match(&root, "bump");
    assert_eq!(
        count(&report, "delta_files") + n as u64,
        applied,
        "{report}"
    );
    assert!(count(&report, "deltas_rejected") >= n as u64, "{report}");

    // A delta whose bytes were altered in its pack: refused (its block or its name), full object.
    let record = refstrip_tests::read_record(&store, &hash_part);
    let objects = record.objects.map().unwrap();
    let offer = &record.objects.table().unwrap().offers[0];
    let (pack, loc) = &objects[&offer.delta_object()];
    let pack = store.join("packs").join(format!("{pack}.pack"));
    let mut bytes = fs::read(&pack).unwrap();
    let at = (loc.block_offset + loc.block_len / 2) as usize;
    bytes[at] ^= 0xff;
    let mut perms = fs::metadata(&pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&pack, perms).unwrap();
    fs::write(&pack, bytes).unwrap();
    let root = dir.path().join("edited");
    gen1_by_nix(&root);
    let (report, _) = substitute_bump(&origin, &sent, &root);
    verify_contents(&root);
    hashes_match(&root, "bump");
    assert!(count(&report, "deltas_rejected") >= 1, "{report}");
}
