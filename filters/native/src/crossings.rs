//! The calls into Envoy a request costs the native bundle, by kind, held to budgets: the
//! benchmark's policies (`bench/policies.json`) and request, as `filters/bundle/tests/budget.rs`
//! runs them through `Vm` for the Wasm modules, here through the module's own hooks against
//! the fake Envoy (`abi/fake.rs`), one request at a time (so each stream's end hands the
//! worker's counters to Envoy, as a worker that goes idle does). Each call into Envoy costs
//! it hundreds of instructions (`docs/native.md`): a count over its budget fails the test,
//! and raising one needs a reason in the commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde_json::Value;

use crate::abi::Attribute;
use crate::abi::fake::{self, Header};

const POLICIES: &str = include_str!("../../../bench/policies.json");

const WARMUP: u64 = 200;
const REQUESTS: u64 = 1000;

/// At most this many calls of each kind per request, in hundredths; a kind not listed may
/// not be called at all.
const BUDGETS: [(&str, u64); 7] = [
    // The route name as a string; the response's code and flags (the breaker) as integers.
    ("get_attribute_string", 100),
    ("get_attribute_int", 200),
    // The request's map once; the response's names once, for its first header write.
    ("get_headers_size", 200),
    ("get_headers", 200),
    // `traceparent` upstream; `x-trace-id` and three `x-ratelimit-*` on the response; the
    // canary's tag on one request in ten: each an add (the request and the response lack
    // them; Envoy's set walks the map first).
    ("add_header", 510),
    // One request at a time: the six counters the request moved, at each stream's end.
    ("metric update", 600),
    // The canary's tagged request (one in ten): the route is matched again.
    ("clear_route_cache", 10),
];

fn bundle_json() -> String {
    let policies: Value = serde_json::from_str(POLICIES).unwrap();
    let stages =
        ["traceid", "canary", "ratelimit", "breaker"].map(|stage| (stage, policies[stage].clone()));
    serde_json::to_string(&stages.into_iter().collect::<BTreeMap<_, _>>()).unwrap()
}

fn header(name: &str, value: String) -> Header {
    (name.as_bytes().to_vec(), value.into_bytes())
}

/// The `i`-th request as Envoy hands it to the filters (wrk's headers and Envoy's own).
fn request(i: u64) -> Vec<Header> {
    vec![
        header(":authority", "127.0.0.1:10000".into()),
        header(":path", "/".into()),
        header(":method", "GET".into()),
        header(":scheme", "http".into()),
        header("x-user-id", format!("user-{}", i % 1000 + 1)),
        header("x-api-key", format!("key-{}", (i + 1) % 16)),
        header("x-forwarded-proto", "http".into()),
        header("x-request-id", format!("8d2f0c3e-5b1a-4c7e-9f00-{i:012x}")),
    ]
}

fn response() -> Vec<Header> {
    vec![
        header(":status", "200".into()),
        header("content-length", "2".into()),
    ]
}

fn has(headers: &[Header], name: &str) -> bool {
    headers.iter().any(|(n, _)| n == name.as_bytes())
}

#[test]
fn a_request_through_the_native_bundle_stays_within_its_calls_into_envoy() {
    fake::with(|envoy| {
        envoy.strings = vec![
            (Attribute::XdsRouteName, b"bench".to_vec()),
            (Attribute::XdsClusterName, b"upstream".to_vec()),
            (Attribute::ResponseCodeDetails, b"via_upstream".to_vec()),
            (Attribute::SourceAddress, b"127.0.0.1:40000".to_vec()),
        ];
        envoy.ints = vec![
            (Attribute::ResponseCode, 200),
            (Attribute::ResponseFlags, 0),
        ];
    });
    let config = fake::load("crossings", &bundle_json());
    assert!(!config.is_null(), "the benchmark's policies load");
    for i in 0..WARMUP + REQUESTS {
        if i == WARMUP {
            fake::with(|envoy| envoy.calls.clear());
        }
        assert_eq!(
            fake::stream(config, request(i), response()),
            0,
            "request {i} goes on"
        );
        // The stages ran: what each request gets on its way and back.
        fake::with(|envoy| {
            assert!(
                has(&envoy.request, "traceparent"),
                "request {i}: {:?}",
                envoy.request
            );
            assert!(has(&envoy.response, "x-trace-id"), "response {i}");
            assert!(
                has(&envoy.response, "x-ratelimit-remaining"),
                "response {i}"
            );
        });
    }
    let calls = fake::with(|envoy| std::mem::take(&mut envoy.calls));
    fake::unload(config);
    let per_request = |n: u64| (n * 100).div_ceil(REQUESTS);
    let measured: BTreeMap<&str, u64> = calls.iter().map(|(k, n)| (*k, per_request(*n))).collect();
    let over: Vec<String> = measured
        .iter()
        .filter_map(|(kind, n)| {
            let budget = BUDGETS.iter().find(|(k, _)| k == kind).map_or(0, |b| b.1);
            (*n > budget).then(|| format!("{kind}: {n} > {budget}"))
        })
        .collect();
    assert!(
        over.is_empty(),
        "calls into Envoy per request (hundredths) over budget: {over:?}; measured {measured:?}"
    );
}
