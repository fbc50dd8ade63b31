//! refstrip against a real S3-compatible server (moto's, started per test on loopback): a binary
//! cache in a bucket as ingest source, a normalized store in a bucket written by concurrent shard
//! processes (one SIGKILLed and rerun) that must equal one local ingest, substitution from the
//! bucket and stock `nix copy` through `refstrip serve` over the bucket, both checked by real Nix,
//! and two-step gc. The bucket is filled and read back with boto3 (a
//! client independent of refstrip), and every refstrip process gets its own cache directory, as
//! if it ran on its own machine.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use refstrip_read::PathRecord;
use refstrip_tests::{
    corpus_dir, corpus_key, nix_available, read_record, refstrip_bin, run, GENERATIONS,
};

/// boto3 with moto's dummy credentials, for the helper snippets below.
const PY_CLIENT: &str = "import boto3, os, sys\n\
s3 = boto3.client('s3', endpoint_url=os.environ['EP'], aws_access_key_id='test',\n\
    aws_secret_access_key='test', region_name='us-east-1')\n";

fn moto_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import moto.server, boto3, flask"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("moto[server] not found but CI is set: tools/setup.sh should have installed it");
        }
        eprintln!("\n*** SKIPPED: moto's S3 server (python3 -m moto.server) is not installed; run tools/setup.sh to test against S3 ***\n");
    }
    found
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Option<Moto> {
        if !moto_available() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Run a Python snippet with `s3` (a boto3 client for this server) and `sys.argv` = `args`.
    fn py(&self, code: &str, args: &[&str]) -> String {
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(format!("{PY_CLIENT}{code}"))
            .args(args)
            .env("EP", &self.endpoint));
        String::from_utf8(out).unwrap()
    }

    fn create_bucket(&self, bucket: &str) {
        self.py("s3.create_bucket(Bucket=sys.argv[1])", &[bucket]);
    }

    /// Upload the files under `dir` to `bucket` under `prefix` (as `nix copy --to s3://` would).
    fn upload(&self, dir: &Path, bucket: &str, prefix: &str) {
        self.py(
            "d, b, p = sys.argv[1:4]\n\
             for root, _, files in os.walk(d):\n    \
                 for f in files:\n        \
                     full = os.path.join(root, f)\n        \
                     s3.upload_file(full, b, p + os.path.relpath(full, d))",
            &[dir.to_str().unwrap(), bucket, prefix],
        );
    }

    /// Every key of `bucket` under `prefix`, the prefix removed.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.py(
            "b, p = sys.argv[1:3]\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket=b, Prefix=p):\n    \
                 for o in page.get('Contents', []):\n        \
                     print(o['Key'][len(p):])",
            &[bucket, prefix],
        )
        .lines()
        .map(String::from)
        .collect()
    }

    /// Copy `bucket`/`prefix` into the local directory `to`.
    fn download(&self, bucket: &str, prefix: &str, to: &Path) {
        self.py(
            "b, p, d = sys.argv[1:4]\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket=b, Prefix=p):\n    \
                 for o in page.get('Contents', []):\n        \
                     dest = os.path.join(d, o['Key'][len(p):])\n        \
                     os.makedirs(os.path.dirname(dest), exist_ok=True)\n        \
                     s3.download_file(b, o['Key'], dest)",
            &[bucket, prefix, to.to_str().unwrap()],
        );
    }

    fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1",
            self.endpoint
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `refstrip` command as run on its own machine: credentials in the environment and a cache
/// directory (local catalog, scratch) of its own.
fn refstrip(machine: &Path) -> Command {
    let mut cmd = Command::new(refstrip_bin());
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("REFSTRIP_CACHE_DIR", machine);
    cmd
}

fn gen_dir(generation: &str) -> PathBuf {
    corpus_dir().join("small").join(generation)
}

fn root_path(generation: &str) -> String {
    fs::read_to_string(gen_dir(generation).join("roots"))
        .unwrap()
        .trim()
        .to_string()
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap()
}

/// A store directory's path records by hash part.
fn records(store: &Path) -> BTreeMap<String, PathRecord> {
    fs::read_dir(store.join("paths"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let record = read_record(store, &name);
            (name, record)
        })
        .collect()
}

