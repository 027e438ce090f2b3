//! Head sampling of the traces the filter starts, consistent with OpenTelemetry's probability
//! sampling ("TraceState: Probability Sampling"): a rejection threshold `T` of 56 bits, the
//! randomness `R` the trace id's right-most 56 bits (W3C Level 2's random flag says they are
//! random: the filter draws every bit of the ids it makes), sampled when `R >= T`. Any hop
//! applying the same rate to the same trace id reaches the same decision.
//!
//! `T` is written as `ot=th:<hex>` in `tracestate` on a sampled trace the filter starts, so
//! tracers downstream know the probability it was sampled with. A trace the filter continues
//! keeps its parent's decision and its `tracestate` (`ot`'s `th` and `rv` among it).

/// Randomness and thresholds are 56-bit: `2^56` rejects everything.
const NEVER: u64 = 1 << 56;
/// Millionths of a percent in 100 %.
const ALL_MILLIONTHS: u64 = 100 * 1_000_000;

/// A rejection threshold: of `2^56` trace ids, how many are not sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(u64);

impl Threshold {
    /// `(1 - p) × 2^56` for a percent `p` from 0 to 100, taken to the nearest millionth of a
    /// percent, then exactly (in integers) rounded to the nearest: 10 % is `e6666666666666`.
    pub fn from_percent(percent: f64) -> Self {
        // Not negative, so the cast rounds half up; `as` saturates (and NaN is 0).
        let kept = ((percent * 1e6 + 0.5) as u64).min(ALL_MILLIONTHS);
        Self::from_millionths(kept)
    }

    /// In u64 (no 128-bit division in the module): with `2^56 = q × 10^8 + r`,
    /// `rejected × 2^56 / 10^8 = rejected × q + rejected × r / 10^8`, each product under 2^63.
    fn from_millionths(kept: u64) -> Self {
        const Q: u64 = NEVER / ALL_MILLIONTHS;
        const R: u64 = NEVER % ALL_MILLIONTHS;
        let rejected = ALL_MILLIONTHS - kept.min(ALL_MILLIONTHS);
        Self(rejected * Q + (rejected * R + ALL_MILLIONTHS / 2) / ALL_MILLIONTHS)
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// Whether a trace of this randomness is sampled.
    pub fn samples(self, randomness: u64) -> bool {
        randomness >= self.0
    }

    /// The `th` value: 14 hex digits with the trailing zeros dropped, `0` for 100 % (only
    /// ever written for a sampled trace: 0 % samples none).
    pub fn th(self) -> String {
        let mut digits = String::with_capacity(16);
        crate::hex::encode_into(
            self.0.to_be_bytes().get(1..).unwrap_or_default(),
            &mut digits,
        );
        let kept = digits.trim_end_matches('0').len().max(1);
        digits.truncate(kept);
        digits
    }

    /// The `tracestate` member carrying the threshold.
    pub fn tracestate_member(self) -> String {
        let mut member = String::from("ot=th:");
        member.push_str(&self.th());
        member
    }
}

/// The trace id's right-most 56 bits (its last 7 bytes, big-endian).
pub fn randomness(trace_id: &[u8; 16]) -> u64 {
    trace_id
        .iter()
        .skip(9)
        .fold(0, |r, byte| (r << 8) | u64::from(*byte))
}

/// A new trace's sampling decision; a stats label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Sampled,
    NotSampled,
}

impl Sampling {
    pub const ALL: [Sampling; 2] = [Self::Sampled, Self::NotSampled];

    pub fn of(sampled: bool) -> Self {
        if sampled {
            Self::Sampled
        } else {
            Self::NotSampled
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sampled => "sampled",
            Self::NotSampled => "not_sampled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn percent(text: &str) -> f64 {
        text.parse().unwrap()
    }

    /// OpenTelemetry's examples: 100 % is `0`, 50 % `8`, 25 % `c`, 12.5 % `e`, 6.25 % `f`,
    /// 1 % `fd70a3d70a3d71` (its 5-digit rounding is `fd70a4`).
    #[test]
    fn thresholds_match_opentelemetrys_examples() {
        for (p, th) in [
            ("100", "0"),
            ("50", "8"),
            ("25", "c"),
            ("12.5", "e"),
            ("6.25", "f"),
            ("1", "fd70a3d70a3d71"),
            ("10", "e6666666666666"),
        ] {
            assert_eq!(Threshold::from_percent(percent(p)).th(), th, "{p} %");
        }
        assert_eq!(
            Threshold::from_percent(percent("100")).tracestate_member(),
            "ot=th:0"
        );
        assert_eq!(Threshold::from_percent(percent("0")).value(), NEVER);
        // A millionth of a percent is the finest step; what is finer rounds to it.
        assert_eq!(
            Threshold::from_percent(0.0000004),
            Threshold::from_percent(0.0)
        );
        assert_eq!(
            Threshold::from_percent(99.9999996),
            Threshold::from_percent(100.0)
        );
        assert_ne!(
            Threshold::from_percent(0.000001),
            Threshold::from_percent(0.0)
        );
        // At most 14 digits, never a trailing zero.
        for p in ["0.000001", "33.333333", "99.999999", "0.5", "75"] {
            let th = Threshold::from_percent(percent(p)).th();
            assert!((1..=14).contains(&th.len()), "{p}: {th}");
            assert!(!th.ends_with('0'), "{p}: {th}");
        }
    }

    #[test]
    fn sampled_when_the_randomness_reaches_the_threshold() {
        let half = Threshold::from_percent(percent("50"));
        assert!(!half.samples(0));
        assert!(!half.samples((1 << 55) - 1));
        assert!(half.samples(1 << 55));
        assert!(half.samples(NEVER - 1));
        let all = Threshold::from_percent(percent("100"));
        assert!(all.samples(0));
        let none = Threshold::from_percent(percent("0"));
        assert!(!none.samples(NEVER - 1));
    }

    #[test]
    fn randomness_is_the_last_seven_bytes() {
        let mut id = [0xffu8; 16];
        id[8] = 0;
        assert_eq!(randomness(&id), NEVER - 1);
        let id: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(randomness(&id), 0x09_0a_0b_0c_0d_0e_0f);
    }

    #[test]
    fn stats_labels() {
        let labels: Vec<&str> = Sampling::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(labels, ["sampled", "not_sampled"]);
        assert_eq!(Sampling::of(true), Sampling::Sampled);
        assert_eq!(Sampling::of(false), Sampling::NotSampled);
    }
}
