//! Signing with the operator's own key (`--sign-key`, issue #16): paths from a build machine's
//! local Nix store carry no signature, so a signature-checking Nix refuses them; signed by refstrip
//! at ingest or by serve on the fly, stock Nix with only the operator's public key trusted accepts
//! them, and refuses them with any other key trusted.

use std::path::Path;
use std::process::Command;

use refstrip_tests::operator::{
    closure_in, corpus_root, http_get, key_pair, nix_copy_from, unsigned_local_store,
    verify_contents, Serving,
};
use refstrip_tests::{corpus_dir, refstrip_bin, require_nix, run};

fn ingest(source: &Path, store: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(source)
        .args(["--all", "--json", "--to"])
        .arg(store)
        .args(extra));
    serde_json::from_slice(&out).unwrap()
}

fn corpus_key() -> String {
    std::fs::read_to_string(corpus_dir().join("keys/refstrip-corpus-1.pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// `nix copy` of the generation's root with only `key` trusted must succeed and give the whole,
/// intact closure.
fn copy_accepted(url: &str, dest: &Path, key: &str) {
    let root = corpus_root("gen1");
    let out = nix_copy_from(url, dest, key, &root);
    assert!(
        out.status.success(),
        "nix copy with only {key} trusted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(dest);
    assert_eq!(closure_in(dest, &root).len(), 14);
}

/// `nix copy` with only `key` trusted must fail for want of a valid signature, copying nothing.
fn copy_refused(url: &str, dest: &Path, key: &str) {
    let out = nix_copy_from(url, dest, key, &corpus_root("gen1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nix copy accepted paths with only {key} trusted"
    );
    assert!(stderr.contains("lacks a valid signature"), "{stderr}");
}

/// The `Sig` lines of a narinfo served at `port`.
fn served_sigs(port: u16, hash_part: &str) -> Vec<String> {
    let (status, body) = http_get(port, &format!("/{hash_part}.narinfo"));
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("Sig: "))
        .map(str::to_string)
        .collect()
}

fn hash_part(path: &str) -> &str {
    &path.rsplit('/').next().unwrap()[..32]
}

#[test]
fn paths_ingested_with_sign_key_are_accepted_by_stock_nix_with_only_that_key() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "operator-1");
    let (_, other) = key_pair(tmp.path(), "other-1");
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");

    // Control: without a key the paths are unsigned and Nix refuses them whatever it trusts.
    let unsigned = tmp.path().join("unsigned");
    ingest(&local, &unsigned, &[]);
    let server = Serving::start(&unsigned, &[]);
    copy_refused(&server.url(), &tmp.path().join("dest-unsigned"), &public);
    server.stop();

    let store = tmp.path().join("store");
    let report = ingest(&local, &store, &["--sign-key", secret.to_str().unwrap()]);
    assert_eq!(report["ingested"], 14);
    let server = Serving::start(&store, &[]);
    let sigs = served_sigs(server.port, hash_part(&corpus_root("gen1")));
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert!(sigs[0].starts_with("operator-1:"), "{sigs:?}");
    copy_accepted(&server.url(), &tmp.path().join("dest"), &public);
    copy_refused(&server.url(), &tmp.path().join("dest-other"), &other);
    server.stop();

    // refstrip's own client checks the same signature.
    let substitute = |key: &str, dest: &str| {
        Command::new(refstrip_bin())
            .args(["substitute", "--no-cache", "--from"])
            .arg(&store)
            .arg("--store")
            .arg(tmp.path().join(dest))
            .args(["--trusted-public-keys", key])
            .arg(corpus_root("gen1"))
            .output()
            .unwrap()
    };
    let ok = substitute(&public, "sub");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    verify_contents(&tmp.path().join("sub"));
    let refused = substitute(&other, "sub-other");
    assert!(
        !refused.status.success(),
        "substitute accepted paths with another key trusted"
    );
    assert!(
        !tmp.path().join("sub-other/nix/store").exists()
            || std::fs::read_dir(tmp.path().join("sub-other/nix/store"))
                .unwrap()
                .next()
                .is_none(),
        "substitute wrote paths it refused"
    );
}

#[test]
fn serve_signs_narinfos_of_a_store_ingested_without_a_key() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "operator-1");
    let (_, other) = key_pair(tmp.path(), "other-1");
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    let store = tmp.path().join("store");
    ingest(&local, &store, &[]);

    let server = Serving::start(&store, &["--sign-key", secret.to_str().unwrap()]);
    let sigs = served_sigs(server.port, hash_part(&corpus_root("gen1")));
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    copy_accepted(&server.url(), &tmp.path().join("dest"), &public);
    copy_refused(&server.url(), &tmp.path().join("dest-other"), &other);
    server.stop();

    // A public key file given by mistake: refused at start with a message that says so.
    let out = Command::new(refstrip_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--from"])
        .arg(&store)
        .arg("--sign-key")
        .arg(tmp.path().join("operator-1.pub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds a public key"), "{stderr}");
}

#[test]
fn upstream_signatures_stay_and_records_without_the_key_are_re_signed() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = key_pair(tmp.path(), "operator-1");
    let sign = ["--sign-key", secret.to_str().unwrap()];

    // From the signed corpus cache: the corpus key's signature stays, the operator's is added;
    // either key alone is enough for Nix.
    let store = tmp.path().join("store");
    ingest(&corpus_dir().join("small/gen1"), &store, &sign);
    let server = Serving::start(&store, &[]);
    let mut sigs = served_sigs(server.port, hash_part(&corpus_root("gen1")));
    sigs.sort();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    assert!(sigs[0].starts_with("operator-1:") && sigs[1].starts_with("refstrip-corpus-1:"));
    copy_accepted(
        &server.url(),
        &tmp.path().join("dest-corpus-key"),
        &corpus_key(),
    );
    copy_accepted(
        &server.url(),
        &tmp.path().join("dest-operator-key"),
        &public,
    );
    server.stop();

    // Paths stored unsigned, then ingested again with the key: their records gain the signature
    // without new packs, once.
    let local = tmp.path().join("local");
    unsigned_local_store(&local, "gen1");
    let store = tmp.path().join("resigned");
    ingest(&local, &store, &[]);
    let packs_before = std::fs::read_dir(store.join("packs")).unwrap().count();
    let again = ingest(&local, &store, &sign);
    assert_eq!(
        (again["ingested"].as_u64(), again["resigned"].as_u64()),
        (Some(0), Some(14))
    );
    assert_eq!(
        std::fs::read_dir(store.join("packs")).unwrap().count(),
        packs_before
    );
    let third = ingest(&local, &store, &sign);
    assert_eq!(third["resigned"], 0);
    let server = Serving::start(&store, &[]);
    copy_accepted(&server.url(), &tmp.path().join("dest-resigned"), &public);
    server.stop();
}