/// `got` (a copy of a bucket) holds the same store as `want`: the same paths with byte-identical
/// manifests and the same objects, every record pointing into packs that exist. (Which pack an
/// object landed in depends on scheduling, so locations may differ.)
fn assert_same_store(got: &Path, want: &Path) {
    let (got, want) = (records(got), records(want));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "path records differ"
    );
    for (hash, g) in &got {
        let w = &want[hash];
        assert!(g.manifest == w.manifest, "{hash}: manifests differ");
        let objects = |r: &PathRecord| {
            r.objects
                .map()
                .unwrap()
                .keys()
                .copied()
                .collect::<HashSet<_>>()
        };
        assert_eq!(objects(g), objects(w), "{hash}: objects differ");
    }
}

fn assert_packs_present(store: &Path) {
    for (hash, r) in records(store) {
        for (pack, _) in r.objects.map().unwrap().values() {
            assert!(
                store.join(format!("packs/{pack}.pack")).exists(),
                "{hash} points into missing pack {pack}"
            );
        }
    }
}

fn local_ingest(generations: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for g in generations {
        run(Command::new(refstrip_bin())
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "-j1", "--to"])
            .arg(dir.path()));
    }
    dir
}

#[test]
fn ingest_from_a_binary_cache_in_a_bucket() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("nix-cache");
    for g in ["gen1", "mass"] {
        moto.upload(&gen_dir(g), "nix-cache", &format!("{g}/"));
    }
    let machine = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    for g in ["gen1", "mass"] {
        let out = run(refstrip(machine.path())
            .arg("ingest")
            .arg(moto.url("nix-cache", g))
            .args(["--all", "-j1", "--json", "--to"])
            .arg(store.path()));
        let report = json(&out);
        assert_eq!(report["ingested"].as_u64(), Some(14), "{g}: {report}");
        let r = &report["source_requests"];
        // One LIST for the narinfos, then per path one GET of its narinfo and one of its NAR;
        // nothing else.
        assert_eq!(
            (r["list"].as_u64(), r["get"].as_u64(), r["put"].as_u64()),
            (Some(1), Some(28), Some(0)),
            "{g}: {r}"
        );
        eprintln!("{g}: source requests {r}");
    }
    assert_same_store(store.path(), local_ingest(&["gen1", "mass"]).path());

    // Bad URLs and missing caches fail with a clear message, not a panic.
    for (url, why) in [
        ("s3://Bad_Bucket/x".to_string(), "bucket name"),
        (
            format!("{}&colour=red", moto.url("nix-cache", "gen1")),
            "unknown parameter",
        ),
    ] {
        let o = refstrip(machine.path())
            .args(["ingest", &url, "--all", "--to"])
            .arg(store.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{url}: {err}");
        assert!(!err.contains("panicked"), "{url}: {err}");
    }
    let o = refstrip(machine.path())
        .arg("ingest")
        .arg(moto.url("nix-cache", "nothing-here"))
        .arg(root_path("gen1"))
        .arg("--to")
        .arg(store.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not in the source"),
        "{err}"
    );
}

