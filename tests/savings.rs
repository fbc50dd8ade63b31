//! `refstrip savings` and `refstrip explain` on the committed corpus, checked against independent
//! computations: real `xz` over every NAR, files unpacked by `refstrip nar unpack` and hashed with
//! SHA-256 here, a normalized store as input, and the table against the JSON.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use refstrip_nix::{NarInfo, StoreDir};
use refstrip_source::open_source;
use refstrip_tests::{corpus_dir, refstrip_bin, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn generation(name: &str) -> String {
    corpus_dir()
        .join("small")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn savings_json(old: &str, new: &str, extra: &[&str]) -> Value {
    let out = run(Command::new(refstrip_bin())
        .args(["savings", "--old", old, "--new", new, "--json"])
        .args(extra));
    serde_json::from_slice(&out).expect("savings --json is JSON")
}

fn row<'a>(report: &'a Value, method: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == method)
        .unwrap_or_else(|| panic!("no row {method}"))
}

fn bytes(report: &Value, method: &str, column: &str) -> u64 {
    row(report, method)[column].as_u64().unwrap()
}

/// Every narinfo of a corpus generation and its uncompressed NAR.
fn nars(name: &str) -> Vec<(NarInfo, Vec<u8>)> {
    let src = open_source(&generation(name), StoreDir::default()).unwrap();
    src.list()
        .unwrap()
        .into_iter()
        .map(|p| {
            let info = src.narinfo(&p).unwrap();
            let mut nar = Vec::new();
            src.nar(&info).unwrap().read_to_end(&mut nar).unwrap();
            (info, nar)
        })
        .collect()
}

#[test]
fn a_mass_rebuild_costs_stripped_forms_almost_nothing_and_nar_forms_everything() {
    let r = savings_json(&generation("gen1"), &generation("mass"), &[]);
    assert_eq!(r["baseline"], "nar-xz");
    for row in r["rows"].as_array().unwrap() {
        let (c, d, u) = (
            row["closure"].as_u64().unwrap(),
            row["downloaded"].as_u64().unwrap(),
            row["reused"].as_u64().unwrap(),
        );
        assert_eq!(c, d + u, "{row}");
        assert!(c > 0, "{row}");
    }
    // Every store path changed: NAR substitution re-downloads the whole closure.
    for m in ["nar-xz", "nar-zstd"] {
        assert_eq!(bytes(&r, m, "downloaded"), bytes(&r, m, "closure"), "{m}");
    }
    let nar = bytes(&r, "nar-xz", "downloaded").min(bytes(&r, "nar-zstd", "downloaded"));
    for m in ["stripped-file", "stripped-file-zstd", "stripped-cdc-zstd"] {
        let d = bytes(&r, m, "downloaded");
        assert!(d * 20 < nar, "{m} downloads {d}, NAR rows {nar}");
        assert!(row(&r, m)["savings_percent"].as_f64().unwrap() > 95.0);
    }
    // Build-ids change in every rebuild: keeping them costs most of what stripping saved.
    for (kept, normalized) in [
        ("stripped-file-zstd-keep-build-id", "stripped-file-zstd"),
        ("stripped-cdc-zstd-keep-build-id", "stripped-cdc-zstd"),
    ] {
        assert!(bytes(&r, kept, "downloaded") > 10 * bytes(&r, normalized, "downloaded"));
    }
    // Plain content addressing finds little: whole files that mention no hash and no build-id.
    assert!(bytes(&r, "file", "downloaded") < bytes(&r, "file", "closure"));
    assert!(bytes(&r, "file", "downloaded") > bytes(&r, "file", "closure") / 2);
}

