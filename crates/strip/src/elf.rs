//! Bytes of ELF files that are derived from content containing references.
//!
//! The linker computes `.note.gnu.build-id` over the output while it still contains store-path
//! hashes, so it changes in every rebuild even when nothing else does. It is found through the
//! program headers (`PT_NOTE` segments), which sit at the start of the file, so only a bounded head
//! of the file is needed and contents stay streamable.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_NOTE};
use goblin::elf::Elf;

/// How much of a file's head is kept in memory to look for derived fields.
pub const HEAD_LEN: usize = 64 * 1024;

const NT_GNU_BUILD_ID: u32 = 3;

/// The byte range of the GNU build-id descriptor, if `head` (the first bytes of a file) is an ELF
/// file whose build-id note lies within it. Anything goblin cannot parse is treated as plain bytes.
pub fn build_id_range(head: &[u8]) -> Option<std::ops::Range<usize>> {
    if !head.starts_with(b"\x7fELF") {
        return None;
    }
    let header = Elf::parse_header(head).ok()?;
    let container = header.container().ok()?;
    let endian = header.endianness().ok()?;
    let ctx = Ctx::new(container, endian);
    let phoff = usize::try_from(header.e_phoff).ok()?;
    let phnum = header.e_phnum as usize;
    let phentsize = match container {
        Container::Big => 56,
        Container::Little => 32,
    };
    if phnum == 0 || phoff.checked_add(phnum.checked_mul(phentsize)?)? > head.len() {
        return None;
    }
    let phdrs = ProgramHeader::parse(head, phoff, phnum, ctx).ok()?;
    phdrs
        .iter()
        .filter(|ph| ph.p_type == PT_NOTE)
        .find_map(|ph| {
            let start = usize::try_from(ph.p_offset).ok()?;
            let end = start.checked_add(usize::try_from(ph.p_filesz).ok()?)?;
            let align = if ph.p_align == 8 { 8 } else { 4 };
            find_build_id(head.get(start..end)?, align, endian)
                .map(|r| r.start + start..r.end + start)
        })
}

/// Walk the notes of one `PT_NOTE` segment: (namesz, descsz, type, name, desc), each padded.
fn find_build_id(notes: &[u8], align: usize, endian: Endian) -> Option<std::ops::Range<usize>> {
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = notes.get(at..at + 4)?.try_into().ok()?;
        Some(if endian.is_little() {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let pad = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let kind = word(at + 8)?;
        let name_start = at + 12;
        let desc_start = name_start.checked_add(pad(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID
            && &notes[name_start..name_start + namesz.min(4)] == b"GNU\0"
            && descsz > 0
        {
            return Some(desc_start..desc_end);
        }
        at = desc_start.checked_add(pad(descsz)?)?;
    }
    None
}
