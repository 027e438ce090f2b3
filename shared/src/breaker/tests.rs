// On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
use super::classify::{self, Call, Failure, Finished, Verdict, flags};
use super::config::{BreakerConfig, BreakerPolicy, KeyBy};
use super::machine::{self, Admission, Local, Outcome, Reason, Ticket, Transition};
use super::record::{BUCKETS, RECORD_BYTES, Record, State};
use super::status::{StatusMatch, StatusSet};
use crate::config::{ConfigError, Envelope, FieldPath, Routes};
use crate::fake::FakeHost;
use crate::grpc::{Code, CodeSet, Protocol};
use crate::host::{Host, NANOS_PER_MS, Nanos};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn routes(json: &str) -> Result<Routes<BreakerPolicy>, ConfigError> {
    Envelope::<BreakerConfig>::from_json(json.as_bytes())?
        .compile(&FieldPath::root(), BreakerPolicy::compile)
}

fn policy(json: &str) -> BreakerPolicy {
    let routes = routes(&format!(r#"{{"default": {json}}}"#)).unwrap();
    (**routes.policy_for("any").unwrap()).clone()
}

fn config_error(route_json: &str) -> String {
    routes(&format!(r#"{{"routes": {{"checkout": {route_json}}}}}"#))
        .unwrap_err()
        .to_string()
}

// ---- config ----

#[test]
fn defaults_fill_everything_but_the_trip_condition() {
    let p = policy(r#"{"consecutive_failures": 3}"#);
    assert_eq!(p.key, KeyBy::Route);
    assert_eq!(p.consecutive_failures, Some(3));
    assert_eq!(p.failure_rate_percent, None);
    assert_eq!(p.slow_calls, None);
    assert_eq!(p.bucket, 10_000 * NANOS_PER_MS / BUCKETS as u64);
    assert_eq!(p.min_requests, 20);
    assert_eq!(p.open, 60_000 * NANOS_PER_MS);
    assert_eq!(p.half_open_max_requests, 1);
    assert_eq!(p.probe_timeout, 30_000 * NANOS_PER_MS);
    assert!(p.failure_status.contains(500) && p.failure_status.contains(599));
    assert!(!p.failure_status.contains(404));
    assert_eq!(p.fallback.status, 503);
    assert!(p.fallback.headers.is_empty() && p.fallback.body.is_empty());
}

#[test]
fn every_field_is_read() {
    let p = policy(
        r#"{"key": "cluster", "consecutive_failures": 5, "failure_rate_percent": 60,
            "slow_call_ms": 500, "slow_call_rate_percent": 80, "window_ms": 20000,
            "min_requests": 10, "open_ms": 5000, "half_open_max_requests": 3,
            "probe_timeout_ms": 2000, "failure_status": ["5xx", 429],
            "fallback": {"status": 200, "headers": {"Content-Type": "application/json"},
                         "body": "{\"error\":\"circuit open\"}"}}"#,
    );
    assert_eq!(p.key, KeyBy::Cluster);
    assert_eq!(p.failure_rate_percent, Some(60));
    let slow = p.slow_calls.unwrap();
    assert_eq!(
        (slow.threshold, slow.rate_percent),
        (500 * NANOS_PER_MS, 80)
    );
    assert_eq!(p.bucket, 2_000 * NANOS_PER_MS);
    assert_eq!(p.min_requests, 10);
    assert_eq!(p.half_open_max_requests, 3);
    assert_eq!(p.probe_timeout, 2_000 * NANOS_PER_MS);
    assert!(p.failure_status.contains(429) && p.failure_status.contains(503));
    assert!(!p.failure_status.contains(428));
    assert_eq!(p.fallback.status, 200);
    assert_eq!(
        p.fallback.headers,
        [("content-type".to_owned(), "application/json".to_owned())]
    );
    assert_eq!(p.fallback.body, br#"{"error":"circuit open"}"#);
}

#[test]
fn a_breaker_that_cannot_open_is_refused() {
    assert_eq!(
        config_error("{}"),
        r#"routes["checkout"]: nothing can open this breaker: set consecutive_failures, failure_rate_percent or slow_call_rate_percent"#
    );
}

#[test]
fn out_of_range_values_name_route_and_field() {
    for (json, expected) in [
        (
            r#"{"failure_rate_percent": 0}"#,
            r#"routes["checkout"].failure_rate_percent: must be between 1 and 100"#,
        ),
        (
            r#"{"failure_rate_percent": 101}"#,
            r#"routes["checkout"].failure_rate_percent: must be between 1 and 100"#,
        ),
        (
            r#"{"consecutive_failures": 0}"#,
            r#"routes["checkout"].consecutive_failures: must be between 1 and 1000000"#,
        ),
        (
            r#"{"consecutive_failures": 1, "window_ms": 99}"#,
            r#"routes["checkout"].window_ms: must be between 100 and 3600000"#,
        ),
        (
            r#"{"consecutive_failures": 1, "min_requests": 0}"#,
            r#"routes["checkout"].min_requests: must be between 1 and 1000000"#,
        ),
        (
            r#"{"consecutive_failures": 1, "open_ms": 0}"#,
            r#"routes["checkout"].open_ms: must be between 1 and 86400000"#,
        ),
        (
            r#"{"consecutive_failures": 1, "half_open_max_requests": 0}"#,
            r#"routes["checkout"].half_open_max_requests: must be between 1 and 1000"#,
        ),
        (
            r#"{"consecutive_failures": 1, "probe_timeout_ms": 0}"#,
            r#"routes["checkout"].probe_timeout_ms: must be between 1 and 86400000"#,
        ),
        (
            r#"{"slow_call_ms": 0, "slow_call_rate_percent": 50}"#,
            r#"routes["checkout"].slow_call_ms: must be between 1 and 3600000"#,
        ),
        (
            r#"{"slow_call_ms": 500}"#,
            r#"routes["checkout"].slow_call_ms: needs slow_call_rate_percent, the share of slow calls that opens"#,
        ),
        (
            r#"{"slow_call_rate_percent": 50}"#,
            r#"routes["checkout"].slow_call_rate_percent: needs slow_call_ms, the latency that makes a call slow"#,
        ),
        (
            r#"{"consecutive_failures": 1, "fallback": {"status": 101}}"#,
            r#"routes["checkout"].fallback.status: must be between 200 and 599"#,
        ),
    ] {
        assert_eq!(config_error(json), expected, "{json}");
    }
}

#[test]
fn wrong_names_and_types_are_refused() {
    let err = config_error(r#"{"consecutive_failure": 3}"#);
    assert!(
        err.starts_with(r#"routes["checkout"].consecutive_failure: unknown field"#),
        "{err}"
    );
    let err = config_error(r#"{"consecutive_failures": 3, "key": "host"}"#);
    assert_eq!(
        err,
        "routes[\"checkout\"].key: unknown variant `host`, expected `route` or `cluster`"
    );
    let err = config_error(r#"{"consecutive_failures": "3"}"#);
    assert_eq!(
        err,
        r#"routes["checkout"].consecutive_failures: invalid type: string "3", expected u64"#
    );
    let err = config_error(r#"{"consecutive_failures": 3, "open_ms": 1.5}"#);
    assert_eq!(
        err,
        "routes[\"checkout\"].open_ms: invalid type: floating point `1.5`, expected u64"
    );
    let err = config_error(r#"{"consecutive_failures": 3, "fallback": [503]}"#);
    assert_eq!(
        err,
        "routes[\"checkout\"].fallback: invalid type: sequence, expected an object"
    );
    let err = config_error(r#"{"consecutive_failures": 3, "fallback": {"bdy": ""}}"#);
    assert!(err.starts_with(r#"routes["checkout"].fallback.bdy: unknown field"#));
}

#[test]
fn failure_statuses_are_codes_or_classes() {
    let err = config_error(r#"{"consecutive_failures": 3, "failure_status": ["5xx", "6xx"]}"#);
    assert_eq!(
        err,
        r#"routes["checkout"].failure_status[1]: unknown status class "6xx", expected "1xx" to "5xx" or a status code"#
    );
    let err = config_error(r#"{"consecutive_failures": 3, "failure_status": [600]}"#);
    assert_eq!(
        err,
        r#"routes["checkout"].failure_status[0]: must be a status code between 100 and 599"#
    );
    let err = config_error(r#"{"consecutive_failures": 3, "failure_status": [true]}"#);
    assert_eq!(
        err,
        r#"routes["checkout"].failure_status[0]: invalid type: boolean `true`, expected a status code or a class like "5xx""#
    );
    // An empty list: only resets and timeouts fail.
    let p = policy(r#"{"consecutive_failures": 3, "failure_status": []}"#);
    assert!((100..600).all(|code| !p.failure_status.contains(code)));
}

#[test]
fn fallback_headers_are_checked() {
    for (headers, expected) in [
        (
            r#"{"bad name": "x"}"#,
            r#"routes["checkout"].fallback.headers["bad name"]: header name"#,
        ),
        (
            r#"{"X-Circuit-State": "x"}"#,
            r#"routes["checkout"].fallback.headers["X-Circuit-State"]: is set by the breaker itself"#,
        ),
        (
            r#"{"retry-after": "9"}"#,
            r#"routes["checkout"].fallback.headers["retry-after"]: is set by the breaker itself"#,
        ),
        (
            r#"{"x-a": "line\nbreak"}"#,
            r#"routes["checkout"].fallback.headers["x-a"]: header value has a control character"#,
        ),
        (
            r#"{"x-a": "1", "X-A": "2"}"#,
            r#"routes["checkout"].fallback.headers["X-A"]: x-a is written twice"#,
        ),
    ] {
        let err = config_error(&format!(
            r#"{{"consecutive_failures": 3, "fallback": {{"headers": {headers}}}}}"#
        ));
        assert!(err.starts_with(expected), "{err}");
    }
}

#[test]
fn a_route_keyed_breaker_has_one_key_a_cluster_keyed_one_none() {
    let by_route = policy(r#"{"consecutive_failures": 3}"#);
    assert_eq!(
        by_route.route_key("p", "checkout").as_deref(),
        Some("p/breaker/route/checkout")
    );
    let by_cluster = policy(r#"{"consecutive_failures": 3, "key": "cluster"}"#);
    assert_eq!(by_cluster.route_key("p", "checkout"), None);
}

// ---- classification ----

#[test]
fn the_policy_classifies_by_its_own_statuses_and_slow_threshold() {
    let p = policy(
        r#"{"consecutive_failures": 3, "failure_status": [429], "slow_call_ms": 100, "slow_call_rate_percent": 50}"#,
    );
    let call = |status, latency_ms| p.classify(&finished(Some(status), 0, true, latency_ms));
    assert_eq!(
        call(429, 100),
        Call {
            verdict: Verdict::Failure(Failure::Status),
            slow: true
        }
    );
    assert_eq!(
        call(503, 99),
        Call {
            verdict: Verdict::Success,
            slow: false
        }
    );
    let quick = policy(r#"{"consecutive_failures": 3}"#);
    let call = quick.classify(&finished(Some(503), 0, true, 60_000));
    assert_eq!((call.failed(), call.slow), (true, false));
}

fn finished(status: Option<u16>, flags: u64, via_upstream: bool, latency_ms: u64) -> Finished {
    Finished {
        status,
        flags,
        via_upstream,
        grpc_status: None,
        latency: latency_ms * NANOS_PER_MS,
    }
}

/// [`classify::classify`] for an HTTP request (no gRPC status to classify by).
fn classify_http(finished: &Finished, set: &StatusSet, slow: Option<Nanos>) -> Call {
    classify::classify(finished, set, CodeSet::default(), slow)
}

fn five_xx() -> StatusSet {
    StatusSet::from_matches(&[StatusMatch::Class(5)])
}

#[test]
fn upstream_statuses_are_classified_by_the_failure_set() {
    let set = five_xx();
    let call = |status| classify_http(&finished(Some(status), 0, true, 1), &set, None);
    assert_eq!(call(200).verdict, Verdict::Success);
    assert_eq!(call(404).verdict, Verdict::Success);
    assert_eq!(call(500).verdict, Verdict::Failure(Failure::Status));
    assert_eq!(call(503).verdict, Verdict::Failure(Failure::Status));
    let only_429 = StatusSet::from_matches(&[StatusMatch::Code(429)]);
    let call = |status| classify_http(&finished(Some(status), 0, true, 1), &only_429, None);
    assert_eq!(call(429).verdict, Verdict::Failure(Failure::Status));
    assert_eq!(call(500).verdict, Verdict::Success);
}

#[test]
fn resets_and_timeouts_fail_whatever_the_status() {
    let set = StatusSet::default();
    for (flag, status, failure) in [
        (
            flags::UPSTREAM_CONNECTION_FAILURE,
            Some(503),
            Failure::Reset,
        ),
        (flags::UPSTREAM_REMOTE_RESET, Some(503), Failure::Reset),
        (
            flags::UPSTREAM_CONNECTION_TERMINATION,
            Some(503),
            Failure::Reset,
        ),
        (flags::NO_HEALTHY_UPSTREAM, Some(503), Failure::Reset),
        (
            flags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
            Some(503),
            Failure::Reset,
        ),
        (flags::UPSTREAM_PROTOCOL_ERROR, Some(502), Failure::Reset),
        (flags::UPSTREAM_REQUEST_TIMEOUT, Some(504), Failure::Timeout),
        (
            flags::UPSTREAM_MAX_STREAM_DURATION_REACHED,
            Some(504),
            Failure::Timeout,
        ),
        // A 200 whose body the upstream cut off.
        (flags::UPSTREAM_REMOTE_RESET, Some(200), Failure::Reset),
    ] {
        let call = classify_http(&finished(status, flag, false, 1), &set, None);
        assert_eq!(call.verdict, Verdict::Failure(failure), "flag {flag:#x}");
    }
}

#[test]
fn what_the_upstream_did_not_do_is_ignored() {
    let set = five_xx();
    // The client hung up: no status.
    let left = finished(None, flags::DOWNSTREAM_CONNECTION_TERMINATION, false, 10);
    assert_eq!(classify_http(&left, &set, None).verdict, Verdict::Ignored);
    // A direct response or another filter's local reply: a status, but not the upstream's.
    let local = finished(Some(503), 0, false, 1);
    assert_eq!(classify_http(&local, &set, None).verdict, Verdict::Ignored);
    // Envoy's own overflow cap refused to call the upstream.
    let overflow = finished(Some(503), flags::UPSTREAM_OVERFLOW, false, 1);
    assert_eq!(
        classify_http(&overflow, &set, None).verdict,
        Verdict::Ignored
    );
    assert!(!classify_http(&left, &set, None).counts());
}

#[test]
fn slowness_is_measured_against_the_threshold_only_when_configured() {
    let set = five_xx();
    let threshold = Some(500 * NANOS_PER_MS);
    let at = |ms| classify_http(&finished(Some(200), 0, true, ms), &set, threshold);
    assert!(!at(499).slow);
    assert!(at(500).slow);
    assert_eq!(at(500).verdict, Verdict::Success);
    assert!(!classify_http(&finished(Some(200), 0, true, 9_999), &set, None).slow);
    // A client that gave up after the threshold still shows a slow upstream.
    let left = classify_http(
        &finished(None, flags::DOWNSTREAM_CONNECTION_TERMINATION, false, 600),
        &set,
        threshold,
    );
    assert_eq!(left.verdict, Verdict::Ignored);
    assert!(left.slow && left.counts());
}

/// What Envoy says of a finished stream, as properties; the verdict and the property reads
/// it took.
fn read(flags: u64, code: u64, details: &str) -> (Verdict, usize) {
    let host = FakeHost::new()
        .with_property(&classify::RESPONSE_FLAGS, flags.to_le_bytes())
        .with_property(&classify::RESPONSE_CODE, code.to_le_bytes())
        .with_property(&classify::RESPONSE_CODE_DETAILS, details);
    let finished = Finished::read(&host, 0, Protocol::Http, None);
    let verdict = classify_http(&finished, &five_xx(), None).verdict;
    (verdict, host.calls().property_reads)
}

#[test]
fn a_finished_stream_is_read_only_as_far_as_its_classification_needs() {
    // A plain 2xx: flags and status, no details.
    assert_eq!(read(0, 200, "via_upstream"), (Verdict::Success, 2));
    // An upstream failure flag decides alone.
    let reset = flags::UPSTREAM_CONNECTION_FAILURE;
    let (verdict, reads) = read(reset, 503, "upstream_reset_before_response_started");
    assert!(matches!(verdict, Verdict::Failure(Failure::Reset)));
    assert_eq!(reads, 1);
    // Another status needs the details: the upstream's 503 fails, a local one is ignored.
    assert!(matches!(
        read(0, 503, "via_upstream"),
        (Verdict::Failure(Failure::Status), 3)
    ));
    assert_eq!(read(0, 503, "direct_response"), (Verdict::Ignored, 3));
    assert_eq!(read(0, 404, "via_upstream"), (Verdict::Success, 3));
}

/// A gRPC call's end as Envoy reports it (HTTP status, details) and the `grpc-status` its
/// response carried (`None`: none); the verdict under the default policy and the reads.
fn read_grpc(code: u64, details: &str, grpc_status: Option<u32>) -> (Verdict, usize) {
    let host = FakeHost::new()
        .with_property(&classify::RESPONSE_FLAGS, 0u64.to_le_bytes())
        .with_property(&classify::RESPONSE_CODE, code.to_le_bytes())
        .with_property(&classify::RESPONSE_CODE_DETAILS, details);
    let p = policy(r#"{"consecutive_failures": 3}"#);
    let finished = Finished::read(&host, 0, Protocol::Grpc, grpc_status);
    let verdict =
        classify::classify(&finished, &p.failure_status, p.grpc_failure_status, None).verdict;
    (verdict, host.calls().property_reads)
}

#[test]
fn a_grpc_status_is_taken_only_from_a_grpc_call_the_upstream_answered() {
    let host = |details: &str| {
        FakeHost::new()
            .with_property(&classify::RESPONSE_FLAGS, 0u64.to_le_bytes())
            .with_property(&classify::RESPONSE_CODE, 200u64.to_le_bytes())
            .with_property(&classify::RESPONSE_CODE_DETAILS, details)
    };
    let upstream = host("via_upstream");
    let grpc = Finished::read(&upstream, 0, Protocol::Grpc, Some(14));
    assert_eq!(grpc.grpc_status, Some(14));
    // An HTTP request's response may carry a grpc-status header: it is not a gRPC status.
    let http = Finished::read(&upstream, 0, Protocol::Http, Some(14));
    assert_eq!(http.grpc_status, None);
    // Envoy's own 200 to a gRPC call (a local reply) is not the upstream's answer.
    let local = Finished::read(&host("direct_response"), 0, Protocol::Grpc, Some(14));
    assert!(!local.via_upstream);
    assert_eq!(local.grpc_status, None);
}

#[test]
fn grpc_calls_are_classified_by_their_grpc_status() {
    let failed = Verdict::Failure(Failure::Status);
    // The default set: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS.
    for code in [14, 4, 13, 2, 15] {
        assert_eq!(
            read_grpc(200, "via_upstream", Some(code)),
            (failed, 3),
            "{code}"
        );
    }
    // OK and the caller's own errors (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED).
    for code in [0, 5, 3, 8] {
        let (verdict, _) = read_grpc(200, "via_upstream", Some(code));
        assert_eq!(verdict, Verdict::Success, "{code}");
    }
    // Envoy answered the call itself (200 in gRPC form): not the upstream's doing.
    assert_eq!(
        read_grpc(200, "direct_response", Some(14)),
        (Verdict::Ignored, 3)
    );
    // An HTTP error from a gRPC upstream (a proxy in between): the HTTP set decides.
    assert_eq!(read_grpc(503, "via_upstream", None), (failed, 3));
    // No gRPC status at all: the HTTP status decides.
    assert_eq!(read_grpc(200, "via_upstream", None).0, Verdict::Success);
}

#[test]
fn the_grpc_failure_set_is_configurable_by_name() {
    let p = policy(
        r#"{"consecutive_failures": 3, "grpc_failure_status": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}"#,
    );
    assert!(p.grpc_failure_status.contains(14) && p.grpc_failure_status.contains(8));
    assert!(!p.grpc_failure_status.contains(13) && !p.grpc_failure_status.contains(0));
    let err = config_error(r#"{"consecutive_failures": 3, "grpc_failure_status": ["BUSY"]}"#);
    assert!(
        err.starts_with(
            "routes[\"checkout\"].grpc_failure_status[0]: unknown variant `BUSY`, expected one of `OK`"
        ),
        "{err}"
    );
}

#[test]
fn the_fallback_answers_a_grpc_call_in_grpc_form() {
    let p = policy(
        r#"{"consecutive_failures": 3, "fallback": {"status": 503, "body": "down", "headers": {"x-fallback": "1", "content-type": "text/plain"}}}"#,
    );
    let http = p.fallback.reply(State::Open, 30, &FakeHost::new());
    assert_eq!(
        (http.status, http.body.as_slice(), http.grpc.as_ref()),
        (503, &b"down"[..], None)
    );
    let grpc = p
        .fallback
        .reply(State::Open, 30, &FakeHost::new().grpc_call());
    // Envoy writes a gRPC reply's content-type itself: a second one would confuse clients.
    assert!(
        grpc.headers.iter().all(|(name, _)| name != "content-type"),
        "{:?}",
        grpc.headers
    );
    let status = grpc.grpc.expect("gRPC form");
    assert_eq!(
        (status.code, status.message.as_str()),
        (Code::UNAVAILABLE, "circuit open")
    );
    for header in [
        ("x-fallback", "1"),
        ("x-circuit-state", "open"),
        ("retry-after", "30"),
        ("grpc-retry-pushback-ms", "30000"),
    ] {
        assert!(
            grpc.headers.contains(&(header.0.into(), header.1.into())),
            "{header:?} in {:?}",
            grpc.headers
        );
    }
    let p = policy(
        r#"{"consecutive_failures": 3, "fallback": {"grpc_status": "RESOURCE_EXHAUSTED", "grpc_message": "shed"}}"#,
    );
    assert_eq!(
        p.fallback.grpc,
        crate::grpc::Status {
            code: Code::RESOURCE_EXHAUSTED,
            message: "shed".into()
        }
    );
    let err = config_error(r#"{"consecutive_failures": 3, "fallback": {"grpc_status": "OK"}}"#);
    assert!(
        err.starts_with(
            r#"routes["checkout"].fallback.grpc_status: a reply that ends a call cannot be OK"#
        ),
        "{err}"
    );
}

#[test]
fn status_sets_hold_only_real_codes() {
    let set = StatusSet::from_matches(&[
        StatusMatch::Class(1),
        StatusMatch::Class(5),
        StatusMatch::Code(418),
    ]);
    assert!(set.contains(100) && set.contains(199) && set.contains(599) && set.contains(418));
    assert!(!set.contains(0) && !set.contains(99) && !set.contains(200) && !set.contains(600));
    assert!(!set.contains(u16::MAX));
    // Codes outside 100..=599 have no bit: not even inserted directly are they held.
    let outside = StatusSet::from_matches(&[StatusMatch::Code(99), StatusMatch::Code(600)]);
    assert_eq!(outside, StatusSet::default());
    assert!(!outside.contains(600));
}

#[test]
fn integer_properties_are_little_endian_u64() {
    let host = FakeHost::new()
        .with_property(&["response", "code"], [0xf7, 1, 0, 0, 0, 0, 0, 0])
        .with_property(&["response", "flags"], [1, 2, 3]);
    assert_eq!(host.property_u64(&["response", "code"]), Some(503));
    assert_eq!(host.property_u64(&["response", "flags"]), None);
}

// ---- record ----

/// A record as the previous release (layout `brk1`, 9 header fields, no `failing_since`)
/// wrote it for an open breaker, in a shared-data slot a new build reads after an upgrade:
/// read as a fresh closed breaker, never as an open one with its fields shifted.
#[test]
fn a_record_of_the_previous_layout_reads_as_closed() {
    const BRK1: u64 = 0x6272_6b31_0000_0000 | BUCKETS as u64;
    let mut fields = vec![BRK1, 1, 3, 1_000, 61_000, 0, 0, 0, 0];
    for epoch in 0..BUCKETS as u64 {
        fields.extend([epoch, 5, 5, 0]);
    }
    let old: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(old.len(), 392);
    assert_eq!(Record::decode(Some(&old)), Record::default());
    // Padded to today's size it is still foreign: the layout tag decides, not the length.
    let mut padded = old;
    padded.resize(RECORD_BYTES, 0);
    assert_eq!(Record::decode(Some(&padded)), Record::default());
}

#[test]
fn records_round_trip_and_foreign_ones_read_as_closed() {
    let mut record = Record::default();
    record.enter(State::Open, 5);
    assert_eq!(
        (record.generation, record.since),
        (1, 5),
        "a new generation, from now"
    );
    record.open_until = 9;
    record.count(123 * NANOS_PER_MS, NANOS_PER_MS, true, true);
    record.consecutive_failures = 4;
    record.failing_since = 7;
    let bytes = record.encode();
    assert_eq!(bytes.len(), RECORD_BYTES);
    // The layout tag leads: "brk2" and the bucket count, 10 (little-endian u64).
    assert_eq!(bytes[..8], [10, 0, 0, 0, b'2', b'k', b'r', b'b']);
    assert_eq!(RECORD_BYTES, 400, "docs/breaker.md gives the size");
    assert_eq!(Record::decode(Some(&bytes)), record);
    assert_eq!(Record::decode(None), Record::default());
    assert_eq!(Record::decode(Some(&bytes[1..])), Record::default());
    let mut foreign = bytes.clone();
    foreign[0] ^= 1;
    assert_eq!(Record::decode(Some(&foreign)), Record::default());
    let mut bad_state = bytes;
    bad_state[8] = 7;
    assert_eq!(Record::decode(Some(&bad_state)), Record::default());
}

#[test]
fn the_window_forgets_buckets_older_than_itself() {
    let width = 100;
    let mut record = Record::default();
    record.count(1_000, width, true, false);
    record.count(1_050, width, false, true);
    record.count(1_100, width, false, false);
    let counts = record.window(1_100, width);
    assert_eq!((counts.calls, counts.failures, counts.slow), (3, 1, 1));
    // Epoch 10 is the oldest one a window ending in epoch 19 holds.
    assert_eq!(record.window(1_999, width).calls, 3);
    assert_eq!(record.window(2_000, width).calls, 1);
    assert_eq!(record.window(2_100, width).calls, 0);
    // Reusing a slot restarts it: epoch 20 lands where epoch 10 was.
    record.count(2_000, width, false, false);
    assert_eq!(record.window(2_000, width).calls, 2);
}

// ---- the state machine over shared data ----

const KEY: &str = "mesh.breaker/mesh.breaker/breaker/route/checkout";

struct Breaker {
    host: FakeHost,
    policy: BreakerPolicy,
    transitions: Vec<Transition>,
}

impl Breaker {
    fn new(json: &str) -> Self {
        Self {
            host: FakeHost::new(),
            policy: policy(json),
            transitions: Vec::new(),
        }
    }

    fn admit(&mut self) -> Outcome<Admission> {
        let now = self.host.now();
        let outcome = machine::admit(&self.policy, &mut self.host, KEY, now);
        self.transitions.extend(outcome.transition);
        outcome
    }

    /// Admits a request that must pass.
    fn pass(&mut self) -> Ticket {
        match self.admit().result {
            Admission::Pass(ticket) => ticket,
            other => panic!("expected to pass, got {other:?}"),
        }
    }

    /// Admits a request that must be rejected; returns (state, Retry-After).
    fn reject(&mut self) -> (State, u64) {
        match self.admit().result {
            Admission::Reject {
                state,
                retry_after_secs,
            } => (state, retry_after_secs),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn finish(&mut self, ticket: Ticket, status: u16, latency_ms: u64) -> State {
        let finished = finished(Some(status), 0, true, latency_ms);
        self.finish_call(ticket, &finished)
    }

    fn finish_call(&mut self, ticket: Ticket, finished: &Finished) -> State {
        let call = self.classify(finished);
        let now = self.host.now();
        let outcome =
            machine::complete(&self.policy, &mut self.host, KEY, ticket, call, now).unwrap();
        self.transitions.extend(outcome.transition);
        outcome.state
    }

    fn classify(&self, finished: &Finished) -> Call {
        classify::classify(
            finished,
            &self.policy.failure_status,
            self.policy.grpc_failure_status,
            self.policy.slow_calls.map(|s| s.threshold),
        )
    }

    /// A request that passes and ends with `status`.
    fn call(&mut self, status: u16) -> State {
        let ticket = self.pass();
        self.finish(ticket, status, 1)
    }

    fn record(&self) -> Record {
        Record::decode(self.host.shared_get(KEY).map(|s| s.value).as_deref())
    }

    fn last(&self) -> (State, State, Reason) {
        let t = self.transitions.last().expect("a transition");
        (t.from, t.to, t.reason)
    }
}

#[test]
fn a_closed_breaker_passes_without_writing() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 3}"#);
    let ticket = b.pass();
    assert_eq!(
        ticket,
        Ticket {
            generation: 0,
            probe: false
        }
    );
    assert_eq!(
        b.host.shared_keys(),
        0,
        "admission in closed state only reads"
    );
    assert_eq!(b.finish(ticket, 200, 1), State::Closed);
    assert_eq!(b.host.shared_keys(), 1);
}

#[test]
fn consecutive_failures_open_it_and_a_success_restarts_the_run() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 3}"#);
    assert_eq!(b.call(500), State::Closed);
    assert_eq!(b.call(502), State::Closed);
    assert_eq!(b.call(200), State::Closed);
    assert_eq!(
        b.call(404),
        State::Closed,
        "4xx is not a failure by default"
    );
    assert_eq!(b.call(500), State::Closed);
    assert_eq!(b.call(500), State::Closed);
    assert!(b.transitions.is_empty());
    assert_eq!(b.call(503), State::Open);
    assert_eq!(
        b.last(),
        (State::Closed, State::Open, Reason::ConsecutiveFailures)
    );
    let t = b.transitions[0];
    assert_eq!(t.consecutive_failures, 3);
    assert_eq!((t.window.calls, t.window.failures), (7, 5));
    let record = b.record();
    assert_eq!(record.state, State::Open);
    assert_eq!(record.generation, 1);
    assert_eq!(
        record.window(b.host.now(), b.policy.bucket).calls,
        0,
        "fresh counts"
    );
}

#[test]
fn an_open_breaker_rejects_with_retry_after_rounded_up_until_open_ms_pass() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 5000}"#);
    b.call(500);
    assert_eq!(b.reject(), (State::Open, 5));
    b.host.advance_ms(1);
    assert_eq!(b.reject(), (State::Open, 5));
    b.host.advance_ms(999);
    assert_eq!(b.reject(), (State::Open, 4));
    b.host.advance_ms(3_999);
    assert_eq!(
        b.reject(),
        (State::Open, 1),
        "1 ms left is still a whole second"
    );
    assert_eq!(b.transitions.len(), 1, "rejections change nothing");
    b.host.advance_ms(1);
    let probe = b.pass();
    assert!(probe.probe);
    assert_eq!(
        b.last(),
        (State::Open, State::HalfOpen, Reason::OpenElapsed)
    );
}

#[test]
fn half_open_admits_one_probe_by_default_and_its_success_closes() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000}"#);
    b.call(500);
    b.host.advance_ms(1000);
    let probe = b.pass();
    assert_eq!(
        probe,
        Ticket {
            generation: 2,
            probe: true
        }
    );
    assert_eq!(b.reject(), (State::HalfOpen, 1));
    assert_eq!(b.reject(), (State::HalfOpen, 1));
    assert_eq!(b.finish(probe, 200, 1), State::Closed);
    assert_eq!(
        b.last(),
        (State::HalfOpen, State::Closed, Reason::ProbesSucceeded)
    );
    let ticket = b.pass();
    assert_eq!(
        ticket,
        Ticket {
            generation: 3,
            probe: false
        }
    );
    assert_eq!(b.record().probes_admitted, 0);
}

#[test]
fn a_failed_probe_opens_it_again_for_open_ms() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 2000}"#);
    b.call(500);
    b.host.advance_ms(2000);
    let probe = b.pass();
    b.host.advance_ms(300);
    assert_eq!(b.finish(probe, 503, 1), State::Open);
    assert_eq!(
        b.last(),
        (State::HalfOpen, State::Open, Reason::ProbeFailed)
    );
    assert_eq!(b.reject(), (State::Open, 2));
    b.host.advance_ms(1999);
    b.reject();
    b.host.advance_ms(1);
    assert!(b.pass().probe);
}

#[test]
fn every_probe_must_succeed_and_the_budget_holds() {
    let mut b = Breaker::new(
        r#"{"consecutive_failures": 1, "open_ms": 1000, "half_open_max_requests": 3}"#,
    );
    b.call(500);
    b.host.advance_ms(1000);
    let probes = [b.pass(), b.pass(), b.pass()];
    assert!(probes.iter().all(|p| p.probe));
    assert_eq!(b.reject(), (State::HalfOpen, 1), "a fourth is over budget");
    assert_eq!(b.finish(probes[0], 200, 1), State::HalfOpen);
    assert_eq!(b.finish(probes[1], 200, 1), State::HalfOpen);
    b.reject();
    assert_eq!(b.finish(probes[2], 200, 1), State::Closed);
    assert_eq!(b.transitions[2].probes_succeeded, 3);

    // The same, with one failing probe among successes.
    b.call(500);
    b.host.advance_ms(1000);
    let probes = [b.pass(), b.pass(), b.pass()];
    assert_eq!(b.finish(probes[0], 200, 1), State::HalfOpen);
    assert_eq!(b.finish(probes[1], 500, 1), State::Open);
    assert_eq!(
        b.finish(probes[2], 200, 1),
        State::Open,
        "a late probe is stale"
    );
    b.reject();
}

#[test]
fn a_probe_whose_client_left_frees_its_slot() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000}"#);
    b.call(500);
    b.host.advance_ms(1000);
    let probe = b.pass();
    b.reject();
    let left = finished(None, flags::DOWNSTREAM_CONNECTION_TERMINATION, false, 5);
    assert_eq!(b.finish_call(probe, &left), State::HalfOpen);
    let next = b.pass();
    assert!(next.probe);
    assert_eq!(b.finish(next, 200, 1), State::Closed);
}

#[test]
fn a_lost_probe_reopens_after_probe_timeout_and_its_late_answer_changes_nothing() {
    let mut b =
        Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000, "probe_timeout_ms": 3000}"#);
    b.call(500);
    b.host.advance_ms(1000);
    let lost = b.pass();
    b.host.advance_ms(2999);
    assert_eq!(b.reject(), (State::HalfOpen, 1));
    b.host.advance_ms(1);
    assert_eq!(b.reject(), (State::Open, 1));
    assert_eq!(b.last(), (State::HalfOpen, State::Open, Reason::ProbeLost));
    let before = b.record();
    assert_eq!(b.finish(lost, 200, 1), State::Open);
    assert_eq!(b.record(), before, "a stale ticket writes nothing");
    b.host.advance_ms(1000);
    let probe = b.pass();
    assert_eq!(b.finish(probe, 200, 1), State::Closed);
}

#[test]
fn failure_rate_waits_for_min_requests() {
    let mut b =
        Breaker::new(r#"{"failure_rate_percent": 60, "min_requests": 5, "window_ms": 10000}"#);
    for _ in 0..4 {
        assert_eq!(b.call(500), State::Closed);
    }
    assert!(
        b.transitions.is_empty(),
        "4 of 4 failed, but 5 calls are needed"
    );
    assert_eq!(b.call(500), State::Open);
    assert_eq!(b.last(), (State::Closed, State::Open, Reason::FailureRate));
    assert_eq!(b.transitions[0].window.calls, 5);
}

#[test]
fn failure_rate_opens_at_the_threshold_not_below() {
    let mut b =
        Breaker::new(r#"{"failure_rate_percent": 60, "min_requests": 10, "window_ms": 10000}"#);
    // 5 failures in 10 calls: 50 %.
    for status in [500, 200, 500, 200, 500, 200, 500, 200, 500, 200] {
        assert_eq!(b.call(status), State::Closed);
    }
    // 6 of 11: 54 %; 7 of 12: 58 %; 8 of 13: 61 %.
    assert_eq!(b.call(500), State::Closed);
    assert_eq!(b.call(500), State::Closed);
    assert_eq!(b.call(500), State::Open);
    let t = b.transitions[0];
    assert_eq!((t.window.calls, t.window.failures), (13, 8));
}

#[test]
fn failures_older_than_the_window_do_not_count() {
    let mut b =
        Breaker::new(r#"{"failure_rate_percent": 50, "min_requests": 4, "window_ms": 1000}"#);
    for _ in 0..3 {
        b.call(500);
    }
    b.host.advance_ms(1000);
    assert_eq!(
        b.call(500),
        State::Closed,
        "the first three have left the window"
    );
    assert_eq!(b.call(200), State::Closed);
    assert_eq!(b.call(200), State::Closed);
    assert_eq!(b.call(500), State::Open, "2 of 4 is 50 %");
}

#[test]
fn slow_calls_open_it_and_a_slow_probe_fails() {
    let mut b = Breaker::new(
        r#"{"slow_call_ms": 500, "slow_call_rate_percent": 50, "min_requests": 4, "open_ms": 1000}"#,
    );
    for latency in [100, 600, 499] {
        let ticket = b.pass();
        assert_eq!(b.finish(ticket, 200, latency), State::Closed);
    }
    let ticket = b.pass();
    assert_eq!(b.finish(ticket, 200, 500), State::Open);
    assert_eq!(b.last(), (State::Closed, State::Open, Reason::SlowCallRate));
    assert_eq!(b.transitions[0].window.slow, 2);
    b.host.advance_ms(1000);
    let probe = b.pass();
    assert_eq!(b.finish(probe, 200, 700), State::Open);
    assert_eq!(
        b.last(),
        (State::HalfOpen, State::Open, Reason::ProbeFailed)
    );
    b.host.advance_ms(1000);
    let probe = b.pass();
    assert_eq!(b.finish(probe, 200, 20), State::Closed);
}

#[test]
fn ignored_calls_neither_count_nor_break_a_run() {
    let mut b = Breaker::new(
        r#"{"consecutive_failures": 2, "failure_rate_percent": 100, "min_requests": 2}"#,
    );
    b.call(500);
    let ticket = b.pass();
    let left = finished(None, flags::DOWNSTREAM_CONNECTION_TERMINATION, false, 5);
    assert_eq!(b.finish_call(ticket, &left), State::Closed);
    assert_eq!(b.record().window(b.host.now(), b.policy.bucket).calls, 1);
    assert_eq!(b.call(500), State::Open);
    assert_eq!(b.last().2, Reason::ConsecutiveFailures);
}

#[test]
fn resets_and_timeouts_count_as_failures() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 2}"#);
    let ticket = b.pass();
    let refused = finished(Some(503), flags::UPSTREAM_CONNECTION_FAILURE, false, 1);
    assert_eq!(b.finish_call(ticket, &refused), State::Closed);
    let ticket = b.pass();
    let timeout = finished(Some(504), flags::UPSTREAM_REQUEST_TIMEOUT, false, 300);
    assert_eq!(b.finish_call(ticket, &timeout), State::Open);
}

#[test]
fn calls_admitted_before_a_transition_change_nothing() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000}"#);
    let old = b.pass();
    let older = b.pass();
    b.call(500);
    assert_eq!(
        b.finish(old, 500, 1),
        State::Open,
        "stale: no second opening"
    );
    assert_eq!(b.transitions.len(), 1);
    b.host.advance_ms(1000);
    let probe = b.pass();
    // A closed-state failure finishing during half-open is not the probe's answer.
    assert_eq!(b.finish(older, 500, 1), State::HalfOpen);
    assert_eq!(b.finish(probe, 200, 1), State::Closed);
}

#[test]
fn probes_are_counted_across_workers() {
    // Two VMs share the host's shared data; each admits against the same record.
    let mut b = Breaker::new(
        r#"{"consecutive_failures": 1, "open_ms": 1000, "half_open_max_requests": 2}"#,
    );
    b.call(500);
    b.host.advance_ms(1000);
    let now = b.host.now();
    let worker_a = machine::admit(&b.policy, &mut b.host, KEY, now);
    let worker_b = machine::admit(&b.policy, &mut b.host, KEY, now);
    let worker_a_again = machine::admit(&b.policy, &mut b.host, KEY, now);
    assert!(matches!(
        worker_a.result,
        Admission::Pass(Ticket { probe: true, .. })
    ));
    assert!(matches!(
        worker_b.result,
        Admission::Pass(Ticket { probe: true, .. })
    ));
    assert!(matches!(
        worker_a_again.result,
        Admission::Reject {
            state: State::HalfOpen,
            ..
        }
    ));
    assert_eq!(b.record().probes_admitted, 2);
}

#[test]
fn cas_conflicts_are_retried() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 2}"#);
    b.call(500);
    b.host.cas_conflicts = 5;
    assert_eq!(
        b.call(500),
        State::Open,
        "both failures counted despite the conflicts"
    );
    assert_eq!(b.host.cas_conflicts, 0);
}

#[test]
fn exhausted_retries_drop_the_count_and_refuse_the_probe() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000}"#);
    let ticket = b.pass();
    b.host.shared_put(KEY, &Record::default().encode());
    b.host.cas_conflicts = usize::MAX;
    let call = b.classify(&finished(Some(500), 0, true, 1));
    let now = b.host.now();
    assert_eq!(
        machine::complete(&b.policy, &mut b.host, KEY, ticket, call, now),
        Err(crate::store::UpdateError::Contended)
    );
    b.host.cas_conflicts = 0;
    assert_eq!(
        b.record().state,
        State::Closed,
        "the failure was not counted"
    );
    b.call(500);
    b.host.advance_ms(1000);
    b.host.cas_conflicts = usize::MAX;
    assert_eq!(
        b.reject(),
        (State::HalfOpen, 1),
        "no probe without counting it"
    );
    assert_eq!(
        b.admit().state,
        State::Open,
        "the gauge shows the stored state"
    );
    b.host.cas_conflicts = 0;
    assert_eq!(b.record().state, State::Open);
    assert!(b.pass().probe);
}

#[test]
fn the_outcome_reports_the_state_the_record_is_in() {
    let mut b = Breaker::new(r#"{"consecutive_failures": 1, "open_ms": 1000}"#);
    assert_eq!(b.admit().state, State::Closed);
    b.call(500);
    assert_eq!(b.admit().state, State::Open);
    b.host.advance_ms(1000);
    assert_eq!(b.admit().state, State::HalfOpen);
    assert_eq!(b.admit().state, State::HalfOpen);
}

#[test]
fn keys_name_the_plugin_the_kind_and_the_name() {
    assert_eq!(
        super::shared_key("p/r", KeyBy::Route, "checkout"),
        "p/r/breaker/route/checkout"
    );
    assert_eq!(
        super::shared_key("p/r", KeyBy::Cluster, "outbound|80||shop"),
        "p/r/breaker/cluster/outbound|80||shop"
    );
}

// ---- each VM's view: trusted closed state, batched successes ----

/// One VM of a worker: its host (sharing shared data with the other VMs') and its view.
struct Worker {
    host: FakeHost,
    local: Local,
}

impl Worker {
    fn first() -> Self {
        Self {
            host: FakeHost::new(),
            local: Local::default(),
        }
    }

    fn another(&self) -> Self {
        Self {
            host: self.host.another_vm(),
            local: Local::default(),
        }
    }

    fn admit(&mut self, policy: &BreakerPolicy) -> Admission {
        let now = self.host.now;
        self.local.admit(policy, &mut self.host, KEY, now).result
    }

    /// A request that passes and ends with `status`, 1 ms later; whether anything was written.
    fn call(&mut self, policy: &BreakerPolicy, status: u16) -> bool {
        let Admission::Pass(ticket) = self.admit(policy) else {
            panic!("expected to pass");
        };
        self.host.advance_ms(1);
        let call = classify::classify(
            &finished(Some(status), 0, true, 1),
            &policy.failure_status,
            policy.grpc_failure_status,
            None,
        );
        let now = self.host.now;
        let written = self
            .local
            .complete(policy, &mut self.host, KEY, ticket, call, now)
            .unwrap();
        written.is_some()
    }

    fn shared_calls(&self) -> (usize, usize) {
        (self.host.calls().shared_gets, self.host.calls().shared_sets)
    }

    fn record(&self) -> Record {
        Record::decode(self.host.shared_get(KEY).map(|s| s.value).as_deref())
    }
}

#[test]
fn a_closed_state_read_less_than_trust_ago_admits_without_shared_data() {
    let policy = policy(r#"{"consecutive_failures": 3}"#);
    let mut w = Worker::first();
    assert!(machine::create(&mut w.host, KEY));
    assert!(matches!(w.admit(&policy), Admission::Pass(_)));
    let read = w.shared_calls();
    for _ in 0..4 {
        w.host.advance_ms(1);
        assert!(matches!(w.admit(&policy), Admission::Pass(_)));
    }
    assert_eq!(w.shared_calls(), read, "trusted: no shared data");
    w.host.advance_ms(1);
    w.admit(&policy);
    assert_eq!(w.shared_calls().0, read.0 + 1, "TRUST passed: read again");
}

#[test]
fn successes_wait_in_a_batch_and_reach_the_record_together() {
    let policy = policy(r#"{"failure_rate_percent": 50, "min_requests": 100}"#);
    let mut w = Worker::first();
    assert!(machine::create(&mut w.host, KEY));
    // 5 ms of successes: one write, when the batch is TRUST old.
    let writes: Vec<bool> = (0..6).map(|_| w.call(&policy, 200)).collect();
    assert_eq!(writes, [false, false, false, false, false, true]);
    assert_eq!(w.record().window(w.host.now, policy.bucket).calls, 6);
    // A failure goes at once and takes the batch with it: nothing is lost or counted twice.
    assert!(!w.call(&policy, 200));
    assert!(w.call(&policy, 503));
    let window = w.record().window(w.host.now, policy.bucket);
    assert_eq!((window.calls, window.failures), (8, 1));
    assert_eq!(w.record().consecutive_failures, 1);
    // The tick writes what waits.
    assert!(!w.call(&policy, 200));
    let now = w.host.now;
    assert!(w.local.flush(&policy, &mut w.host, KEY, now).is_some());
    assert!(
        w.local.flush(&policy, &mut w.host, KEY, now).is_none(),
        "nothing left"
    );
    assert_eq!(w.record().window(w.host.now, policy.bucket).calls, 9);
}

#[test]
fn a_batch_holds_at_most_max_batch_successes() {
    let policy = policy(r#"{"consecutive_failures": 3}"#);
    let mut w = Worker::first();
    assert!(machine::create(&mut w.host, KEY));
    let mut writes = 0;
    for _ in 0..=machine::MAX_BATCH {
        let Admission::Pass(ticket) = w.admit(&policy) else {
            panic!("closed");
        };
        let call = classify_http(&finished(Some(200), 0, true, 1), &five_xx(), None);
        let now = w.host.now;
        writes += usize::from(
            w.local
                .complete(&policy, &mut w.host, KEY, ticket, call, now)
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(writes, 1);
    let window = w.record().window(w.host.now, policy.bucket);
    assert_eq!(window.calls, machine::MAX_BATCH + 1);
}

#[test]
fn a_worker_admits_at_most_trust_after_another_opened_the_breaker() {
    let policy = policy(r#"{"consecutive_failures": 2, "open_ms": 60000}"#);
    let mut a = Worker::first();
    assert!(machine::create(&mut a.host, KEY));
    let mut b = a.another();
    // b reads the breaker closed; a opens it a moment later.
    assert!(matches!(b.admit(&policy), Admission::Pass(_)));
    let read_at = b.host.now;
    a.call(&policy, 503);
    a.call(&policy, 503);
    assert_eq!(a.record().state, State::Open);
    // b still trusts what it read, until TRUST has passed since.
    b.host.now = read_at + machine::TRUST - 1;
    assert!(matches!(b.admit(&policy), Admission::Pass(_)));
    b.host.now = read_at + machine::TRUST;
    assert!(matches!(
        b.admit(&policy),
        Admission::Reject {
            state: State::Open,
            ..
        }
    ));
}

#[test]
fn batched_successes_from_before_a_transition_change_nothing() {
    let policy = policy(r#"{"consecutive_failures": 2, "open_ms": 60000}"#);
    let mut a = Worker::first();
    assert!(machine::create(&mut a.host, KEY));
    let mut b = a.another();
    assert!(!b.call(&policy, 200), "batched");
    a.call(&policy, 503);
    a.call(&policy, 503);
    let opened = a.record();
    let now = b.host.now;
    assert!(b.local.flush(&policy, &mut b.host, KEY, now).is_some());
    // The batch was of the closed generation: the open record is as it was.
    assert_eq!(b.record(), opened);
}

#[test]
fn a_clock_that_went_back_trusts_nothing() {
    let policy = policy(r#"{"consecutive_failures": 3}"#);
    let mut w = Worker::first();
    assert!(machine::create(&mut w.host, KEY));
    w.admit(&policy);
    let read = w.shared_calls();
    w.host.now -= NANOS_PER_MS;
    w.admit(&policy);
    assert_eq!(w.shared_calls().0, read.0 + 1);
}

#[test]
fn a_batched_success_from_before_a_run_of_failures_does_not_end_it() {
    // Worker b's success waits in its batch while a's failure goes in; b's own failure then
    // writes both. The success came first: the run is 2, and a third failure opens.
    let policy = policy(r#"{"consecutive_failures": 3, "open_ms": 60000}"#);
    let mut a = Worker::first();
    assert!(machine::create(&mut a.host, KEY));
    let mut b = a.another();
    assert!(!b.call(&policy, 200), "batched");
    a.host.now = b.host.now + 10 * NANOS_PER_MS;
    assert!(a.call(&policy, 503));
    b.host.now = a.host.now + 10 * NANOS_PER_MS;
    assert!(b.call(&policy, 503), "the failure writes the batch with it");
    let record = b.record();
    assert_eq!(record.consecutive_failures, 2);
    assert_eq!(record.window(b.host.now, policy.bucket).calls, 3);
    a.host.now = b.host.now + NANOS_PER_MS;
    a.call(&policy, 503);
    assert_eq!(a.record().state, State::Open);
}

#[test]
fn a_batched_success_after_the_first_failure_ends_the_run() {
    let policy = policy(r#"{"consecutive_failures": 3}"#);
    let mut a = Worker::first();
    assert!(machine::create(&mut a.host, KEY));
    let mut b = a.another();
    assert!(a.call(&policy, 503));
    b.host.now = a.host.now + NANOS_PER_MS;
    assert!(!b.call(&policy, 200), "batched");
    let now = b.host.now;
    assert!(b.local.flush(&policy, &mut b.host, KEY, now).is_some());
    assert_eq!(b.record().consecutive_failures, 0);
}

#[test]
fn transition_reasons_are_the_documented_label_values() {
    let reasons = [
        (Reason::ConsecutiveFailures, "consecutive_failures"),
        (Reason::FailureRate, "failure_rate"),
        (Reason::SlowCallRate, "slow_call_rate"),
        (Reason::OpenElapsed, "open_elapsed"),
        (Reason::ProbeFailed, "probe_failed"),
        (Reason::ProbeLost, "probe_lost"),
        (Reason::ProbesSucceeded, "probes_succeeded"),
    ];
    for (reason, label) in reasons {
        assert_eq!(reason.as_str(), label);
    }
}

#[test]
fn creating_reports_a_refused_write_and_keeps_an_existing_record() {
    let mut host = FakeHost::new();
    host.refuse_shared_writes = true;
    assert!(!machine::create(&mut host, KEY), "refused: not created");
    assert!(host.shared_get(KEY).is_none());
    host.refuse_shared_writes = false;
    assert!(machine::create(&mut host, KEY));
    host.refuse_shared_writes = true;
    assert!(
        machine::create(&mut host, KEY),
        "there already: nothing to write"
    );
}

#[test]
fn the_worker_that_opened_the_breaker_trusts_no_closed_state() {
    let policy = policy(r#"{"consecutive_failures": 2, "open_ms": 60000}"#);
    let mut w = Worker::first();
    assert!(machine::create(&mut w.host, KEY));
    w.call(&policy, 503);
    w.call(&policy, 503);
    assert_eq!(w.record().state, State::Open);
    // At once, within TRUST of its own write: rejected, not passed on an old closed read.
    assert!(matches!(
        w.admit(&policy),
        Admission::Reject {
            state: State::Open,
            ..
        }
    ));
}
