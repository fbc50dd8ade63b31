//! `refstrip-bench strip`: single-core throughput of strip, strip + pack, and restore over the NARs
//! of real binary caches, with SHA-256 (what Nix already pays per NAR) as the floor, and a
//! breakdown of the strip pipeline into its parts.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use refstrip_cas::pack::PackWriter;
use refstrip_cas::FileSink;
use refstrip_nar::{Event, NarReader};
use refstrip_nix::{NarInfo, StoreDir};
use refstrip_source::{decompress, Compression};
use refstrip_strip::{
    restore_nar, strip, Manifest, MemoryStore, RefTable, Scanner, StripOptions, StripStats,
};
use sha2::{Digest, Sha256};

use crate::gen::Rng;
use crate::proto::SkipScanner;
use crate::report::{header, load_average, Sample, Table, MB};
use aho_corasick::{AhoCorasick, MatchKind};

#[derive(Args)]
pub struct StripArgs {
    /// A binary cache directory (`*.narinfo` + `nar/*`), as `nix copy --to file://DIR` writes it.
    /// May be given several times; all NARs are measured together.
    #[arg(long, required = true)]
    cache: Vec<PathBuf>,
    /// Store directory of the caches' narinfos.
    #[arg(long, default_value = "/nix/store")]
    store_dir: String,
    /// Timed repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Each repetition processes all NARs as many times as it takes to last at least this long.
    #[arg(long, default_value_t = 0.3)]
    min_rep_secs: f64,
    /// Scanner-only throughput with this many synthetic references per path (comma-separated);
    /// empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,65,300")]
    pattern_counts: Vec<usize>,
    /// zstd level for the pack measurement.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Run only these measurements (comma-separated keys: sha256, blake3, parse, scan, proto, strip, strip-bufread, pack,
    /// zstd, restore, per-path, patterns), e.g. to profile one of them; default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure strip vs SHA-256 path by path for this many of the largest NARs.
    #[arg(long, default_value_t = 3)]
    per_path: usize,
}

struct Path1 {
    name: String,
    nar: Vec<u8>,
    info: refstrip_cas::bundle::PathInfo,
    narinfo: NarInfo,
}

