//! The trace-ID filter in a real Envoy, with the built `dist/traceid.wasm`.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::{Mesh, Reply};
use mesh_policy::trace::w3c::{TraceParent, invalid_test_vectors};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `checkout` propagates, `catalog` continues as a child and writes every format; other
/// routes (`plain`, `default`, the unnamed one) have no policy.
const CONFIG: &str = r#"{
    "routes": {
        "checkout": {},
        "catalog": {"mode": "child", "emit": ["w3c", "b3", "b3multi", "request_id"]}
    }
}"#;

fn mesh() -> Mesh {
    Mesh::builder()
        .filter("traceid", CONFIG)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn upstream_traceparent(reply: &Reply) -> TraceParent {
    let text = reply
        .upstream_header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent upstream: {}", reply.text()));
    TraceParent::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?} invalid: {e:?}"))
}

fn hex(bytes: &[u8]) -> String {
    mesh_policy::hex::encode(bytes)
}

#[test]
fn traceparent_is_generated_when_absent_and_returned_as_x_trace_id() {
    let mesh = mesh();
    let reply = mesh.get("/checkout").send();
    assert_eq!(reply.status, 200);
    let tp = upstream_traceparent(&reply);
    assert_eq!(reply.header("x-trace-id"), Some(hex(&tp.trace_id)));
    // A second request gets a different trace.
    let again = upstream_traceparent(&mesh.get("/checkout").send());
    assert_ne!(again.trace_id, tp.trace_id);
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=started"),
        2
    );
}

/// The trace id reaches the filter's log line for the request (at debug, which the harness
/// asks Envoy for with `--component-log-level wasm:debug`), so a log search finds it.
#[test]
fn the_trace_id_is_in_the_filters_log_line() {
    let mesh = mesh();
    let reply = mesh.get("/checkout").send();
    let trace_id = reply
        .header("x-trace-id")
        .unwrap_or_else(|| panic!("no x-trace-id: {}", reply.text()));
    let line = format!("traceid route=checkout trace={trace_id} outcome=started");
    // Envoy writes its log from the worker; give the pipe a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !mesh.envoy_log().contains(&line) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        mesh.envoy_log().contains(&line),
        "no {line:?} in\n{}",
        mesh.envoy_log()
    );
}

#[test]
fn valid_traceparent_and_tracestate_are_kept() {
    let mesh = mesh();
    let reply = mesh
        .get("/checkout")
        .header("traceparent", VALID)
        .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        .send();
    assert_eq!(reply.upstream_header("traceparent").as_deref(), Some(VALID));
    assert_eq!(
        reply.upstream_header("tracestate").as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    assert_eq!(reply.header("x-trace-id").as_deref(), Some(TRACE));
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=continued"),
        1
    );
}

/// Every invalid vector of the W3C test suite (the list the unit tests use), around the
/// trace id of `VALID`.
#[test]
fn every_invalid_vector_is_replaced_and_its_tracestate_dropped() {
    let invalid = invalid_test_vectors(TRACE, "00f067aa0ba902b7");
    let mesh = mesh();
    for bad in &invalid {
        let bad = bad.as_str();
        let reply = mesh
            .get("/checkout")
            .header("traceparent", bad)
            .header("tracestate", "congo=t61rcWkgMzE")
            .send();
        let tp = upstream_traceparent(&reply);
        assert_ne!(reply.upstream_header("traceparent").as_deref(), Some(bad));
        assert_ne!(
            hex(&tp.trace_id),
            TRACE,
            "{bad}: the invalid trace id was carried on"
        );
        assert_eq!(
            reply.upstream_header("tracestate"),
            None,
            "{bad}: tracestate kept"
        );
        assert_eq!(reply.header("x-trace-id"), Some(hex(&tp.trace_id)));
    }
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=replaced"),
        invalid.len() as u64
    );
}

#[test]
fn two_traceparent_headers_are_invalid() {
    let mesh = mesh();
    let reply = mesh
        .get("/checkout")
        .header("traceparent", VALID)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send();
    let tp = upstream_traceparent(&reply);
    assert_ne!(hex(&tp.trace_id), TRACE);
    assert_ne!(hex(&tp.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=replaced"),
        1
    );
}

#[test]
fn higher_version_is_forwarded_as_version_00() {
    let mesh = mesh();
    let reply = mesh
        .get("/checkout")
        .header(
            "traceparent",
            format!("cc-{TRACE}-00f067aa0ba902b7-01-future"),
        )
        .send();
    assert_eq!(reply.upstream_header("traceparent").as_deref(), Some(VALID));
}

#[test]
fn b3_context_is_carried_into_traceparent() {
    let mesh = mesh();
    let reply = mesh
        .get("/checkout")
        .header(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )
        .send();
    assert_eq!(
        reply.upstream_header("traceparent").as_deref(),
        Some("00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01")
    );
    let reply = mesh
        .get("/checkout")
        .header("x-b3-traceid", "a3ce929d0e0e4736")
        .header("x-b3-spanid", "00f067aa0ba902b7")
        .header("x-b3-sampled", "0")
        .send();
    assert_eq!(
        reply.upstream_header("traceparent").as_deref(),
        Some("00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-00")
    );
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=continued"),
        2
    );
}

