//! All four filters chained, as in production (`traceid`, `canary`, `ratelimit`, `breaker`,
//! then the router), with policies that exercise every parser; shared by the hostile-input
//! tests and the soak driver (`src/bin/soak.rs`).

use crate::mesh::{MeshBuilder, RouteSpec, demo_routes_with};
use crate::raw;

/// Every format: `traceparent`/`tracestate`, `b3`, `x-b3-*`, `x-request-id`.
pub const TRACEID: &str = r#"{"default": {"emit": ["w3c", "b3", "b3multi", "request_id"]}}"#;

/// Every rule target, a 20 % split by `x-user-id`, then cookie `uid`, then a minted sticky
/// cookie; one salt for every route, so a route and its tagged twin agree. `catalog` trusts
/// an incoming tag (an internal hop's).
pub const CANARY: &str = r#"{
    "default": {
        "salt": "shop",
        "rules": [
            {"name": "force", "header": "x-canary-force", "exact": "true"},
            {"name": "beta", "cookie": "beta", "exact": "1"},
            {"name": "preview", "query": "preview", "present": true},
            {"name": "new", "path_prefix": "/checkout/new"}
        ],
        "percent": 20,
        "sticky": {"header": "x-user-id", "cookie": "uid"},
        "sticky_cookie": {"secure": false},
        "response_header": "x-canary-decision"
    },
    "routes": {"catalog": {"trust_incoming": true, "response_header": "x-canary-decision"}}
}"#;
/// The canary split's salt and share.
pub const CANARY_SALT: &str = "shop";
pub const CANARY_PERCENT: f64 = 20.0;

/// `limited`: 5/s, burst 10 per `x-api-key` (a request with the header on several lines is
/// rejected). Every other route: generous limits keyed by each kind of key (client address
/// with one trusted hop, path, header: repeats joined), so every request's keys are read and
/// normalised.
pub const RATELIMIT: &str = r#"{
    "routes": {"limited": {"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}}]}},
    "default": {
        "trusted_hops": 1,
        "limits": [
            {"rate_per_s": 1000000, "burst": 1000000, "key": "client_address", "slots": 64},
            {"rate_per_s": 1000000, "burst": 1000000, "key": "path", "slots": 64},
            {"rate_per_s": 1000000, "burst": 1000000, "key": {"header": "x-api-key", "when_repeated": "join"}, "slots": 64}
        ]
    }
}"#;
pub const LIMITED_RATE_PER_S: f64 = 5.0;
pub const LIMITED_BURST: u64 = 10;

/// `fragile`: opens after 3 failures in a row for 1 s, one probe. Every other route has a
/// breaker that never opens (so every request is counted by it).
pub const BREAKER: &str = r#"{
    "routes": {"fragile": {
        "consecutive_failures": 3, "open_ms": 1000, "half_open_max_requests": 1,
        "fallback": {"status": 503, "headers": {"content-type": "application/json"},
                     "body": "{\"error\":\"circuit open\"}"}
    }},
    "default": {"consecutive_failures": 1000000}
}"#;
pub const FRAGILE_FAILURES: u64 = 3;
pub const FRAGILE_OPEN_MS: u64 = 1000;

/// The route timeout of `slow` (Envoy answers 504 after it).
pub const SLOW_TIMEOUT_MS: u64 = 250;

/// The demo's named routes and its catch-all pair, with `slow` (v1 with a short timeout)
/// between them.
pub fn routes() -> Vec<RouteSpec> {
    demo_routes_with([RouteSpec::new("slow", "/slow", "v1").timeout_ms(SLOW_TIMEOUT_MS)])
}

/// The four filters chained on two workers. Header limits are raised so that 60 KB values
/// reach the filters: `max_request_headers_kb: 128` (Envoy's default, 60 KB for all headers
/// together, would refuse them with 431 before any filter runs).
pub fn builder() -> MeshBuilder {
    crate::Mesh::builder()
        .routes(routes())
        .concurrency(2)
        .max_request_headers_kb(MAX_REQUEST_HEADERS_KB)
        .filter("traceid", TRACEID)
        .filter("canary", CANARY)
        .filter("ratelimit", RATELIMIT)
        .filter("breaker", BREAKER)
}

