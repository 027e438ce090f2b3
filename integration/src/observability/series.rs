//! Metrics as docs/observability.md documents them and as Prometheus holds them: series keys, the
//! label sets of each metric, single values, the alert rules and alerts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::prometheus::Prometheus;

/// Every metric the filters export and the label sets its series carry (docs/observability.md,
/// "Metrics"), as Prometheus names them: a histogram is its `_bucket` (with `le`), `_sum`
/// and `_count` series. `job` and `instance` come from the scrape.
pub fn documented_series() -> BTreeMap<&'static str, BTreeSet<Vec<&'static str>>> {
    let sets = |sets: &[&[&'static str]]| sets.iter().map(|s| s.to_vec()).collect();
    BTreeMap::from([
        ("mesh_trace_requests_total", sets(&[&["outcome", "route"]])),
        ("mesh_trace_sampling_total", sets(&[&["decision", "route"]])),
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
pub type SeriesKey = (String, BTreeMap<String, String>);

/// An Envoy stat name (`base;label=value;...`) as a Prometheus series key: the name and its
/// labels, sorted.
pub fn series_key(stat: &str) -> SeriesKey {
    let mut parts = stat.split(';');
    let base = parts.next().unwrap_or_default().to_owned();
    let labels = parts
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (base, labels)
}

/// Every `mesh_` series of `job` in Prometheus, keyed like [`series_key`], with its value.
pub fn scraped_series(prometheus: &Prometheus, job: &str) -> BTreeMap<SeriesKey, f64> {
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
pub fn label_sets<'a>(
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

pub fn assert_documented_label_sets(series: &BTreeMap<SeriesKey, f64>, what: &str) {
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

/// One series' value in Prometheus; panics unless exactly one matches.
pub fn value(prometheus: &Prometheus, selector: &str) -> f64 {
    let samples = prometheus.query(selector).unwrap();
    assert_eq!(samples.len(), 1, "{selector}: {samples:?}");
    samples[0].value
}

/// The alerting rules as Prometheus loaded them from alerts.yaml: name -> query. Every rule
/// must be healthy (its last evaluation ran without error).
pub fn alert_rules(prometheus: &Prometheus) -> BTreeMap<String, String> {
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
pub fn wait_for_alert(prometheus: &Prometheus, name: &str, labels: &[(&str, &str)]) -> Value {
    prometheus.wait_for(&format!("alert {name} {labels:?}"), |p| {
        p.alerts().into_iter().find(|alert| {
            alert["labels"]["alertname"] == name
                && labels.iter().all(|(k, v)| alert["labels"][*k] == *v)
        })
    })
}
