//! Repack after gc: packs that are mostly dead are rewritten, records re-pointed, and the old packs
//! deleted only after the grace period; every kept path substitutes byte-exact, the store shrinks
//! by the dead bytes, and a serve running meanwhile never sends a wrong byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use refstrip_nix::{Hash, NarInfo, StoreDir};
use refstrip_tests::operator::{closure_in, corpus_root, http_get, nix, verify_contents, Serving};
use refstrip_tests::{corpus_key, corpus_packages, generation_dir, refstrip_bin, run, GENERATIONS};

fn ok(args: &[&str]) -> String {
    let out = Command::new(refstrip_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "refstrip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ingest(generation: &str, store: &Path) {
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(generation_dir(generation))
        .args(["--all", "--to"])
        .arg(store));
}

/// Every generation of the small corpus ingested, then gc keeping only the last one's closure:
/// the packs of the earlier ones are left partly dead (576 KiB of objects, issue #16).
fn store_after_gc(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    for generation in GENERATIONS {
        ingest(generation, &store);
    }
    ok(&[
        "gc",
        store.to_str().unwrap(),
        "--keep",
        &corpus_root("bump"),
    ]);
    store
}

/// Pack files by id, with their sizes.
fn packs(store: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

fn stats(store: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["stats", store.to_str().unwrap(), "--json"])).unwrap()
}

