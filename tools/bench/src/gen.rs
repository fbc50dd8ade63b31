//! A deterministic, realistic-looking store-path-like tree for the NAR benchmarks.
//!
//! Shape (for a target of S bytes): about half of S in a few large files (100–128 MiB, only when
//! S ≥ 250 MB), a quarter in 1 MiB files, the rest in many small files (0–64 KiB, skewed towards
//! small, some empty), spread over nested directories (`bin/`, `lib/<pkg>/…`, `share/…`), with
//! executables and symlinks (relative and absolute `/nix/store/…` targets). Contents are
//! deterministic and never all zeros: compressible text (shell/pkg-config-like lines mentioning
//! store paths) and "binary" data (blocks of pseudo-random bytes, sparse tables and small
//! integers, as in ELF files).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

const MIB: u64 = 1 << 20;
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const WORDS: &[&str] = &[
    "export",
    "PATH",
    "prefix",
    "exec_prefix",
    "libdir",
    "includedir",
    "Name:",
    "Version:",
    "Libs:",
    "Cflags:",
    "if",
    "then",
    "else",
    "fi",
    "for",
    "do",
    "done",
    "echo",
    "set",
    "-e",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "library",
    "compression",
    "archive",
    "function",
    "return",
    "static",
    "const",
    "int",
    "char",
    "void",
    "struct",
    "#include",
    "#define",
    "=",
    "{",
    "}",
    "(",
    ")",
    ";",
    "--with-zlib",
    "LD_LIBRARY_PATH",
];
const PACKAGES: &[&str] = &[
    "zlib",
    "glibc",
    "openssl",
    "python3",
    "perl",
    "bash",
    "coreutils",
    "ncurses",
    "libffi",
    "gcc-lib",
];

/// SplitMix64: small, fast, good enough for filler bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A 32-character nix-base32 hash part.
    pub fn hash_part(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for b in out.iter_mut() {
            *b = NIX_BASE32[self.below(32) as usize];
        }
        out
    }
}

/// Store paths the text files mention (as real closures do).
fn fake_store_paths(rng: &mut Rng) -> Vec<String> {
    PACKAGES
        .iter()
        .map(|p| {
            format!(
                "/nix/store/{}-{p}",
                String::from_utf8_lossy(&rng.hash_part())
            )
        })
        .collect()
}

/// Fill `buf` with text lines.
fn fill_text(rng: &mut Rng, paths: &[String], buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    while buf.len() < size {
        let words = 3 + rng.below(10);
        for i in 0..words {
            if i > 0 {
                buf.push(b' ');
            }
            if rng.below(12) == 0 {
                buf.extend_from_slice(paths[rng.below(paths.len() as u64) as usize].as_bytes());
                buf.extend_from_slice(b"/lib");
            } else {
                buf.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            }
        }
        buf.push(b'\n');
    }
    buf.truncate(size);
}

/// Fill `buf` with binary-looking data: 4 KiB blocks of random bytes, sparse tables, small
/// little-endian integers, and an occasional embedded store path (an RPATH, a string table).
fn fill_binary(rng: &mut Rng, paths: &[String], buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    buf.resize(size, 0);
    for block in buf.chunks_mut(4096) {
        match rng.below(10) {
            0..=3 => {
                for word in block.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    word.copy_from_slice(&v[..word.len()]);
                }
            }
            4..=5 => {
                for _ in 0..block.len() / 64 {
                    let at = rng.below(block.len() as u64) as usize;
                    block[at] = rng.next() as u8;
                }
            }
            6..=8 => {
                for word in block.chunks_mut(4) {
                    let v = (rng.below(4096) as u32).to_le_bytes();
                    word.copy_from_slice(&v[..word.len()]);
                }
            }
            _ => {
                let p = paths[rng.below(paths.len() as u64) as usize].as_bytes();
                for (dst, src) in block
                    .iter_mut()
                    .zip(p.iter().chain(b"/lib\0".iter()).cycle())
                {
                    *dst = *src;
                }
            }
        }
    }
}

struct Gen {
    rng: Rng,
    paths: Vec<String>,
    buf: Vec<u8>,
    files: u64,
    symlinks: u64,
    dirs: u64,
    bytes: u64,
}

impl Gen {
    fn file(&mut self, path: &Path, size: u64, text: bool, executable: bool) -> anyhow::Result<()> {
        let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(4 * MIB) as usize;
            if text {
                fill_text(&mut self.rng, &self.paths, &mut self.buf, n);
            } else {
                fill_binary(&mut self.rng, &self.paths, &mut self.buf, n);
            }
            f.write_all(&self.buf)?;
            left -= n as u64;
        }
        if executable {
            f.set_permissions(fs::Permissions::from_mode(0o755))?;
        }
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    fn dir(&mut self, path: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        self.dirs += 1;
        Ok(())
    }
}

