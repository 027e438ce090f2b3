//! What a limit counts by, and which slot a request's key lands in.
//!
//! Memory is bounded by slots, not by clients: a limit has a fixed number of slots and a key
//! goes to `siphash(secret; salt, key) % slots` (see [`super::secret`]). Keys that collide share one bucket; a key can
//! never gain tokens by colliding (sharing only takes tokens away) and there is no eviction
//! (a slot is never reset to full), so a flood of new keys cannot refresh anyone's bucket.

use std::borrow::Cow;

use crate::config::HeaderName;
use crate::hash::stable_hash;
use crate::hex;
use crate::host::RequestHost;
use crate::request::client_address;

use super::secret::SlotSecret;

/// The request header trusted proxies append client addresses to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// What one limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// One bucket for the whole route.
    Route,
    /// The client's IP, as [`client_address`] finds it: the connection's peer (and one shared
    /// bucket for requests whose `source.address` Envoy took from `x-forwarded-for`), or with
    /// `trusted_hops` the address the first trusted proxy saw.
    ClientAddress { trusted_hops: u32 },
    /// The normalised path, see [`normalize_path`].
    Path,
    /// A request header's value, e.g. `x-api-key`.
    Header {
        name: HeaderName,
        missing: Missing,
        repeated: Repeated,
    },
}

/// What a header-keyed limit does with a request without the header (or with it empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Missing {
    #[default]
    /// All such requests share one anonymous bucket.
    Share,
    /// The limit does not apply to them.
    Skip,
}

crate::config_names!(Missing { Share = "share", Skip = "skip" });

/// What a header-keyed limit does with a request that has the header on more than one line.
/// Envoy forwards every line; an upstream may read the first, the last, or all of them
/// joined, so no single line is surely the key the upstream acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Repeated {
    #[default]
    /// The request is rejected (the policy's rejection reply).
    Reject,
    /// The key is every line's value joined with `,`, in the order Envoy forwards them
    /// (what an upstream that combines the lines reads). Only for upstreams that do.
    Join,
}

crate::config_names!(Repeated { Reject = "reject", Join = "join" });

/// A request's key for one limit.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// The key's bytes (for [`Key::Route`], empty): a header's borrowed from the request.
    Value(Cow<'a, [u8]>),
    /// The header is missing and shares the anonymous bucket.
    Anonymous,
    /// The limit does not apply.
    Skip,
    /// The request is refused whatever the buckets hold (a key header on several lines).
    Refused,
}

impl Key {
    /// Reads this key from the request.
    pub fn read<'h>(&self, host: &'h impl RequestHost) -> KeyValue<'h> {
        match self {
            Self::Route => KeyValue::Value(Cow::Borrowed(&[])),
            Self::ClientAddress { trusted_hops } => {
                let address = host.property(&["source", "address"]).unwrap_or_default();
                // A header read only when the policy trusts proxies.
                let forwarded = (*trusted_hops > 0)
                    .then(|| host.request_header(FORWARDED_FOR))
                    .flatten();
                match client_address(&address, forwarded, *trusted_hops) {
                    Some(ip) => KeyValue::Value(Cow::Owned(ip.to_vec())),
                    None => KeyValue::Anonymous,
                }
            }
            Self::Path => {
                let mut path = host.request_header(":path").unwrap_or_default().to_vec();
                normalize_path(&mut path);
                KeyValue::Value(Cow::Owned(path))
            }
            Self::Header {
                name,
                missing,
                repeated,
            } => {
                let name = name.as_str();
                let value = match host.request_header_count(name) {
                    0 | 1 => host.request_header(name).map(Cow::Borrowed),
                    _ if *repeated == Repeated::Reject => return KeyValue::Refused,
                    _ => Some(Cow::Owned(joined(host.request_header_values(name)))),
                };
                match value {
                    Some(value) if !value.is_empty() => KeyValue::Value(value),
                    _ => match missing {
                        Missing::Share => KeyValue::Anonymous,
                        Missing::Skip => KeyValue::Skip,
                    },
                }
            }
        }
    }
}

