//! Nix's base-32 encoding: the alphabet of store path hash parts and of
//! `sha256:<52 chars>` hashes in narinfo files.
//!
//! The bytes are read as one little-endian number whose base-32 digits are
//! printed most significant first; 20 bytes give 32 characters, 32 bytes 52.

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the nix32 text for `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes `bytes` in Nix base 32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() {
            bytes[i + 1].checked_shl(8 - j as u32).unwrap_or(0)
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// The value of each byte as a nix32 digit, `NONE` for the others: a
/// table, since every hash part of a 100 000-path store is checked a
/// character at a time.
const VALUES: [u8; 256] = {
    let mut values = [NONE; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        values[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};
const NONE: u8 = 0xff;

/// True when `c` is a character of the nix32 alphabet.
pub fn is_digit(c: u8) -> bool {
    VALUES[c as usize] != NONE
}

/// Decodes Nix base-32 text into `N` bytes; `None` when the length, a
/// character or the value does not fit.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != encoded_len(N) {
        return None;
    }
    let mut out = [0u8; N];
    for (n, &c) in text.iter().rev().enumerate() {
        let digit = match VALUES[c as usize] {
            NONE => return None,
            value => u16::from(value),
        };
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let spread = digit << j;
        out[i] |= spread as u8;
        let carry = (spread >> 8) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Values printed by `nix-hash --type sha256 --to-base32` (Nix 2.8).
    const VECTORS: &[(&str, &str)] = &[
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        (
            "7c87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692",
            "14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw",
        ),
    ];

    #[test]
    fn encodes_like_nix() {
        for (h, want) in VECTORS {
            assert_eq!(encode(&hex(h)), *want);
        }
    }

    #[test]
    fn decodes_what_it_encodes() {
        for (h, text) in VECTORS {
            assert_eq!(decode::<32>(text).unwrap().to_vec(), hex(h));
        }
        let twenty: Vec<u8> = (0..20).map(|i| i * 13).collect();
        assert_eq!(decode::<20>(&encode(&twenty)).unwrap().to_vec(), twenty);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(decode::<32>("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e").is_none()); // 'e'
        assert!(decode::<32>("0mdqa9").is_none());
        // 52 chars can hold 260 bits: a top digit above 1 overflows 32 bytes.
        assert!(decode::<32>(&"z".repeat(52)).is_none());
        assert_eq!(encoded_len(20), 32);
    }
}
