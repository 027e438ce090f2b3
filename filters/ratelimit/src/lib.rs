//! Token-bucket rate limiting, one bucket per key for all Envoy workers.
//!
//! Glue only: [`RouteLimits::check`](mesh_policy::ratelimit::RouteLimits::check) decides and
//! takes the tokens in shared data; this crate counts the decision, answers rejected
//! requests locally (the upstream is not contacted) and puts the `X-RateLimit-*` headers on
//! allowed responses.
//!
//! Global limits: a request the local limits admit is held for one call to the rate limit
//! service ([`RouteLimits::global_call`](mesh_policy::ratelimit::RouteLimits::global_call)).
//! When it ends, [`RateLimitPolicy::call_done`] decides: the service's answer rejects the
//! request like a local limit or lets it go on with the service's headers; a failed call
//! (unreachable, deadline, bad answer) lets it through, or answers 503 with
//! `failure_mode_deny`. This crate applies that, counts it and logs a failed call once per
//! [`LOG_EVERY`].

use std::cell::Cell;
use std::rc::Rc;

use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::decimal::{MAX_DIGITS, decimal};
use mesh_policy::filter::{CallOutcome, Filter, Plugin, Verdict};
use mesh_policy::host::{
    Host, Metric, MetricKind, NANOS_PER_SEC, Nanos, RequestHost, ResponseHost,
};
use mesh_policy::ratelimit::global::{CallResult, Held};
use mesh_policy::ratelimit::rls;
use mesh_policy::ratelimit::secret::EnvoySecret;
use mesh_policy::ratelimit::{
    Budget, Decision, RateLimitConfig, RateLimitPolicy, RouteLimits, budget_headers,
};
use mesh_policy::stats::{self, Counters};
use mesh_policy::store::UpdateError;

/// `mesh_ratelimit_requests_total{route, decision}`.
pub const REQUESTS_TOTAL: &str = "mesh_ratelimit_requests_total";
/// `mesh_ratelimit_store_errors_total{route, error}`: shared data could not be updated.
pub const STORE_ERRORS_TOTAL: &str = "mesh_ratelimit_store_errors_total";

/// `mesh_ratelimit_global_calls_total{route, outcome}`: calls to the rate limit service by
/// outcome (`ok`, `over_limit`, `error`).
pub const GLOBAL_CALLS_TOTAL: &str = "mesh_ratelimit_global_calls_total";
/// `mesh_ratelimit_global_call_duration_ms{route}`: a histogram of call latency, answered or
/// failed.
pub const GLOBAL_CALL_DURATION: &str = "mesh_ratelimit_global_call_duration_ms";

/// How often a VM logs a summary of would-be rejections or store errors per route.
const LOG_EVERY: Nanos = 10 * NANOS_PER_SEC;

#[derive(Debug)]
pub struct RateLimit {
    key_prefix: String,
    /// This VM's copy of the Envoy's slot secret, read once (and again on the tick).
    secret: EnvoySecret,
}

/// What the rate limiter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A request, once, by its decision (`Unlimited` is not counted).
    Request(Decision),
    /// Shared data could not be updated.
    StoreError(UpdateError),
    /// A call to the rate limit service, by how it ended (routes with global limits only).
    Call(CallResult),
}

impl Counted {
    pub const ALL: [Counted; 9] = [
        Self::Request(Decision::Allowed),
        Self::Request(Decision::Rejected),
        Self::Request(Decision::DryRunRejected),
        Self::Request(Decision::Unavailable),
        Self::StoreError(UpdateError::Contended),
        Self::StoreError(UpdateError::Failed),
        Self::Call(CallResult::Ok),
        Self::Call(CallResult::OverLimit),
        Self::Call(CallResult::Error),
    ];