pub fn run(args: StripArgs) -> anyhow::Result<()> {
    let store_dir = StoreDir::new(args.store_dir.clone()).context("--store-dir")?;
    let mut paths = Vec::new();
    let mut compressed = 0u64;
    for cache in &args.cache {
        let mut names: Vec<PathBuf> = fs::read_dir(cache)
            .with_context(|| format!("reading {}", cache.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.retain(|p| p.extension().is_some_and(|e| e == "narinfo"));
        names.sort();
        for p in names {
            let narinfo = NarInfo::parse_bytes(&store_dir, &fs::read(&p)?)
                .with_context(|| format!("parsing {}", p.display()))?;
            let file = cache.join(&narinfo.url);
            compressed += fs::metadata(&file)?.len();
            let compression = Compression::from_narinfo(narinfo.compression.as_deref())?;
            let mut r = decompress(BufReader::new(File::open(&file)?), compression)?;
            let mut nar = Vec::with_capacity(narinfo.nar_size as usize);
            io::copy(&mut r, &mut nar)?;
            if nar.len() as u64 != narinfo.nar_size
                || refstrip_nix::Hash::from_bytes(Sha256::digest(&nar).into()) != narinfo.nar_hash
            {
                bail!("{}: NAR does not match NarHash/NarSize", file.display());
            }
            let info = refstrip_read::pathinfo::path_info(&narinfo)?;
            paths.push(Path1 {
                name: narinfo.store_path.base_name().to_string(),
                nar,
                info,
                narinfo,
            });
        }
    }
    if paths.is_empty() {
        bail!("no narinfos found");
    }
    let total: u64 = paths.iter().map(|p| p.nar.len() as u64).sum();
    let reps = args.reps.max(1);
    let options = StripOptions::default();

    let mut report = header();
    let caches: Vec<String> = args
        .cache
        .iter()
        .map(|c| format!("`{}`", c.display()))
        .collect();
    report.push_str(&format!(
        "| input | {} store paths from {}: {:.2} MB of NAR ({:.2} MB compressed), decompressed into memory before timing |\n\n",
        paths.len(),
        caches.join(", "),
        total as f64 / MB,
        compressed as f64 / MB
    ));

    // Reference facts (from one untimed strip of every path).
    let mut stats = StripStats::default();
    let mut store = MemoryStore::default();
    let mut manifests = Vec::new();
    let mut ref_counts = Vec::new();
    let mut weighted_refs = 0f64;
    for p in &paths {
        let s = strip(&p.nar[..], &p.info.refs, &options, &mut store)?;
        add_stats(&mut stats, &s.stats);
        ref_counts.push(p.info.refs.len());
        weighted_refs += p.info.refs.len() as f64 * p.nar.len() as f64 / total as f64;
        manifests.push(Manifest {
            store_dir: p.info.store_dir.clone(),
            refs: p.info.refs.clone(),
            references: p.info.references.clone(),
            nar_hash: s.nar_hash,
            nar_size: s.nar_size,
            info: p.info.info.clone(),
            root: s.root,
        });
    }
    ref_counts.sort();
    let normalized: u64 = store.objects.values().map(|v| v.len() as u64).sum();
    report.push_str(&references_table(
        &paths,
        &stats,
        &ref_counts,
        weighted_refs,
        store.objects.len(),
        normalized,
    ));

    let mut t =
        Table::new("Single-core throughput over the same in-memory NARs (MB of NAR per second)");
    let min = Duration::from_secs_f64(args.min_rep_secs);
    let want = |key: &str| args.only.is_empty() || args.only.iter().any(|o| o == key);
    eprintln!(
        "measuring {} paths, {:.2} MB of NAR; {reps} reps of ≥ {:.2} s each",
        paths.len(),
        total as f64 / MB,
        args.min_rep_secs
    );

    let floor = if want("sha256") {
        Some(t.push(
            "floor: SHA-256 of each NAR (Nix's NarHash)",
            "`sha2::Sha256`",
            measure(reps, min, total, || {
                for p in &paths {
                    std::hint::black_box(Sha256::digest(&p.nar));
                }
                Ok(())
            })?,
            None,
        ))
    } else {
        None
    };
    if want("blake3") {
        t.push(
            "part: BLAKE3 of each NAR (single-threaded)",
            "`blake3::Hasher::update`",
            measure(reps, min, total, || {
                for p in &paths {
                    std::hint::black_box(blake3::hash(&p.nar));
                }
                Ok(())
            })?,
            floor,
        );
    }
    if want("parse") {
        t.push(
            "part: NAR parse (events + content_chunk)",
            "`NarReader` over `&[u8]`",
            measure(reps, min, total, || {
                for p in &paths {
                    parse_only(&p.nar)?;
                }
                Ok(())
            })?,
            floor,
        );
    }
    let acs: Vec<AhoCorasick> = paths
        .iter()
        .map(|p| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(p.info.refs.basenames().iter().map(|b| &b[..32]))
        })
        .collect::<Result<_, _>>()?;
    let scanners: Vec<Scanner> = paths.iter().map(|p| Scanner::new(&p.info.refs)).collect();
    if want("scan") {
        t.push(
            "part: NAR parse + reference scan/replace",
            "`NarReader` + `ScanStream::feed`",
            measure(reps, min, total, || {
                for (p, s) in paths.iter().zip(&scanners) {
                    parse_and_scan(&p.nar, s)?;
                }
                Ok(())
            })?,
            floor,
        );
    }
    if want("proto") {
        // Same matches as aho-corasick over each whole NAR (checked), then timed.
        let protos: Vec<SkipScanner> = paths
            .iter()
            .map(|p| SkipScanner::new(p.info.refs.basenames().iter().map(|b| &b[..32])))
            .collect();
        for (p, proto) in paths.iter().zip(&protos) {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(p.info.refs.basenames().iter().map(|b| &b[..32]))?;
            let want: Vec<(usize, u32)> = ac
                .find_iter(&p.nar)
                .map(|m| (m.start(), m.pattern().as_u32()))
                .collect();
            let mut got = Vec::new();
            proto.scan(&p.nar, |o, i| got.push((o, i)));
            if got != want {
                bail!(
                    "prototype scanner disagrees with aho-corasick on {}",
                    p.name
                );
            }
        }
        t.push("prototype: skip scanner over each NAR (no copy; matches checked equal to aho-corasick)", "`proto::SkipScanner` (tools/bench)", measure(reps, min, total, || {
            for (p, proto) in paths.iter().zip(&protos) {
                let mut count = 0u64;
                proto.scan(&p.nar, |_, _| count += 1);
                std::hint::black_box(count);
            }
            Ok(())
        })?, floor);
        t.push(
            "reference: aho-corasick `find_iter` over each NAR (no copy)",
            "`AhoCorasick` leftmost-first",
            measure(reps, min, total, || {
                for (p, s) in paths.iter().zip(&acs) {
                    std::hint::black_box(s.find_iter(&p.nar).count());
                }
                Ok(())
            })?,
            floor,
        );
    }
    if want("strip") {
        t.push(
            "**strip** → `io::sink()` (scan + normalize + BLAKE3 + NarHash)",
            "`refstrip_strip::strip`",
            measure(reps, min, total, || {
                for p in &paths {
                    std::hint::black_box(strip(
                        &p.nar[..],
                        &p.info.refs,
                        &options,
                        &mut io::sink(),
                    )?);
                }
                Ok(())
            })?,
            floor,
        );
    }
    let level = args.level;
    if want("strip-bufread") {
        t.push("**strip** → `io::sink()`, NAR read through a 256 KiB `BufReader` (as from a decompressor)", "`refstrip_strip::strip`", measure(reps, min, total, || {
            for p in &paths {
                std::hint::black_box(strip(BufReader::with_capacity(256 << 10, &p.nar[..]), &p.info.refs, &options, &mut io::sink())?);
            }
            Ok(())
        })?, floor);
    }
    if want("pack") {
        t.push(
            &format!("**strip + pack** (zstd {level}, 1 MiB blocks, dedupe within the pass)"),
            "`strip` → `FileSink` → `PackWriter<io::Sink>`",
            measure(reps, min, total, || {
                let mut pack = PackWriter::new(io::sink(), level)?;
                for p in &paths {
                    let mut sink = FileSink::new(&mut pack);
                    std::hint::black_box(strip(&p.nar[..], &p.info.refs, &options, &mut sink)?);
                }
                pack.finish()?;
                Ok(())
            })?,
            floor,
        );
    }
    if want("zstd") {
        t.push(
            &format!("part: zstd {level} of each NAR in 1 MiB blocks"),
            "`zstd::bulk::compress`",
            measure(reps, min, total, || {
                for p in &paths {
                    for block in p.nar.chunks(1 << 20) {
                        std::hint::black_box(zstd::bulk::compress(block, level)?);
                    }
                }
                Ok(())
            })?,
            floor,
        );
    }
    if want("restore") {
        t.push(
            "**restore** → `io::sink()` (incl. SHA-256 check)",
            "`restore_nar` from `MemoryStore`",
            measure(reps, min, total, || {
                for m in &manifests {
                    std::hint::black_box(restore_nar(m, &mut store, io::sink())?);
                }
                Ok(())
            })?,
            floor,
        );
    }

    // Per path (the largest ones): where the reference count is high, the scanner slows down.
    let mut big: Vec<usize> = (0..paths.len()).collect();
    big.sort_by_key(|&i| std::cmp::Reverse(paths[i].nar.len()));
    big.truncate(if want("per-path") { args.per_path } else { 0 });
    let mut pp = Table::new(
        "Per path (largest NARs): strip → `io::sink()` vs SHA-256 of the same NAR, one thread",
    );
    for &i in &big {
        let p = &paths[i];
        let bytes = p.nar.len() as u64;
        let sha = measure(reps, min, bytes, || {
            std::hint::black_box(Sha256::digest(&p.nar));
            Ok(())
        })?;
        let what = format!(
            "{} ({} refs)",
            p.name.split_once('-').map_or(p.name.as_str(), |x| x.1),
            p.info.refs.len()
        );
        let j = pp.push(&what, "SHA-256", sha, None);
        let s = measure(reps, min, bytes, || {
            std::hint::black_box(strip(&p.nar[..], &p.info.refs, &options, &mut io::sink())?);
            Ok(())
        })?;
        pp.push(&what, "strip → sink", s, Some(j));
    }

    report.push_str("MB = 10^6 bytes of NAR; each repetition processes every NAR (k times over, k chosen so a repetition lasts ≥ ");
    report.push_str(&format!(
        "{} s); \"vs\" = ratio of medians; one thread.\n\n",
        args.min_rep_secs
    ));
    if !t.rows.is_empty() {
        report.push_str(&t.markdown());
        report.push('\n');
    }
    if !big.is_empty() {
        report.push_str(&pp.markdown());
        report.push('\n');
    }

    if !args.pattern_counts.is_empty() && want("patterns") {
        let mut pt = Table::new("Scanner alone vs number of references (NAR parse + scan/replace, synthetic hash parts that never match)");
        let mut rng = Rng::new(42);
        let mut first = None;
        for &n in &args.pattern_counts {
            let refs: Vec<Vec<u8>> = (1..n)
                .map(|i| {
                    let mut b = rng.hash_part().to_vec();
                    b.extend_from_slice(format!("-ref{i}").as_bytes());
                    b
                })
                .collect();
            let mut me = rng.hash_part().to_vec();
            me.extend_from_slice(b"-self");
            let table = RefTable::new(&me, &refs)?;
            let scanner = Scanner::new(&table);
            let sample = measure(reps, min, total, || {
                for p in &paths {
                    parse_and_scan(&p.nar, &scanner)?;
                }
                Ok(())
            })?;
            let i = pt.push(
                &format!("{n} reference(s)"),
                "`Scanner` (aho-corasick leftmost-first)",
                sample,
                first,
            );
            first.get_or_insert(i);
            let proto = SkipScanner::new(table.basenames().iter().map(|b| &b[..32]));
            let sample = measure(reps, min, total, || {
                for p in &paths {
                    let mut count = 0u64;
                    proto.scan(&p.nar, |_, _| count += 1);
                    std::hint::black_box(count);
                }
                Ok(())
            })?;
            pt.push(
                &format!("{n} reference(s)"),
                "prototype `SkipScanner` (scan only, no copy)",
                sample,
                Some(i),
            );
        }
        report.push_str(&pt.markdown());
        report.push('\n');
    }
    report.push_str(&format!("Load average at end: {}\n", load_average()));
    println!("{report}");
    Ok(())
}

/// Run `f` (one pass over all NARs) `k` times per repetition, `k` calibrated by a warm-up pass.
fn measure(
    reps: usize,
    min: Duration,
    bytes_per_pass: u64,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    f()?;
    let once = start.elapsed().max(Duration::from_micros(1));
    let k = (min.as_secs_f64() / once.as_secs_f64()).ceil().max(1.0) as u64;
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        for _ in 0..k {
            f()?;
        }
        times.push(start.elapsed());
    }
    Ok(Sample {
        times,
        bytes: bytes_per_pass * k,
    })
}

