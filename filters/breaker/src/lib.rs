//! Circuit breaking: while a route's (or cluster's) upstream keeps failing or is slow, answer
//! with the route's fallback instead of calling it, then let probes decide when it is back.
//!
//! Glue only: [`machine::admit`] decides at the request, [`BreakerPolicy::classify`] and
//! [`machine::complete`] count the call when the stream is over (Envoy's log phase, the one
//! phase every finished stream reaches once: after a response, or after a reset or timeout
//! that produced none). The response phase only notes when the response headers came, for
//! the latency. The state lives in shared data, so every Envoy worker sees one breaker.

use std::cell::RefCell;
use std::rc::Rc;

use mesh_policy::breaker::classify::{Finished, Verdict};
use mesh_policy::breaker::machine::{self, Admission, Local, Outcome, Ticket, Transition};
use mesh_policy::breaker::record::State;
use mesh_policy::breaker::{BreakerConfig, BreakerPolicy, KeyBy, shared_key};
use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict as FilterVerdict};
use mesh_policy::grpc::{self, Protocol};
use mesh_policy::host::{Host, Metric, MetricKind, Nanos, RequestHost, ResponseHost, TrailersHost};
use mesh_policy::stats::{self, Counters};
use mesh_policy::store::UpdateError;

/// `mesh_breaker_requests_total{route, decision}`: every tracked request, once, at its
/// request headers.
pub const REQUESTS_TOTAL: &str = "mesh_breaker_requests_total";
/// `mesh_breaker_calls_total{route, outcome, protocol}`: every passed call, once, when it
/// ends; `protocol` is `grpc` for gRPC calls (classified by their gRPC status), else `http`.
pub const CALLS_TOTAL: &str = "mesh_breaker_calls_total";
/// `mesh_breaker_slow_calls_total{route}`: passed calls at least `slow_call_ms` slow.
pub const SLOW_CALLS_TOTAL: &str = "mesh_breaker_slow_calls_total";
/// `mesh_breaker_store_errors_total{route, error}`: shared data could not be updated.
pub const STORE_ERRORS_TOTAL: &str = "mesh_breaker_store_errors_total";
/// `mesh_breaker_transitions_total{route, to}`.
pub const TRANSITIONS_TOTAL: &str = "mesh_breaker_transitions_total";
/// `mesh_breaker_state{route}` (and `cluster` when keyed by cluster): 0 closed, 1 open,
/// 2 half-open.
pub const STATE: &str = "mesh_breaker_state";

/// A route keyed by cluster tracks at most this many clusters; more pass untracked. Route
/// clusters come from Envoy's config, but `cluster_header` routes take them from a request
/// header, and shared-data keys are never deleted.
pub const MAX_CLUSTERS_PER_ROUTE: usize = 32;

/// What the breaker counts: a request's decision, then its call's outcome; the breaker's
/// transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Decision: closed, passed to the upstream.
    Allowed,
    /// Decision: half-open, passed as a probe.
    Probe,
    /// Decision: open, or half-open over the probe budget: answered with the fallback.
    Rejected,
    /// Outcome: the upstream answered with a status outside the failure set.
    Success(Protocol),
    /// Outcome: a failure status, reset, connect failure or timeout.
    Failure(Protocol),
    /// Outcome: finished without the upstream deciding it (the client left first).
    Ignored(Protocol),
    /// Besides the outcome: at least `slow_call_ms`.
    Slow,
    /// Shared data: every compare-and-swap round lost.
    Contended,
    /// Shared data: the host refused the write.
    StoreFailed,
    /// The breaker went to this state (counted by the one winning write).
    Transition(State),
}

impl Counted {
    pub const ALL: [Counted; 15] = [
        Self::Allowed,
        Self::Probe,
        Self::Rejected,
        Self::Success(Protocol::Http),
        Self::Failure(Protocol::Http),
        Self::Ignored(Protocol::Http),
        Self::Success(Protocol::Grpc),
        Self::Failure(Protocol::Grpc),
        Self::Ignored(Protocol::Grpc),
        Self::Slow,
        Self::Contended,
        Self::StoreFailed,
        Self::Transition(State::Closed),
        Self::Transition(State::Open),
        Self::Transition(State::HalfOpen),
    ];

