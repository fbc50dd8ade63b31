//! Streaming codec for the Nix Archive (NAR) format.
//!
//! A NAR is Nix's canonical serialisation of a filesystem tree: regular files (with an executable bit),
//! symlinks and directories whose entries are sorted bytewise, with every string length-prefixed (u64
//! little endian) and zero-padded to 8 bytes. Its SHA-256 is the `NarHash` of a store path, so every
//! byte matters.
//!
//! This crate reads and writes that format as a stream of [`Event`]s and never holds a whole archive
//! in memory: file contents flow through [`NarReader::contents`] and [`NarWriter::write_contents`].
//! [`dump`] and [`unpack`] connect the codec to the filesystem the way `nix-store --dump` and
//! `nix-store --restore` do.
//!
//! The reader is strict: it rejects everything Nix rejects (bad magic, non-zero padding, entry names
//! that are empty, `.`, `..` or contain `/` or NUL, unsorted or duplicate entries) and bounds every
//! allocation, so hostile input yields a [`NarError`], never a panic or a huge allocation.
//!
//! ```
//! use refstrip_nar::{NarReader, NarWriter, Event};
//!
//! let mut nar = Vec::new();
//! let mut w = NarWriter::new(&mut nar);
//! w.directory(None).unwrap();
//! w.file(Some(b"hello"), false, 5).unwrap();
//! w.write_contents(b"world").unwrap();
//! w.end_directory().unwrap();
//! w.finish().unwrap();
//!
//! let mut r = NarReader::new(&nar[..]);
//! assert_eq!(r.next_event().unwrap(), Some(Event::Directory { name: None }));
//! assert!(matches!(r.next_event().unwrap(), Some(Event::File { size: 5, .. })));
//! ```

mod dump;
mod error;
mod read;
mod unpack;
mod wire;
mod write;

pub use dump::dump;
pub use error::NarError;
pub use read::{Contents, Event, NarReader};
pub use unpack::unpack;
pub use wire::{validate_name, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
pub use write::NarWriter;

/// Copy a NAR event by event from `reader` to `writer`, re-validating it on both sides.
pub fn copy<R: std::io::BufRead, W: std::io::Write>(
    reader: &mut NarReader<R>,
    writer: &mut NarWriter<W>,
) -> Result<(), NarError> {
    while let Some(event) = reader.next_event()? {
        writer.event(&event)?;
        if let Event::File { .. } = event {
            loop {
                let chunk = reader.content_chunk()?;
                if chunk.is_empty() {
                    break;
                }
                writer.write_contents(chunk)?;
            }
        }
    }
    Ok(())
}
