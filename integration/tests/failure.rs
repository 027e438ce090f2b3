//! What happens when a VM dies, with the test fixture module (`integration/fixture`, never
//! shipped): it panics on `x-fixture-panic`. Our modules never panic on purpose; the
//! fixture goes through the same adapter (`mesh_adapter::export_filter!`), so its panic hook
//! and abort are theirs.
//!
//! Measured on Envoy 1.40 (the README's failure-strategy table is taken from these tests):
//! the request whose handler panicked gets a bare 503; then `FAIL_OPEN` skips the dead
//! filter, `FAIL_CLOSED` answers 503 on that worker from then on, and `FAIL_RELOAD` answers
//! 503 until a new VM is up (about a second later).
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use mesh_integration::{Mesh, Modules, Reply};

/// The four filters in their production order, each with the failure policy the Istio
/// manifests use, and the fixture after the trace filter. With `MESH_MODULES=bundle` the
/// fixture (which has no bundle stage) comes after the bundle, so after all four.
const TRACE: &str = r#"{"default": {}}"#;
const CANARY: &str = r#"{"routes": {"checkout": {"percent": 0, "sticky": {"header": "x-user-id"}},
    "checkout-canary": {"percent": 0, "salt": "checkout", "sticky": {"header": "x-user-id"}}}}"#;
// A request with a forged tag is matched to `checkout-canary` before any filter runs, and
// later filters keep reading that route name: configure both alike.
const RATELIMIT: &str = r#"{"default": {"limits": [{"rate_per_s": 1000, "burst": 1000}]}}"#;
const BREAKER: &str = r#"{"default": {"consecutive_failures": 5}}"#;

fn chain(fixture_policy: &str) -> Mesh {
    Mesh::builder()
        .filter("traceid", TRACE)
        .failure_policy("FAIL_OPEN")
        .fixture()
        .failure_policy(fixture_policy)
        .filter("canary", CANARY)
        .failure_policy("FAIL_OPEN")
        .filter("ratelimit", RATELIMIT)
        .failure_policy("FAIL_OPEN")
        .filter("breaker", BREAKER)
        .failure_policy("FAIL_OPEN")
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn crash(mesh: &Mesh, marker: &str) -> Reply {
    mesh.get("/checkout")
        .header("x-fixture-panic", marker)
        .send()
}

/// A request every filter worked on: the trace filter's header, the rate limiter's, v1.
fn assert_served_by_every_filter(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.service().as_deref(), Some("v1"));
    assert!(reply.header("x-trace-id").is_some(), "{:?}", reply.headers);
    assert!(
        reply.header("x-ratelimit-limit").is_some(),
        "{:?}",
        reply.headers
    );
}

/// Envoy's log once it has `needle` (or after 10 s): the reply can come before the container
/// runtime hands over the lines Envoy wrote while making it.
fn log_once_it_has(mesh: &Mesh, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = mesh.envoy_log();
        if log.contains(needle) || Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A counter summed over its routes and labels.
fn total(mesh: &Mesh, prefix: &str) -> u64 {
    mesh.stats()
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn a_panic_is_logged_with_its_message_before_the_vm_aborts() {
    let mesh = chain("FAIL_OPEN");
    assert!(mesh.wasm_health().failures.is_empty());
    crash(&mesh, "marker-7f3a");
    let log = log_once_it_has(&mesh, "Function: proxy_on_request_headers failed");
    let panicked = log
        .find("panicked at")
        .unwrap_or_else(|| panic!("no panic message in the log:\n{log}"));
    let message = log
        .find("mesh fixture: deliberate panic (marker-7f3a)")
        .expect("the panic's own text is logged");
    let failed = log
        .find("Function: proxy_on_request_headers failed")
        .expect("Envoy logs the aborted call");
    assert!(
        panicked < message && message < failed,
        "the hook logs before the abort"
    );
    let line = log[..panicked].rsplit('\n').next().unwrap();
    assert!(line.contains("[critical][wasm]"), "{line}");
    assert!(line.contains("mesh.fixture"), "names the plugin: {line}");
    assert!(!mesh.wasm_health().failures.is_empty());
}

/// The deliberately failing module dies under `FAIL_OPEN`: after the one request it was
/// handling, traffic flows through the other four filters as before.
#[test]
fn fail_open_keeps_traffic_flowing_when_a_vm_dies() {
    let mut mesh = chain("FAIL_OPEN");
    assert_served_by_every_filter(&mesh.get("/checkout").send());
    let crashed = crash(&mesh, "fail-open");
    assert_eq!(crashed.status, 503, "the request in the dying VM");
    assert_eq!(crashed.service(), None);
    for _ in 0..20 {
        let reply = mesh.get("/checkout").header("x-canary", "true").send();
        assert_served_by_every_filter(&reply);
        // The canary filter behind the dead VM (or before it, in the bundle) still strips
        // the forged tag.
        assert_eq!(reply.upstream_header("x-canary"), None);
        assert_eq!(
            reply.upstream_header("x-fixture-source-address"),
            None,
            "the dead filter ran"
        );
    }
    // The panic marker passes the dead filter untouched now.
    assert_served_by_every_filter(&crash(&mesh, "again"));
    assert!(mesh.envoy_running() && mesh.ready());
    assert_eq!(total(&mesh, "mesh_trace_requests_total;"), 23);
    // Separate modules: every request but the crashed one reached the rate limiter, which
    // comes after the fixture. The bundle's rate limiter runs before it and saw that one too.
    let reached_ratelimit = match Modules::current() {
        Modules::Separate => 22,
        Modules::Bundle | Modules::Native => 23,
    };
    assert_eq!(
        total(&mesh, "mesh_ratelimit_requests_total;"),
        reached_ratelimit
    );
}

/// Istio's default, `FAIL_CLOSE`, is Envoy's `FAIL_CLOSED`: the worker answers 503 for that
/// filter's requests until Envoy restarts or the config changes.
#[test]
fn fail_closed_answers_503_from_then_on() {
    let mesh = chain("FAIL_CLOSED");
    assert_eq!(crash(&mesh, "fail-closed").status, 503);
    for _ in 0..5 {
        let reply = mesh.get("/checkout").send();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.service(), None, "the upstream was reached");
    }
    assert_eq!(mesh.upstream_count("v1"), 0);
}

/// `FAIL_RELOAD` answers 503 until a fresh VM is loaded (Envoy's default backoff: 1 s), then
/// serves again, counted in the plugin's `vm_reload_success`. Shared data outlives the VM:
/// the fixture's request count goes on where it was.
#[test]
fn fail_reload_serves_again_once_the_vm_is_reloaded() {
    let mesh = chain("FAIL_RELOAD");
    let count = |reply: &Reply| -> u64 {
        reply
            .upstream_header("x-fixture-count")
            .unwrap()
            .parse()
            .unwrap()
    };
    for n in 1..=3 {
        assert_eq!(count(&mesh.get("/checkout").send()), n);
    }
    let before = mesh.wasm_health();
    assert_eq!(crash(&mesh, "fail-reload").status, 503);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = Vec::new();
    let reply = loop {
        let reply = mesh.get("/checkout").send();
        statuses.push(reply.status);
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_served_by_every_filter(&reply);
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 200),
        "{statuses:?}"
    );
    assert_eq!(
        count(&reply),
        4,
        "the reloaded VM reads the shared data the old one wrote"
    );
    let after = mesh.wasm_health();
    assert!(after.reloads > before.reloads, "{before:?} -> {after:?}");
    assert!(after.created > before.created, "{before:?} -> {after:?}");
}
