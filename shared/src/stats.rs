//! Metric naming, one scheme for every filter.
//!
//! A metric is a base name plus labels, encoded in the Envoy stat name as
//! `mesh_trace_requests_total;route=checkout;outcome=started`. Envoy's stats tag
//! extraction (`stats_config.stats_tags` in `envoy/`, one regex `(;label=([^;]*))` per
//! label name) turns each `;label=value` into a tag, so Prometheus sees
//! `mesh_trace_requests_total{route="checkout",outcome="started"}`. Without that config
//! the labels stay in the name and every series is still distinct.

use crate::host::{Host, Metric, MetricKind};

/// Label value for a request whose route has no name.
pub const UNNAMED_ROUTE: &str = "unnamed";

/// Every label name the filters use; `envoy/` has one tag extractor for each.
pub const LABELS: &[&str] = &[
    "route", "outcome", "release", "reason", "rule", "decision", "error", "to", "cluster",
    "protocol",
];

/// The stat name for a metric with labels.
pub fn metric_name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(base.len() + 32);
    name.push_str(base);
    for (label, value) in labels {
        name.push(';');
        name.push_str(label);
        name.push('=');
        // `;` and `=` delimit labels; `.` is Envoy's stat-name separator.
        name.extend(value.chars().map(|c| match c {
            ';' | '=' => '_',
            c => c,
        }));
    }
    name
}

/// The `route` label value for an Envoy route name.
pub fn route_label(route_name: &str) -> &str {
    if route_name.is_empty() {
        UNNAMED_ROUTE
    } else {
        route_name
    }
}

/// Defines a counter for one route and one value of a second label.
pub fn route_counter(
    host: &mut impl Host,
    base: &str,
    route_name: &str,
    label: (&str, &str),
) -> Metric {
    let name = metric_name(base, &[("route", route_label(route_name)), label]);
    host.define_metric(MetricKind::Counter, &name)
}

/// One route's counters for what a filter counts: one counter per value of the filter's
/// `Counted` enum (each a metric and its labels), defined when the route is bound and found by
/// value when a request is counted.
#[derive(Debug)]
pub struct Counters<C> {
    counters: Vec<(C, Metric)>,
}

impl<C: Copy + PartialEq> Counters<C> {
    /// Defines a counter on `route_name` for each of `counted`, in order; `metric` gives its
    /// base name and its labels after `route`.
    pub fn define<'a>(
        host: &mut impl Host,
        route_name: &str,
        counted: impl IntoIterator<Item = C>,
        metric: impl Fn(C) -> (&'static str, Vec<(&'static str, &'a str)>),
    ) -> Self {
        let route = route_label(route_name);
        let counters = counted
            .into_iter()
            .map(|c| {
                let (base, labels) = metric(c);
                let mut all = Vec::with_capacity(labels.len() + 1);
                all.push(("route", route));
                all.extend(labels);
                let name = metric_name(base, &all);
                (c, host.define_metric(MetricKind::Counter, &name))
            })
            .collect();
        Self { counters }
    }

    /// Counts `counted` once; a value without a counter on the route counts nothing.
    pub fn count(&self, host: &mut impl Host, counted: C) {
        if let Some((_, metric)) = self.counters.iter().find(|(c, _)| *c == counted) {
            host.increment_metric(*metric, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use crate::fake::FakeHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn names_carry_labels_in_order() {
        assert_eq!(
            metric_name("mesh_x_total", &[("route", "a.b"), ("outcome", "ok")]),
            "mesh_x_total;route=a.b;outcome=ok"
        );
    }

    #[test]
    fn delimiters_in_values_cannot_forge_labels() {
        assert_eq!(
            metric_name("m", &[("route", "r;outcome=x")]),
            "m;route=r_outcome_x"
        );
    }

    #[test]
    fn unnamed_route_gets_a_label() {
        let mut host = FakeHost::new();
        let m = route_counter(&mut host, "m", "", ("outcome", "ok"));
        host.increment_metric(m, 1);
        assert_eq!(host.metric("m;route=unnamed;outcome=ok"), Some(1));
    }

    #[test]
    fn counters_are_defined_in_order_and_counted_by_value() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Counted {
            Seen(bool),
            Other,
            Never,
        }
        let mut host = FakeHost::new();
        let counters = Counters::define(
            &mut host,
            "",
            [Counted::Seen(true), Counted::Seen(false), Counted::Other],
            |c| match c {
                Counted::Seen(yes) => ("m", vec![("seen", if yes { "yes" } else { "no" })]),
                Counted::Other | Counted::Never => ("other", Vec::new()),
            },
        );
        counters.count(&mut host, Counted::Seen(false));
        counters.count(&mut host, Counted::Seen(false));
        counters.count(&mut host, Counted::Other);
        // Not defined on the route: nothing to count.
        counters.count(&mut host, Counted::Never);
        assert_eq!(host.metric("m;route=unnamed;seen=yes"), Some(0));
        assert_eq!(host.metric("m;route=unnamed;seen=no"), Some(2));
        assert_eq!(host.metric("other;route=unnamed"), Some(1));
        assert_eq!(host.metrics().len(), 3);
    }
}
