use super::*;
use mesh_policy::breaker::classify::flags;
use mesh_policy::breaker::record::Record;
use mesh_policy::fake::{FakeHost, WriteRace, bind_route};

fn plugin() -> Plugin {
    Plugin {
        name: "mesh.breaker".to_owned(),
        root_id: "mesh.breaker".to_owned(),
    }
}

fn bound(json: &str, route: &str, host: &mut FakeHost) -> (Breaker, BreakerRoute) {
    let filter = Breaker::new(&plugin());
    let bound = bind_route(&filter, json, route, host).unwrap();
    (filter, bound)
}

/// Envoy's log-phase properties for an upstream response with `status`.
fn upstream_answered(host: &mut FakeHost, status: u64) {
    host.set_property(&["response", "code"], status.to_le_bytes());
    host.set_property(&["response", "flags"], 0u64.to_le_bytes());
    host.set_property(&["response", "code_details"], "via_upstream");
}

/// A full request: admitted, answered by the upstream with `status`, finished.
fn call(filter: &Breaker, route: &BreakerRoute, host: &mut FakeHost, status: u64) {
    let (verdict, mut pending) = filter.on_request(route, host);
    assert_eq!(verdict, FilterVerdict::Continue);
    upstream_answered(host, status);
    filter.on_response(route, &mut pending, host);
    filter.on_done(route, &mut pending, host);
}

const FRAGILE: &str = r#"{"routes": {"fragile": {
    "consecutive_failures": 3, "open_ms": 5000,
    "fallback": {"headers": {"content-type": "application/json"}, "body": "{\"error\":\"circuit open\"}"}
}}}"#;

/// The stat name of what the breaker counted, on `route`.
fn stat_name(counted: Counted, route: &str) -> String {
    let (base, labels) = counted.metric();
    let mut name = format!("{base};route={route}");
    for (label, value) in labels {
        name.push_str(&format!(";{label}={value}"));
    }
    name
}

/// The counter on `fragile` whose first label value is `value` (`slow`: the slow calls), of
/// HTTP calls.
fn stat(host: &FakeHost, value: &str) -> i64 {
    let counted = Counted::ALL
        .into_iter()
        .find(|c| c.metric().1.first().map_or("slow", |(_, v)| v) == value)
        .unwrap_or_else(|| panic!("nothing counts {value}"));
    host.metric(&stat_name(counted, "fragile")).unwrap()
}

#[test]
fn a_passing_call_updates_the_state_gauge_once() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    call(&filter, &route, &mut host, 200);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(0));
    // `allowed` and `success`: the success waits in the VM's batch, nothing is written, so
    // the gauge (already 0) is not set again.
    assert_eq!(host.calls().metric_updates, 2);
    assert_eq!((stat(&host, "allowed"), stat(&host, "success")), (1, 1));
}

#[test]
fn three_failures_open_it_and_the_fallback_answers_with_state_and_retry_after() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    for _ in 0..3 {
        call(&filter, &route, &mut host, 500);
    }
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(1));
    assert_eq!(
        host.metric("mesh_breaker_transitions_total;route=fragile;to=open"),
        Some(1)
    );
    host.advance_ms(1500);
    let (verdict, pending) = filter.on_request(&route, &mut host);
    assert!(pending.is_none());
    let FilterVerdict::Reply(reply) = verdict else {
        panic!("expected the fallback, got {verdict:?}");
    };
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.headers,
        [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-circuit-state".to_owned(), "open".to_owned()),
            ("retry-after".to_owned(), "4".to_owned()),
        ]
    );
    assert_eq!(reply.body, br#"{"error":"circuit open"}"#);
    assert_eq!(stat(&host, "allowed"), 3);
    assert_eq!(stat(&host, "failure"), 3);
    assert_eq!(stat(&host, "rejected"), 1);
}

#[test]
fn the_probe_is_counted_and_its_success_closes_and_sets_the_gauge() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    for _ in 0..3 {
        call(&filter, &route, &mut host, 503);
    }
    host.advance_ms(5000);
    let (verdict, mut probe) = filter.on_request(&route, &mut host);
    assert_eq!(verdict, FilterVerdict::Continue);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(2));
    let (second, _) = filter.on_request(&route, &mut host);
    let FilterVerdict::Reply(reply) = second else {
        panic!("over the probe budget: {second:?}");
    };
    assert!(
        reply
            .headers
            .contains(&("x-circuit-state".to_owned(), "half_open".to_owned()))
    );
    upstream_answered(&mut host, 200);
    filter.on_response(&route, &mut probe, &mut host);
    filter.on_done(&route, &mut probe, &mut host);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(0));
    assert_eq!(stat(&host, "probe"), 1);
    assert_eq!(stat(&host, "success"), 1);
    for to in ["open", "half_open", "closed"] {
        assert_eq!(
            host.metric(&format!(
                "mesh_breaker_transitions_total;route=fragile;to={to}"
            )),
            Some(1),
            "{to}"
        );
    }
}

