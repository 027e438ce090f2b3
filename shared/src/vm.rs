//! What one VM of a module keeps between requests and does for each, over host calls alone:
//! the adapter (`filters/adapter`) drives it with proxy-wasm's, tests with `FakeHost`
//! (`fake`, feature `test-util`), so a test counts exactly the host calls a module makes per
//! request.
//!
//! A request (a [`Stream`]) goes through three phases:
//! 1. request headers: the route name (`xds.route_name`, one property read), the route's
//!    bound stages (bound once per route name and VM), each stage's request phase;
//! 2. response headers: the stages' response phases, in reverse;
//! 3. the stream's end: their done phases, in reverse.
//!
//! The host the stages see ([`VmHost`]) costs fewer calls than what they ask of it:
//! - request headers are fetched whole by the first read of a phase and served from the
//!   module's memory, kept in step with the phase's own writes;
//! - the clock is read once per phase;
//! - counters are added up in the VM and handed to Envoy by [`Vm::on_tick`] (the root
//!   context's tick, at least once a second); a gauge is written only when its value
//!   changes; histogram observations go at once.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;

use crate::chain::Stages;
use crate::filter::{CallOutcome, Verdict};
use crate::headers::HeaderPairs;
use crate::host::{
    Host, Metric, MetricKind, Nanos, RequestCalls, RequestHost, ResponseHost, TrailersHost,
};
use written::Written;

/// The callbacks Envoy makes into a module for every request: its stream context's creation,
/// request headers, response headers and deletion (the done phase runs there). A module built
/// on the adapter exports no other per-stream callback (`scripts/build.sh` checks), so a
/// request enters the VM this many times, plus once per host call answer it allocates
/// (`fake::HostCalls::allocations`). The one more it exports, the response
/// trailers, Envoy calls only for a response that has trailers (gRPC).
pub const CALLBACKS_PER_REQUEST: [&str; 4] = [
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_delete",
];

/// The property a request's route is chosen by.
pub const ROUTE_NAME: [&str; 2] = ["xds", "route_name"];

/// Bound routes by Envoy route name; `None` caches "no stage has a policy for it". Route names
/// come from config, not clients: FxHash needs no flooding defence.
type BoundRoutes<R> = HashMap<Vec<u8>, Option<Rc<R>>, FxBuildHasher>;

/// One VM's stages, the routes it has bound and the counts it has not handed to Envoy yet.
pub struct Vm<S: Stages> {
    stages: S,
    bound: RefCell<BoundRoutes<S::Route>>,
    metrics: MetricTable,
}

/// One request on its way through the stages.
pub struct Stream<S: Stages> {
    route: Rc<S::Route>,
    request: S::Request,
    /// A body follows the request headers (Envoy says so with them).
    has_body: bool,
}

impl<S: Stages> Stream<S> {
    /// Whether a stage holds the request for a call.
    pub fn waiting(&self) -> bool {
        S::waiting(&self.request)
    }
}

impl<S: Stages> Vm<S> {
    pub fn new(stages: S) -> Self {
        Self {
            stages,
            bound: RefCell::new(HashMap::default()),
            metrics: MetricTable::default(),
        }
    }

    pub fn stages(&self) -> &S {
        &self.stages
    }

    /// The request-headers phase (`has_body`: a body follows the headers); `None` when no
    /// stage has a policy for the request's route.
    pub fn on_request<H: RequestCalls>(
        &self,
        host: &mut H,
        has_body: bool,
    ) -> Option<(Verdict, Stream<S>)> {
        let mut host = VmHost::new(host, &self.metrics);
        host.has_body = has_body;
        let name = host.property(&ROUTE_NAME).unwrap_or_default();
        let route = self.route(&name, &mut host)?;
        let (verdict, request) = self.stages.on_request(&route, &mut host);
        Some((
            verdict,
            Stream {
                route,
                request,
                has_body,
            },
        ))
    }

    /// The outcome of the call a stage asked for, still in the request phase.
    pub fn on_call_done<H: RequestCalls>(
        &self,
        stream: &mut Stream<S>,
        outcome: CallOutcome,
        host: &mut H,
    ) -> Verdict {
        let mut host = VmHost::new(host, &self.metrics);
        host.has_body = stream.has_body;
        self.stages
            .on_call_done(&stream.route, &mut stream.request, outcome, &mut host)
    }

