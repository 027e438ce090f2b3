//! Unsigned integers in decimal, written by hand: no `core::fmt` call site and no allocation
//! (the rate limiter writes `X-RateLimit-*` values with it on every response that has them).

/// The digits of the largest `u64`.
pub const MAX_DIGITS: usize = 20;

/// `n` in decimal, written into the end of `buf`; the digits written.
pub fn decimal(mut n: u64, buf: &mut [u8; MAX_DIGITS]) -> &[u8] {
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    buf.get(start..).unwrap_or_default()
}

/// `n` in decimal as a `String` (config time: names made from an index).
pub fn decimal_string(n: u64) -> String {
    let mut buf = [0u8; MAX_DIGITS];
    decimal(n, &mut buf)
        .iter()
        .map(|&d| char::from(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn decimal_writes_every_digit() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1204, &mut buf), b"1204");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn a_string_has_the_same_digits() {
        assert_eq!(decimal_string(0), "0");
        assert_eq!(decimal_string(1907), "1907");
        assert_eq!(decimal_string(u64::MAX), "18446744073709551615");
    }
}
