//! Shared data in process memory: Envoy's workers are threads of one process, so what the
//! Wasm build keeps in proxy-wasm shared data lives here, with the same semantics — a value
//! and a compare-and-swap token per key, the token checked only when the key exists, keys
//! never deleted (they come from bounded sets: slots, route and cluster breakers).
//!
//! One lock for the map, as Envoy's shared data has; a record's read-decide-write is the
//! policy's (`mesh_policy::store::update`), with the same retries on a token mismatch.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use mesh_policy::host::{Shared, SharedError};
use rustc_hash::FxBuildHasher;

/// The most keys the store takes; a write of a new key past it fails (as a host failure).
/// The policies' keys are bounded far below this; it guards against a bug, not a client.
pub const MAX_KEYS: usize = 1 << 20;

#[derive(Debug)]
struct Record {
    value: Vec<u8>,
    cas: u32,
}

/// Keys come from bounded sets the policies make (slots, route and cluster names), never a
/// client's text: FxHash needs no flooding defence (and costs a fraction of SipHash).
type Records = HashMap<String, Record, FxBuildHasher>;

static STORE: Mutex<Option<Records>> = Mutex::new(None);

fn store() -> MutexGuard<'static, Option<Records>> {
    // A panic while the lock was held left a record whole (each write replaces one value).
    STORE.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn get(key: &str) -> Option<Shared> {
    let store = store();
    let record = store.as_ref()?.get(key)?;
    Some(Shared {
        value: record.value.clone(),
        cas: record.cas,
    })
}

pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
    let mut store = store();
    let map = store.get_or_insert_with(Records::default);
    match map.get_mut(key) {
        Some(record) => {
            if cas.is_some_and(|cas| cas != record.cas) {
                return Err(SharedError::CasMismatch);
            }
            record.value.clear();
            record.value.extend_from_slice(value);
            // Never 0: a token of 0 would read as "no token" to nobody, but stays distinct.
            record.cas = record.cas.wrapping_add(1).max(1);
        }
        None => {
            if map.len() >= MAX_KEYS {
                return Err(SharedError::Failed);
            }
            map.insert(
                key.to_owned(),
                Record {
                    value: value.to_vec(),
                    cas: 1,
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_on_existing_keys_only() {
        let key = "test/tokens";
        assert_eq!(get(key), None);
        assert_eq!(set(key, b"a", Some(7)), Ok(()));
        let first = get(key).unwrap();
        assert_eq!(first.value, b"a");
        assert_eq!(set(key, b"b", Some(first.cas)), Ok(()));
        assert_eq!(
            set(key, b"c", Some(first.cas)),
            Err(SharedError::CasMismatch)
        );
        let second = get(key).unwrap();
        assert_eq!(second.value, b"b");
        assert_ne!(second.cas, first.cas);
        assert_eq!(set(key, b"d", None), Ok(()));
        assert_eq!(get(key).unwrap().value, b"d");
    }

    #[test]
    fn threads_share_one_store() {
        let key = "test/threads";
        std::thread::spawn(move || set(key, b"x", None))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(get(key).unwrap().value, b"x");
    }
}
