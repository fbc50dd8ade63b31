//! Why one path did not deduplicate: strip it and its namesake in the old closure, and show the
//! bytes that still differ, by file and, for ELF files, by section.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::ops::Range;

use goblin::elf::section_header::SHT_NOBITS;
use goblin::elf::Elf;
use refstrip_nix::{NarInfo, StorePath};
use refstrip_source::NarSource;
use refstrip_strip::{ContentDigest, ContentSink, Node, PatchKind, StripOptions};
use serde::Serialize;

use crate::input::resolve;
use crate::SavingsError;

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub new_path: String,
    pub old_path: String,
    pub normalize_build_id: bool,
    /// Regular files in the new path.
    pub files: u64,
    /// Of those, files whose normalized contents equal those of the old file of the same name.
    pub identical_files: u64,
    /// Literal patches (normalized build-ids) the new manifest carries.
    pub literal_patches: u64,
    /// Sum of `differing_bytes` over `residual`.
    pub residual_bytes: u64,
    pub residual: Vec<FileResidual>,
    /// Entries that differ other than by contents: only on one side, other kind, other target.
    pub entries: Vec<String>,
}

/// One file whose normalized contents still differ.
#[derive(Debug, Clone, Serialize)]
pub struct FileResidual {
    /// The normalized path inside the store path (hashes shown as placeholders).
    pub file: String,
    pub old_size: u64,
    pub new_size: u64,
    /// Bytes of the new file that differ from the old file at the same offset (or have no
    /// counterpart), plus bytes only the old file had.
    pub differing_bytes: u64,
    pub elf: bool,
    /// Where the differing bytes are: ELF sections (by name), headers, or `(file)` otherwise.
    pub regions: Vec<(String, u64)>,
}

/// Explain `spec` (a store path or name in `new`) against `old_spec` in `old`, by default the path
/// of the same name there, or else of the same package name and output (a version bump).
pub fn explain(
    old: &dyn NarSource,
    new: &dyn NarSource,
    spec: &str,
    old_spec: Option<&str>,
    options: &StripOptions,
) -> Result<Explanation, SavingsError> {
    let new_info = new.narinfo(&single(new, spec)?)?;
    let old_path = match old_spec {
        Some(s) => single(old, s)?,
        None => single(old, &new.store_dir().display_path(&new_info.store_path))?,
    };
    let old_info = old.narinfo(&old_path)?;

    let old_tree = flatten(&strip_tree(old, &old_info, options, &mut io::sink())?);
    let new_root = strip_tree(new, &new_info, options, &mut io::sink())?;
    let new_tree = flatten(&new_root);

    let mut pairs = Vec::new();
    let mut entries = Vec::new();
    let (mut files, mut identical_files, mut literal_patches) = (0, 0, 0);
    for (name, leaf) in &new_tree {
        if let Leaf::File { literals, .. } = leaf {
            files += 1;
            literal_patches += literals;
        }
        match (old_tree.get(name), leaf) {
            (None, _) => entries.push(format!("{name}: only in the new path")),
            (Some(Leaf::File { digest: a, .. }), Leaf::File { digest: b, .. }) if a == b => {
                identical_files += 1
            }
            (Some(Leaf::File { digest: a, .. }), Leaf::File { digest: b, .. }) => {
                pairs.push((name.clone(), *a, *b))
            }
            (Some(Leaf::Symlink(a)), Leaf::Symlink(b)) if a != b => {
                entries.push(format!("{name}: symlink target {a} -> {b}"))
            }
            (Some(Leaf::Symlink(_)), Leaf::Symlink(_))
            | (Some(Leaf::Directory), Leaf::Directory) => {}
            (Some(_), _) => entries.push(format!("{name}: a different kind of entry")),
        }
    }
    entries.extend(
        old_tree
            .keys()
            .filter(|n| !new_tree.contains_key(*n))
            .map(|n| format!("{n}: only in the old path")),
    );

    // Second pass: keep only the contents that differ, so memory holds those and nothing else.
    let mut keep = Keep {
        wanted: pairs.iter().flat_map(|(_, a, b)| [*a, *b]).collect(),
        ..Keep::default()
    };
    strip_tree(old, &old_info, options, &mut keep)?;
    strip_tree(new, &new_info, options, &mut keep)?;
    let mut residual = Vec::new();
    for (file, a, b) in pairs {
        let (Some(old_bytes), Some(new_bytes)) = (keep.kept.get(&a), keep.kept.get(&b)) else {
            return Err(SavingsError::invalid(
                file,
                "contents vanished between two reads",
            ));
        };
        residual.push(file_residual(file, old_bytes, new_bytes));
    }
    Ok(Explanation {
        new_path: new.store_dir().display_path(&new_info.store_path),
        old_path: old.store_dir().display_path(&old_info.store_path),
        normalize_build_id: options.normalize_build_id,
        files,
        identical_files,
        literal_patches,
        residual_bytes: residual.iter().map(|r| r.differing_bytes).sum(),
        residual,
        entries,
    })
}

