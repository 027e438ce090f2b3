//! Config and module updates while Envoy runs, through ECDS as istiod pushes them
//! ([`MeshBuilder::filters_by_discovery`]): no request fails because of an update, requests
//! after it see the new policy, state survives where its policy did not change, a bad push
//! is refused while the old config keeps serving, and a new build of a module takes over
//! under load.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesh_integration::{Mesh, MeshBuilder, Modules};

const TRACEID: &str = r#"{"default": {"response_header": "x-trace-id"}}"#;
/// `checkout`: to the canary only when asked by `x-canary-force`.
const CANARY: &str = r#"{"routes": {"checkout": {"salt": "shop",
    "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}]}}}"#;
/// `limited`: 3 requests, then 429 for a very long time (0.001 tokens a second).
const RATELIMIT: &str =
    r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.001, "burst": 3}]}}}"#;
/// `fragile`: opens after 3 failures in a row, for a minute.
const BREAKER: &str = r#"{"routes": {"fragile": {"consecutive_failures": 3, "open_ms": 60000}}}"#;

fn builder() -> MeshBuilder {
    Mesh::builder()
        .filters_by_discovery()
        .concurrency(2)
        .filter("traceid", TRACEID)
        .filter("canary", CANARY)
        .filter("ratelimit", RATELIMIT)
        .filter("breaker", BREAKER)
}

fn start() -> Mesh {
    builder().start().unwrap_or_else(|e| panic!("{e}"))
}

/// Requests on `/checkout` from a second thread while `during` runs, bounded in count and
/// time: every one must be answered 200 (none fails or hangs because of an update).
fn under_load(mesh: &mut Mesh, during: impl FnOnce(&mut Mesh)) -> usize {
    const MAX_REQUESTS: usize = 20_000;
    let done = AtomicBool::new(false);
    let client = mesh.client();
    let base = mesh.base_url().to_owned();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut sent = 0;
            while !done.load(Ordering::SeqCst) && sent < MAX_REQUESTS && Instant::now() < deadline {
                let reply = client.get(format!("{base}/checkout")).call();
                match reply {
                    Ok(reply) => {
                        assert_eq!(reply.status(), 200, "request {sent} during the update")
                    }
                    Err(e) => panic!("request {sent} during the update: {e}"),
                }
                sent += 1;
            }
            sent
        });
        during(mesh);
        done.store(true, Ordering::SeqCst);
        load.join().unwrap()
    })
}

fn limited(mesh: &Mesh) -> u16 {
    mesh.get("/limited").send().status
}

/// `limited`'s 3 requests, then a 429.
fn empty_the_bucket(mesh: &Mesh) {
    assert_eq!([limited(mesh), limited(mesh), limited(mesh)], [200; 3]);
    assert_eq!(limited(mesh), 429);
}

#[test]
fn policy_pushes_under_load_fail_no_request_and_take_effect() {
    let mut mesh = start();
    assert!(mesh.get("/checkout").send().header("x-trace-id").is_some());
    let sent = under_load(&mut mesh, |mesh| {
        // Change a route's policy (the response header's name), add a route, switch the
        // default on and off.
        mesh.push_config("traceid", r#"{"default": {"response_header": "x-trace"}}"#)
            .unwrap();
        let reply = mesh.get("/checkout").send();
        assert!(reply.header("x-trace").is_some() && reply.header("x-trace-id").is_none());
        mesh.push_config(
            "ratelimit",
            r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.001, "burst": 3}]},
                "catalog": {"limits": [{"rate_per_s": 100000, "burst": 100000}]}}}"#,
        )
        .unwrap();
        assert_eq!(
            mesh.get("/catalog")
                .send()
                .header("x-ratelimit-limit")
                .as_deref(),
            Some("100000")
        );
        mesh.push_config(
            "ratelimit",
            r#"{"default": {"limits": [{"rate_per_s": 100000, "burst": 100000}]}}"#,
        )
        .unwrap();
        assert_eq!(
            mesh.get("/checkout")
                .send()
                .header("x-ratelimit-limit")
                .as_deref(),
            Some("100000")
        );
        mesh.push_config("ratelimit", RATELIMIT).unwrap();
        assert_eq!(
            mesh.get("/checkout").send().header("x-ratelimit-limit"),
            None
        );
    });
    assert!(sent > 0, "no request was sent during the updates");
}

