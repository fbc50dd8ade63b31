//! `refstrip-bench nar`: the NAR codec against `nix-store --dump` / `--restore` on one tree.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use refstrip_nar::{NarReader, NarWriter};
use sha2::{Digest, Sha256};

use crate::gen;
use crate::report::{header, load_average, time, Sample, Table, MB};

#[derive(Args)]
pub struct NarArgs {
    /// An existing tree to measure.
    #[arg(
        long,
        conflicts_with = "generate",
        required_unless_present = "generate"
    )]
    tree: Option<PathBuf>,
    /// Generate a deterministic tree here first (reused when it exists with a matching stamp).
    #[arg(long)]
    generate: Option<PathBuf>,
    /// Size of the generated tree's file contents, in MB.
    #[arg(long, default_value_t = 600)]
    size_mb: u64,
    /// Timed repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Scratch directory for the NAR file and unpacked trees; must be on the tree's filesystem to
    /// measure the same disk (default: `<tree>.bench-work` next to the tree).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Timed repetitions of the unpack measurement (each writes the tree twice).
    #[arg(long, default_value_t = 3)]
    unpack_reps: usize,
    /// Skip the unpack measurement (it writes the tree `2 × unpack_reps + 2` times).
    #[arg(long)]
    no_unpack: bool,
}

pub fn run(args: NarArgs) -> anyhow::Result<()> {
    let tree = match (&args.tree, &args.generate) {
        (Some(t), _) => t.clone(),
        (None, Some(g)) => {
            let stamp = PathBuf::from(format!("{}.refstrip-bench-stamp", g.display()));
            let want = format!("size-mb {}\n", args.size_mb);
            if g.exists() {
                if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
                    bail!(
                        "{} exists but was not generated with --size-mb {} (stamp {}): remove it",
                        g.display(),
                        args.size_mb,
                        stamp.display()
                    );
                }
                eprintln!("reusing generated tree {}", g.display());
            } else {
                eprintln!("generating {} MB tree at {} ...", args.size_mb, g.display());
                let (t, _) = time(|| gen::generate(g, args.size_mb))?;
                eprintln!("  generated in {:.1} s", t.as_secs_f64());
                fs::write(&stamp, want)?;
            }
            g.clone()
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let tree = fs::canonicalize(&tree).with_context(|| format!("{}", tree.display()))?;
    let facts = gen::facts(&tree)?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.bench-work", tree.display())));
    let reps = args.reps.max(1);

    let mut report = header();
    report.push_str(&format!(
        "| tree | `{}`: {} files, {} symlinks, {} directories, {:.1} MB of file contents |\n",
        tree.display(),
        facts.files,
        facts.symlinks,
        facts.dirs,
        facts.bytes as f64 / MB
    ));

    // Warm-up: our dump into memory (this NAR is the input of the in-memory benchmarks) and one
    // untimed nix-store --dump, whose bytes must be the same.
    eprintln!(
        "warm-up: dumping {} with refstrip and nix-store ...",
        tree.display()
    );
    let mut nar = Vec::with_capacity(facts.bytes as usize + (64 << 20));
    refstrip_nar::dump(&tree, &mut nar)?;
    let ours: [u8; 32] = Sha256::digest(&nar).into();
    let theirs = nix_dump_sha256(&tree)?;
    if ours != theirs {
        bail!(
            "refstrip_nar::dump and nix-store --dump disagree on {}",
            tree.display()
        );
    }
    let nar_bytes = nar.len() as u64;
    report.push_str(&format!(
        "| NAR | {:.1} MB, identical to `nix-store --dump` (checked in the warm-up) |\n\n",
        nar_bytes as f64 / MB
    ));

    // (a) dump
    eprintln!("dump: {reps} reps each, interleaved");
    let mut dump = Table::new("(a) dump: tree → NAR, discarded (warm page cache)");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        a.push(time(|| Ok(refstrip_nar::dump(&tree, io::sink())?))?.0);
        b.push(time(|| nix_dump_to_null(&tree))?.0);
    }
    let nix = dump.push(
        "dump to /dev/null",
        "`nix-store --dump DIR > /dev/null`",
        Sample {
            times: b,
            bytes: nar_bytes,
        },
        None,
    );
    dump.push(
        "dump to /dev/null",
        "`refstrip_nar::dump(DIR, io::sink())`",
        Sample {
            times: a,
            bytes: nar_bytes,
        },
        Some(nix),
    );

    // (b) read, (c) write
    eprintln!("read/write: {reps} reps each");
    let mut rw = Table::new("(b) read and (c) write: in-memory NAR, no filesystem");
    let mut copy_buf = vec![0u8; nar.len()];
    let memcpy = rw.push(
        "reference: memcpy of the NAR",
        "`copy_from_slice`",
        Sample {
            times: repeat(reps, || {
                copy_buf.copy_from_slice(&nar);
                std::hint::black_box(&copy_buf);
                Ok(())
            })?,
            bytes: nar_bytes,
        },
        None,
    );
    drop(copy_buf);
    rw.push(
        "(b) read: events + content_chunk",
        "`NarReader` over `&[u8]` (zero-copy)",
        Sample {
            times: repeat(reps, || read_all(&nar[..]))?,
            bytes: nar_bytes,
        },
        Some(memcpy),
    );
    rw.push(
        "(b) read: events + content_chunk",
        "`NarReader` over `BufReader<&[u8]>` 64 KiB",
        Sample {
            times: repeat(reps, || {
                read_all(BufReader::with_capacity(64 << 10, &nar[..]))
            })?,
            bytes: nar_bytes,
        },
        Some(memcpy),
    );
    rw.push(
        "(c) write: reader → writer → `io::sink()`",
        "`refstrip_nar::copy` over `&[u8]`",
        Sample {
            times: repeat(reps, || {
                let mut r = NarReader::new(&nar[..]);
                let mut w = NarWriter::new(io::sink());
                refstrip_nar::copy(&mut r, &mut w)?;
                w.finish()?;
                Ok(())
            })?,
            bytes: nar_bytes,
        },
        Some(memcpy),
    );

    let mut out_buf: Vec<u8> = Vec::with_capacity(nar.len());
    rw.push(
        "(c) write: reader → writer → `Vec<u8>` (preallocated)",
        "`refstrip_nar::copy` over `&[u8]`",
        Sample {
            times: repeat(reps, || {
                out_buf.clear();
                let mut r = NarReader::new(&nar[..]);
                let mut w = NarWriter::new(&mut out_buf);
                refstrip_nar::copy(&mut r, &mut w)?;
                w.finish()?;
                Ok(())
            })?,
            bytes: nar_bytes,
        },
        Some(memcpy),
    );
    if out_buf != nar {
        bail!("NarReader → NarWriter did not reproduce the NAR");
    }
    drop(out_buf);

    let mut tables = vec![dump, rw];

    // (d) unpack
    if !args.no_unpack {
        if work.exists() {
            fs::remove_dir_all(&work)?;
        }
        fs::create_dir_all(&work)?;
        let nar_file = work.join("tree.nar");
        fs::write(&nar_file, &nar)?;
        drop(nar);
        let reps = args.unpack_reps.max(1);
        eprintln!("unpack: 1 warm-up + {reps} reps each, interleaved, `sync` between (untimed)");
        let mut unpack = Table::new("(d) unpack: NAR file (page cache) → new tree on the same filesystem, no fsync by either");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..=reps {
            let dest = work.join("out");
            settle(&dest)?;
            let t = time(|| {
                let mut r =
                    NarReader::new(BufReader::with_capacity(1 << 20, File::open(&nar_file)?));
                refstrip_nar::unpack(&mut r, &dest)?;
                Ok(())
            })?
            .0;
            settle(&dest)?;
            let u = time(|| nix_restore(&nar_file, &dest))?.0;
            if i > 0 {
                a.push(t);
                b.push(u);
            }
        }
        settle(&work.join("out"))?;
        fs::remove_dir_all(&work)?;
        let nix = unpack.push(
            "unpack",
            "`nix-store --restore OUT < tree.nar`",
            Sample {
                times: b,
                bytes: nar_bytes,
            },
            None,
        );
        unpack.push(
            "unpack",
            "`refstrip_nar::unpack(BufReader<File>, OUT)`",
            Sample {
                times: a,
                bytes: nar_bytes,
            },
            Some(nix),
        );
        tables.push(unpack);
    }

    report.push_str("MB = 10^6 bytes of NAR; MB/s = NAR bytes / wall time of one repetition; \"vs\" = ratio of medians.\n\n");
    for t in &tables {
        report.push_str(&t.markdown());
        report.push('\n');
    }
    report.push_str(&format!("Load average at end: {}\n", load_average()));
    println!("{report}");
    Ok(())
}

