//! What the clients of the end-to-end test saw, booked as Envoy's counters should have it
//! ([`Seen`], [`send`]), and the waits and checks that hold Envoy ([`settle`]) and then
//! Prometheus ([`assert_prometheus_has`]) to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use super::TRACE;
use super::series::{SeriesKey, scraped_series, series_key};
use crate::mesh::{Mesh, Reply};
use crate::prometheus::Prometheus;
use crate::rls::RESPONSE_HEADER;

/// What the clients saw, as the counters should have it (Envoy stat names).
#[derive(Debug, Default)]
pub struct Seen {
    pub counts: BTreeMap<String, u64>,
    /// Values recorded in each histogram (Envoy stat names): its `_count`.
    pub samples: BTreeMap<String, u64>,
}

impl Seen {
    pub fn add(&mut self, stat: String) {
        *self.counts.entry(stat).or_default() += 1;
    }

    pub fn sample(&mut self, histogram: &str) {
        *self.samples.entry(histogram.to_owned()).or_default() += 1;
    }

    /// The `_count` series every histogram should have, keyed as Prometheus names them.
    pub fn histogram_counts(&self) -> BTreeMap<SeriesKey, f64> {
        self.samples
            .iter()
            .map(|(stat, n)| {
                let (base, labels) = series_key(stat);
                ((format!("{base}_count"), labels), *n as f64)
            })
            .collect()
    }

    pub fn get(&self, stat: &str) -> u64 {
        self.counts.get(stat).copied().unwrap_or(0)
    }

    pub fn set(&mut self, stat: &str, value: u64) {
        self.counts.insert(stat.to_owned(), value);
    }
}

/// The trace filter's outcome for a request with these headers.
pub fn trace_outcome(headers: &[(&str, &str)]) -> &'static str {
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
pub fn send(mesh: &Mesh, seen: &mut Seen, route: &str, headers: &[(&str, &str)]) -> Reply {
    let mut call = mesh.get(&format!("/{route}"));
    for (name, value) in headers {
        call = call.header(name, value);
    }
    let reply = call.send();
    let outcome = trace_outcome(headers);
    seen.add(format!(
        "mesh_trace_requests_total;route={route};outcome={outcome}"
    ));
    // A new trace (none came in, or an invalid one without B3 beside it): the policy
    // (`TRACEID`) samples every one.
    let b3 = headers.iter().any(|(n, _)| *n == "b3");
    if outcome == "started" || (outcome == "replaced" && !b3) {
        seen.add(format!(
            "mesh_trace_sampling_total;route={route};decision=sampled"
        ));
    }
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
            let breaker = format!("route={route}");
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
pub const UNPREDICTABLE: [&str; 2] = [
    "mesh_ratelimit_requests_total;route=catalog;decision=allowed",
    "mesh_ratelimit_requests_total;route=catalog;decision=dry_run_rejected",
];

/// Envoy's own Prometheus exposition (`/stats/prometheus`) of the filters' histograms:
/// every `_bucket`, `_sum` and `_count` series of a family typed `histogram`.
pub fn envoy_histograms(mesh: &Mesh) -> BTreeMap<SeriesKey, f64> {
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
pub struct Settled {
    /// Counters and gauges by stat name (`/stats`).
    pub stats: BTreeMap<String, u64>,
    /// Histograms as Envoy exposes them to Prometheus.
    pub histograms: BTreeMap<SeriesKey, f64>,
}

/// Waits (bounded) until Envoy's counters are what the clients saw, every one of them
/// (a stat the test did not book must be 0), and every histogram holds as many values as
/// the clients caused (Envoy merges histograms at its stats flush, every 5 s); returns
/// Envoy's stats.
pub fn settle(mesh: &Mesh, seen: &Seen) -> Settled {
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
pub fn settle_and_scrape(mesh: &Mesh, seen: &Seen, prometheus: &Prometheus) -> Settled {
    let settled = settle(mesh, seen);
    prometheus.wait_for_scrape_after("mesh", 1, SystemTime::now());
    settled
}

/// Prometheus holds exactly Envoy's `mesh_` stats: the same series (every label extracted)
/// and the same values, the histograms' buckets, sums and counts included.
pub fn assert_prometheus_has(prometheus: &Prometheus, settled: &Settled) {
    let scraped = scraped_series(prometheus, "mesh");
    let mut expected: BTreeMap<_, f64> = settled
        .stats
        .iter()
        .map(|(name, value)| (series_key(name), *value as f64))
        .collect();
    expected.extend(settled.histograms.clone());
    assert_eq!(scraped, expected, "Prometheus differs from Envoy's /stats");
}