#[test]
fn an_unrelated_push_keeps_an_empty_bucket_empty_and_an_open_breaker_open() {
    let mut mesh = start();
    empty_the_bucket(&mesh);
    for _ in 0..3 {
        mesh.get("/fragile").header("x-echo-status", "500").send();
    }
    let served = mesh.upstream_count("v1");
    assert_eq!(
        mesh.get("/fragile").send().status,
        503,
        "the breaker did not open"
    );
    // Other routes' policies change; these two keep theirs.
    mesh.push_config(
        "ratelimit",
        r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.001, "burst": 3}]},
            "catalog": {"limits": [{"rate_per_s": 5, "burst": 5}]}}}"#,
    )
    .unwrap();
    mesh.push_config(
        "breaker",
        r#"{"routes": {"fragile": {"consecutive_failures": 3, "open_ms": 60000},
            "catalog": {"consecutive_failures": 10}}}"#,
    )
    .unwrap();
    assert_eq!(limited(&mesh), 429, "the bucket refilled on a push");
    assert_eq!(
        mesh.get("/fragile").send().status,
        503,
        "the breaker closed on a push"
    );
    assert_eq!(mesh.upstream_count("v1"), served);
}

/// A bucket is the route's limit at its place in `limits`: a push that changes its rate or
/// burst keeps the bucket's state (the time it is full again) and applies the new rate to it;
/// nothing is reset. (A push that reorders `limits` gives each place's bucket to the limit now
/// there: the README says so.)
#[test]
fn a_new_rate_keeps_the_bucket_and_applies_to_it() {
    let mut mesh = start();
    empty_the_bucket(&mesh);
    // A larger burst: the same bucket, now with room for 2 more.
    mesh.push_config(
        "ratelimit",
        r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.001, "burst": 5}]}}}"#,
    )
    .unwrap();
    assert_eq!([limited(&mesh), limited(&mesh)], [200, 200]);
    assert_eq!(limited(&mesh), 429);
}

#[test]
fn a_bad_push_is_refused_and_the_old_policy_keeps_serving() {
    let mut mesh = start();
    let limited = |mesh: &Mesh| mesh.get("/limited").send();
    assert_eq!(
        limited(&mesh).header("x-ratelimit-limit").as_deref(),
        Some("3")
    );
    let bad = [
        (
            "traceid",
            r#"{"default": {"response_header": "x trace"}}"#,
            "response_header",
        ),
        (
            "canary",
            r#"{"routes": {"checkout": {"salt": "shop", "percent": 101}}}"#,
            "percent",
        ),
        (
            "ratelimit",
            r#"{"routes": {"limited": {"limits": [{"rate_per_s": -1, "burst": 3}]}}}"#,
            "rate_per_s",
        ),
        (
            "breaker",
            r#"{"routes": {"fragile": {"consecutive_failures": "three"}}}"#,
            "consecutive_failures",
        ),
    ];
    for (module, json, field) in bad {
        let before = mesh.applied(&Modules::current().plugin(module));
        let log = mesh
            .push_config(module, json)
            .expect_err("Envoy applied a config the filter refuses");
        assert!(
            log.lines()
                .any(|line| line.contains("config=rejected") && line.contains(field)),
            "{module}: no line naming {field}:\n{log}"
        );
        let after = mesh.applied(&Modules::current().plugin(module));
        assert_eq!(after.failures, before.failures + 1, "{module}");
    }
    // The previous configs keep serving.
    let reply = limited(&mesh);
    assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("3"));
    assert!(reply.header("x-trace-id").is_some());
}

/// A copy of `wasm` with a custom section appended: another build as far as Envoy can tell
/// (another sha256, a new VM), the same behaviour.
fn rebuilt(wasm: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(wasm).unwrap();
    let name = b"mesh-rebuild";
    let payload = b"2";
    let size = 1 + name.len() + payload.len();
    bytes.extend([
        0u8,
        u8::try_from(size).unwrap(),
        u8::try_from(name.len()).unwrap(),
    ]);
    bytes.extend(name);
    bytes.extend(payload);
    let path = dir.join(wasm.file_name().unwrap());
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_new_build_takes_over_under_load_and_keeps_the_shared_state() {
    let mut mesh = start();
    empty_the_bucket(&mesh);
    let dir = tempfile::tempdir().unwrap();
    let dist = mesh_integration::envoy::dist_dir();
    let modules = Modules::current();
    let file = match modules {
        Modules::Bundle | Modules::Native => "bundle.wasm",
        Modules::Separate => "ratelimit.wasm",
    };
    let new_build = rebuilt(&dist.join(file), dir.path());
    let sent = under_load(&mut mesh, |mesh| {
        mesh.push_module("ratelimit", &new_build).unwrap();
    });
    assert!(sent > 0);
    // The new VMs read the bucket the old ones wrote: still empty.
    assert_eq!(limited(&mesh), 429);
    assert!(mesh.get("/checkout").send().header("x-trace-id").is_some());
}
