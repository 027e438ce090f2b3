//! Expected values computed apart from the code under test: the tests' oracles.
//!
//! Written from the documented behaviour, not by calling `mesh-policy`, so a change to the
//! policy crate's arithmetic fails the tests that use these instead of moving both sides.

/// Where the canary split puts a sticky key on a route with salt `salt`: a point in [0, 1),
/// the top 53 bits of FNV-1a 64 over `salt 0xff key 0xff`, finished with MurmurHash3's
/// fmix64. A request goes to the canary when its point is below `percent / 100`.
pub fn canary_point(salt: &[u8], key: &[u8]) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.iter().chain([&0xff]).chain(key).chain([&0xff]) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for (shift, multiplier) in [(33, 0xff51_afd7_ed55_8ccd_u64), (33, 0xc4ce_b9fe_1a85_ec53)] {
        hash = (hash ^ (hash >> shift)).wrapping_mul(multiplier);
    }
    hash ^= hash >> 33;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The upstream service the demo's canary routes send a sticky key to: `v2` (the canary)
/// or `v1`.
pub fn canary_service(salt: &str, key: &str, percent: f64) -> &'static str {
    if canary_point(salt.as_bytes(), key.as_bytes()) < percent / 100.0 {
        "v2"
    } else {
        "v1"
    }
}

/// A `traceparent` header's fields as the W3C Trace Context grammar reads them (Level 2,
/// section 3.2): `version "-" trace-id "-" parent-id "-" trace-flags`, each lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub version: String,
    pub trace_id: String,
    pub parent_id: String,
    pub flags: u8,
}