    pub fn on_response<H: ResponseHost>(&self, stream: &mut Stream<S>, host: &mut H) {
        let mut host = VmHost::new(host, &self.metrics);
        self.stages
            .on_response(&stream.route, &mut stream.request, &mut host);
    }

    pub fn on_response_trailers<H: TrailersHost>(&self, stream: &mut Stream<S>, host: &mut H) {
        let mut host = VmHost::new(host, &self.metrics);
        self.stages
            .on_response_trailers(&stream.route, &mut stream.request, &mut host);
    }

    /// The stream is over: taken by value, so its done phase runs once.
    pub fn on_done<H: Host>(&self, mut stream: Stream<S>, host: &mut H) {
        let mut host = VmHost::new(host, &self.metrics);
        self.stages
            .on_done(&stream.route, &mut stream.request, &mut host);
    }

    /// The root context's tick: the stages' deferred work for every bound route (e.g. the
    /// breaker's batched successes), then the counters, handed to Envoy.
    pub fn on_tick<H: Host>(&self, host: &mut H) {
        {
            let mut vm_host = VmHost::new(&mut *host, &self.metrics);
            if let Ok(bound) = self.bound.try_borrow() {
                for route in bound.values().flatten() {
                    self.stages.on_tick(route, &mut vm_host);
                }
            }
        }
        self.metrics.flush(host);
    }

    /// Hands the counters to Envoy now (the VM is going away).
    pub fn flush(&self, host: &mut impl Host) {
        self.metrics.flush(host);
    }

    fn route(&self, name: &[u8], host: &mut impl Host) -> Option<Rc<S::Route>> {
        if let Some(bound) = self.bound.borrow().get(name) {
            return bound.clone();
        }
        let text = String::from_utf8_lossy(name);
        let bound = self.stages.bind(&text, host).map(Rc::new);
        self.bound.borrow_mut().insert(name.to_vec(), bound.clone());
        bound
    }
}

/// The metrics the stages defined through a [`VmHost`], by the index they were given: what
/// each is in Envoy, and what Envoy has not been told yet.
#[derive(Debug, Default)]
pub struct MetricTable {
    entries: RefCell<Vec<MetricEntry>>,
}

#[derive(Debug)]
struct MetricEntry {
    /// The metric as the host defined it.
    host: Metric,
    kind: MetricKind,
    /// Counter increments not yet handed to the host.
    pending: i64,
    /// A gauge's value as this VM last wrote it.
    written: Option<u64>,
}

impl MetricTable {
    fn define(&self, host: Metric, kind: MetricKind) -> Metric {
        if host.0.is_none() {
            return host;
        }
        let mut entries = self.entries.borrow_mut();
        entries.push(MetricEntry {
            host,
            kind,
            pending: 0,
            written: None,
        });
        Metric(u32::try_from(entries.len() - 1).ok())
    }

    /// Counts for later; `Some` is the host's metric and the delta when it must go now.
    fn increment(&self, metric: Metric, delta: i64) -> Option<(Metric, i64)> {
        let mut entries = self.entries.borrow_mut();
        let entry = entries.get_mut(metric.0? as usize)?;
        match entry.kind {
            MetricKind::Counter => {
                entry.pending = entry.pending.saturating_add(delta);
                None
            }
            // A gauge moved by a delta: its value is no longer the one written.
            MetricKind::Gauge | MetricKind::Histogram => {
                entry.written = None;
                Some((entry.host, delta))
            }
        }
    }

    /// `Some` when the value must reach the host now: a histogram observation, or a gauge
    /// whose value changed. A counter's record is an increment, counted for later.
    fn record(&self, metric: Metric, value: u64) -> Option<Metric> {
        let mut entries = self.entries.borrow_mut();
        let entry = entries.get_mut(metric.0? as usize)?;
        match entry.kind {
            MetricKind::Histogram => Some(entry.host),
            MetricKind::Gauge if entry.written == Some(value) => None,
            MetricKind::Gauge => {
                entry.written = Some(value);
                Some(entry.host)
            }
            MetricKind::Counter => {
                let delta = i64::try_from(value).unwrap_or(i64::MAX);
                entry.pending = entry.pending.saturating_add(delta);
                None
            }
        }
    }