#[test]
fn a_local_reply_after_a_reset_or_timeout_is_a_failure() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    for (code, flag, details) in [
        (
            503u64,
            flags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{remote_connection_failure}",
        ),
        (504, flags::UPSTREAM_REQUEST_TIMEOUT, "response_timeout"),
    ] {
        let (_, mut pending) = filter.on_request(&route, &mut host);
        host.set_property(&["response", "code"], code.to_le_bytes());
        host.set_property(&["response", "flags"], flag.to_le_bytes());
        host.set_property(&["response", "code_details"], details);
        filter.on_response(&route, &mut pending, &mut host);
        filter.on_done(&route, &mut pending, &mut host);
    }
    assert_eq!(stat(&host, "failure"), 2);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(0));
}

#[test]
fn a_client_that_hangs_up_is_ignored() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    call(&filter, &route, &mut host, 500);
    call(&filter, &route, &mut host, 500);
    let (_, mut pending) = filter.on_request(&route, &mut host);
    // No response phase; the log phase has no status.
    host.properties.clear();
    host.set_property(
        &["response", "flags"],
        flags::DOWNSTREAM_CONNECTION_TERMINATION.to_le_bytes(),
    );
    host.set_property(
        &["response", "code_details"],
        "downstream_remote_disconnect",
    );
    filter.on_done(&route, &mut pending, &mut host);
    assert_eq!(stat(&host, "ignored"), 1);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(0));
    call(&filter, &route, &mut host, 500);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(1));
}

#[test]
fn latency_ends_at_the_response_headers() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"routes": {"fragile": {"slow_call_ms": 100, "slow_call_rate_percent": 50, "min_requests": 1}}}"#,
        "fragile",
        &mut host,
    );
    let (_, mut pending) = filter.on_request(&route, &mut host);
    host.advance_ms(99);
    upstream_answered(&mut host, 200);
    filter.on_response(&route, &mut pending, &mut host);
    // A long body does not make the call slow.
    host.advance_ms(5000);
    filter.on_done(&route, &mut pending, &mut host);
    assert_eq!(stat(&host, "slow"), 0);
    let (_, mut pending) = filter.on_request(&route, &mut host);
    host.advance_ms(100);
    filter.on_response(&route, &mut pending, &mut host);
    filter.on_done(&route, &mut pending, &mut host);
    assert_eq!(stat(&host, "slow"), 1);
    assert_eq!(stat(&host, "success"), 2);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(1));
}

#[test]
fn a_long_response_is_counted_when_its_stream_ends() {
    // A 10 s window of 1 s buckets: a call counted at its response headers, 10 s back,
    // would land in the slot of the current second and wipe the calls counted there.
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"routes": {"fragile": {"window_ms": 10000, "failure_rate_percent": 30, "min_requests": 3}}}"#,
        "fragile",
        &mut host,
    );
    let (_, mut long) = filter.on_request(&route, &mut host);
    upstream_answered(&mut host, 200);
    filter.on_response(&route, &mut long, &mut host);
    host.advance_ms(10_500);
    call(&filter, &route, &mut host, 200);
    upstream_answered(&mut host, 200);
    filter.on_done(&route, &mut long, &mut host);
    // Three calls in the window now, one failed: 33 % opens it (gauge 1).
    call(&filter, &route, &mut host, 500);
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(1));
}

#[test]
fn a_call_is_counted_once() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    let (_, mut pending) = filter.on_request(&route, &mut host);
    upstream_answered(&mut host, 500);
    filter.on_response(&route, &mut pending, &mut host);
    filter.on_done(&route, &mut pending, &mut host);
    filter.on_done(&route, &mut pending, &mut host);
    assert_eq!(stat(&host, "failure"), 1);
}

#[test]
fn keyed_by_cluster_each_cluster_has_its_breaker_and_gauge() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"key": "cluster", "consecutive_failures": 1}}"#,
        "fragile",
        &mut host,
    );
    host.set_property(&["xds", "cluster_name"], "v1");
    call(&filter, &route, &mut host, 500);
    host.set_property(&["xds", "cluster_name"], "v2");
    call(&filter, &route, &mut host, 200);
    assert_eq!(
        host.metric("mesh_breaker_state;route=fragile;cluster=v1"),
        Some(1)
    );
    assert_eq!(
        host.metric("mesh_breaker_state;route=fragile;cluster=v2"),
        Some(0)
    );
    let (verdict, _) = filter.on_request(&route, &mut host);
    assert_eq!(verdict, FilterVerdict::Continue, "v2 is closed");
    host.set_property(&["xds", "cluster_name"], "v1");
    let (verdict, _) = filter.on_request(&route, &mut host);
    assert!(matches!(verdict, FilterVerdict::Reply(_)), "v1 is open");
}

