//! Global limits: the rate limiter calling a real rate limit service (Envoy's RLS API over
//! gRPC; limitador's Redis storage, Debian's `redis-server`), with the built
//! `dist/ratelimit.wasm` (or the bundle, or the native module: its call is gRPC framed over
//! Envoy's HTTP stream callout). Two Envoys stand in for two replicas of a service.
//!
//! Counters live in Redis with windows of 60 s, so nothing here depends on timing: a test
//! counts what the service admitted, rejected and was asked.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;

use mesh_integration::rls::{Mode, REQUEST_HEADER, RESPONSE_HEADER, Redis, Rls, RlsLimit};
use mesh_integration::{Mesh, Modules, Reply};

const ALLOWANCE: u64 = 10;

/// `limited` has one global limit per route, keyed `generic_key`; the deadline is generous
/// (a loaded test machine must not turn answers into timeouts).
fn config(extra: &str) -> String {
    format!(
        r#"{{"routes": {{"limited": {{"limits": [{{"scope": "global", "key": "route", "descriptor_key": "generic_key"}}],
            "service_cluster": "rls", "domain": "mesh", "timeout_ms": 2000{extra}}}}}}}"#
    )
}

fn service(max: u64) -> (Redis, Rls) {
    assert!(
        mesh_integration::rls::redis_available(),
        "redis-server is missing: apt-get install redis-server (scripts/test.sh does)"
    );
    let redis = Redis::start().unwrap();
    let rls = Rls::start(&redis, vec![RlsLimit::new("mesh", "generic_key", max, 60)]).unwrap();
    (redis, rls)
}

