//! docs/architecture.md's crate table says which refstrip crates each crate depends on; this
//! checks it against `cargo metadata`, so the table a newcomer reads cannot drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// crate name -> the refstrip crates it depends on (normal dependencies), from cargo metadata.
fn from_cargo() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut crates = BTreeMap::new();
    for package in meta["packages"].as_array().unwrap() {
        let manifest = package["manifest_path"].as_str().unwrap();
        if !manifest.contains("/crates/") {
            continue; // tests and tools are not in the table
        }
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str()?.strip_prefix("refstrip-"))
            .map(String::from)
            .collect();
        crates.insert(package["name"].as_str().unwrap().to_string(), deps);
    }
    crates
}

/// The same, from the table in docs/architecture.md.
fn from_docs() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace().join("docs/architecture.md")).unwrap();
    let mut crates = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `refstrip")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].split('`').nth(1).unwrap().to_string();
        let deps: BTreeSet<String> = if cells[3] == "every crate above" {
            BTreeSet::from(["*".to_string()])
        } else {
            // Drop the parenthesised non-refstrip crates, then split the names.
            let refstrip_only = cells[3].split('(').next().unwrap();
            refstrip_only
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "—")
                .map(String::from)
                .collect()
        };
        assert!(
            crates.insert(name.clone(), deps).is_none(),
            "{name} listed twice"
        );
    }
    crates
}

#[test]
fn the_crate_table_matches_cargo_metadata() {
    let cargo = from_cargo();
    let mut docs = from_docs();
    assert_eq!(
        cargo.keys().collect::<Vec<_>>(),
        docs.keys().collect::<Vec<_>>(),
        "every crate under crates/ has one row in docs/architecture.md"
    );
    // The CLI uses whatever it glues together; its row says so instead of listing them.
    let cli = docs.remove("refstrip").unwrap();
    assert_eq!(cli, BTreeSet::from(["*".to_string()]));
    for (name, deps) in docs {
        assert_eq!(
            cargo[&name], deps,
            "{name}: docs/architecture.md vs Cargo.toml"
        );
    }
}