/// Run `refstrip ingest --shard i/n` of `generation` into the bucket store, as machine `i`.
fn shard(moto: &Moto, machines: &Path, generation: &str, i: u64, n: u64) -> Command {
    let mut cmd = refstrip(&machines.join(i.to_string()));
    cmd.arg("ingest")
        .arg(gen_dir(generation))
        .args([
            "--all",
            "-j1",
            "--json",
            "--shard",
            &format!("{i}/{n}"),
            "--to",
        ])
        .arg(moto.url("store", "refstrip"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn finished(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "shard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out.stdout)
}

#[test]
fn sharded_ingest_into_a_bucket_equals_one_local_ingest() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("store");
    let machines = tempfile::tempdir().unwrap();
    let mut nar_bytes = 0;
    let mut requests = 0;
    for g in ["gen1", "mass"] {
        let children: Vec<Child> = (0..3)
            .map(|i| shard(&moto, machines.path(), g, i, 3).spawn().unwrap())
            .collect();
        let mut children = children.into_iter();
        let (c0, c1, c2) = (
            children.next().unwrap(),
            children.next().unwrap(),
            children.next().unwrap(),
        );
        let mut reports = vec![finished(c0), finished(c2)];
        if g == "mass" {
            // Shard 1 dies at some moment of its run (SIGKILL: no cleanup) and is run again.
            let mut c1 = c1;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64;
            std::thread::sleep(Duration::from_millis(50 + nanos % 400));
            c1.kill().unwrap();
            let status = c1.wait().unwrap();
            eprintln!("shard 1 of {g} killed: {status}");
            reports.push(finished(
                shard(&moto, machines.path(), g, 1, 3).spawn().unwrap(),
            ));
        } else {
            reports.push(finished(c1));
        }
        for r in &reports {
            assert!(r["failed"].as_array().unwrap().is_empty(), "{r}");
            nar_bytes += r["nar_bytes"].as_u64().unwrap();
            requests += r["store_requests"]["total"].as_u64().unwrap();
            eprintln!("{g}: {}", r["store_requests"]);
        }
    }
    eprintln!(
        "store requests: {requests} for {nar_bytes} NAR bytes = {:.0} per GB",
        requests as f64 * 1e9 / nar_bytes as f64
    );
    let copy = tempfile::tempdir().unwrap();
    moto.download("store", "refstrip/", copy.path());
    assert_same_store(copy.path(), local_ingest(&["gen1", "mass"]).path());
    assert_packs_present(copy.path());
    // No scratch or catalog files in the bucket: only the marker, packs and records.
    for key in moto.keys("store", "refstrip/") {
        assert!(
            key == "refstrip-store"
                || key.starts_with("packs/")
                || key.starts_with("paths/")
                || key.starts_with("shapes/"),
            "{key}"
        );
    }

    // A fresh machine sees the whole store (catalog built from the listing).
    let stats = json(&run(refstrip(&machines.path().join("fresh"))
        .args(["stats", "--json"])
        .arg(moto.url("store", "refstrip"))));
    assert_eq!(stats["paths"].as_u64(), Some(28), "{stats}");
}

/// (narHash, narSize, references) of every path in `root`'s closure, as Nix reports them.
fn path_infos(store: &str, root: &str) -> BTreeMap<String, String> {
    let out = run(Command::new("nix").args(["path-info", "--store", store, "--json", "-r", root]));
    let infos: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
    infos
        .into_iter()
        .map(|i| {
            let mut refs: Vec<&str> = i["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            refs.sort();
            (
                i["path"].as_str().unwrap().to_string(),
                format!("{} {} {refs:?}", i["narHash"], i["narSize"]),
            )
        })
        .collect()
}

/// Substitute `generation`'s closure from the bucket store into a fresh root; check it like Nix.
fn substitute_and_verify(moto: &Moto, machine: &Path, url: &str, generation: &str) -> Output {
    let root = tempfile::tempdir().unwrap();
    let out = refstrip(machine)
        .args([
            "substitute",
            "--json",
            "--no-cache",
            "--from",
            url,
            "--store",
        ])
        .arg(root.path())
        .args(["--trusted-public-keys", &corpus_key()])
        .arg(root_path(generation))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "substitute {generation} from {}: {}",
        moto.endpoint,
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = Command::new("nix-store")
        .arg("--store")
        .arg(root.path())
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("modified") && !stderr.contains("disappeared"),
        "{generation}: nix-store --verify --check-contents: {stderr}"
    );
    let source = format!("file://{}", gen_dir(generation).display());
    assert_eq!(
        path_infos(root.path().to_str().unwrap(), &root_path(generation)),
        path_infos(&source, &root_path(generation)),
        "{generation}: path infos differ from the cache's"
    );
    out
}

#[test]
fn substitute_from_a_bucket_verifies_with_nix() {
    if !nix_available() {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("store");
    let machine = tempfile::tempdir().unwrap();
    let url = moto.url("store", "");
    run(refstrip(machine.path())
        .arg("ingest")
        .arg(gen_dir("gen1"))
        .args(["--all", "--to", &url]));
    let client = tempfile::tempdir().unwrap();
    let out = substitute_and_verify(&moto, client.path(), &url, "gen1");
    let report = json(&out.stdout);
    assert_eq!(report["paths"].as_u64(), Some(14), "{report}");
}

fn gc(machine: &Path, url: &str, keep: &[String], grace: &str) -> (u64, u64) {
    let out = String::from_utf8(run(refstrip(machine)
        .args(["gc", url, "--grace", grace, "--keep"])
        .args(keep)))
    .unwrap();
    // "removed N paths and M packs, …"
    let words: Vec<&str> = out.split_whitespace().collect();
    (words[1].parse().unwrap(), words[4].parse().unwrap())
}

/// Retention and repack on a bucket written by another machine: registration times come from the
/// listing; the packs repack replaces are retired (marked, left out of other machines' catalogs),
/// kept through the grace period, and deleted by a later run; every kept path still substitutes.
#[test]
fn retention_and_repack_on_a_bucket() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("store");
    let machines = tempfile::tempdir().unwrap();
    let (ingester, collector) = (machines.path().join("a"), machines.path().join("b"));
    let url = moto.url("store", "x");
    let ingest = |g: &str| {
        run(refstrip(&ingester)
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "-j1", "--to", &url]))
    };
    let keys = |prefix: &str| -> HashSet<String> {
        moto.keys("store", "x/")
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect()
    };
    for g in GENERATIONS {
        ingest(g);
    }
    // Every record was written just now (LastModified): a day's window keeps them all.
    let recent = String::from_utf8(run(refstrip(&collector).args([
        "gc",
        &url,
        "--keep-within",
        "1d",
        "--dry-run",
    ])))
    .unwrap();
    assert!(recent.contains("would remove 0 paths"), "{recent}");

    gc(&collector, &url, &[root_path("bump")], "24h");
    let before = keys("packs/");
    let repacked = String::from_utf8(run(refstrip(&collector).args([
        "repack",
        "--store",
        &url,
        "--threshold",
        "1",
    ])))
    .unwrap();
    let retired: HashSet<String> = keys("gc/retired/")
        .iter()
        .map(|k| format!("packs/{}.pack", k.strip_prefix("gc/retired/").unwrap()))
        .collect();
    assert!(!retired.is_empty(), "{repacked}");
    assert!(retired.is_subset(&before));
    assert!(
        keys("packs/").is_superset(&before),
        "deleted within the grace period"
    );

    // Another machine's ingest opened after the repack never points a record into a retired pack.
    ingest("single");
    let copy = tempfile::tempdir().unwrap();
    moto.download("store", "x/", copy.path());
    for (hash_part, record) in records(copy.path()) {
        for (pack, _) in record.objects.map().unwrap().values() {
            assert!(
                !retired.contains(&format!("packs/{pack}.pack")),
                "{hash_part} points into a retired pack"
            );
        }
    }

    let finished = String::from_utf8(run(refstrip(&collector).args([
        "repack",
        "--store",
        &url,
        "--grace",
        "0",
        "--threshold",
        "0",
    ])))
    .unwrap();
    assert!(
        finished.contains(&format!("deleted {} replaced packs", retired.len())),
        "{finished}"
    );
    assert!(keys("packs/").is_disjoint(&retired));
    assert!(keys("gc/retired/").is_empty());
    if nix_available() {
        let client = tempfile::tempdir().unwrap();
        for g in ["bump", "single"] {
            substitute_and_verify(&moto, client.path(), &url, g);
        }
    }
}

