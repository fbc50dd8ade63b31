//! Deltas between versions of a file (spec §5): one zstd frame compressed with the base file's
//! normalized bytes as its prefix (`zstd --patch-from=BASE`), so a client holding the base rebuilds
//! the target from a frame a fraction of the target's compressed size. A delta is an object of
//! kind [`Kind::Delta`](crate::Kind::Delta), named by the BLAKE3 of its bytes; the output proves
//! itself by hashing to the target's name, so neither the base nor the delta needs trusting.
//! Also here, shared by ingest (which stores deltas) and savings (which counts them): which files
//! pair up ([`pair`]) and which deltas are worth storing ([`worth_making`]).

use std::collections::{HashMap, HashSet};
use std::io;

use refstrip_strip::{ContentDigest, ContentSink, Manifest, Node};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Largest base (and target) a delta is made for. A patch-from window holds base and target at
/// once, in memory on both sides; larger files (libxul is 184 MB) are stored whole or as chunks.
pub const MAX_DELTA_INPUT: u64 = 64 << 20;

/// zstd level of deltas (measured in docs/store.md: 19 makes lua's deltas 11 % smaller than 12
/// and makes about 2 MB/s of target on them, 12 about 13 MB/s; a delta is made once and
/// fetched by every client that updates).
pub const DELTA_LEVEL: i32 = 19;
/// Targets above this get [`DELTA_LEVEL_LARGE`]: at level 19 a 64 MiB target would hold a worker
/// for half a minute.
pub const DELTA_LARGE: u64 = 8 << 20;
pub const DELTA_LEVEL_LARGE: i32 = 12;

/// The level a delta to a target of `size` bytes is made at.
pub fn level_for(size: u64) -> i32 {
    match size > DELTA_LARGE {
        true => DELTA_LEVEL_LARGE,
        false => DELTA_LEVEL,
    }
}

fn zstd_err(what: &str) -> impl Fn(usize) -> io::Error + '_ {
    move |code| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: {}", zstd::zstd_safe::get_error_name(code)),
        )
    }
}

/// Normalized bytes of the files of one path kept while stripping it, at most this much: the
/// candidates for deltas. Files beyond it simply get none.
pub const KEEP_BUDGET: u64 = 256 << 20;

/// A sink in front of another that holds back the files of one path that could get a delta
/// (their normalized bytes, by digest, up to [`KEEP_BUDGET`]) and passes everything else on.
/// Ingest writes the files held back once pairing has decided which get a delta (into blocks of
/// their own, so that a client rebuilding them from deltas fetches no block holding them);
/// savings only counts them.
pub struct Keep<S: ContentSink> {
    pub inner: S,
    on: bool,
    current: Option<Vec<u8>>,
    /// Files held back, in the order they came.
    pub kept: Vec<(ContentDigest, Vec<u8>)>,
    budget: u64,
}

impl<S: ContentSink> Keep<S> {
    pub fn new(inner: S, on: bool) -> Self {
        Keep {
            inner,
            on,
            current: None,
            kept: Vec::new(),
            budget: KEEP_BUDGET,
        }
    }
}

impl<S: ContentSink> ContentSink for Keep<S> {
    fn begin(&mut self, size: u64) -> io::Result<()> {
        let keep =
            self.on && (MIN_DELTA_FILE..=MAX_DELTA_INPUT).contains(&size) && size <= self.budget;
        if keep {
            self.budget -= size;
            self.current = Some(Vec::with_capacity(size as usize));
            return Ok(());
        }
        self.inner.begin(size)
    }

    fn write(&mut self, normalized: &[u8]) -> io::Result<()> {
        match &mut self.current {
            Some(c) => {
                c.extend_from_slice(normalized);
                Ok(())
            }
            None => self.inner.write(normalized),
        }
    }

    fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
        match self.current.take() {
            Some(bytes) => {
                self.kept.push((*digest, bytes));
                Ok(())
            }
            None => self.inner.end(digest),
        }
    }
}

/// The largest window a delta may use: all of a base and a target of [`MAX_DELTA_INPUT`] bytes
/// each. Writers stay within it and readers refuse frames that ask for more.
const MAX_WINDOW_LOG: u32 = (2 * MAX_DELTA_INPUT).ilog2();

/// The window log a frame needs to see all of `base` while writing `target`.
fn window_log(base: usize, target: usize) -> u32 {
    let span = (base + target).max(1 << 10) as u64;
    (64 - (span - 1).leading_zeros()).clamp(10, MAX_WINDOW_LOG)
}

