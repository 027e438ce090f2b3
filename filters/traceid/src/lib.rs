//! Trace-ID injection: starts or carries a trace and writes it in the configured formats.
//!
//! Glue only: [`TracePolicy::decide`](mesh_policy::trace::TracePolicy::decide) makes the
//! decision; this crate applies its header edits, counts the outcome and puts the trace id
//! on the response.

use std::rc::Rc;

use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict};
use mesh_policy::host::{Host, RequestHost, ResponseHost};
use mesh_policy::stats::{self, Counters};
use mesh_policy::trace::sampling::Sampling;
use mesh_policy::trace::{Edit, Outcome, TraceConfig, TraceIdHex, TracePolicy};

/// `mesh_trace_requests_total{route, outcome}`.
pub const REQUESTS_TOTAL: &str = "mesh_trace_requests_total";
/// `mesh_trace_sampling_total{route, decision}`.
pub const SAMPLING_TOTAL: &str = "mesh_trace_sampling_total";

#[derive(Debug)]
pub struct TraceId;

/// What the filter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A request, once, by what happened to its trace.
    Request(Outcome),
    /// A trace the filter started (a new trace id), by its sampling decision.
    New(Sampling),
}

impl Counted {
    pub const ALL: [Counted; 5] = [
        Self::Request(Outcome::Started),
        Self::Request(Outcome::Continued),
        Self::Request(Outcome::Replaced),
        Self::New(Sampling::Sampled),
        Self::New(Sampling::NotSampled),
    ];

    /// The metric and its labels besides `route`.
    pub fn metric(self) -> (&'static str, Vec<(&'static str, &'static str)>) {
        match self {
            Self::Request(outcome) => (REQUESTS_TOTAL, vec![("outcome", outcome.as_str())]),
            Self::New(sampling) => (SAMPLING_TOTAL, vec![("decision", sampling.as_str())]),
        }
    }
}

/// A trace policy bound to one route: its counters.
#[derive(Debug)]
pub struct TraceRoute {
    policy: Rc<TracePolicy>,
    name: String,
    counters: Counters<Counted>,
}

impl Filter for TraceId {
    const NAME: &'static str = "traceid";
    type Config = TraceConfig;
    type Policy = TracePolicy;
    type Route = TraceRoute;
    /// The trace id (hex), kept for the response header when one is configured.
    type Request = Option<TraceIdHex>;

    fn new(_plugin: &Plugin) -> Self {
        Self
    }

    fn compile(&self, config: TraceConfig, at: &FieldPath) -> Result<TracePolicy, ConfigError> {
        TracePolicy::compile(config, at)
    }

    fn bind(&self, policy: Rc<TracePolicy>, route_name: &str, host: &mut impl Host) -> TraceRoute {
        TraceRoute {
            policy,
            name: stats::route_label(route_name).to_owned(),
            counters: Counters::define(host, route_name, Counted::ALL, Counted::metric),
        }
    }

    fn on_request(
        &self,
        route: &TraceRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, Option<TraceIdHex>) {
        let decision = route.policy.decide(host);
        for edit in &decision.edits {
            match edit {
                Edit::Set(name, value) => host.set_request_header(name, value.as_bytes()),
                Edit::Remove(name) => host.remove_request_header(name),
            }
        }
        route
            .counters
            .count(host, Counted::Request(decision.outcome));
        if let Some(sampling) = decision.started {
            route.counters.count(host, Counted::New(sampling));
        }
        // The log macro formats its arguments only when Envoy logs wasm at debug.
        log::debug!(
            "traceid route={} trace={} outcome={} source={} sampled={}",
            route.name,
            decision.trace_id_hex().as_str(),
            decision.outcome.as_str(),
            decision.source.as_str(),
            decision.sampled
        );
        (Verdict::Continue, route.policy.kept_for_response(&decision))
    }

    fn on_response(
        &self,
        route: &TraceRoute,
        trace_id: &mut Option<TraceIdHex>,
        host: &mut impl ResponseHost,
    ) {
        if let Some((name, trace_id)) = route.policy.trace_id_header(trace_id.as_ref()) {
            host.set_response_header(name, trace_id);
        }
    }
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(TraceId);

#[cfg(test)]
mod tests;
