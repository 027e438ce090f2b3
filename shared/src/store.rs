//! Shared data as a store of small fixed-size records, updated with compare-and-swap.
//!
//! Every Envoy worker runs its own VM; state they must agree on (token buckets, breaker
//! state) lives in Envoy's shared data. A record is read with its CAS token, changed, and
//! written back with the token; a conflict (another VM wrote first) means read and try
//! again, a bounded number of times. Envoy never deletes keys, so callers build keys from
//! bounded sets (slots), never from client input.

use crate::host::{Host, SharedError};

/// How many read-modify-write rounds before giving up on a contended key.
pub const DEFAULT_ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost the race to another VM.
    Contended,
    /// The host refused the write.
    Failed,
}

impl UpdateError {
    pub const ALL: [UpdateError; 2] = [Self::Contended, Self::Failed];

    /// The `error` label of the filters' `*_store_errors_total` counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contended => "contended",
            Self::Failed => "failed",
        }
    }
}

/// What one round of an update decided.
#[derive(Debug)]
pub struct Step<R> {
    /// The record to write, or `None` to leave the key as it is.
    pub write: Option<Vec<u8>>,
    pub result: R,
}

/// Reads `key`, lets `step` decide from the current record (`None` if never written), writes
/// its new record with the CAS token, and retries from a fresh read on conflict. Returns the
/// result of the round whose write landed (or that wrote nothing).
pub fn update<R>(
    host: &mut impl Host,
    key: &str,
    attempts: u32,
    mut step: impl FnMut(Option<&[u8]>) -> Step<R>,
) -> Result<R, UpdateError> {
    for _ in 0..attempts.max(1) {
        let current = host.shared_get(key);
        let Step { write, result } = step(current.as_ref().map(|s| s.value.as_slice()));
        let Some(record) = write else {
            return Ok(result);
        };
        match host.shared_set(key, &record, current.map(|s| s.cas)) {
            Ok(()) => return Ok(result),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return Err(UpdateError::Failed),
        }
    }
    Err(UpdateError::Contended)
}

/// Writes `initial` at `key` unless the key holds a record already; false when the host
/// refused the write. Envoy checks a CAS token only on a key that exists, so the first write
/// of a key always lands: callers create their records before [`update`] ever runs on them,
/// so every decision is a compare-and-swap. Envoy has no "create if absent" either: two VMs
/// that both read nothing both write `initial`, and a decision one of them wrote in between
/// is lost (a VM would have to stall between this read and this write).
pub fn create_if_absent(host: &mut impl Host, key: &str, initial: &[u8]) -> bool {
    host.shared_get(key).is_some() || host.shared_set(key, initial, None).is_ok()
}

/// Little-endian u64 fields of a record: `fields::<N>(bytes)` reads N of them.
pub fn read_u64s<const N: usize>(record: &[u8]) -> Option<[u64; N]> {
    if record.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (field, chunk) in out.iter_mut().zip(record.chunks_exact(8)) {
        *field = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(out)
}

pub fn write_u64s(fields: &[u64]) -> Vec<u8> {
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use crate::fake::FakeHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn increment(host: &mut FakeHost) -> Result<u64, UpdateError> {
        update(host, "k", DEFAULT_ATTEMPTS, |record| {
            let [n] = record.and_then(read_u64s::<1>).unwrap_or([0]);
            Step {
                write: Some(write_u64s(&[n + 1])),
                result: n + 1,
            }
        })
    }

    #[test]
    fn increments_land_once_each() {
        let mut host = FakeHost::new();
        for expected in 1..=5 {
            assert_eq!(increment(&mut host), Ok(expected));
        }
    }

    #[test]
    fn conflicts_are_retried_from_a_fresh_read() {
        let mut host = FakeHost::new();
        increment(&mut host).unwrap();
        host.cas_conflicts = 3;
        assert_eq!(increment(&mut host), Ok(2));
        assert_eq!(
            host.shared_get("k").map(|s| s.value),
            Some(write_u64s(&[2]))
        );
    }

    #[test]
    fn a_key_that_stays_contended_gives_up() {
        let mut host = FakeHost::new();
        increment(&mut host).unwrap();
        host.cas_conflicts = usize::MAX;
        assert_eq!(increment(&mut host), Err(UpdateError::Contended));
    }

    #[test]
    fn a_round_that_writes_nothing_returns_at_once() {
        let mut host = FakeHost::new();
        host.cas_conflicts = usize::MAX;
        let seen = update(&mut host, "k", 3, |record| Step {
            write: None,
            result: record.is_some(),
        });
        assert_eq!(seen, Ok(false));
    }

    #[test]
    fn update_errors_are_the_documented_label_values() {
        let labels: Vec<&str> = UpdateError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(labels, ["contended", "failed"]);
    }

    #[test]
    fn create_if_absent_keeps_an_existing_record() {
        let mut host = FakeHost::new();
        assert!(create_if_absent(&mut host, "k", &write_u64s(&[0])));
        increment(&mut host).unwrap();
        assert!(create_if_absent(&mut host, "k", &write_u64s(&[0])));
        assert_eq!(
            host.shared_get("k").map(|s| s.value),
            Some(write_u64s(&[1]))
        );
    }

    #[test]
    fn records_round_trip_and_reject_wrong_sizes() {
        assert_eq!(
            read_u64s::<2>(&write_u64s(&[1, u64::MAX])),
            Some([1, u64::MAX])
        );
        assert_eq!(read_u64s::<2>(&[0; 15]), None);
    }
}
