//! strip → restore through the CLI on real Nix output, checked against Nix: every NAR of a real
//! binary cache (written by `nix copy`, zstd and xz) restores to its NarHash, and a rebuild that
//! only changed hashes normalizes to the same tree.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use refstrip_tests::{refstrip_bin, require_nix, run};

const EXPR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/strip_oracle.nix");

fn build(rev: &str) -> String {
    let out = run(Command::new("nix-build").args([
        EXPR,
        "--no-out-link",
        "-A",
        "app",
        "--argstr",
        "rev",
        rev,
    ]));
    String::from_utf8(out).unwrap().trim().to_string()
}

fn copy_to_cache(path: &str, dir: &Path, compression: &str) {
    run(Command::new("nix").args([
        "copy",
        "--to",
        &format!("file://{}?compression={compression}", dir.display()),
        path,
    ]));
}

/// (narinfo, NAR file) for every path in a cache directory, keyed by the package name.
fn cache_entries(dir: &Path) -> BTreeMap<String, (PathBuf, PathBuf)> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "narinfo") {
            let text = fs::read_to_string(&p).unwrap();
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap()
                    .to_string()
            };
            let name = field("StorePath: ").rsplit_once('/').unwrap().1[33..].to_string();
            out.insert(name, (p.clone(), dir.join(field("URL: "))));
        }
    }
    out
}

fn strip_json(narinfo: &Path, nar: &Path, out: &Path) -> serde_json::Value {
    let stdout = run(Command::new(refstrip_bin())
        .args(["strip", "--json", "--narinfo"])
        .arg(narinfo)
        .arg("--nar")
        .arg(nar)
        .arg("-o")
        .arg(out));
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn real_caches_round_trip_and_mass_rebuild_normalizes_alike() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let gen1 = build("1");
    let gen2 = build("2");
    assert_ne!(gen1, gen2);

    let mut normalized: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (label, path) in [("gen1", &gen1), ("gen2", &gen2)] {
        for compression in ["zstd", "xz"] {
            let cache = dir.path().join(format!("{label}-{compression}"));
            copy_to_cache(path, &cache, compression);
            let entries = cache_entries(&cache);
            assert_eq!(entries.len(), 2, "app and libfoo");
            for (name, (narinfo, nar)) in entries {
                let bundle = dir.path().join(format!("{label}-{compression}-{name}.rsb"));
                let summary = strip_json(&narinfo, &nar, &bundle);
                let store_path = summary["store_path"].as_str().unwrap().to_string();
                if name.starts_with("app") {
                    // RUNPATH, printf'd path, wrapper shebang, symlinks, farm names: hashes everywhere.
                    assert!(summary["placeholders"].as_u64().unwrap() >= 7, "{summary}");
                    assert!(
                        summary["literal_patches"].as_u64().unwrap() >= 1,
                        "build-id: {summary}"
                    );
                }
                let restored = dir.path().join(format!("{label}-{compression}-{name}.nar"));
                run(Command::new(refstrip_bin())
                    .arg("restore")
                    .arg(&bundle)
                    .arg("-o")
                    .arg(&restored));
                let original = run(Command::new("nix-store").arg("--dump").arg(&store_path));
                assert!(
                    fs::read(&restored).unwrap() == original,
                    "{store_path}: restored NAR differs"
                );
                normalized
                    .entry(name)
                    .or_default()
                    .push(summary["normalized_digest"].as_str().unwrap().to_string());
            }
        }
    }
    // Both compressions agree, and gen2 (every hash changed) normalizes exactly like gen1.
    for (name, digests) in normalized {
        assert_eq!(digests.len(), 4);
        assert!(
            digests.iter().all(|d| d == &digests[0]),
            "{name}: {digests:?}"
        );
    }
}

#[test]
fn wrong_nar_or_narinfo_is_refused_and_leaves_no_output() {
    require_nix!();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    copy_to_cache(&build("1"), &cache, "zstd");
    let entries = cache_entries(&cache);
    let (app_info, app_nar) = entries
        .iter()
        .find(|(n, _)| n.starts_with("app"))
        .unwrap()
        .1;
    let (_, lib_nar) = entries
        .iter()
        .find(|(n, _)| n.starts_with("libfoo"))
        .unwrap()
        .1;
    let out = dir.path().join("out.rsb");
    let strip = |info: &Path, nar: &Path, extra: &[&str]| {
        Command::new(refstrip_bin())
            .arg("strip")
            .args(extra)
            .arg("--narinfo")
            .arg(info)
            .arg("--nar")
            .arg(nar)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };

    let o = strip(app_info, lib_nar, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not match the narinfo"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let truncated = dir.path().join("truncated.nar.zst");
    let bytes = fs::read(app_nar).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(!strip(app_info, &truncated, &[]).status.success());
    assert!(!strip(app_info, app_nar, &["--compression", "xz"])
        .status
        .success());
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary files left behind"
    );

    // A damaged bundle restores to nothing.
    assert!(strip(app_info, app_nar, &[]).status.success());
    let mut bundle = fs::read(&out).unwrap();
    let middle = bundle.len() / 3;
    bundle[middle] ^= 0x10;
    fs::write(&out, &bundle).unwrap();
    let restored = dir.path().join("restored.nar");
    let o = Command::new(refstrip_bin())
        .arg("restore")
        .arg(&out)
        .arg("-o")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!restored.exists());
}
