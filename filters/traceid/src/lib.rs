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
        // The log macro formats its arguments only when Envoy logs wasm at debug.
        log::debug!(
            "traceid route={} trace={} outcome={} source={}",
            route.name,
            decision.trace_id_hex(),
            decision.outcome.as_str(),
            decision.source.as_str()
        );
        let keep = route
            .policy
            .response_header
            .is_some()
            .then(|| decision.trace_id_hex());
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
mod tests;
