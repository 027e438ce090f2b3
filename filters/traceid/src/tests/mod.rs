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
    // One request header write (traceparent), two counters (the outcome, the new trace's
    // sampling; in a module the VM adds them up until its tick): no removal of a tracestate
    // that never came (each write is a host call and a route re-match in Envoy).
    assert_eq!(
        (
            host.calls().request_header_writes,
            host.calls().metric_updates
        ),
        (1, 2)
    );
    assert_eq!(
        host.metric("mesh_trace_sampling_total;route=checkout;decision=sampled"),
        Some(1)
    );
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
fn invalid_traceparent_is_not_forwarded_when_only_b3_is_emitted() {
    let mut host = FakeHost::new()
        .with_request_header("traceparent", "00-xyz")
        .with_request_header("tracestate", "a=1");
    let route = bound(r#"{"default": {"emit": ["b3"]}}"#, "r", &mut host);
    let (_, mut request) = TraceId.on_request(&route, &mut host);
    assert!(host.request_values("traceparent").is_empty());
    assert!(host.request_values("tracestate").is_empty());
    let b3 = host.request_values("b3");
    assert_eq!(b3.len(), 1);
    assert_eq!(
        host.metric("mesh_trace_requests_total;route=r;outcome=replaced"),
        Some(1)
    );
    TraceId.on_response(&route, &mut request, &mut host);
    let trace_id = host.response_values("x-trace-id");
    assert!(b3[0].starts_with(&trace_id[0]));
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

#[test]
fn new_traces_are_counted_by_sampling_decision_continued_ones_not() {
    let mut host = FakeHost::new();
    let route = bound(
        r#"{"routes": {"r": {"sample_percent": 50}}}"#,
        "r",
        &mut host,
    );
    // Trace ids whose last 56 bits are over and under 2^55.
    for low in [1u64 << 55, 1, u64::MAX] {
        host.request_headers.clear();
        host.script_random(&[7, low, 9]);
        TraceId.on_request(&route, &mut host);
    }
    host.request_headers.clear();
    host.request_headers.push((
        "traceparent".to_owned(),
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_vec(),
    ));
    TraceId.on_request(&route, &mut host);
    assert_eq!(
        host.metric("mesh_trace_sampling_total;route=r;decision=sampled"),
        Some(2)
    );
    assert_eq!(
        host.metric("mesh_trace_sampling_total;route=r;decision=not_sampled"),
        Some(1)
    );
    assert_eq!(
        host.metric("mesh_trace_requests_total;route=r;outcome=continued"),
        Some(1)
    );
}