impl Key {
    /// Whether the request is refused by this key alone (a header on several lines, under
    /// `when_repeated: reject`), without reading anything else.
    pub fn refuses(&self, host: &impl RequestHost) -> bool {
        matches!(self, Self::Header { name, repeated: Repeated::Reject, .. }
            if host.request_header_count(name.as_str()) > 1)
    }
}

/// The values of a header's lines joined with `,`, as a recipient combines them (RFC 9110
/// 5.3).
fn joined<'v>(values: impl Iterator<Item = &'v [u8]>) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, value) in values.enumerate() {
        if i > 0 {
            key.push(b',');
        }
        key.extend_from_slice(value);
    }
    key
}

/// The salt of one limit of one route: collisions differ between limits and routes.
pub fn salt(route_name: &str, limit_index: usize) -> u64 {
    let index = u64::try_from(limit_index).unwrap_or(u64::MAX).to_le_bytes();
    stable_hash(&[route_name.as_bytes(), &index])
}

/// The slot a key value lands in, in `0..slots`: a keyed hash, so only who knows `secret`
/// can tell which keys share a slot. With the same secret it never changes between releases
/// (it decides which clients share a bucket); the anonymous bucket is a slot like any other.
pub fn slot(secret: SlotSecret, salt: u64, value: &KeyValue, slots: u32) -> u32 {
    // One slot (a route-wide limit): the hash could only say 0 (~290 instructions saved).
    if slots <= 1 {
        return 0;
    }
    let salt = salt.to_le_bytes();
    let hash = match value {
        KeyValue::Value(bytes) => secret.hash(&[&salt, bytes]),
        KeyValue::Anonymous | KeyValue::Skip | KeyValue::Refused => secret.hash(&[&salt]),
    };
    // `hash % slots` is below `slots`, a u32.
    u32::try_from(hash % u64::from(slots.max(1))).unwrap_or(0)
}

/// The path as a rate-limit key, normalised in place so that every spelling an upstream
/// may read as one path shares its bucket. When in doubt it merges (a limit that counts two
/// paths as one is stricter, never looser):
/// 1. the query and fragment are dropped (from the first `?` or `#`);
/// 2. `%XX` escapes are decoded until none is left (`%2561` is `%61` is `a`; `%2F` is `/`);
///    a `%` without two hex digits stays as written;
/// 3. `\` is a `/` (some servers read it so);
/// 4. each segment loses its `;` parameters (`/a;jsessionid=1/b` is `/a/b`, as Java servers
///    read it);
/// 5. runs of `/` become one, `.` segments are dropped and `..` removes the segment before it
///    (RFC 3986 dot-segment removal, also of decoded `%2e%2e`), never above the root;
/// 6. ASCII letters are lower-cased; other bytes (UTF-8 or not) are kept as they are: no
///    Unicode case folding or normalisation;
/// 7. a `?` or `#` that decoding made (`%3F`, `%23`) is part of a segment, and written back
///    as its escape (`%3f`, `%23`): the result reads as the same path when normalised again.
///
/// The result starts with `/` and has no trailing `/` (`/` itself stays); an empty path stays
/// empty. Normalising it again changes nothing. Linear time; no allocation unless the path
/// does not start with a `/` or step 7 writes an escape.
pub fn normalize_path(path: &mut Vec<u8>) {
    if let Some(end) = path.iter().position(|c| *c == b'?' || *c == b'#') {
        path.truncate(end);
    }
    if path.is_empty() {
        return;
    }
    if !path.first().is_some_and(|c| is_separator(*c)) {
        path.insert(0, b'/');
    }
    let decoded = decode_fully(path);
    // Segments, rewritten in place: the write position never passes the read position,
    // because every segment written was preceded by at least one separator read.
    let mut read = 0;
    let mut write = 0;
    while read < decoded {
        if path.get(read).is_some_and(|c| is_separator(*c)) {
            read += 1;
            continue;
        }
        let start = read;
        while read < decoded && !path.get(read).is_some_and(|c| is_separator(*c)) {
            read += 1;
        }
        let end = path
            .get(start..read)
            .and_then(|segment| segment.iter().position(|c| *c == b';'))
            .map_or(read, |at| start + at);
        match path.get(start..end).unwrap_or_default() {
            b"" | b"." => {}
            b".." => {
                // Back to the `/` that began the previous segment (or the root).
                while write > 0 {
                    write -= 1;
                    if path.get(write) == Some(&b'/') {
                        break;
                    }
                }
            }
            _ => {
                set(path, write, b'/');
                write += 1;
                for at in start..end {
                    let byte = path.get(at).copied().unwrap_or_default();
                    set(path, write, byte.to_ascii_lowercase());
                    write += 1;
                }
            }
        }
    }
    if write == 0 {
        set(path, 0, b'/');
        write = 1;
    }
    path.truncate(write);
    escape_delimiters(path);
}

