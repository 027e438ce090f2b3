//! Every decision visible in a real Prometheus: Debian's `prometheus` scrapes a real Envoy
//! running the four built filters (`dist/*.wasm`; `MESH_MODULES=bundle`: the bundle), with a
//! real rate limit service behind the global limit (Debian's `redis-server`), and the tests
//! read what the clients saw back through its HTTP API, run every dashboard panel's query and
//! every alert against it.
//!
//! Nothing here asserts how fast anything is: after traffic, a test waits until Envoy's own
//! counters show what the clients saw, notes the time, and waits (bounded, by polling the
//! API) until Prometheus has scraped every target after that time. Then the values must be
//! equal, not close.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use mesh_integration::echo::EchoServer;
use mesh_integration::envoy::{self, Envoy, Harness};
use mesh_integration::prometheus::{Job, Prometheus, promtool_binary};
use mesh_integration::rls::{RESPONSE_HEADER, Redis, Rls, RlsLimit};
use mesh_integration::{Mesh, Modules, Reply, RouteSpec, demo_routes};
use serde_json::{Value, json};

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const B3: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";

const TRACEID: &str = r#"{"default": {}}"#;
const CANARY: &str = r#"{"routes": {"checkout": {
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
const RATELIMIT: &str = r#"{"routes": {
    "limited": {"limits": [{"rate_per_s": 0.001, "burst": 5, "key": {"header": "x-api-key"}}]},
    "catalog": {"limits": [{"rate_per_s": 1, "burst": 1}], "dry_run": true},
    "global": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 2000},
    "global-down": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls-down", "domain": "mesh", "timeout_ms": 2000}
}}"#;
/// The rate limit service admits this many calls for `global` per hour, then answers
/// OVER_LIMIT: what passes does not depend on how fast the test runs.
const GLOBAL_ALLOWANCE: u64 = 4;
/// `fragile` opens after 3 failures, for long enough that the two requests right after
/// find it open on any machine; `catalog` has one breaker per cluster.
const OPEN_MS: u64 = 5000;
const BREAKER: &str = r#"{"routes": {
    "fragile": {"consecutive_failures": 3, "open_ms": 5000, "half_open_max_requests": 1},
    "catalog": {"key": "cluster", "consecutive_failures": 100}
}}"#;

