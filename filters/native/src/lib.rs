//! The bundle as a native Envoy dynamic module: `libmesh_bundle.so` for
//! `envoy.filters.http.dynamic_modules`, built against Envoy 1.40's C ABI (`ABI.md`).
//!
//! The second adapter beside `filters/adapter` (proxy-wasm): the same [`Bundle`] stages, the
//! same [`Vm`], the same plugin JSON, over [`host::Native`], the `Host` traits on the ABI's
//! callbacks. Envoy runs the filter on its worker threads, all in one process:
//! - a worker's [`Worker`] plays a Wasm VM's part: its own `Vm` (compiled from the plugin
//!   JSON on the worker's first request), generator and counters, in a thread-local;
//! - shared data is process memory ([`store`]): the same keys, values and CAS tokens as
//!   Envoy's shared data, so the same records, slots and exactness;
//! - metric families (a base name and its label names) are defined when Envoy loads the
//!   config (the ABI refuses definitions later: "frozen"): a dry run binds every route the
//!   plugin JSON names and defines the families of what the stages define (`base;label=value`
//!   names); a worker's `define_metric` finds its family and keeps the label values, and
//!   Envoy makes each series on its first update.
//!
//! - a gRPC call (global rate limits) goes over the ABI's HTTP stream callout, framed here
//!   ([`callout`]); the request waits for its end, as under proxy-wasm.
//!
//! Not here (see `ABI.md`): a timer per worker (the stages' tick runs at a stream's end once
//! its period is over, counters go to Envoy at every stream's end; a call's deadline is
//! Envoy's timeout on the callout).
//!
//! A panic in a hook is caught where the hook entered the module (the `native` profile
//! unwinds), logged at critical, and the request goes on as if the module had let it pass.

mod abi;
mod callout;
#[cfg(test)]
mod crossings;
mod host;
mod logger;
mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use mesh_bundle::Bundle;
use mesh_policy::chain::Stages;
use mesh_policy::filter::{CallOutcome, GrpcCall, Plugin, Verdict};
use mesh_policy::host::{Host, MetricKind, NANOS_PER_MS, Nanos};
use mesh_policy::stats;
use mesh_policy::vm::{Stream, Vm};

pub use abi::ABI_VERSION;
use abi::{ConfigPtr, FilterPtr, MetricType};
use host::Native;

/// How often a worker runs the stages' tick (deferred work such as the breaker's batched
/// successes) unless `MESH_STATS_FLUSH_MS` (Envoy's environment) says otherwise.
const TICK_EVERY_MS: u64 = 1000;
const MIN_TICK_MS: u64 = 10;

/// One filter config as Envoy loaded it (a listener's `dynamic_modules` filter).
pub struct Config {
    id: u64,
    plugin: Plugin,
    json: Vec<u8>,
    /// Metric name → (type, Envoy's id), defined at load.
    metrics: Arc<HashMap<String, (MetricType, usize)>>,
    tick_every: Nanos,
    /// Alive while Envoy holds the config: workers drop their `Vm` of a config once it is gone.
    alive: Arc<()>,
}

/// What one worker thread keeps for one config: a Wasm VM's share.
struct Worker {
    config_id: u64,
    vm: Vm<Bundle>,
    rng: RefCell<fastrand::Rng>,
    ticked_at: Cell<Nanos>,
    /// The config's metrics by name (read-only after load).
    metrics: Arc<HashMap<String, (MetricType, usize)>>,
    /// The metrics this worker's stages defined, by the index `define_metric` gave them.
    defined: RefCell<Vec<host::Defined>>,
    tick_every: Nanos,
    plugin: Plugin,
    /// Streams of this worker and config that have not completed yet.
    active: Cell<usize>,
}

/// One stream. Envoy may enter a stream's hooks again from inside one (a local reply sent
/// in the request phase runs the response phase at once), so hooks share it (`&Filter`) and
/// borrow its state only between calls into Envoy.
pub struct Filter {
    worker: Rc<Worker>,
    stream: RefCell<Option<Kept>>,
    /// The gRPC call the request waits for (one at a time).
    call: RefCell<Option<Call>>,
    /// Counted out of the worker's open streams (at its completion, else when destroyed).
    closed: Cell<bool>,
}

/// A gRPC call out (`callout.rs`): its answer so far; while Envoy is still inside
/// `start_http_stream` (`starting`), an end is only noted (`ended`), for the caller to see.
#[derive(Default)]
struct Call {
    answer: callout::Answer,
    starting: bool,
    ended: bool,
}

