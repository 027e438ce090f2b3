//! What the observability tests (`tests/observability_*.rs`) share: the policies and routes
//! they run, the files of `istio/observability/`, the metrics docs/observability.md documents and the
//! series Prometheus holds ([`series`]), and the end-to-end test's bookkeeping of what the
//! clients saw, which Envoy and then Prometheus must hold exactly ([`seen`]).

pub mod seen;
pub mod series;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::envoy::repo_root;
use crate::mesh::{Mesh, RouteSpec, demo_routes};
use crate::rls::{Redis, Rls, RlsLimit};

/// A valid W3C `traceparent`: the trace filter continues it.
pub const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// A valid B3 single header.
pub const B3: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";

/// The policies of the observability tests, one per filter.
pub const TRACEID: &str = r#"{"default": {}}"#;
pub const CANARY: &str = r#"{"routes": {"checkout": {
    "salt": "checkout",
    "rules": [
        {"name": "beta", "cookie": "beta", "exact": "1"},
        {"name": "opt-out", "header": "x-canary-opt-out", "present": true, "release": "stable"}
    ],
    "percent": 50,
    "sticky": {"header": "x-user-id"},
    "response_header": "x-canary-decision"
}}}"#;
/// `limited` admits 5 per key, then refills one token per 1000 s: what passes does not
/// depend on how fast the test runs. `catalog` is a dry run. `global` has one global limit
/// only (the route's name as `generic_key`), counted by the rate limit service on cluster
/// `rls`; the deadline is generous, so a loaded machine does not turn answers into timeouts.
/// `global-down` has the same limit on `rls-down`, a cluster without endpoints: Envoy
/// refuses every call (`not_sent`), and the request fails open.
pub const RATELIMIT: &str = r#"{"routes": {
    "limited": {"limits": [{"rate_per_s": 0.001, "burst": 5, "key": {"header": "x-api-key"}}]},
    "catalog": {"limits": [{"rate_per_s": 1, "burst": 1}], "dry_run": true},
    "global": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 2000},
    "global-down": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls-down", "domain": "mesh", "timeout_ms": 2000}
}}"#;
/// The rate limit service admits this many calls for `global` per hour, then answers
/// OVER_LIMIT: what passes does not depend on how fast the test runs.
pub const GLOBAL_ALLOWANCE: u64 = 4;
/// `fragile` opens after 3 failures, for long enough that the two requests right after
/// find it open on any machine; `catalog` has one breaker per cluster.
pub const OPEN_MS: u64 = 5000;
pub const BREAKER: &str = r#"{"routes": {
    "fragile": {"consecutive_failures": 3, "open_ms": 5000, "half_open_max_requests": 1},
    "catalog": {"key": "cluster", "consecutive_failures": 100}
}}"#;

/// The routes the tests send to, by path. Routes match by prefix, in this order:
/// `global-down` comes before `global`.
pub const ROUTES: [&str; 6] = [
    "checkout",
    "limited",
    "fragile",
    "catalog",
    "global-down",
    "global",
];

/// A file of `istio/observability/` (the directory itself for `""`).
pub fn file(name: &str) -> PathBuf {
    repo_root().join("istio/observability").join(name)
}

/// The Grafana dashboard, `istio/observability/dashboard.json`.
pub fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(file("dashboard.json")).unwrap()).unwrap()
}

/// An Envoy route matching `prefix`, to `cluster`.
pub fn route(name: &str, prefix: &str, cluster: &str) -> Value {
    json!({ "name": name, "match": { "prefix": prefix }, "route": { "cluster": cluster } })
}

/// Redis and the rate limit service in front of it: [`GLOBAL_ALLOWANCE`] calls per hour for
/// each `generic_key`.
pub fn rate_limit_service() -> (Redis, Rls) {
    assert!(
        crate::rls::redis_available(),
        "redis-server is missing: apt-get install redis-server (scripts/test.sh does)"
    );
    let redis = Redis::start().unwrap();
    let limit = RlsLimit::new("mesh", "generic_key", GLOBAL_ALLOWANCE, 3600);
    let rls = Rls::start(&redis, vec![limit]).unwrap();
    (redis, rls)
}

/// The four filters with [`TRACEID`], [`CANARY`], [`RATELIMIT`] and [`BREAKER`] on two
/// workers, over the demo routes and `global`/`global-down`, with the rate limit service at
/// `rls` as cluster `rls` and `rls-down` without endpoints.
pub fn mesh(rls: SocketAddr) -> Mesh {
    // The demo routes plus `global` and `global-down` (first: `/global` is a prefix of it).
    let mut routes = demo_routes();
    routes.insert(0, RouteSpec::new("global", "/global", "v1"));
    routes.insert(0, RouteSpec::new("global-down", "/global-down", "v1"));
    Mesh::builder()
        .filter("traceid", TRACEID)
        .filter("canary", CANARY)
        .filter("ratelimit", RATELIMIT)
        .filter("breaker", BREAKER)
        .routes(routes)
        .grpc_cluster("rls", rls)
        .empty_grpc_cluster("rls-down")
        .concurrency(2)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}