/// The delta rebuilding `target` from `base`, at zstd `level`.
pub fn encode(base: &[u8], target: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if base.len() as u64 > MAX_DELTA_INPUT || target.len() as u64 > MAX_DELTA_INPUT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large for a delta",
        ));
    }
    let mut cctx = CCtx::create();
    let err = zstd_err("making a delta");
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(&err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(base.len(), target.len())))
        .map_err(&err)?;
    cctx.ref_prefix(base).map_err(&err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(&err)?;
    Ok(out)
}

/// Rebuild a target of exactly `size` bytes from `base` and `delta`. The output buffer is
/// `size` bytes, allocated only if `size` is within [`MAX_DELTA_INPUT`]; a frame that writes more,
/// or fewer, is an error. The caller checks the output's BLAKE3.
pub fn apply(base: &[u8], delta: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if size > MAX_DELTA_INPUT || base.len() as u64 > MAX_DELTA_INPUT {
        return Err(invalid("delta target or base larger than the delta limit"));
    }
    let mut dctx = DCtx::create();
    let err = zstd_err("applying a delta");
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(&err)?;
    dctx.ref_prefix(base).map_err(&err)?;
    let mut out = Vec::with_capacity(size as usize);
    dctx.decompress(&mut out, delta).map_err(&err)?;
    if out.len() as u64 != size {
        return Err(invalid("delta output has the wrong length"));
    }
    Ok(out)
}

/// Files smaller than this get no delta: a delta frame's own overhead (~20 bytes) and the
/// offer's (~40) eat most of what it could save on them.
pub const MIN_DELTA_FILE: u64 = 4096;

/// A delta is kept only if it is at most this fraction of the target's compressed size (measured
/// in docs/store.md: lua's changed binaries come to 23–29 %; a delta saving less than half costs
/// the store bytes that few clients win back).
pub const MAX_DELTA_RATIO: f64 = 0.5;

/// The delta from `base` to `target` if it is worth storing: at most [`MAX_DELTA_RATIO`] of the
/// target compressed whole at `level` (the pack's level).
pub fn worth_making(base: &[u8], target: &[u8], level: i32) -> io::Result<Option<Vec<u8>>> {
    let delta = encode(base, target, level_for(target.len() as u64))?;
    let whole = zstd::bulk::compress(target, level)?.len();
    Ok((delta.len() as f64 <= whole as f64 * MAX_DELTA_RATIO).then_some(delta))
}

/// A file of a manifest: relative path (normalized names joined by `/`), digest, size.
pub type FileEntry = (Vec<u8>, ContentDigest, u64);

