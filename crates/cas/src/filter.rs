//! The x86 branch filter of pack blocks (spec §6): relative call/jump targets become absolute.
//!
//! x86 code calls the same function from many places; as relative displacements (`E8 rel32`,
//! `E9 rel32`) those calls are all different bytes, as absolute targets they repeat, which an LZ
//! compressor turns into matches (the idea of xz's BCJ filter). The conversion is a bijection on
//! byte strings of a given length: it changes no length, only converts a displacement whose top
//! byte is `00` or `FF` (a sign-extended 25-bit number) into another such number, and never
//! changes a byte an earlier test read, so [`decode`] finds exactly the positions [`encode`]
//! converted.

/// The 25-bit two's-complement wrap: bits 0..25 of `v`, sign-extended from bit 24.
fn wrap25(v: u32) -> u32 {
    ((v << 7) as i32 >> 7) as u32
}

/// Walk `bytes`, converting every candidate displacement with `convert(displacement, position
/// after it)`. A candidate is 5 bytes `E8|E9 d0 d1 d2 d3` with `d3` 0x00 or 0xFF, unless an
/// opcode byte in the 3 bytes before it was not converted: that opcode's test read a byte of this
/// field, which converting would change, so a decoder would judge that opcode differently. After a
/// candidate the walk resumes behind it, otherwise at the next byte. Every test thus reads bytes
/// that look the same before and after the walk.
fn walk(bytes: &mut [u8], convert: impl Fn(u32, u32) -> u32) {
    let mut i = 0;
    // Position of the last opcode byte left alone (its test read `bytes[p + 4]`).
    let mut unconverted: Option<usize> = None;
    // memchr skips the stretches without an opcode byte in SIMD steps (decoding runs on clients).
    while let Some(found) = memchr::memchr2(0xE8, 0xE9, &bytes[i..]) {
        i += found;
        if i + 5 > bytes.len() {
            break;
        }
        if matches!(bytes[i + 4], 0x00 | 0xFF) && unconverted.is_none_or(|p| p + 3 < i) {
            let field = &mut bytes[i + 1..i + 5];
            let v = u32::from_le_bytes(field.try_into().expect("4 bytes"));
            // Positions count modulo 2^32 (blocks are far smaller); only bits 0..25 matter.
            let converted = wrap25(convert(v, (i + 5) as u32));
            field.copy_from_slice(&converted.to_le_bytes());
            i += 5;
        } else {
            unconverted = Some(i);
            i += 1;
        }
    }
}

/// Relative → absolute, in place.
pub fn encode(bytes: &mut [u8]) {
    walk(bytes, |rel, next| rel.wrapping_add(next));
}

/// Absolute → relative, in place: the inverse of [`encode`]. One pass, no allocation.
pub fn decode(bytes: &mut [u8]) {
    walk(bytes, |abs, next| abs.wrapping_sub(next));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn calls_to_one_target_become_equal_bytes() {
        // Two calls to offset 100, from 10 and from 40.
        let mut code = vec![0x90u8; 128];
        code[10] = 0xE8;
        code[11..15].copy_from_slice(&(100i32 - 15).to_le_bytes());
        code[40] = 0xE8;
        code[41..45].copy_from_slice(&(100i32 - 45).to_le_bytes());
        let original = code.clone();
        encode(&mut code);
        assert_eq!(code[11..15], 100u32.to_le_bytes());
        assert_eq!(code[41..45], 100u32.to_le_bytes());
        decode(&mut code);
        assert_eq!(code, original);
    }

    #[test]
    fn a_displacement_beyond_25_bits_is_left_alone() {
        let mut code = vec![0xE8, 0x00, 0x00, 0x00, 0x7F, 0xE9, 1, 2, 3];
        let original = code.clone();
        encode(&mut code);
        assert_eq!(code, original);
    }

    fn code_like() -> impl Strategy<Value = Vec<u8>> {
        // Plenty of E8/E9 and 00/FF bytes, so candidates overlap and chain.
        prop::collection::vec(
            prop_oneof![
                Just(0xE8u8),
                Just(0xE9),
                Just(0x00),
                Just(0xFF),
                any::<u8>()
            ],
            0..600,
        )
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(bytes in code_like()) {
            let mut filtered = bytes.clone();
            encode(&mut filtered);
            prop_assert_eq!(filtered.len(), bytes.len());
            decode(&mut filtered);
            prop_assert_eq!(filtered, bytes);
        }

        #[test]
        fn encode_inverts_decode(bytes in code_like()) {
            // A bijection both ways: any block a hostile store serves decodes to something that
            // encodes back to it (so decoding cannot lose or invent candidates).
            let mut unfiltered = bytes.clone();
            decode(&mut unfiltered);
            encode(&mut unfiltered);
            prop_assert_eq!(unfiltered, bytes);
        }
    }
}