impl Filter {
    /// Takes the stream out of the worker's open ones (once); true if none is left open.
    fn close(&self) -> bool {
        let active = &self.worker.active;
        if !self.closed.replace(true) {
            active.set(active.get().saturating_sub(1));
        }
        active.get() == 0
    }
}

/// A stream the request phase kept, and whether its response phase already ran (on the
/// module's own local reply).
struct Kept {
    stream: Stream<Bundle>,
    responded: bool,
}

thread_local! {
    /// This worker's `Worker` per live config.
    static WORKERS: RefCell<Vec<(Weak<()>, Rc<Worker>)>> = const { RefCell::new(Vec::new()) };
}

static CONFIG_IDS: AtomicU64 = AtomicU64::new(1);

/// Runs a hook's body; a panic is logged and ends in `fallback`.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            report_panic(&format!("mesh_bundle: panic in {hook}: {message}"));
            fallback
        }
    }
}

/// A caught panic, to Envoy's log at critical.
fn report_panic(line: &str) {
    abi::log(abi::LogLevel::Critical, line);
}

/// Loads a config: the plugin JSON compiled (refused on any error, as the Wasm build's
/// `on_configure`), metrics defined. `None` refuses the config.
fn config_new(config_envoy: ConfigPtr, name: &[u8], json: &[u8]) -> Option<Config> {
    guarded("config_new", None, || {
        let name = String::from_utf8_lossy(name).into_owned();
        let name = if name.is_empty() {
            "mesh.bundle".to_owned()
        } else {
            name
        };
        // The filter name is the plugin's name and root id (as the harness and Istio give a
        // Wasm plugin both): the same shared-data keys and log lines as the Wasm bundle.
        let plugin = Plugin {
            root_id: name.clone(),
            name,
        };
        let stages = match Bundle::configure(&plugin, json) {
            Ok(stages) => stages,
            Err(err) => {
                log::error!(
                    "{} config=rejected plugin={} error={err}",
                    Bundle::NAME,
                    plugin.name
                );
                return None;
            }
        };
        stages.log_loaded(&plugin);
        let metrics = define_metrics(&stages, &plugin, json, config_envoy);
        Some(Config {
            id: CONFIG_IDS.fetch_add(1, Ordering::Relaxed),
            plugin,
            json: json.to_vec(),
            metrics: Arc::new(metrics),
            tick_every: tick_every_ms() * NANOS_PER_MS,
            alive: Arc::new(()),
        })
    })
}

