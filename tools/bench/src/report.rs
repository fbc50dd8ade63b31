//! Timing, statistics and the Markdown report (machine facts, command line, result tables).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

/// MB as used in every table: 10^6 bytes.
pub const MB: f64 = 1e6;

/// The timings of one measured operation over `bytes` bytes per repetition.
pub struct Sample {
    pub times: Vec<Duration>,
    pub bytes: u64,
}

impl Sample {
    fn rates(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .times
            .iter()
            .map(|t| self.bytes as f64 / MB / t.as_secs_f64())
            .collect();
        r.sort_by(|a, b| a.total_cmp(b));
        r
    }

    /// Median MB/s (the mean of the two middle values for an even count).
    pub fn median(&self) -> f64 {
        let r = self.rates();
        let n = r.len();
        if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        }
    }

    pub fn min(&self) -> f64 {
        self.rates()[0]
    }

    pub fn max(&self) -> f64 {
        *self.rates().last().expect("at least one repetition")
    }

    pub fn median_time(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

/// Time one call of `f`.
pub fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed(), value))
}

/// A table row: what was measured, by which tool, and its sample.
pub struct Row {
    pub what: String,
    pub tool: String,
    pub sample: Sample,
    /// The row whose median this one is compared with (index into the table), if any.
    pub vs: Option<usize>,
}

pub struct Table {
    pub title: String,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Add a row; returns its index for later `vs` references.
    pub fn push(&mut self, what: &str, tool: &str, sample: Sample, vs: Option<usize>) -> usize {
        eprintln!(
            "  {what:<40} {tool:<44} median {:>9.1} MB/s (min {:.1}, max {:.1}, {} reps)",
            sample.median(),
            sample.min(),
            sample.max(),
            sample.times.len()
        );
        self.rows.push(Row {
            what: what.into(),
            tool: tool.into(),
            sample,
            vs,
        });
        self.rows.len() - 1
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "**{}**\n", self.title);
        let _ = writeln!(
            s,
            "| measured | tool | MB per rep | reps | median MB/s | min | max | median time | vs |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
        for row in &self.rows {
            let vs = match row.vs {
                Some(i) => format!(
                    "{:.2}× {}",
                    row.sample.median() / self.rows[i].sample.median(),
                    self.rows[i].tool
                ),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.3} s | {} |",
                row.what,
                row.tool,
                row.sample.bytes as f64 / MB,
                row.sample.times.len(),
                row.sample.median(),
                row.sample.min(),
                row.sample.max(),
                row.sample.median_time().as_secs_f64(),
                vs
            );
        }
        s
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => format!("({program} not available)"),
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The header every report starts with: exact command, machine facts, load at start.
pub fn header() -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1048576.0))
        .unwrap_or_else(|| "?".into());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Command: `cargo run --release -p refstrip-bench -- {}`\n",
        args.join(" ")
    );
    let _ = writeln!(s, "| machine | |");
    let _ = writeln!(s, "|---|---|");
    let _ = writeln!(s, "| nproc | {nproc} |");
    let _ = writeln!(s, "| CPU | {cpu} |");
    let _ = writeln!(s, "| RAM | {mem} |");
    let _ = writeln!(s, "| kernel | {} |", command_output("uname", &["-sr"]));
    let _ = writeln!(s, "| rustc | {} |", command_output("rustc", &["--version"]));
    let _ = writeln!(
        s,
        "| nix-store | {} |",
        command_output("nix-store", &["--version"])
    );
    let _ = writeln!(
        s,
        "| date | {} |",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        s,
        "| load average at start (1/5/15 min) | {} |",
        load_average()
    );
    s
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