fn envoy(plugin_json: &str, rls: SocketAddr) -> Mesh {
    Mesh::builder()
        .filter("ratelimit", plugin_json)
        .grpc_cluster("rls", rls)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One of Envoy's own counters.
fn envoy_stat(mesh: &Mesh, name: &str) -> u64 {
    mesh.admin(&format!("/stats?filter=^{name}$"))
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
/// One call ended by its deadline, as Envoy's cluster stats count it. The Wasm adapter ends
/// it on its own tick (Envoy's timer, set 1 s later as a backstop, never fires): Envoy counts
/// the cancelled stream as a reset, not a timeout. The native module has no timer of its own
/// (`filters/native/ABI.md`): Envoy's timer on the callout is the deadline, a timeout.
fn assert_ended_by_the_deadline(mesh: &Mesh) {
    let (timeouts, resets) = match Modules::current() {
        Modules::Native => (1, 1),
        Modules::Separate | Modules::Bundle => (0, 1),
    };
    assert_eq!(
        (
            envoy_stat(mesh, "cluster.rls.upstream_rq_timeout"),
            envoy_stat(mesh, "cluster.rls.upstream_rq_tx_reset")
        ),
        (timeouts, resets),
        "timeouts, resets"
    );
}

fn ratelimit_headers(reply: &Reply) -> [Option<String>; 3] {
    [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]
    .map(|h| reply.header(h))
}

fn limited(mesh: &Mesh) -> Reply {
    mesh.get("/limited").send()
}

#[test]
fn two_envoys_share_one_global_allowance() {
    let (_redis, rls) = service(ALLOWANCE);
    let a = envoy(&config(""), rls.addr());
    let b = envoy(&config(""), rls.addr());
    let limit = ALLOWANCE.to_string();
    let mut admitted = 0;
    let mut rejected = 0;
    for i in 0..20 {
        let reply = limited(if i % 2 == 0 { &a } else { &b });
        match reply.status {
            200 => {
                admitted += 1;
                // The service's request header reached the upstream, its response header
                // the client.
                assert_eq!(reply.upstream_header(REQUEST_HEADER).as_deref(), Some("ok"));
                assert_eq!(reply.header(RESPONSE_HEADER).as_deref(), Some("ok"));
                // The service's count, for both replicas.
                let left = (ALLOWANCE - admitted).to_string();
                assert_eq!(
                    ratelimit_headers(&reply)[..2],
                    [Some(limit.clone()), Some(left)]
                );
            }
            429 => {
                rejected += 1;
                let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
                assert_eq!(reply.header(RESPONSE_HEADER).as_deref(), Some("over_limit"));
                let reset = Some(retry_after.to_string());
                assert_eq!(
                    ratelimit_headers(&reply),
                    [Some(limit.clone()), Some("0".into()), reset]
                );
            }
            status => panic!("unexpected {status}: {}", reply.text()),
        }
    }
    assert_eq!((admitted, rejected), (ALLOWANCE, 20 - ALLOWANCE));
    assert_eq!(rls.requests(), 20);
    let stat = |mesh: &Mesh, outcome: &str| {
        mesh.stat(&format!(
            "mesh_ratelimit_global_calls_total;route=limited;outcome={outcome}"
        ))
    };
    assert_eq!(stat(&a, "ok") + stat(&b, "ok"), ALLOWANCE);
    assert_eq!(
        stat(&a, "over_limit") + stat(&b, "over_limit"),
        20 - ALLOWANCE
    );
    assert_eq!(
        a.stat("mesh_ratelimit_requests_total;route=limited;decision=rejected")
            + b.stat("mesh_ratelimit_requests_total;route=limited;decision=rejected"),
        20 - ALLOWANCE
    );
}

/// A request with a body waits for the call as one without: its body is held while the call
/// is out (Envoy would let a request whose body a filter passes go on at once), so the upstream
/// gets the service's request header, and the body whole.
#[test]
fn a_request_with_a_body_waits_for_the_call() {
    use std::io::{Read, Write};
    let (_redis, rls) = service(1000);
    let mesh = envoy(&config(""), rls.addr());
    let body = "x".repeat(3000);
    let mut stream = std::net::TcpStream::connect(mesh.listener()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // Headers and body in one write: Envoy has the body before the service can answer.
    write!(
        stream,
        "POST /limited HTTP/1.1\r\nhost: shop\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, echoed) = response.split_once("\r\n\r\n").unwrap();
    let echoed: serde_json::Value = serde_json::from_str(echoed).unwrap();
    assert_eq!(echoed["headers"][REQUEST_HEADER], "ok", "{echoed}");
    assert_eq!(echoed["headers"]["content-length"], body.len().to_string());
    assert_eq!(rls.requests(), 1);
}

#[test]
fn a_local_limit_in_front_saves_the_call() {
    let (_redis, rls) = service(1000);
    // Two tokens, refilled once in 1000 s: the third request is rejected locally.
    let json = r#"{"routes": {"limited": {"limits": [
            {"rate_per_s": 0.001, "burst": 2},
            {"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 2000}}}"#;
    let mesh = envoy(json, rls.addr());
    let statuses: Vec<u16> = (0..5).map(|_| limited(&mesh).status).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(
        rls.requests(),
        2,
        "locally rejected requests reached the service"
    );
}

#[test]
fn a_killed_service_fails_open_and_traffic_recovers_when_it_returns() {
    let (_redis, mut rls) = service(1000);
    let mesh = envoy(&config(""), rls.addr());
    assert_eq!(
        limited(&mesh).upstream_header(REQUEST_HEADER).as_deref(),
        Some("ok")
    );
    rls.stop();
    for _ in 0..3 {
        let reply = limited(&mesh);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.upstream_header(REQUEST_HEADER), None);
    }
    assert_eq!(
        mesh.stat("mesh_ratelimit_global_calls_total;route=limited;outcome=error"),
        3
    );
    // One line for the burst, not one per request.
    let lines = mesh.envoy_log().matches("global_error=").count();
    assert_eq!(lines, 1, "{}", mesh.envoy_log());
    rls.restart().unwrap();
    let reply = (0..50)
        .map(|_| limited(&mesh))
        .find(|r| r.upstream_header(REQUEST_HEADER).is_some())
        .expect("the service never answered again");
    assert_eq!(reply.status, 200);
}

#[test]
fn a_killed_service_answers_503_with_failure_mode_deny() {
    let (_redis, mut rls) = service(1000);
    let mesh = envoy(&config(r#", "failure_mode_deny": true"#), rls.addr());
    assert_eq!(limited(&mesh).status, 200);
    rls.stop();
    let reply = limited(&mesh);
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(mesh.upstream_count("v1"), 1);
    // Counted as the service's failure, not as a client over its limit.
    let decision = |d: &str| {
        mesh.stat(&format!(
            "mesh_ratelimit_requests_total;route=limited;decision={d}"
        ))
    };
    assert_eq!((decision("unavailable"), decision("rejected")), (1, 0));
    rls.restart().unwrap();
    let recovered = (0..50).map(|_| limited(&mesh).status).any(|s| s == 200);
    assert!(recovered, "still 503 after the service returned");
}

/// Kuadrant wasm-shim#425: with no healthy endpoint Envoy may queue the call past its
/// deadline. The filter's deadline must still apply: the request fails open, in bounded time
/// (the client's own timeout is 20 s; the call's is 200 ms).
#[test]
fn a_service_without_endpoints_fails_open() {
    let json = r#"{"routes": {"limited": {"limits": [{"scope": "global", "key": "route"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 200}}}"#;
    let mesh = Mesh::builder()
        .filter("ratelimit", json)
        .empty_grpc_cluster("rls")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    // Measured with Envoy 1.40: a STATIC cluster without endpoints makes
    // `dispatch_grpc_call` fail at once (logged `global_error=not_sent`), nothing is queued.
    // The native module's callout is answered by Envoy itself (no healthy upstream) before
    // its stream starts: not sent either.
    const REQUESTS: u64 = 20;
    for _ in 0..REQUESTS {
        let reply = limited(&mesh);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        mesh.stat("mesh_ratelimit_global_calls_total;route=limited;outcome=error"),
        REQUESTS
    );
    // Every request fails the same way: one line at info or above for the burst (one
    // worker), not one per request, from the filter or the adapter. Envoy's log format:
    // `[time][thread][level][logger] ...`.
    let log = mesh.envoy_log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(Modules::current().log_component()))
        .filter(|line| {
            ["[info]", "[warning]", "[error]", "[critical]"]
                .iter()
                .any(|level| line.contains(level))
        })
        .filter(|line| line.contains("not_sent") || line.contains("not sent"))
        .collect();
    assert_eq!(loud.len(), 1, "{log}");
    assert!(loud[0].contains("global_error=not_sent"), "{log}");
}

/// A service that takes longer than the call's deadline, and one whose answer no client can
/// act on: both fail open, counted as errors, and the request did not wait for the slow answer.
/// The deadline is the filter's own (the adapter's tick), so it holds even where Envoy's timer
/// would not fire (Kuadrant wasm-shim#425); the native module's is Envoy's timer on the
/// callout.
#[test]
fn a_slow_service_and_a_meaningless_answer_fail_open() {
    let (_redis, rls) = service(1000);
    let json = r#"{"routes": {"limited": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 300}}}"#;
    let mesh = envoy(json, rls.addr());
    rls.set_mode(Mode::Hang);
    let answered = rls.answered();
    let reply = limited(&mesh);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.upstream_header(REQUEST_HEADER), None);
    // The service holds the call (for HANG, 5 s, far beyond the 300 ms deadline): a request
    // that waited for the answer would come back after the service answered.
    assert_eq!(rls.requests(), 1);
    assert_eq!(
        rls.answered(),
        answered,
        "the request waited for the service"
    );
    assert_ended_by_the_deadline(&mesh);
    rls.set_mode(Mode::Unknown);
    assert_eq!(limited(&mesh).status, 200);
    assert_eq!(
        mesh.stat("mesh_ratelimit_global_calls_total;route=limited;outcome=error"),
        2
    );
    let log = mesh.envoy_log();
    assert!(log.contains("global_error=deadline_exceeded"), "{log}");
}

/// An answer that is not a `RateLimitResponse` at all (gRPC OK, bytes that do not decode):
/// fail open, counted as an error, logged as a bad answer.
#[test]
fn an_undecodable_answer_fails_open() {
    let (_redis, rls) = service(1000);
    let mesh = envoy(&config(""), rls.addr());
    rls.set_mode(Mode::Garbage);
    let reply = limited(&mesh);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.upstream_header(REQUEST_HEADER), None);
    assert_eq!(rls.requests(), 1);
    assert_eq!(
        mesh.stat("mesh_ratelimit_global_calls_total;route=limited;outcome=error"),
        1
    );
    let log = mesh.envoy_log();
    assert!(log.contains("global_error=bad_answer"), "{log}");
}

/// `failure_mode_deny` holds at the filter's own deadline too: a slow service is a 503.
#[test]
fn a_slow_service_answers_503_with_failure_mode_deny() {
    let (_redis, rls) = service(1000);
    let json = r#"{"routes": {"limited": {"limits": [{"scope": "global", "key": "route", "descriptor_key": "generic_key"}],
        "service_cluster": "rls", "domain": "mesh", "timeout_ms": 300, "failure_mode_deny": true}}}"#;
    let mesh = envoy(json, rls.addr());
    rls.set_mode(Mode::Hang);
    let reply = limited(&mesh);
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(mesh.upstream_count("v1"), 0);
    assert_ended_by_the_deadline(&mesh);
}

/// A client that leaves while its request waits for the service: the stream ends, the call is
/// forgotten, and the next requests are decided as usual (no VM failure, nothing stuck).
#[test]
fn a_client_leaving_during_the_call_leaves_nothing_behind() {
    use std::io::Write;
    let (_redis, rls) = service(1000);
    let mesh = envoy(&config(""), rls.addr());
    rls.set_mode(Mode::Hang);
    for _ in 0..3 {
        let before = rls.requests();
        let mut stream = std::net::TcpStream::connect(mesh.listener()).unwrap();
        stream
            .write_all(b"GET /limited HTTP/1.1\r\nhost: shop\r\n\r\n")
            .unwrap();
        // Bounded wait until the call reached the service, then leave.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rls.requests() == before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            rls.requests() > before,
            "the call never reached the service"
        );
        drop(stream);
    }
    rls.set_mode(Mode::Normal);
    let reply = limited(&mesh);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.upstream_header(REQUEST_HEADER).as_deref(), Some("ok"));
    let health = mesh.wasm_health();
    assert!(health.failures.is_empty(), "{:?}", health.failures);
    assert_eq!(health.reloads, 0);
}