impl TraceParent {
    /// The `sampled` flag (bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// Level 2's `random` flag (bit 1): the trace id's right-most 56 bits are random.
    pub fn random(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

/// Reads a `traceparent` value by the spec's grammar, written from the spec (not from
/// `mesh-policy`'s parser):
/// - `version` is 2 lower-case hex digits, not `ff`;
/// - `trace-id` 32 lower-case hex digits, not all zero; `parent-id` 16, not all zero;
///   `trace-flags` 2;
/// - version `00` is exactly those 55 characters; a higher version may go on after them,
///   but only past a `-`.
///
/// The error says which rule failed.
pub fn traceparent(value: &str) -> Result<TraceParent, String> {
    let lower_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let (head, rest) = value.split_at_checked(55).unwrap_or((value, ""));
    let fields: Vec<&str> = head.split('-').collect();
    let [version, trace_id, parent_id, flags] = fields[..] else {
        return Err(format!("{value:?}: not four fields joined by `-`"));
    };
    for (name, field, len) in [
        ("version", version, 2),
        ("trace-id", trace_id, 32),
        ("parent-id", parent_id, 16),
        ("trace-flags", flags, 2),
    ] {
        if !lower_hex(field, len) {
            return Err(format!(
                "{value:?}: {name} is not {len} lower-case hex digits"
            ));
        }
    }
    if version == "ff" {
        return Err(format!("{value:?}: version ff is invalid"));
    }
    for (name, field) in [("trace-id", trace_id), ("parent-id", parent_id)] {
        if field.bytes().all(|c| c == b'0') {
            return Err(format!("{value:?}: {name} is all zeros"));
        }
    }
    match (version, rest) {
        (_, "") => {}
        ("00", _) => return Err(format!("{value:?}: version 00 is 55 characters")),
        (_, rest) if rest.starts_with('-') => {}
        _ => {
            return Err(format!(
                "{value:?}: a higher version goes on only past a `-`"
            ));
        }
    }
    Ok(TraceParent {
        version: version.to_owned(),
        trace_id: trace_id.to_owned(),
        parent_id: parent_id.to_owned(),
        flags: u8::from_str_radix(flags, 16).map_err(|e| format!("{value:?}: {e}"))?,
    })
}

/// OpenTelemetry's rejection threshold for 10 % ("TraceState: Probability Sampling"):
/// `(1 - 0.1) × 2^56 = 64,851,834,634,135,142.4`, to the nearest integer.
pub const THRESHOLD_10_PERCENT: u64 = 0x00e6_6666_6666_6666;

/// Whether consistent probability sampling at rejection threshold `threshold` samples the
/// trace `trace_id` (32 hex digits): its randomness, the right-most 56 bits (14 digits), is
/// at least the threshold.
pub fn consistently_sampled(trace_id: &str, threshold: u64) -> bool {
    let randomness = trace_id
        .get(18..)
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .unwrap_or_else(|| panic!("{trace_id:?} is not 32 hex digits"));
    randomness >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn the_specs_example_traceparent_reads_field_by_field() {
        let tp = traceparent(&format!("00-{TRACE}-{PARENT}-01")).unwrap();
        assert_eq!(
            tp,
            TraceParent {
                version: "00".into(),
                trace_id: TRACE.into(),
                parent_id: PARENT.into(),
                flags: 1,
            }
        );
        assert!(tp.sampled() && !tp.random());
        let tp = traceparent(&format!("00-{TRACE}-{PARENT}-03")).unwrap();
        assert!(tp.sampled() && tp.random());
        assert_eq!(
            traceparent(&format!("00-{TRACE}-{PARENT}-02"))
                .unwrap()
                .flags,
            2
        );
        // A higher version may carry more after a `-`; unknown flags are read as they are.
        let tp = traceparent(&format!("cc-{TRACE}-{PARENT}-ff-what-the-future-holds")).unwrap();
        assert_eq!((tp.version.as_str(), tp.flags), ("cc", 0xff));
        assert!(traceparent(&format!("01-{TRACE}-{PARENT}-00")).is_ok());
    }

    /// Each rule of the grammar broken once, around a valid header.
    #[test]
    fn a_traceparent_breaking_any_rule_is_refused() {
        let zeros_32 = "0".repeat(32);
        let zeros_16 = "0".repeat(16);
        for (bad, rule) in [
            (format!("ff-{TRACE}-{PARENT}-01"), "version ff"),
            (format!("0A-{TRACE}-{PARENT}-01"), "version"),
            (format!("0-{TRACE}-{PARENT}-01"), "version"),
            (format!("000-{TRACE}-{PARENT}-01"), "version"),
            (
                format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
                "trace-id",
            ),
            (format!("00-{}-{PARENT}-01", &TRACE[1..]), "trace-id"),
            (format!("00-{TRACE}0-{PARENT}-01"), "trace-id"),
            (
                format!("00-{zeros_32}-{PARENT}-01"),
                "trace-id is all zeros",
            ),
            (
                format!("00-{TRACE}-{zeros_16}-01"),
                "parent-id is all zeros",
            ),
            (format!("00-{TRACE}-{}-01", &PARENT[1..]), "parent-id"),
            (format!("00-{TRACE}-00F067AA0BA902B7-01"), "parent-id"),
            (format!("00-{TRACE}-{PARENT}-0g"), "trace-flags"),
            (format!("00-{TRACE}-{PARENT}-1"), "trace-flags"),
            (format!("00-{TRACE}-{PARENT}-01-"), "version 00 is 55"),
            (format!("00-{TRACE}-{PARENT}-01-extra"), "version 00 is 55"),
            (format!("cc-{TRACE}-{PARENT}-01.extra"), "only past a `-`"),
            (format!("00_{TRACE}_{PARENT}_01"), "four fields"),
            (format!("00-{TRACE}-{PARENT}"), "four fields"),
            (String::new(), "four fields"),
            (
                format!("00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01"),
                "55",
            ),
        ] {
            let error = traceparent(&bad).expect_err(&bad);
            assert!(error.contains(rule), "{bad}: {error} (expected {rule:?})");
        }
    }

    #[test]
    fn sampling_at_10_percent_draws_the_line_at_the_threshold() {
        // 0.9 × 2^56 in exact integers, rounded to the nearest.
        assert_eq!(u128::from(THRESHOLD_10_PERCENT), ((9u128 << 56) + 5) / 10);
        let at = |tail: &str| {
            consistently_sampled(&format!("ffffffffffffffffff{tail}"), THRESHOLD_10_PERCENT)
        };
        assert!(at("e6666666666666"));
        assert!(at("ffffffffffffff"));
        assert!(!at("e6666666666665"));
        assert!(!at("00000000000000"));
        // Only the right-most 56 bits count.
        assert!(consistently_sampled(
            "000000000000000000e6666666666666",
            THRESHOLD_10_PERCENT
        ));
    }

    #[test]
    fn canary_points_match_values_computed_by_hand() {
        // Computed with a separate Python script from the rule above.
        assert_eq!(canary_point(b"checkout", b"127.0.0.1"), 0.6353379430245394);
        assert_eq!(canary_point(b"checkout", b"user-4"), 0.4108794073923645);
        assert_eq!(canary_point(b"checkout", b"user-9"), 0.21567640191132476);
        assert_eq!(canary_service("checkout", "user-4", 41.0), "v1");
        assert_eq!(canary_service("checkout", "user-4", 41.1), "v2");
    }
}