fn repeat(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Duration>> {
    f()?; // warm-up
    (0..reps).map(|_| Ok(time(&mut f)?.0)).collect()
}

/// Every event and every content byte of a NAR, as a consumer would pull them.
fn read_all<R: io::BufRead>(r: R) -> anyhow::Result<()> {
    let mut r = NarReader::new(r);
    let mut sum = 0u64;
    while let Some(ev) = r.next_event()? {
        if let refstrip_nar::Event::File { .. } = ev {
            loop {
                let chunk = r.content_chunk()?;
                if chunk.is_empty() {
                    break;
                }
                sum = sum.wrapping_add(chunk.len() as u64 + chunk[0] as u64);
            }
        }
    }
    std::hint::black_box(sum);
    Ok(())
}

fn nix_dump_to_null(tree: &Path) -> anyhow::Result<()> {
    let status = Command::new("nix-store")
        .arg("--dump")
        .arg(tree)
        .stdout(File::create("/dev/null")?)
        .status()?;
    if !status.success() {
        bail!("nix-store --dump {} failed: {status}", tree.display());
    }
    Ok(())
}

fn nix_dump_sha256(tree: &Path) -> anyhow::Result<[u8; 32]> {
    let mut child = Command::new("nix-store")
        .arg("--dump")
        .arg(tree)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if !child.wait()?.success() {
        bail!("nix-store --dump {} failed", tree.display());
    }
    Ok(h.finalize().into())
}

fn nix_restore(nar: &Path, dest: &Path) -> anyhow::Result<()> {
    let status = Command::new("nix-store")
        .arg("--restore")
        .arg(dest)
        .stdin(File::open(nar)?)
        .status()?;
    if !status.success() {
        bail!("nix-store --restore {} failed: {status}", dest.display());
    }
    Ok(())
}

/// Remove a previous unpack and flush dirty pages, so each timed unpack starts alike.
fn settle(dest: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        make_writable(dest)?;
        fs::remove_dir_all(dest)?;
    }
    Command::new("sync").status()?;
    Ok(())
}

fn make_writable(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = fs::symlink_metadata(p)?;
    if m.is_dir() {
        let mut perms = m.permissions();
        perms.set_mode(perms.mode() | 0o700);
        fs::set_permissions(p, perms)?;
        for e in fs::read_dir(p)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}
