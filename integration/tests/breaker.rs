//! The circuit breaker in a real Envoy, with the built `dist/breaker.wasm`, driving the echo
//! upstream with `x-echo-status` and `x-echo-delay-ms` and reading its request count.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mesh_integration::{Mesh, Modules, Reply, RouteSpec};

/// `fragile` and `sibling` go to v1, `other` to v2, `timeout` to v1 with a 300 ms timeout,
/// `down` to a port nothing listens on, `plain` to v1.
fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new("fragile", "/fragile", "v1"),
        RouteSpec::new("sibling", "/sibling", "v1"),
        RouteSpec::new("other", "/other", "v2"),
        RouteSpec::new("timeout", "/timeout", "v1").timeout_ms(300),
        RouteSpec::new("down", "/down", "down"),
        RouteSpec::new("plain", "/plain", "v1"),
    ]
}

fn start(config: &str, workers: u32) -> Mesh {
    Mesh::builder()
        .routes(routes())
        .closed_upstream("down")
        .concurrency(workers)
        .filter("breaker", config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The run-local demo's route: opens after 3 consecutive 5xx, JSON fallback.
fn fragile(open_ms: u64, extra: &str) -> String {
    format!(
        r#"{{"routes": {{"fragile": {{
            "consecutive_failures": 3, "open_ms": {open_ms} {extra},
            "fallback": {{"headers": {{"content-type": "application/json"}},
                          "body": "{{\"error\":\"circuit open\"}}"}}
        }}}}}}"#
    )
}

fn fail(mesh: &Mesh, path: &str) -> Reply {
    mesh.get(path).header("x-echo-status", "500").send()
}

/// Asserts the breaker's fallback answered: nothing from the upstream.
fn assert_fallback(reply: &Reply, state: &str) {
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("x-circuit-state").as_deref(), Some(state));
    assert_eq!(
        reply.service(),
        None,
        "the upstream answered: {}",
        reply.text()
    );
}

/// A breaker counter on `route`: a decision (`allowed`, `probe`, `rejected`), a call's outcome
/// (`success`, `failure`, `ignored`), `slow`, or a store error (`contended`, `failed`).
fn stat(mesh: &Mesh, route: &str, counted: &str) -> u64 {
    mesh.stat(&match counted {
        "allowed" | "probe" | "rejected" => {
            format!("mesh_breaker_requests_total;route={route};decision={counted}")
        }
        "slow" => format!("mesh_breaker_slow_calls_total;route={route}"),
        "contended" | "failed" => {
            format!("mesh_breaker_store_errors_total;route={route};error={counted}")
        }
        _ => format!("mesh_breaker_calls_total;route={route};outcome={counted};protocol=http"),
    })
}

fn transitions(mesh: &Mesh, route: &str, to: &str) -> u64 {
    mesh.stat(&format!(
        "mesh_breaker_transitions_total;route={route};to={to}"
    ))
}

fn gauge(mesh: &Mesh, route: &str) -> u64 {
    mesh.stat(&format!("mesh_breaker_state;route={route}"))
}

/// Waits for `open_ms` to pass (the only waiting these tests do on time).
fn wait_open(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms + 100));
}