#[test]
fn a_version_bump_with_deltas_costs_under_60_percent_of_nar_xz_and_a_mass_rebuild_the_same() {
    let r = savings_json(
        &generation("gen1"),
        &generation("bump"),
        &[
            "--methods",
            "nar-xz,stripped-cdc-zstd,stripped-cdc-zstd-delta",
        ],
    );
    let (xz, cdc, delta) = (
        bytes(&r, "nar-xz", "downloaded"),
        bytes(&r, "stripped-cdc-zstd", "downloaded"),
        bytes(&r, "stripped-cdc-zstd-delta", "downloaded"),
    );
    // Measured: 72,716 of 162,876 (44.6 %); without deltas 276,099. tests/deltas.rs counts what
    // a real client fetches (76,513 at the HTTP origin: whole blocks, the object tables).
    assert!(delta * 100 <= xz * 60, "{delta} vs NAR.xz {xz}");
    assert!(delta * 3 < cdc, "{delta} vs {cdc} without deltas");
    assert_eq!(
        bytes(&r, "stripped-cdc-zstd-delta", "reused"),
        bytes(&r, "stripped-cdc-zstd", "reused")
    );
    // A mass rebuild pairs every file with an identical one: no delta, nothing changes.
    let r = savings_json(
        &generation("gen1"),
        &generation("mass"),
        &["--methods", "stripped-cdc-zstd,stripped-cdc-zstd-delta"],
    );
    assert_eq!(
        bytes(&r, "stripped-cdc-zstd-delta", "downloaded"),
        bytes(&r, "stripped-cdc-zstd", "downloaded")
    );
}

/// `xz -6` (what Nix's caches use) over each NAR, by the real xz tool.
fn xz_size(nar: &[u8]) -> u64 {
    let out = refstrip_tests::run_with_stdin(Command::new("xz").args(["-6", "-c", "-T1"]), nar);
    out.len() as u64
}

#[test]
fn nar_xz_row_is_the_sum_of_real_xz_compressions() {
    if Command::new("xz").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPED: the xz tool is not installed ***\n");
        return;
    }
    let r = savings_json(
        &generation("gen1"),
        &generation("single"),
        &["--methods", "nar-xz"],
    );
    let old: HashSet<String> = nars("gen1")
        .into_iter()
        .map(|(i, _)| i.store_path.to_string())
        .collect();
    let (mut closure, mut downloaded) = (0, 0);
    for (info, nar) in nars("single") {
        let size = xz_size(&nar);
        closure += size;
        if !old.contains(&info.store_path.to_string()) {
            downloaded += size;
        }
    }
    assert_eq!(bytes(&r, "nar-xz", "closure"), closure);
    assert_eq!(bytes(&r, "nar-xz", "downloaded"), downloaded);
    assert!(
        downloaded > 0 && downloaded < closure,
        "single rebuilds part of the closure"
    );
    assert_eq!(r["rows"].as_array().unwrap().len(), 1, "--methods selects");
}

/// SHA-256 and size of every regular file under `dir` (symlinks are not files).
fn walk(dir: &Path, out: &mut HashMap<[u8; 32], u64>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            walk(&e.path(), out);
        } else if t.is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            out.insert(Sha256::digest(&bytes).into(), bytes.len() as u64);
        }
    }
}

/// Unique files of a generation, unpacked by `refstrip nar unpack`.
fn unpacked_files(name: &str, tmp: &Path) -> HashMap<[u8; 32], u64> {
    std::fs::create_dir_all(tmp).unwrap();
    let mut files = HashMap::new();
    for (info, nar) in nars(name) {
        let nar_file = tmp.join(format!("{}.nar", info.store_path.hash_part()));
        std::fs::write(&nar_file, &nar).unwrap();
        let dest: PathBuf = tmp.join(info.store_path.base_name());
        run(Command::new(refstrip_bin())
            .args(["nar", "unpack"])
            .arg(&nar_file)
            .arg(&dest));
        if dest.is_dir() {
            walk(&dest, &mut files);
        } else if dest.is_file() {
            let bytes = std::fs::read(&dest).unwrap();
            files.insert(Sha256::digest(&bytes).into(), bytes.len() as u64);
        }
    }
    files
}

