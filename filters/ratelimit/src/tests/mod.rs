use super::*;
use mesh_policy::fake::{FakeHost, bind_route};

fn bound(json: &str, route: &str, host: &mut FakeHost) -> (RateLimit, RateLimitRoute) {
    let filter = RateLimit::new(&Plugin {
        name: "mesh.ratelimit".to_owned(),
        root_id: "mesh.ratelimit".to_owned(),
    });
    let bound = bind_route(&filter, json, route, host).unwrap();
    (filter, bound)
}

const LIMITED: &str = r#"{"routes": {"limited": {"limits": [{"rate_per_s": 5, "burst": 2, "key": {"header": "x-api-key"}}]}}}"#;

#[test]
fn allowed_requests_get_the_headers_rejected_ones_a_429_and_both_are_counted() {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(LIMITED, "limited", &mut host);
    let (verdict, mut budget) = filter.on_request(&route, &mut host);
    assert_eq!(verdict, Verdict::Continue);
    filter.on_response(&route, &mut budget, &mut host);
    assert_eq!(host.response_values("x-ratelimit-limit"), ["2"]);
    assert_eq!(host.response_values("x-ratelimit-remaining"), ["1"]);
    assert_eq!(host.response_values("x-ratelimit-reset"), ["1"]);
    filter.on_request(&route, &mut host);
    let (verdict, state) = filter.on_request(&route, &mut host);
    let Verdict::Reply(reply) = verdict else {
        panic!("not rejected: {verdict:?}")
    };
    assert_eq!(state.budget, None);
    assert_eq!(reply.status, 429);
    assert!(reply.headers.contains(&("retry-after".into(), "1".into())));
    assert!(
        reply
            .headers
            .contains(&("x-ratelimit-remaining".into(), "0".into()))
    );
    let metric = |decision: &str| {
        host.metric(&format!(
            "mesh_ratelimit_requests_total;route=limited;decision={decision}"
        ))
    };
    assert_eq!(metric("allowed"), Some(2));
    assert_eq!(metric("rejected"), Some(1));
    assert_eq!(metric("dry_run_rejected"), Some(0));
}

#[test]
fn dry_run_lets_everything_through_without_headers_and_counts() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}], "dry_run": true}}"#,
        "",
        &mut host,
    );
    for _ in 0..5 {
        let (verdict, budget) = filter.on_request(&route, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(budget.budget, None);
    }
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=unnamed;decision=dry_run_rejected"),
        Some(4)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=unnamed;decision=allowed"),
        Some(1)
    );
}

#[test]
fn store_errors_are_counted_and_fail_open() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}]}}"#,
        "r",
        &mut host,
    );
    host.cas_conflicts = usize::MAX;
    for _ in 0..3 {
        let (verdict, budget) = filter.on_request(&route, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(budget.budget, None);
    }
    assert_eq!(
        host.metric("mesh_ratelimit_store_errors_total;route=r;error=contended"),
        Some(3)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=r;decision=allowed"),
        Some(3)
    );
}

#[test]
fn headers_can_be_turned_off() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 5}], "rate_limit_headers": false}}"#,
        "r",
        &mut host,
    );
    let (_, mut budget) = filter.on_request(&route, &mut host);
    assert_eq!(budget.budget, None);
    filter.on_response(&route, &mut budget, &mut host);
    assert!(host.response_values("x-ratelimit-limit").is_empty());
}

const GLOBAL: &str = r#"{"routes": {"g": {"limits": [{"rate_per_s": 1, "burst": 2}, {"scope": "global", "key": {"header": "x-api-key"}}], "service_cluster": "rls", "domain": "mesh"}}}"#;

fn rls_answer(code: i32, reset_s: i64, headers: &[(&str, &str)]) -> Vec<u8> {
    rls_answer_limited(code, None, reset_s, headers)
}