/// Every regular file of a manifest: relative path (normalized names), digest, size.
pub fn files(manifest: &Manifest) -> Vec<FileEntry> {
    fn walk(node: &Node, path: &mut Vec<u8>, out: &mut Vec<FileEntry>) {
        match node {
            Node::File { digest, size, .. } => out.push((path.clone(), *digest, *size)),
            Node::Symlink { .. } => {}
            Node::Directory(entries) => {
                for e in entries {
                    let len = path.len();
                    path.push(b'/');
                    path.extend_from_slice(&e.name);
                    walk(&e.node, path, out);
                    path.truncate(len);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&manifest.root, &mut Vec::new(), &mut out);
    out
}

/// The path with every run of ASCII digits replaced by one `#`.
pub fn fuzzy(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_digit() {
            if out.last() != Some(&b'#') {
                out.push(b'#');
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// For each target file, the base file it pairs with: the same path, else the same fuzzy path
/// with the closest size. Targets whose contents the base has already get none.
pub fn pair(targets: &[FileEntry], bases: &[FileEntry]) -> Vec<(usize, usize)> {
    let exact: HashMap<&[u8], usize> = bases
        .iter()
        .enumerate()
        .map(|(i, b)| (b.0.as_slice(), i))
        .collect();
    let mut by_fuzzy: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (i, b) in bases.iter().enumerate() {
        by_fuzzy.entry(fuzzy(&b.0)).or_default().push(i);
    }
    let base_digests: HashSet<&ContentDigest> = bases.iter().map(|b| &b.1).collect();
    let mut out = Vec::new();
    for (t, (path, digest, size)) in targets.iter().enumerate() {
        if base_digests.contains(digest) {
            continue;
        }
        let base = exact.get(path.as_slice()).copied().or_else(|| {
            by_fuzzy
                .get(&fuzzy(path))?
                .iter()
                .copied()
                .min_by_key(|&b| (bases[b].2.abs_diff(*size), b))
        });
        if let Some(b) = base {
            out.push((t, b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Counts what reaches the sink behind a [`Keep`].
    #[derive(Default)]
    struct Passed(Vec<ContentDigest>);

    impl ContentSink for Passed {
        fn begin(&mut self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write(&mut self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
            self.0.push(*digest);
            Ok(())
        }
    }

    #[test]
    fn keep_holds_back_candidates_up_to_its_budget_and_passes_the_rest_on() {
        let mut keep = Keep::new(Passed::default(), true);
        let piece = vec![1u8; 1 << 20];
        // Five files of 60 MiB: four fit in the 256 MiB budget; then a tiny one and an empty one.
        let sizes = [60 << 20, 60 << 20, 60 << 20, 60 << 20, 60 << 20, 100, 0];
        for (n, &size) in sizes.iter().enumerate() {
            keep.begin(size).unwrap();
            for _ in 0..size >> 20 {
                keep.write(&piece).unwrap();
            }
            keep.write(&piece[..(size % (1 << 20)) as usize]).unwrap();
            keep.end(&ContentDigest::of(&[n as u8])).unwrap();
        }
        assert_eq!(keep.kept.len(), 4);
        assert!(keep.kept.iter().all(|(_, b)| b.len() == 60 << 20));
        let passed: Vec<_> = (4..7).map(|n| ContentDigest::of(&[n as u8])).collect();
        assert_eq!(keep.inner.0, passed);
        // Off, it keeps nothing.
        let mut off = Keep::new(Passed::default(), false);
        off.begin(10_000).unwrap();
        off.write(&piece[..10_000]).unwrap();
        off.end(&ContentDigest::of(b"x")).unwrap();
        assert!(off.kept.is_empty());
        assert_eq!(off.inner.0.len(), 1);
    }

    fn noise(seed: u8, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut v);
        v
    }

    #[test]
    fn a_small_edit_costs_a_small_delta_and_applies_exactly() {
        let base = noise(1, 300_000);
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"appended");
        let delta = encode(&base, &target, DELTA_LEVEL).unwrap();
        assert!(delta.len() < 200, "{} bytes", delta.len());
        assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
        // The frame is plain zstd with the base as prefix: another base makes other bytes or fails.
        let other = noise(2, 300_000);
        assert!(
            apply(&other, &delta, target.len() as u64).is_ok_and(|o| o != target)
                || apply(&other, &delta, target.len() as u64).is_err()
        );
    }

    #[test]
    fn output_is_capped_at_the_declared_size() {
        let base = noise(3, 10_000);
        let target = noise(4, 10_000);
        let delta = encode(&base, &target, 3).unwrap();
        assert!(apply(&base, &delta, 9_999).is_err());
        assert!(apply(&base, &delta, 10_001).is_err());
        assert!(apply(&base, &delta, MAX_DELTA_INPUT + 1).is_err());
        assert!(apply(&base, b"not a frame", 10_000).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn deltas_round_trip(base in proptest::collection::vec(any::<u8>(), 0..4096),
                             target in proptest::collection::vec(any::<u8>(), 0..4096),
                             cut in 0usize..4096) {
            // Targets that share a piece of the base, and ones that share nothing.
            let mut t = base[..cut.min(base.len())].to_vec();
            t.extend_from_slice(&target);
            for target in [t, target] {
                let delta = encode(&base, &target, 3).unwrap();
                prop_assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
            }
        }

        #[test]
        fn hostile_deltas_never_panic(base in proptest::collection::vec(any::<u8>(), 0..512),
                                      delta in proptest::collection::vec(any::<u8>(), 0..512),
                                      size in 0u64..1 << 20) {
            if let Ok(out) = apply(&base, &delta, size) {
                prop_assert_eq!(out.len() as u64, size);
            }
        }
    }

    fn f(path: &str, n: u8, size: u64) -> (Vec<u8>, ContentDigest, u64) {
        (path.as_bytes().to_vec(), ContentDigest::of(&[n]), size)
    }

    #[test]
    fn versioned_names_pair_and_ties_go_to_the_closest_size() {
        assert_eq!(fuzzy(b"/lib/liblua.so.5.4.7"), b"/lib/liblua.so.#.#.#");
        assert_eq!(fuzzy(b"/lib/python3.11/x"), fuzzy(b"/lib/python3.12/x"));
        let bases = [
            f("/lib/liblua.so.5.4.4", 1, 305_512),
            f("/bin/luac", 2, 216_856),
            f("/lib/libx.so.1", 3, 10),
            f("/lib/libx.so.2", 4, 1000),
            f("/share/same", 9, 50),
        ];
        let targets = [
            f("/lib/liblua.so.5.4.7", 5, 305_584),
            f("/bin/luac", 6, 216_928),
            f("/lib/libx.so.3", 7, 900),
            f("/bin/new", 8, 100),
            f("/share/moved", 9, 50), // contents the base has already: no delta
        ];
        assert_eq!(pair(&targets, &bases), vec![(0, 0), (1, 1), (2, 3)]);
    }
}