/// Every route name the plugin JSON names (the keys of each stage's `routes`), and the
/// unnamed route.
fn route_names(json: &[u8]) -> Vec<String> {
    let mut names = vec![String::new()];
    let Ok(serde_json::Value::Object(stages)) = serde_json::from_slice(json) else {
        return names;
    };
    for stage in stages.values() {
        if let Some(serde_json::Value::Object(routes)) = stage.get("routes") {
            for name in routes.keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
    }
    names
}

/// A metric family by type, base name and labels (values ignored).
type Family = (
    MetricKind,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Metric families a stage defines after it bound the route, which the dry run cannot meet:
/// a breaker keyed by cluster defines each cluster's state gauge when a request first goes to
/// that cluster. (Label values here are placeholders: a family is its name and label names.)
const LATE_FAMILIES: [Family; 1] = [(
    MetricKind::Gauge,
    mesh_breaker::STATE,
    &[("route", ""), ("cluster", "")],
)];

/// The dry run: binds every route the JSON names on a host that notes each metric the
/// stages define, and defines each through the ABI (the only moment Envoy allows it).
fn define_metrics(
    stages: &Bundle,
    plugin: &Plugin,
    json: &[u8],
    config_envoy: ConfigPtr,
) -> HashMap<String, (MetricType, usize)> {
    let mut recorder = host::Recorder::new(plugin.clone());
    for name in route_names(json) {
        let _ = stages.bind(&name, &mut recorder);
    }
    let mut metrics = HashMap::new();
    let late = LATE_FAMILIES
        .iter()
        .map(|(kind, base, labels)| (*kind, stats::metric_name(base, labels)));
    for (kind, name) in recorder.defined.iter().cloned().chain(late) {
        let name = host::MetricName::parse(&name);
        let family = name.family();
        if metrics.contains_key(&family) {
            continue;
        }
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match config_envoy.define_metric(kind, name.base, &name.labels) {
            Some(id) => {
                metrics.insert(family, (kind, id));
            }
            None => log::warn!("{}: Envoy refused metric {family}", Bundle::NAME),
        }
    }
    metrics
}

/// `MESH_STATS_FLUSH_MS` from Envoy's environment, else [`TICK_EVERY_MS`].
fn tick_every_ms() -> u64 {
    std::env::var("MESH_STATS_FLUSH_MS")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(TICK_EVERY_MS, |ms| ms.clamp(MIN_TICK_MS, TICK_EVERY_MS))
}

/// A stream starts: this worker's `Worker` for the config, made on its first stream.
fn filter_new(config: &Config) -> Option<Filter> {
    guarded("filter_new", None, || {
        let worker = worker(config)?;
        worker.active.set(worker.active.get().saturating_add(1));
        Some(Filter {
            worker,
            stream: RefCell::new(None),
            call: RefCell::new(None),
            closed: Cell::new(false),
        })
    })
}

fn worker(config: &Config) -> Option<Rc<Worker>> {
    WORKERS.with(|workers| {
        let mut workers = workers.try_borrow_mut().ok()?;
        workers.retain(|(alive, _)| alive.strong_count() > 0);
        if let Some((_, worker)) = workers.iter().find(|(_, w)| w.config_id == config.id) {
            return Some(worker.clone());
        }
        // Checked at load: a failure here would be a bug, and passes the stream untouched.
        let stages = Bundle::configure(&config.plugin, &config.json).ok()?;
        let worker = Rc::new(Worker {
            config_id: config.id,
            vm: Vm::new(stages),
            rng: RefCell::new(fastrand::Rng::with_seed(random_seed())),
            ticked_at: Cell::new(host::wall_clock()),
            metrics: config.metrics.clone(),
            defined: RefCell::new(Vec::new()),
            tick_every: config.tick_every,
            plugin: config.plugin.clone(),
            active: Cell::new(0),
        });
        workers.push((Arc::downgrade(&config.alive), worker.clone()));
        Some(worker)
    })
}

/// A seed from the OS; the clock if that fails (never a panic).
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    host::wall_clock()
}

impl Worker {
    fn host(&self, filter: Option<FilterPtr>) -> Native<'_> {
        Native::new(
            filter,
            &self.rng,
            &self.metrics,
            &self.plugin,
            &self.defined,
        )
    }
}

/// Request headers: the stages' request phase. 0 continues, 1 stops (a local reply sent,
/// after the stages that saw the request had their response phase on it: `ReplyPhase`; or a
/// gRPC call out, whose end lets the request go on or answers it: [`call_ended`]).
fn request_headers(filter: &Filter, envoy: FilterPtr, end_of_stream: bool) -> u32 {
    guarded("request_headers", 0, || {
        #[cfg(feature = "panic-fixture")]
        fixture_panic(envoy);
        let worker = filter.worker.clone();
        let mut host = worker.host(Some(envoy));
        let Some((verdict, stream)) = worker.vm.on_request(&mut host, !end_of_stream) else {
            return 0;
        };
        match settle(filter, &worker, &mut host, envoy, stream, verdict) {
            Settled::Continue => 0,
            Settled::Held => 1,
        }
    })
}

/// The test fixture's panic (feature `panic-fixture`, never shipped): a request with
/// `x-fixture-panic: <marker>` panics here, inside the hook's guard, as a bug would.
#[cfg(feature = "panic-fixture")]
#[allow(clippy::panic)]
fn fixture_panic(envoy: FilterPtr) {
    if let Some(marker) = envoy.header(abi::HeaderType::RequestHeader, "x-fixture-panic") {
        panic!(
            "mesh native fixture: deliberate panic ({})",
            String::from_utf8_lossy(&marker)
        );
    }
}

/// Where a verdict leaves the request.
enum Settled {
    /// Let it go on (upstream-ward).
    Continue,
    /// Held: answered locally, or waiting for a call.
    Held,
}

/// Carries out a verdict and keeps the stream in the filter: a local reply is sent after its
/// response phase, a call is started (one that ends without leaving Envoy goes straight back
/// to the stages as not sent, as a Wasm module's refused `dispatch_grpc_call`).
fn settle(
    filter: &Filter,
    worker: &Worker,
    host: &mut Native<'_>,
    envoy: FilterPtr,
    mut stream: Stream<Bundle>,
    mut verdict: Verdict,
) -> Settled {
    let reply = loop {
        match verdict {
            Verdict::Continue => break None,
            Verdict::Reply(reply) => break Some(reply),
            Verdict::Call(call) => match dispatch(filter, envoy, &call) {
                Some(outcome) => verdict = worker.vm.on_call_done(&mut stream, outcome, host),
                None => {
                    keep(filter, stream, false);
                    return Settled::Held;
                }
            },
        }
    };
    let reply = reply.map(|reply| {
        let mut phase = host::ReplyPhase::new(host, reply);
        worker.vm.on_response(&mut stream, &mut phase);
        phase.reply
    });
    keep(filter, stream, reply.is_some());
    match reply {
        Some(reply) => {
            host.send_reply(&reply);
            Settled::Held
        }
        None => Settled::Continue,
    }
}