#[test]
fn gc_on_a_bucket_condemns_first_and_deletes_after_the_grace_period() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("store");
    let machines = tempfile::tempdir().unwrap();
    let (ingester, collector) = (machines.path().join("a"), machines.path().join("b"));
    let url = moto.url("store", "x");
    let ingest = |extra: &[&str], g: &str| {
        run(refstrip(&ingester)
            .arg("ingest")
            .arg(gen_dir(g))
            .args(["--all", "-j1", "--to", &url])
            .args(extra))
    };
    let packs = || -> HashSet<String> {
        moto.keys("store", "x/")
            .into_iter()
            .filter(|k| k.starts_with("packs/"))
            .collect()
    };
    ingest(&[], "gen1");
    let gen1_packs = packs();
    ingest(&[], "bump");
    let bump_packs: HashSet<String> = packs().difference(&gen1_packs).cloned().collect();
    assert!(!bump_packs.is_empty());
    let (gen1, bump) = (root_path("gen1"), root_path("bump"));

    let markers = || -> HashSet<String> {
        moto.keys("store", "x/")
            .into_iter()
            .filter_map(|k| Some(format!("packs/{}.pack", k.strip_prefix("gc/condemned/")?)))
            .collect()
    };
    let gen1_only = std::slice::from_ref(&gen1);
    let both = [gen1.clone(), bump.clone()];

    // Dropping bump's own paths leaves its new pack unreferenced: condemned, not deleted, and
    // not deleted either by a gc within the grace period.
    let (paths, deleted) = gc(&collector, &url, gen1_only, "24h");
    assert!(paths > 0);
    assert_eq!(deleted, 0);
    assert_eq!(markers(), bump_packs);
    assert_eq!(gc(&collector, &url, gen1_only, "24h"), (0, 0));
    assert_eq!(markers(), bump_packs);

    // An ingest from now on does not reuse the condemned pack's objects: it writes them anew
    // (here into a byte-identical pack, which un-condemns it), so no gc deletes them under it.
    let again = json(&ingest(&["--json"], "bump"));
    assert!(again["new_objects"].as_u64().unwrap() > 0, "{again}");
    assert!(markers().is_empty());
    assert_eq!(gc(&collector, &url, &both, "0"), (0, 0));

    // Condemned again, then deleted once the grace period (0 here) is over.
    assert!(gc(&collector, &url, gen1_only, "24h").0 > 0);
    assert_eq!(
        gc(&collector, &url, gen1_only, "0"),
        (0, bump_packs.len() as u64)
    );
    assert!(packs().is_disjoint(&bump_packs));
    assert!(markers().is_empty());

    // The ingesting machine's catalog follows: bump is written again, pack and all.
    ingest(&[], "bump");
    assert!(packs().is_superset(&bump_packs));

    let copy = tempfile::tempdir().unwrap();
    moto.download("store", "x/", copy.path());
    assert_packs_present(copy.path());
    if nix_available() {
        let client = tempfile::tempdir().unwrap();
        for g in ["gen1", "bump"] {
            substitute_and_verify(&moto, client.path(), &url, g);
        }
    }
}

