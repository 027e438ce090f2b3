//! What a limit counts by, and which slot a request's key lands in.
//!
//! Memory is bounded by slots, not by clients: a limit has a fixed number of slots and a key
//! goes to `stable_hash(salt, key) % slots`. Keys that collide share one bucket; a key can
//! never gain tokens by colliding (sharing only takes tokens away) and there is no eviction
//! (a slot is never reset to full), so a flood of new keys cannot refresh anyone's bucket.

use crate::config::HeaderName;
use crate::hash::stable_hash;
use crate::host::RequestHost;
use crate::request::client_ip;

/// What one limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// One bucket for the whole route.
    Route,
    /// The client's IP: Envoy's `source.address` (never a header the filter parses). That is
    /// the TCP peer only when the connection manager has `use_remote_address: true`; with
    /// Envoy's default `false` Envoy itself takes it from the last `x-forwarded-for` entry.
    ClientAddress,
    /// The normalised path, see [`normalize_path`].
    Path,
    /// A request header's value, e.g. `x-api-key`.
    Header { name: HeaderName, missing: Missing },
}

/// What a header-keyed limit does with a request without the header (or with it empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// All such requests share one anonymous bucket.
    Share,
    /// The limit does not apply to them.
    Skip,
}

/// A request's key for one limit.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyValue {
    /// The key's bytes (for [`Key::Route`], empty).
    Value(Vec<u8>),
    /// The header is missing and shares the anonymous bucket.
    Anonymous,
    /// The limit does not apply.
    Skip,
}

impl Key {
    /// Reads this key from the request.
    pub fn read(&self, host: &impl RequestHost) -> KeyValue {
        match self {
            Self::Route => KeyValue::Value(Vec::new()),
            Self::ClientAddress => {
                let address = host.property(&["source", "address"]).unwrap_or_default();
                KeyValue::Value(client_ip(&address).to_vec())
            }
            Self::Path => {
                let mut path = host.request_header(":path").unwrap_or_default();
                normalize_path(&mut path);
                KeyValue::Value(path)
            }
            Self::Header { name, missing } => match host.request_header(name.as_str()) {
                Some(value) if !value.is_empty() => KeyValue::Value(value),
                _ => match missing {
                    Missing::Share => KeyValue::Anonymous,
                    Missing::Skip => KeyValue::Skip,
                },
            },
        }
    }
}

/// The salt of one limit of one route: collisions differ between limits and routes.
pub fn salt(route_name: &str, limit_index: usize) -> u64 {
    let index = u64::try_from(limit_index).unwrap_or(u64::MAX).to_le_bytes();
    stable_hash(&[route_name.as_bytes(), &index])
}

/// The slot a key value lands in, in `0..slots`. Never changes between releases (it decides
/// which clients share a bucket); the anonymous bucket is a slot like any other.
pub fn slot(salt: u64, value: &KeyValue, slots: u32) -> u32 {
    let salt = salt.to_le_bytes();
    let hash = match value {
        KeyValue::Value(bytes) => stable_hash(&[&salt, bytes]),
        KeyValue::Anonymous | KeyValue::Skip => stable_hash(&[&salt]),
    };
    // `hash % slots` is below `slots`, a u32.
    u32::try_from(hash % u64::from(slots.max(1))).unwrap_or(0)
}

