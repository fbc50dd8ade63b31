//! `refstrip-bench packs`: how a store's objects would compress in other blocks (size, grouping by
//! class, x86 filter, zstd level), in bytes, MB/s of compression and of decoding per core (CPU time
//! of the measuring thread), and the
//! bytes a client fetches to read one object. The measurements behind spec §6's block settings
//! (docs/store.md).

use std::fs::{self, File};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use refstrip_cas::pack::{classify, decode_block, encode_block, Class, Filter, PackReader};
use refstrip_cas::ObjectRead;

use crate::report::header;

#[derive(Args)]
pub struct PacksArgs {
    /// A refstrip store directory: every object of `STORE/packs/*.pack` is measured, in the order
    /// the packs hold them (ingest order within a pack).
    #[arg(long)]
    store: PathBuf,
    /// Stop after this many MB of objects (a sample of a large store).
    #[arg(long)]
    limit_mb: Option<u64>,
    /// Settings to measure, each `BLOCK_MIB/GROUPING/FILTER/LEVEL[/TEXT_LEVEL[/COMPRESSED_LEVEL]]`:
    /// GROUPING `order` (objects as they come) or `class` (one open block per class), FILTER
    /// `none` or `x86` (on code blocks; with `order`, on every block).
    #[arg(long = "setting", required_unless_present = "stored")]
    settings: Vec<String>,
    /// Instead: decode every block of the store's packs as stored (what a client does), and
    /// print blocks, bytes and decode MB/s per core.
    #[arg(long)]
    stored: bool,
    /// Print ratios against this many bytes (e.g. the NAR.xz of the same paths).
    #[arg(long)]
    versus: Option<u64>,
}

struct Setting {
    block: usize,
    by_class: bool,
    x86: bool,
    /// With `class`: filter blocks of class other too.
    x86_other: bool,
    level: i32,
    text_level: i32,
    compressed_level: i32,
}

fn parse_setting(s: &str) -> anyhow::Result<Setting> {
    let parts: Vec<&str> = s.split('/').collect();
    if !(4..=6).contains(&parts.len()) {
        bail!("setting {s}: expected BLOCK_MIB/GROUPING/FILTER/LEVEL[/TEXT[/COMPRESSED]]");
    }
    let level: i32 = parts[3].parse()?;
    let text_level = parts.get(4).map_or(Ok(level), |p| p.parse())?;
    Ok(Setting {
        block: parts[0].parse::<usize>()? << 20,
        by_class: match parts[1] {
            "order" => false,
            "class" => true,
            other => bail!("grouping {other}"),
        },
        x86: match parts[2] {
            "none" => false,
            "x86" | "x86-other" => true,
            other => bail!("filter {other}"),
        },
        x86_other: parts[2] == "x86-other",
        level,
        text_level,
        compressed_level: parts
            .get(5)
            .map_or(Ok(text_level.min(level)), |p| p.parse())?,
    })
}