/// An answer whose descriptor names its limit: `(requests per minute, remaining)`.
fn rls_answer_limited(
    code: i32,
    limit: Option<(u32, u32)>,
    reset_s: i64,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    use mesh_policy::ratelimit::rls::{
        DescriptorStatus, Duration, HeaderValue, RateLimit, RateLimitResponse,
    };
    let header = |(k, v): &(&str, &str)| HeaderValue {
        key: (*k).to_owned(),
        value: (*v).to_owned(),
        raw_value: Vec::new(),
    };
    prost::Message::encode_to_vec(&RateLimitResponse {
        overall_code: code,
        statuses: vec![DescriptorStatus {
            code,
            current_limit: limit.map(|(requests_per_unit, _)| RateLimit {
                requests_per_unit,
                unit: 2,
            }),
            limit_remaining: limit.map_or(0, |(_, remaining)| remaining),
            duration_until_reset: Some(Duration {
                seconds: reset_s,
                nanos: 0,
            }),
        }],
        response_headers_to_add: headers.iter().map(header).collect(),
        request_headers_to_add: headers.iter().map(header).collect(),
    })
}

/// One request with `x-api-key: k` through `json`'s route `g`, whose service answers
/// `answer` (the call lets it through), up to its response: the client's response headers.
fn global_response(json: &str, answer: Vec<u8>) -> FakeHost {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(json, "g", &mut host);
    let (_, mut state) = filter.on_request(&route, &mut host);
    let verdict = filter.on_call_done(&route, &mut state, CallOutcome::Ok(answer), &mut host);
    assert_eq!(verdict, Verdict::Continue);
    filter.on_response(&route, &mut state, &mut host);
    host
}

fn metric(host: &FakeHost, name: &str) -> Option<i64> {
    host.metric(&format!("{name};route=g"))
}

#[test]
fn a_locally_admitted_request_calls_the_service_and_goes_on_with_its_headers() {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(GLOBAL, "g", &mut host);
    let (verdict, mut state) = filter.on_request(&route, &mut host);
    let Verdict::Call(call) = verdict else {
        panic!("no call: {verdict:?}")
    };
    assert_eq!(call.cluster, "rls");
    // Not counted until the service answers.
    assert_eq!(
        metric(&host, "mesh_ratelimit_requests_total;decision=allowed"),
        None
    );
    host.advance_ms(3);
    let answer = rls_answer(1, 1, &[("x-from-rls", "yes")]);
    let verdict = filter.on_call_done(&route, &mut state, CallOutcome::Ok(answer), &mut host);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(host.request_header("x-from-rls"), Some(&b"yes"[..]));
    filter.on_response(&route, &mut state, &mut host);
    assert_eq!(host.response_values("x-from-rls"), ["yes"]);
    assert_eq!(host.response_values("x-ratelimit-limit"), ["2"]);
    let calls = |outcome: &str| {
        host.metric(&format!(
            "mesh_ratelimit_global_calls_total;route=g;outcome={outcome}"
        ))
    };
    assert_eq!(calls("ok"), Some(1));
    assert_eq!(calls("over_limit"), Some(0));
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=allowed"),
        Some(1)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_global_call_duration_ms;route=g"),
        Some(3)
    );
}

#[test]
fn ratelimit_headers_tell_the_tighter_of_the_local_and_the_global_limit() {
    // Local: burst 2, 1 left after this request.
    for (global, expected) in [
        // The service has more left: the local limit is the tighter.
        (Some((60, 30)), ["2", "1"]),
        // The service has none left (the last request it admits).
        (Some((60, 0)), ["60", "0"]),
        // The service names no limit.
        (None, ["2", "1"]),
    ] {
        let host = global_response(GLOBAL, rls_answer_limited(1, global, 40, &[]));
        let got = [
            host.response_values("x-ratelimit-limit"),
            host.response_values("x-ratelimit-remaining"),
        ];
        assert_eq!(got, expected.map(|v| vec![v.to_owned()]), "{global:?}");
    }
}

