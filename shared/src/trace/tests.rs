use proptest::prelude::*;
// On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::{Envelope, parse_json};
use crate::fake::FakeHost;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn policy(json: &str) -> TracePolicy {
    let config: TraceConfig = parse_json(json.as_bytes()).unwrap();
    TracePolicy::compile(config, &FieldPath::root()).unwrap()
}

fn compile_err(json: &str) -> String {
    let envelope = Envelope::<TraceConfig>::from_json(json.as_bytes());
    match envelope.and_then(|e| e.compile(&FieldPath::root(), TracePolicy::compile)) {
        Ok(_) => panic!("{json} should be rejected"),
        Err(err) => err.to_string(),
    }
}

fn set(decision: &Decision, name: &str) -> Option<String> {
    decision.edits.iter().find_map(|edit| match edit {
        Edit::Set(n, v) if *n == name => Some(v.clone()),
        _ => None,
    })
}

fn removes(decision: &Decision, name: &str) -> bool {
    decision.edits.contains(&Edit::Remove(match name {
        "traceparent" => w3c::TRACEPARENT,
        "tracestate" => w3c::TRACESTATE,
        "x-b3-parentspanid" => b3::PARENT_SPAN_ID,
        other => panic!("not a context: {other:?}"),
    }))
}

#[test]
fn defaults() {
    let p = policy("{}");
    assert_eq!(p.mode, Mode::Propagate);
    assert_eq!(
        p.emit,
        Emit {
            w3c: true,
            ..Emit::default()
        }
    );
    assert_eq!(p.response_header.unwrap().as_str(), "x-trace-id");
    assert_eq!(policy(r#"{"response_header": null}"#).response_header, None);
}

#[test]
fn config_errors_name_route_and_field() {
    assert_eq!(
        compile_err(r#"{"routes": {"checkout": {"emit": ["w3c", "b4"]}}}"#),
        r#"routes["checkout"].emit[1]: unknown variant `b4`, expected one of `w3c`, `b3`, `b3multi`, `request_id`"#
    );
    assert_eq!(
        compile_err(r#"{"routes": {"checkout": {"emit": ["b3", "b3"]}}}"#),
        r#"routes["checkout"].emit[1]: b3 is listed twice"#
    );
    assert_eq!(
        compile_err(r#"{"default": {"emit": []}}"#),
        "default.emit: must list at least one format"
    );
    assert!(
        compile_err(r#"{"default": {"response_header": "x y"}}"#)
            .starts_with("default.response_header: ")
    );
    assert_eq!(
        compile_err(r#"{"default": {"mode": "clone"}}"#),
        "default.mode: unknown variant `clone`, expected `propagate` or `child`"
    );
    assert!(
        compile_err(r#"{"default": {"emitt": ["w3c"]}}"#)
            .starts_with("default.emitt: unknown field")
    );
}

#[test]
fn absent_traceparent_starts_a_new_trace() {
    let mut host = FakeHost::new();
    host.script_random(&[0x1111, 0x2222, 0x3333]);
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Started);
    assert_eq!(d.source, Source::New);
    assert_eq!(
        set(&d, "traceparent").unwrap(),
        "00-00000000000011110000000000002222-0000000000003333-01"
    );
    // Nothing else: no tracestate came in, so there is none to remove.
    assert_eq!(d.edits.len(), 1, "{:?}", d.edits);
}

#[test]
fn new_trace_ids_are_never_zero() {
    let mut host = FakeHost::new();
    host.script_random(&[0, 0, 0]);
    let d = policy("{}").decide(&mut host);
    let tp = TraceParent::parse(set(&d, "traceparent").unwrap().as_bytes()).unwrap();
    assert_ne!(tp.trace_id, [0; 16]);
    assert_ne!(tp.parent_id, [0; 8]);
}

#[test]
fn valid_traceparent_is_kept_in_propagate_mode() {
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("tracestate", "congo=t61rcWkgMzE");
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Continued);
    assert_eq!(d.trace_id_hex(), TRACE);
    assert!(d.edits.is_empty(), "{:?}", d.edits);
}

#[test]
fn child_mode_keeps_trace_id_with_a_new_parent() {
    let mut host = FakeHost::new().with_request_header("traceparent", TP);
    host.script_random(&[0xabc]);
    let d = policy(r#"{"mode": "child", "emit": ["w3c", "b3"]}"#).decide(&mut host);
    assert_eq!(d.outcome, Outcome::Continued);
    assert_eq!(
        set(&d, "traceparent").unwrap(),
        format!("00-{TRACE}-0000000000000abc-01")
    );
    assert_eq!(
        set(&d, "b3").unwrap(),
        format!("{TRACE}-0000000000000abc-1-00f067aa0ba902b7")
    );
}

#[test]
fn higher_version_is_rewritten_as_00() {
    let mut host = FakeHost::new().with_request_header(
        "traceparent",
        format!("01-{TRACE}-00f067aa0ba902b7-01-extra"),
    );
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Continued);
    assert_eq!(set(&d, "traceparent").unwrap(), TP);
}

#[test]
fn invalid_traceparent_is_replaced_and_its_tracestate_dropped() {
    for bad in [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let mut host = FakeHost::new()
            .with_request_header("traceparent", bad)
            .with_request_header("tracestate", "a=b");
        let d = policy("{}").decide(&mut host);
        assert_eq!(d.outcome, Outcome::Replaced, "{bad}");
        assert_eq!(d.source, Source::New);
        let written = set(&d, "traceparent").unwrap();
        assert!(TraceParent::parse(written.as_bytes()).is_ok());
        assert_ne!(written, bad);
        assert!(removes(&d, "tracestate"));
    }
}

#[test]
fn invalid_traceparent_is_removed_when_w3c_is_not_emitted() {
    let p = policy(r#"{"emit": ["b3"]}"#);
    let mut host = FakeHost::new()
        .with_request_header("traceparent", "00-zz")
        .with_request_header("tracestate", "a=b");
    let d = p.decide(&mut host);
    assert_eq!(d.outcome, Outcome::Replaced);
    assert_eq!(set(&d, "traceparent"), None);
    assert!(removes(&d, "traceparent"));
    assert!(removes(&d, "tracestate"));
    assert!(set(&d, "b3").unwrap().starts_with(&d.trace_id_hex()));

    // Without a tracestate, only the traceparent is removed.
    let mut host = FakeHost::new().with_request_header("traceparent", "00-zz");
    let d = p.decide(&mut host);
    assert!(removes(&d, "traceparent"));
    assert!(!removes(&d, "tracestate"));

    // A valid one is not ours to touch when w3c is not emitted.
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("tracestate", "a=b");
    let d = p.decide(&mut host);
    assert_eq!(d.outcome, Outcome::Continued);
    assert!(!removes(&d, "traceparent"));
    assert!(!removes(&d, "tracestate"));
}

#[test]
fn two_traceparent_headers_are_invalid_even_when_the_first_is_valid() {
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("traceparent", TP);
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Replaced);
    assert_ne!(d.trace_id_hex(), TRACE);
}

#[test]
fn tracestate_over_the_limit_is_truncated() {
    let state = (1..=33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("tracestate", &state);
    let d = policy("{}").decide(&mut host);
    let kept = set(&d, "tracestate").unwrap();
    assert_eq!(kept.split(',').count(), 32);
    assert!(!kept.contains("k33"));
}

#[test]
fn b3_single_is_carried_into_traceparent() {
    let mut host = FakeHost::new().with_request_header(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
    );
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Continued);
    assert_eq!(d.source, Source::B3);
    assert_eq!(
        set(&d, "traceparent").unwrap(),
        "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-00"
    );
}

#[test]
fn b3_multi_with_64_bit_id_is_carried() {
    let mut host = FakeHost::new()
        .with_request_header("x-b3-traceid", "a3ce929d0e0e4736")
        .with_request_header("x-b3-spanid", "00f067aa0ba902b7")
        .with_request_header("x-b3-sampled", "1");
    let d = policy(r#"{"emit": ["w3c", "b3multi"]}"#).decide(&mut host);
    assert_eq!(d.source, Source::B3);
    assert_eq!(
        set(&d, "traceparent").unwrap(),
        "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(
        set(&d, "x-b3-traceid").unwrap(),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(set(&d, "x-b3-sampled").unwrap(), "1");
    // None came in: nothing to remove.
    assert!(!removes(&d, "x-b3-parentspanid"));
}

#[test]
fn b3_multi_parent_left_from_another_context_is_removed() {
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("x-b3-parentspanid", "00f067aa0ba902b7");
    let d = policy(r#"{"emit": ["w3c", "b3multi"]}"#).decide(&mut host);
    assert_eq!(d.source, Source::W3c);
    assert!(removes(&d, "x-b3-parentspanid"));
}

#[test]
fn invalid_traceparent_with_valid_b3_takes_b3_and_counts_as_replaced() {
    let mut host = FakeHost::new()
        .with_request_header("traceparent", "00-zz")
        .with_request_header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Replaced);
    assert_eq!(d.source, Source::B3);
    assert_eq!(d.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
}

#[test]
fn b3_deny_starts_an_unsampled_trace() {
    let mut host = FakeHost::new().with_request_header("b3", "0");
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Started);
    assert!(set(&d, "traceparent").unwrap().ends_with("-00"));
}

#[test]
fn request_id_is_set_only_when_absent() {
    let p = policy(r#"{"emit": ["request_id"]}"#);
    let mut host = FakeHost::new().with_request_header("traceparent", TP);
    let d = p.decide(&mut host);
    assert_eq!(
        set(&d, "x-request-id").unwrap(),
        "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    );
    assert_eq!(set(&d, "traceparent"), None, "w3c not emitted");
    let mut host = FakeHost::new().with_request_header("x-request-id", "keep-me");
    assert_eq!(set(&p.decide(&mut host), "x-request-id"), None);
}

proptest! {
    #[test]
    fn traceparent_format_parse_round_trip(
        trace_id in any::<[u8; 16]>().prop_filter("non-zero", |t| *t != [0; 16]),
        parent_id in any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8]),
        flags in any::<u8>(),
    ) {
        let tp = TraceParent { version: 0, trace_id, parent_id, flags };
        prop_assert_eq!(TraceParent::parse(tp.format().as_bytes()), Ok(tp));
    }

    #[test]
    fn b3_format_parse_round_trip(
        trace_id in any::<[u8; 16]>().prop_filter("non-zero", |t| *t != [0; 16]),
        span_id in any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8]),
        parent in proptest::option::of(any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8])),
        sampled in any::<bool>(),
    ) {
        let text = b3::format_single(&trace_id, &span_id, sampled, parent.as_ref());
        let sampling = if sampled { b3::Sampling::Accept } else { b3::Sampling::Deny };
        prop_assert_eq!(
            b3::parse_single(text.as_bytes()),
            Some(B3::Context(b3::B3Context { trace_id, span_id, parent_span_id: parent, sampling: Some(sampling) }))
        );
    }

    #[test]
    fn b3multi_written_by_decide_reads_back_as_the_context_it_carries(
        trace_id in any::<[u8; 16]>().prop_filter("non-zero", |t| *t != [0; 16]),
        span_id in any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8]),
        parent in proptest::option::of(any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8])),
        sampled in any::<bool>(),
    ) {
        let incoming = b3::format_single(&trace_id, &span_id, sampled, parent.as_ref());
        let mut host = FakeHost::new().with_request_header("b3", &incoming);
        let d = policy(r#"{"emit": ["b3multi"]}"#).decide(&mut host);
        let written: Vec<(&str, String)> = [b3::TRACE_ID, b3::SPAN_ID, b3::PARENT_SPAN_ID, b3::SAMPLED]
            .into_iter()
            .filter_map(|name| Some((name, set(&d, name)?)))
            .collect();
        let read = b3::read_multi(|name| {
            written.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes())
        });
        let sampling = if sampled { b3::Sampling::Accept } else { b3::Sampling::Deny };
        prop_assert_eq!(
            read,
            Some(B3::Context(b3::B3Context { trace_id, span_id, parent_span_id: parent, sampling: Some(sampling) }))
        );
    }

    #[test]
    fn decide_always_writes_a_valid_traceparent_unless_kept(
        traceparent in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
        b3 in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
    ) {
        let mut host = FakeHost::new();
        if let Some(v) = &traceparent { host = host.with_request_header("traceparent", v); }
        if let Some(v) = &b3 { host = host.with_request_header("b3", v); }
        let d = policy(r#"{"emit": ["w3c", "b3", "b3multi", "request_id"]}"#).decide(&mut host);
        match set(&d, "traceparent") {
            Some(tp) => prop_assert!(TraceParent::parse(tp.as_bytes()).is_ok()),
            None => prop_assert_eq!(d.outcome, Outcome::Continued),
        }
    }
}

#[test]
fn the_response_keeps_the_trace_id_only_with_a_response_header() {
    let mut host = FakeHost::new().with_request_header("traceparent", TP);
    let p = policy("{}");
    let decision = p.decide(&mut host);
    assert_eq!(p.kept_for_response(&decision).as_deref(), Some(TRACE));
    let quiet = policy(r#"{"response_header": null}"#);
    assert_eq!(quiet.kept_for_response(&decision), None);
}

#[test]
fn stats_labels() {
    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(labels, ["started", "continued", "replaced"]);
    assert_eq!(Source::W3c.as_str(), "w3c");
    assert_eq!(Source::B3.as_str(), "b3");
    assert_eq!(Source::New.as_str(), "new");
    assert_eq!(Format::W3c.as_str(), "w3c");
    assert_eq!(Format::B3.as_str(), "b3");
    assert_eq!(Format::B3multi.as_str(), "b3multi");
    assert_eq!(Format::RequestId.as_str(), "request_id");
}

#[test]
fn an_empty_request_id_is_replaced() {
    let p = policy(r#"{"emit": ["request_id"]}"#);
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("x-request-id", "");
    assert_eq!(
        set(&p.decide(&mut host), "x-request-id").unwrap(),
        "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    );
}