    /// Everything counted on a route with `policy`: calls only when it makes them.
    pub fn all(policy: &RateLimitPolicy) -> impl Iterator<Item = Counted> + '_ {
        let calls = policy.makes_calls();
        Self::ALL
            .into_iter()
            .filter(move |c| calls || !matches!(c, Self::Call(_)))
    }

    /// The metric and its labels besides `route`.
    pub fn metric(self) -> (&'static str, Vec<(&'static str, &'static str)>) {
        match self {
            Self::Request(decision) => (
                REQUESTS_TOTAL,
                vec![("decision", decision.label().unwrap_or_default())],
            ),
            Self::StoreError(error) => (STORE_ERRORS_TOTAL, vec![("error", error.as_str())]),
            Self::Call(call) => (GLOBAL_CALLS_TOTAL, vec![("outcome", call.label())]),
        }
    }
}

/// A policy bound to one route: its slot keys, counters and log throttles.
#[derive(Debug)]
pub struct RateLimitRoute {
    limits: RouteLimits,
    name: String,
    counters: Counters<Counted>,
    dry_run_log: Throttle,
    store_error_log: Throttle,
    /// The histogram of call latency; `Metric(None)` on a route that makes no calls.
    global_duration: Metric,
    global_error_log: Throttle,
}

/// What the later phases of a request need.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestState {
    /// The `X-RateLimit-*` values for the response, when they are on.
    pub budget: Option<Budget>,
    /// What the call to the rate limit service is decided with, while it is out.
    held: Option<Held>,
    /// The service's `response_headers_to_add`.
    pub response_headers: Vec<rls::Header>,
}

impl Filter for RateLimit {
    const NAME: &'static str = "ratelimit";
    const MAKES_CALLS: bool = true;
    type Config = RateLimitConfig;
    type Policy = RateLimitPolicy;
    type Route = RateLimitRoute;
    type Request = RequestState;

    fn new(plugin: &Plugin) -> Self {
        let key_prefix = plugin.key_prefix();
        Self {
            secret: EnvoySecret::new(&key_prefix),
            key_prefix,
        }
    }

    fn compile(
        &self,
        config: RateLimitConfig,
        at: &FieldPath,
    ) -> Result<RateLimitPolicy, ConfigError> {
        RateLimitPolicy::compile(config, at)
    }

    fn bind(
        &self,
        policy: Rc<RateLimitPolicy>,
        route_name: &str,
        host: &mut impl Host,
    ) -> RateLimitRoute {
        let counters = Counters::define(host, route_name, Counted::all(&policy), Counted::metric);
        let global_duration = if policy.makes_calls() {
            let name = stats::metric_name(
                GLOBAL_CALL_DURATION,
                &[("route", stats::route_label(route_name))],
            );
            host.define_metric(MetricKind::Histogram, &name)
        } else {
            Metric(None)
        };
        RateLimitRoute {
            limits: policy.bind(&self.key_prefix, route_name, &self.secret, host),
            name: stats::route_label(route_name).to_owned(),
            counters,
            dry_run_log: Throttle::default(),
            store_error_log: Throttle::default(),
            global_duration,
            global_error_log: Throttle::default(),
        }
    }

    fn on_request(
        &self,
        route: &RateLimitRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, RequestState) {
        let check = route.limits.check(host);
        let policy = route.limits.policy();
        // Before the call: a request held for the service has had its store error too.
        if let Some(error) = check.store_error {
            route.note_store_error(host, error, check.decision);
        }
        if check.decision == Decision::DryRunRejected {
            route.note_dry_run(host.now());
        }
        let budget = policy.response_budget(&check);
        // A request the local limits admit is counted once the service has answered.
        if let Some(call) = route.limits.global_call(check.decision, host) {
            let held = Held {
                local: check.decision,
                budget,
                started: host.now(),
            };
            let state = RequestState {
                held: Some(held),
                ..RequestState::default()
            };
            return (Verdict::Call(call), state);
        }
        route.count(host, Counted::Request(check.decision));
        log::debug!(
            "ratelimit route={} decision={} retry_after={}",
            route.name,
            check.decision.label().unwrap_or("unlimited"),
            check.retry_after_s
        );
        let state = RequestState {
            budget,
            ..RequestState::default()
        };
        if check.decision == Decision::Rejected {
            return (Verdict::Reply(policy.reject_reply(&check, host)), state);
        }
        (Verdict::Continue, state)
    }

