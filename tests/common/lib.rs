//! Shared helpers for the end-to-end tests: finding real Nix (the oracle) and the built binary.

use std::path::PathBuf;
use std::process::Command;

/// True when Nix's command-line tools are installed. When they are not, tests that need them print
/// a loud notice and skip, except under CI (`CI` set), where a missing oracle is a failure:
/// `.ci/run` installs Nix, so its absence there means the set-up is broken.
pub fn nix_available() -> bool {
    let found = Command::new("nix-store").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("nix-store not found but CI is set: tools/setup.sh should have installed nix-bin");
        }
        eprintln!("\n*** SKIPPED: real Nix (nix-store) is not installed; run tools/setup.sh to test against it ***\n");
    }
    found
}

/// Skip the current test (with a loud message) when real Nix is absent.
#[macro_export]
macro_rules! require_nix {
    () => {
        if !$crate::nix_available() {
            return;
        }
    };
}

/// The `refstrip` binary built for this test run (target/<profile>/refstrip).
pub fn refstrip_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let bin = profile_dir.join("refstrip");
    assert!(bin.exists(), "{} not built; run the tests through cargo (nextest builds it)", bin.display());
    bin
}

/// Run a command, panicking with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
