//! The inode table: every store path's tree, with restored names and targets, built from
//! manifests alone before the file system is mounted (it never changes afterwards).

use refstrip_read::PathRecord;
use refstrip_strip::{apply_all, ContentDigest, Entry, Node, Patch, RefTable};

/// The root directory's inode number (FUSE's fixed root).
pub const ROOT: u64 = 1;

pub enum Inode {
    /// Entries sorted by restored name (so lookups can bisect), with their inode numbers.
    Dir {
        parent: u64,
        entries: Vec<(Vec<u8>, u64)>,
    },
    File(FileNode),
    Symlink {
        target: Vec<u8>,
    },
}

pub struct FileNode {
    /// Index of the store path (its record) the file belongs to.
    pub path: usize,
    pub executable: bool,
    pub size: u64,
    pub digest: ContentDigest,
    pub patches: Vec<Patch>,
}

/// Store paths, flattened into inodes: inode `n` is `inodes[n - 1]`.
pub struct Tree {
    pub inodes: Vec<Inode>,
    /// The records, their manifests' trees moved into `inodes` (what remains is what reads need:
    /// reference tables and object locations).
    pub paths: Vec<PathRecord>,
}

impl Tree {
    /// Lay `records` out under one root directory named by their basenames.
    pub fn build(mut records: Vec<PathRecord>) -> Result<Tree, String> {
        records.sort_by(|a, b| a.manifest.basename().cmp(b.manifest.basename()));
        let mut inodes = vec![Inode::Dir {
            parent: ROOT,
            entries: Vec::new(),
        }];
        let mut top = Vec::with_capacity(records.len());
        for (index, record) in records.iter_mut().enumerate() {
            let basename = record.manifest.basename().to_vec();
            let at = String::from_utf8_lossy(&basename).into_owned();
            check_name(&basename).map_err(|why| format!("{at}: {why}"))?;
            let root = std::mem::replace(&mut record.manifest.root, Node::Directory(Vec::new()));
            let ino = add(&mut inodes, root, ROOT, &record.manifest.refs, index, &at)?;
            top.push((basename, ino));
        }
        if top.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("two records describe the same store path".into());
        }
        inodes[0] = Inode::Dir {
            parent: ROOT,
            entries: top,
        };
        Ok(Tree {
            inodes,
            paths: records,
        })
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        ino.checked_sub(1)
            .and_then(|i| self.inodes.get(usize::try_from(i).ok()?))
    }
}

/// Add `node` (and everything below it) to `inodes`; returns its inode number. `at` names it in
/// errors. Recursion depth is bounded by the manifest decoder (4096).
fn add(
    inodes: &mut Vec<Inode>,
    node: Node,
    parent: u64,
    refs: &RefTable,
    path: usize,
    at: &str,
) -> Result<u64, String> {
    let ino = inodes.len() as u64 + 1;
    match node {
        Node::File {
            executable,
            size,
            digest,
            patches,
        } => inodes.push(Inode::File(FileNode {
            path,
            executable,
            size,
            digest,
            patches,
        })),
        Node::Symlink { target, patches } => inodes.push(Inode::Symlink {
            target: apply_all(&target, &patches, refs),
        }),
        Node::Directory(children) => {
            // Reserve the slot so children get higher numbers; filled in below.
            inodes.push(Inode::Dir {
                parent,
                entries: Vec::new(),
            });
            let mut entries = Vec::with_capacity(children.len());
            for Entry {
                name,
                name_patches,
                node,
            } in children
            {
                let name = apply_all(&name, &name_patches, refs);
                let child_at = format!("{at}/{}", String::from_utf8_lossy(&name));
                check_name(&name).map_err(|why| format!("{child_at}: {why}"))?;
                let child = add(inodes, node, ino, refs, path, &child_at)?;
                entries.push((name, child));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(format!(
                    "{at}: two entries named {:?}",
                    String::from_utf8_lossy(&w[0].0)
                ));
            }
            inodes[ino as usize - 1] = Inode::Dir { parent, entries };
        }
    }
    Ok(ino)
}

/// A name the kernel can show: what Nix's NAR reader accepts.
fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err("invalid file name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use refstrip_strip::{Manifest, PatchKind};

    const ME: &[u8] = b"0000000000000000000000000000000z-me";
    const DEP: &[u8] = b"1111111111111111111111111111111a-dep";

    fn record(root: Node) -> PathRecord {
        let manifest = Manifest {
            store_dir: b"/nix/store".to_vec(),
            refs: RefTable::new(ME, &[DEP.to_vec()]).unwrap(),
            references: vec![DEP.to_vec()],
            nar_hash: [0; 32],
            nar_size: 0,
            info: Vec::new(),
            root,
        };
        PathRecord {
            manifest,
            objects: refstrip_read::ObjectMap::new().into(),
        }
    }

    fn file() -> Node {
        Node::File {
            executable: false,
            size: 0,
            digest: ContentDigest::of(b""),
            patches: Vec::new(),
        }
    }

    fn entry(name: &[u8], name_patches: Vec<Patch>, node: Node) -> Entry {
        Entry {
            name: name.to_vec(),
            name_patches,
            node,
        }
    }

    #[test]
    fn names_and_targets_are_restored_and_sorted() {
        let placeholder = refstrip_strip::PLACEHOLDER;
        let mut link_name = placeholder.to_vec();
        link_name.extend_from_slice(b"-link");
        let mut target = b"/nix/store/".to_vec();
        target.extend_from_slice(&placeholder);
        target.extend_from_slice(b"-dep/bin");
        let ref_at = |offset, i| Patch {
            offset,
            kind: PatchKind::Ref(i),
        };
        let root = Node::Directory(vec![
            entry(
                &link_name,
                vec![ref_at(0, 1)],
                Node::Symlink {
                    target,
                    patches: vec![ref_at(11, 1)],
                },
            ),
            entry(b"b", Vec::new(), file()),
        ]);
        let tree = Tree::build(vec![record(root)]).unwrap();
        let Some(Inode::Dir { entries, .. }) = tree.get(ROOT) else {
            panic!("root is a directory")
        };
        assert_eq!(entries[0].0, ME);
        let Some(Inode::Dir { entries, parent }) = tree.get(entries[0].1) else {
            panic!("the path is a directory")
        };
        assert_eq!(*parent, ROOT);
        // Restored "1111…-link" sorts before "b"; normalized "eeee…-link" sorted after it.
        assert_eq!(entries[0].0, [&DEP[..32], b"-link"].concat());
        assert_eq!(entries[1].0, b"b");
        let Some(Inode::Symlink { target }) = tree.get(entries[0].1) else {
            panic!("a symlink")
        };
        assert_eq!(
            target,
            b"/nix/store/1111111111111111111111111111111a-dep/bin"
        );
        assert!(tree.get(0).is_none() && tree.get(99).is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [&b".."[..], b"a/b", b"", b"a\0"] {
            let root = Node::Directory(vec![entry(bad, Vec::new(), file())]);
            assert!(Tree::build(vec![record(root)]).is_err(), "{bad:?}");
        }
        let twice = Node::Directory(vec![
            entry(b"a", Vec::new(), file()),
            entry(b"a", Vec::new(), file()),
        ]);
        assert!(Tree::build(vec![record(twice)]).is_err());
    }
}