    /// The metric and its labels besides `route`.
    pub fn metric(self) -> (&'static str, Vec<(&'static str, &'static str)>) {
        let call = |outcome, protocol: Protocol| {
            vec![("outcome", outcome), ("protocol", protocol.label())]
        };
        match self {
            Self::Allowed => (REQUESTS_TOTAL, vec![("decision", "allowed")]),
            Self::Probe => (REQUESTS_TOTAL, vec![("decision", "probe")]),
            Self::Rejected => (REQUESTS_TOTAL, vec![("decision", "rejected")]),
            Self::Success(protocol) => (CALLS_TOTAL, call("success", protocol)),
            Self::Failure(protocol) => (CALLS_TOTAL, call("failure", protocol)),
            Self::Ignored(protocol) => (CALLS_TOTAL, call("ignored", protocol)),
            Self::Slow => (SLOW_CALLS_TOTAL, Vec::new()),
            Self::Contended => (
                STORE_ERRORS_TOTAL,
                vec![("error", UpdateError::Contended.as_str())],
            ),
            Self::StoreFailed => (
                STORE_ERRORS_TOTAL,
                vec![("error", UpdateError::Failed.as_str())],
            ),
            Self::Transition(state) => (TRANSITIONS_TOTAL, vec![("to", state.as_str())]),
        }
    }

    /// How a classified call is counted.
    fn call(verdict: Verdict, protocol: Protocol) -> Self {
        match verdict {
            Verdict::Success => Self::Success(protocol),
            Verdict::Failure(_) => Self::Failure(protocol),
            Verdict::Ignored => Self::Ignored(protocol),
        }
    }