impl Explanation {
    /// The explanation for a terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "new: {}\nold: {}", self.new_path, self.old_path);
        let _ = writeln!(
            s,
            "stripped {} build-id normalization: {} files, {} identical after stripping, {} literal patches carried",
            if self.normalize_build_id { "with" } else { "without" },
            self.files,
            self.identical_files,
            self.literal_patches
        );
        let _ = writeln!(
            s,
            "residual: {} bytes in {} files",
            self.residual_bytes,
            self.residual.len()
        );
        for r in &self.residual {
            let _ = writeln!(
                s,
                "  {}{}  {} -> {} bytes, {} differ",
                r.file,
                if r.elf { " (ELF)" } else { "" },
                r.old_size,
                r.new_size,
                r.differing_bytes
            );
            for (region, bytes) in &r.regions {
                let _ = writeln!(s, "      {bytes:>10}  {region}");
            }
        }
        for e in &self.entries {
            let _ = writeln!(s, "  {e}");
        }
        s
    }
}

/// The one path `spec` names in `source`.
fn single(source: &dyn NarSource, spec: &str) -> Result<StorePath, SavingsError> {
    let mut found = resolve(source, spec)?;
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|p| p.to_string()).collect();
        return Err(SavingsError::invalid(
            spec,
            format!(
                "{} paths of that name in {}: {}; name one by its store path",
                found.len(),
                source.describe(),
                names.join(", ")
            ),
        ));
    }
    Ok(found.remove(0))
}

fn strip_tree(
    source: &dyn NarSource,
    info: &NarInfo,
    options: &StripOptions,
    sink: &mut dyn ContentSink,
) -> Result<Node, SavingsError> {
    let what = info.store_path.to_string();
    refstrip_read::pathinfo::strip_nar(source.nar(info)?, info, options, sink)
        .map(|manifest| manifest.root)
        .map_err(|e| SavingsError::invalid(&what, e.to_string()))
}

enum Leaf {
    File {
        digest: ContentDigest,
        literals: u64,
    },
    Symlink(String),
    Directory,
}

/// Every entry of a normalized tree by its normalized path (`.` for the root).
fn flatten(root: &Node) -> BTreeMap<String, Leaf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(".".to_string(), root)];
    while let Some((path, node)) = stack.pop() {
        let leaf = match node {
            Node::File {
                digest, patches, ..
            } => Leaf::File {
                digest: *digest,
                literals: patches
                    .iter()
                    .filter(|p| matches!(p.kind, PatchKind::Literal(_)))
                    .count() as u64,
            },
            Node::Symlink { target, .. } => Leaf::Symlink(String::from_utf8_lossy(target).into()),
            Node::Directory(entries) => {
                for e in entries {
                    let name = String::from_utf8_lossy(&e.name);
                    let child = if path == "." {
                        name.into_owned()
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((child, &e.node));
                }
                Leaf::Directory
            }
        };
        out.insert(path, leaf);
    }
    out
}

/// Keeps the normalized contents of the wanted digests.
#[derive(Default)]
struct Keep {
    wanted: HashSet<ContentDigest>,
    kept: HashMap<ContentDigest, Vec<u8>>,
    current: Vec<u8>,
}

