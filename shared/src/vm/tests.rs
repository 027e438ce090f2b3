//! What a request through a [`Vm`] costs in host calls, with a probe filter whose every
//! request reads headers twice, writes one, reads the clock twice and updates a counter, a
//! gauge and a histogram.

use super::*;
use crate::chain::Stage;
use crate::config::{ConfigError, FieldPath};
use crate::fake::{FakeHost, HostCalls};
use crate::filter::{Filter, GrpcCall, Plugin};
use crate::stats;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

struct Probe;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

struct ProbeRoute {
    requests: Metric,
    state: Metric,
    latency: Metric,
}

impl Filter for Probe {
    const NAME: &'static str = "probe";
    type Config = Empty;
    type Policy = ();
    type Route = ProbeRoute;
    /// The clock as the request phase read it, twice.
    type Request = (Nanos, Nanos);

    fn new(_plugin: &Plugin) -> Self {
        Self
    }

    fn compile(&self, _config: Empty, _at: &FieldPath) -> Result<(), ConfigError> {
        Ok(())
    }

    fn bind(&self, _policy: Rc<()>, route_name: &str, host: &mut impl Host) -> ProbeRoute {
        ProbeRoute {
            requests: stats::route_counter(host, "probe_requests", route_name, ("a", "b")),
            state: host.define_metric(MetricKind::Gauge, "probe_state"),
            latency: host.define_metric(MetricKind::Histogram, "probe_latency"),
        }
    }

    fn on_request(
        &self,
        route: &ProbeRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, Self::Request) {
        assert_eq!(host.request_header("x-user"), Some(&b"u1"[..]));
        host.set_request_header("x-tag", b"v2");
        // A read after the phase's own write sees it, without fetching the map again.
        assert_eq!(host.request_header("x-tag"), Some(&b"v2"[..]));
        assert_eq!(host.request_header_count("x-tag"), 1);
        assert_eq!(
            host.request_header_values("x-tag").collect::<Vec<_>>(),
            [b"v2"]
        );
        assert_eq!(
            host.request_header_values("x-user").collect::<Vec<_>>(),
            [b"u1"]
        );
        host.increment_metric(route.requests, 1);
        host.record_metric(route.state, 0);
        let verdict = match host.request_header("x-call") {
            Some(_) => Verdict::Call(GrpcCall {
                cluster: "rls".to_owned(),
                service: "s",
                method: "m",
                message: Vec::new(),
                timeout_ms: 20,
            }),
            None => Verdict::Continue,
        };
        (verdict, (host.now(), host.now()))
    }

    fn on_response(
        &self,
        _route: &ProbeRoute,
        _request: &mut Self::Request,
        host: &mut impl ResponseHost,
    ) {
        host.set_response_header("x-probe", b"response");
    }

    fn on_response_trailers(
        &self,
        _route: &ProbeRoute,
        _request: &mut Self::Request,
        host: &mut impl TrailersHost,
    ) {
        // Read, so the fake host counts that the phase ran.
        let _ = host.response_trailer("grpc-status");
    }

    fn on_done(&self, route: &ProbeRoute, request: &mut Self::Request, host: &mut impl Host) {
        let latency = host.now().saturating_sub(request.0);
        host.record_metric(route.latency, latency);
    }
}

