//! A stable 64-bit hash: the same on every VM, worker, machine and release.
//!
//! Used where a hash is a commitment — shared-data slot numbers, canary cohorts — so it must
//! never change (std's hashers are randomly seeded and may change between releases).
//! FNV-1a over the input, then the MurmurHash3 finalizer so that similar keys spread out.

/// Hashes `parts` as one input, with a 0xff separator so ("ab","c") and ("a","bc") differ.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(PRIME);
        }
    }
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A number in `[0, 1)` from a hash, uniform over 2^53 steps.
pub fn unit_interval(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn is_stable() {
        // Changing these values reshuffles every cohort and slot in production.
        assert_eq!(
            format!("{:016x}", stable_hash(&[b"salt", b"user-1"])),
            "c9c192d740fcb5e7"
        );
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    #[test]
    fn spreads_similar_keys_evenly() {
        let buckets = 10;
        let mut counts = vec![0u32; buckets];
        for i in 0..100_000 {
            let key = format!("user-{i}");
            let at =
                (unit_interval(stable_hash(&[b"route", key.as_bytes()])) * buckets as f64) as usize;
            counts[at] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{count}");
        }
    }
}