fn parse_only(nar: &[u8]) -> anyhow::Result<()> {
    let mut r = NarReader::new(nar);
    while let Some(ev) = r.next_event()? {
        if let Event::File { .. } = ev {
            while !r.content_chunk()?.is_empty() {}
        }
    }
    Ok(())
}

fn parse_and_scan(nar: &[u8], scanner: &Scanner) -> anyhow::Result<()> {
    let mut r = NarReader::new(nar);
    while let Some(ev) = r.next_event()? {
        if let Some(name) = ev.name() {
            std::hint::black_box(scanner.strip_bytes(name));
        }
        if let Event::File { .. } = ev {
            let mut s = scanner.stream();
            loop {
                let chunk = r.content_chunk()?;
                if chunk.is_empty() {
                    std::hint::black_box(s.finish());
                    break;
                }
                std::hint::black_box(s.feed(chunk));
            }
        }
    }
    Ok(())
}

fn add_stats(a: &mut StripStats, b: &StripStats) {
    a.files += b.files;
    a.symlinks += b.symlinks;
    a.directories += b.directories;
    a.patched_files += b.patched_files;
    a.ref_patches += b.ref_patches;
    a.literal_patches += b.literal_patches;
    a.content_bytes += b.content_bytes;
}

fn references_table(
    paths: &[Path1],
    s: &StripStats,
    counts: &[usize],
    weighted: f64,
    objects: usize,
    normalized: u64,
) -> String {
    let largest = paths.iter().max_by_key(|p| p.nar.len()).expect("non-empty");
    let median = counts[counts.len() / 2];
    let mut out = String::new();
    out.push_str("| references | |\n|---|---|\n");
    out.push_str(&format!(
        "| files / symlinks / directories | {} / {} / {} |\n",
        s.files, s.symlinks, s.directories
    ));
    out.push_str(&format!(
        "| patched files | {} of {} ({:.1} %) |\n",
        s.patched_files,
        s.files,
        100.0 * s.patched_files as f64 / s.files.max(1) as f64
    ));
    out.push_str(&format!(
        "| placeholders (reference occurrences) | {} ({:.1} per MB of NAR) |\n",
        s.ref_patches,
        s.ref_patches as f64 / (paths.iter().map(|p| p.nar.len()).sum::<usize>() as f64 / MB)
    ));
    out.push_str(&format!(
        "| literal patches (ELF build-ids) | {} |\n",
        s.literal_patches
    ));
    out.push_str(&format!(
        "| reference table size per path (self + References) | min {}, median {}, max {}; NAR-size-weighted mean {:.1} |\n",
        counts[0],
        median,
        counts[counts.len() - 1],
        weighted
    ));
    out.push_str(&format!(
        "| largest path | {} ({:.2} MB NAR, {} references) |\n",
        largest.name,
        largest.nar.len() as f64 / MB,
        largest.narinfo.references.len()
    ));
    out.push_str(&format!(
        "| distinct normalized objects | {objects} ({:.2} MB) |\n\n",
        normalized as f64 / MB
    ));
    out
}