fn vm() -> Vm<Stage<Probe>> {
    let stages = Stage::<Probe>::configure(&Plugin::default(), br#"{"default": {}}"#).unwrap();
    Vm::new(stages)
}

/// One request through `vm`'s phases on `host`; the host calls it made.
fn request(vm: &Vm<Stage<Probe>>, host: &mut FakeHost) -> HostCalls {
    let before = host.calls();
    host.request_headers = vec![("x-user".to_owned(), b"u1".to_vec())];
    let (verdict, mut stream) = vm.on_request(host, false).unwrap();
    assert_eq!(verdict, Verdict::Continue);
    host.advance_ms(1);
    vm.on_response(&mut stream, host);
    vm.on_done(stream, host);
    host.calls().since(before)
}

fn host() -> FakeHost {
    FakeHost::new().with_property(&ROUTE_NAME, "checkout")
}

#[test]
fn a_request_fetches_the_header_map_once_and_reads_the_clock_once_per_phase() {
    let vm = vm();
    let mut host = host();
    request(&vm, &mut host);
    let calls = request(&vm, &mut host);
    assert_eq!(calls.property_reads, 1, "the route name, once");
    assert_eq!(calls.header_map_reads, 1);
    assert_eq!(calls.request_header_writes, 1);
    // Request phase (two reads by the filter) and done phase.
    assert_eq!(calls.clock_reads, 2);
}

#[test]
fn a_header_the_request_lacks_is_added_one_it_has_is_replaced() {
    let metrics = MetricTable::default();
    let mut host = host();
    host.request_headers = vec![
        ("x-had".to_owned(), b"1".to_vec()),
        ("x-had".to_owned(), b"2".to_vec()),
        ("x-gone".to_owned(), b"3".to_vec()),
    ];
    let mut phase = VmHost::new(&mut host, &metrics);
    phase.set_request_header("x-new", b"a");
    phase.set_request_header("x-had", b"b");
    // Removed by this phase: Envoy has none left, an add is enough.
    phase.remove_request_header("x-gone");
    phase.set_request_header("x-gone", b"c");
    // Set by this phase: Envoy has one, a set replaces it.
    phase.set_request_header("x-new", b"d");
    assert!(!phase.request_has_body());
    phase.has_body = true;
    assert!(phase.request_has_body());
    phase.clear_route_cache();
    let calls = host.calls();
    assert_eq!(calls.request_header_writes, 5);
    assert_eq!(calls.route_cache_clears, 1);
    assert_eq!(
        calls.request_header_adds, 2,
        "x-new first, x-gone after its removal"
    );
    let headers: Vec<(&str, &[u8])> = host
        .request_headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    assert_eq!(
        headers,
        [("x-had", &b"b"[..]), ("x-gone", b"c"), ("x-new", b"d")]
    );
}

#[test]
fn counters_reach_the_host_at_the_tick_and_gauges_when_they_change() {
    let vm = vm();
    let mut host = host();
    let first = request(&vm, &mut host);
    // The gauge's first value and the latency observation go at once; the counter waits.
    assert_eq!(first.metric_updates, 2);
    for _ in 0..9 {
        // The gauge did not change: only the histogram.
        assert_eq!(request(&vm, &mut host).metric_updates, 1);
    }
    let name = "probe_requests;route=checkout;a=b";
    assert_eq!(host.metric(name), Some(0));
    let before = host.calls().metric_updates;
    vm.on_tick(&mut host);
    assert_eq!(
        host.calls().metric_updates - before,
        1,
        "ten requests, one increment"
    );
    assert_eq!(host.metric(name), Some(10));
    assert_eq!(host.metric("probe_state"), Some(0));
    assert_eq!(host.metric("probe_latency"), Some(1_000_000));
    // Nothing new: a tick sends nothing.
    let before = host.calls().metric_updates;
    vm.on_tick(&mut host);
    assert_eq!(host.calls().metric_updates, before);
    request(&vm, &mut host);
    vm.flush(&mut host);
    assert_eq!(host.metric(name), Some(11));
}

#[test]
fn the_response_and_trailers_phases_reach_the_stages_and_a_call_holds_the_stream() {
    let vm = vm();
    let mut host = host();
    host.request_headers = vec![("x-user".to_owned(), b"u1".to_vec())];
    let (_, mut stream) = vm.on_request(&mut host, false).unwrap();
    assert!(!stream.waiting());
    vm.on_response(&mut stream, &mut host);
    assert_eq!(
        host.response_headers,
        [("x-probe".to_owned(), b"response".to_vec())]
    );
    let reads = host.calls().response_header_reads;
    vm.on_response_trailers(&mut stream, &mut host);
    assert_eq!(host.calls().response_header_reads, reads + 1);
    vm.on_done(stream, &mut host);

    host.request_headers
        .push(("x-call".to_owned(), b"1".to_vec()));
    let (verdict, stream) = vm.on_request(&mut host, false).unwrap();
    assert!(matches!(verdict, Verdict::Call(_)));
    assert!(stream.waiting());
}

#[test]
fn a_route_is_bound_once_per_name_and_vm() {
    let vm = vm();
    let mut host = host();
    request(&vm, &mut host);
    let defined = host.metrics().len();
    request(&vm, &mut host);
    assert_eq!(host.metrics().len(), defined);
    host.set_property(&ROUTE_NAME, "catalog");
    request(&vm, &mut host);
    assert_eq!(host.metrics().len(), defined + 1, "catalog's own counter");
}
