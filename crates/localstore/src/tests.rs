//! Re-normalization and the index against a small hand-made Nix store.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use indicatif::ProgressBar;
use refstrip_cas::{FileSink, Kind, ObjectId, ObjectWrite};
use refstrip_read::objects::NearSource;
use refstrip_strip::{strip, ContentDigest, RefTable, Scanner, StripOptions, PLACEHOLDER};
use sha2::Digest;

use super::*;

const ME: &str = "0000000000000000000000000000000z-me";
const DEP: &str = "11111111111111111111111111111111-dep";

/// Deterministic bytes with the hash parts of `refs` planted at `at`.
fn contents(len: usize, refs: &[&str], at: &[usize]) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Mostly base32 letters, so that the scanner has long runs to look through.
            b"0123456789abcdfghijklmnpqrsvwxyz/\n"[(x % 34) as usize]
        })
        .collect();
    for (i, &o) in at.iter().enumerate() {
        out[o..o + 32].copy_from_slice(&refs[i % refs.len()].as_bytes()[..32]);
    }
    out
}

#[test]
fn renormalizing_any_range_gives_the_bytes_of_the_whole_file_scan() {
    let table = RefTable::new(ME.as_bytes(), &[DEP.as_bytes().to_vec()]).unwrap();
    let scanner = Scanner::new(&table);
    // References at the start, the end, back to back, and around the cuts tested below.
    let at = [0, 32, 100, 1000 - 16, 1000 + 20, 4000 - 1, 8192 - 32];
    let original = contents(8192, &[ME, DEP], &at);
    let (whole, patches) = scanner.strip_bytes(&original);
    assert_eq!(patches.len(), at.len());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), &original).unwrap();
    let file = fs::File::open(dir.path().join("f")).unwrap();
    let cuts = [
        0u64, 1, 31, 32, 33, 990, 1000, 1010, 1037, 3999, 4000, 4031, 8160, 8191, 8192,
    ];
    for &s in &cuts {
        for &e in cuts.iter().filter(|&&e| e >= s) {
            let got = renormalize(&file, 8192, s..e, &scanner, None).unwrap();
            assert_eq!(got, &whole[s as usize..e as usize], "range {s}..{e}");
        }
    }
    // The recorded build-id range is zeroed where it overlaps, and only there.
    let got = renormalize(&file, 8192, 2000..3000, &scanner, Some(2990..3010)).unwrap();
    assert_eq!(&got[..990], &whole[2000..2990]);
    assert_eq!(&got[990..], &[0u8; 10]);
    assert!(renormalize(&file, 8192, 8000..8193, &scanner, None).is_err());
    assert_eq!(&whole[..32], &PLACEHOLDER);
}

/// `basename/rel` below `store` as the index's reads open it (`rel` empty: the path itself).
fn open_beneath(
    store: &fs::File,
    basename: &[u8],
    rel: &[u8],
    size: u64,
) -> std::io::Result<fs::File> {
    match rel.iter().rposition(|&b| b == b'/') {
        _ if rel.is_empty() => open_in(store, basename, size),
        None => open_in(&open_dir_beneath(store, basename, b"")?, rel, size),
        Some(i) => open_in(
            &open_dir_beneath(store, basename, &rel[..i])?,
            &rel[i + 1..],
            size,
        ),
    }
}

#[test]
fn opening_follows_no_symlink_and_takes_only_regular_files_of_the_recorded_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(store.join(ME).join("lib")).unwrap();
    fs::write(store.join(ME).join("lib/f"), b"abc").unwrap();
    fs::create_dir_all(dir.path().join("outside/lib")).unwrap();
    fs::write(dir.path().join("outside/lib/f"), b"abc").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), store.join(DEP)).unwrap();
    std::os::unix::fs::symlink("f", store.join(ME).join("lib/g")).unwrap();
    let fd = fs::File::open(&store).unwrap();
    assert!(open_beneath(&fd, ME.as_bytes(), b"lib/f", 3).is_ok());
    assert!(
        open_beneath(&fd, ME.as_bytes(), b"lib/f", 4).is_err(),
        "size differs"
    );
    assert!(
        open_beneath(&fd, DEP.as_bytes(), b"lib/f", 3).is_err(),
        "symlinked directory"
    );
    assert!(
        open_beneath(&fd, ME.as_bytes(), b"lib/g", 3).is_err(),
        "symlinked file"
    );
    assert!(
        open_beneath(&fd, ME.as_bytes(), b"lib", 3).is_err(),
        "a directory"
    );
    assert!(open_beneath(&fd, ME.as_bytes(), b"lib/../lib/f", 3).is_err());
    assert!(open_beneath(
        &fd,
        b"..",
        b"store/0000000000000000000000000000000z-me/lib/f",
        3
    )
    .is_err());
}