/// Facts about a generated tree.
pub struct TreeFacts {
    pub files: u64,
    pub symlinks: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Generate the tree at `root` (which must not exist) with about `size_mb` MB of file contents.
pub fn generate(root: &Path, size_mb: u64) -> anyhow::Result<TreeFacts> {
    if fs::symlink_metadata(root).is_ok() {
        bail!("{} exists; remove it or pass it as --tree", root.display());
    }
    let target = size_mb * 1_000_000;
    let mut rng = Rng::new(0x7265_6673_7472_6970 ^ size_mb);
    let paths = fake_store_paths(&mut rng);
    let mut g = Gen {
        rng,
        paths,
        buf: Vec::new(),
        files: 0,
        symlinks: 0,
        dirs: 0,
        bytes: 0,
    };
    let tmp = PathBuf::from(format!("{}.generating", root.display()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    g.dir(&tmp)?;
    for d in [
        "bin",
        "lib",
        "libexec",
        "include",
        "share/doc",
        "share/man/man1",
        "share/data",
        "nix-support",
    ] {
        g.dir(&tmp.join(d))?;
    }

    // A few large files (≥ 100 MiB), about half the size, when the target allows.
    let large_budget = target / 2;
    let mut large = 0u64;
    let mut n = 0;
    while target >= 250_000_000 && large + 100 * MIB <= large_budget.max(100 * MIB) {
        let size = 100 * MIB + g.rng.below(28 * MIB);
        let p = tmp.join(format!("share/data/blob-{n}.bin"));
        g.file(&p, size, false, false)?;
        large += size;
        n += 1;
    }

    // 1 MiB files: a quarter (libraries, executables, compressed data).
    let medium_budget = (target - large.min(target)) / 2;
    let mut medium = 0u64;
    let mut n = 0;
    while medium + MIB <= medium_budget {
        let pkg = PACKAGES[n % PACKAGES.len()];
        let (p, exe) = if n % 3 == 0 {
            (tmp.join(format!("bin/{pkg}-tool-{n}")), true)
        } else {
            let d = tmp.join(format!("lib/{pkg}"));
            if !d.exists() {
                g.dir(&d)?;
            }
            (d.join(format!("lib{pkg}-{n}.so.1.{}", n % 7)), n % 2 == 0)
        };
        g.file(&p, MIB, false, exe)?;
        medium += MIB;
        n += 1;
    }

    // Many small files (0..64 KiB, skewed small) in nested directories, with symlinks.
    let mut small_total = large + medium;
    let mut n = 0u64;
    let mut dir = tmp.join("share/doc");
    while small_total < target {
        let in_dir = n % 40;
        if in_dir == 0 {
            // A new nested directory, 1..6 levels below one of the top-level ones.
            let top =
                ["lib", "share/doc", "share/data", "include", "libexec"][g.rng.below(5) as usize];
            let mut d = tmp.join(top);
            for level in 0..1 + g.rng.below(6) {
                d.push(format!(
                    "{}-{}",
                    PACKAGES[g.rng.below(PACKAGES.len() as u64) as usize],
                    level + n / 40
                ));
            }
            g.dir(&d)?;
            dir = d;
        }
        let size = if g.rng.below(50) == 0 {
            0
        } else {
            (65536.0 * g.rng.unit().powi(3)) as u64
        };
        let text = g.rng.below(3) != 0;
        let exe = g.rng.below(7) == 0;
        let ext = if text { "txt" } else { "o" };
        g.file(&dir.join(format!("f{n}.{ext}")), size, text, exe)?;
        small_total += size;
        if g.rng.below(20) == 0 {
            let link = dir.join(format!("link{n}"));
            if g.rng.below(2) == 0 {
                symlink(format!("f{n}.{ext}"), &link)?;
            } else {
                let p = &g.paths[g.rng.below(g.paths.len() as u64) as usize];
                symlink(format!("{p}/lib/lib{n}.so"), &link)?;
            }
            g.symlinks += 1;
        }
        n += 1;
    }
    fs::write(
        tmp.join("nix-support/propagated-build-inputs"),
        g.paths.join(" ") + "\n",
    )?;
    g.files += 1;
    fs::rename(&tmp, root)?;
    Ok(TreeFacts {
        files: g.files,
        symlinks: g.symlinks,
        dirs: g.dirs,
        bytes: g.bytes,
    })
}

/// Count what is in an existing tree.
pub fn facts(root: &Path) -> anyhow::Result<TreeFacts> {
    let mut f = TreeFacts {
        files: 0,
        symlinks: 0,
        dirs: 0,
        bytes: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if m.is_symlink() {
            f.symlinks += 1;
        } else if m.is_file() {
            f.files += 1;
            f.bytes += m.len();
        } else if m.is_dir() {
            f.dirs += 1;
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(f)
}