/// Objects in pack order.
fn load(store: &std::path::Path, limit: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut packs: Vec<PathBuf> = fs::read_dir(store.join("packs"))
        .with_context(|| format!("{}/packs", store.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    packs.sort();
    let mut objects = Vec::new();
    let mut total = 0u64;
    for pack in packs {
        let mut reader = PackReader::open(File::open(&pack)?)?;
        let mut entries: Vec<_> = reader.index().iter().map(|(id, l)| (*l, *id)).collect();
        entries.sort_by_key(|(l, _)| (l.block_offset, l.offset_in_block));
        for (_, id) in entries {
            let bytes = reader.get(&id)?;
            total += bytes.len() as u64;
            objects.push(bytes);
            if total >= limit {
                return Ok(objects);
            }
        }
    }
    Ok(objects)
}

struct Block {
    raw: Vec<u8>,
    filter: Filter,
    level: i32,
    objects: usize,
}

/// Group objects into blocks as `setting` says.
fn blocks(objects: &[Vec<u8>], setting: &Setting) -> Vec<Block> {
    let mut open: Vec<(Class, Block)> = Vec::new();
    let mut done = Vec::new();
    for object in objects {
        let class = if setting.by_class {
            classify(object)
        } else {
            Class::Other
        };
        let i = match open.iter().position(|(c, _)| *c == class) {
            Some(i) => i,
            None => {
                let (filter, level) = match class {
                    Class::Code if setting.x86 => (Filter::X86, setting.level),
                    Class::Other if setting.x86 && (setting.x86_other || !setting.by_class) => {
                        (Filter::X86, setting.level)
                    }
                    Class::Text => (Filter::None, setting.text_level),
                    Class::Compressed => (Filter::None, setting.compressed_level),
                    _ => (Filter::None, setting.level),
                };
                let block = Block {
                    raw: Vec::new(),
                    filter,
                    level,
                    objects: 0,
                };
                open.push((class, block));
                open.len() - 1
            }
        };
        let block = &mut open[i].1;
        block.raw.extend_from_slice(object);
        block.objects += 1;
        if block.raw.len() >= setting.block {
            let full = open.swap_remove(i).1;
            done.push(full);
        }
    }
    done.extend(open.into_iter().map(|(_, b)| b));
    done
}

/// CPU seconds this thread has run (`/proc/thread-self/schedstat`, nanoseconds): rates per core
/// that other load on the machine does not distort the way wall time does.
fn thread_cpu() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(ns as f64 / 1e9)
}

/// CPU seconds one run of `f` takes: runs it until 0.5 s of CPU have passed (the clock ticks
/// coarsely for short runs), at least once.
fn cpu_per_run(f: impl Fn() -> std::io::Result<()>) -> anyhow::Result<f64> {
    let started = thread_cpu()?;
    let mut runs = 0u32;
    loop {
        f()?;
        runs += 1;
        let spent = thread_cpu()? - started;
        if spent >= 0.5 {
            return Ok(spent / f64::from(runs));
        }
    }
}

/// Decode every block of the store's packs, as a client would, on one core.
fn decode_stored(store: &std::path::Path) -> anyhow::Result<()> {
    let mut blocks = Vec::new();
    for e in fs::read_dir(store.join("packs"))? {
        let bytes = fs::read(e?.path())?;
        let reader = PackReader::open(std::io::Cursor::new(&bytes))?;
        let mut locations: Vec<_> = reader.index().values().copied().collect();
        locations.sort_by_key(|l| l.block_offset);
        locations.dedup_by_key(|l| l.block_offset);
        for l in locations {
            let start = l.block_offset as usize;
            blocks.push((
                bytes[start..start + l.block_len as usize].to_vec(),
                l.block_raw_len,
            ));
        }
    }
    let stored: u64 = blocks.iter().map(|(b, _)| b.len() as u64).sum();
    let raw: u64 = blocks.iter().map(|(_, r)| r).sum();
    let cpu = cpu_per_run(|| {
        for (block, raw_len) in &blocks {
            decode_block(block, *raw_len)?;
        }
        Ok(())
    })?;
    println!("{}", header());
    println!("| blocks | stored bytes | decoded bytes | decode MB/s/core |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {stored} | {raw} | {:.0} |",
        blocks.len(),
        raw as f64 / 1e6 / cpu
    );
    Ok(())
}

pub fn run(args: PacksArgs) -> anyhow::Result<()> {
    if args.stored {
        return decode_stored(&args.store);
    }
    let settings: Vec<(String, Setting)> = args
        .settings
        .iter()
        .map(|s| Ok((s.clone(), parse_setting(s)?)))
        .collect::<anyhow::Result<_>>()?;
    let objects = load(&args.store, args.limit_mb.map_or(u64::MAX, |m| m << 20))?;
    let raw: u64 = objects.iter().map(|o| o.len() as u64).sum();
    let mut by_class = std::collections::BTreeMap::<Class, (u64, u64)>::new();
    for o in &objects {
        let e = by_class.entry(classify(o)).or_default();
        e.0 += 1;
        e.1 += o.len() as u64;
    }
    println!("{}", header());
    println!(
        "{} objects, {raw} bytes; by class: {}\n",
        objects.len(),
        by_class
            .iter()
            .map(|(c, (n, b))| format!("{c:?} {n} objects {b} bytes"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| setting | stored bytes | vs raw | vs versus | compress MB/s/core | decode MB/s/core | one object: block bytes fetched (median) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, setting) in &settings {
        let blocks = blocks(&objects, setting);
        // One core: the rate a pool of N threads multiplies by N.
        let encode = || {
            blocks
                .iter()
                .map(|b| encode_block(&b.raw, b.filter, b.level))
                .collect::<Result<Vec<Vec<u8>>, _>>()
        };
        let frames = encode()?;
        let compress = cpu_per_run(|| encode().map(drop))?;
        let stored: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let decode_all = || {
            frames
                .iter()
                .zip(&blocks)
                .map(|(f, b)| decode_block(f, b.raw.len() as u64))
                .collect::<Result<Vec<Vec<u8>>, _>>()
        };
        if decode_all()?.iter().zip(&blocks).any(|(d, b)| *d != b.raw) {
            bail!("{name}: a block does not round-trip");
        }
        let decode = cpu_per_run(|| decode_all().map(drop))?;
        let mut fetched: Vec<u64> = frames
            .iter()
            .zip(&blocks)
            .flat_map(|(f, b)| std::iter::repeat_n(f.len() as u64, b.objects))
            .collect();
        fetched.sort_unstable();
        let versus = args.versus.map_or("-".to_string(), |v| {
            format!("{:.1} %", 100.0 * stored as f64 / v as f64)
        });
        println!(
            "| {name} | {stored} | {:.1} % | {versus} | {:.1} | {:.0} | {} |",
            100.0 * stored as f64 / raw as f64,
            raw as f64 / 1e6 / compress,
            raw as f64 / 1e6 / decode,
            fetched.get(fetched.len() / 2).copied().unwrap_or(0),
        );
    }
    Ok(())
}