/// Objects kept with their bytes: what an ingest of the same path would store.
#[derive(Default)]
struct Kept(HashMap<ObjectId, Vec<u8>>);
impl ObjectWrite for Kept {
    fn has(&mut self, id: &ObjectId) -> std::io::Result<bool> {
        Ok(self.0.contains_key(id))
    }
    fn put(&mut self, id: ObjectId, bytes: &[u8]) -> std::io::Result<()> {
        self.0.insert(id, bytes.to_vec());
        Ok(())
    }
}

/// A Nix store at ROOT with Nix's two tables and the paths given (basename, references).
fn nix_store(root: &Path, paths: &[(&str, &[&str])]) {
    let db_dir = root.join("nix/var/nix/db");
    fs::create_dir_all(&db_dir).unwrap();
    let db = Connection::open(db_dir.join("db.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS ValidPaths (id integer primary key autoincrement not null,
           path text unique not null, hash text not null, registrationTime integer not null,
           deriver text, narSize integer, ultimate integer, sigs text, ca text);
         CREATE TABLE IF NOT EXISTS Refs (referrer integer not null, reference integer not null,
           primary key (referrer, reference));",
    )
    .unwrap();
    for (basename, refs) in paths {
        let mut nar = Vec::new();
        refstrip_nar::dump(&root.join("nix/store").join(basename), &mut nar).unwrap();
        let hash: String = sha2::Sha256::digest(&nar)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        db.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?1, ?2, 0, ?3)",
            params![
                format!("/nix/store/{basename}"),
                format!("sha256:{hash}"),
                nar.len() as i64
            ],
        )
        .unwrap();
        for r in *refs {
            db.execute(
                "INSERT INTO Refs SELECT a.id, b.id FROM ValidPaths a, ValidPaths b
                 WHERE a.path = ?1 AND b.path = ?2",
                params![format!("/nix/store/{basename}"), format!("/nix/store/{r}")],
            )
            .unwrap();
        }
    }
}

/// Every object strip makes of the path, as ingest would store it.
fn objects_of(root: &Path, basename: &str, refs: &[&str]) -> HashMap<ObjectId, Vec<u8>> {
    let mut nar = Vec::new();
    refstrip_nar::dump(&root.join("nix/store").join(basename), &mut nar).unwrap();
    let refs: Vec<Vec<u8>> = refs.iter().map(|r| r.as_bytes().to_vec()).collect();
    let table = RefTable::new(basename.as_bytes(), &refs).unwrap();
    let mut kept = Kept::default();
    strip(
        &nar[..],
        &table,
        &StripOptions::default(),
        &mut FileSink::new(&mut kept),
    )
    .unwrap();
    kept.0
}

fn get(local: &LocalStore, id: &ObjectId) -> Option<Vec<u8>> {
    local.object(id).unwrap()
}

