//! What a panic inside the native module does to Envoy, with the native test fixture
//! (`mesh-native` built with feature `panic-fixture`, never shipped: a request with
//! `x-fixture-panic: <marker>` panics in the module's request hook, as a bug would). The
//! module is built to unwind: each hook catches a panic where Envoy entered the module, logs
//! it at critical and lets the request go on as if the module had passed it. There is no
//! failure policy to choose (that is a Wasm setting), and nothing is reloaded.
//!
//! Loads the fixture whatever `MESH_MODULES` says: the panic path is the native module's only.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use mesh_integration::backend::Launch;
use mesh_integration::echo::EchoServer;
use mesh_integration::envoy::{self, Envoy, Harness};
use mesh_integration::observability::route;

/// The bundle's trace stage (every request gets `x-trace-id`) and a rate limit of 1000 a
/// second (every request gets `x-ratelimit-limit`): a request the stages worked on shows both.
const PLUGIN_JSON: &str = r#"{"traceid": {"default": {}},
    "ratelimit": {"default": {"limits": [{"rate_per_s": 1000, "burst": 1000}]}}}"#;

/// How many requests panic in a row: enough to take every worker through the path.
const PANICS: u32 = 20;

#[test]
fn a_panic_is_caught_logged_and_the_request_passes_untouched() {
    let fixture = envoy::native_fixture();
    assert!(
        fixture.is_file(),
        "{} is missing: scripts/test.sh builds it (cargo rustc --profile native -p mesh-native \
         --features panic-fixture --crate-type cdylib, then copies target/native/libmesh_native.so)",
        fixture.display()
    );
    let harness = Harness::from_env().unwrap();
    let upstream = EchoServer::start("v1").unwrap();
    let filter = envoy::native_filter("bundle", &harness.module_path(&fixture), PLUGIN_JSON);
    let config = envoy::bootstrap(
        vec![filter],
        vec![route("any", "/", "v1")],
        vec![envoy::cluster("v1", upstream.addr)],
    );
    let mut envoy = Envoy::start(
        harness,
        &Launch::new(config.to_string())
            .concurrency(2)
            .modules([fixture]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = envoy::agent(Duration::from_secs(20));
    let url = format!("http://{}/", envoy.listener());
    let get = |panic_marker: Option<&str>| {
        let mut request = agent.get(&url);
        if let Some(marker) = panic_marker {
            request = request.header("x-fixture-panic", marker);
        }
        request.call().unwrap()
    };
    let worked_on = |reply: &ureq::http::Response<ureq::Body>| {
        let headers = reply.headers();
        (
            headers.contains_key("x-trace-id"),
            headers.contains_key("x-ratelimit-limit"),
        )
    };

    let before = get(None);
    assert_eq!(before.status(), 200);
    assert_eq!(worked_on(&before), (true, true), "the stages run");

    for i in 0..PANICS {
        let reply = get(Some(&format!("marker-{i}")));
        // Passed on as if the module had let it through: the upstream answers, and no stage
        // touched the request (the panic came before them).
        assert_eq!(reply.status(), 200, "panic {i}");
        assert_eq!(worked_on(&reply), (false, false), "panic {i}");
    }

    // Envoy is still up and the module works on the next requests, on every worker.
    assert!(envoy.is_running(), "{}", envoy.log());
    for _ in 0..4 {
        let after = get(None);
        assert_eq!(after.status(), 200);
        assert_eq!(worked_on(&after), (true, true), "the stages run again");
    }

    // One critical line per panic, naming the hook and the panic's message.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let log = envoy.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("[critical]") && l.contains("[dynamic_modules]"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= PANICS as usize || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), PANICS as usize, "{lines:#?}");
    for i in 0..PANICS {
        let message = format!(
            "mesh_bundle: panic in request_headers: mesh native fixture: deliberate panic (marker-{i})"
        );
        assert!(
            lines.iter().any(|l| l.contains(&message)),
            "no {message:?} in {lines:#?}"
        );
    }
}
