//! The cache-side job on the committed corpus: ingest every generation, read every path back
//! byte-exact with its original signatures, check what a mass rebuild costs, and survive corrupt
//! input, interruption and concurrency.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use refstrip_cas::FileSource;
use refstrip_ingest::{ingest, select, IngestOptions, IngestReport};
use refstrip_nix::{signature, PublicKey, StoreDir};
use refstrip_source::open_source;
use refstrip_store::Store;
use refstrip_strip::restore_nar;
use refstrip_tests::{corpus_dir, refstrip_bin, run, xz_bytes, GENERATIONS};
use sha2::{Digest, Sha256};

fn generation_dir(generation: &str) -> String {
    corpus_dir()
        .join("small")
        .join(generation)
        .to_str()
        .unwrap()
        .to_string()
}

fn ingest_dir(dir: &str, store: &Store) -> IngestReport {
    let source = open_source(dir, StoreDir::default()).unwrap();
    let options = IngestOptions::default();
    let paths = select(&*source, vec![], &options).unwrap();
    ingest(&*source, store, paths, &options, &ProgressBar::hidden()).unwrap()
}

fn corpus_key() -> PublicKey {
    fs::read_to_string(corpus_dir().join("keys/refstrip-corpus-1.pub"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every path of `generation` can be restored from `store` byte for byte, and its narinfo comes
/// back with the original signature, which still verifies.
fn check_generation(store: &Store, generation: &str) -> usize {
    let source = open_source(&generation_dir(generation), StoreDir::default()).unwrap();
    let key = corpus_key();
    let mut n = 0;
    for path in source.list().unwrap() {
        let original = source.narinfo(&path).unwrap();
        let (record, _) = store.reader().record(path.hash_part()).unwrap();
        let objects = store.reader().objects(&Default::default()).unwrap();
        let mut nar = Vec::new();
        restore_nar(
            &record.manifest,
            &mut FileSource::new(&mut objects.of(&record)),
            &mut nar,
        )
        .unwrap();
        assert_eq!(
            Sha256::digest(&nar).as_slice(),
            original.nar_hash.as_bytes(),
            "{path}"
        );
        let mut expected = Vec::new();
        source
            .nar(&original)
            .unwrap()
            .read_to_end(&mut expected)
            .unwrap();
        assert!(nar == expected, "{path}");

        let info = refstrip_read::pathinfo::narinfo(
            &record.manifest,
            "nar/x.nar".into(),
            Some("none".into()),
            None,
            None,
        )
        .unwrap();
        assert_eq!(info.sigs, original.sigs, "{path}: Sig lines");
        assert_eq!(
            (&info.store_path, &info.references, &info.deriver, &info.ca),
            (
                &original.store_path,
                &original.references,
                &original.deriver,
                &original.ca
            )
        );
        signature::verify(&info, std::slice::from_ref(&key))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        n += 1;
    }
    n
}

#[test]
fn every_generation_reads_back_exactly_and_a_mass_rebuild_costs_almost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let mut reports = Vec::new();
    for generation in GENERATIONS {
        let report = ingest_dir(&generation_dir(generation), &store);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        eprintln!("{generation}: {report:?}");
        reports.push(report);
    }
    for generation in GENERATIONS {
        assert_eq!(check_generation(&store, generation), 14);
    }
    assert_eq!(store.totals().unwrap().paths, 14 + 14 + 7 + 5);

    // First ingest: new content in packs of per-class blocks (code through the x86 filter) at
    // the default level. Measured: 819–822 KB = 112.4–112.7 % of gen1's 729 KB NAR+xz with two
    // workers (docs/store.md; zstd needs level 18 to reach 1.0× here, at a tenth of the speed).
    let gen1 = &reports[0];
    let xz = xz_bytes("gen1");
    eprintln!(
        "first ingest stored {} bytes = {:.1} % of its {xz} NAR+xz bytes",
        gen1.stored_bytes,
        100.0 * gen1.stored_bytes as f64 / xz as f64
    );
    assert!(
        gen1.stored_bytes * 100 <= 114 * xz,
        "first ingest stored {} bytes vs {xz} NAR+xz bytes",
        gen1.stored_bytes
    );

    // The mass rebuild changed every hash and no source: only path bindings are new (format 2:
    // the shapes are the gen1 paths'). Measured on this corpus: 0 new objects and 3,704 bytes of
    // bindings (~265 per path: hashes, NarHash, the signature, build-ids) against 729 KB of
    // NAR+xz, i.e. 0.51 % (format 1 records: ~14.5 KB, 2.0 %).
    let mass = &reports[1];
    let xz = xz_bytes("mass");
    eprintln!(
        "mass rebuild stored {} bytes = {:.2} % of its {} NAR+xz bytes",
        mass.stored_bytes,
        100.0 * mass.stored_bytes as f64 / xz as f64,
        xz
    );
    assert_eq!(mass.new_objects, 0);
    assert!(
        mass.stored_bytes * 1000 <= 6 * xz,
        "mass rebuild stored {} bytes vs {xz} NAR+xz bytes",
        mass.stored_bytes
    );

    // Ingesting the same generation again is a no-op.
    let again = ingest_dir(&generation_dir("gen1"), &store);
    assert_eq!(
        (again.ingested, again.skipped, again.stored_bytes),
        (0, 14, 0)
    );

    // The catalog can be rebuilt from the files alone.
    let before = store.totals().unwrap();
    store.rebuild_catalog().unwrap();
    assert_eq!(store.totals().unwrap(), before);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn corrupt_nars_are_skipped_and_leave_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    copy_dir(Path::new(&generation_dir("gen1")), &cache);
    let source = open_source(cache.to_str().unwrap(), StoreDir::default()).unwrap();
    let mut infos = source
        .list()
        .unwrap()
        .into_iter()
        .map(|p| source.narinfo(&p).unwrap())
        .collect::<Vec<_>>();
    infos.sort_by_key(|i| std::cmp::Reverse(i.nar_size));
    let nar_file = |i: usize| cache.join(&infos[i].url);
    // 1: truncated file; 2: a flipped byte (zstd or NarHash notices); 3: narinfo lies about NarHash;
    // 3: holds the NAR of path 4 (which stays intact); 5: not compressed as the narinfo says.
    let bytes = fs::read(nar_file(0)).unwrap();
    fs::write(nar_file(0), &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = fs::read(nar_file(1)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(nar_file(1), &bytes).unwrap();
    let narinfo2 = cache.join(format!("{}.narinfo", infos[2].store_path.hash_part()));
    let text = fs::read_to_string(&narinfo2).unwrap();
    let other_hash = infos[3].nar_hash.to_string();
    fs::write(
        &narinfo2,
        text.replace(&infos[2].nar_hash.to_string(), &other_hash),
    )
    .unwrap();
    fs::copy(nar_file(4), nar_file(3)).unwrap();
    let raw = zstd::decode_all(&fs::read(nar_file(5)).unwrap()[..]).unwrap();
    fs::write(nar_file(5), raw).unwrap();
    let broken: BTreeSet<String> = [0, 1, 2, 3, 5]
        .iter()
        .map(|&i| infos[i].store_path.hash_part().to_string())
        .collect();

    let store_dir = dir.path().join("store");
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let report = ingest_dir(cache.to_str().unwrap(), &store);
    let failed: BTreeSet<String> = report
        .failed
        .iter()
        .map(|(p, _)| p.rsplit('/').next().unwrap()[..32].to_string())
        .collect();
    eprintln!("{:#?}", report.failed);
    assert_eq!(failed, broken, "{:?}", report.failed);
    assert_eq!(report.ingested, 14 - 5);
    for hash in &broken {
        assert!(!store.has_path(hash).unwrap(), "{hash} was recorded");
    }
    assert!(
        fs::read_dir(store_dir.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "scratch files left behind"
    );
    // The CLI reports the failures and exits non-zero.
    let out = Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&cache)
        .arg("--all")
        .arg("--to")
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("5 paths failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Manifests of every path in a store: what "the same store" means (pack layout may differ).
fn manifests(store_dir: &Path) -> Vec<(String, refstrip_strip::Manifest)> {
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let mut out: Vec<_> = store
        .catalog()
        .paths()
        .unwrap()
        .into_iter()
        .map(|(hash, _)| {
            let (r, _) = store.reader().record(&hash).unwrap();
            (hash, r.manifest)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn ingest_cli(cache: &str, store: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(refstrip_bin());
    c.arg("ingest")
        .arg(cache)
        .arg("--all")
        .arg("--to")
        .arg(store)
        .args(extra);
    c
}

#[test]
fn killed_ingests_rerun_to_the_same_store_and_concurrent_ingests_agree() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let started = Instant::now();
    run(&mut ingest_cli(
        &generation_dir("gen1"),
        &reference,
        &["-j1"],
    ));
    let full = started.elapsed();
    run(&mut ingest_cli(
        &generation_dir("mass"),
        &reference,
        &["-j1"],
    ));
    let expected = manifests(&reference);
    assert_eq!(expected.len(), 28);

    // SIGKILL at spread-out moments of an ingest, then rerun: same manifests, all restorable.
    for trial in 0..10u32 {
        let store = dir.path().join(format!("killed-{trial}"));
        for generation in ["gen1", "mass"] {
            let mut child = ingest_cli(&generation_dir(generation), &store, &["-j2"])
                .spawn()
                .unwrap();
            std::thread::sleep(full.mul_f64(f64::from(trial) / 10.0) + Duration::from_millis(5));
            child.kill().ok();
            child.wait().unwrap();
            run(&mut ingest_cli(
                &generation_dir(generation),
                &store,
                &["-j2"],
            ));
        }
        assert_eq!(manifests(&store), expected, "trial {trial}");
        let s = Store::open(store.to_str().unwrap()).unwrap();
        assert_eq!(check_generation(&s, "mass"), 14);
    }

    // Three ingests of overlapping generations into one store at the same time: every object is
    // stored once (claims in the shared catalog: issue 15), whoever wins each race.
    for round in 0..3 {
        let shared = dir.path().join(format!("shared-{round}"));
        let a = ingest_cli(&generation_dir("gen1"), &shared, &["-j2"])
            .spawn()
            .unwrap();
        let b = ingest_cli(&generation_dir("mass"), &shared, &["-j2"])
            .spawn()
            .unwrap();
        let c = ingest_cli(&generation_dir("gen1"), &shared, &["-j1"])
            .spawn()
            .unwrap();
        for mut child in [a, b, c] {
            assert!(child.wait().unwrap().success());
        }
        assert_eq!(manifests(&shared), expected);
        let s = Store::open(shared.to_str().unwrap()).unwrap();
        assert_eq!(
            check_generation(&s, "gen1") + check_generation(&s, "mass"),
            28
        );
        let copies = s.catalog().object_copies().unwrap();
        assert_eq!(
            s.totals().unwrap().objects,
            copies,
            "round {round}: an object stored twice"
        );
        // gc keeping every path drops nothing.
        let keep_all: Vec<String> = expected.iter().map(|(h, _)| h.clone()).collect();
        let plan = s.gc_plan(&keep_all, false).unwrap();
        assert!(plan.remove_paths.is_empty() && plan.remove_packs.is_empty());
    }
}

#[test]
fn gc_keeps_the_closure_of_what_it_is_told_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    for generation in ["gen1", "bump"] {
        run(&mut ingest_cli(
            &generation_dir(generation),
            &store_dir,
            &[],
        ));
    }
    let root = fs::read_to_string(corpus_dir().join("small/bump/roots")).unwrap();
    let out = run(Command::new(refstrip_bin())
        .arg("gc")
        .arg(&store_dir)
        .arg("--keep")
        .arg(root.trim()));
    eprintln!("{}", String::from_utf8_lossy(&out));
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    assert_eq!(
        store.totals().unwrap().paths,
        14,
        "bump's closure, nothing else"
    );
    assert_eq!(check_generation(&store, "bump"), 14);
    // gen1's lua 5.4.4 (not in bump's closure) is gone.
    let lua_old =
        refstrip_tests::corpus_packages("gen1")[&("lua".to_string(), "out".to_string())].clone();
    assert!(!store
        .has_path(&lua_old.rsplit('/').next().unwrap()[..32])
        .unwrap());
    // Refuses to run while an ingest writes to the store.
    let writing = store.write_lock().unwrap();
    assert!(matches!(
        store.gc(&Default::default(), Default::default()),
        Err(refstrip_store::StoreError::Busy)
    ));
    let o = Command::new(refstrip_bin())
        .arg("gc")
        .arg(&store_dir)
        .arg("--keep")
        .arg(root.trim())
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("an ingest is writing")
    );
    drop(writing);
    // Refuses to remove everything by accident.
    let o = Command::new(refstrip_bin())
        .arg("gc")
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// A free loopback port (bind to 0, read it back, release it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn ingests_from_an_http_binary_cache() {
    let port = free_port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            &generation_dir("gen1"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "HTTP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let root = fs::read_to_string(corpus_dir().join("small/gen1/roots")).unwrap();
    let result = Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&url)
        .arg(root.trim())
        .arg("--to")
        .arg(&store_dir)
        .output()
        .unwrap();
    // --all cannot list an HTTP cache: a clear error, not a guess.
    let all = Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&url)
        .arg("--all")
        .arg("--to")
        .arg(&store_dir)
        .output()
        .unwrap();
    server.kill().ok();
    server.wait().ok();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(!all.status.success());
    assert!(
        String::from_utf8_lossy(&all.stderr).contains("cannot be listed"),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    assert_eq!(
        check_generation(&store, "gen1"),
        14,
        "the root's closure is the whole generation"
    );
}

#[test]
fn ingests_from_a_local_nix_store() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let chroot = dir.path().join("root");
    let root = fs::read_to_string(corpus_dir().join("small/gen1/roots")).unwrap();
    // A real Nix store (chroot store layout), filled by Nix itself from the corpus cache.
    run(Command::new("nix")
        .args(["copy", "--no-check-sigs", "--from"])
        .arg(format!("file://{}", generation_dir("gen1")))
        .arg("--to")
        .arg(&chroot)
        .arg(root.trim()));
    assert!(chroot.join("nix/var/nix/db/db.sqlite").exists());
    let store_dir = dir.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(&chroot)
        .arg("--all")
        .arg("--to")
        .arg(&store_dir));
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    // Same NARs (dumped from the store's files), same references; the database holds no
    // signatures for paths copied without them, so only the contents and metadata are compared.
    let source = open_source(&generation_dir("gen1"), StoreDir::default()).unwrap();
    for path in source.list().unwrap() {
        let original = source.narinfo(&path).unwrap();
        let (record, _) = store.reader().record(path.hash_part()).unwrap();
        assert_eq!(
            &record.manifest.nar_hash,
            original.nar_hash.as_bytes(),
            "{path}"
        );
        let mut nar = Vec::new();
        restore_nar(
            &record.manifest,
            &mut FileSource::new(
                &mut store
                    .reader()
                    .objects(&Default::default())
                    .unwrap()
                    .of(&record),
            ),
            &mut nar,
        )
        .unwrap();
        let info =
            refstrip_read::pathinfo::narinfo(&record.manifest, String::new(), None, None, None)
                .unwrap();
        assert_eq!(info.references, original.references, "{path}");
    }
}

#[test]
fn sharded_ingests_partition_the_paths_and_end_in_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    run(&mut ingest_cli(&generation_dir("gen1"), &single, &[]));
    let sharded = dir.path().join("sharded");
    let mut counts = Vec::new();
    for i in 0..3 {
        let out = run(&mut ingest_cli(
            &generation_dir("gen1"),
            &sharded,
            &["--shard", &format!("{i}/3"), "--json"],
        ));
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        counts.push(report["paths"].as_u64().unwrap());
    }
    // Disjoint shards that cover everything, and not all in one shard.
    assert_eq!(counts.iter().sum::<u64>(), 14, "{counts:?}");
    assert!(counts.iter().all(|&c| c < 14), "{counts:?}");
    assert_eq!(manifests(&sharded), manifests(&single));
    let store = Store::open(sharded.to_str().unwrap()).unwrap();
    assert_eq!(check_generation(&store, "gen1"), 14);
    let bad = Command::new(refstrip_bin())
        .arg("ingest")
        .arg(generation_dir("gen1"))
        .arg("--all")
        .arg("--shard")
        .arg("3/3")
        .arg("--to")
        .arg(&sharded)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// An ingest killed after writing a record but before cataloguing its path: the rerun must not
/// just skip the path (its record exists) but catalog it, or stats and gc would never see it.
#[test]
fn a_record_missing_from_the_catalog_is_catalogued_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    run(&mut ingest_cli(&generation_dir("gen1"), &store_dir, &[]));
    let expected = manifests(&store_dir);
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let totals = store.totals().unwrap();
    let (hash, _) = expected[0].clone();
    store.catalog().remove_path(&hash).unwrap();
    assert_eq!(store.totals().unwrap().paths, 13);
    drop(store);
    run(&mut ingest_cli(&generation_dir("gen1"), &store_dir, &[]));
    assert_eq!(manifests(&store_dir), expected);
    assert_eq!(
        Store::open(store_dir.to_str().unwrap())
            .unwrap()
            .totals()
            .unwrap(),
        totals
    );
}

/// Issue 15: two generations ingested together by several workers hold every object once, so a
/// client that substituted the first fetches no block for the second (a mass rebuild: the same
/// objects) — counted at the HTTP origin. Format 1 ingests stored shared objects twice and the
/// client, whose cache is keyed by block, fetched 26 % of NAR.xz again for the mass step.
#[test]
fn generations_ingested_together_store_each_object_once_and_a_client_fetches_it_once() {
    refstrip_tests::require_nix!();
    let dir = tempfile::tempdir().unwrap();
    // One binary cache holding both generations (nar files are named by their hash, so they do
    // not collide), ingested in one run.
    let both = dir.path().join("both");
    for g in ["gen1", "mass"] {
        copy_dir(Path::new(&generation_dir(g)), &both);
    }
    let store = dir.path().join("store");
    for _ in 0..3 {
        let _ = fs::remove_dir_all(&store);
        run(&mut ingest_cli(both.to_str().unwrap(), &store, &["-j4"]));
        let s = Store::open(store.to_str().unwrap()).unwrap();
        let copies = s.catalog().object_copies().unwrap();
        let totals = s.totals().unwrap();
        assert_eq!(totals.paths, 28);
        assert_eq!(totals.objects, copies, "every object is stored once");
    }
    let (url, _, sent) = refstrip_tests::static_http_server_counting(store.clone());
    let root = dir.path().join("root");
    let cache = dir.path().join("cache");
    let substitute = |generation: &str| {
        let before = sent.load(std::sync::atomic::Ordering::Relaxed);
        let roots =
            fs::read_to_string(Path::new(&generation_dir(generation)).join("roots")).unwrap();
        let out = run(Command::new(refstrip_bin())
            .args([
                "substitute",
                "--json",
                "--no-check-sigs",
                "--no-local-store",
                "--from",
            ])
            .arg(&url)
            .arg("--store")
            .arg(&root)
            .arg("--cache")
            .arg(&cache)
            .arg(roots.trim()));
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        (
            report,
            sent.load(std::sync::atomic::Ordering::Relaxed) - before,
        )
    };
    let (first, _) = substitute("gen1");
    assert!(first["fetched_blocks"].as_u64().unwrap() > 0, "{first}");
    let (second, fetched) = substitute("mass");
    assert_eq!(second["paths"], 14, "{second}");
    assert_eq!(second["fetched_blocks"], 0, "{second}");
    // What came from the origin is the records (bindings, and the object tables of shapes the
    // disk cache has: the client needs them to find objects in the blocks it holds) and the
    // store's marker; no block.
    let records = second["record_bytes"].as_u64().unwrap();
    eprintln!(
        "mass after gen1 from a store ingested in one run: {fetched} bytes from the origin, \
         {records} of them records"
    );
    assert!(
        fetched >= records && fetched <= records + 64,
        "{fetched} bytes from the origin, {records} of them records"
    );
}