#[test]
fn indexed_paths_serve_every_object_exactly_and_changes_are_misses() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("nix/store");
    fs::create_dir_all(store.join(DEP)).unwrap();
    fs::write(store.join(DEP).join("data"), contents(5000, &[DEP], &[10])).unwrap();
    let me = store.join(ME);
    fs::create_dir_all(me.join("bin")).unwrap();
    // A large file (chunked) with references across its whole length, a small one, an empty one.
    let big_at: Vec<usize> = (0..40).map(|i| i * 25_013 + 7).collect();
    fs::write(me.join("bin/big"), contents(1_000_000, &[ME, DEP], &big_at)).unwrap();
    fs::write(me.join("bin/small"), contents(3000, &[DEP], &[2900])).unwrap();
    fs::write(me.join("empty"), b"").unwrap();
    nix_store(root.path(), &[(DEP, &[]), (ME, &[DEP])]);

    let state = root.path().join("state");
    let local = LocalStore::open(root.path(), "/nix/store", &state).unwrap();
    let report = local.update(&ProgressBar::hidden()).unwrap();
    assert_eq!((report.paths, report.skipped), (2, 0));
    let wanted = objects_of(root.path(), ME, &[DEP]);
    assert!(wanted.len() > 10, "the big file was chunked");
    for (id, bytes) in &wanted {
        assert!(local.may_have(id));
        assert_eq!(get(&local, id).as_ref(), Some(bytes), "{id}");
    }
    // Nothing new: nothing stripped again.
    assert_eq!(local.update(&ProgressBar::hidden()).unwrap().paths, 0);

    // A byte flipped in the small file: its blob is a miss, everything else still served.
    let small = me.join("bin/small");
    let mut bytes = fs::read(&small).unwrap();
    bytes[100] ^= 1;
    fs::write(&small, &bytes).unwrap();
    let small_id = ObjectId::blob(
        &Scanner::new(&RefTable::new(ME.as_bytes(), &[DEP.as_bytes().to_vec()]).unwrap())
            .strip_bytes(&contents(3000, &[DEP], &[2900]))
            .0,
    );
    assert!(wanted.contains_key(&small_id));
    assert_eq!(get(&local, &small_id), None);
    assert_eq!(local.counters.get().2, 1, "counted as stale");

    // A file made unreadable, then the path removed from disk: misses, not errors.
    let big = me.join("bin/big");
    fs::set_permissions(&big, fs::Permissions::from_mode(0o000)).unwrap();
    fs::remove_dir_all(&me).unwrap();
    for id in wanted.keys() {
        assert_eq!(get(&local, id), None);
    }

    // The path made anew on disk (as Nix does after deleting it): the directories kept open for
    // the removed one give nothing, so the new ones are looked up and serve again.
    fs::create_dir_all(me.join("bin")).unwrap();
    fs::write(&big, contents(1_000_000, &[ME, DEP], &big_at)).unwrap();
    fs::write(&small, contents(3000, &[DEP], &[2900])).unwrap();
    fs::write(me.join("empty"), b"").unwrap();
    for (id, bytes) in &wanted {
        assert_eq!(
            get(&local, id).as_ref(),
            Some(bytes),
            "{id} after the path came back"
        );
    }

    // Nix forgets the path (garbage collection): the next update drops it from the index.
    let db = Connection::open(root.path().join("nix/var/nix/db/db.sqlite")).unwrap();
    db.execute("DELETE FROM Refs", []).unwrap();
    db.execute("DELETE FROM ValidPaths WHERE path LIKE '%-me'", [])
        .unwrap();
    let report = local.update(&ProgressBar::hidden()).unwrap();
    assert_eq!((report.paths, report.dropped), (0, 1));
    assert!(!local.may_have(&small_id));
}

#[test]
fn a_path_that_does_not_match_its_nar_hash_is_not_indexed() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("nix/store");
    fs::create_dir_all(store.join(DEP)).unwrap();
    fs::write(store.join(DEP).join("data"), b"one").unwrap();
    nix_store(root.path(), &[(DEP, &[])]);
    fs::write(store.join(DEP).join("data"), b"two").unwrap();
    let local = LocalStore::open(root.path(), "/nix/store", &root.path().join("s")).unwrap();
    let report = local.update(&ProgressBar::hidden()).unwrap();
    assert_eq!((report.paths, report.skipped), (0, 1));
    assert!(!local.may_have(&ObjectId::blob(b"two")));
}

/// The manifest ingest would make of `basename` (references `refs`), and the chunk lists a
/// restore of it reads.
fn manifest_of(
    root: &Path,
    basename: &str,
    refs: &[&str],
) -> (refstrip_strip::Manifest, HashMap<ContentDigest, Vec<u8>>) {
    let mut nar = Vec::new();
    refstrip_nar::dump(&root.join("nix/store").join(basename), &mut nar).unwrap();
    let hash: String = sha2::Sha256::digest(&nar)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let references: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    let text = format!(
        "StorePath: /nix/store/{basename}\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:{hash}\nNarSize: {}\nReferences: {}\n",
        nar.len(),
        references.join(" ")
    );
    let info =
        refstrip_nix::NarInfo::parse(&refstrip_nix::StoreDir::new("/nix/store").unwrap(), &text)
            .unwrap();
    let mut kept = Kept::default();
    let manifest = refstrip_read::pathinfo::strip_nar(
        &nar[..],
        &info,
        &StripOptions::default(),
        &mut FileSink::new(&mut kept),
    )
    .unwrap();
    let lists = kept
        .0
        .into_iter()
        .filter(|(id, _)| id.kind == Kind::ChunkList)
        .map(|(id, bytes)| (id.digest, bytes))
        .collect();
    (manifest, lists)
}

