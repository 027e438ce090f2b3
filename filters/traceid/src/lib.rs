//! Trace-ID injection: starts or carries a trace and writes it in the configured formats.
//!
//! Glue only: [`TracePolicy::decide`](mesh_policy::trace::TracePolicy::decide) makes the
//! decision; this crate applies its header edits, counts the outcome and puts the trace id
//! on the response.

use std::rc::Rc;

use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict};
use mesh_policy::host::{Host, Metric, RequestHost, ResponseHost};
use mesh_policy::stats;
use mesh_policy::trace::{Edit, Outcome, TraceConfig, TracePolicy};

/// `mesh_trace_requests_total{route, outcome}`.
pub const REQUESTS_TOTAL: &str = "mesh_trace_requests_total";

#[derive(Debug)]
pub struct TraceId;

/// A trace policy bound to one route: its counters by outcome.
#[derive(Debug)]
pub struct TraceRoute {
    policy: Rc<TracePolicy>,
    name: String,
    outcomes: [Metric; Outcome::ALL.len()],
}

impl TraceRoute {
    fn counter(&self, outcome: Outcome) -> Metric {
        let [started, continued, replaced] = self.outcomes;
        match outcome {
            Outcome::Started => started,
            Outcome::Continued => continued,
            Outcome::Replaced => replaced,
        }
    }
}

impl Filter for TraceId {
    const NAME: &'static str = "traceid";
    type Config = TraceConfig;
    type Policy = TracePolicy;
    type Route = TraceRoute;
    /// The trace id (hex), kept for the response header when one is configured.
    type Request = Option<String>;

    fn new(_plugin: &Plugin) -> Self {
        Self
    }

    fn compile(&self, config: TraceConfig, at: &FieldPath) -> Result<TracePolicy, ConfigError> {
        TracePolicy::compile(config, at)
    }

    fn bind(&self, policy: Rc<TracePolicy>, route_name: &str, host: &mut impl Host) -> TraceRoute {
        let outcomes = Outcome::ALL.map(|outcome| {
            stats::route_counter(
                host,
                REQUESTS_TOTAL,
                route_name,
                ("outcome", outcome.as_str()),
            )
        });
        TraceRoute {
            policy,
            name: stats::route_label(route_name).to_owned(),
            outcomes,
        }
    }

    fn on_request(
        &self,
        route: &TraceRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, Option<String>) {
        let decision = route.policy.decide(host);
        for edit in &decision.edits {
            match edit {
                Edit::Set(name, value) => host.set_request_header(name, value.as_bytes()),
                Edit::Remove(name) => host.remove_request_header(name),
            }
        }
        host.increment_metric(route.counter(decision.outcome), 1);
        let trace_id = decision.trace_id_hex();
        log::debug!(
            "traceid route={} trace={trace_id} outcome={} source={}",
            route.name,
            decision.outcome.as_str(),
            decision.source.as_str()
        );
        let keep = route.policy.response_header.is_some().then_some(trace_id);
        (Verdict::Continue, keep)
    }

    fn on_response(
        &self,
        route: &TraceRoute,
        trace_id: &mut Option<String>,
        host: &mut impl ResponseHost,
    ) {
        if let (Some(name), Some(trace_id)) = (&route.policy.response_header, trace_id) {
            host.set_response_header(name.as_str(), trace_id.as_bytes());
        }
    }
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(TraceId);

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_policy::fake::{FakeHost, bind_route};

    fn bound(json: &str, route: &str, host: &mut FakeHost) -> TraceRoute {
        let filter = TraceId::new(&Plugin::default());
        bind_route(&filter, json, route, host).unwrap()
    }

    #[test]
    fn new_trace_is_written_counted_and_returned_on_the_response() {
        let mut host = FakeHost::new();
        let route = bound(r#"{"routes": {"checkout": {}}}"#, "checkout", &mut host);
        let (verdict, mut request) = TraceId.on_request(&route, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        let traceparent = host.request_values("traceparent");
        assert_eq!(traceparent.len(), 1);
        let trace_id = traceparent[0].split('-').nth(1).unwrap().to_owned();
        assert_eq!(
            host.metric("mesh_trace_requests_total;route=checkout;outcome=started"),
            Some(1)
        );
        assert_eq!(
            host.metric("mesh_trace_requests_total;route=checkout;outcome=continued"),
            Some(0)
        );
        TraceId.on_response(&route, &mut request, &mut host);
        assert_eq!(host.response_values("x-trace-id"), [trace_id]);
    }

    #[test]
    fn invalid_traceparent_is_replaced_and_counted() {
        let mut host = FakeHost::new()
            .with_request_header("traceparent", "00-xyz")
            .with_request_header("tracestate", "a=1");
        let route = bound(r#"{"default": {"response_header": null}}"#, "", &mut host);
        let (_, mut request) = TraceId.on_request(&route, &mut host);
        assert_ne!(host.request_values("traceparent"), ["00-xyz"]);
        assert!(host.request_values("tracestate").is_empty());
        assert_eq!(
            host.metric("mesh_trace_requests_total;route=unnamed;outcome=replaced"),
            Some(1)
        );
        TraceId.on_response(&route, &mut request, &mut host);
        assert!(
            host.response_values("x-trace-id").is_empty(),
            "response header is off"
        );
    }

    #[test]
    fn emits_every_configured_format() {
        let mut host = FakeHost::new();
        let route = bound(
            r#"{"default": {"emit": ["w3c", "b3", "b3multi", "request_id"], "response_header": "X-Trace"}}"#,
            "r",
            &mut host,
        );
        let (_, mut request) = TraceId.on_request(&route, &mut host);
        let trace_id = host.request_values("x-b3-traceid").pop().unwrap();
        assert!(host.request_values("traceparent")[0].contains(&trace_id));
        assert!(host.request_values("b3")[0].starts_with(&trace_id));
        assert_eq!(host.request_values("x-request-id").len(), 1);
        TraceId.on_response(&route, &mut request, &mut host);
        assert_eq!(host.response_values("x-trace"), [trace_id]);
    }
}