#[test]
fn the_same_cluster_is_one_breaker_for_every_route() {
    let mut host = FakeHost::new();
    let json = r#"{"default": {"key": "cluster", "consecutive_failures": 2}}"#;
    let (filter, checkout) = bound(json, "checkout", &mut host);
    let (_, catalog) = bound(json, "catalog", &mut host);
    host.set_property(&["xds", "cluster_name"], "v1");
    call(&filter, &checkout, &mut host, 500);
    call(&filter, &catalog, &mut host, 500);
    // One VM has one view of the cluster's breaker, whichever route wrote it.
    let (verdict, _) = filter.on_request(&checkout, &mut host);
    assert!(matches!(verdict, FilterVerdict::Reply(_)));
}

#[test]
fn clusters_per_route_are_capped_and_a_missing_cluster_passes_untracked() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"key": "cluster", "consecutive_failures": 1}}"#,
        "r",
        &mut host,
    );
    let (verdict, pending) = filter.on_request(&route, &mut host);
    assert_eq!(verdict, FilterVerdict::Continue);
    assert!(pending.is_none(), "no cluster_name: untracked");
    for i in 0..MAX_CLUSTERS_PER_ROUTE + 3 {
        host.set_property(&["xds", "cluster_name"], format!("c{i}"));
        let (_, pending) = filter.on_request(&route, &mut host);
        assert_eq!(pending.is_some(), i < MAX_CLUSTERS_PER_ROUTE, "cluster {i}");
    }
    assert_eq!(route.breakers.borrow().len(), MAX_CLUSTERS_PER_ROUTE);
}

const FRAGILE_KEY: &str = "mesh.breaker/mesh.breaker/breaker/route/fragile";

fn record(host: &FakeHost, key: &str) -> Option<Record> {
    host.shared_get(key)
        .map(|shared| Record::decode(Some(&shared.value)))
}

#[test]
fn binding_creates_the_record_and_keeps_one_another_vm_wrote() {
    let mut host = FakeHost::new();
    assert_eq!(record(&host, FRAGILE_KEY), None);
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    assert_eq!(record(&host, FRAGILE_KEY), Some(Record::default()));
    call(&filter, &route, &mut host, 500);
    let mut other = host.another_vm();
    bound(FRAGILE, "fragile", &mut other);
    assert_eq!(
        record(&host, FRAGILE_KEY).map(|r| r.consecutive_failures),
        Some(1)
    );
}

#[test]
fn a_cluster_record_is_created_when_the_cluster_is_first_seen() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(
        r#"{"default": {"key": "cluster", "consecutive_failures": 1}}"#,
        "fragile",
        &mut host,
    );
    let key = "mesh.breaker/mesh.breaker/breaker/cluster/v1";
    assert_eq!(record(&host, key), None);
    host.set_property(&["xds", "cluster_name"], "v1");
    let (verdict, _) = filter.on_request(&route, &mut host);
    assert_eq!(verdict, FilterVerdict::Continue);
    assert_eq!(record(&host, key), Some(Record::default()));
}

#[test]
fn two_workers_ending_the_first_calls_at_once_count_both_and_transition_once() {
    // 2: the breaker opens only if both failures land. 1: both calls would open it, the
    // second must find it open already.
    for threshold in [2, 1] {
        let json = format!(r#"{{"default": {{"consecutive_failures": {threshold}}}}}"#);
        let mut a = FakeHost::new();
        let mut b = a.another_vm();
        let (filter, route_a) = bound(&json, "fragile", &mut a);
        let (_, route_b) = bound(&json, "fragile", &mut b);
        let (_, mut pending_a) = filter.on_request(&route_a, &mut a);
        let (_, mut pending_b) = filter.on_request(&route_b, &mut b);
        upstream_answered(&mut a, 500);
        upstream_answered(&mut b, 500);
        // Both read the breaker before either writes; B's write lands first.
        let mut racing = WriteRace::new(&mut a, |_| {
            filter.on_done(&route_b, &mut pending_b, &mut b);
        });
        filter.on_done(&route_a, &mut pending_a, &mut racing);
        assert!(racing.raced(), "B ended in between");
        drop(racing);

        let opened = "mesh_breaker_transitions_total;route=fragile;to=open";
        let transitions = [&a, &b].map(|host| host.metric(opened).unwrap_or(0));
        assert_eq!(transitions.iter().sum::<i64>(), 1, "threshold {threshold}");
        assert_eq!(
            record(&a, FRAGILE_KEY).map(|r| r.state),
            Some(State::Open),
            "threshold {threshold}"
        );
        assert_eq!(stat(&a, "contended") + stat(&b, "contended"), 0);
    }
}

#[test]
fn the_shared_key_carries_the_plugin_prefix() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    call(&filter, &route, &mut host, 500);
    assert!(
        host.shared_get("mesh.breaker/mesh.breaker/breaker/route/fragile")
            .is_some()
    );
}

