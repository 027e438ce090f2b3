//! Hex: lower-case, as trace headers use it, and either case in percent-escapes.

/// Decodes exactly `N` bytes from `2 * N` lower-case hex digits.
pub fn decode_lower<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (pair.first()?, pair.get(1)?);
        *byte = (lower_digit(*hi)? << 4) | lower_digit(*lo)?;
    }
    Some(out)
}

fn lower_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The value of a hex digit of either case (a percent-escape's `%2F` or `%2f`).
pub fn digit_value(c: u8) -> Option<u8> {
    lower_digit(c.to_ascii_lowercase())
}

/// Writes the lower-case hex of `bytes` into `out`, as far as `out` goes (two digits a byte).
pub fn encode_to(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |nibble: u8| DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0');
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = digit(byte >> 4);
            *lo = digit(byte & 0x0f);
        }
    }
}

/// Appends the lower-case hex of `bytes` to `out`: whole runs at once, not a `char` at a time
/// (each `String::push` encodes UTF-8 and checks capacity; trace ids are written per request).
pub fn encode_into(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(32) {
        let mut text = [0u8; 64];
        encode_to(chunk, &mut text);
        let written = text.get(..2 * chunk.len()).unwrap_or_default();
        out.push_str(std::str::from_utf8(written).unwrap_or_default());
    }
}

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trip() {
        let bytes = [0x00, 0x9f, 0xa0, 0xff];
        assert_eq!(encode(&bytes), "009fa0ff");
        assert_eq!(decode_lower::<4>(b"009fa0ff"), Some(bytes));
    }

    #[test]
    fn rejects_upper_case_wrong_length_and_non_hex() {
        assert_eq!(decode_lower::<2>(b"00AF"), None);
        assert_eq!(decode_lower::<2>(b"00a"), None);
        assert_eq!(decode_lower::<2>(b"00ag"), None);
        assert_eq!(decode_lower::<2>(b"00a\xff"), None);
    }

    #[test]
    fn digit_values_of_either_case() {
        let values: Vec<_> = b"09afAF".iter().map(|&c| digit_value(c)).collect();
        assert_eq!(values, [0, 9, 10, 15, 10, 15].map(Some));
        for c in [b'g', b'G', b'/', b':', b'@', b'%', 0xff] {
            assert_eq!(digit_value(c), None, "{c}");
        }
    }
}
