//! Content addresses as real Nix 2.8 computes them: paths added with `nix-store --add-fixed`
//! (flat and recursive, every hash algorithm) and `builtins.toFile` (text), their `ca` read back with
//! `nix path-info --json`, checked with `ContentAddress::check_nar` against `nix-store --dump`.
//! Skipped (with a note) where Nix is not installed.

use std::process::Command;

use refstrip_nix::{CaError, ContentAddress};

fn nix(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn ca_of(path: &str) -> String {
    let json = nix(&[
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        path,
    ]);
    let at = json.find("\"ca\":\"").expect("path has a ca") + 6;
    json[at..at + json[at..].find('"').unwrap()].to_owned()
}

#[test]
fn check_nar_agrees_with_nix() {
    if Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("nix-store not installed: skipping the CA oracle");
        return;
    }
    let dir = std::env::temp_dir().join(format!("refstrip-ca-oracle-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tree/sub")).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, format!("contents {}\n", std::process::id())).unwrap();
    std::fs::write(dir.join("tree/sub/a"), "a\n").unwrap();
    std::os::unix::fs::symlink("sub/a", dir.join("tree/l")).unwrap();
    let (file, tree) = (file.to_str().unwrap(), dir.join("tree"));
    let tree = tree.to_str().unwrap();

    let mut paths = Vec::new();
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        paths.push(nix(&["nix-store", "--add-fixed", algo, file]));
        paths.push(nix(&[
            "nix-store",
            "--add-fixed",
            "--recursive",
            algo,
            file,
        ]));
        paths.push(nix(&[
            "nix-store",
            "--add-fixed",
            "--recursive",
            algo,
            tree,
        ]));
    }
    // A text path, as .drv files are (builtins.toFile: same `text:sha256:` CA, no outputs to
    // confuse `nix path-info`).
    let text = format!(
        "builtins.toFile \"refstrip-ca\" \"text {}\\n\"",
        std::process::id()
    );
    let quoted = nix(&[
        "nix-instantiate",
        "--eval",
        "--read-write-mode",
        "--expr",
        &text,
    ]);
    paths.push(quoted.trim_matches('"').to_owned());

    let mut methods = std::collections::HashSet::new();
    for path in &paths {
        let ca_text = ca_of(path);
        let ca = ContentAddress::parse(&ca_text).unwrap();
        methods.insert((ca.method, ca.algo));
        let nar = Command::new("nix-store")
            .args(["--dump", path])
            .output()
            .unwrap()
            .stdout;
        let hash_part = &path["/nix/store/".len()..][..32];
        ca.check_nar(hash_part, &nar[..])
            .unwrap_or_else(|e| panic!("{path} {ca_text}: {e}"));
        // One bit off is a mismatch.
        let mut wrong = ca.clone();
        wrong.digest[0] ^= 1;
        assert!(matches!(
            wrong.check_nar(hash_part, &nar[..]),
            Err(CaError::Mismatch { .. } | CaError::NotAFile { .. })
        ));
    }
    // Flat, recursive and text, with every algorithm, were all exercised.
    assert_eq!(methods.len(), 9, "{methods:?}");
    std::fs::remove_dir_all(&dir).ok();
}