fn keep(filter: &Filter, stream: Stream<Bundle>, responded: bool) {
    if let Ok(mut slot) = filter.stream.try_borrow_mut() {
        *slot = Some(Kept { stream, responded });
    }
}

/// Starts `call` on Envoy's HTTP stream callout. `None` while it is out (its end comes to
/// [`call_ended`]); the outcome at once when Envoy did not start it, or answered it itself
/// before the stream started (no healthy upstream: nothing was sent).
fn dispatch(filter: &Filter, envoy: FilterPtr, call: &GrpcCall) -> Option<CallOutcome> {
    let (headers, body) = callout::request(call);
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let Ok(mut slot) = filter.call.try_borrow_mut() else {
        return Some(CallOutcome::NotSent);
    };
    *slot = Some(Call {
        starting: true,
        ..Call::default()
    });
    drop(slot);
    let started =
        envoy.start_http_stream(&call.cluster, &headers, &body, u64::from(call.timeout_ms));
    let Ok(mut slot) = filter.call.try_borrow_mut() else {
        return Some(CallOutcome::NotSent);
    };
    match (started, slot.as_mut()) {
        (Ok(_), Some(out)) if !out.ended => {
            out.starting = false;
            None
        }
        (started, _) => {
            if let Err(reason) = started {
                // Per request when the cluster is unknown: the stage logs the failure once per
                // burst (`global_error=not_sent`).
                log::debug!("grpc call to cluster {} not sent: {reason}", call.cluster);
            }
            *slot = None;
            Some(CallOutcome::NotSent)
        }
    }
}

/// Whether the request waits for a call: its body and trailers are held too.
fn waiting_for_call(filter: &Filter) -> bool {
    filter.call.try_borrow().is_ok_and(|call| call.is_some())
}

/// Runs `each` on the call out, if there is one.
fn with_call(filter: &Filter, each: impl FnOnce(&mut Call)) {
    if let Ok(mut slot) = filter.call.try_borrow_mut()
        && let Some(call) = slot.as_mut()
    {
        each(call);
    }
}

fn call_headers(filter: &Filter, headers: &[(&[u8], &[u8])]) {
    guarded("http_stream_headers", (), || {
        with_call(filter, |call| call.answer.headers(headers));
    });
}

fn call_data(filter: &Filter, chunks: &[&[u8]]) {
    guarded("http_stream_data", (), || {
        with_call(filter, |call| call.answer.data(chunks));
    });
}

fn call_trailers(filter: &Filter, trailers: &[(&[u8], &[u8])]) {
    guarded("http_stream_trailers", (), || {
        with_call(filter, |call| call.answer.trailers(trailers));
    });
}

/// The call's stream ended (complete, or `reset`): the stages decide again, and the request
/// goes on, is answered, or waits for the next call. A panic on the way lets it go on.
fn call_ended(filter: &Filter, envoy: FilterPtr, reset: bool) {
    let settled = guarded("http_stream_complete", Settled::Continue, || {
        let call = {
            let Ok(mut slot) = filter.call.try_borrow_mut() else {
                return Settled::Held;
            };
            match slot.as_mut() {
                Some(call) if call.starting => {
                    call.ended = true;
                    return Settled::Held;
                }
                _ => slot.take(),
            }
        };
        let Some(call) = call else {
            return Settled::Held;
        };
        let outcome = if reset {
            callout::reset()
        } else {
            call.answer.outcome()
        };
        // The request phase kept the stream when it started the call; none: the downstream
        // stream is over already, nothing to resume.
        let Some(kept) = filter
            .stream
            .try_borrow_mut()
            .ok()
            .and_then(|mut slot| slot.take())
        else {
            return Settled::Held;
        };
        let worker = filter.worker.clone();
        let mut host = worker.host(Some(envoy));
        let mut stream = kept.stream;
        let verdict = worker.vm.on_call_done(&mut stream, outcome, &mut host);
        settle(filter, &worker, &mut host, envoy, stream, verdict)
    });
    if let Settled::Continue = settled {
        envoy.continue_decoding();
    }
}