impl ContentSink for Keep {
    fn begin(&mut self, _: u64) -> io::Result<()> {
        self.current.clear();
        Ok(())
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.current.extend_from_slice(data);
        Ok(())
    }
    fn end(&mut self, digest: &ContentDigest) -> io::Result<()> {
        if self.wanted.contains(digest) {
            self.kept.insert(*digest, std::mem::take(&mut self.current));
        }
        Ok(())
    }
}

fn file_residual(file: String, old: &[u8], new: &[u8]) -> FileResidual {
    let runs = differing_runs(old, new);
    let only_old = old.len().saturating_sub(new.len()) as u64;
    let layout = elf_regions(new);
    let mut regions: BTreeMap<String, u64> = BTreeMap::new();
    for run in &runs {
        let mut covered = 0;
        for (name, r) in layout.iter().flatten() {
            let overlap = run.end.min(r.end).saturating_sub(run.start.max(r.start));
            if overlap > 0 {
                *regions.entry(name.clone()).or_default() += overlap;
                covered += overlap;
            }
        }
        let rest = (run.end - run.start).saturating_sub(covered);
        if rest > 0 {
            let name = if layout.is_some() {
                "(outside any section)"
            } else {
                "(file)"
            };
            *regions.entry(name.into()).or_default() += rest;
        }
    }
    if only_old > 0 {
        *regions.entry("(only in the old file)".into()).or_default() += only_old;
    }
    let mut regions: Vec<(String, u64)> = regions.into_iter().collect();
    regions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    FileResidual {
        file,
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        differing_bytes: regions.iter().map(|(_, n)| n).sum(),
        elf: layout.is_some(),
        regions,
    }
}

/// Maximal ranges of offsets of `new` where it differs from `old` (or `old` has no byte).
fn differing_runs(old: &[u8], new: &[u8]) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for (i, b) in new.iter().enumerate() {
        if old.get(i) != Some(b) {
            let i = i as u64;
            match runs.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => runs.push(i..i + 1),
            }
        }
    }
    runs
}

/// File ranges of an ELF file's headers and sections (those that occupy file bytes), by name;
/// `None` when goblin cannot parse the file as ELF.
fn elf_regions(bytes: &[u8]) -> Option<Vec<(String, Range<u64>)>> {
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let elf = Elf::parse(bytes).ok()?;
    let h = &elf.header;
    let span = |start: u64, len: u64| start..start.saturating_add(len);
    let mut out = vec![
        ("ELF header".to_string(), span(0, h.e_ehsize.into())),
        (
            "program headers".to_string(),
            span(h.e_phoff, u64::from(h.e_phnum) * u64::from(h.e_phentsize)),
        ),
        (
            "section headers".to_string(),
            span(h.e_shoff, u64::from(h.e_shnum) * u64::from(h.e_shentsize)),
        ),
    ];
    for sh in &elf.section_headers {
        if sh.sh_type == SHT_NOBITS || sh.sh_size == 0 {
            continue;
        }
        let name = elf
            .shdr_strtab
            .get_at(sh.sh_name)
            .unwrap_or("(unnamed section)");
        out.push((name.to_string(), span(sh.sh_offset, sh.sh_size)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_changed_and_appended_bytes() {
        assert_eq!(differing_runs(b"abcdef", b"abXdeY"), vec![2..3, 5..6]);
        assert_eq!(differing_runs(b"ab", b"abcd"), vec![2..4]);
        assert!(differing_runs(b"same", b"same").is_empty());
    }

    #[test]
    fn non_elf_residual_is_attributed_to_the_file() {
        let r = file_residual("x".into(), b"hello world!", b"hellO world");
        assert!(!r.elf);
        assert_eq!(r.differing_bytes, 2);
        assert_eq!(
            r.regions,
            vec![
                ("(file)".to_string(), 1),
                ("(only in the old file)".to_string(), 1)
            ]
        );
    }

    #[test]
    fn garbage_with_an_elf_magic_is_not_elf() {
        let mut junk = b"\x7fELF".to_vec();
        junk.extend([0xffu8; 40]);
        assert!(elf_regions(&junk).is_none());
        let r = file_residual("junk".into(), &junk, &[0u8; 44]);
        assert_eq!(r.differing_bytes, 44);
    }
}