#[test]
fn stock_nix_copies_through_serve_from_a_bucket() {
    if !nix_available() {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("store");
    let machine = tempfile::tempdir().unwrap();
    let url = moto.url("store", "cache");
    for generation in ["gen1", "mass"] {
        run(refstrip(machine.path())
            .arg("ingest")
            .arg(gen_dir(generation))
            .args(["--all", "--to", &url]));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = machine.path().join("server");
    let mut serve = refstrip(&server)
        .args([
            "serve",
            "--from",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            serve.try_wait().unwrap().is_none(),
            "refstrip serve exited early"
        );
        assert!(
            Instant::now() < deadline,
            "refstrip serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = tempfile::tempdir().unwrap();
    for generation in ["gen1", "mass"] {
        // Signatures checked against the corpus key: the originals pass through the bucket.
        let out = Command::new("nix")
            .args([
                "copy",
                "--from",
                &format!("http://127.0.0.1:{port}"),
                "--to",
            ])
            .arg(root.path())
            .args(["--option", "trusted-public-keys", &corpus_key()])
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            // Nix keeps narinfos per cache URL for a month; another test's server may have had
            // this port (with unsigned copies of these paths, tests/signing.rs).
            .args(["--option", "narinfo-cache-positive-ttl", "0"])
            .arg(root_path(generation))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix copy {generation}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let source = format!("file://{}", gen_dir(generation).display());
        assert_eq!(
            path_infos(root.path().to_str().unwrap(), &root_path(generation)),
            path_infos(&source, &root_path(generation)),
            "{generation}: path infos differ from the cache's"
        );
    }
    let verify = Command::new("nix-store")
        .arg("--store")
        .arg(root.path())
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("modified"),
        "{stderr}"
    );
    run(Command::new("kill").args(["-TERM", &serve.id().to_string()]));
    assert!(
        serve.wait().unwrap().success(),
        "serve exits cleanly on SIGTERM"
    );
}

/// `refstrip push` to a bucket (issue #16): a build machine's unsigned paths, signed with its key;
/// pushing again sends no pack; stock Nix copies them through `refstrip serve` reading the bucket
/// with only that key trusted.
#[test]
fn push_to_a_bucket_signed_and_incremental_served_to_stock_nix() {
    use refstrip_tests::operator::{
        corpus_root, key_pair, nix_copy_from, unsigned_local_store, verify_contents,
    };
    if !nix_available() {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("pushed");
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "builder-1");
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    let url = moto.url("pushed", "store");
    let builder = tmp.path().join("builder");
    let push = || {
        let out = run(refstrip(&builder)
            .args(["push", "--json", "--store"])
            .arg(&local)
            .args(["--to", &url, "--sign-key"])
            .arg(&secret)
            .arg(corpus_root("gen1")));
        json(&out)
    };
    let first = push();
    assert_eq!(first["pushed"], 14, "{first}");
    let keys = moto.keys("pushed", "store/");
    let again = push();
    assert_eq!(
        (again["pushed"].as_u64(), again["packs"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        moto.keys("pushed", "store/"),
        keys,
        "a second push wrote to the bucket"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = refstrip(&tmp.path().join("server"))
        .args([
            "serve",
            "--from",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            serve.try_wait().unwrap().is_none(),
            "refstrip serve exited early"
        );
        assert!(
            Instant::now() < deadline,
            "refstrip serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dest = tmp.path().join("dest");
    let out = nix_copy_from(
        &format!("http://127.0.0.1:{port}"),
        &dest,
        &public,
        &corpus_root("gen1"),
    );
    run(Command::new("kill").args(["-TERM", &serve.id().to_string()]));
    assert!(serve.wait().unwrap().success());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(&dest);
}