#[test]
fn file_row_matches_files_unpacked_and_hashed_independently() {
    let tmp = tempfile::tempdir().unwrap();
    for new in ["mass", "bump"] {
        let r = savings_json(
            &generation("gen1"),
            &generation(new),
            &["--methods", "file"],
        );
        let old = unpacked_files("gen1", &tmp.path().join(format!("old-{new}")));
        let files = unpacked_files(new, &tmp.path().join(new));
        let closure: u64 = files.values().sum();
        let downloaded: u64 = files
            .iter()
            .filter(|(h, _)| !old.contains_key(*h))
            .map(|(_, s)| s)
            .sum();
        assert_eq!(bytes(&r, "file", "closure"), closure, "{new}");
        assert_eq!(bytes(&r, "file", "downloaded"), downloaded, "{new}");
    }
}

#[test]
fn table_and_json_agree_and_the_plot_shows_every_row() {
    let (old, new) = (generation("gen1"), generation("bump"));
    let json = savings_json(&old, &new, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("plot.svg");
    let table = String::from_utf8(run(Command::new(refstrip_bin())
        .args(["savings", "--old", &old, "--new", &new, "--plot"])
        .arg(&svg)))
    .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "every method by default");
    for r in rows {
        let method = r["method"].as_str().unwrap();
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(method))
            .unwrap_or_else(|| panic!("{method} not in the table:\n{table}"));
        let numbers: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(3)
            .map(|n| n.replace(',', "").parse().unwrap())
            .collect();
        assert_eq!(
            numbers,
            [&r["closure"], &r["downloaded"], &r["reused"]].map(|v| v.as_u64().unwrap()),
            "{method}"
        );
        let pct = format!("{:.1} %", r["savings_percent"].as_f64().unwrap());
        assert!(line.ends_with(&pct), "{line} vs {pct}");
    }
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg"));
    assert_eq!(
        svg.matches("<rect x=").count(),
        2 * rows.len() + 2,
        "two bars per row + legend"
    );
    for r in rows {
        assert!(svg.contains(&format!(
            "{} downloaded: {} bytes",
            r["method"].as_str().unwrap(),
            r["downloaded"]
        )));
    }
}

#[test]
fn a_normalized_store_reads_as_the_caches_it_was_ingested_from() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    for g in ["gen1", "mass"] {
        let store = tmp.path().join(g);
        run(Command::new(refstrip_bin())
            .args(["ingest", &generation(g), "--all", "--to"])
            .arg(&store));
        stores.push(store.to_string_lossy().into_owned());
    }
    let methods = [
        "--methods",
        "nar-zstd,file-zstd,cdc-nar-zstd,stripped-cdc-zstd",
    ];
    let from_caches = savings_json(&generation("gen1"), &generation("mass"), &methods);
    let from_stores = savings_json(&stores[0], &stores[1], &methods);
    assert_eq!(from_caches["rows"], from_stores["rows"]);
    assert_eq!(
        from_caches["new"]["nar_bytes"],
        from_stores["new"]["nar_bytes"]
    );
}

#[test]
fn roots_limit_the_measurement_to_their_closures() {
    let r = savings_json(
        &generation("gen1"),
        &generation("mass"),
        &["--methods", "nar-zstd", "--roots", "lua-zlib-1.3"],
    );
    // The closure by the narinfos' References, computed here.
    let all = nars("mass");
    let by_name: HashMap<String, &NarInfo> = all
        .iter()
        .map(|(i, _)| (i.store_path.to_string(), i))
        .collect();
    let root = all
        .iter()
        .find(|(i, _)| i.store_path.name() == "lua-zlib-1.3")
        .unwrap();
    let mut todo = vec![&root.0];
    let mut seen = HashSet::new();
    while let Some(info) = todo.pop() {
        if seen.insert(info.store_path.to_string()) {
            todo.extend(info.references.iter().map(|p| by_name[&p.to_string()]));
        }
    }
    assert!(seen.len() > 1 && seen.len() < all.len());
    assert_eq!(r["new"]["paths"].as_u64().unwrap() as usize, seen.len());
    assert_eq!(
        r["old"]["paths"], r["new"]["paths"],
        "the same closure by name in gen1"
    );

    // Across a version bump the old root is found by package name (lua-5.4.4 for lua-5.4.7).
    let r = savings_json(
        &generation("gen1"),
        &generation("bump"),
        &["--methods", "nar-zstd", "--roots", "lua-5.4.7"],
    );
    assert!(r["old"]["paths"].as_u64().unwrap() >= 1);
    assert_eq!(bytes(&r, "nar-zstd", "reused"), 0, "every lua path changed");
}