/// Polls `check` every 50 ms for at most `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[test]
fn three_failures_open_it_and_the_fallback_answers_without_the_upstream() {
    let mesh = start(&fragile(60_000, ""), 1);
    for _ in 0..3 {
        assert_eq!(fail(&mesh, "/fragile").status, 500);
    }
    let served = mesh.upstream_count("v1");
    assert_eq!(served, 3);
    for _ in 0..5 {
        let reply = mesh.get("/fragile").send();
        assert_fallback(&reply, "open");
        assert_eq!(reply.text(), r#"{"error":"circuit open"}"#);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(mesh.upstream_count("v1"), served, "the upstream was called");
    assert_eq!(stat(&mesh, "fragile", "allowed"), 3);
    assert_eq!(stat(&mesh, "fragile", "failure"), 3);
    assert_eq!(stat(&mesh, "fragile", "rejected"), 5);
    assert_eq!(transitions(&mesh, "fragile", "open"), 1);
    assert_eq!(gauge(&mesh, "fragile"), 1);
    assert!(
        mesh.envoy_log()
            .contains(&format!("breaker route=fragile key={plugin}/{plugin}/breaker/route/fragile from=closed to=open reason=consecutive_failures window_calls=3 window_failures=3", plugin = Modules::current().plugin("breaker"))),
        "the transition is logged"
    );
}

#[test]
fn after_open_ms_a_probe_reaches_the_upstream_and_its_success_closes() {
    let mesh = start(&fragile(1_000, ""), 1);
    for _ in 0..3 {
        fail(&mesh, "/fragile");
    }
    assert_fallback(&mesh.get("/fragile").send(), "open");
    let served = mesh.upstream_count("v1");
    wait_open(1_000);
    let probe = mesh.get("/fragile").send();
    assert_eq!(probe.status, 200);
    assert_eq!(probe.service().as_deref(), Some("v1"));
    assert_eq!(mesh.upstream_count("v1"), served + 1);
    assert_eq!(stat(&mesh, "fragile", "probe"), 1);
    assert_eq!(transitions(&mesh, "fragile", "half_open"), 1);
    assert_eq!(transitions(&mesh, "fragile", "closed"), 1);
    assert_eq!(gauge(&mesh, "fragile"), 0);
    for _ in 0..3 {
        assert_eq!(mesh.get("/fragile").send().service().as_deref(), Some("v1"));
    }
    assert_eq!(mesh.upstream_count("v1"), served + 4);
}

#[test]
fn a_failing_probe_opens_it_again() {
    let mesh = start(&fragile(1_000, ""), 1);
    for _ in 0..3 {
        fail(&mesh, "/fragile");
    }
    wait_open(1_000);
    assert_eq!(
        fail(&mesh, "/fragile").status,
        500,
        "the probe went through"
    );
    assert_eq!(gauge(&mesh, "fragile"), 1);
    let served = mesh.upstream_count("v1");
    assert_fallback(&mesh.get("/fragile").send(), "open");
    assert_eq!(mesh.upstream_count("v1"), served);
    assert_eq!(transitions(&mesh, "fragile", "open"), 2);
    assert_eq!(transitions(&mesh, "fragile", "closed"), 0);
}

#[test]
fn slow_calls_open_it() {
    let mesh = start(
        r#"{"routes": {"fragile": {"slow_call_ms": 200, "slow_call_rate_percent": 50, "min_requests": 2}}}"#,
        1,
    );
    let slow = |mesh: &Mesh| mesh.get("/fragile").header("x-echo-delay-ms", "400").send();
    assert_eq!(slow(&mesh).status, 200);
    assert_eq!(stat(&mesh, "fragile", "slow"), 1);
    assert_eq!(gauge(&mesh, "fragile"), 0, "1 call is under min_requests");
    assert_eq!(slow(&mesh).status, 200);
    assert_eq!(stat(&mesh, "fragile", "slow"), 2);
    assert_eq!(stat(&mesh, "fragile", "success"), 2);
    assert_fallback(&mesh.get("/fragile").send(), "open");
    assert_eq!(mesh.upstream_count("v1"), 2);
}

#[test]
fn failure_rate_waits_for_the_minimum_volume() {
    let mesh = start(
        r#"{"routes": {"fragile": {"failure_rate_percent": 50, "min_requests": 6, "window_ms": 60000}}}"#,
        1,
    );
    for _ in 0..2 {
        assert_eq!(mesh.get("/fragile").send().status, 200);
    }
    // 3 of 5 failed (60 %), but 6 calls are needed.
    for _ in 0..3 {
        assert_eq!(fail(&mesh, "/fragile").status, 500);
    }
    assert_eq!(gauge(&mesh, "fragile"), 0);
    assert_eq!(
        fail(&mesh, "/fragile").status,
        500,
        "the sixth call is let through"
    );
    assert_eq!(mesh.upstream_count("v1"), 6);
    assert_fallback(&mesh.get("/fragile").send(), "open");
    assert_eq!(mesh.upstream_count("v1"), 6);
}

#[test]
fn timeouts_and_refused_connections_are_failures() {
    let mesh = start(
        r#"{"routes": {"timeout": {"consecutive_failures": 2}, "down": {"consecutive_failures": 2}}}"#,
        1,
    );
    for _ in 0..2 {
        let reply = mesh
            .get("/timeout")
            .header("x-echo-delay-ms", "1500")
            .send();
        assert_eq!(
            reply.status,
            504,
            "Envoy's own timeout reply: {}",
            reply.text()
        );
    }
    assert_fallback(&mesh.get("/timeout").send(), "open");
    assert_eq!(stat(&mesh, "timeout", "failure"), 2);
    for _ in 0..2 {
        assert_eq!(mesh.get("/down").send().status, 503);
    }
    assert_fallback(&mesh.get("/down").send(), "open");
    assert_eq!(stat(&mesh, "down", "failure"), 2);
    // Each call counted once: in the log phase, not again for Envoy's local reply.
    assert_eq!(
        stat(&mesh, "timeout", "failure") + stat(&mesh, "down", "failure"),
        4
    );
}

#[test]
fn a_client_that_hangs_up_is_not_a_failure() {
    let mesh = start(r#"{"routes": {"fragile": {"consecutive_failures": 1}}}"#, 1);
    let mut client = TcpStream::connect(mesh.listener()).unwrap();
    client
        .write_all(
            b"GET /fragile HTTP/1.1\r\nhost: mesh\r\nx-echo-status: 500\r\nx-echo-delay-ms: 5000\r\n\r\n",
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || mesh.upstream_count("v1") == 1),
        "the request never reached the upstream"
    );
    drop(client);
    assert!(
        eventually(Duration::from_secs(10), || stat(
            &mesh, "fragile", "ignored"
        ) == 1),
        "{:?}",
        mesh.stats()
    );
    assert_eq!(stat(&mesh, "fragile", "failure"), 0);
    assert_eq!(mesh.get("/fragile").send().status, 200, "still closed");
}

/// Sends requests on new connections until each of the two workers has taken at least
/// `each` of them; returns the replies. Bounded: at most 60 requests.
fn on_both_workers(mesh: &Mesh, path: &str, each: u64) -> Vec<Reply> {
    let before = mesh.worker_connections();
    assert_eq!(before.len(), 2, "two workers: {before:?}");
    let mut replies = Vec::new();
    for _ in 0..60 {
        replies.push(mesh.get(path).new_connection().send());
        let now = mesh.worker_connections();
        if now.iter().zip(&before).all(|(n, b)| n - b >= each) {
            return replies;
        }
    }
    panic!(
        "Envoy did not spread 60 connections over both workers: {:?} -> {:?}",
        before,
        mesh.worker_connections()
    );
}

#[test]
fn both_workers_see_one_breaker() {
    let mesh = start(&fragile(60_000, ""), 2);
    for _ in 0..3 {
        assert_eq!(
            mesh.get("/fragile")
                .header("x-echo-status", "500")
                .new_connection()
                .send()
                .status,
            500
        );
    }
    // A worker that read the breaker closed trusts that for up to TRUST (5 ms): past that,
    // every worker sees it open.
    std::thread::sleep(Duration::from_nanos(
        4 * mesh_policy::breaker::machine::TRUST,
    ));
    let served = mesh.upstream_count("v1");
    let replies = on_both_workers(&mesh, "/fragile", 3);
    for reply in &replies {
        assert_fallback(reply, "open");
    }
    assert_eq!(mesh.upstream_count("v1"), served);
    assert_eq!(
        transitions(&mesh, "fragile", "open"),
        1,
        "one breaker opened once"
    );
    assert_eq!(gauge(&mesh, "fragile"), 1);
    assert_eq!(stat(&mesh, "fragile", "rejected"), replies.len() as u64);
}

#[test]
fn the_probe_budget_holds_across_workers() {
    let mesh = start(&fragile(1_000, r#", "half_open_max_requests": 1"#), 2);
    for _ in 0..3 {
        fail(&mesh, "/fragile");
    }
    let served = mesh.upstream_count("v1");
    wait_open(1_000);
    std::thread::scope(|scope| {
        // The upstream holds the probe's answer while other requests arrive.
        let probe = scope.spawn(|| {
            mesh.get("/fragile")
                .header("x-echo-hold", "1")
                .new_connection()
                .send()
        });
        assert!(
            eventually(Duration::from_secs(5), || mesh.upstream_count("v1")
                == served + 1),
            "the probe never reached the upstream"
        );
        let replies = on_both_workers(&mesh, "/fragile", 2);
        for reply in &replies {
            assert_fallback(reply, "half_open");
            assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
        }
        assert_eq!(mesh.upstream_count("v1"), served + 1, "one probe only");
        assert_eq!(gauge(&mesh, "fragile"), 2);
        mesh.release_held("v1");
        let probe = probe.join().unwrap();
        assert_eq!(probe.status, 200);
    });
    assert_eq!(gauge(&mesh, "fragile"), 0);
    assert_eq!(stat(&mesh, "fragile", "probe"), 1);
    assert_eq!(mesh.get("/fragile").new_connection().send().status, 200);
}

#[test]
fn keyed_by_cluster_every_route_to_it_shares_the_breaker() {
    let mesh = start(
        r#"{"default": {"key": "cluster", "consecutive_failures": 2, "open_ms": 60000}}"#,
        1,
    );
    fail(&mesh, "/fragile");
    fail(&mesh, "/sibling");
    assert_fallback(&mesh.get("/fragile").send(), "open");
    assert_fallback(&mesh.get("/sibling").send(), "open");
    assert_eq!(
        mesh.get("/other").send().service().as_deref(),
        Some("v2"),
        "another cluster is not affected"
    );
    assert_eq!(mesh.stat("mesh_breaker_state;route=sibling;cluster=v1"), 1);
    assert_eq!(mesh.stat("mesh_breaker_state;route=other;cluster=v2"), 0);
}

#[test]
fn routes_without_a_policy_are_untouched() {
    let mesh = start(&fragile(60_000, ""), 1);
    for _ in 0..5 {
        assert_eq!(fail(&mesh, "/plain").status, 500);
    }
    assert_eq!(mesh.upstream_count("v1"), 5);
    // The control: the module is loaded, and counted only what its own route saw.
    assert_eq!(fail(&mesh, "/fragile").status, 500);
    assert_eq!(
        mesh.nonzero_stats().into_keys().collect::<Vec<_>>(),
        [
            "mesh_breaker_calls_total;route=fragile;outcome=failure;protocol=http",
            "mesh_breaker_requests_total;route=fragile;decision=allowed",
        ]
    );
}

#[test]
fn stats_reach_prometheus_with_route_decision_outcome_and_to_labels() {
    let mesh = start(&fragile(60_000, ""), 1);
    for _ in 0..3 {
        fail(&mesh, "/fragile");
    }
    mesh.get("/fragile").send();
    let prometheus = mesh.stats_page("/stats/prometheus");
    for line in [
        r#"mesh_breaker_state{route="fragile"} 1"#,
        r#"mesh_breaker_transitions_total{route="fragile",to="open"} 1"#,
        r#"mesh_breaker_requests_total{route="fragile",decision="rejected"} 1"#,
        r#"mesh_breaker_calls_total{route="fragile",outcome="failure",protocol="http"} 3"#,
    ] {
        assert!(prometheus.contains(line), "{line} not in:\n{prometheus}");
    }
}

#[test]
fn a_bad_config_is_refused_naming_route_and_field() {
    for (config, expected) in [
        (
            r#"{"routes": {"fragile": {"failure_rate_percent": 0}}}"#,
            r#"routes["fragile"].failure_rate_percent: must be between 1 and 100"#,
        ),
        (
            r#"{"routes": {"fragile": {"consecutive_failures": 3, "open_s": 5}}}"#,
            r#"routes["fragile"].open_s: unknown field"#,
        ),
        (
            r#"{"routes": {"fragile": {}}}"#,
            r#"routes["fragile"]: nothing can open this breaker"#,
        ),
    ] {
        Mesh::builder()
            .routes(routes())
            .closed_upstream("down")
            .filter("breaker", config)
            .assert_refused(expected);
    }
}
