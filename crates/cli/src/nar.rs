//! `refstrip nar …`: dump, unpack and list Nix archives.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use refstrip_nar::{Event, NarReader};

#[derive(Subcommand)]
pub enum NarCommand {
    /// Serialise PATH as a NAR on standard output (like `nix-store --dump`).
    Dump { path: PathBuf },
    /// Unpack NAR ("-" for standard input) into DEST, which must not exist (like `nix-store --restore`).
    ///
    /// The archive is fully validated first-to-last while unpacking into a temporary sibling of DEST;
    /// DEST appears only if the whole archive was valid.
    Unpack { nar: PathBuf, dest: PathBuf },
    /// List the entries of NAR ("-" for standard input) with their type, mode and size.
    Ls { nar: PathBuf },
}

pub fn run(cmd: NarCommand) -> anyhow::Result<()> {
    match cmd {
        NarCommand::Dump { path } => {
            let stdout = Stdout(io::stdout().lock());
            refstrip_nar::dump(&path, BufWriter::with_capacity(1 << 20, stdout))
                .with_context(|| format!("dumping {}", path.display()))?;
        }
        NarCommand::Unpack { nar, dest } => {
            let mut reader = NarReader::new(open_input(&nar)?);
            refstrip_nar::unpack(&mut reader, &dest)
                .with_context(|| format!("unpacking {} into {}", nar.display(), dest.display()))?;
        }
        NarCommand::Ls { nar } => {
            let mut reader = NarReader::new(open_input(&nar)?);
            let mut out = BufWriter::new(Stdout(io::stdout().lock()));
            list(&mut reader, &mut out).with_context(|| format!("listing {}", nar.display()))?;
            out.flush().context("listing")?;
        }
    }
    Ok(())
}

/// Standard output whose write errors say it was standard output (ENOSPC on a redirect names
/// the file it hit); the error kind is kept, so `main` still recognises a closed pipe.
struct Stdout<W>(W);

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(named)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(named)
    }
}

fn named(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing standard output: {e}"))
}

fn open_input(path: &PathBuf) -> anyhow::Result<Box<dyn io::BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin())));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
}

/// One line per entry, in archive order, like `nix nar ls -lR`: mode, size, path[ -> target].
fn list(reader: &mut NarReader<impl io::BufRead>, out: &mut impl Write) -> anyhow::Result<()> {
    let mut path: Vec<Vec<u8>> = Vec::new();
    while let Some(event) = reader.next_event()? {
        let name = event.name().map(<[u8]>::to_vec);
        let show = |path: &[Vec<u8>], name: &Option<Vec<u8>>| {
            let mut p = String::from(".");
            for part in path.iter().chain(name.iter()) {
                p.push('/');
                p.push_str(&String::from_utf8_lossy(part));
            }
            p
        };
        match &event {
            Event::Directory { .. } => {
                writeln!(out, "dr-xr-xr-x {:>12} {}", 0, show(&path, &name))?;
                if let Some(name) = name {
                    path.push(name);
                } else {
                    path.clear();
                }
            }
            Event::File {
                executable, size, ..
            } => {
                let mode = if *executable {
                    "-r-xr-xr-x"
                } else {
                    "-r--r--r--"
                };
                writeln!(out, "{mode} {size:>12} {}", show(&path, &name))?;
            }
            Event::Symlink { target, .. } => {
                let target = String::from_utf8_lossy(target);
                writeln!(
                    out,
                    "lrwxrwxrwx {:>12} {} -> {target}",
                    0,
                    show(&path, &name)
                )?;
            }
            Event::EndDirectory => {
                path.pop();
            }
        }
    }
    Ok(())
}
