//! Build-id detection on real ELF files made by the host toolchain, checked against `readelf -n`.

use std::process::Command;

use refstrip_strip::build_id_range;

fn readelf_build_id(path: &std::path::Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
}

#[test]
fn finds_the_build_id_that_readelf_reports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.c");
    std::fs::write(&src, "int main(void){return 0;}\n").unwrap();
    let mut checked = 0;
    for (flags, name) in [
        (&["-Wl,--build-id=sha1"][..], "sha1"),
        (&["-Wl,--build-id=md5", "-shared", "-fPIC"], "md5"),
        (&["-Wl,--build-id=sha1", "-static"], "static"),
    ] {
        let out = dir.path().join(name);
        let ok = Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("*** cc {flags:?} unavailable here; skipping that variant ***");
            continue;
        }
        let bytes = std::fs::read(&out).unwrap();
        let expected = readelf_build_id(&out).expect("readelf reports a build-id");
        let range = build_id_range(&bytes[..bytes.len().min(refstrip_strip::HEAD_LEN)])
            .expect("build-id found");
        let found: String = bytes[range].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(found, expected, "{name}");
        checked += 1;

        let none = dir.path().join(format!("{name}-none"));
        assert!(Command::new("cc")
            .args(flags)
            .arg("-Wl,--build-id=none")
            .arg("-o")
            .arg(&none)
            .arg(&src)
            .status()
            .unwrap()
            .success());
        assert_eq!(build_id_range(&std::fs::read(&none).unwrap()), None);
    }
    assert!(checked > 0, "no ELF file could be built to test with");
    assert_eq!(build_id_range(b"\x7fELF garbage"), None);
    assert_eq!(build_id_range(b"not elf"), None);
}