    fn store_error(error: UpdateError) -> Self {
        match error {
            UpdateError::Contended => Self::Contended,
            UpdateError::Failed => Self::StoreFailed,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    prefix: String,
    /// This VM's view of each breaker by shared-data key: the routes of one cluster share its
    /// breaker (`key: cluster`), so they share one view too. As many as breakers bound.
    views: RefCell<Vec<(String, Rc<Local>)>>,
}

impl Breaker {
    /// The VM's view of the breaker at `key`.
    fn view(&self, key: &str) -> Rc<Local> {
        let mut views = self.views.borrow_mut();
        if let Some((_, view)) = views.iter().find(|(k, _)| k == key) {
            return Rc::clone(view);
        }
        let view = Rc::new(Local::default());
        views.push((key.to_owned(), Rc::clone(&view)));
        view
    }
}

/// One breaker as a route sees it: its shared-data key, state gauge and this VM's view of it.
#[derive(Debug)]
pub struct BoundBreaker {
    /// The cluster name when keyed by cluster; empty when keyed by route.
    cluster: Vec<u8>,
    key: String,
    state: Metric,
    local: Rc<Local>,
}

impl BoundBreaker {
    /// The breaker at `key`, its record created now if no VM has yet: every write to it is
    /// then a compare-and-swap (see [`machine::create`]).
    fn new(
        filter: &Breaker,
        host: &mut impl Host,
        route: &str,
        key: String,
        cluster: Vec<u8>,
        state: Metric,
    ) -> Self {
        if !machine::create(host, &key) {
            log::warn!(
                "breaker route={route} key={key}: record could not be created; its first write creates it"
            );
        }
        Self {
            cluster,
            local: filter.view(&key),
            key,
            state,
        }
    }
}

/// A breaker policy bound to one route.
#[derive(Debug)]
pub struct BreakerRoute {
    policy: Rc<BreakerPolicy>,
    name: String,
    counters: Counters<Counted>,
    /// Keyed by route: the one breaker.
    route_breaker: Option<Rc<BoundBreaker>>,
    /// Keyed by cluster: one per cluster seen, added as they come (at most
    /// [`MAX_CLUSTERS_PER_ROUTE`]).
    breakers: RefCell<Vec<Rc<BoundBreaker>>>,
}

/// What the end of a passed request needs.
#[derive(Debug)]
pub struct Pending {
    breaker: Rc<BoundBreaker>,
    ticket: Ticket,
    started: Nanos,
    responded: Option<Nanos>,
    protocol: Protocol,
    /// A gRPC call's `grpc-status`, from the response headers or trailers.
    grpc_status: Option<u32>,
}

impl Pending {
    /// Notes a gRPC call's status where the response carries it.
    fn note_grpc_status(&mut self, read: impl FnOnce() -> Option<Vec<u8>>) {
        if self.protocol == Protocol::Grpc
            && let Some(code) = read().as_deref().and_then(grpc::parse_status)
        {
            self.grpc_status = Some(code);
        }
    }
}

impl BreakerRoute {
    fn count(&self, host: &mut impl Host, counted: Counted) {
        self.counters.count(host, counted);
    }

    /// The breaker this request belongs to; `None` leaves the request alone.
    fn breaker(&self, filter: &Breaker, host: &mut impl Host) -> Option<Rc<BoundBreaker>> {
        if let Some(breaker) = &self.route_breaker {
            return Some(Rc::clone(breaker));
        }
        let cluster = host.property(&["xds", "cluster_name"])?;
        let clusters = &self.breakers;
        if let Some(bound) = clusters.borrow().iter().find(|b| b.cluster == cluster) {
            return Some(Rc::clone(bound));
        }
        let mut breakers = clusters.borrow_mut();
        if breakers.len() >= MAX_CLUSTERS_PER_ROUTE {
            log::debug!(
                "breaker route={}: over {MAX_CLUSTERS_PER_ROUTE} clusters, cluster {} passes untracked",
                self.name,
                String::from_utf8_lossy(&cluster)
            );
            return None;
        }
        let name = String::from_utf8_lossy(&cluster).into_owned();
        let state = host.define_metric(
            MetricKind::Gauge,
            &stats::metric_name(STATE, &[("route", &self.name), ("cluster", &name)]),
        );
        let key = shared_key(&filter.prefix, KeyBy::Cluster, &name);
        let bound = Rc::new(BoundBreaker::new(
            filter, host, &self.name, key, cluster, state,
        ));
        breakers.push(Rc::clone(&bound));
        Some(bound)
    }

    /// Sets the gauge to the state just read or written, and reports a transition once (it
    /// is made by exactly one winning compare-and-swap).
    fn observe(
        &self,
        host: &mut impl Host,
        breaker: &BoundBreaker,
        state: State,
        transition: Option<Transition>,
    ) {
        host.record_metric(breaker.state, state.gauge());
        let Some(t) = transition else {
            return;
        };
        self.count(host, Counted::Transition(t.to));
        log::info!(
            "breaker route={} key={} from={} to={} reason={} window_calls={} window_failures={} \
             window_slow={} consecutive_failures={} probes_succeeded={}",
            self.name,
            breaker.key,
            t.from.as_str(),
            t.to.as_str(),
            t.reason.as_str(),
            t.window.calls,
            t.window.failures,
            t.window.slow,
            t.consecutive_failures,
            t.probes_succeeded
        );
    }
}

impl Filter for Breaker {
    const NAME: &'static str = "breaker";
    type Config = BreakerConfig;
    type Policy = BreakerPolicy;
    type Route = BreakerRoute;
    /// `None` when the request was not tracked.
    type Request = Option<Pending>;

    fn new(plugin: &Plugin) -> Self {
        Self {
            prefix: plugin.key_prefix(),
            views: RefCell::new(Vec::new()),
        }
    }

    fn compile(&self, config: BreakerConfig, at: &FieldPath) -> Result<BreakerPolicy, ConfigError> {
        BreakerPolicy::compile(config, at)
    }

    fn bind(
        &self,
        policy: Rc<BreakerPolicy>,
        route_name: &str,
        host: &mut impl Host,
    ) -> BreakerRoute {
        let name = stats::route_label(route_name).to_owned();
        let counters = Counters::define(host, route_name, Counted::ALL, Counted::metric);
        let route_breaker = policy.route_key(&self.prefix, route_name).map(|key| {
            let state = host.define_metric(
                MetricKind::Gauge,
                &stats::metric_name(STATE, &[("route", &name)]),
            );
            Rc::new(BoundBreaker::new(self, host, &name, key, Vec::new(), state))
        });
        BreakerRoute {
            policy,
            name,
            counters,
            route_breaker,
            breakers: RefCell::new(Vec::new()),
        }
    }

    fn on_request(
        &self,
        route: &BreakerRoute,
        host: &mut impl RequestHost,
    ) -> (FilterVerdict, Option<Pending>) {
        let Some(breaker) = route.breaker(self, host) else {
            return (FilterVerdict::Continue, None);
        };
        let started = host.now();
        let outcome = breaker
            .local
            .admit(&route.policy, host, &breaker.key, started);
        // A request that passes sets the state gauge when it completes (on_done): one gauge
        // update per request, not two. A rejected one ends here.
        let rejected = matches!(outcome.result, Admission::Reject { .. });
        if rejected || outcome.transition.is_some() {
            route.observe(host, &breaker, outcome.state, outcome.transition);
        }
        if let Some(error) = outcome.store_error {
            route.count(host, Counted::store_error(error));
        }
        match outcome.result {
            Admission::Pass(ticket) => {
                let counted = if ticket.probe {
                    Counted::Probe
                } else {
                    Counted::Allowed
                };
                route.count(host, counted);
                let pending = Pending {
                    breaker,
                    ticket,
                    started,
                    responded: None,
                    protocol: Protocol::of(host),
                    grpc_status: None,
                };
                (FilterVerdict::Continue, Some(pending))
            }
            Admission::Reject {
                state,
                retry_after_secs,
            } => {
                route.count(host, Counted::Rejected);
                log::debug!(
                    "breaker route={} key={}: rejected ({}), retry after {retry_after_secs} s",
                    route.name,
                    breaker.key,
                    state.as_str()
                );
                let reply = route.policy.fallback.reply(state, retry_after_secs, host);
                (FilterVerdict::Reply(reply), None)
            }
        }
    }

    fn on_response(
        &self,
        _route: &BreakerRoute,
        pending: &mut Option<Pending>,
        host: &mut impl ResponseHost,
    ) {
        // Latency ends at the response headers; the call is counted once, in on_done.
        if let Some(pending) = pending {
            pending.responded = Some(host.now());
            // A trailers-only response (a failed unary call, Envoy's own replies).
            pending.note_grpc_status(|| host.response_header(grpc::STATUS));
        }
    }

    fn on_response_trailers(
        &self,
        _route: &BreakerRoute,
        pending: &mut Option<Pending>,
        host: &mut impl TrailersHost,
    ) {
        if let Some(pending) = pending {
            pending.note_grpc_status(|| host.response_trailer(grpc::STATUS));
        }
    }

    fn on_done(&self, route: &BreakerRoute, pending: &mut Option<Pending>, host: &mut impl Host) {
        // take(): whatever calls this twice, a call is counted once.
        let Some(pending) = pending.take() else {
            return;
        };
        // The call is counted at the stream's end, not at its response: a long response
        // counted at its start would land in a bucket the window has moved past.
        let now = host.now();
        let end = pending.responded.unwrap_or(now);
        let finished = Finished::read(
            host,
            end.saturating_sub(pending.started),
            pending.protocol,
            pending.grpc_status,
        );
        let policy = &route.policy;
        let call = policy.classify(&finished);
        route.count(host, Counted::call(call.verdict, pending.protocol));
        if call.slow {
            route.count(host, Counted::Slow);
        }
        let breaker = &pending.breaker;
        let written = breaker
            .local
            .complete(policy, host, &breaker.key, pending.ticket, call, now);
        route.written(host, breaker, written.transpose());
    }

    /// Successes batched since the last write go into the record.
    fn on_tick(&self, route: &BreakerRoute, host: &mut impl Host) {
        let now = host.now();
        let clusters = route.breakers.borrow().clone();
        for breaker in route.route_breaker.iter().cloned().chain(clusters) {
            let flushed = breaker.local.flush(&route.policy, host, &breaker.key, now);
            route.written(host, &breaker, flushed);
        }
    }
}

impl BreakerRoute {
    /// Observes what a write to `breaker`'s record left, or counts its error (the call was
    /// not counted); `None`: nothing was written.
    fn written(
        &self,
        host: &mut impl Host,
        breaker: &BoundBreaker,
        written: Option<Result<Outcome<()>, UpdateError>>,
    ) {
        match written {
            None => {}
            Some(Ok(outcome)) => {
                self.observe(host, breaker, outcome.state, outcome.transition);
            }
            Some(Err(err)) => {
                self.count(host, Counted::store_error(err));
                log::debug!(
                    "breaker route={} key={}: call not counted: shared data {err:?}",
                    self.name,
                    breaker.key
                );
            }
        }
    }
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(Breaker);

#[cfg(test)]
mod tests;