/// The routes the tests send to, by path. Routes match by prefix, in this order:
/// `global-down` comes before `global`.
const ROUTES: [&str; 6] = [
    "checkout",
    "limited",
    "fragile",
    "catalog",
    "global-down",
    "global",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn observability(file: &str) -> PathBuf {
    repo().join("istio/observability").join(file)
}

/// Every metric the filters export and the label sets its series carry (the README's
/// Stats table), as Prometheus names them: a histogram is its `_bucket` (with `le`), `_sum`
/// and `_count` series. `job` and `instance` come from the scrape.
fn documented_series() -> BTreeMap<&'static str, BTreeSet<Vec<&'static str>>> {
    let sets = |sets: &[&[&'static str]]| sets.iter().map(|s| s.to_vec()).collect();
    BTreeMap::from([
        ("mesh_trace_requests_total", sets(&[&["outcome", "route"]])),
        ("mesh_canary_untrusted_tags_total", sets(&[&["route"]])),
        (
            "mesh_canary_requests_total",
            sets(&[
                &["reason", "release", "route"],
                &["reason", "release", "route", "rule"],
            ]),
        ),
        (
            "mesh_ratelimit_requests_total",
            sets(&[&["decision", "route"]]),
        ),
        (
            "mesh_ratelimit_global_calls_total",
            sets(&[&["outcome", "route"]]),
        ),
        (
            "mesh_ratelimit_global_call_duration_ms_bucket",
            sets(&[&["le", "route"]]),
        ),
        (
            "mesh_ratelimit_global_call_duration_ms_sum",
            sets(&[&["route"]]),
        ),
        (
            "mesh_ratelimit_global_call_duration_ms_count",
            sets(&[&["route"]]),
        ),
        (
            "mesh_ratelimit_store_errors_total",
            sets(&[&["error", "route"]]),
        ),
        (
            "mesh_breaker_requests_total",
            sets(&[&["decision", "route"]]),
        ),
        (
            "mesh_breaker_calls_total",
            sets(&[&["outcome", "protocol", "route"]]),
        ),
        ("mesh_breaker_slow_calls_total", sets(&[&["route"]])),
        (
            "mesh_breaker_store_errors_total",
            sets(&[&["error", "route"]]),
        ),
        ("mesh_breaker_transitions_total", sets(&[&["route", "to"]])),
        (
            "mesh_breaker_state",
            sets(&[&["route"], &["cluster", "route"]]),
        ),
    ])
}

/// A Prometheus series: its name and its labels, sorted.
type SeriesKey = (String, BTreeMap<String, String>);

/// An Envoy stat name (`base;label=value;...`) as a Prometheus series key: the name and its
/// labels, sorted.
fn series_key(stat: &str) -> SeriesKey {
    let mut parts = stat.split(';');
    let base = parts.next().unwrap_or_default().to_owned();
    let labels = parts
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (base, labels)
}

/// Every `mesh_` series of `job` in Prometheus, keyed like [`series_key`], with its value.
fn scraped_series(prometheus: &Prometheus, job: &str) -> BTreeMap<SeriesKey, f64> {
    prometheus
        .query(&format!(r#"{{job="{job}", __name__=~"mesh_.+"}}"#))
        .unwrap()
        .into_iter()
        .map(|sample| {
            let mut labels: BTreeMap<String, String> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let name = labels.remove("__name__").unwrap_or_default();
            labels.remove("job");
            labels.remove("instance");
            ((name, labels), sample.value)
        })
        .collect()
}

/// The label-name sets of each metric among `series`.
fn label_sets<'a>(
    series: impl Iterator<Item = &'a SeriesKey>,
) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut sets: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (name, labels) in series {
        sets.entry(name.clone())
            .or_default()
            .insert(labels.keys().cloned().collect());
    }
    sets
}

fn assert_documented_label_sets(series: &BTreeMap<SeriesKey, f64>, what: &str) {
    let documented: BTreeMap<String, BTreeSet<Vec<String>>> = documented_series()
        .into_iter()
        .map(|(name, sets)| {
            let sets = sets
                .into_iter()
                .map(|set| set.into_iter().map(str::to_owned).collect())
                .collect();
            (name.to_owned(), sets)
        })
        .collect();
    assert_eq!(
        label_sets(series.keys()),
        documented,
        "{what}: metrics and label sets in Prometheus differ from the documented ones"
    );
}

/// What the clients saw, as the counters should have it (Envoy stat names).
#[derive(Debug, Default)]
struct Seen {
    counts: BTreeMap<String, u64>,
    /// Values recorded in each histogram (Envoy stat names): its `_count`.
    samples: BTreeMap<String, u64>,
}

impl Seen {
    fn add(&mut self, stat: String) {
        *self.counts.entry(stat).or_default() += 1;
    }

    fn sample(&mut self, histogram: &str) {
        *self.samples.entry(histogram.to_owned()).or_default() += 1;
    }

    /// The `_count` series every histogram should have, keyed as Prometheus names them.
    fn histogram_counts(&self) -> BTreeMap<SeriesKey, f64> {
        self.samples
            .iter()
            .map(|(stat, n)| {
                let (base, labels) = series_key(stat);
                ((format!("{base}_count"), labels), *n as f64)
            })
            .collect()
    }

    fn get(&self, stat: &str) -> u64 {
        self.counts.get(stat).copied().unwrap_or(0)
    }

    fn set(&mut self, stat: &str, value: u64) {
        self.counts.insert(stat.to_owned(), value);
    }
}

/// The trace filter's outcome for a request with these headers.
fn trace_outcome(headers: &[(&str, &str)]) -> &'static str {
    match headers
        .iter()
        .find(|(n, _)| *n == "traceparent" || *n == "b3")
    {
        Some(&("traceparent", value)) if value == TRACE => "continued",
        Some(&("traceparent", _)) => "replaced",
        Some(_) => "continued",
        None => "started",
    }
}

/// Sends a request and books what every filter decided for it, as the client can tell.
fn send(mesh: &Mesh, seen: &mut Seen, route: &str, headers: &[(&str, &str)]) -> Reply {
    let mut call = mesh.get(&format!("/{route}"));
    for (name, value) in headers {
        call = call.header(name, value);
    }
    let reply = call.send();
    seen.add(format!(
        "mesh_trace_requests_total;route={route};outcome={}",
        trace_outcome(headers)
    ));
    match route {
        "checkout" => {
            let decision = reply
                .header("x-canary-decision")
                .unwrap_or_else(|| panic!("no x-canary-decision: {reply:?}"));
            // `canary; rule=beta`, `stable; sticky`, `canary; random`.
            let (release, reason) = decision.split_once("; ").unwrap();
            let reason = match reason.split_once('=') {
                Some((_, rule)) => format!("rule;rule={rule}"),
                None => reason.to_owned(),
            };
            seen.add(format!(
                "mesh_canary_requests_total;route=checkout;release={release};reason={reason}"
            ));
            assert_eq!(
                reply.service().as_deref(),
                Some(if release == "canary" { "v2" } else { "v1" }),
                "{decision}"
            );
        }
        "limited" => {
            let decision = if reply.status == 429 {
                "rejected"
            } else {
                "allowed"
            };
            seen.add(format!(
                "mesh_ratelimit_requests_total;route=limited;decision={decision}"
            ));
        }
        "global" => {
            // One call per request (no local limit in front). The service's answer reaches
            // the client as its response header; without it the call failed (let through).
            let answer = reply.header(RESPONSE_HEADER);
            let (outcome, decision) = match (reply.status, answer.as_deref()) {
                (200, Some("ok")) => ("ok", "allowed"),
                (429, Some("over_limit")) => ("over_limit", "rejected"),
                (200, None) => ("error", "allowed"),
                (status, answer) => panic!("global: {status} {answer:?}: {}", reply.text()),
            };
            seen.add(format!(
                "mesh_ratelimit_global_calls_total;route=global;outcome={outcome}"
            ));
            seen.add(format!(
                "mesh_ratelimit_requests_total;route=global;decision={decision}"
            ));
            seen.sample("mesh_ratelimit_global_call_duration_ms;route=global");
        }
        "global-down" => {
            // The call is never sent (no endpoint): an error, the request let through and
            // counted allowed; the failed call is timed all the same.
            assert_eq!(
                (reply.status, reply.header(RESPONSE_HEADER)),
                (200, None),
                "global-down fails open: {}",
                reply.text()
            );
            seen.add(
                "mesh_ratelimit_global_calls_total;route=global-down;outcome=error".to_owned(),
            );
            seen.add("mesh_ratelimit_requests_total;route=global-down;decision=allowed".to_owned());
            seen.sample("mesh_ratelimit_global_call_duration_ms;route=global-down");
        }
        "fragile" | "catalog" => {
            let breaker = if route == "fragile" {
                "route=fragile".to_owned()
            } else {
                "route=catalog".to_owned()
            };
            if reply.header("x-circuit-state").is_some() {
                seen.add(format!(
                    "mesh_breaker_requests_total;{breaker};decision=rejected"
                ));
            } else {
                let outcome = if reply.status == 200 {
                    "success"
                } else {
                    "failure"
                };
                seen.add(format!(
                    "mesh_breaker_requests_total;{breaker};decision=allowed"
                ));
                seen.add(format!(
                    "mesh_breaker_calls_total;{breaker};outcome={outcome};protocol=http"
                ));
            }
        }
        _ => {}
    }
    reply
}

/// Dry-run decisions are not visible to clients: only their sum is known.
const UNPREDICTABLE: [&str; 2] = [
    "mesh_ratelimit_requests_total;route=catalog;decision=allowed",
    "mesh_ratelimit_requests_total;route=catalog;decision=dry_run_rejected",
];

/// Envoy's own Prometheus exposition (`/stats/prometheus`) of the filters' histograms:
/// every `_bucket`, `_sum` and `_count` series of a family typed `histogram`.
fn envoy_histograms(mesh: &Mesh) -> BTreeMap<SeriesKey, f64> {
    let text = mesh.stats_page("/stats/prometheus?filter=mesh_");
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let mut series = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
            None => (name_labels, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        if !family.is_some_and(|f| families.contains(f)) {
            continue;
        }
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|label| {
                let (k, v) = label.split_once('=').unwrap();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                (k.to_owned(), v.unwrap().to_owned())
            })
            .collect();
        let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        series.insert((name.to_owned(), labels), value);
    }
    series
}

/// Envoy's `mesh_` stats once they are what the clients saw.
struct Settled {
    /// Counters and gauges by stat name (`/stats`).
    stats: BTreeMap<String, u64>,
    /// Histograms as Envoy exposes them to Prometheus.
    histograms: BTreeMap<SeriesKey, f64>,
}

/// Waits (bounded) until Envoy's counters are what the clients saw, every one of them
/// (a stat the test did not book must be 0), and every histogram holds as many values as
/// the clients caused (Envoy merges histograms at its stats flush, every 5 s); returns
/// Envoy's stats.
fn settle(mesh: &Mesh, seen: &Seen) -> Settled {
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected_counts = seen.histogram_counts();
    loop {
        let stats = mesh.stats();
        let histograms = envoy_histograms(mesh);
        let counts: BTreeMap<&SeriesKey, f64> = histograms
            .iter()
            .filter(|((name, _), _)| name.ends_with("_count"))
            .map(|(key, value)| (key, *value))
            .collect();
        let differences: Vec<String> = stats
            .iter()
            .filter(|(name, _)| !UNPREDICTABLE.contains(&name.as_str()))
            .filter(|(name, value)| seen.get(name) != **value)
            .map(|(name, value)| format!("{name}: envoy {value}, seen {}", seen.get(name)))
            .chain(
                seen.counts
                    .keys()
                    .filter(|name| !stats.contains_key(*name))
                    .map(|name| format!("{name}: not in envoy")),
            )
            .chain(
                counts
                    .iter()
                    .filter(|(key, value)| {
                        expected_counts.get(**key).copied().unwrap_or(0.0) != **value
                    })
                    .map(|(key, value)| {
                        format!(
                            "{key:?}: envoy {value}, seen {}",
                            expected_counts.get(*key).copied().unwrap_or(0.0)
                        )
                    }),
            )
            .chain(
                expected_counts
                    .keys()
                    .filter(|key| !counts.contains_key(key))
                    .map(|key| format!("{key:?}: not in envoy")),
            )
            .collect();
        if differences.is_empty() {
            return Settled { stats, histograms };
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's counters never matched what the clients saw:\n{}",
            differences.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for Envoy's counters to match, then for a scrape after that; returns Envoy's stats.
fn settle_and_scrape(mesh: &Mesh, seen: &Seen, prometheus: &Prometheus) -> Settled {
    let settled = settle(mesh, seen);
    prometheus.wait_for_scrape_after("mesh", 1, SystemTime::now());
    settled
}

/// Prometheus holds exactly Envoy's `mesh_` stats: the same series (every label extracted)
/// and the same values, the histograms' buckets, sums and counts included.
fn assert_prometheus_has(prometheus: &Prometheus, settled: &Settled) {
    let scraped = scraped_series(prometheus, "mesh");
    let mut expected: BTreeMap<_, f64> = settled
        .stats
        .iter()
        .map(|(name, value)| (series_key(name), *value as f64))
        .collect();
    expected.extend(settled.histograms.clone());
    assert_eq!(scraped, expected, "Prometheus differs from Envoy's /stats");
}

/// One series' value in Prometheus; panics unless exactly one matches.
fn value(prometheus: &Prometheus, selector: &str) -> f64 {
    let samples = prometheus.query(selector).unwrap();
    assert_eq!(samples.len(), 1, "{selector}: {samples:?}");
    samples[0].value
}

/// The alerting rules as Prometheus loaded them from alerts.yaml: name -> query. Every rule
/// must be healthy (its last evaluation ran without error).
fn alert_rules(prometheus: &Prometheus) -> BTreeMap<String, String> {
    let rules = prometheus.api("rules", &[("type", "alert")]).unwrap();
    let mut exprs = BTreeMap::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(rule["health"], "err", "{rule}");
            exprs.insert(
                rule["name"].as_str().unwrap().to_owned(),
                rule["query"].as_str().unwrap().to_owned(),
            );
        }
    }
    exprs
}

/// Waits for an alert in state `pending` or `firing` whose labels include `labels`.
fn wait_for_alert(prometheus: &Prometheus, name: &str, labels: &[(&str, &str)]) -> Value {
    prometheus.wait_for(&format!("alert {name} {labels:?}"), |p| {
        p.alerts().into_iter().find(|alert| {
            alert["labels"]["alertname"] == name
                && labels.iter().all(|(k, v)| alert["labels"][*k] == *v)
        })
    })
}

/// Redis and the rate limit service in front of it: [`GLOBAL_ALLOWANCE`] calls per hour for
/// each `generic_key`.
fn rate_limit_service() -> (Redis, Rls) {
    assert!(
        mesh_integration::rls::redis_available(),
        "redis-server is missing: apt-get install redis-server (scripts/test.sh does)"
    );
    let redis = Redis::start().unwrap();
    let limit = RlsLimit::new("mesh", "generic_key", GLOBAL_ALLOWANCE, 3600);
    let rls = Rls::start(&redis, vec![limit]).unwrap();
    (redis, rls)
}

fn mesh(rls: SocketAddr) -> Mesh {
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

#[test]
fn every_decision_reaches_prometheus_with_route_labels_and_the_counts_the_clients_saw() {
    let started = SystemTime::now();
    let (_redis, rls) = rate_limit_service();
    let mesh = mesh(rls.addr());
    let alerts = observability("alerts.yaml");
    let prometheus = Prometheus::start(&[Job::new("mesh", &[mesh.admin_address()])], &[&alerts])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Seen::default();

    // Every route's counters exist (they are defined when a route is first seen) and are
    // scraped before the traffic, so rates and increases see all of it.
    for route in ROUTES {
        send(&mesh, &mut seen, route, &[("x-api-key", "warm-up")]);
    }
    let mut catalog_requests = 1;
    seen.set("mesh_breaker_state;route=fragile", 0);
    seen.set("mesh_breaker_state;route=catalog;cluster=v1", 0);
    settle_and_scrape(&mesh, &seen, &prometheus);

    // Trace: started, continued (W3C and B3), replaced. Canary: both rules, sticky users,
    // random draws.
    for headers in [
        &[("traceparent", TRACE)][..],
        &[("traceparent", TRACE), ("cookie", "beta=1")],
        &[("b3", B3), ("x-canary-opt-out", "1")],
        &[("traceparent", "00-zzz")],
        &[("traceparent", "00-zzz"), ("cookie", "beta=1")],
        &[("x-canary-opt-out", "1")],
        &[],
        &[],
        &[],
    ] {
        send(&mesh, &mut seen, "checkout", headers);
    }
    for user in 0..12 {
        send(
            &mesh,
            &mut seen,
            "checkout",
            &[("x-user-id", &format!("user-{user}"))],
        );
    }
    // Rate limit: a burst of 5 for key k, then 429s.
    let mut rejected = 0;
    for _ in 0..15 {
        if send(&mesh, &mut seen, "limited", &[("x-api-key", "k")]).status == 429 {
            rejected += 1;
        }
    }
    assert_eq!(rejected, 10, "15 requests over a burst of 5");
    // Global limit: the service admits GLOBAL_ALLOWANCE calls (the warm-up was the first),
    // then answers OVER_LIMIT: 429.
    let mut global_rejected = 0;
    for _ in 0..7 {
        if send(&mesh, &mut seen, "global", &[]).status == 429 {
            global_rejected += 1;
        }
    }
    let global_calls = 1 + 7;
    assert_eq!(global_rejected, global_calls - GLOBAL_ALLOWANCE);
    assert_eq!(rls.requests(), global_calls, "one call per request");
    // The rate limit service unreachable: every call fails, every request passes.
    let down_calls = 1 + 5;
    for _ in 1..down_calls {
        send(&mesh, &mut seen, "global-down", &[]);
    }
    assert_eq!(rls.requests(), global_calls, "global-down never reaches it");
    for _ in 0..4 {
        send(&mesh, &mut seen, "catalog", &[]);
        catalog_requests += 1;
    }
    // Breaker: three failures open it; the next requests get the fallback.
    for _ in 0..3 {
        let reply = send(&mesh, &mut seen, "fragile", &[("x-echo-status", "500")]);
        assert_eq!(reply.status, 500);
    }
    let opened = Instant::now();
    for _ in 0..2 {
        let reply = send(&mesh, &mut seen, "fragile", &[]);
        assert_eq!(reply.header("x-circuit-state").as_deref(), Some("open"));
    }
    seen.set("mesh_breaker_state;route=fragile", 1);
    seen.set("mesh_breaker_transitions_total;route=fragile;to=open", 1);

    let settled = settle_and_scrape(&mesh, &seen, &prometheus);
    let scraped = scraped_series(&prometheus, "mesh");
    assert_documented_label_sets(&scraped, "four filters, demo stats_tags");
    assert_prometheus_has(&prometheus, &settled);
    // The headline numbers, read back through the API.
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="limited",decision="rejected"}"#
        ),
        f64::from(rejected),
        "rejected count = 429s received"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"sum(mesh_ratelimit_requests_total{route="catalog"})"#
        ),
        f64::from(catalog_requests),
        "a dry run decides every request"
    );
    for (outcome, calls) in [
        ("ok", GLOBAL_ALLOWANCE),
        ("over_limit", global_rejected),
        ("error", 0),
    ] {
        assert_eq!(
            value(
                &prometheus,
                &format!(
                    r#"mesh_ratelimit_global_calls_total{{route="global",outcome="{outcome}"}}"#
                )
            ),
            calls as f64,
            "global calls {outcome}"
        );
    }
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="global",decision="rejected"}"#
        ),
        global_rejected as f64,
        "rejected count = 429s received"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_count{route="global"}"#
        ),
        global_calls as f64,
        "every call timed"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_bucket{route="global",le="+Inf"}"#
        ),
        global_calls as f64
    );
    for (outcome, calls) in [("ok", 0), ("over_limit", 0), ("error", down_calls)] {
        assert_eq!(
            value(
                &prometheus,
                &format!(
                    r#"mesh_ratelimit_global_calls_total{{route="global-down",outcome="{outcome}"}}"#
                )
            ),
            f64::from(calls),
            "global-down calls {outcome}"
        );
    }
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="global-down",decision="allowed"}"#
        ),
        f64::from(down_calls),
        "failed open: every request allowed"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_count{route="global-down"}"#
        ),
        f64::from(down_calls),
        "a call not sent is timed too"
    );
    for outcome in ["started", "continued", "replaced"] {
        let name = format!("mesh_trace_requests_total;route=checkout;outcome={outcome}");
        assert!(seen.get(&name) > 0, "{outcome}");
        assert_eq!(
            value(
                &prometheus,
                &format!(r#"mesh_trace_requests_total{{route="checkout",outcome="{outcome}"}}"#)
            ),
            seen.get(&name) as f64
        );
    }
    let canary_seen: u64 = seen
        .counts
        .iter()
        .filter(|(name, _)| {
            name.starts_with("mesh_canary_requests_total;route=checkout;release=canary")
        })
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        value(
            &prometheus,
            r#"sum(mesh_canary_requests_total{route="checkout",release="canary"})"#
        ),
        canary_seen as f64,
        "canary requests = replies from v2"
    );
    assert_eq!(
        value(&prometheus, r#"mesh_breaker_state{route="fragile"}"#),
        1.0
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_breaker_requests_total{route="fragile",decision="rejected"}"#
        ),
        2.0
    );

    // The alerts' expressions hold on the real series now, and the loaded rules go active.
    let exprs = alert_rules(&prometheus);
    assert_eq!(
        exprs.keys().collect::<Vec<_>>(),
        [
            "MeshBreakerOpen",
            "MeshRateLimitRejecting",
            "MeshRateLimitServiceFailing",
            "MeshWasmVmFailing"
        ]
    );
    let open = prometheus.query(&exprs["MeshBreakerOpen"]).unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].label("route"), Some("fragile"));
    let rejecting = prometheus.query(&exprs["MeshRateLimitRejecting"]).unwrap();
    assert_eq!(
        rejecting
            .iter()
            .filter_map(|s| s.label("route"))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["global", "limited"]),
        "limited and global reject: {rejecting:?}"
    );
    assert_eq!(rejecting.len(), 2, "{rejecting:?}");
    assert!(
        rejecting.iter().all(|s| s.value > 0.1 && s.value <= 1.0),
        "{rejecting:?}"
    );
    // Only global-down's calls fail, every one of them; global's service answers.
    let failing = prometheus
        .query(&exprs["MeshRateLimitServiceFailing"])
        .unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(
        failing[0].label("route"),
        Some("global-down"),
        "{failing:?}"
    );
    assert_eq!(failing[0].value, 1.0, "every call failed: {failing:?}");
    assert_eq!(
        prometheus.query(&exprs["MeshWasmVmFailing"]).unwrap(),
        [],
        "no VM failed"
    );
    wait_for_alert(&prometheus, "MeshBreakerOpen", &[("route", "fragile")]);
    for route in ["limited", "global"] {
        wait_for_alert(&prometheus, "MeshRateLimitRejecting", &[("route", route)]);
    }
    wait_for_alert(
        &prometheus,
        "MeshRateLimitServiceFailing",
        &[("route", "global-down")],
    );
    prometheus.wait_for("every rule evaluated without error", |p| {
        let rules = p.api("rules", &[]).ok()?;
        let all_ok = rules["groups"].as_array()?.iter().all(|group| {
            group["rules"]
                .as_array()
                .is_some_and(|rules| rules.iter().all(|r| r["health"] == "ok"))
        });
        all_ok.then_some(())
    });

    // Recovery: after open_ms the next request is the probe; it succeeds and closes it.
    std::thread::sleep(Duration::from_millis(OPEN_MS).saturating_sub(opened.elapsed()));
    let mut probe = None;
    for _ in 0..50 {
        let reply = send(&mesh, &mut seen, "fragile", &[]);
        if reply.header("x-circuit-state").is_none() {
            probe = Some(reply);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe.expect("no probe passed").status, 200);
    // The probe was booked as allowed; it is a probe.
    let allowed = "mesh_breaker_requests_total;route=fragile;decision=allowed";
    seen.set(allowed, seen.get(allowed) - 1);
    seen.add("mesh_breaker_requests_total;route=fragile;decision=probe".to_owned());
    seen.set("mesh_breaker_state;route=fragile", 0);
    seen.set(
        "mesh_breaker_transitions_total;route=fragile;to=half_open",
        1,
    );
    seen.set("mesh_breaker_transitions_total;route=fragile;to=closed", 1);
    let settled = settle_and_scrape(&mesh, &seen, &prometheus);
    assert_prometheus_has(&prometheus, &settled);

    // The breaker's state over time, as the dashboard draws it: closed, open, closed. The
    // range query's last step may fall before the last scrape: poll until it covers it.
    let mut last = Vec::new();
    let found = prometheus.poll(|p| {
        let history = p
            .query_range(r#"mesh_breaker_state{route="fragile"}"#, started, "1s")
            .ok()?;
        let [(_, values)] = history.as_slice() else {
            last = vec![f64::NAN; history.len()];
            return None;
        };
        // A scrape may catch the probe in flight (2, half-open) between open and closed.
        let mut states: Vec<f64> = values.iter().copied().filter(|s| *s != 2.0).collect();
        states.dedup();
        last.clone_from(&states);
        (states == [0.0, 1.0, 0.0]).then_some(())
    });
    assert!(
        found.is_some(),
        "breaker states over time: {last:?}, expected 0, 1, 0"
    );

    // Every panel of the dashboard returns data.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(observability("dashboard.json")).unwrap())
            .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$route", ".*");
            assert!(!promql.contains('$'), "unknown variable in {expr}");
            let series = prometheus.query_range(&promql, started, "1s").unwrap();
            assert!(
                series
                    .iter()
                    .any(|(_, values)| values.iter().any(|v| v.is_finite())),
                "panel {:?}: no data for {promql}: {series:?}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} panel queries");
    // The route variable lists the routes.
    let variable = &dashboard["templating"]["list"][1];
    assert_eq!(variable["name"], "route");
    let selector = variable["query"]["query"]
        .as_str()
        .unwrap()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(", route)"))
        .unwrap();
    let routes = prometheus
        .api("label/route/values", &[("match[]", selector)])
        .unwrap();
    for route in ROUTES {
        assert!(
            routes.as_array().unwrap().iter().any(|r| r == route),
            "{route} not in {routes}"
        );
    }
}