#[test]
fn a_ratelimit_header_from_the_service_replaces_the_filters_own() {
    let answer = rls_answer_limited(1, Some((60, 0)), 40, &[("X-RateLimit-Limit", "60;w=60")]);
    let host = global_response(GLOBAL, answer);
    // All three of ours give way, so the client never gets two limits' numbers mixed.
    assert_eq!(host.response_values("x-ratelimit-limit"), ["60;w=60"]);
    assert!(host.response_values("x-ratelimit-remaining").is_empty());
    assert!(host.response_values("x-ratelimit-reset").is_empty());
}

#[test]
fn no_ratelimit_headers_from_the_service_in_dry_run_or_with_headers_off() {
    for option in [r#""dry_run": true"#, r#""rate_limit_headers": false"#] {
        let json = GLOBAL.replace(r#""domain""#, &format!(r#"{option}, "domain""#));
        let host = global_response(&json, rls_answer_limited(1, Some((60, 0)), 40, &[]));
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(host.response_values(name).is_empty(), "{option}: {name}");
        }
    }
}

#[test]
fn over_limit_is_the_local_rejection_with_the_services_retry_after() {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(GLOBAL, "g", &mut host);
    let (_, mut state) = filter.on_request(&route, &mut host);
    let answer = rls_answer_limited(2, Some((60, 0)), 42, &[("x-limited-by", "rls")]);
    let verdict = filter.on_call_done(&route, &mut state, CallOutcome::Ok(answer), &mut host);
    let Verdict::Reply(reply) = verdict else {
        panic!("not rejected: {verdict:?}")
    };
    assert_eq!(reply.status, 429);
    let values = |name: &str| -> Vec<&str> {
        let named = reply.headers.iter().filter(|(n, _)| n == name);
        named.map(|(_, v)| v.as_str()).collect()
    };
    assert_eq!(values("retry-after"), ["42"]);
    // The service's limit, not the local one (burst 2).
    assert_eq!(values("x-ratelimit-limit"), ["60"]);
    assert_eq!(values("x-ratelimit-remaining"), ["0"]);
    assert_eq!(values("x-ratelimit-reset"), ["42"]);
    assert_eq!(values("x-limited-by"), ["rls"]);
    // Request headers of an over-limit answer are not applied.
    assert_eq!(host.request_header("x-limited-by"), None);
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=rejected"),
        Some(1)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_global_calls_total;route=g;outcome=over_limit"),
        Some(1)
    );
}

#[test]
fn a_local_rejection_costs_no_call() {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(GLOBAL, "g", &mut host);
    for _ in 0..2 {
        let (verdict, _) = filter.on_request(&route, &mut host);
        assert!(matches!(verdict, Verdict::Call(_)));
    }
    let (verdict, _) = filter.on_request(&route, &mut host);
    assert!(matches!(verdict, Verdict::Reply(ref r) if r.status == 429));
}

#[test]
fn failures_fail_open_by_default_and_503_with_failure_mode_deny() {
    let failures = [
        CallOutcome::NotSent,
        CallOutcome::Failed { grpc_status: 14 },
        CallOutcome::Failed { grpc_status: 4 },
        CallOutcome::Ok(b"\xff\xff".to_vec()),
        CallOutcome::Ok(Vec::new()),
    ];
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let open = r#"{"routes": {"g": {"limits": [{"scope": "global", "key": "route"}], "service_cluster": "rls", "domain": "mesh"}}}"#;
    let (filter, route) = bound(open, "g", &mut host);
    for outcome in failures.clone() {
        let (verdict, mut state) = filter.on_request(&route, &mut host);
        assert!(matches!(verdict, Verdict::Call(_)));
        let verdict = filter.on_call_done(&route, &mut state, outcome, &mut host);
        assert_eq!(verdict, Verdict::Continue);
    }
    assert_eq!(
        host.metric("mesh_ratelimit_global_calls_total;route=g;outcome=error"),
        Some(5)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=allowed"),
        Some(5)
    );
    let deny = open.replace(
        r#""domain": "mesh""#,
        r#""domain": "mesh", "failure_mode_deny": true"#,
    );
    let mut host = FakeHost::new();
    let (filter, route) = bound(&deny, "g", &mut host);
    for outcome in failures {
        let (_, mut state) = filter.on_request(&route, &mut host);
        let verdict = filter.on_call_done(&route, &mut state, outcome, &mut host);
        assert!(
            matches!(verdict, Verdict::Reply(ref r) if r.status == 503),
            "{verdict:?}"
        );
    }
    // No client was over a limit: the 503s are not rejections.
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=unavailable"),
        Some(5)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=rejected"),
        Some(0)
    );
}