    /// Hands every pending counter increment to the host.
    fn flush(&self, host: &mut impl Host) {
        let due: Vec<(Metric, i64)> = match self.entries.try_borrow_mut() {
            Ok(mut entries) => entries
                .iter_mut()
                .filter(|entry| entry.pending != 0)
                .map(|entry| (entry.host, std::mem::take(&mut entry.pending)))
                .collect(),
            Err(_) => return,
        };
        for (metric, delta) in due {
            host.increment_metric(metric, delta);
        }
    }
}

/// The host as the stages see it during one phase of one request (see the module docs for
/// what it saves).
pub struct VmHost<'a, H> {
    host: &'a mut H,
    metrics: &'a MetricTable,
    now: OnceCell<Nanos>,
    /// The request headers as fetched by the phase's first read (read in place)...
    request_headers: OnceCell<HeaderPairs>,
    /// ...and the phase's own writes since.
    written: Written,
    has_body: bool,
}

impl<'a, H> VmHost<'a, H> {
    fn new(host: &'a mut H, metrics: &'a MetricTable) -> Self {
        Self {
            host,
            metrics,
            now: OnceCell::new(),
            request_headers: OnceCell::new(),
            written: Written::default(),
            has_body: false,
        }
    }
}

impl<H: Host> Host for VmHost<'_, H> {
    fn now(&self) -> Nanos {
        *self.now.get_or_init(|| self.host.now())
    }

    crate::forward_host!(host => random_u64, property, property_u64, shared_get, shared_set);

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Metric {
        let host = self.host.define_metric(kind, name);
        self.metrics.define(host, kind)
    }

    fn increment_metric(&mut self, metric: Metric, delta: i64) {
        if let Some((host, delta)) = self.metrics.increment(metric, delta) {
            self.host.increment_metric(host, delta);
        }
    }

    fn record_metric(&mut self, metric: Metric, value: u64) {
        if let Some(host) = self.metrics.record(metric, value) {
            self.host.record_metric(host, value);
        }
    }
}

impl<H: RequestCalls> VmHost<'_, H> {
    fn request_headers(&self) -> &HeaderPairs {
        self.request_headers
            .get_or_init(|| self.host.get_http_request_headers())
    }
}

impl<H: RequestCalls> RequestHost for VmHost<'_, H> {
    /// The first value, as Envoy's own single-value getter answers.
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        match self.written.get(name) {
            Some(written) => written,
            None => self.request_headers().get(name),
        }
    }

    fn request_header_count(&self, name: &str) -> usize {
        match self.written.get(name) {
            Some(written) => usize::from(written.is_some()),
            None => self.request_headers().count(name),
        }
    }

    fn request_header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> {
        let written = self.written.get(name);
        let read = written
            .is_none()
            .then(|| self.request_headers().get_all(name));
        written
            .flatten()
            .into_iter()
            .chain(read.into_iter().flatten())
    }

    fn request_has_body(&self) -> bool {
        self.has_body
    }

    /// An add where the request has no such header: Envoy's set first walks the map to
    /// remove the name (on the request, 4.4k instructions against 0.9k for an add, callgrind
    /// of Envoy 1.40 with the native module; `docs/native.md`).
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        if self.request_header_count(name) == 0 {
            self.host.add_http_request_header(name, value);
        } else {
            self.host.set_http_request_header(name, value);
        }
        self.written.note(name, Some(value));
    }

    fn remove_request_header(&mut self, name: &str) {
        self.host.remove_http_request_header(name);
        self.written.note(name, None);
    }

    fn clear_route_cache(&mut self) {
        self.host.clear_http_route_cache();
    }
}

impl<H: TrailersHost> TrailersHost for VmHost<'_, H> {
    crate::forward_host!(host => response_trailer);
}

impl<H: ResponseHost> ResponseHost for VmHost<'_, H> {
    crate::forward_host!(host => response_header, set_response_header, add_response_header);
}

#[cfg(test)]
mod tests;
mod written;
