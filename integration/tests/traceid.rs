//! The trace-ID filter in a real Envoy, with the built `dist/traceid.wasm`.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::oracle::{self, THRESHOLD_10_PERCENT, TraceParent};
use mesh_integration::{Mesh, Reply, RouteSpec};
// Inputs only: the W3C test suite's invalid vectors, each checked against the oracle's
// grammar below.
use mesh_policy::trace::w3c::invalid_test_vectors;

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

/// The traceparent the upstream got, read by the test crate's own W3C grammar: the filter
/// writes version `00` only.
fn upstream_traceparent(reply: &Reply) -> TraceParent {
    let text = reply
        .upstream_header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent upstream: {}", reply.text()));
    let tp = oracle::traceparent(&text).unwrap_or_else(|e| panic!("invalid: {e}"));
    assert_eq!(tp.version, "00", "{text}");
    tp
}

#[test]
fn traceparent_is_generated_when_absent_and_returned_as_x_trace_id() {
    let mesh = mesh();
    let reply = mesh.get("/checkout").send();
    assert_eq!(reply.status, 200);
    let tp = upstream_traceparent(&reply);
    assert_eq!(reply.header("x-trace-id"), Some(tp.trace_id.clone()));
    // A second request gets a different trace.
    let again = upstream_traceparent(&mesh.get("/checkout").send());
    assert_ne!(again.trace_id, tp.trace_id);
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=started"),
        2
    );
}

/// Per-request debug lines follow Envoy's level for the modules, changed on its admin page
/// while it runs: none at info (not even formatted), there within a counter flush period
/// (20 ms in tests) of the change to debug. Each build reads the level again when it flushes.
#[test]
fn debug_lines_follow_a_level_changed_on_envoys_admin_page() {
    let mesh = Mesh::builder()
        .module_log_level("info")
        .filter("traceid", CONFIG)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let line = "traceid route=checkout";
    for _ in 0..3 {
        assert_eq!(mesh.get("/checkout").send().status, 200);
    }
    assert!(!mesh.envoy_log().contains(line), "{}", mesh.envoy_log());
    mesh.set_module_log_level("debug");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !mesh.envoy_log().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no debug line 10 s after the level changed:\n{}",
            mesh.envoy_log()
        );
        assert_eq!(mesh.get("/checkout").send().status, 200);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The response header replaces one the upstream sent, in every build: the native module
