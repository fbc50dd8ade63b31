//! Issue 17: `refstrip … | head -1` panicked with exit 101 ("Broken pipe"). A closed standard
//! output is a quiet exit (status 141, nothing on stderr), and other output errors name stdout.

use std::io::{BufReader, Read};
use std::process::{Command, Stdio};

use refstrip_nar::NarWriter;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_refstrip"))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("refstrip-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A NAR of a directory with 20,000 empty files: `nar ls` prints far more than a pipe holds.
fn big_nar(dir: &std::path::Path) -> std::path::PathBuf {
    let mut nar = Vec::new();
    let mut w = NarWriter::new(&mut nar);
    w.directory(None).unwrap();
    for i in 0..20_000 {
        w.file(Some(format!("file-{i:06}").as_bytes()), false, 0)
            .unwrap();
    }
    w.end_directory().unwrap();
    w.finish().unwrap();
    let path = dir.join("big.nar");
    std::fs::write(&path, nar).unwrap();
    path
}

/// Run with the first bytes of stdout read, then stdout closed, like `| head -c 64`.
fn head_1(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 64 bytes, not a line: a NAR has no newlines to stop at.
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The reader is dropped here: the pipe is closed with output still to come.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), stderr)
}

#[test]
fn nar_ls_and_dump_into_a_closed_pipe_exit_quietly() {
    let dir = scratch("pipe");
    let nar = big_nar(&dir);
    let (code, stderr) = head_1(bin().args(["nar", "ls"]).arg(&nar));
    assert_eq!(code, Some(141), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    let tree = dir.join("tree");
    let mut r = refstrip_nar::NarReader::new(BufReader::new(std::fs::File::open(&nar).unwrap()));
    refstrip_nar::unpack(&mut r, &tree).unwrap();
    let (code, stderr) = head_1(bin().args(["nar", "dump"]).arg(&tree));
    assert_eq!(code, Some(141), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// ENOSPC on a redirected stdout names standard output, once.
#[test]
fn a_full_disk_names_standard_output() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let dir = scratch("full");
    let nar = big_nar(&dir);
    let out = bin()
        .args(["nar", "ls"])
        .arg(&nar)
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("standard output"), "{stderr}");
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `println!` paths (here `narinfo show`) into a pipe already closed: no panic, exit 141.
#[test]
fn println_into_a_closed_pipe_is_a_quiet_exit() {
    let narinfo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../corpus/small/mass/kgz6v61n5cdhvjsld466vi8k23j64wxa.narinfo");
    assert!(narinfo.exists());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = bin()
        .args(["narinfo", "show"])
        .arg(&narinfo)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
