//! Every parser that reads request data, fed hostile bytes: arbitrary bytes, and runs of the
//! fragments parsers split on (`%`, `%25`, `/`, `..`, `;`, `,`, `=`, `&`, non-UTF-8), from
//! empty up to 64 KB (Envoy's default limit for all headers together is 60 KB). Each must
//! return without panicking and stay within a stated allocation bound.
//!
//! The bound is on the peak of heap bytes the call holds at once (a counting allocator
//! tracks the calling thread), stated per parser in terms of the input's length `n`:
//!
//! | parser | peak allocation |
//! | --- | --- |
//! | `traceparent` (`TraceParent::parse`), `b3` (`parse_single`), `cookie::find`, `query_of`, `path_only`, `request::client_address` | 0 |
//! | `check_tracestate` | `n` (a rewritten line is at most the input), and never over 17 KiB whatever `n` (32 members of 513 bytes at most) |
//! | `query::param`, `query::decode` | `n + 64` |
//! | `ratelimit::key::normalize_path` (in place) | `2n + 16` when the path lacks its leading `/`, else 0 |
//! | a whole decision with `FakeHost` (trace, canary, every rate-limit key) | `3N + 4 KiB` over the `N` bytes of all request headers (the fake host copies what is read, as Envoy does) |
//!
//! The breaker reads no request data (only Envoy's response code and flags).
// A global allocator is `unsafe` to implement; it only counts and forwards to `System`.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mesh_policy::canary::{CanaryConfig, CanaryPolicy, cookie, query};
use mesh_policy::config::{FieldPath, HeaderName, parse_json};
use mesh_policy::fake::FakeHost;
use mesh_policy::ratelimit::key::{Key, Missing, Repeated, normalize_path};
use mesh_policy::request::client_address;
use mesh_policy::trace::b3;
use mesh_policy::trace::w3c::{TraceParent, check_tracestate};
use mesh_policy::trace::{TraceConfig, TracePolicy};
use proptest::prelude::*;

/// Counts the bytes each thread holds; the peak since [`peak_during`] started. A thread
/// count (not a global one) keeps parallel tests apart. Hand-written: the allocation-stats
/// crates count globally.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: the thread's counters may be gone while it exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result and the most bytes it held at once (what it returns
/// included).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (out, usize::try_from(peak).unwrap_or(0))
}

/// The fragments parsers split on or decode, and bytes that are not UTF-8.
const FRAGMENTS: &[&[u8]] = &[
    b"%",
    b"%2",
    b"%25",
    b"%2e",
    b"%2F",
    b"%5c",
    b"%41",
    b"/",
    b"\\",
    b"..",
    b".",
    b";",
    b"=",
    b",",
    b"&",
    b"+",
    b"?",
    b"#",
    b"-",
    b" ",
    b"\t",
    b"\"",
    b"@",
    b"a=1",
    b"k1=v",
    b"0",
    b"f",
    b"00-",
    b"4bf92f3577b34da6a3ce929d0e0e4736",
    b"00f067aa0ba902b7",
    b"\xff",
    b"\xc3\x28",
    b"\x00",
    b"1.2.3.4",
    b"[::1]:0",
    b":",
];

