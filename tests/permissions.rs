//! World-readable output (issue #16): a store is often published as static files by a web server
//! running as another user, so its packs, records and marker are written 0666 minus the umask
//! (0644 under the usual 022) and its directories 0777 minus the umask, not tempfile's private
//! 0600; an operator who wants a private store sets umask 077.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use refstrip_tests::operator::{closure_in, corpus_root, verify_contents};
use refstrip_tests::{corpus_dir, refstrip_bin, require_nix, run};

/// `refstrip ingest` of corpus gen1 into `store` under `umask`.
fn ingest_under_umask(store: &Path, umask: u32) {
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask:03o}; exec \"$0\" \"$@\""))
        .arg(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(store));
}

/// `(path, mode)` of everything under `dir`, `dir` included.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_path_buf(), mode(dir), true)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path.clone(), mode(&path), false));
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn store_files_and_directories_follow_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    for umask in [0o022, 0o027, 0o077, 0o002] {
        let store = tmp.path().join(format!("store-{umask:03o}"));
        ingest_under_umask(&store, umask);
        let all = modes(&store);
        let files = all.iter().filter(|(_, _, dir)| !dir).count();
        let packs = all
            .iter()
            .filter(|(p, _, _)| p.starts_with(store.join("packs")))
            .count();
        let records = all
            .iter()
            .filter(|(p, _, _)| p.starts_with(store.join("paths")))
            .count();
        assert!(
            packs >= 2 && records == 15,
            "{packs} packs, {records} records (with the dir)"
        );
        assert!(files > 16);
        for (path, got, dir) in all {
            // SQLite makes its files (the catalog, a local cache that is not served) 0644 minus
            // the umask, never group-writable.
            let sqlite = path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("catalog.sqlite");
            let want = match (dir, sqlite) {
                (true, _) => 0o777 & !umask,
                (false, true) => 0o644 & !umask,
                (false, false) => 0o666 & !umask,
            };
            assert_eq!(
                got,
                want,
                "{} under umask {umask:03o}: {got:03o}, expected {want:03o}",
                path.display()
            );
        }
    }
}

/// `python3 -m http.server` serving `dir` as the unprivileged user nobody, on loopback.
struct StaticServer(Child, u16);

impl StaticServer {
    fn start(dir: &Path) -> StaticServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
            ])
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("setpriv and /usr/bin/python3");
        let mut server = StaticServer(child, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.0.try_wait().unwrap().is_none(),
                "http.server as nobody exited"
            );
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_store_written_as_root_is_read_over_http_from_a_server_running_as_nobody() {
    require_nix!();
    let tmp = tempfile::tempdir().unwrap();
    // The test's own directory must be traversable by nobody (tempdir makes it 0700).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = corpus_root("gen1");
    let substitute = |store: &Path, dest: &str| {
        let server = StaticServer::start(store);
        let out = Command::new(refstrip_bin())
            .args(["substitute", "--no-cache", "--no-check-sigs", "--from"])
            .arg(format!("http://127.0.0.1:{}", server.1))
            .arg("--store")
            .arg(tmp.path().join(dest))
            .arg(&root)
            .output()
            .unwrap();
        drop(server);
        out
    };

    let public = tmp.path().join("public");
    ingest_under_umask(&public, 0o022);
    let out = substitute(&public, "dest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_contents(&tmp.path().join("dest"));
    assert_eq!(closure_in(&tmp.path().join("dest"), &root).len(), 14);

    // Control: a store made private by the umask is unreadable to that server, as every store
    // was before (files 0600).
    let private = tmp.path().join("private");
    ingest_under_umask(&private, 0o077);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = substitute(&private, "dest-private");
    assert!(!out.status.success(), "a 0600 store was readable by nobody");
}
