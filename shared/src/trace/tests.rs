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
        "00-00000000000011110000000000002222-0000000000003333-03"
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
    assert_eq!(d.trace_id_hex().as_str(), TRACE);
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
    assert!(
        set(&d, "b3")
            .unwrap()
            .starts_with(d.trace_id_hex().as_str())
    );

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
    assert_ne!(d.trace_id_hex().as_str(), TRACE);
}

#[test]
fn tracestate_over_the_limit_is_dropped_whole() {
    let state = (1..=33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let mut host = FakeHost::new()
        .with_request_header("traceparent", TP)
        .with_request_header("tracestate", &state);
    let d = policy("{}").decide(&mut host);
    assert!(removes(&d, "tracestate"));
    assert_eq!(d.outcome, Outcome::Continued);
}

#[test]
fn tracestate_lines_are_checked_and_forwarded_as_one() {
    for mode in ["propagate", "child"] {
        let p = policy(&format!(r#"{{"mode": "{mode}"}}"#));
        let mut host = FakeHost::new()
            .with_request_header("traceparent", TP)
            .with_request_header("tracestate", "a=1")
            .with_request_header("tracestate", "a=2, b=3");
        host.script_random(&[7]);
        let d = p.decide(&mut host);
        assert_eq!(set(&d, "tracestate").as_deref(), Some("a=1,b=3"), "{mode}");
        // One line of 40: each valid, too many together.
        let mut host = FakeHost::new().with_request_header("traceparent", TP);
        for i in 0..40 {
            host = host.with_request_header("tracestate", format!("k{i}=v"));
        }
        host.script_random(&[7]);
        let d = p.decide(&mut host);
        assert!(removes(&d, "tracestate"), "{mode}");
        assert_eq!(set(&d, "tracestate"), None, "{mode}");
        // An invalid later line drops the first.
        let mut host = FakeHost::new()
            .with_request_header("traceparent", TP)
            .with_request_header("tracestate", "a=1")
            .with_request_header("tracestate", "B=2");
        host.script_random(&[7]);
        assert!(removes(&p.decide(&mut host), "tracestate"), "{mode}");
        // A valid single line is left alone.
        let mut host = FakeHost::new()
            .with_request_header("traceparent", TP)
            .with_request_header("tracestate", "a=1 , b@c=2");
        host.script_random(&[7]);
        let d = p.decide(&mut host);
        assert_eq!(set(&d, "tracestate"), None, "{mode}");
        assert!(!removes(&d, "tracestate"), "{mode}");
    }
}

#[test]
fn new_traces_have_the_random_flag_continued_ones_keep_theirs() {
    // Started: every bit of the trace id is the host's randomness.
    let mut host = FakeHost::new();
    let d = policy("{}").decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-03"));
    let mut host = FakeHost::new().with_request_header("b3", "0");
    let d = policy("{}").decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-02"));
    // Continued in child mode: the flags as received, random set or not.
    for flags in ["00", "01", "02", "03"] {
        let mut host = FakeHost::new().with_request_header(
            "traceparent",
            format!("00-{TRACE}-00f067aa0ba902b7-{flags}"),
        );
        host.script_random(&[0xabc]);
        let d = policy(r#"{"mode": "child"}"#).decide(&mut host);
        assert_eq!(
            set(&d, "traceparent").unwrap(),
            format!("00-{TRACE}-0000000000000abc-{flags}")
        );
    }
    // Carried from B3: never random (nothing says how a B3 id was made).
    let mut host = FakeHost::new()
        .with_request_header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    let d = policy("{}").decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-01"));
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
    assert_eq!(
        d.trace_id_hex().as_str(),
        "80f198ee56343ba864fe8b2a57d3eff7"
    );
}

#[test]
fn b3_deny_starts_an_unsampled_trace() {
    let mut host = FakeHost::new().with_request_header("b3", "0");
    let d = policy("{}").decide(&mut host);
    assert_eq!(d.outcome, Outcome::Started);
    assert!(set(&d, "traceparent").unwrap().ends_with("-02"));
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
    let kept = p.kept_for_response(&decision);
    assert_eq!(kept.as_ref().map(TraceIdHex::as_str), Some(TRACE));
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

#[test]
fn sample_percent_is_checked_and_named_in_errors() {
    assert_eq!(policy("{}").sampler, None);
    assert_eq!(
        policy(r#"{"sample_percent": 50}"#).sampler,
        Some(Threshold::from_percent(50.0))
    );
    for bad in ["100.5", "-1", "-0.000001", "1e3"] {
        assert_eq!(
            compile_err(&format!(
                r#"{{"routes": {{"checkout": {{"sample_percent": {bad}}}}}}}"#
            )),
            r#"routes["checkout"].sample_percent: must be from 0 to 100"#,
            "{bad}"
        );
    }
    assert_eq!(
        compile_err(r#"{"default": {"sample_percent": "10"}}"#),
        r#"default.sample_percent: invalid type: string "10", expected a number from 0 to 100"#
    );
}

/// A new trace at 50 %: sampled when its id's right-most 56 bits reach 2^55.
#[test]
fn a_new_trace_is_sampled_by_its_trace_ids_last_56_bits() {
    let p = policy(r#"{"emit": ["w3c", "b3", "b3multi"], "sample_percent": 50}"#);
    // (the trace id's low 64 bits, sampled)
    for (low, sampled) in [
        (1 << 55, true),
        (0xff00_0000_0000_0000 | ((1 << 55) - 1), false),
        (u64::MAX, true),
        (1, false),
    ] {
        let mut host = FakeHost::new().with_request_header("tracestate", "stale=1");
        host.script_random(&[0x1111, low, 0x3333]);
        let d = p.decide(&mut host);
        let tp = TraceParent::parse(set(&d, "traceparent").unwrap().as_bytes()).unwrap();
        assert_eq!(tp.sampled(), sampled, "{low:x}");
        assert!(tp.random(), "{low:x}");
        assert_eq!(d.started, Some(Sampling::of(sampled)));
        assert_eq!(
            set(&d, "b3").unwrap().split('-').nth(2),
            Some(if sampled { "1" } else { "0" })
        );
        assert_eq!(
            set(&d, "x-b3-sampled").as_deref(),
            Some(if sampled { "1" } else { "0" })
        );
        if sampled {
            assert_eq!(set(&d, "tracestate").as_deref(), Some("ot=th:8"));
        } else {
            assert_eq!(set(&d, "tracestate"), None);
            assert!(removes(&d, "tracestate"), "the stale one goes");
        }
    }
}

#[test]
fn without_sample_percent_every_new_trace_is_sampled_and_nothing_is_written() {
    let p = policy("{}");
    for _ in 0..100 {
        let mut host = FakeHost::new();
        let d = p.decide(&mut host);
        assert_eq!(d.started, Some(Sampling::Sampled));
        assert_eq!(set(&d, "tracestate"), None);
        assert_eq!(d.edits.len(), 1);
    }
    // 100 % written: every trace sampled, with `th:0`.
    let mut host = FakeHost::new();
    let d = policy(r#"{"sample_percent": 100}"#).decide(&mut host);
    assert_eq!(set(&d, "tracestate").as_deref(), Some("ot=th:0"));
}

/// Over 10,000 new traces at each rate, the sampled share is within 2 points of it.
#[test]
fn ten_thousand_new_traces_are_sampled_at_the_configured_share() {
    for percent in [0u32, 1, 10, 50, 90, 100] {
        let p = policy(&format!(r#"{{"sample_percent": {percent}}}"#));
        let mut host = FakeHost::new();
        let mut sampled = 0u32;
        for _ in 0..10_000 {
            let d = p.decide(&mut host);
            host.request_headers.clear();
            if d.started == Some(Sampling::Sampled) {
                sampled += 1;
            }
        }
        let share = f64::from(sampled) / 100.0;
        assert!(
            (share - f64::from(percent)).abs() <= 2.0,
            "{percent} %: {share} % sampled"
        );
        if percent == 0 || percent == 100 {
            assert_eq!(share, f64::from(percent));
        }
    }
}

/// Two hops at the same rate: the second continues the first's trace with its decision,
/// and its own sampler, asked about the same trace id, says the same on every trace.
#[test]
fn two_hops_at_the_same_rate_agree_on_every_trace() {
    let edge = policy(r#"{"emit": ["w3c", "b3"], "sample_percent": 10}"#);
    let inner = policy(r#"{"mode": "child", "emit": ["w3c", "b3"], "sample_percent": 10}"#);
    let inner_sampler = inner.sampler.unwrap();
    let mut host = FakeHost::new();
    let mut sampled = 0;
    for _ in 0..2_000 {
        let first = edge.decide(&mut host);
        host.request_headers.clear();
        let traceparent = set(&first, "traceparent").unwrap();
        let mut next = FakeHost::new().with_request_header("traceparent", &traceparent);
        if let Some(state) = set(&first, "tracestate") {
            next = next.with_request_header("tracestate", state);
        }
        let second = inner.decide(&mut next);
        let first_tp = TraceParent::parse(traceparent.as_bytes()).unwrap();
        let second_tp =
            TraceParent::parse(set(&second, "traceparent").unwrap().as_bytes()).unwrap();
        assert_eq!(second.outcome, Outcome::Continued);
        assert_eq!(second.started, None);
        assert_eq!(second_tp.trace_id, first_tp.trace_id);
        assert_eq!(second_tp.flags, first_tp.flags, "{traceparent}");
        assert_eq!(
            inner_sampler.samples(sampling::randomness(&first_tp.trace_id)),
            first_tp.sampled(),
            "{traceparent}"
        );
        assert_eq!(
            set(&second, "tracestate"),
            None,
            "the threshold is forwarded as is"
        );
        sampled += u32::from(first_tp.sampled());
    }
    assert!((100..=300).contains(&sampled), "{sampled} of 2000 at 10 %");
}

/// A continued trace keeps its parent's decision and its `ot` (an upstream tracer's `th`
/// and `rv`), whatever the route's rate.
#[test]
fn a_continued_trace_keeps_its_decision_and_threshold() {
    for (flags, mode) in [("01", "propagate"), ("00", "child"), ("03", "child")] {
        let p = policy(&format!(r#"{{"mode": "{mode}", "sample_percent": 0}}"#));
        let mut host = FakeHost::new()
            .with_request_header(
                "traceparent",
                format!("00-{TRACE}-00f067aa0ba902b7-{flags}"),
            )
            .with_request_header("tracestate", "ot=th:c;rv:1a2b3c4d5e6f70,congo=t61rcWkgMzE");
        let d = p.decide(&mut host);
        assert_eq!(d.started, None);
        assert_eq!(set(&d, "tracestate"), None, "{mode}");
        assert!(!removes(&d, "tracestate"), "{mode}");
        if let Some(tp) = set(&d, "traceparent") {
            assert!(tp.ends_with(&format!("-{flags}")), "{tp}");
        }
    }
    // B3 continuations too.
    let mut host = FakeHost::new()
        .with_request_header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    let d = policy(r#"{"sample_percent": 0}"#).decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-01"));
    assert_eq!(d.started, None);
}

/// A client's own B3 decision without ids (`b3: 1`, `b3: 0`) is not overruled; an invalid
/// traceparent replaced by a new trace is sampled like any new one.
#[test]
fn a_clients_decision_stands_and_replaced_traces_are_sampled() {
    let mut host = FakeHost::new().with_request_header("b3", "1");
    let d = policy(r#"{"sample_percent": 0}"#).decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-03"));
    assert_eq!(d.started, Some(Sampling::Sampled));
    assert_eq!(set(&d, "tracestate"), None, "not sampled by a threshold");
    let mut host = FakeHost::new().with_request_header("b3", "0");
    let d = policy(r#"{"sample_percent": 100}"#).decide(&mut host);
    assert!(set(&d, "traceparent").unwrap().ends_with("-02"));
    assert_eq!(d.started, Some(Sampling::NotSampled));
    let mut host = FakeHost::new().with_request_header("traceparent", "garbage");
    let d = policy(r#"{"sample_percent": 0}"#).decide(&mut host);
    assert_eq!(d.outcome, Outcome::Replaced);
    assert_eq!(d.started, Some(Sampling::NotSampled));
    assert!(set(&d, "traceparent").unwrap().ends_with("-02"));
}

#[test]
fn the_trace_id_header_is_the_policys_name_with_the_kept_id() {
    let named = policy(r#"{"response_header": "x-trace"}"#);
    let kept = TraceIdHex::new(&crate::hex::decode_lower(TRACE.as_bytes()).unwrap());
    assert_eq!(kept.as_str(), TRACE);
    assert_eq!(
        named.trace_id_header(Some(&kept)),
        Some(("x-trace", TRACE.as_bytes()))
    );
    assert_eq!(named.trace_id_header(None), None);
    let none = policy(r#"{"response_header": null}"#);
    assert_eq!(none.trace_id_header(Some(&kept)), None);
}