/// The path as a rate-limit key, normalised in place so that spellings of one path share a
/// bucket:
/// 1. the query and fragment are dropped (from the first `?` or `#`);
/// 2. `%XX` escapes are decoded, once (`%2F` becomes `/`, `%252F` becomes `%2F`);
/// 3. ASCII letters are lower-cased;
/// 4. runs of `/` become one `/`, and a trailing `/` is dropped (`/` itself stays).
///
/// Dot segments (`/a/../b`) are left to Envoy's `normalize_path` (on by default in Istio).
pub fn normalize_path(path: &mut Vec<u8>) {
    if let Some(end) = path.iter().position(|c| *c == b'?' || *c == b'#') {
        path.truncate(end);
    }
    let mut read = 0;
    let mut write = 0;
    while let Some(&byte) = path.get(read) {
        let decoded = match (byte, path.get(read + 1), path.get(read + 2)) {
            (b'%', Some(&high), Some(&low)) => match (hex_value(high), hex_value(low)) {
                (Some(high), Some(low)) => Some(high << 4 | low),
                _ => None,
            },
            _ => None,
        };
        let (out, used) = match decoded {
            Some(out) => (out, 3),
            None => (byte, 1),
        };
        read += used;
        let out = out.to_ascii_lowercase();
        if out == b'/' && write > 0 && path.get(write - 1) == Some(&b'/') {
            continue;
        }
        if let Some(slot) = path.get_mut(write) {
            *slot = out;
        }
        write += 1;
    }
    path.truncate(write);
    if path.len() > 1 && path.last() == Some(&b'/') {
        path.pop();
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use super::*;
    use crate::config::FieldPath;
    use crate::fake::FakeHost;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn normalized(path: &str) -> String {
        let mut bytes = path.as_bytes().to_vec();
        normalize_path(&mut bytes);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn path_spellings_share_one_key() {
        for spelling in [
            "/api/items",
            "/API/Items",
            "/api/items/",
            "//api///items",
            "/api/items?page=2",
            "/api/items#top",
            "/%61pi/%49tems",
            "/api%2Fitems",
            "/api%2fitems?x=%3F",
        ] {
            assert_eq!(normalized(spelling), "/api/items", "{spelling}");
        }
        assert_eq!(normalized("/"), "/");
        assert_eq!(normalized("//"), "/");
        assert_eq!(normalized(""), "");
        assert_eq!(normalized("?q"), "");
        // Decoded once only; broken escapes are kept as written.
        assert_eq!(normalized("/a%252Fb"), "/a%2fb");
        assert_eq!(normalized("/a%zz%4"), "/a%zz%4");
        assert_eq!(normalized("/a%"), "/a%");
    }

    proptest! {
        #[test]
        fn normalising_never_panics_and_never_grows(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut path = bytes.clone();
            normalize_path(&mut path);
            prop_assert!(path.len() <= bytes.len());
        }
    }

    #[test]
    fn client_address_is_the_peer_ip_without_port() {
        let host = FakeHost::new()
            .with_property(&["source", "address"], "10.1.2.3:45678")
            .with_request_header("x-forwarded-for", "1.1.1.1");
        assert_eq!(
            Key::ClientAddress.read(&host),
            KeyValue::Value(b"10.1.2.3".to_vec())
        );
        let host = FakeHost::new().with_property(&["source", "address"], "[2001:db8::1]:443");
        assert_eq!(
            Key::ClientAddress.read(&host),
            KeyValue::Value(b"2001:db8::1".to_vec())
        );
    }

    #[test]
    fn missing_or_empty_headers_share_or_skip() {
        let name = HeaderName::parse("x-api-key", &FieldPath::root()).unwrap();
        let share = Key::Header {
            name: name.clone(),
            missing: Missing::Share,
        };
        let skip = Key::Header {
            name,
            missing: Missing::Skip,
        };
        let without = FakeHost::new();
        let empty = FakeHost::new().with_request_header("x-api-key", "");
        let with = FakeHost::new().with_request_header("x-api-key", b"k\xff");
        for host in [&without, &empty] {
            assert_eq!(share.read(host), KeyValue::Anonymous);
            assert_eq!(skip.read(host), KeyValue::Skip);
        }
        assert_eq!(share.read(&with), KeyValue::Value(b"k\xff".to_vec()));
    }

    #[test]
    fn path_key_reads_the_pseudo_header() {
        let host = FakeHost::new().with_request_header(":path", "/Limited/?a=1");
        assert_eq!(Key::Path.read(&host), KeyValue::Value(b"/limited".to_vec()));
    }

    #[test]
    fn slots_are_stable_and_in_range() {
        let salt = salt("checkout", 0);
        // Changing these moves every client to another bucket on upgrade.
        assert_eq!(slot(salt, &KeyValue::Value(b"key-a".to_vec()), 1024), 224);
        assert_eq!(slot(salt, &KeyValue::Anonymous, 1024), 199);
        assert_ne!(salt, super::salt("checkout", 1));
        for i in 0..1000 {
            let value = KeyValue::Value(format!("k{i}").into_bytes());
            assert!(slot(salt, &value, 7) < 7);
            assert_eq!(slot(salt, &value, 1), 0);
        }
    }
}