#[test]
fn child_mode_writes_every_format_with_a_new_span() {
    let mesh = mesh();
    let reply = mesh.get("/catalog").header("traceparent", VALID).send();
    let tp = upstream_traceparent(&reply);
    assert_eq!(hex(&tp.trace_id), TRACE);
    assert_ne!(
        hex(&tp.parent_id),
        "00f067aa0ba902b7",
        "child mode keeps the parent"
    );
    let span = hex(&tp.parent_id);
    assert_eq!(
        reply.upstream_header("b3"),
        Some(format!("{TRACE}-{span}-1-00f067aa0ba902b7"))
    );
    assert_eq!(
        reply.upstream_header("x-b3-traceid").as_deref(),
        Some(TRACE)
    );
    assert_eq!(reply.upstream_header("x-b3-spanid"), Some(span));
    assert_eq!(
        reply.upstream_header("x-b3-parentspanid").as_deref(),
        Some("00f067aa0ba902b7")
    );
    // Envoy sets x-request-id itself before any filter runs; the filter keeps it.
    let request_id = reply.upstream_header("x-request-id").unwrap();
    assert!(!request_id.is_empty());
    let reply = mesh
        .get("/catalog")
        .header("x-request-id", "client-chosen")
        .send();
    assert_eq!(
        reply.upstream_header("x-request-id").as_deref(),
        Some("client-chosen")
    );
}

#[test]
fn routes_without_policy_are_untouched() {
    let mesh = mesh();
    for path in ["/plain", "/unnamed", "/"] {
        let reply = mesh.get(path).send();
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.upstream_header("traceparent"), None, "{path}");
        assert_eq!(reply.header("x-trace-id"), None, "{path}");
        let reply = mesh.get(path).header("traceparent", "garbage").send();
        assert_eq!(
            reply.upstream_header("traceparent").as_deref(),
            Some("garbage")
        );
    }
    assert!(mesh.stats().values().all(|v| *v == 0), "{:?}", mesh.stats());
}

#[test]
fn default_policy_covers_unlisted_and_unnamed_routes() {
    let mesh = Mesh::builder()
        .filter("traceid", r#"{"default": {"response_header": "x-trace"}}"#)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = mesh.get("/unnamed").send();
    let tp = upstream_traceparent(&reply);
    assert_eq!(reply.header("x-trace"), Some(hex(&tp.trace_id)));
    assert_eq!(reply.header("x-trace-id"), None);
    mesh.get("/plain").send();
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=unnamed;outcome=started"),
        1
    );
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=plain;outcome=started"),
        1
    );
}

#[test]
fn stats_reach_prometheus_with_route_and_outcome_labels() {
    let mesh = mesh();
    mesh.get("/checkout").send();
    let prometheus = mesh.stats_page("/stats/prometheus");
    assert!(
        prometheus.contains(r#"mesh_trace_requests_total{route="checkout",outcome="started"} 1"#),
        "{prometheus}"
    );
}

#[test]
fn config_with_an_unknown_field_is_refused_naming_the_field() {
    Mesh::builder()
        .filter("traceid", r#"{"routes": {"checkout": {"emitt": ["w3c"]}}}"#)
        .assert_refused(r#"routes["checkout"].emitt: unknown field"#);
}

#[test]
fn config_with_a_bad_value_is_refused_naming_the_field() {
    for (config, expected) in [
        (
            r#"{"routes": {"checkout": {"emit": ["w3c", "b4"]}}}"#,
            r#"routes["checkout"].emit[1]: unknown variant `b4`, expected one of `w3c`"#,
        ),
        (
            r#"{"default": {"mode": 1}}"#,
            "default.mode: invalid type: integer `1`, expected",
        ),
        (r#"{"default": "#, "EOF while parsing a value"),
    ] {
        Mesh::builder()
            .filter("traceid", config)
            .assert_refused(expected);
    }
}