    fn on_call_done(
        &self,
        route: &RateLimitRoute,
        state: &mut RequestState,
        outcome: CallOutcome,
        host: &mut impl RequestHost,
    ) -> Verdict {
        let policy = route.limits.policy();
        let now = host.now();
        // Only a request held for its call gets here.
        let held = state.held.take().unwrap_or(Held {
            local: Decision::Allowed,
            budget: None,
            started: now,
        });
        let done = policy.call_done(held, outcome, now);
        host.record_metric(route.global_duration, done.duration_ms);
        route.count(host, Counted::Call(done.call));
        if let Some(why) = done.error
            && let Some(count) = route.global_error_log.note(now)
        {
            log::warn!(
                "ratelimit route={} global_error={why} requests={count} action={}",
                route.name,
                done.decision.action()
            );
        }
        if done.decision == Decision::DryRunRejected {
            route.note_dry_run(now);
        }
        for (name, value) in &done.request_headers {
            host.set_request_header(name, value);
        }
        state.budget = done.budget;
        state.response_headers = done.response_headers;
        route.count(host, Counted::Request(done.decision));
        match done.reply {
            Some(reply) => Verdict::Reply(policy.global_reply(reply, host)),
            None => Verdict::Continue,
        }
    }

    fn on_tick(&self, _route: &RateLimitRoute, host: &mut impl Host) {
        self.secret.recheck(host);
    }

    fn on_response(
        &self,
        _route: &RateLimitRoute,
        state: &mut RequestState,
        host: &mut impl ResponseHost,
    ) {
        if let Some(budget) = state.budget {
            let mut digits = [0u8; MAX_DIGITS];
            for (name, value) in budget_headers(&budget) {
                host.set_response_header(name, decimal(value, &mut digits));
            }
        }
        for (name, value) in &state.response_headers {
            host.add_response_header(name, value);
        }
    }
}

impl RateLimitRoute {
    fn count(&self, host: &mut impl Host, counted: Counted) {
        self.counters.count(host, counted);
    }

    /// Counts a shared-data error and logs it once per [`LOG_EVERY`]; `decision` is what the
    /// request got for it.
    fn note_store_error(&self, host: &mut impl Host, error: UpdateError, decision: Decision) {
        self.count(host, Counted::StoreError(error));
        if let Some(count) = self.store_error_log.note(host.now()) {
            log::warn!(
                "ratelimit route={} store_error={} requests={count} action={}",
                self.name,
                error.as_str(),
                decision.action()
            );
        }
    }

    fn note_dry_run(&self, now: Nanos) {
        if let Some(count) = self.dry_run_log.note(now) {
            log::info!(
                "ratelimit route={} dry_run=true would_reject={count}",
                self.name
            );
        }
    }
}

/// Logs at most once per [`LOG_EVERY`] per route and VM, with the count since the last line
/// (the first event is logged at once): never a line per request.
#[derive(Debug, Default)]
struct Throttle {
    next_at: Cell<Nanos>,
    pending: Cell<u64>,
}

impl Throttle {
    /// Counts one event; returns how many to report when a line is due.
    fn note(&self, now: Nanos) -> Option<u64> {
        let pending = self.pending.get().saturating_add(1);
        if now < self.next_at.get() {
            self.pending.set(pending);
            return None;
        }
        self.next_at.set(now.saturating_add(LOG_EVERY));
        self.pending.set(0);
        Some(pending)
    }
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(RateLimit);

#[cfg(test)]
mod tests;