/// Every row of the index, comparable across indexes (path ids aside).
fn rows(local: &LocalStore) -> Vec<Vec<String>> {
    let conn = local.index.lock().unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT p.basename, p.refs, o.kind, hex(o.digest), hex(o.file), o.file_size, o.offset,
                    o.size, o.zero_start, o.zero_end, hex(o.list)
             FROM objects o JOIN paths p ON p.id = o.path ORDER BY 1, 4, 5, 7",
        )
        .unwrap();
    stmt.query_map([], |r| {
        (0..11)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
            })
            .collect()
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[test]
fn paths_written_from_manifests_are_indexed_as_stripping_them_would() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("nix/store");
    fs::create_dir_all(store.join(DEP)).unwrap();
    fs::write(store.join(DEP).join("data"), contents(5000, &[DEP], &[10])).unwrap();
    let me = store.join(ME);
    fs::create_dir_all(me.join("bin")).unwrap();
    fs::create_dir_all(me.join("share/Zz")).unwrap();
    let big_at: Vec<usize> = (0..40).map(|i| i * 25_013 + 7).collect();
    fs::write(me.join("bin/big"), contents(1_000_000, &[ME, DEP], &big_at)).unwrap();
    fs::write(me.join("bin/small"), contents(3000, &[DEP], &[2900])).unwrap();
    fs::write(me.join("share/Zz/a"), contents(300, &[ME], &[0])).unwrap();
    fs::write(me.join("share/b"), contents(700_000, &[], &[])).unwrap();
    // Names with a reference in them: the index's order is by real name, the manifest's is not.
    fs::write(
        me.join(format!("share/{}", &DEP[..32])),
        contents(90, &[], &[]),
    )
    .unwrap();
    fs::write(
        me.join(format!("share/{}.txt", &ME[..32])),
        contents(80, &[], &[]),
    )
    .unwrap();
    fs::write(me.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("bin/small", me.join("link")).unwrap();
    nix_store(root.path(), &[(DEP, &[]), (ME, &[DEP])]);

    // What stripping the files finds.
    let stripped = LocalStore::open(root.path(), "/nix/store", &root.path().join("a")).unwrap();
    assert_eq!(stripped.update(&ProgressBar::hidden()).unwrap().paths, 2);

    // What the manifests say, without reading the files.
    let local = LocalStore::open(root.path(), "/nix/store", &root.path().join("b")).unwrap();
    let (m_dep, l_dep) = manifest_of(root.path(), DEP, &[]);
    let (m_me, l_me) = manifest_of(root.path(), ME, &[DEP]);
    assert_eq!(l_me.len(), 2, "two chunked files");
    let added = local
        .add_restored(&[
            Restored {
                manifest: &m_dep,
                chunk_lists: &l_dep,
            },
            Restored {
                manifest: &m_me,
                chunk_lists: &l_me,
            },
        ])
        .unwrap();
    assert_eq!(added, 2);
    assert_eq!(rows(&local), rows(&stripped));
    assert!(rows(&local).len() > 20);
    for (id, bytes) in objects_of(root.path(), ME, &[DEP]) {
        assert_eq!(get(&local, &id), Some(bytes), "{id}");
    }
    // Nothing left for the update to strip.
    assert_eq!(local.update(&ProgressBar::hidden()).unwrap().paths, 0);

    // A path Nix does not have with that NarHash, or without its chunk lists, is left alone.
    let other = LocalStore::open(root.path(), "/nix/store", &root.path().join("c")).unwrap();
    let mut wrong = m_dep.clone();
    wrong.nar_hash[0] ^= 1;
    let none = HashMap::new();
    let added = other
        .add_restored(&[
            Restored {
                manifest: &wrong,
                chunk_lists: &l_dep,
            },
            Restored {
                manifest: &m_me,
                chunk_lists: &none,
            },
        ])
        .unwrap();
    assert_eq!(added, 0);
    assert_eq!(other.update(&ProgressBar::hidden()).unwrap().paths, 2);
}