/// Hostile inputs: arbitrary bytes, or a run of fragments repeated up to 64 KB.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let fragments = proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..64)
        .prop_map(|parts| parts.concat());
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        fragments.clone(),
        (fragments, 1usize..=65_536).prop_map(|(run, len)| {
            run.iter()
                .copied()
                .cycle()
                .take(if run.is_empty() { 0 } else { len })
                .collect()
        }),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn traceparent_and_b3_allocate_nothing(value in hostile()) {
        let (_, peak) = peak_during(|| TraceParent::parse(&value));
        prop_assert_eq!(peak, 0);
        let (_, peak) = peak_during(|| b3::parse_single(&value));
        prop_assert_eq!(peak, 0);
    }

    #[test]
    fn tracestate_is_bounded_whatever_its_length(value in hostile()) {
        let (_, peak) = peak_during(|| check_tracestate(&[&value]));
        prop_assert!(peak <= value.len(), "{peak} for {} bytes", value.len());
        prop_assert!(peak <= 17 * 1024, "{peak} for {} bytes", value.len());
        // The same bytes as several lines: the lines' list and the one line written.
        let lines: Vec<&[u8]> = value.chunks(97).collect();
        let (_, peak) = peak_during(|| check_tracestate(&lines));
        prop_assert!(peak <= value.len(), "{peak} for {} bytes in lines", value.len());
    }

    /// Valid, distinct members, up to 64 KB of them: the shape that made the check quadratic
    /// and unbounded before it stopped at the 33rd member.
    #[test]
    fn tracestate_with_thousands_of_members_is_bounded(members in 0usize..12_000, junk in hostile()) {
        let mut value = (0..members).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",").into_bytes();
        value.extend_from_slice(&junk);
        let (_, peak) = peak_during(|| check_tracestate(&[&value]));
        prop_assert!(peak <= 17 * 1024, "{peak} for {members} members");
    }

    #[test]
    fn b3_multi_headers_hold_at_most_what_they_read(
        trace in hostile(), span in hostile(), sampled in hostile(),
    ) {
        let read = trace.len() + span.len() + sampled.len();
        let (_, peak) = peak_during(|| {
            b3::read_multi(|name| match name {
                b3::TRACE_ID => Some(trace.as_slice()),
                b3::SPAN_ID => Some(span.as_slice()),
                b3::SAMPLED | b3::FLAGS => Some(sampled.as_slice()),
                _ => None,
            })
        });
        prop_assert!(peak <= read + 1024, "{peak} for {read} bytes");
    }

    #[test]
    fn cookies_allocate_nothing(header in hostile(), name in hostile()) {
        let name = &name[..name.len().min(32)];
        let (found, peak) = peak_during(|| cookie::find(&header, name).map(<[u8]>::len));
        prop_assert_eq!(peak, 0);
        prop_assert!(found.is_none_or(|len| len <= header.len()));
    }

    #[test]
    fn query_strings_allocate_at_most_their_length(path in hostile(), name in hostile()) {
        let name = &name[..name.len().min(32)];
        let (query, peak) = peak_during(|| (query::query_of(&path), query::path_only(&path)));
        prop_assert_eq!(peak, 0);
        let query = query.0;
        let (_, peak) = peak_during(|| query::param(query, name));
        prop_assert!(peak <= query.len() + 64, "{peak} for {} bytes", query.len());
        let (decoded, peak) = peak_during(|| query::decode(&path).len());
        prop_assert!(decoded <= path.len());
        prop_assert!(peak <= path.len() + 64, "{peak} for {} bytes", path.len());
    }

    #[test]
    fn path_keys_normalise_in_place(path in hostile()) {
        let mut key = path.clone();
        let (_, peak) = peak_during(|| normalize_path(&mut key));
        let bound = if path.first().is_some_and(|c| *c == b'/' || *c == b'\\') { 0 } else { 2 * path.len() + 16 };
        prop_assert!(peak <= bound, "{peak} for {} bytes", path.len());
        prop_assert!(key.len() <= path.len() + 1);
    }

    #[test]
    fn client_addresses_allocate_nothing(
        source in hostile(), forwarded in hostile(), hops in 0u32..5,
    ) {
        let (found, peak) = peak_during(|| client_address(&source, Some(&forwarded), hops).map(<[u8]>::len));
        prop_assert_eq!(peak, 0);
        prop_assert!(found.is_none_or(|len| len <= source.len().max(forwarded.len())));
    }

    /// Whole decisions over a request whose every parsed header is hostile.
    #[test]
    fn decisions_hold_at_most_three_times_the_headers(
        values in proptest::collection::vec(hostile(), 12),
        address in hostile(),
    ) {
        let names = [
            "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
            "x-canary", "cookie", "x-user-id", ":path", "x-api-key", "x-forwarded-for",
        ];
        let mut host = FakeHost::new().with_property(&["source", "address"], &address);
        for (name, value) in names.iter().zip(&values) {
            host = host.with_request_header(name, value);
        }
        let total: usize = values.iter().map(Vec::len).sum::<usize>() + address.len();
        let bound = 3 * total + 4096;

        let trace = trace_policy();
        let (_, peak) = peak_during(|| trace.decide(&mut host));
        prop_assert!(peak <= bound, "trace: {peak} for {total} bytes");

        let canary = canary_policy();
        let (_, peak) = peak_during(|| canary.decide(b"salt", &mut host));
        prop_assert!(peak <= bound, "canary: {peak} for {total} bytes");

        for key in rate_limit_keys() {
            let (_, peak) = peak_during(|| key.read(&host));
            prop_assert!(peak <= bound, "{key:?}: {peak} for {total} bytes");
        }
    }
}