/// adds where the response lacks the name (cheaper than Envoy's set) and must still set where
/// it has it.
#[test]
fn an_upstream_x_trace_id_is_replaced_not_repeated() {
    let mesh = mesh();
    let reply = mesh
        .get("/checkout")
        .header("x-echo-respond-header", "x-trace-id=from-upstream")
        .send();
    assert_eq!(reply.status, 200);
    let tp = upstream_traceparent(&reply);
    assert_eq!(
        reply.header_lines("x-trace-id"),
        [tp.trace_id.as_bytes()],
        "{:?}",
        reply.headers
    );
    // Without it, the header is there once too (added).
    let plain = mesh.get("/checkout").send();
    assert_eq!(
        plain.header_lines("x-trace-id").len(),
        1,
        "{:?}",
        plain.headers
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
/// trace id of `VALID`: each one invalid by the test crate's grammar too.
#[test]
fn every_invalid_vector_is_replaced_and_its_tracestate_dropped() {
    let invalid = invalid_test_vectors(TRACE, "00f067aa0ba902b7");
    let mesh = mesh();
    for bad in &invalid {
        let bad = bad.as_str();
        assert!(oracle::traceparent(bad).is_err(), "{bad} is valid");
        let reply = mesh
            .get("/checkout")
            .header("traceparent", bad)
            .header("tracestate", "congo=t61rcWkgMzE")
            .send();
        let tp = upstream_traceparent(&reply);
        assert_ne!(reply.upstream_header("traceparent").as_deref(), Some(bad));
        assert_ne!(
            tp.trace_id, TRACE,
            "{bad}: the invalid trace id was carried on"
        );
        assert_eq!(
            reply.upstream_header("tracestate"),
            None,
            "{bad}: tracestate kept"
        );
        assert_eq!(reply.header("x-trace-id"), Some(tp.trace_id.clone()));
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
    assert_ne!(tp.trace_id, TRACE);
    assert_ne!(tp.trace_id, "0af7651916cd43dd8448eb211c80319c");
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
    assert_eq!(tp.trace_id, TRACE);
    assert_ne!(
        tp.parent_id, "00f067aa0ba902b7",
        "child mode keeps the parent"
    );
    let span = tp.parent_id.clone();
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
    // The control: the module is loaded, and counted only what its own route saw.
    mesh.get("/checkout").send();
    assert_eq!(
        mesh.nonzero_stats().into_keys().collect::<Vec<_>>(),
        [
            "mesh_trace_requests_total;route=checkout;outcome=started",
            "mesh_trace_sampling_total;route=checkout;decision=sampled"
        ]
    );
}

#[test]
fn default_policy_covers_unlisted_and_unnamed_routes() {
    let mesh = Mesh::builder()
        .filter("traceid", r#"{"default": {"response_header": "x-trace"}}"#)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = mesh.get("/unnamed").send();
    let tp = upstream_traceparent(&reply);
    assert_eq!(reply.header("x-trace"), Some(tp.trace_id.clone()));
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

/// W3C Trace Context Level 2's `tracestate`, through the filter in both modes (`checkout`
/// propagates, `catalog` continues as a child): its lines are one list, checked as one and
/// forwarded as one line; over 32 members or one invalid member drops it whole.
#[test]
fn tracestate_lines_are_one_list_checked_as_one() {
    let mesh = mesh();
    let members = |from: usize, to: usize| -> Vec<String> {
        (from..=to).map(|i| format!("bar{i:02}={i:02}")).collect()
    };
    let thirty_two = members(1, 32);
    let in_lines =
        |all: &[String]| -> Vec<String> { all.chunks(10).map(|c| c.join(",")).collect() };
    let key_256 = format!("{}=1", "z".repeat(256));
    let key_257 = format!("{}=1", "z".repeat(257));
    // (the lines sent, what the upstream gets: `None` when dropped)
    let cases: Vec<(Vec<String>, Option<String>)> = vec![
        (vec!["a=1".into(), "a=2".into()], Some("a=1".into())),
        (
            vec![
                "foo=1,bar=2".into(),
                "rojo=1,congo=2".into(),
                "baz=3".into(),
            ],
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3".into()),
        ),
        (in_lines(&thirty_two), Some(thirty_two.join(","))),
        (in_lines(&members(1, 33)), None),
        (members(1, 40), None),
        (vec!["foo=1,, \t ,bar=2".into()], Some("foo=1,bar=2".into())),
        (vec![",,".into()], None),
        (
            vec!["1tenant@sys=x,foo@@bar=1,t@vvvvvvvvvvvvvvv=2".into()],
            Some("1tenant@sys=x,foo@@bar=1,t@vvvvvvvvvvvvvvv=2".into()),
        ),
        (
            vec!["foo=1".into(), key_256.clone()],
            Some(format!("foo=1,{key_256}")),
        ),
        (vec!["foo=1".into(), key_257], None),
        (vec!["foo=1".into(), "@bar=2".into()], None),
        (vec!["foo=1".into(), "bar=2=3".into()], None),
    ];
    for path in ["/checkout", "/catalog"] {
        for (lines, expected) in &cases {
            let mut call = mesh.get(path).header("traceparent", VALID);
            for line in lines {
                call = call.header("tracestate", line);
            }
            let reply = call.send();
            let label = format!("{path} {lines:?}");
            assert_eq!(upstream_traceparent(&reply).trace_id, TRACE, "{label}");
            assert_eq!(reply.upstream_header("tracestate"), *expected, "{label}");
            let want_lines = u64::from(expected.is_some());
            assert_eq!(
                reply.upstream_header_lines("tracestate"),
                want_lines,
                "{label}"
            );
        }
    }
    for route in ["checkout", "catalog"] {
        assert_eq!(
            mesh.stat(&format!(
                "mesh_trace_requests_total;route={route};outcome=continued"
            )),
            cases.len() as u64
        );
    }
}

/// Level 2's random flag: set on a trace the filter starts (its id is all random bits),
/// kept as received on one it continues, never set on one carried from B3.
#[test]
fn the_random_flag_is_set_on_new_traces_and_kept_on_continued_ones() {
    let mesh = mesh();
    for path in ["/checkout", "/catalog"] {
        let tp = upstream_traceparent(&mesh.get(path).send());
        assert_eq!(tp.flags, 0x03, "{path}: a new trace, sampled and random");
        let tp = upstream_traceparent(&mesh.get(path).header("b3", "0").send());
        assert_eq!(tp.flags, 0x02, "{path}: a new trace, b3 said not sampled");
        for flags in ["00", "01", "02", "03"] {
            let sent = format!("00-{TRACE}-00f067aa0ba902b7-{flags}");
            let reply = mesh.get(path).header("traceparent", &sent).send();
            let forwarded = reply.upstream_header("traceparent").unwrap();
            assert!(
                forwarded.ends_with(&format!("-{flags}")),
                "{path}: {sent} became {forwarded}"
            );
        }
        let reply = mesh
            .get(path)
            .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
            .send();
        assert_eq!(upstream_traceparent(&reply).flags, 0x01, "{path}: from B3");
    }
}

/// Level 2's forward compatibility: a higher version is read by its first four fields (its
/// sampled and random flags kept, the rest dropped) and forwarded as `00` with its
/// tracestate; `ff` is invalid.
#[test]
fn higher_versions_keep_level_2s_flags_and_ff_is_invalid() {
    let mesh = mesh();
    for path in ["/checkout", "/catalog"] {
        let reply = mesh
            .get(path)
            .header(
                "traceparent",
                format!("cc-{TRACE}-00f067aa0ba902b7-ff-future"),
            )
            .header("tracestate", "foo=1")
            .send();
        let tp = upstream_traceparent(&reply);
        assert_eq!((tp.trace_id.as_str(), tp.flags), (TRACE, 0x03), "{path}");
        assert_eq!(
            reply.upstream_header("tracestate").as_deref(),
            Some("foo=1")
        );
        let reply = mesh
            .get(path)
            .header("traceparent", format!("ff-{TRACE}-00f067aa0ba902b7-01"))
            .header("tracestate", "foo=1")
            .send();
        assert_ne!(upstream_traceparent(&reply).trace_id, TRACE, "{path}");
        assert_eq!(reply.upstream_header("tracestate"), None, "{path}");
    }
}

/// `edge` starts traces at 10 % (propagating what comes in), `inner` continues them as a
/// child at the same rate (the second hop); `zero` samples no trace it starts.
const SAMPLING: &str = r#"{
    "routes": {
        "edge": {"emit": ["w3c", "b3"], "sample_percent": 10},
        "inner": {"mode": "child", "emit": ["w3c", "b3multi"], "sample_percent": 10},
        "zero": {"sample_percent": 0}
    }
}"#;

fn sampling_mesh() -> Mesh {
    Mesh::builder()
        .routes(vec![
            RouteSpec::new("edge", "/edge", "v1"),
            RouteSpec::new("inner", "/inner", "v1"),
            RouteSpec::new("zero", "/zero", "v1"),
        ])
        .filter("traceid", SAMPLING)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What OpenTelemetry's consistent sampling at 10 % decides for a trace id.
fn sampled_at_10_percent(trace_id: &str) -> bool {
    oracle::consistently_sampled(trace_id, THRESHOLD_10_PERCENT)
}

/// 10,000 new traces at 10 %: the sampled share within 2 points of it, each decision the
/// trace id's (the consistent rule), the flag, `b3` and the threshold in `tracestate` in
/// agreement, the response header the trace's id either way, and the stat by decision.
#[test]
fn ten_thousand_new_traces_are_sampled_at_the_routes_share() {
    let mesh = sampling_mesh();
    let total = 10_000u32;
    let mut sampled = 0u32;
    for _ in 0..total {
        let reply = mesh.get("/edge").send();
        assert_eq!(reply.status, 200);
        let tp = upstream_traceparent(&reply);
        let id = tp.trace_id.clone();
        assert!(tp.random(), "{id}");
        assert_eq!(tp.sampled(), sampled_at_10_percent(&tp.trace_id), "{id}");
        let b3 = reply.upstream_header("b3").unwrap();
        assert_eq!(
            b3.split('-').nth(2),
            Some(if tp.sampled() { "1" } else { "0" }),
            "{b3}"
        );
        let state = reply.upstream_header("tracestate");
        if tp.sampled() {
            assert_eq!(state.as_deref(), Some("ot=th:e6666666666666"), "{id}");
        } else {
            assert_eq!(state, None, "{id}");
        }
        assert_eq!(reply.header("x-trace-id"), Some(id));
        sampled += u32::from(tp.sampled());
    }
    let share = f64::from(sampled) * 100.0 / f64::from(total);
    assert!((8.0..=12.0).contains(&share), "{share} % sampled");
    assert_eq!(
        mesh.stat("mesh_trace_sampling_total;route=edge;decision=sampled"),
        u64::from(sampled)
    );
    assert_eq!(
        mesh.stat("mesh_trace_sampling_total;route=edge;decision=not_sampled"),
        u64::from(total - sampled)
    );
}

/// Two hops at the same rate: the second (a child of the first's trace) keeps the first's
/// decision and threshold, and its own rule agrees with it on every trace.
#[test]
fn two_hops_at_the_same_rate_agree_on_every_trace() {
    let mesh = sampling_mesh();
    let traces = 300;
    let mut sampled = 0;
    for _ in 0..traces {
        let first = mesh.get("/edge").send();
        let traceparent = first.upstream_header("traceparent").unwrap();
        let mut call = mesh.get("/inner").header("traceparent", &traceparent);
        let state = first.upstream_header("tracestate");
        if let Some(state) = &state {
            call = call.header("tracestate", state);
        }
        let second = call.send();
        let (one, two) = (upstream_traceparent(&first), upstream_traceparent(&second));
        assert_eq!(two.trace_id, one.trace_id);
        assert_ne!(two.parent_id, one.parent_id, "the second hop is a child");
        assert_eq!(two.flags, one.flags, "{traceparent}");
        assert_eq!(
            sampled_at_10_percent(&two.trace_id),
            one.sampled(),
            "{traceparent}"
        );
        assert_eq!(
            second.upstream_header("x-b3-sampled").as_deref(),
            Some(if one.sampled() { "1" } else { "0" })
        );
        assert_eq!(second.upstream_header("tracestate"), state, "{traceparent}");
        sampled += u64::from(one.sampled());
    }
    assert!(
        sampled > 0 && sampled < traces,
        "{sampled} of {traces}: both decisions seen"
    );
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=inner;outcome=continued"),
        traces
    );
    let new_inner = mesh.stat("mesh_trace_sampling_total;route=inner;decision=sampled")
        + mesh.stat("mesh_trace_sampling_total;route=inner;decision=not_sampled");
    assert_eq!(new_inner, 0, "a continued trace is not a new one");
}

/// An upstream tracer's decision and threshold (`th`, with its `rv`) are kept, whatever the
/// route's rate, in both modes; a route at 0 % samples none of the traces it starts.
#[test]
fn an_upstream_tracers_threshold_and_decision_are_kept() {
    let mesh = sampling_mesh();
    let state = "ot=th:c;rv:1a2b3c4d5e6f70,congo=t61rcWkgMzE";
    for path in ["/edge", "/inner", "/zero"] {
        for flags in ["01", "03"] {
            let sent = format!("00-{TRACE}-00f067aa0ba902b7-{flags}");
            let reply = mesh
                .get(path)
                .header("traceparent", &sent)
                .header("tracestate", state)
                .send();
            let tp = upstream_traceparent(&reply);
            assert_eq!(tp.trace_id, TRACE);
            assert_eq!(format!("{:02x}", tp.flags), flags, "{path}");
            assert_eq!(
                reply.upstream_header("tracestate").as_deref(),
                Some(state),
                "{path}"
            );
        }
    }
    for _ in 0..20 {
        let tp = upstream_traceparent(&mesh.get("/zero").send());
        assert!(!tp.sampled());
    }
    assert_eq!(
        mesh.stat("mesh_trace_sampling_total;route=zero;decision=not_sampled"),
        20
    );
}