/// Each record's modification time (its registration, for retention).
fn record_times(store: &Path) -> BTreeMap<String, SystemTime> {
    fs::read_dir(store.join("paths"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect()
}

/// Stock `nix copy` of `root_path` through `refstrip serve` into a fresh chroot store, verified.
fn nix_copy_through_serve(store: &Path, dest: &Path, root_path: &str) {
    let server = Serving::start(store, &[]);
    let out = nix(&["copy", "--from", &server.url(), "--to"])
        .arg(dest)
        .args(["--option", "trusted-public-keys", &corpus_key()])
        // Nix keeps narinfos per cache URL for a month; another test's server may have had this port.
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .arg(root_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    verify_contents(dest);
    assert_eq!(closure_in(dest, root_path).len(), 14);
}

#[test]
fn after_gc_and_repack_every_kept_path_substitutes_byte_exact_and_the_dead_bytes_are_gone() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_after_gc(dir.path());
    let s = store.to_str().unwrap();
    let dead = stats(&store)["unreferenced_object_bytes"].as_u64().unwrap();
    assert!(dead > 100_000, "gc left {dead} dead bytes");
    let before = packs(&store);
    let times = record_times(&store);
    // The peer: the kept generation ingested alone, with nothing dead.
    let peer_store = dir.path().join("peer");
    ingest("bump", &peer_store);
    let peer: u64 = packs(&peer_store).values().sum();

    let dry = ok(&["repack", "--store", s, "--threshold", "1", "--dry-run"]);
    assert!(dry.contains("would rewrite"), "{dry}");
    assert_eq!(packs(&store), before, "a dry run changes nothing");

    // Rewritten, with the old packs kept through the grace period (readers may hold old records).
    let first = ok(&["repack", "--store", s, "--threshold", "1"]);
    let during = packs(&store);
    assert!(
        before.keys().all(|p| during.contains_key(p)),
        "a replaced pack was deleted before its grace period: {first}"
    );
    assert!(during.len() > before.len(), "{first}");
    assert!(fs::read_dir(store.join("gc/retired")).unwrap().count() > 0);
    assert_eq!(stats(&store)["unreferenced_object_bytes"], 0, "{first}");
    assert_eq!(
        record_times(&store),
        times,
        "records keep their registration time"
    );
    // The records now point at the new packs: remove the old ones from sight to prove it.
    let retired: Vec<String> = fs::read_dir(store.join("gc/retired"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let hidden = dir.path().join("hidden");
    fs::create_dir(&hidden).unwrap();
    for id in &retired {
        fs::rename(
            store.join("packs").join(format!("{id}.pack")),
            hidden.join(id),
        )
        .unwrap();
    }
    nix_copy_through_serve(&store, &dir.path().join("client1"), &corpus_root("bump"));
    for id in &retired {
        fs::rename(
            hidden.join(id),
            store.join("packs").join(format!("{id}.pack")),
        )
        .unwrap();
    }

    // A run after the grace period (0 here) deletes them; the store is then what the kept paths
    // need, give or take how objects fall into blocks.
    let second = ok(&["repack", "--store", s, "--grace", "0"]);
    assert!(
        second.contains(&format!("deleted {} replaced packs", retired.len())),
        "{second}"
    );
    let after: u64 = packs(&store).values().sum();
    let total_before: u64 = before.values().sum();
    // The kept paths' deltas from their gc'd predecessors stay (clients still holding those
    // predecessors use them); the peer, ingested alone, has no predecessors and so no deltas.
    let deltas: u64 = fs::read_dir(store.join("paths"))
        .unwrap()
        .map(|e| refstrip_tests::read_record(&store, &e.unwrap().file_name().to_string_lossy()))
        .flat_map(|r| {
            let table = r.objects.table().unwrap();
            let size = |o: &refstrip_read::Offer| table.objects[&o.delta_object()].1.size;
            table
                .offers
                .iter()
                .map(|o| (o.delta, size(o)))
                .collect::<Vec<_>>()
        })
        .collect::<BTreeMap<_, u64>>()
        .values()
        .sum();
    assert!(deltas > 0);
    assert!(
        after.abs_diff(peer + deltas) * 50 < peer,
        "repacked {after} bytes, the kept generation alone {peer} and its deltas {deltas} (before: {total_before})"
    );
    assert!(
        total_before - after > dead / 4,
        "{total_before} -> {after}, dead {dead}"
    );
    eprintln!(
        "packs before repack {total_before}, after {after}, kept generation ingested alone {peer}; dead objects {dead} (uncompressed)"
    );
    assert!(
        !store.join("gc/retired").exists()
            || fs::read_dir(store.join("gc/retired")).unwrap().count() == 0
    );

    // Every kept path, by stock Nix through serve and by refstrip substitute.
    nix_copy_through_serve(&store, &dir.path().join("client2"), &corpus_root("bump"));
    let root = dir.path().join("client3");
    run(Command::new(refstrip_bin())
        .args(["substitute", "--from", s, "--no-cache", "--store"])
        .arg(&root)
        .args(["--trusted-public-keys", &corpus_key()])
        .arg(corpus_root("bump")));
    verify_contents(&root);
    assert_eq!(closure_in(&root, &corpus_root("bump")).len(), 14);
}

/// NarHash and NarSize of a path, from the server's narinfo.
fn nar_facts(port: u16, hash_part: &str) -> (Hash, u64) {
    let (status, body) = http_get(port, &format!("/{hash_part}.narinfo"));
    assert_eq!(status, 200);
    let info = NarInfo::parse_bytes(&StoreDir::default(), &body).unwrap();
    (info.nar_hash, info.nar_size)
}

#[test]
fn a_serve_running_during_repack_never_returns_a_wrong_byte() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_after_gc(dir.path());
    // No objects or blocks kept in memory: every restore reads the packs its (cached) record names.
    let server = Serving::start(
        &store,
        &["--object-cache-mib", "0", "--block-cache-mib", "0"],
    );
    let port = server.port;
    let paths: Vec<(String, Hash, u64)> = corpus_packages("bump")
        .values()
        .map(|p| {
            let h = p.rsplit('/').next().unwrap()[..32].to_string();
            let (hash, size) = nar_facts(port, &h);
            (h, hash, size)
        })
        .collect();
    // A record the catalog does not know (as an ingest killed before cataloguing leaves one) is
    // re-pointed all the same.
    let catalog = rusqlite::Connection::open(store.join("catalog.sqlite")).unwrap();
    for table in ["paths", "path_objects"] {
        catalog
            .execute(
                &format!("DELETE FROM {table} WHERE hash_part = ?1"),
                [&paths[0].0],
            )
            .unwrap();
    }
    drop(catalog);
    let paths = Arc::new(paths);
    let stop = Arc::new(AtomicBool::new(false));
    let (good, failed, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (paths, stop) = (paths.clone(), stop.clone());
            let (good, failed, wrong) = (good.clone(), failed.clone(), wrong.clone());
            std::thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let (h, hash, size) = &paths[n % paths.len()];
                    n += 1;
                    let (status, body) = http_get(port, &format!("/nar/{h}.nar"));
                    let complete = status == 200 && body.len() as u64 >= *size;
                    if complete && (body.len() as u64 != *size || Hash::digest(&body) != *hash) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    } else if complete {
                        good.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Grace 0: the old packs go while the server still holds records pointing into them.
    let report = ok(&[
        "repack",
        "--store",
        store.to_str().unwrap(),
        "--threshold",
        "1",
        "--grace",
        "0",
    ]);
    assert!(report.contains("deleted"), "{report}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (good, failed, wrong) = (
        good.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    eprintln!("during repack: {good} complete and exact, {failed} failed cleanly, {wrong} wrong");
    assert_eq!(wrong, 0);
    assert!(good > 0);
    // Records held from before pointed at deleted packs: those downloads failed, cleanly.
    assert!(failed > 0);

    // Afterwards every path downloads again: a record whose pack is gone is read afresh after one
    // failed download.
    for (h, hash, size) in paths.iter() {
        let exact = (0..2).any(|_| {
            let (status, body) = http_get(port, &format!("/nar/{h}.nar"));
            status == 200 && body.len() as u64 == *size && Hash::digest(&body) == *hash
        });
        assert!(exact, "{h} does not download after the repack");
    }
    let dest = dir.path().join("client");
    let out = nix(&["copy", "--from", &server.url(), "--to"])
        .arg(&dest)
        .args(["--option", "trusted-public-keys", &corpus_key()])
        // Nix keeps narinfos per cache URL for a month; another test's server may have had this port.
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .arg(corpus_root("bump"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(&dest);
    server.stop();
}

/// Issue 15: a client's disk cache finds objects by name, not by the location a record gives. A
/// client that substituted bump holds its objects in cached blocks of the old packs; a repack
/// moves them into new packs and deletes the old ones; substituting bump again into another store
/// with the same cache fetches no block from the origin (counted there).
#[test]
fn after_a_repack_a_client_fetches_no_block_whose_objects_its_cache_holds() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let store = store_after_gc(dir.path());
    let s = store.to_str().unwrap();
    let bump: Vec<String> = corpus_packages("bump")
        .values()
        .map(|p| p.trim_start_matches("/nix/store/")[..32].to_string())
        .collect();
    // Which pack each object of bump's records is in.
    let locations = || -> BTreeMap<String, String> {
        bump.iter()
            .flat_map(|hash| {
                let record = refstrip_tests::read_record(&store, hash);
                let map = record.objects.map().unwrap().clone();
                map.into_iter()
                    .map(|(id, (pack, _))| (format!("{id:?}"), pack))
            })
            .collect()
    };
    let (url, _, sent) = refstrip_tests::static_http_server_counting(store.clone());
    let cache = dir.path().join("cache");
    let substitute = |root: &str| {
        let before = sent.load(Ordering::Relaxed);
        let out = run(Command::new(refstrip_bin())
            .args(["substitute", "--json", "--no-local-store", "--from", &url])
            .args(["--trusted-public-keys", &corpus_key()])
            .arg("--store")
            .arg(dir.path().join(root))
            .arg("--cache")
            .arg(&cache)
            .arg(corpus_root("bump")));
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        verify_contents(&dir.path().join(root));
        (report, sent.load(Ordering::Relaxed) - before)
    };
    let (first, _) = substitute("client1");
    assert!(first["fetched_blocks"].as_u64().unwrap() > 0, "{first}");

    let old = locations();
    ok(&["repack", "--store", s, "--threshold", "1"]);
    let deleted = ok(&["repack", "--store", s, "--grace", "0"]);
    let new = locations();
    let moved = old.iter().filter(|(id, pack)| new[*id] != **pack).count();
    assert!(
        moved > 0,
        "the repack moved none of bump's objects: {deleted}"
    );

    let (second, fetched) = substitute("client2");
    assert_eq!(second["paths"], 14, "{second}");
    assert_eq!(second["fetched_blocks"], 0, "{second}");
    let records = second["record_bytes"].as_u64().unwrap();
    eprintln!(
        "bump again after a repack moved {moved} of its {} objects: {fetched} bytes from the \
         origin, {records} of them records",
        old.len()
    );
    assert!(
        fetched <= records + 64,
        "{fetched} bytes from the origin, {records} of them records"
    );
}

/// Issue 15: two machines writing one store, each with a catalog of its own, store the objects they
/// share twice, and records of different shapes point at different copies (a shape shared by two
/// records has one object table, so a mass rebuild's records agree on theirs); repack points every
/// record at one copy and the other copies go with their packs.
#[test]
fn repack_keeps_one_copy_of_the_objects_two_machines_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    ingest("gen1", &store);
    // The second machine sees the same files through an empty catalog of its own.
    for file in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = fs::remove_file(store.join(file));
    }
    ingest("bump", &store);
    ok(&["stats", s, "--rebuild-catalog"]);
    let copies = |store: &Path| {
        let s = refstrip_store::Store::open(store.to_str().unwrap()).unwrap();
        let objects = s.totals().unwrap().objects;
        let copies = s.catalog().object_copies().unwrap();
        (objects, copies)
    };
    let (objects, before) = copies(&store);
    assert!(before > objects, "{before} copies of {objects} objects");
    let bytes_before: u64 = packs(&store).values().sum();

    let first = ok(&["repack", "--store", s, "--threshold", "1"]);
    let twice: u64 = first
        .split_once(" objects stored twice")
        .and_then(|(head, _)| head.rsplit('(').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    assert!(twice > 0, "{first}");
    ok(&["repack", "--store", s, "--grace", "0"]);
    assert_eq!(copies(&store), (objects, objects), "one copy of each");
    let bytes_after: u64 = packs(&store).values().sum();
    eprintln!(
        "packs {bytes_before} -> {bytes_after} bytes; {before} copies -> {objects}, {twice} \
         of them pointed at by records in two places"
    );
    assert!(
        bytes_after < bytes_before,
        "{bytes_before} -> {bytes_after}"
    );

    for generation in ["gen1", "bump"] {
        let root = dir.path().join(generation);
        run(Command::new(refstrip_bin())
            .args([
                "substitute",
                "--from",
                s,
                "--no-cache",
                "--no-local-store",
                "--store",
            ])
            .arg(&root)
            .args(["--trusted-public-keys", &corpus_key()])
            .arg(corpus_root(generation)));
        if refstrip_tests::nix_available() {
            verify_contents(&root);
        }
        assert_eq!(closure_in(&root, &corpus_root(generation)).len(), 14);
    }
}
