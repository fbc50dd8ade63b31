//! Nix's store formats against real Nix: narinfo files written by `nix copy` must re-serialise byte
//! for byte, their signatures (made by `nix store sign`) must verify with our code and be exactly the
//! signatures we compute, tampering must be caught by the library and by `refstrip narinfo verify`,
//! Nix must accept signatures we make, and our nix-base32 must agree with `nix hash`/`nix-hash`.
//!
//! Every test builds its own tiny closure with a fresh nonce, so store paths (and the signatures
//! accumulated on them in the local store) never leak between tests or runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use refstrip_nix::{
    base32, signature, CacheInfo, Hash, NarInfo, PublicKey, SecretKey, StoreDir, StorePath,
};
use refstrip_tests::{refstrip_bin, require_nix, run};

/// a ← b ← c (c also refers to itself), and d: a directory with an executable and a symlink into c.
const CLOSURE_NIX: &str = r#"
{ nonce }:
let
  mk = name: script: derivation {
    inherit name nonce;
    builder = "/bin/sh";
    args = [ "-c" script ];
    system = builtins.currentSystem;
  };
  a = mk "refstrip-fmt-a" "echo hello > $out";
  b = mk "refstrip-fmt-b" "echo ${a} > $out";
  c = mk "refstrip-fmt-c" "echo ${a} ${b} > $out; echo $out >> $out";
  d = mk "refstrip-fmt-d.1_x+y=z" ''
    /bin/mkdir -p $out/bin
    printf '#!/bin/sh\nexec ${c}\n' > $out/bin/run
    /bin/chmod +x $out/bin/run
    /bin/ln -s ${c} $out/c-link
  '';
in d
"#;

struct Fixture {
    dir: tempfile::TempDir,
    /// Every path of the closure, as full paths.
    paths: Vec<String>,
    secret_file: PathBuf,
    public_file: PathBuf,
    key_name: String,
}

impl Fixture {
    /// Build the closure and sign it with a fresh key pair.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let nonce = format!(
            "{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            dir.path().display()
        );
        let expr = dir.path().join("closure.nix");
        fs::write(&expr, CLOSURE_NIX).unwrap();
        let out = run(Command::new("nix-build").arg(&expr).args([
            "--no-out-link",
            "--argstr",
            "nonce",
            &nonce,
        ]));
        let top = String::from_utf8(out).unwrap().trim().to_owned();
        let closure = run(Command::new("nix-store").args(["--query", "--requisites", &top]));
        let paths: Vec<String> = String::from_utf8(closure)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(paths.len(), 4, "{paths:?}");

        let key_name = format!("refstrip-test-{}", std::process::id());
        let secret_file = dir.path().join("secret");
        let public_file = dir.path().join("public");
        run(Command::new("nix-store")
            .args(["--generate-binary-cache-key", &key_name])
            .arg(&secret_file)
            .arg(&public_file));
        run(Command::new("nix")
            .args(["store", "sign", "--key-file"])
            .arg(&secret_file)
            .arg("-r")
            .arg(&top));
        Fixture {
            dir,
            paths,
            secret_file,
            public_file,
            key_name,
        }
    }

    /// `nix copy` the closure into a new file:// cache with the given compression.
    fn cache(&self, compression: &str) -> PathBuf {
        let cache = self.dir.path().join(format!("cache-{compression}"));
        let url = format!("file://{}?compression={compression}", cache.display());
        run(Command::new("nix")
            .args(["copy", "--to", &url])
            .args(&self.paths));
        cache
    }

    fn public_key_text(&self) -> String {
        fs::read_to_string(&self.public_file).unwrap()
    }

    fn secret(&self) -> SecretKey {
        fs::read_to_string(&self.secret_file)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn public(&self) -> PublicKey {
        self.public_key_text().parse().unwrap()
    }
}

fn narinfo_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    files.sort();
    files
}

