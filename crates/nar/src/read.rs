use std::io::{self, BufRead, Read};

use crate::error::{show, NarError};
use crate::wire::{check_entry, padding, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};

/// One step of a NAR, in archive order.
///
/// `name` is the entry name inside the enclosing directory, `None` for the archive's root node.
/// Every [`Event::Directory`] is matched by an [`Event::EndDirectory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Directory {
        name: Option<Vec<u8>>,
    },
    /// A regular file; its `size` bytes of contents follow (see [`NarReader::contents`]).
    File {
        name: Option<Vec<u8>>,
        executable: bool,
        size: u64,
    },
    Symlink {
        name: Option<Vec<u8>>,
        target: Vec<u8>,
    },
    EndDirectory,
}

impl Event {
    /// The entry name, `None` for the root node and for [`Event::EndDirectory`].
    pub fn name(&self) -> Option<&[u8]> {
        match self {
            Event::Directory { name } | Event::File { name, .. } | Event::Symlink { name, .. } => {
                name.as_deref()
            }
            Event::EndDirectory => None,
        }
    }
}

enum State {
    Start,
    /// Inside a regular file's contents.
    File {
        remaining: u64,
        size: u64,
    },
    /// Between entries of the innermost open directory.
    Directory,
    Done,
}

/// A pull parser over a NAR stream.
///
/// Call [`next_event`](Self::next_event) until it returns `None`. After an [`Event::File`], the contents can be
/// read with [`contents`](Self::contents) or [`content_chunk`](Self::content_chunk); whatever is not
/// read is skipped by the next call to `next_event`.
pub struct NarReader<R> {
    r: R,
    offset: u64,
    state: State,
    /// Last entry name seen in each open directory (for the sort check); its length is the depth.
    open_dirs: Vec<Option<Vec<u8>>>,
    /// Bytes handed out by `content_chunk` but not yet consumed from `r`.
    pending_consume: usize,
}

impl<R: BufRead> NarReader<R> {
    pub fn new(r: R) -> Self {
        NarReader {
            r,
            offset: 0,
            state: State::Start,
            open_dirs: Vec::new(),
            pending_consume: 0,
        }
    }

    /// Bytes of the archive consumed so far. Right after an [`Event::File`] this is the offset of the
    /// file's first content byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Current directory depth (0 at the root).
    pub fn depth(&self) -> usize {
        self.open_dirs.len()
    }

    /// True once the root node has been read completely.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Give back the underlying reader, positioned right after what was consumed.
    pub fn into_inner(mut self) -> R {
        self.flush_pending();
        self.r
    }

    pub fn next_event(&mut self) -> Result<Option<Event>, NarError> {
        self.flush_pending();
        loop {
            match self.state {
                State::Start => {
                    let len = self.read_u64()?;
                    if len != MAGIC.len() as u64 {
                        return Err(NarError::BadMagic);
                    }
                    let mut magic = [0u8; 13];
                    self.read_exact(&mut magic)?;
                    self.read_padding(len)?;
                    if magic != MAGIC {
                        return Err(NarError::BadMagic);
                    }
                    return self.read_node(None).map(Some);
                }
                State::File { remaining, size } => {
                    self.skip(remaining)?;
                    self.read_padding(size)?;
                    self.expect(b")")?;
                    self.node_done()?;
                }
                State::Directory => {
                    let token_offset = self.offset;
                    let mut buf = [0u8; 16];
                    let token = self.read_token(&mut buf, "\"entry\" or \")\"")?;
                    if token == b")" {
                        self.open_dirs.pop();
                        self.node_done()?;
                        return Ok(Some(Event::EndDirectory));
                    }
                    if token != b"entry" {
                        return Err(unexpected(token_offset, "\"entry\" or \")\"", token));
                    }
                    self.expect(b"(")?;
                    self.expect(b"name")?;
                    let name_offset = self.offset;
                    let name = self.read_string(MAX_NAME_LEN)?;
                    let previous = self.open_dirs.last().and_then(|p| p.as_deref());
                    check_entry(name_offset, &name, previous)?;
                    *self.open_dirs.last_mut().expect("inside a directory") = Some(name.clone());
                    self.expect(b"node")?;
                    return self.read_node(Some(name)).map(Some);
                }
                State::Done => return Ok(None),
            }
        }
    }

