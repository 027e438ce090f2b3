//! The filters on gRPC traffic: a real gRPC client and service (`mesh_integration::grpc`,
//! tonic) through Envoy with an HTTP/2 upstream cluster, unary and server-streaming calls.
//! Runs with each filter's module and with the bundle (`MESH_MODULES`), on either harness.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::grpc::{
    CountRequest, FAILURE_MESSAGE, GrpcClient, GrpcEcho, GrpcError, SayReply, SayRequest,
};
use mesh_integration::{Mesh, MeshBuilder, wait_for_stats_flush};

/// gRPC status codes the tests see.
const NOT_FOUND: i32 = 5;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

/// Envoy with `builder`'s filters in front of one gRPC service on route `echo`.
fn start(builder: MeshBuilder) -> (Mesh, GrpcEcho, GrpcClient) {
    let server = GrpcEcho::start("echo").expect("gRPC upstream");
    let mesh = server.behind(builder).unwrap_or_else(|e| panic!("{e}"));
    let client = GrpcClient::connect(mesh.listener()).expect("client");
    (mesh, server, client)
}

fn say(client: &GrpcClient, metadata: &[(&str, &str)]) -> Result<SayReply, GrpcError> {
    client.say(SayRequest::new("hi"), metadata)
}

fn say_failing(client: &GrpcClient, code: i32) -> Result<SayReply, GrpcError> {
    client.say(
        SayRequest {
            fail_code: code,
            ..SayRequest::new("hi")
        },
        &[],
    )
}

fn expect_error(result: Result<SayReply, GrpcError>) -> GrpcError {
    match result {
        Ok(reply) => panic!("expected an error, got {reply:?}"),
        Err(error) => error,
    }
}

// ---- rate limiting ----

#[test]
fn a_rate_limited_call_ends_resource_exhausted_with_the_wait_as_pushback() {
    let (mesh, server, client) = start(Mesh::builder().filter(
        "ratelimit",
        r#"{"routes": {"echo": {"limits": [{"rate_per_s": 0.5, "burst": 1}]}}}"#,
    ));
    say(&client, &[]).unwrap_or_else(|e| panic!("first call: {e}\n{}", mesh.envoy_log()));
    let error = expect_error(say(&client, &[]));
    assert_eq!(error.code, RESOURCE_EXHAUSTED, "{error}");
    assert_eq!(error.message, "rate limited");
    let pushback: u64 = error
        .header("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no pushback in {:?}", error.metadata))
        .parse()
        .expect("milliseconds");
    // A token every 2 s, the last taken just now.
    assert!((1..=2000).contains(&pushback), "{pushback}");
    assert_eq!(error.header("retry-after"), Some("2"));
    assert_eq!(error.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        server.calls(),
        1,
        "the rejected call never reached the service"
    );
}

#[test]
fn the_grpc_status_of_a_rejection_is_the_routes_choice_and_keys_follow_method_and_metadata() {
    let (_mesh, server, client) = start(Mesh::builder().filter(
        "ratelimit",
        r#"{"routes": {"echo": {
            "limits": [{"rate_per_s": 0.01, "burst": 1, "key": "path"},
                       {"rate_per_s": 0.01, "burst": 2, "key": {"header": "x-tenant"}}],
            "grpc_status": "UNAVAILABLE", "grpc_message": "echo: over quota"}}}"#,
    ));
    let tenant = |name: &'static str| [("x-tenant", name)];
    say(&client, &tenant("a")).expect("Say: its method's token");
    let error = expect_error(say(&client, &tenant("b")));
    assert_eq!(
        (error.code, error.message.as_str()),
        (UNAVAILABLE, "echo: over quota")
    );
    // Another method has its own bucket; tenant a has one token left.
    let counted = client
        .count(CountRequest::new(2), &tenant("a"))
        .unwrap_or_else(|(_, e)| panic!("Count: {e}"));
    assert_eq!(counted, [1, 2]);
    let (items, error) = client
        .count(CountRequest::new(2), &tenant("a"))
        .expect_err("Count's bucket is empty");
    assert!(items.is_empty());
    assert_eq!(error.code, UNAVAILABLE);
    assert_eq!(server.calls(), 2);
}

// ---- circuit breaking ----

const BREAKER: &str = r#"{"routes": {"echo": {"consecutive_failures": 3, "open_ms": 60000,
    "fallback": {"status": 503, "headers": {"x-fallback": "echo"}, "body": "down"}}}}"#;

fn calls_stat(mesh: &Mesh, outcome: &str, protocol: &str) -> u64 {
    mesh.stat(&format!(
        "mesh_breaker_calls_total;route=echo;outcome={outcome};protocol={protocol}"
    ))
}

