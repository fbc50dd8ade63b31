//! Nix's base-32 ("nix32"): the encoding of store-path hash parts and of `sha256:` hashes in narinfo.
//!
//! It is not RFC 4648 base32. The alphabet drops `e`, `o`, `u` and `t` (so hashes never spell words),
//! and the digest is read as one little-endian number printed most significant digit first: the
//! *last* character holds the lowest five bits of byte 0. An `n`-byte digest takes
//! `(n * 8 - 1) / 5 + 1` characters, so a SHA-256 (32 bytes) is 52 characters whose first character
//! carries only one significant bit, and a store-path hash (20 bytes) is exactly 32 characters.
//!
//! Decoding is strict the way Nix's is: an unknown character, a length that no digest size encodes
//! to, or non-zero bits above the digest's top byte are errors. That makes decoding injective, which
//! matters because the stripper and the narinfo code treat the text as a canonical key.

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

const INVALID: u8 = 0xff;

/// Byte → digit value, or `INVALID`.
const DIGITS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not the nix32 encoding of a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base32Error {
    #[error("invalid nix-base32 character {:?} at position {pos}", char::from(*byte))]
    InvalidChar { byte: u8, pos: usize },
    #[error("{len} characters is not the nix-base32 length of any digest")]
    InvalidLength { len: usize },
    #[error("{got} nix-base32 characters, expected {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("nix-base32 value has non-zero bits beyond the digest (non-canonical encoding)")]
    Overflow,
}

/// True for the 32 bytes of [`ALPHABET`].
#[inline]
pub const fn is_base32_char(byte: u8) -> bool {
    DIGITS[byte as usize] != INVALID
}

/// Number of characters that encode `n` bytes: `(n * 8 - 1) / 5 + 1`, and 0 for 0.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a string of `len` characters decodes to, if `len` is a valid encoded length.
pub const fn decoded_len(len: usize) -> Option<usize> {
    let n = len * 5 / 8;
    if encoded_len(n) == len {
        Some(n)
    } else {
        None
    }
}

/// Encode `bytes` the way Nix prints hashes.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let mut c = u16::from(bytes[i]) >> j;
        if let Some(&next) = bytes.get(i + 1) {
            c |= u16::from(next) << (8 - j);
        }
        out.push(char::from(ALPHABET[usize::from(c & 0x1f)]));
    }
    out
}

/// Decode a nix32 string into a digest whose length the string's length implies.
pub fn decode(text: impl AsRef<[u8]>) -> Result<Vec<u8>, Base32Error> {
    let text = text.as_ref();
    let n = decoded_len(text.len()).ok_or(Base32Error::InvalidLength { len: text.len() })?;
    let mut out = vec![0; n];
    decode_into(text, &mut out)?;
    Ok(out)
}

/// Decode a nix32 string into `out`, which fixes the digest size (20 for a store-path hash, 32 for
/// SHA-256); `text` must be exactly [`encoded_len`]`(out.len())` characters.
pub fn decode_into(text: impl AsRef<[u8]>, out: &mut [u8]) -> Result<(), Base32Error> {
    let text = text.as_ref();
    let expected = encoded_len(out.len());
    if text.len() != expected {
        return Err(Base32Error::WrongLength {
            expected,
            got: text.len(),
        });
    }
    out.fill(0);
    for (n, &byte) in text.iter().rev().enumerate() {
        let digit = DIGITS[usize::from(byte)];
        if digit == INVALID {
            return Err(Base32Error::InvalidChar {
                byte,
                pos: text.len() - 1 - n,
            });
        }
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if i + 1 < out.len() {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Base32Error::Overflow);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// (hex digest, nix32) pairs printed by real Nix 2.8 (`nix-hash --type T --to-base32 HEX`).
    const NIX_VECTORS: &[(&str, &str)] = &[
        // sha256("")
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
        // sha256("abc")
        ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"),
        // sha256("hello world")
        ("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", "1sfdxziarxw8j3p80lvswgpq9i7smdyxmmsj5sjhhgjdjfwjfkdr"),
        // sha1("") and sha1("abc"): 20 bytes, the store-path hash size
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "143xibwh31h9bvxzalr0sjvbbvpa6ffs"),
        ("a9993e364706816aba3e25717850c26c9cd0d89d", "kpcd173cq987hw957sx6m0868wv3x6d9"),
        // md5(""): 16 bytes
        ("d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl"),
        // sha512("abc"): 64 bytes
        (
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx",
        ),
    ];

    #[test]
    fn matches_real_nix() {
        for (h, b32) in NIX_VECTORS {
            let bytes = hex(h);
            assert_eq!(encode(&bytes), *b32, "encoding {h}");
            assert_eq!(decode(b32).unwrap(), bytes, "decoding {b32}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        assert_eq!(decoded_len(52), Some(32));
        assert_eq!(decoded_len(1), None);
        assert_eq!(decoded_len(51), None);
    }

    #[test]
    fn rejects_bad_input() {
        let good = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        for bad in ['e', 'o', 'u', 't', 'A', '-', ' '] {
            let s = format!("{}{bad}{}", &good[..5], &good[6..]);
            assert_eq!(
                decode(&s),
                Err(Base32Error::InvalidChar {
                    byte: bad as u8,
                    pos: 5
                }),
                "{s}"
            );
        }
        assert_eq!(
            decode(&good[1..]),
            Err(Base32Error::InvalidLength { len: 51 })
        );
        let mut out = [0u8; 20];
        assert_eq!(
            decode_into(good, &mut out),
            Err(Base32Error::WrongLength {
                expected: 32,
                got: 52
            })
        );
        // The first of 52 characters carries one bit of a SHA-256: anything above '1' overflows.
        assert_eq!(
            decode(format!("2{}", &good[1..])),
            Err(Base32Error::Overflow)
        );
        assert!(decode(format!("1{}", &good[1..])).is_ok());
        // 1 byte = 2 chars, 10 bits: the top char may only hold 3 bits.
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(decode("8z"), Err(Base32Error::Overflow));
    }

    #[test]
    fn alphabet_membership() {
        let members: Vec<u8> = (0..=255u8).filter(|&b| is_base32_char(b)).collect();
        assert_eq!(members, ALPHABET.to_vec());
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert!(text.bytes().all(is_base32_char));
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }

        /// Decoding is injective: any string that decodes re-encodes to itself.
        #[test]
        fn canonical(text in "[0123456789abcdfghijklmnpqrsvwxyz]{0,60}") {
            if let Ok(bytes) = decode(&text) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