fn parse(path: &Path) -> NarInfo {
    NarInfo::parse_bytes(&StoreDir::default(), &fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn refstrip_verify(files: &[PathBuf], keys: Option<&str>, conf_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(refstrip_bin());
    cmd.args(["narinfo", "verify"]).args(files);
    if let Some(keys) = keys {
        cmd.args(["--trusted-public-keys", keys]);
    }
    if let Some(conf_dir) = conf_dir {
        cmd.env("NIX_CONF_DIR", conf_dir);
    }
    cmd.output().unwrap()
}

#[test]
fn nix_written_narinfo_round_trips_verifies_and_matches_our_signature() {
    require_nix!();
    let fx = Fixture::new();
    let (secret, public) = (fx.secret(), fx.public());
    assert_eq!(secret.public_key(), public);
    // Key files re-serialise to exactly what Nix wrote.
    assert_eq!(
        secret.to_string(),
        fs::read_to_string(&fx.secret_file).unwrap()
    );
    assert_eq!(public.to_string(), fx.public_key_text());

    for compression in ["zstd", "xz"] {
        let cache = fx.cache(compression);
        let info_text = fs::read_to_string(cache.join("nix-cache-info")).unwrap();
        let cache_info = CacheInfo::parse(&info_text).unwrap();
        assert_eq!(cache_info.store_dir, Some(StoreDir::default()));
        assert_eq!(cache_info.to_string(), info_text);

        let files = narinfo_files(&cache);
        assert_eq!(files.len(), fx.paths.len());
        for file in &files {
            let bytes = fs::read(file).unwrap();
            let info = parse(file);
            assert!(
                info.to_string().as_bytes() == bytes,
                "{} does not re-serialise byte for byte",
                file.display()
            );
            assert_eq!(info.compression(), compression);
            assert_eq!(
                file.file_stem().unwrap().to_str().unwrap(),
                info.store_path.hash_part()
            );
            assert!(fx.paths.contains(&info.path()));

            // NarHash/NarSize are what Nix's store database has; FileHash/FileSize describe the file.
            let db_hash = run(Command::new("nix-store").args(["--query", "--hash", &info.path()]));
            assert_eq!(
                String::from_utf8(db_hash)
                    .unwrap()
                    .trim()
                    .parse::<Hash>()
                    .unwrap(),
                info.nar_hash
            );
            let nar = fs::read(cache.join(&info.url)).unwrap();
            assert_eq!(Some(Hash::digest(&nar)), info.file_hash);
            assert_eq!(Some(nar.len() as u64), info.file_size);

            // The signature nix store sign made verifies, and ed25519 being deterministic, ours equals it.
            assert_eq!(
                signature::verify(&info, std::slice::from_ref(&public))
                    .unwrap()
                    .name(),
                fx.key_name
            );
            let nix_sig = info
                .sigs
                .iter()
                .find(|s| s.starts_with(&format!("{}:", fx.key_name)))
                .unwrap();
            assert_eq!(&signature::sign(&info, &secret), nix_sig);
        }

        let out = refstrip_verify(&files, Some(&fx.public_key_text()), None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "refstrip narinfo verify failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout
                .matches(&format!("OK, signed by {}", fx.key_name))
                .count(),
            files.len(),
            "{stdout}"
        );
    }
}

/// Replace the character at `index` in the value of the first `field` line with a different
/// character from `alphabet`, keeping the file parseable so that only the signature check can
/// catch it.
fn tamper(text: &str, field: &str, index: usize, alphabet: &str) -> String {
    let start = text.find(&format!("\n{field}: ")).unwrap() + field.len() + 3;
    let pos = start + index;
    let old = text.as_bytes()[pos] as char;
    let new = alphabet.chars().find(|&c| c != old).unwrap();
    format!("{}{new}{}", &text[..pos], &text[pos + 1..])
}

#[test]
fn tampering_is_caught_by_library_and_cli() {
    require_nix!();
    let fx = Fixture::new();
    let cache = fx.cache("zstd");
    let public = vec![fx.public()];
    let keys = fx.public_key_text();
    let files = narinfo_files(&cache);
    // The top path (d) has a reference, a signature and a NAR hash to tamper with.
    let top = files
        .iter()
        .find(|f| parse(f).store_path.name().starts_with("refstrip-fmt-d"))
        .unwrap();
    let text = fs::read_to_string(top).unwrap();
    assert!(signature::verify(&parse(top), &public).is_ok());

    let sig_offset = fx.key_name.len() + 1 + 10;
    let cases = [
        ("Sig", tamper(&text, "Sig", sig_offset, "ABCD")),
        (
            "NarHash",
            tamper(&text, "NarHash", "sha256:".len() + 20, "0123"),
        ),
        ("References", tamper(&text, "References", 5, "0123")),
        ("NarSize", tamper(&text, "NarSize", 0, "123")),
    ];
    let bad_dir = fx.dir.path().join("tampered");
    fs::create_dir(&bad_dir).unwrap();
    for (field, bad) in &cases {
        let info =
            NarInfo::parse(&StoreDir::default(), bad).unwrap_or_else(|e| panic!("{field}: {e}"));
        assert!(
            matches!(
                signature::verify(&info, &public),
                Err(refstrip_nix::VerifyError::Invalid { .. })
            ),
            "tampered {field} still verifies"
        );
        let file = bad_dir.join(format!("{field}.narinfo"));
        fs::write(&file, bad).unwrap();
        let out = refstrip_verify(std::slice::from_ref(&file), Some(&keys), None);
        assert!(
            !out.status.success(),
            "refstrip narinfo verify accepted tampered {field}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    }

    // One bad file among good ones fails the whole run, and each file gets its own verdict.
    let mut mixed = files.clone();
    mixed.push(bad_dir.join("Sig.narinfo"));
    let out = refstrip_verify(&mixed, Some(&keys), None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(": OK, signed by"))
            .count(),
        files.len(),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 5 narinfo files failed"));

    // An untrusted key (right name, other key) fails; so does a malformed narinfo.
    let other = fx.dir.path().join("other");
    run(Command::new("nix-store")
        .args(["--generate-binary-cache-key", &fx.key_name])
        .arg(fx.dir.path().join("other-secret"))
        .arg(&other));
    let out = refstrip_verify(&files, Some(&fs::read_to_string(&other).unwrap()), None);
    assert!(!out.status.success());
    // A validly signed narinfo served under another path's name is refused.
    let other_path = files.iter().find(|f| *f != top).unwrap();
    let misnamed = bad_dir.join(other_path.file_name().unwrap());
    fs::copy(top, &misnamed).unwrap();
    let out = refstrip_verify(&[misnamed], Some(&keys), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("file is named for hash part"));
    let garbage = bad_dir.join("garbage.narinfo");
    fs::write(&garbage, text.replace("NarSize: ", "NarSize: x")).unwrap();
    let out = refstrip_verify(&[garbage], Some(&keys), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NarSize is not a decimal number"));
}

#[test]
fn cli_reads_trusted_keys_from_nix_conf() {
    require_nix!();
    let fx = Fixture::new();
    let files = narinfo_files(&fx.cache("zstd"));
    let conf_dir = fx.dir.path().join("conf");
    fs::create_dir(&conf_dir).unwrap();
    // Nix's built-in default (cache.nixos.org-1) alone does not trust our key.
    assert!(!refstrip_verify(&files, None, Some(&conf_dir))
        .status
        .success());
    fs::write(
        conf_dir.join("nix.conf"),
        format!(
            "# test\nsandbox = false\nextra-trusted-public-keys = {}\n",
            fx.public_key_text()
        ),
    )
    .unwrap();
    let out = refstrip_verify(&files, None, Some(&conf_dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nix_accepts_signatures_we_make() {
    require_nix!();
    let fx = Fixture::new();
    let cache = fx.cache("xz");
    // Re-sign every narinfo with a key of our own, dropping Nix's signatures, and ask Nix to check.
    let ours: SecretKey = {
        let sec = fx.dir.path().join("ours-secret");
        run(Command::new("nix-store")
            .args(["--generate-binary-cache-key", "refstrip-ours"])
            .arg(&sec)
            .arg(fx.dir.path().join("ours-public")));
        fs::read_to_string(sec).unwrap().parse().unwrap()
    };
    for file in narinfo_files(&cache) {
        let mut info = parse(&file);
        info.sigs.clear();
        info.add_sig(signature::sign(&info, &ours));
        fs::write(&file, info.to_string()).unwrap();
    }
    let url = format!("file://{}", cache.display());
    let verify = |key: &str| {
        Command::new("nix")
            .args([
                "store",
                "verify",
                "--store",
                &url,
                "--trusted-public-keys",
                key,
                "--sigs-needed",
                "1",
            ])
            .args(&fx.paths)
            .output()
            .unwrap()
    };
    let out = verify(&ours.public_key().to_string());
    assert!(
        out.status.success(),
        "nix store verify rejected our signatures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = verify(&fx.public_key_text());
    assert!(
        !out.status.success(),
        "nix store verify accepted signatures by an untrusted key"
    );
}

#[test]
fn base32_and_store_paths_agree_with_nix() {
    require_nix!();
    let fx = Fixture::new();
    for path in &fx.paths {
        let store_path: StorePath = StoreDir::default().parse_path(path).unwrap();
        assert_eq!(&StoreDir::default().display_path(&store_path), path);
        assert_eq!(
            StorePath::from_parts(&store_path.digest(), store_path.name()).unwrap(),
            store_path
        );
        assert!(refstrip_nix::is_hash_part(
            store_path.hash_part().as_bytes()
        ));

        let nar = run(Command::new("nix-store").arg("--dump").arg(path));
        let ours = Hash::digest(&nar);
        let nix_hash = String::from_utf8(run(
            Command::new("nix").args(["hash", "path", "--base32", path])
        ))
        .unwrap();
        assert_eq!(nix_hash.trim(), ours.to_nix32());
        let legacy = String::from_utf8(run(
            Command::new("nix-hash").args(["--type", "sha256", "--base32", path])
        ))
        .unwrap();
        assert_eq!(legacy.trim(), ours.to_nix32());
        let sri = String::from_utf8(run(Command::new("nix").args(["hash", "path", path]))).unwrap();
        assert_eq!(sri.trim().parse::<Hash>().unwrap(), ours);
    }

    // Digests of every length Nix supports, with varied bit patterns: hex → nix32 by Nix, by us,
    // and back.
    for (i, len) in [16usize, 20, 32, 64].iter().enumerate() {
        let algo = ["md5", "sha1", "sha256", "sha512"][i];
        for seed in 0..4u8 {
            let digest: Vec<u8> = (0..*len)
                .map(|k| {
                    (k as u8)
                        .wrapping_mul(37)
                        .wrapping_add(seed.wrapping_mul(91))
                        ^ 0xa5
                })
                .collect();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let out = run(Command::new("nix-hash").args(["--type", algo, "--to-base32", &hex]));
            let nix = String::from_utf8(out).unwrap().trim().to_owned();
            assert_eq!(base32::encode(&digest), nix, "{algo} {hex}");
            assert_eq!(base32::decode(&nix).unwrap(), digest);
        }
    }
}

/// The committed corpus caches were written by `nix copy`: every narinfo must re-serialise byte
/// for byte and verify with the corpus key (no Nix needed).
#[test]
fn committed_corpus_narinfos_round_trip_and_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let public: PublicKey = fs::read_to_string(root.join("keys/refstrip-corpus-1.pub"))
        .unwrap()
        .parse()
        .unwrap();
    let mut checked = 0;
    for generation in fs::read_dir(root.join("small")).unwrap() {
        let cache = generation.unwrap().path();
        if !cache.join("nix-cache-info").exists() {
            continue;
        }
        for file in narinfo_files(&cache) {
            let info = parse(&file);
            assert!(
                info.to_string().as_bytes() == fs::read(&file).unwrap(),
                "{}",
                file.display()
            );
            assert!(
                signature::verify(&info, std::slice::from_ref(&public)).is_ok(),
                "{}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no corpus narinfo found under {}",
        root.display()
    );
}