#[test]
fn unavailable_calls_open_the_breaker_and_the_fallback_is_a_grpc_status() {
    let (mesh, server, client) = start(Mesh::builder().filter("breaker", BREAKER));
    for _ in 0..3 {
        let error = expect_error(say_failing(&client, UNAVAILABLE));
        assert_eq!(
            (error.code, error.message.as_str()),
            (UNAVAILABLE, FAILURE_MESSAGE)
        );
    }
    let error = expect_error(say(&client, &[]));
    assert_eq!(
        (error.code, error.message.as_str()),
        (UNAVAILABLE, "circuit open"),
        "{:?}\n{}",
        error.metadata,
        mesh.envoy_log()
    );
    assert_eq!(error.header("x-circuit-state"), Some("open"));
    assert_eq!(error.header("x-fallback"), Some("echo"));
    assert_eq!(error.header("grpc-retry-pushback-ms"), Some("60000"));
    assert_eq!(
        server.calls(),
        3,
        "the fourth call never reached the service"
    );
    wait_for_stats_flush();
    assert_eq!(calls_stat(&mesh, "failure", "grpc"), 3);
    assert_eq!(calls_stat(&mesh, "failure", "http"), 0);
}

#[test]
fn the_callers_own_errors_do_not_open_it() {
    let (mesh, server, client) = start(Mesh::builder().filter("breaker", BREAKER));
    for _ in 0..5 {
        assert_eq!(
            expect_error(say_failing(&client, NOT_FOUND)).code,
            NOT_FOUND
        );
    }
    say(&client, &[]).expect("still closed");
    assert_eq!(server.calls(), 6);
    wait_for_stats_flush();
    assert_eq!(calls_stat(&mesh, "success", "grpc"), 6);
}

#[test]
fn a_stream_is_classified_by_the_status_it_ends_with() {
    let (mesh, server, client) = start(Mesh::builder().filter(
        "breaker",
        r#"{"routes": {"echo": {"consecutive_failures": 2, "open_ms": 60000}}}"#,
    ));
    let ok = client
        .count(CountRequest::new(3), &[])
        .unwrap_or_else(|(_, e)| panic!("{e}"));
    assert_eq!(ok, [1, 2, 3]);
    for _ in 0..2 {
        let failing = CountRequest {
            fail_code: UNAVAILABLE,
            interval_ms: 20,
            ..CountRequest::new(3)
        };
        let (items, error) = client.count(failing, &[]).expect_err("ends UNAVAILABLE");
        // The messages came with HTTP 200; the failure only in the trailers.
        assert_eq!(
            (items.as_slice(), error.code),
            (&[1, 2, 3][..], UNAVAILABLE)
        );
    }
    let (items, error) = client
        .count(CountRequest::new(3), &[])
        .expect_err("open: the fallback");
    assert!(items.is_empty());
    assert_eq!(
        (error.code, error.message.as_str()),
        (UNAVAILABLE, "circuit open")
    );
    assert_eq!(server.calls(), 3);
    wait_for_stats_flush();
    assert_eq!(calls_stat(&mesh, "success", "grpc"), 1);
    assert_eq!(calls_stat(&mesh, "failure", "grpc"), 2);
}

// ---- trace IDs and canary ----

#[test]
fn trace_headers_ride_as_metadata() {
    let (mesh, _server, client) =
        start(Mesh::builder().filter("traceid", r#"{"routes": {"echo": {"mode": "child"}}}"#));
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = say(&client, &[("traceparent", parent)])
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.envoy_log()));
    let seen = reply
        .header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent at the service: {:?}", reply.metadata));
    let fields: Vec<&str> = seen.split('-').collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert_eq!(
        fields[1], "0af7651916cd43dd8448eb211c80319c",
        "the trace is kept"
    );
    assert_ne!(
        fields[2], "b7ad6b7169203331",
        "a child span of the caller's"
    );
    // Without one, a trace is started.
    let started = say(&client, &[]).expect("call");
    assert!(
        started.header("traceparent").is_some(),
        "{:?}",
        started.metadata
    );
}

#[test]
fn canary_rules_pick_calls_by_method_and_metadata() {
    // Everyone to the canary, but Say stays stable unless the tenant is beta.
    let (_mesh, _server, client) = start(Mesh::builder().filter(
        "canary",
        r#"{"routes": {"echo": {"percent": 100, "rules": [
            {"name": "beta", "header": "x-tenant", "exact": "beta"},
            {"name": "say", "path_prefix": "/mesh.test.Echo/Say", "release": "stable"}]}}}"#,
    ));
    let tag = |tenant: &str| {
        let reply = say(&client, &[("x-tenant", tenant)]).expect("Say");
        reply.header("x-canary").map(str::to_owned)
    };
    assert_eq!(tag("alpha"), None, "Say is stable by its method");
    assert_eq!(tag("beta").as_deref(), Some("true"), "beta by its metadata");
}