fn trace_policy() -> TracePolicy {
    let json = br#"{"emit": ["w3c", "b3", "b3multi", "request_id"]}"#;
    TracePolicy::compile(parse_json::<TraceConfig>(json).unwrap(), &FieldPath::root()).unwrap()
}

fn canary_policy() -> CanaryPolicy {
    let json = br#"{"percent": 20, "sticky": {"header": "x-user-id", "cookie": "uid"}, "sticky_cookie": {},
            "rules": [{"cookie": "beta", "exact": "1"}, {"query": "preview", "present": true},
                      {"header": "x-canary-force", "prefix": "t"}, {"path_prefix": "/new"}]}"#;
    CanaryPolicy::compile(
        parse_json::<CanaryConfig>(json).unwrap(),
        &FieldPath::root(),
    )
    .unwrap()
}

fn rate_limit_keys() -> Vec<Key> {
    vec![
        Key::Path,
        Key::ClientAddress { trusted_hops: 0 },
        Key::ClientAddress { trusted_hops: 2 },
        Key::Header {
            name: HeaderName::parse("x-api-key", &FieldPath::root()).unwrap(),
            missing: Missing::Share,
            repeated: Repeated::Join,
        },
    ]
}

/// The sizes the property tests only reach by chance, every time: 64 KB of each fragment.
#[test]
fn sixty_four_kilobytes_of_each_fragment() {
    let canary = canary_policy();
    let trace = trace_policy();
    for fragment in FRAGMENTS {
        let value: Vec<u8> = fragment.iter().copied().cycle().take(65_536).collect();
        let (_, peak) = peak_during(|| check_tracestate(&[&value]));
        assert!(peak <= 17 * 1024, "{fragment:?}: {peak}");
        let mut path = value.clone();
        let (_, peak) = peak_during(|| normalize_path(&mut path));
        assert!(peak <= 2 * value.len() + 16, "{fragment:?}: {peak}");
        let mut host = FakeHost::new();
        for name in [
            "traceparent",
            "tracestate",
            "cookie",
            "x-user-id",
            ":path",
            "x-canary",
        ] {
            host = host.with_request_header(name, &value);
        }
        let bound = 3 * 6 * value.len() + 4096;
        let (_, peak) = peak_during(|| trace.decide(&mut host));
        assert!(peak <= bound, "{fragment:?}: {peak}");
        let (_, peak) = peak_during(|| canary.decide(b"salt", &mut host));
        assert!(peak <= bound, "{fragment:?}: {peak}");
    }
}

/// The counter itself: it sees what a call holds, so the bounds above can fail.
#[test]
fn the_counter_sees_allocations() {
    let (_, peak) = peak_during(|| vec![0u8; 10_000].len());
    assert!(peak >= 10_000);
    let (_, peak) = peak_during(|| 1 + 1);
    assert_eq!(peak, 0);
}