#[test]
fn every_outcome_and_state_is_defined_at_bind() {
    let mut host = FakeHost::new();
    bound(FRAGILE, "fragile", &mut host);
    let metrics = host.metrics();
    for counted in Counted::ALL {
        assert!(metrics.contains_key(&stat_name(counted, "fragile")));
    }
    for name in [
        "mesh_breaker_requests_total;route=fragile;decision=allowed",
        "mesh_breaker_calls_total;route=fragile;outcome=failure;protocol=http",
        "mesh_breaker_calls_total;route=fragile;outcome=failure;protocol=grpc",
        "mesh_breaker_slow_calls_total;route=fragile",
        "mesh_breaker_store_errors_total;route=fragile;error=contended",
    ] {
        assert!(metrics.contains_key(name), "{name} not in {metrics:?}");
    }
    for to in ["closed", "open", "half_open"] {
        assert!(metrics.contains_key(&format!(
            "mesh_breaker_transitions_total;route=fragile;to={to}"
        )));
    }
    assert_eq!(metrics.get("mesh_breaker_state;route=fragile"), Some(&0));
}

#[test]
fn lost_writes_are_counted_as_store_errors() {
    let mut host = FakeHost::new();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    call(&filter, &route, &mut host, 200);
    // The call is classified and counted, but every write of it loses.
    let (_, mut pending) = filter.on_request(&route, &mut host);
    upstream_answered(&mut host, 500);
    host.cas_conflicts = usize::MAX;
    filter.on_done(&route, &mut pending, &mut host);
    assert_eq!(stat(&host, "failure"), 1);
    assert_eq!(stat(&host, "contended"), 1);
    // Opened for real, then a probe whose claim cannot be written: rejected as half-open.
    host.cas_conflicts = 0;
    for _ in 0..3 {
        call(&filter, &route, &mut host, 500);
    }
    host.advance_ms(5000);
    host.cas_conflicts = usize::MAX;
    let (verdict, pending) = filter.on_request(&route, &mut host);
    assert!(pending.is_none());
    let FilterVerdict::Reply(reply) = verdict else {
        panic!("an unclaimed probe must not pass: {verdict:?}");
    };
    assert!(
        reply
            .headers
            .contains(&("x-circuit-state".to_owned(), "half_open".to_owned()))
    );
    assert_eq!(stat(&host, "contended"), 2);
    assert_eq!(stat(&host, "rejected"), 1);
    assert_eq!(stat(&host, "failed"), 0);
}

#[test]
fn grpc_failures_open_it_counted_as_grpc_and_the_fallback_is_in_grpc_form() {
    let mut host = FakeHost::new().grpc_call();
    let (filter, route) = bound(FRAGILE, "fragile", &mut host);
    host.response_trailers = vec![("grpc-status".into(), b"14".to_vec())];
    for _ in 0..3 {
        let (verdict, mut pending) = filter.on_request(&route, &mut host);
        assert_eq!(verdict, FilterVerdict::Continue);
        upstream_answered(&mut host, 200);
        filter.on_response(&route, &mut pending, &mut host);
        filter.on_response_trailers(&route, &mut pending, &mut host);
        filter.on_done(&route, &mut pending, &mut host);
    }
    assert_eq!(host.metric("mesh_breaker_state;route=fragile"), Some(1));
    let calls = |outcome: &str, protocol: &str| {
        host.metric(&format!(
            "mesh_breaker_calls_total;route=fragile;outcome={outcome};protocol={protocol}"
        ))
    };
    assert_eq!(calls("failure", "grpc"), Some(3));
    assert_eq!(calls("failure", "http"), Some(0));
    let (verdict, _) = filter.on_request(&route, &mut host);
    let FilterVerdict::Reply(reply) = verdict else {
        panic!("expected the fallback, got {verdict:?}");
    };
    let status = reply.grpc.expect("a gRPC call's fallback is in gRPC form");
    assert_eq!(status.code, mesh_policy::grpc::Code::UNAVAILABLE);
}