/// Runs `phase` on the stream, if the request phase kept one and no other hook holds it.
fn with_stream(filter: &Filter, phase: impl FnOnce(&mut Stream<Bundle>)) {
    if let Ok(mut slot) = filter.stream.try_borrow_mut()
        && let Some(kept) = slot.as_mut()
        && !kept.responded
    {
        phase(&mut kept.stream);
    }
}

fn response_headers(filter: &Filter, envoy: FilterPtr) {
    guarded("response_headers", (), || {
        let worker = filter.worker.clone();
        with_stream(filter, |stream| {
            worker.vm.on_response(stream, &mut worker.host(Some(envoy)));
        });
    });
}

fn response_trailers(filter: &Filter, envoy: FilterPtr) {
    guarded("response_trailers", (), || {
        let worker = filter.worker.clone();
        with_stream(filter, |stream| {
            worker
                .vm
                .on_response_trailers(stream, &mut worker.host(Some(envoy)));
        });
    });
}

/// The stream is over (before Envoy's access log): the done phase; the stages' tick (and the
/// counters to Envoy) when its period is over; the counters alone when this is the worker's
/// last open stream, so a worker that goes idle leaves nothing uncounted. Under load a worker
/// hands its counters over once a period, as a Wasm VM does: each labelled update costs Envoy
/// a look-up of the series.
fn stream_complete(filter: &Filter, envoy: FilterPtr) {
    guarded("stream_complete", (), || {
        let worker = filter.worker.clone();
        let mut host = worker.host(Some(envoy));
        let stream = filter
            .stream
            .try_borrow_mut()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(kept) = stream {
            worker.vm.on_done(kept.stream, &mut host);
        }
        let idle = filter.close();
        let now = host.now();
        if now.saturating_sub(worker.ticked_at.get()) >= worker.tick_every {
            worker.ticked_at.set(now);
            worker.vm.on_tick(&mut host);
            logger::follow_envoy();
        } else if idle {
            worker.vm.flush(&mut host);
        }
    });
}

/// Envoy frees the stream's filter. A stream whose completion Envoy never reported still gets
/// its done phase (without Envoy's facts: no handle to ask with).
fn destroy(filter: Filter) {
    filter.close();
    guarded("destroy", (), || {
        if let Some(kept) = filter.stream.into_inner() {
            let worker = filter.worker.clone();
            worker.vm.on_done(kept.stream, &mut worker.host(None));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_in_a_hook_ends_in_its_fallback() {
        assert_eq!(guarded("test", 0, || 1), 1);
        assert_eq!(guarded("test", 0, || -> i32 { panic!("boom") }), 0);
        let mut state = Vec::new();
        guarded("test", (), || {
            state.push(1);
            panic!("after a write");
        });
        assert_eq!(state, [1], "what the hook did before the panic stays");
    }

    /// The request's map is read into a pair table on the stack up to `STACK_PAIRS` headers
    /// and on the heap past it (`abi.rs`): an incoming trace is carried from the last header
    /// of a map of either size.
    #[test]
    fn a_header_map_on_either_side_of_the_stack_table_is_read_whole() {
        use abi::fake;
        const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        fake::with(|envoy| envoy.strings = vec![(abi::Attribute::XdsRouteName, b"r".to_vec())]);
        let config = fake::load("headers", r#"{"traceid": {"routes": {"r": {}}}}"#);
        assert!(!config.is_null());
        for count in [abi::STACK_PAIRS, abi::STACK_PAIRS + 8] {
            let mut request: Vec<fake::Header> = (1..count)
                .map(|i| (format!("x-filler-{i}").into_bytes(), b"v".to_vec()))
                .collect();
            request.push((
                b"traceparent".to_vec(),
                format!("00-{TRACE_ID}-00f067aa0ba902b7-01").into_bytes(),
            ));
            assert_eq!(request.len(), count);
            let response = vec![(b":status".to_vec(), b"200".to_vec())];
            assert_eq!(fake::stream(config, request, response), 0);
            let told = fake::with(|envoy| {
                envoy
                    .response
                    .iter()
                    .find(|(name, _)| name == b"x-trace-id")
                    .map(|(_, value)| value.clone())
            });
            assert_eq!(
                told.as_deref(),
                Some(TRACE_ID.as_bytes()),
                "{count} headers"
            );
        }
        fake::unload(config);
    }

    #[test]
    fn route_names_are_every_stage_routes_keys() {
        let json =
            br#"{"traceid": {"routes": {"a": {}}}, "canary": {"routes": {"b": {}, "a": {}}}}"#;
        assert_eq!(route_names(json), ["", "a", "b"]);
    }
}