    /// The current file's remaining contents as a reader (empty outside a file).
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { nar: self }
    }

    /// The next slice of the current file's contents, straight from the underlying buffer (no copy);
    /// empty at the end of the file. The returned bytes count as consumed.
    pub fn content_chunk(&mut self) -> Result<&[u8], NarError> {
        self.flush_pending();
        let State::File { remaining, size } = self.state else {
            return Ok(&[]);
        };
        if remaining == 0 {
            return Ok(&[]);
        }
        let offset = self.offset;
        let available = self.r.fill_buf()?;
        if available.is_empty() {
            return Err(NarError::Truncated { offset });
        }
        let n = available
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        self.state = State::File {
            remaining: remaining - n as u64,
            size,
        };
        self.offset += n as u64;
        // The slice borrows the reader's buffer, so the matching `consume` waits for the next call.
        self.pending_consume = n;
        Ok(&available[..n])
    }

    fn flush_pending(&mut self) {
        if self.pending_consume > 0 {
            self.r.consume(self.pending_consume);
            self.pending_consume = 0;
        }
    }

    fn read_node(&mut self, name: Option<Vec<u8>>) -> Result<Event, NarError> {
        self.expect(b"(")?;
        self.expect(b"type")?;
        let type_offset = self.offset;
        let mut buf = [0u8; 16];
        let kind = self.read_token(&mut buf, "a node type")?.to_vec();
        match &kind[..] {
            b"regular" => {
                let field_offset = self.offset;
                let mut buf = [0u8; 16];
                let field = self
                    .read_token(&mut buf, "\"executable\" or \"contents\"")?
                    .to_vec();
                let executable = match &field[..] {
                    b"executable" => {
                        self.expect(b"")?;
                        self.expect(b"contents")?;
                        true
                    }
                    b"contents" => false,
                    other => {
                        return Err(unexpected(
                            field_offset,
                            "\"executable\" or \"contents\"",
                            other,
                        ))
                    }
                };
                let size = self.read_u64()?;
                self.state = State::File {
                    remaining: size,
                    size,
                };
                Ok(Event::File {
                    name,
                    executable,
                    size,
                })
            }
            b"symlink" => {
                self.expect(b"target")?;
                let target = self.read_string(MAX_TARGET_LEN)?;
                self.expect(b")")?;
                self.node_done()?;
                Ok(Event::Symlink { name, target })
            }
            b"directory" => {
                if self.open_dirs.len() >= MAX_DEPTH {
                    return Err(NarError::TooDeep {
                        offset: type_offset,
                        limit: MAX_DEPTH,
                    });
                }
                self.open_dirs.push(None);
                self.state = State::Directory;
                Ok(Event::Directory { name })
            }
            other => Err(unexpected(
                type_offset,
                "\"regular\", \"symlink\" or \"directory\"",
                other,
            )),
        }
    }

    /// A node just ended: close its directory entry, if it was in one.
    fn node_done(&mut self) -> Result<(), NarError> {
        if self.open_dirs.is_empty() {
            self.state = State::Done;
        } else {
            self.expect(b")")?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        let offset = self.offset;
        self.r
            .read_exact(buf)
            .map_err(|e| eof_as_truncated(e, offset))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_padding(&mut self, len: u64) -> Result<(), NarError> {
        let n = padding(len);
        if n > 0 {
            let offset = self.offset;
            let mut pad = [0u8; 8];
            self.read_exact(&mut pad[..n])?;
            if pad[..n].iter().any(|&b| b != 0) {
                return Err(NarError::NonZeroPadding { offset });
            }
        }
        Ok(())
    }

    /// Read a short keyword into `buf`; anything longer than `buf` cannot be a keyword.
    fn read_token<'b>(
        &mut self,
        buf: &'b mut [u8; 16],
        expected: &'static str,
    ) -> Result<&'b [u8], NarError> {
        let offset = self.offset;
        let len = self.read_u64()?;
        if len > buf.len() as u64 {
            return Err(NarError::UnexpectedToken {
                offset,
                expected,
                found: format!("a {len}-byte string"),
            });
        }
        let len = len as usize;
        self.read_exact(&mut buf[..len])?;
        self.read_padding(len as u64)?;
        Ok(&buf[..len])
    }

    fn expect(&mut self, keyword: &'static [u8]) -> Result<(), NarError> {
        let offset = self.offset;
        let mut buf = [0u8; 16];
        let expected = keyword_name(keyword);
        let token = self.read_token(&mut buf, expected)?;
        if token != keyword {
            return Err(unexpected(offset, expected, token));
        }
        Ok(())
    }

    fn read_string(&mut self, limit: u64) -> Result<Vec<u8>, NarError> {
        let offset = self.offset;
        let len = self.read_u64()?;
        if len > limit {
            return Err(NarError::TooLong { offset, len, limit });
        }
        let mut s = vec![0u8; len as usize];
        self.read_exact(&mut s)?;
        self.read_padding(len)?;
        Ok(s)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), NarError> {
        while n > 0 {
            let offset = self.offset;
            let available = self.r.fill_buf()?.len();
            if available == 0 {
                return Err(NarError::Truncated { offset });
            }
            let k = available.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.r.consume(k);
            self.offset += k as u64;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Reader over the current file's contents; see [`NarReader::contents`].
pub struct Contents<'a, R> {
    nar: &'a mut NarReader<R>,
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Contents<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.nar.flush_pending();
        let State::File { remaining, .. } = self.nar.state else {
            return Ok(&[]);
        };
        if remaining == 0 {
            return Ok(&[]);
        }
        let offset = self.nar.offset;
        let available = self.nar.r.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                NarError::Truncated { offset },
            ));
        }
        let n = available
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        Ok(&available[..n])
    }

    fn consume(&mut self, amount: usize) {
        if let State::File { remaining, size } = self.nar.state {
            let amount = (amount as u64).min(remaining);
            self.nar.r.consume(amount as usize);
            self.nar.offset += amount;
            self.nar.state = State::File {
                remaining: remaining - amount,
                size,
            };
        }
    }
}

fn eof_as_truncated(e: io::Error, offset: u64) -> NarError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        NarError::Truncated { offset }
    } else {
        NarError::Io(e)
    }
}

fn unexpected(offset: u64, expected: &'static str, found: &[u8]) -> NarError {
    NarError::UnexpectedToken {
        offset,
        expected,
        found: show(found),
    }
}

fn keyword_name(keyword: &'static [u8]) -> &'static str {
    match keyword {
        b"(" => "\"(\"",
        b")" => "\")\"",
        b"type" => "\"type\"",
        b"contents" => "\"contents\"",
        b"target" => "\"target\"",
        b"name" => "\"name\"",
        b"node" => "\"node\"",
        b"" => "an empty string",
        _ => "a keyword",
    }
}