/// Step 7 of [`normalize_path`]: a raw `?` or `#` would end the path when the key is read
/// again (`/%3F` would be `/?`, which is `/`). Each came from an escape of three bytes or
/// more, so the path does not outgrow what it was.
fn escape_delimiters(path: &mut Vec<u8>) {
    if !path.iter().any(|c| *c == b'?' || *c == b'#') {
        return;
    }
    let mut escaped = Vec::with_capacity(path.len() + 4);
    for byte in path.iter() {
        match byte {
            b'?' => escaped.extend_from_slice(b"%3f"),
            b'#' => escaped.extend_from_slice(b"%23"),
            _ => escaped.push(*byte),
        }
    }
    *path = escaped;
}

fn is_separator(c: u8) -> bool {
    c == b'/' || c == b'\\'
}

fn set(path: &mut [u8], at: usize, byte: u8) {
    if let Some(slot) = path.get_mut(at) {
        *slot = byte;
    }
}

/// Decodes `%XX` escapes in place until none is left; returns the decoded length. The
/// output is a stack: after each byte is pushed, a `%XX` on top is replaced by its byte,
/// which may complete another escape below it (`%%341` is `%41` is `A`). Each reduction
/// shortens the output by two, so the work is linear.
fn decode_fully(path: &mut [u8]) -> usize {
    let mut len = 0;
    for read in 0..path.len() {
        let byte = path.get(read).copied().unwrap_or_default();
        set(path, len, byte);
        len += 1;
        while let Some(escape) = len.checked_sub(3).and_then(|at| path.get(at..len)) {
            let decoded = match escape {
                [b'%', high, low] => hex::digit_value(*high)
                    .zip(hex::digit_value(*low))
                    .map(|(high, low)| high << 4 | low),
                _ => None,
            };
            let Some(decoded) = decoded else {
                break;
            };
            len -= 2;
            set(path, len - 1, decoded);
        }
    }
    len
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
            // Double and triple encoding.
            "/api/%2569tems",
            "/api%252Fitems",
            "/%25%34%31PI/items",
            // Backslashes, dot segments (also encoded), path parameters.
            "\\api\\items",
            "/api/./items",
            "/api/v1/../items",
            "/api/%2e%2E/api/items",
            "/../../api/items",
            "/api;x=1/items;jsessionid=2",
            "/api/x/..;/items",
            "api/items",
        ] {
            assert_eq!(normalized(spelling), "/api/items", "{spelling}");
        }
        assert_eq!(normalized("/"), "/");
        assert_eq!(normalized("//"), "/");
        assert_eq!(normalized("/.."), "/");
        assert_eq!(normalized("/a/.."), "/");
        assert_eq!(normalized(";"), "/");
        assert_eq!(normalized(""), "");
        assert_eq!(normalized("?q"), "");
        // Broken escapes are kept as written; escapes formed by decoding are decoded.
        assert_eq!(normalized("/a%zz%4"), "/a%zz%4");
        assert_eq!(normalized("/a%"), "/a%");
        assert_eq!(normalized("/a%%341"), "/aa");
        assert_eq!(normalized("/%C3%89t%C3%A9"), "/\u{c9}t\u{e9}");
        // A `?` or `#` decoding made is part of the path: kept as its escape, so the key is
        // the same when read again (found by `normalising_twice_changes_nothing`: `%3f`).
        assert_eq!(normalized("%3f"), "/%3f");
        assert_eq!(normalized("/a%3Fb/%23c?q"), "/a%3fb/%23c");
        assert_eq!(normalized("/a%253F"), "/a%3f");
        assert_eq!(normalized(&normalized("/a%3Fb/%23c")), "/a%3fb/%23c");
        assert_ne!(normalized("/a%3Fb"), normalized("/a"));
        // Other paths stay apart.
        assert_ne!(normalized("/api/items2"), "/api/items");
        assert_ne!(normalized("/api/item"), "/api/items");
    }

    /// Every path of up to four bytes over the bytes normalisation treats apart (escapes,
    /// separators, dots, parameters, the query and fragment marks, letters of either case):
    /// it does not grow past one `/` and normalising it again changes nothing. Random paths
    /// (below) met `%3f` once in some hundred runs; this meets it every time.
    #[test]
    fn short_paths_normalise_once_and_for_all() {
        const BYTES: &[u8] = b"%235fFcC?#/\\.;aE4";
        let mut paths = vec![Vec::new()];
        let mut checked = 0;
        while let Some(path) = paths.pop() {
            let mut once = path.clone();
            normalize_path(&mut once);
            assert!(once.len() <= path.len() + 1, "{path:?} grew to {once:?}");
            let mut twice = once.clone();
            normalize_path(&mut twice);
            assert_eq!(once, twice, "{path:?}");
            checked += 1;
            if path.len() < 4 {
                paths.extend(
                    BYTES
                        .iter()
                        .map(|byte| [path.as_slice(), &[*byte]].concat()),
                );
            }
        }
        let n = BYTES.len();
        assert_eq!(checked, 1 + n + n * n + n * n * n + n * n * n * n);
    }

    proptest! {
        #[test]
        fn normalising_never_panics_and_never_grows(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut path = bytes.clone();
            normalize_path(&mut path);
            // One `/` may be added in front of a path that had none.
            prop_assert!(path.len() <= bytes.len() + 1);
        }

        #[test]
        fn normalising_twice_changes_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut once = bytes.clone();
            normalize_path(&mut once);
            let mut twice = once.clone();
            normalize_path(&mut twice);
            prop_assert_eq!(once, twice);
        }

        /// Any spelling made by encoding bytes (once or twice), changing letter case, adding
        /// slashes or `.` segments normalises to the same key as the plain path.
        #[test]
        fn spellings_of_a_path_share_its_key(
            segments in proptest::collection::vec("[a-zA-Z0-9_.~-]{1,8}", 1..5),
            spelling in proptest::collection::vec(0u8..6, 1..64),
        ) {
            let plain = format!("/{}", segments.join("/"));
            let mut expected = plain.clone().into_bytes();
            normalize_path(&mut expected);
            let mut spelled = String::new();
            let mut how = spelling.iter().cycle();
            for segment in &segments {
                spelled.push('/');
                if how.next() == Some(&5) {
                    spelled.push_str("./");
                }
                for c in segment.chars() {
                    match how.next() {
                        Some(1) => spelled.push_str(&format!("%{:02X}", c as u32)),
                        Some(2) => spelled.push_str(&format!("%25{:02x}", c as u32)),
                        Some(3) => spelled.push(c.to_ascii_uppercase()),
                        Some(4) => { spelled.push(c); spelled.push_str(";p=1"); break; }
                        _ => spelled.push(c),
                    }
                }
            }
            // `;p=1` cut the segment short: compare with what the upstream reads.
            let mut key = spelled.clone().into_bytes();
            normalize_path(&mut key);
            let cut: Vec<&str> = spelled.split('/').map(|s| s.split(';').next().unwrap_or("")).collect();
            let mut reference = cut.join("/").into_bytes();
            normalize_path(&mut reference);
            prop_assert_eq!(&key, &reference);
            if !spelling.contains(&4) {
                prop_assert_eq!(key, expected, "{} vs {}", spelled, plain);
            }
        }
    }

    #[test]
    fn client_address_is_the_peer_ip_without_port() {
        let peer = Key::ClientAddress { trusted_hops: 0 };
        let host = FakeHost::new()
            .with_property(&["source", "address"], "10.1.2.3:45678")
            .with_request_header("x-forwarded-for", "1.1.1.1");
        assert_eq!(
            peer.read(&host),
            KeyValue::Value(Cow::Borrowed(b"10.1.2.3"))
        );
        let host = FakeHost::new().with_property(&["source", "address"], "[2001:db8::1]:443");
        assert_eq!(
            peer.read(&host),
            KeyValue::Value(Cow::Borrowed(b"2001:db8::1"))
        );
    }

    #[test]
    fn an_address_envoy_took_from_forwarded_for_shares_one_bucket() {
        // use_remote_address false: Envoy's source.address is the forged header's, port 0.
        for forged in ["192.0.2.1", "192.0.2.2"] {
            let host = FakeHost::new()
                .with_property(&["source", "address"], format!("{forged}:0"))
                .with_request_header("x-forwarded-for", forged);
            let key = Key::ClientAddress { trusted_hops: 0 }.read(&host);
            assert_eq!(key, KeyValue::Anonymous);
        }
    }

    #[test]
    fn trusted_hops_read_the_trusted_proxys_entry() {
        let key = Key::ClientAddress { trusted_hops: 1 };
        let host = FakeHost::new()
            .with_property(&["source", "address"], "10.0.0.9:0")
            .with_request_header("x-forwarded-for", "6.6.6.6, 198.51.100.7");
        assert_eq!(
            key.read(&host),
            KeyValue::Value(Cow::Borrowed(b"198.51.100.7"))
        );
        let host = FakeHost::new().with_property(&["source", "address"], "10.0.0.9:1234");
        assert_eq!(key.read(&host), KeyValue::Value(Cow::Borrowed(b"10.0.0.9")));
    }

    #[test]
    fn missing_or_empty_headers_share_or_skip() {
        let name = HeaderName::parse("x-api-key", &FieldPath::root()).unwrap();
        let share = Key::Header {
            name: name.clone(),
            missing: Missing::Share,
            repeated: Repeated::Reject,
        };
        let skip = Key::Header {
            name,
            missing: Missing::Skip,
            repeated: Repeated::Reject,
        };
        let without = FakeHost::new();
        let empty = FakeHost::new().with_request_header("x-api-key", "");
        let with = FakeHost::new().with_request_header("x-api-key", b"k\xff");
        for host in [&without, &empty] {
            assert_eq!(share.read(host), KeyValue::Anonymous);
            assert_eq!(skip.read(host), KeyValue::Skip);
        }
        assert_eq!(share.read(&with), KeyValue::Value(Cow::Borrowed(b"k\xff")));
    }

    #[test]
    fn a_header_on_several_lines_is_refused_or_keyed_on_every_line_joined() {
        let key = |repeated| Key::Header {
            name: HeaderName::parse("x-api-key", &FieldPath::root()).unwrap(),
            missing: Missing::Skip,
            repeated,
        };
        let (reject, join) = (key(Repeated::Reject), key(Repeated::Join));
        for (first, second) in [("fresh", "exhausted"), ("exhausted", "fresh")] {
            let host = FakeHost::new()
                .with_request_header("x-api-key", first)
                .with_request_header("x-other", "x")
                .with_request_header("x-api-key", second);
            assert_eq!(reject.read(&host), KeyValue::Refused);
            assert!(reject.refuses(&host));
            let joined = format!("{first},{second}");
            assert_eq!(
                join.read(&host),
                KeyValue::Value(joined.into_bytes().into())
            );
            assert!(!join.refuses(&host));
        }
        // One line, even with a comma in it, is read as it is: what an upstream reads of it.
        let host = FakeHost::new().with_request_header("x-api-key", "fresh,exhausted");
        assert_eq!(
            reject.read(&host),
            KeyValue::Value(Cow::Borrowed(b"fresh,exhausted"))
        );
        assert!(!reject.refuses(&host));
        // Empty lines still join: `,` is not the missing header.
        let host = FakeHost::new()
            .with_request_header("x-api-key", "")
            .with_request_header("x-api-key", "");
        assert_eq!(join.read(&host), KeyValue::Value(Cow::Borrowed(b",")));
    }

    #[test]
    fn path_key_reads_the_pseudo_header() {
        let host = FakeHost::new().with_request_header(":path", "/Limited/?a=1");
        assert_eq!(
            Key::Path.read(&host),
            KeyValue::Value(Cow::Borrowed(b"/limited"))
        );
    }

    #[test]
    fn slots_are_stable_and_in_range() {
        let salt = salt("checkout", 0);
        let secret = SlotSecret::from_text("a configured slot secret");
        // With a configured secret, changing these moves every client to another bucket on
        // upgrade.
        assert_eq!(
            slot(
                secret,
                salt,
                &KeyValue::Value(Cow::Borrowed(b"key-a")),
                1024
            ),
            SLOT_OF_KEY_A
        );
        assert_eq!(
            slot(secret, salt, &KeyValue::Anonymous, 1024),
            SLOT_OF_ANONYMOUS
        );
        assert_ne!(salt, super::salt("checkout", 1));
        for i in 0..1000 {
            let value = KeyValue::Value(Cow::Owned(format!("k{i}").into_bytes()));
            assert!(slot(secret, salt, &value, 7) < 7);
            assert_eq!(slot(secret, salt, &value, 1), 0);
        }
    }
    const SLOT_OF_KEY_A: u32 = 699;
    const SLOT_OF_ANONYMOUS: u32 = 121;

    /// Issue 29: keys an attacker finds offline in a victim's slot (computed without the
    /// secret) are placed apart with it, and the secret decides: another secret, another
    /// placement.
    #[test]
    fn keys_colliding_without_the_secret_are_placed_apart_with_it() {
        const SLOTS: u32 = 1024;
        let salt = salt("limited", 0);
        let value = |key: &str| KeyValue::Value(Cow::Owned(key.as_bytes().to_vec()));
        let victim = value("victim");
        let offline = slot(SlotSecret::PUBLIC, salt, &victim, SLOTS);
        let colliding: Vec<KeyValue> = (0..)
            .map(|i| value(&format!("attacker-{i}")))
            .filter(|k| slot(SlotSecret::PUBLIC, salt, k, SLOTS) == offline)
            .take(20)
            .collect();
        for text in ["one Envoy's secret, 1", "one Envoy's secret, 2"] {
            let secret = SlotSecret::from_text(text);
            let victims = slot(secret, salt, &victim, SLOTS);
            let together = colliding
                .iter()
                .filter(|k| slot(secret, salt, k, SLOTS) == victims)
                .count();
            // 20 keys, each in the victim's slot with probability 1/1024.
            assert!(together <= 1, "{text}: {together} of 20 still collide");
        }
        let (a, b) = (
            SlotSecret::from_text("secret a"),
            SlotSecret::from_text("secret b"),
        );
        let moved = (0..1000)
            .map(|i| value(&format!("k{i}")))
            .filter(|k| slot(a, salt, k, SLOTS) != slot(b, salt, k, SLOTS))
            .count();
        assert!(moved > 990, "{moved}");
    }
}