fn explain_json(new: &str, path: &str, extra: &[&str]) -> Value {
    let out = run(Command::new(refstrip_bin())
        .args([
            "explain",
            "--old",
            &generation("gen1"),
            "--new",
            &generation(new),
            path,
            "--json",
        ])
        .args(extra));
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn explain_finds_nothing_after_stripping_and_the_build_id_without_normalization() {
    let e = explain_json("mass", "zlib-1.2.13", &[]);
    assert_eq!(e["residual_bytes"], 0, "{e}");
    assert_eq!(e["files"], e["identical_files"]);
    assert!(
        e["literal_patches"].as_u64().unwrap() >= 1,
        "the build-id is carried as a patch"
    );

    let e = explain_json("mass", "zlib-1.2.13", &["--no-build-id"]);
    let residual = e["residual"].as_array().unwrap();
    assert!(!residual.is_empty(), "{e}");
    for file in residual {
        assert_eq!(file["elf"], true, "{file}");
        let regions = file["regions"].as_array().unwrap();
        assert_eq!(regions.len(), 1, "{file}");
        assert_eq!(regions[0][0], ".note.gnu.build-id");
        assert_eq!(regions[0][1], 20, "a 20-byte SHA-1 build-id");
    }

    // A real version bump: the old path is found by package name, and code differs.
    let e = explain_json("bump", "lua-5.4.7", &[]);
    assert!(e["old_path"].as_str().unwrap().ends_with("-lua-5.4.4"));
    let text = e.to_string();
    assert!(text.contains(".text") && e["residual_bytes"].as_u64().unwrap() > 1000);
}

/// Whether an error message names the store path it is about (`<hash>-<name>`).
fn names_a_store_path(message: &str) -> bool {
    message
        .split(|c: char| c.is_whitespace() || c == '/')
        .any(|w| {
            w.len() > 33
                && w.as_bytes()[32] == b'-'
                && refstrip_nix::is_hash_part(&w.as_bytes()[..32])
        })
}

fn copy_cache(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("nar")).unwrap();
    for dir in ["", "nar"] {
        for e in std::fs::read_dir(from.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, to.join(dir).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
}

fn fails(args: &[&str]) -> String {
    let out = Command::new(refstrip_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_inputs_give_clear_errors() {
    let gen1 = generation("gen1");
    let mass = generation("mass");
    let e = fails(&["savings", "--old", "/nonexistent/cache", "--new", &mass]);
    assert!(
        e.contains("/nonexistent/cache") && e.contains("neither a binary cache"),
        "{e}"
    );
    let e = fails(&["savings", "--old", &gen1, "--new", "ftp://x", "--json"]);
    assert!(e.contains("unsupported scheme"), "{e}");
    let e = fails(&[
        "savings",
        "--old",
        &gen1,
        "--new",
        &mass,
        "--methods",
        "nar-gzip",
    ]);
    assert!(e.contains("unknown method"), "{e}");
    let e = fails(&[
        "savings",
        "--old",
        &gen1,
        "--new",
        &mass,
        "--roots",
        "no-such-thing",
    ]);
    assert!(e.contains("no path named no-such-thing"), "{e}");
    let e = fails(&["explain", "--old", &gen1, "--new", &mass, "no-such-thing"]);
    assert!(e.contains("no path named"), "{e}");

    // A cache whose NAR files are damaged and whose narinfo is garbage.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(bad.join("nar")).unwrap();
    for e in std::fs::read_dir(&mass).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
        }
    }
    for e in std::fs::read_dir(Path::new(&mass).join("nar")).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(
            bad.join("nar").join(p.file_name().unwrap()),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
    }
    let bad = bad.to_string_lossy().into_owned();
    let e = fails(&[
        "savings",
        "--old",
        &gen1,
        "--new",
        &bad,
        "--methods",
        "file",
    ]);
    assert!(names_a_store_path(&e), "{e}");
    let e = fails(&[
        "savings",
        "--old",
        &gen1,
        "--new",
        &bad,
        "--methods",
        "stripped-cdc-zstd",
    ]);
    assert!(names_a_store_path(&e), "{e}");
    let e = fails(&["explain", "--old", &gen1, "--new", &bad, "zlib-1.2.13"]);
    assert!(names_a_store_path(&e) && e.contains("zlib"), "{e}");
    // A NAR followed by more bytes.
    let trailing = tmp.path().join("trailing");
    copy_cache(Path::new(&mass), &trailing);
    let zlib = nars("mass")
        .into_iter()
        .find(|(i, _)| i.store_path.name() == "zlib-1.2.13")
        .unwrap();
    let mut nar = zlib.1;
    nar.extend_from_slice(b"more bytes");
    std::fs::write(
        trailing.join(&zlib.0.url),
        zstd::encode_all(&nar[..], 3).unwrap(),
    )
    .unwrap();
    let e = fails(&[
        "savings",
        "--old",
        &gen1,
        "--new",
        trailing.to_str().unwrap(),
        "--methods",
        "file",
    ]);
    assert!(
        e.contains("after the end of the NAR") && e.contains("zlib-1.2.13"),
        "{e}"
    );

    let narinfo = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .unwrap();
    std::fs::write(&narinfo, b"StorePath: nonsense\n\xff\n").unwrap();
    let e = fails(&["savings", "--old", &gen1, "--new", &bad]);
    assert!(e.contains(".narinfo"), "{e}");
}

#[test]
fn real_casync_adds_about_as_many_chunk_bytes_as_the_cdc_row() {
    if Command::new("casync").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPED: casync is not installed (tools/setup.sh installs it) ***\n");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/savings/casync_check.sh"
    );
    let out = String::from_utf8(run(Command::new("bash")
        .arg(script)
        .arg(generation("gen1"))
        .arg(generation("mass"))
        .arg(refstrip_bin())))
    .unwrap();
    let numbers = |label: &str| -> Vec<u64> {
        let line = out.lines().find(|l| l.starts_with(label)).unwrap();
        line.split_whitespace()
            .rev()
            .take(4)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    // [new bytes, new chunks, closure bytes, closure chunks]
    let (casync, ours) = (numbers("casync"), numbers("refstrip"));
    // Different rolling hashes (buzhash vs FastCDC) at the same sizes: close, not equal.
    for i in 0..4 {
        let (a, b) = (casync[i] as f64, ours[i] as f64);
        assert!((a - b).abs() <= 0.3 * a.max(b), "{out}");
    }
    assert!(casync[0] > 0 && casync[0] < casync[2], "{out}");
}

#[test]
fn http_caches_are_measured_from_roots_given_per_side() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(corpus_dir().join("small"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "HTTP server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let root = |g: &str| {
        std::fs::read_to_string(corpus_dir().join("small").join(g).join("roots"))
            .unwrap()
            .trim()
            .to_string()
    };
    let url = |g: &str| format!("http://127.0.0.1:{port}/{g}");
    let methods = ["--methods", "nar-xz,stripped-cdc-zstd"];
    let out = Command::new(refstrip_bin())
        .args([
            "savings",
            "--old",
            &url("gen1"),
            "--new",
            &url("mass"),
            "--json",
        ])
        .args(["--roots", &root("mass"), "--old-roots", &root("gen1")])
        .args(methods)
        .output()
        .unwrap();
    // Without per-side roots the old cache would have to be listed, which HTTP cannot do.
    let unlisted = Command::new(refstrip_bin())
        .args(["savings", "--old", &url("gen1"), "--new", &url("mass")])
        .args(["--roots", &root("mass")])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let over_http: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_dirs = savings_json(&generation("gen1"), &generation("mass"), &methods);
    assert_eq!(over_http["rows"], from_dirs["rows"]);
    assert!(!unlisted.status.success());
    assert!(String::from_utf8_lossy(&unlisted.stderr).contains("cannot be listed"));
}
