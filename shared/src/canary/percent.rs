//! A percentage with at most six decimals, kept exactly in millionths of a percent.
//!
//! JSON gives a double; its shortest round-trip text (what `Display` writes) is the decimal
//! that was written, which [`Percent::parse`] reads exactly: `0.1` is 100000 millionths, not
//! 0.1000000000000000055... of a percent.

/// Millionths of a percent in one percent.
const SCALE: u64 = 1_000_000;
/// Decimals kept: a millionth of a percent.
const DECIMALS: i64 = 6;

/// A non-negative percentage with at most six decimals, in millionths of a percent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u64);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const HUNDRED: Percent = Percent(100 * SCALE);

    #[cfg(test)]
    pub fn from_millionths(millionths: u64) -> Self {
        Self(millionths)
    }

    pub fn millionths(self) -> u64 {
        self.0
    }

    /// The share of `[0, 1)` it covers.
    pub fn fraction(self) -> f64 {
        self.0 as f64 / (100 * SCALE) as f64
    }

    /// Parses a JSON number's text (already checked against the JSON grammar); `None` if it
    /// is negative, has more than six decimals, or is too large to hold.
    pub fn parse(text: &str) -> Option<Self> {
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, parse_exponent(exponent)?),
            None => (text, 0),
        };
        let (negative, mantissa) = match mantissa.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, mantissa),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut digits = whole
            .bytes()
            .chain(fraction.bytes())
            .try_fold(0u64, |n, c| {
                n.checked_mul(10)?
                    .checked_add(u64::from(c.checked_sub(b'0')?))
            })?;
        // The value is digits × 10^shift millionths.
        let mut shift = exponent + DECIMALS - i64::try_from(fraction.len()).ok()?;
        while shift < 0 && digits != 0 && digits % 10 == 0 {
            digits /= 10;
            shift += 1;
        }
        let millionths = if digits == 0 {
            0
        } else {
            // A negative shift left: digits below a millionth of a percent.
            digits.checked_mul(10u64.checked_pow(u32::try_from(shift).ok()?)?)?
        };
        (!negative || millionths == 0).then_some(Self(millionths))
    }
}

/// `[+-]digits`, bounded so the arithmetic above cannot overflow.
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, text.get(1..)?),
        Some(b'+') => (false, text.get(1..)?),
        _ => (false, text),
    };
    let value = digits.bytes().try_fold(0i64, |n, c| {
        let n = n * 10 + i64::from(c.checked_sub(b'0')?);
        (n <= 1000).then_some(n)
    })?;
    Some(if negative { -value } else { value })
}

impl<'de> serde::Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a number from 0 to 100 with at most 6 decimals";
        crate::config::decimal(deserializer, EXPECTED, Self::parse)
    }
}

crate::json_schema!(Percent, "Percent", {
    "type": "number",
    "minimum": 0,
    "maximum": 100,
});

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn parse(text: &str) -> Option<u64> {
        Percent::parse(text).map(Percent::millionths)
    }

    #[test]
    fn reads_decimals_exactly() {
        assert_eq!(parse("0"), Some(0));
        assert_eq!(parse("-0"), Some(0));
        assert_eq!(parse("20"), Some(20_000_000));
        assert_eq!(parse("12.5"), Some(12_500_000));
        assert_eq!(parse("0.000001"), Some(1));
        assert_eq!(parse("100"), Some(100_000_000));
        assert_eq!(parse("100.000000000"), Some(100_000_000));
        assert_eq!(parse("2e1"), Some(20_000_000));
        assert_eq!(parse("1.5E-3"), Some(1_500));
        assert_eq!(parse("0.25e2"), Some(25_000_000));
        assert_eq!(parse("250e-1"), Some(25_000_000));
        assert_eq!(parse("1e+1"), Some(10_000_000));
        assert_eq!(parse("2.5E+0"), Some(2_500_000));
    }

    #[test]
    fn refuses_what_it_cannot_hold_exactly() {
        assert_eq!(parse("0.0000001"), None, "below a millionth");
        assert_eq!(parse("1e-7"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("-0.5"), None);
        assert_eq!(parse("1e30"), None);
        assert_eq!(parse("99999999999999999999999"), None);
        assert_eq!(parse("1e99999999999999999999"), None);
    }

    #[test]
    fn the_fraction_covers_the_unit_interval() {
        assert_eq!(Percent::HUNDRED.fraction(), 1.0);
        assert_eq!(Percent::ZERO.fraction(), 0.0);
        assert_eq!(Percent::parse("20").unwrap().fraction(), 0.2);
    }

    proptest! {
        #[test]
        fn agrees_with_the_float_parser(whole in 0u64..1000, micro in 0u64..1_000_000, exp in -3i64..3) {
            let text = format!("{whole}.{micro:06}e{exp}");
            let expected: f64 = text.parse::<f64>().unwrap() * 1e6;
            match Percent::parse(&text) {
                Some(p) => prop_assert!((p.millionths() as f64 - expected).abs() < 1e-3),
                None => prop_assert!(exp < 0 && expected.fract().abs() > 1e-9),
            }
        }

        #[test]
        fn never_panics(text in "-?[0-9]{0,30}(\\.[0-9]{0,30})?([eE][+-]?[0-9]{0,25})?") {
            let _ = Percent::parse(&text);
        }
    }
}