#[test]
fn dry_run_counts_a_global_rejection_and_lets_it_through() {
    let mut host = FakeHost::new();
    let json = r#"{"routes": {"g": {"limits": [{"scope": "global"}], "service_cluster": "rls", "domain": "mesh", "dry_run": true}}}"#;
    let (filter, route) = bound(json, "g", &mut host);
    let (_, mut state) = filter.on_request(&route, &mut host);
    let verdict = filter.on_call_done(
        &route,
        &mut state,
        CallOutcome::Ok(rls_answer(2, 1, &[])),
        &mut host,
    );
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=dry_run_rejected"),
        Some(1)
    );
}

#[test]
fn a_store_error_before_a_global_call_is_counted() {
    let mut host = FakeHost::new().with_request_header("x-api-key", "k");
    let (filter, route) = bound(GLOBAL, "g", &mut host);
    host.cas_conflicts = usize::MAX;
    let (verdict, mut state) = filter.on_request(&route, &mut host);
    assert!(matches!(verdict, Verdict::Call(_)), "{verdict:?}");
    assert_eq!(
        host.metric("mesh_ratelimit_store_errors_total;route=g;error=contended"),
        Some(1)
    );
    // Counted once: not again when the service answers.
    let answer = CallOutcome::Ok(rls_answer(1, 1, &[]));
    filter.on_call_done(&route, &mut state, answer, &mut host);
    assert_eq!(
        host.metric("mesh_ratelimit_store_errors_total;route=g;error=contended"),
        Some(1)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=allowed"),
        Some(1)
    );
}

#[test]
fn dry_run_lets_a_failed_call_through_despite_failure_mode_deny() {
    let mut host = FakeHost::new();
    let json = r#"{"routes": {"g": {"limits": [{"scope": "global"}], "service_cluster": "rls", "domain": "mesh", "dry_run": true, "failure_mode_deny": true}}}"#;
    let (filter, route) = bound(json, "g", &mut host);
    for outcome in [
        CallOutcome::NotSent,
        CallOutcome::Failed { grpc_status: 14 },
    ] {
        let (verdict, mut state) = filter.on_request(&route, &mut host);
        assert!(matches!(verdict, Verdict::Call(_)), "{verdict:?}");
        let verdict = filter.on_call_done(&route, &mut state, outcome, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(state.budget, None);
    }
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=dry_run_rejected"),
        Some(2)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_requests_total;route=g;decision=rejected"),
        Some(0)
    );
    assert_eq!(
        host.metric("mesh_ratelimit_global_calls_total;route=g;outcome=error"),
        Some(2)
    );
}

#[test]
fn throttle_reports_the_first_event_then_a_count_per_interval() {
    let throttle = Throttle::default();
    let t0 = 1_000 * NANOS_PER_SEC;
    assert_eq!(throttle.note(t0), Some(1));
    assert_eq!(throttle.note(t0 + 1), None);
    assert_eq!(throttle.note(t0 + 2), None);
    assert_eq!(throttle.note(t0 + LOG_EVERY), Some(3));
}
