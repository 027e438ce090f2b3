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

#[cfg(test)]
mod tests {
    use super::*;

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