/// A module whose every request traps (`unreachable`): a real VM failure.
const FAILING_MODULE: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))
"#;

fn route(name: &str, prefix: &str, cluster: &str) -> Value {
    json!({ "name": name, "match": { "prefix": prefix }, "route": { "cluster": cluster } })
}

#[test]
fn a_failed_vm_fires_the_vm_alert() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("failing.wasm");
    std::fs::write(&wasm, wat::parse_str(FAILING_MODULE).unwrap()).unwrap();
    let harness = Harness::from_env().unwrap();
    let mut filter = envoy::wasm_filter("failing", &harness.module_path(&wasm), "");
    filter["typed_config"]["config"]["failure_policy"] = json!("FAIL_RELOAD");
    let upstream = EchoServer::start("v1").unwrap();
    let config = envoy::bootstrap(
        vec![filter],
        vec![route("any", "/", "v1")],
        vec![envoy::cluster("v1", upstream.addr)],
    );
    let envoy = Envoy::start(harness, &config.to_string(), "json", 1, &[wasm], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = observability("alerts.yaml");
    let prometheus = Prometheus::start(&[Job::new("failing", &[envoy.admin()])], &[&alerts])
        .unwrap_or_else(|e| panic!("{e}"));
    let reloads = r#"envoy_wasm_vm_reload_success{wasm_plugin="mesh.failing"}"#;
    // Scraped before the failure: an increase needs a sample before it.
    prometheus.wait_for_scrape_after("failing", 1, SystemTime::now());
    assert_eq!(value(&prometheus, reloads), 0.0);

    let agent = envoy::agent(Duration::from_secs(20));
    let admin = envoy::agent(Duration::from_secs(5));
    let reload_count = || -> u64 {
        let text = admin
            .get(format!(
                "http://{}/stats?filter=mesh.failing.vm_reload",
                envoy.admin()
            ))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .filter(|l| l.contains("vm_reload_success") || l.contains("vm_reload_backoff"))
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reload_count() == 0 {
        let status = agent
            .get(format!("http://{}/", envoy.listener()))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 503, "a failed VM under FAIL_RELOAD answers 503");
        assert!(Instant::now() < deadline, "Envoy never reloaded the VM");
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus.wait_for_scrape_after("failing", 1, SystemTime::now());

    let expr = &alert_rules(&prometheus)["MeshWasmVmFailing"];
    let failing = prometheus.query(expr).unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].label("wasm_plugin"), Some("mesh.failing"));
    let alert = wait_for_alert(
        &prometheus,
        "MeshWasmVmFailing",
        &[("wasm_plugin", "mesh.failing")],
    );
    assert_eq!(alert["state"], "firing", "no `for`: it fires at once");
    assert!(
        envoy
            .log()
            .contains("failed: Uncaught RuntimeError: unreachable")
    );
}

