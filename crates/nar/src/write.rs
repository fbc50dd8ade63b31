use std::io::Write;

use crate::error::NarError;
use crate::read::Event;
use crate::wire::{check_entry, padding, MAGIC};

const ZEROS: [u8; 8] = [0; 8];

enum State {
    Start,
    File { remaining: u64, size: u64 },
    Directory,
    Done,
}

/// A streaming NAR encoder that enforces the same rules as [`NarReader`](crate::NarReader):
/// the output is always a NAR that Nix accepts.
///
/// The first node is the root and takes `name: None`; nodes inside a directory take their entry
/// name, in strictly increasing bytewise order. After [`file`](Self::file), exactly `size` bytes
/// must be given to [`write_contents`](Self::write_contents).
pub struct NarWriter<W> {
    w: W,
    offset: u64,
    state: State,
    open_dirs: Vec<Option<Vec<u8>>>,
}

impl<W: Write> NarWriter<W> {
    pub fn new(w: W) -> Self {
        NarWriter {
            w,
            offset: 0,
            state: State::Start,
            open_dirs: Vec::new(),
        }
    }

    /// Bytes written so far; right after [`file`](Self::file) this is the offset of its contents.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn directory(&mut self, name: Option<&[u8]>) -> Result<(), NarError> {
        self.begin_node(name, b"directory")?;
        self.open_dirs.push(None);
        self.state = State::Directory;
        Ok(())
    }

    pub fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
    ) -> Result<(), NarError> {
        self.begin_node(name, b"regular")?;
        if executable {
            self.put_str(b"executable")?;
            self.put_str(b"")?;
        }
        self.put_str(b"contents")?;
        self.put(&size.to_le_bytes())?;
        self.state = State::File {
            remaining: size,
            size,
        };
        if size == 0 {
            self.end_file(0)?;
        }
        Ok(())
    }

    /// Write the current file's next bytes. An empty write is always a no-op.
    pub fn write_contents(&mut self, data: &[u8]) -> Result<(), NarError> {
        if data.is_empty() {
            return Ok(());
        }
        let State::File { remaining, size } = self.state else {
            return Err(NarError::Misuse("file contents written outside a file"));
        };
        if data.len() as u64 > remaining {
            return Err(NarError::SizeMismatch {
                declared: size,
                written: size - remaining + data.len() as u64,
            });
        }
        self.put(data)?;
        let remaining = remaining - data.len() as u64;
        self.state = State::File { remaining, size };
        if remaining == 0 {
            self.end_file(size)?;
        }
        Ok(())
    }

    /// Account for `len` bytes of the current file's contents as [`write_contents`] would, without
    /// writing them: the caller puts them into the output itself, right after everything this
    /// writer wrote so far. For passing large contents on without copying them through here.
    ///
    /// [`write_contents`]: Self::write_contents
    pub fn skip_contents(&mut self, len: u64) -> Result<(), NarError> {
        if len == 0 {
            return Ok(());
        }
        let State::File { remaining, size } = self.state else {
            return Err(NarError::Misuse("file contents written outside a file"));
        };
        if len > remaining {
            return Err(NarError::SizeMismatch {
                declared: size,
                written: size - remaining + len,
            });
        }
        self.offset += len;
        let remaining = remaining - len;
        self.state = State::File { remaining, size };
        if remaining == 0 {
            self.end_file(size)?;
        }
        Ok(())
    }

    /// The output, e.g. to take what was written so far out of a `Vec`.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    pub fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), NarError> {
        self.begin_node(name, b"symlink")?;
        self.put_str(b"target")?;
        self.put_str(target)?;
        self.put_str(b")")?;
        self.node_done()
    }

    pub fn end_directory(&mut self) -> Result<(), NarError> {
        if !matches!(self.state, State::Directory) {
            return Err(NarError::Misuse("end_directory outside a directory"));
        }
        self.put_str(b")")?;
        self.open_dirs.pop();
        self.node_done()
    }

    /// Write one reader [`Event`]; a file's contents must follow through `write_contents`.
    pub fn event(&mut self, event: &Event) -> Result<(), NarError> {
        match event {
            Event::Directory { name } => self.directory(name.as_deref()),
            Event::File {
                name,
                executable,
                size,
            } => self.file(name.as_deref(), *executable, *size),
            Event::Symlink { name, target } => self.symlink(name.as_deref(), target),
            Event::EndDirectory => self.end_directory(),
        }
    }

    /// Check the archive is complete, flush and give back the writer.
    pub fn finish(mut self) -> Result<W, NarError> {
        match self.state {
            State::Done => {
                self.w.flush()?;
                Ok(self.w)
            }
            State::File { remaining, size } => Err(NarError::SizeMismatch {
                declared: size,
                written: size - remaining,
            }),
            _ => Err(NarError::Misuse(
                "archive finished before its root node was complete",
            )),
        }
    }

    fn begin_node(&mut self, name: Option<&[u8]>, kind: &[u8]) -> Result<(), NarError> {
        match (&self.state, name) {
            (State::Start, None) => self.put_str(MAGIC)?,
            (State::Start, Some(_)) => return Err(NarError::Misuse("the root node has no name")),
            (State::Directory, Some(name)) => {
                let previous = self.open_dirs.last().and_then(|p| p.as_deref());
                check_entry(self.offset, name, previous)?;
                *self.open_dirs.last_mut().expect("inside a directory") = Some(name.to_vec());
                self.put_str(b"entry")?;
                self.put_str(b"(")?;
                self.put_str(b"name")?;
                self.put_str(name)?;
                self.put_str(b"node")?;
            }
            (State::Directory, None) => {
                return Err(NarError::Misuse("a directory entry needs a name"))
            }
            (State::File { .. }, _) => {
                return Err(NarError::Misuse(
                    "new node before the file's contents were complete",
                ))
            }
            (State::Done, _) => {
                return Err(NarError::Misuse("node after the root node was complete"))
            }
        }
        self.put_str(b"(")?;
        self.put_str(b"type")?;
        self.put_str(kind)
    }

    fn end_file(&mut self, size: u64) -> Result<(), NarError> {
        self.put(&ZEROS[..padding(size)])?;
        self.put_str(b")")?;
        self.node_done()
    }

    fn node_done(&mut self) -> Result<(), NarError> {
        if self.open_dirs.is_empty() {
            self.state = State::Done;
        } else {
            self.put_str(b")")?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.w.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn put_str(&mut self, s: &[u8]) -> Result<(), NarError> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&ZEROS[..padding(s.len() as u64)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contents spliced in by the caller after `skip_contents` give the same NAR, byte for byte.
    #[test]
    fn skipped_contents_spliced_in_give_the_same_nar() {
        let files: [&[u8]; 3] = [b"", b"abc", b"0123456789abcdef!"];
        let mut whole = NarWriter::new(Vec::new());
        let mut framing = NarWriter::new(Vec::new());
        let mut spliced = Vec::new();
        whole.directory(None).unwrap();
        framing.directory(None).unwrap();
        for (i, data) in files.iter().enumerate() {
            let name = [b'a' + i as u8];
            whole.file(Some(&name), false, data.len() as u64).unwrap();
            whole.write_contents(data).unwrap();
            framing.file(Some(&name), false, data.len() as u64).unwrap();
            for part in data.chunks(5) {
                spliced.append(framing.get_mut());
                spliced.extend_from_slice(part);
                framing.skip_contents(part.len() as u64).unwrap();
            }
        }
        assert!(matches!(framing.skip_contents(1), Err(NarError::Misuse(_))));
        whole.end_directory().unwrap();
        framing.end_directory().unwrap();
        assert_eq!(framing.offset(), whole.offset());
        spliced.append(&mut framing.finish().unwrap());
        assert_eq!(spliced, whole.finish().unwrap());

        let mut over = NarWriter::new(Vec::new());
        over.file(None, false, 2).unwrap();
        assert!(matches!(
            over.skip_contents(3),
            Err(NarError::SizeMismatch { .. })
        ));
    }
}