/// The connection manager's header limit in the chain (KB, all headers together).
pub const MAX_REQUEST_HEADERS_KB: u32 = 128;

/// 60 KB: the size of one oversized header value.
pub const BIG: usize = 60 * 1024;

/// Bytes that are not UTF-8 (and an obs-text byte), as a header value may carry them.
pub const NOT_UTF8: &[u8] = b"\xff\xfe\xc3\x28 \x80zz\xa0";

/// What a hostile request should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Passed every filter and reached an upstream: 200 with the echo's JSON.
    Served,
    /// Refused by Envoy's HTTP codec before any filter ran: a 4xx from Envoy itself.
    Refused,
}

/// One hostile request.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

fn repeat(pattern: &str, len: usize) -> Vec<u8> {
    pattern.bytes().cycle().take(len).collect()
}

const VALID_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The corpus: malformed, non-UTF-8, oversized (60 KB) and repeated values in every header
/// a filter parses, odd paths and query strings, and requests Envoy itself refuses.
pub fn hostile_corpus() -> Vec<Hostile> {
    use Expect::{Refused, Served};
    let get = |path: &[u8], headers: &[(&str, Vec<u8>)]| raw::request("GET", path, headers);
    let one = |name: &str, value: Vec<u8>| get(b"/checkout", &[(name, value)]);
    let with_traceparent = |name: &str, value: Vec<u8>| {
        get(
            b"/checkout",
            &[("traceparent", VALID_TRACEPARENT.into()), (name, value)],
        )
    };
    let many = |name: &'static str, value: &[u8], n: usize| {
        let headers: Vec<(&str, Vec<u8>)> = (0..n).map(|_| (name, value.to_vec())).collect();
        get(b"/checkout", &headers)
    };
    let members: Vec<u8> = (0..15_000)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes();
    let mut huge_path = b"/checkout/".to_vec();
    huge_path.extend(repeat("%25", BIG));
    let mut huge_query = b"/checkout?".to_vec();
    huge_query.extend(repeat("preview=%zz&&=%%+", BIG));
    let mut dots = b"/checkout".to_vec();
    dots.extend(repeat("/..;x/.%2e/%2e%2E/.", BIG / 2));
    let many_headers: Vec<(String, Vec<u8>)> = (0..90)
        .map(|i| (format!("x-junk-{i}"), NOT_UTF8.to_vec()))
        .collect();
    let many_headers: Vec<(&str, Vec<u8>)> = many_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    let mut out = vec![
        // traceid: W3C and B3 parsers.
        (
            "traceparent: not UTF-8",
            one("traceparent", NOT_UTF8.into()),
            Served,
        ),
        (
            "traceparent: 60 KB",
            one("traceparent", repeat("00-ab-", BIG)),
            Served,
        ),
        (
            "traceparent: 40 copies",
            many("traceparent", VALID_TRACEPARENT.as_bytes(), 40),
            Served,
        ),
        (
            "tracestate: 15,000 members",
            with_traceparent("tracestate", members),
            Served,
        ),
        (
            "tracestate: not UTF-8",
            with_traceparent("tracestate", [b"a=".as_slice(), NOT_UTF8].concat()),
            Served,
        ),
        (
            "tracestate: 60 KB of commas",
            with_traceparent("tracestate", repeat(",", BIG)),
            Served,
        ),
        ("b3: not UTF-8", one("b3", NOT_UTF8.into()), Served),
        (
            "b3: 60 KB",
            one("b3", repeat("80f198ee56343ba8-", BIG)),
            Served,
        ),
        (
            "x-b3-*: 60 KB and not UTF-8",
            get(
                b"/checkout",
                &[
                    ("x-b3-traceid", repeat("a", BIG)),
                    ("x-b3-spanid", NOT_UTF8.into()),
                    ("x-b3-sampled", NOT_UTF8.into()),
                ],
            ),
            Served,
        ),
        (
            "x-request-id: not UTF-8",
            one("x-request-id", NOT_UTF8.into()),
            Served,
        ),
        (
            "x-request-id: 60 KB",
            one("x-request-id", repeat("r", BIG)),
            Served,
        ),
        // canary: tag, rules, sticky keys, cookies, query.
        (
            "x-canary: forged, not UTF-8",
            one("x-canary", NOT_UTF8.into()),
            Served,
        ),
        (
            "x-canary: forged 40 times",
            many("x-canary", b"true", 40),
            Served,
        ),
        (
            "x-canary-force: 60 KB",
            one("x-canary-force", repeat("true", BIG)),
            Served,
        ),
        (
            "x-user-id: not UTF-8",
            one("x-user-id", NOT_UTF8.into()),
            Served,
        ),
        (
            "x-user-id: 60 KB",
            one("x-user-id", repeat("u", BIG)),
            Served,
        ),
        (
            "cookie: 60 KB of pairs",
            one("cookie", repeat("x=1; ", BIG)),
            Served,
        ),
        (
            "cookie: 60 KB of separators",
            one("cookie", repeat(";=\"", BIG)),
            Served,
        ),
        (
            "cookie: not UTF-8",
            one(
                "cookie",
                [b"uid=".as_slice(), NOT_UTF8, b"; beta=\xff"].concat(),
            ),
            Served,
        ),
        (
            "cookie: 40 headers",
            many("cookie", b"uid=u1; beta=0", 40),
            Served,
        ),
        ("query: 60 KB", get(&huge_query, &[]), Served),
        ("path: 60 KB of %25", get(&huge_path, &[]), Served),
        ("path: 30 KB of dot segments", get(&dots, &[]), Served),
        // ratelimit: header, path and client-address keys.
        (
            "x-api-key: not UTF-8",
            one("x-api-key", NOT_UTF8.into()),
            Served,
        ),
        (
            "x-api-key: 60 KB",
            one("x-api-key", repeat("k", BIG)),
            Served,
        ),
        ("x-api-key: 40 copies", many("x-api-key", b"k", 40), Served),
        (
            "x-forwarded-for: 60 KB",
            one("x-forwarded-for", repeat("1.2.3.4, ", BIG)),
            Served,
        ),
        (
            "x-forwarded-for: not UTF-8",
            one("x-forwarded-for", NOT_UTF8.into()),
            Served,
        ),
        (
            "x-forwarded-for: commas only",
            one("x-forwarded-for", repeat(",", 4096)),
            Served,
        ),
        // Every parser at once, and many headers.
        (
            "everything not UTF-8",
            get(
                b"/?preview=%ff",
                &[
                    "traceparent",
                    "tracestate",
                    "b3",
                    "cookie",
                    "x-user-id",
                    "x-canary",
                    "x-api-key",
                    "x-forwarded-for",
                ]
                .map(|n| (n, NOT_UTF8.to_vec())),
            ),
            Served,
        ),
        ("90 headers", get(b"/catalog", &many_headers), Served),
        (
            "trusted tag, not UTF-8",
            get(b"/catalog", &[("x-canary", NOT_UTF8.into())]),
            Served,
        ),
        // Envoy's codec refuses these before any filter runs.
        (
            "header value with a control byte",
            one("x-user-id", b"a\x01b".to_vec()),
            Refused,
        ),
        (
            "header name not a token",
            one("x-b(ad", b"1".to_vec()),
            Refused,
        ),
        (
            "headers over the limit",
            one("x-user-id", repeat("u", 2 * BIG + 20 * 1024)),
            Refused,
        ),
        ("path not ASCII", get(b"/checkout/\xff\xfe", &[]), Refused),
    ];
    out.sort_by_key(|(name, _, _)| *name);
    out.into_iter()
        .map(|(name, bytes, expect)| Hostile {
            name,
            bytes,
            expect,
        })
        .collect()
}