/// The `custom_bootstrap.json` of the ConfigMap in istio/observability/sidecar-stats.yaml.
fn sidecar_bootstrap_override() -> String {
    let text = std::fs::read_to_string(observability("sidecar-stats.yaml")).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "custom_bootstrap.json: |");
    assert!(
        lines.next().is_some(),
        "no custom_bootstrap.json in sidecar-stats.yaml"
    );
    lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.get(4..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_istio_sidecar_settings_expose_every_label() {
    let fragment = sidecar_bootstrap_override();
    let parsed: Value = serde_json::from_str(&fragment).unwrap();
    assert_eq!(
        parsed["stats_config"]["stats_tags"],
        envoy::stats_tags(),
        "the ConfigMap has one extractor per label of mesh_policy::stats::LABELS, as the harness"
    );

    // A bootstrap shaped like an Istio sidecar's: no default tags, some of Istio's own
    // extractors, and a stats matcher that keeps only what it includes (Istio's required
    // `wasm` prefix is left out so the documented `wasmcustom.mesh_` is what includes ours).
    let harness = Harness::from_env().unwrap();
    let dist = envoy::dist_dir();
    let stages = [
        ("traceid", TRACEID),
        ("canary", CANARY),
        ("ratelimit", RATELIMIT),
        ("breaker", BREAKER),
    ];
    let plugin_configs = Modules::current().load(&stages);
    let modules: Vec<PathBuf> = plugin_configs
        .iter()
        .map(|(module, _)| dist.join(format!("{module}.wasm")))
        .collect();
    let filters = plugin_configs
        .iter()
        .zip(&modules)
        .map(|((module, json), wasm)| envoy::wasm_filter(module, &harness.module_path(wasm), json))
        .collect();
    let v1 = EchoServer::start("v1").unwrap();
    let v2 = EchoServer::start("v2").unwrap();
    let routes = ROUTES
        .iter()
        .map(|name| route(name, &format!("/{name}"), "v1"))
        .collect();
    // Here `global`'s service cluster has no endpoint either (nor has `global-down`'s): the
    // call is not sent, the request is let through, and every series of the route exists
    // all the same.
    let mut config = envoy::bootstrap(
        filters,
        routes,
        vec![
            envoy::cluster("v1", v1.addr),
            envoy::cluster("v2", v2.addr),
            envoy::grpc_cluster("rls", None),
            envoy::grpc_cluster("rls-down", None),
        ],
    );
    config["stats_config"] = json!({
        "use_all_default_tags": false,
        "stats_tags": [
            { "tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)" },
            { "tag_name": "cache", "regex": "(cache\\.(.+?)\\.)" },
            { "tag_name": "component", "regex": "(component\\.(.+?)\\.)" },
            { "tag_name": "tag", "regex": "(tag\\.(.+?);\\.)" },
            { "tag_name": "wasm_filter", "regex": "(wasm_filter\\.(.+?)\\.)" }
        ],
        "stats_matcher": { "inclusion_list": { "patterns": [
            { "prefix": "wasmcustom.mesh_" },
            { "prefix": "wasm." },
            { "prefix": "server." }
        ]}}
    });
    let envoy = Envoy::start(
        harness,
        &config.to_string(),
        "json",
        1,
        &modules,
        &["--config-yaml".to_owned(), fragment],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let prometheus = Prometheus::start(&[Job::new("sidecar", &[envoy.admin()])], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    // One request per route defines every series of every filter on it.
    let agent = envoy::agent(Duration::from_secs(20));
    for route in ROUTES {
        let status = agent
            .get(format!("http://{}/{route}", envoy.listener()))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 200, "{route}");
    }
    let settled = Instant::now() + Duration::from_secs(30);
    let admin = |path: &str| -> String {
        agent
            .get(format!("http://{}{path}", envoy.admin()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    // The breaker counts the call when the stream ends, after the client has its reply.
    while !admin("/stats?filter=mesh_breaker_calls_total")
        .contains("route=catalog;outcome=success;protocol=http: 1")
    {
        assert!(Instant::now() < settled, "{}", envoy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    prometheus.wait_for_scrape_after("sidecar", 1, SystemTime::now());

    let scraped = scraped_series(&prometheus, "sidecar");
    assert_documented_label_sets(&scraped, "Istio-like sidecar with the ConfigMap's override");
    assert_eq!(
        scraped[&series_key("mesh_trace_requests_total;route=checkout;outcome=started")],
        1.0
    );
    let plugins = prometheus
        .query(r#"envoy_wasm_vm_reload_success{job="sidecar"}"#)
        .unwrap();
    let plugins: BTreeSet<&str> = plugins
        .iter()
        .filter_map(|s| s.label("wasm_plugin"))
        .collect();
    let expected: BTreeSet<String> = stages
        .iter()
        .map(|(filter, _)| Modules::current().plugin(filter))
        .collect();
    assert_eq!(plugins, expected.iter().map(String::as_str).collect());
    // The matcher is in force: what it does not include is not exported.
    assert_eq!(
        prometheus
            .query(r#"{job="sidecar", __name__=~"envoy_cluster_.+"}"#)
            .unwrap(),
        []
    );
}

#[test]
fn the_demo_config_extracts_every_label() {
    let demo = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    for tag in envoy::stats_tags().as_array().unwrap() {
        let name = tag["tag_name"].as_str().unwrap();
        // The regex as a YAML double-quoted string.
        let regex = tag["regex"].as_str().unwrap().replace('\\', "\\\\");
        let line = format!(r#"- {{ tag_name: {name}, regex: "{regex}" }}"#);
        assert!(demo.contains(&line), "envoy/envoy.yaml lacks {line}");
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = observability("");
    for args in [
        &["check", "rules", "alerts.yaml"][..],
        &["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(promtool_binary())
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool (Debian's prometheus; scripts/test.sh installs it): {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(observability("dashboard.json")).unwrap())
            .unwrap();
    let documented = documented_series();
    let envoy_metrics = [
        "envoy_wasm_vm_reload_success",
        "envoy_wasm_vm_reload_failure",
        "envoy_wasm_vm_reload_backoff",
        "envoy_wasm_envoy_wasm_runtime_v8_active",
    ];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("mesh_") || w.starts_with("envoy_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    documented.contains_key(name) || envoy_metrics.contains(&name),
                    "panel {:?} queries {name}, which is not documented",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_dashboard_panels_do_not_overlap() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(observability("dashboard.json")).unwrap())
            .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let boxes: Vec<(&Value, [u64; 4])> = panels
        .iter()
        .map(|panel| {
            let grid = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
            assert!(
                x + w <= 24 && w > 0 && h > 0,
                "{:?}: {grid}",
                panel["title"]
            );
            (&panel["title"], [x, y, w, h])
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "panels {a} and {b} overlap");
        }
    }
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}
