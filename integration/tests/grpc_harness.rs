//! The gRPC test upstream and client themselves: straight from client to server, then
//! through an Envoy without filters. `Count { count: n }` streams 1..=n.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use mesh_integration::Mesh;
use mesh_integration::grpc::{
    COUNT_PATH, CountRequest, FAILURE_MESSAGE, GrpcClient, GrpcEcho, SAY_PATH, SERVICE, SayRequest,
};

/// 14: UNAVAILABLE.
const UNAVAILABLE: i32 = 14;
/// 2: UNKNOWN.
const UNKNOWN: i32 = 2;
/// 8: RESOURCE_EXHAUSTED.
const RESOURCE_EXHAUSTED: i32 = 8;

fn direct(name: &str) -> (GrpcEcho, GrpcClient) {
    let server = GrpcEcho::start(name).unwrap();
    assert!(server.addr().ip().is_loopback());
    let client = GrpcClient::connect(server.addr()).unwrap();
    (server, client)
}

#[test]
fn paths_name_the_service() {
    assert_eq!(SERVICE, "mesh.test.Echo");
    assert_eq!(SAY_PATH, "/mesh.test.Echo/Say");
    assert_eq!(COUNT_PATH, "/mesh.test.Echo/Count");
}

#[test]
fn say_echoes_the_message_the_metadata_and_the_server_name() {
    let (server, client) = direct("alpha");
    let reply = client
        .say(
            SayRequest::new("hello"),
            &[("X-Custom", "one"), ("x-custom", "two"), ("x-other", "3")],
        )
        .unwrap();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.server, "alpha");
    assert_eq!(reply.headers("x-custom"), ["one", "two"]);
    assert_eq!(reply.header("x-other"), Some("3"));
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("te"), Some("trailers"));
    assert!(
        reply
            .metadata
            .iter()
            .all(|p| p.name == p.name.to_lowercase()),
        "{:?}",
        reply.metadata
    );
    assert_eq!(server.calls(), 1);
}

#[test]
fn say_fails_with_the_code_asked_for() {
    let (server, client) = direct("alpha");
    let request = SayRequest {
        fail_code: UNAVAILABLE,
        ..SayRequest::new("hello")
    };
    let error = client.say(request, &[]).unwrap_err();
    assert_eq!(error.code, UNAVAILABLE, "{error}");
    assert_eq!(error.message, FAILURE_MESSAGE);
    // tonic answers a failed unary call trailers-only: the status is in the headers.
    assert_eq!(error.header("content-type"), Some("application/grpc"));
    assert_eq!(server.calls(), 1);
}

#[test]
fn say_answers_after_its_delay() {
    let (_server, client) = direct("alpha");
    let request = SayRequest {
        delay_ms: 300,
        ..SayRequest::new("later")
    };
    assert_eq!(client.say(request, &[]).unwrap().message, "later");
}

#[test]
fn a_call_over_the_client_timeout_ends_with_deadline_exceeded() {
    let server = GrpcEcho::start("slow").unwrap();
    let client = GrpcClient::connect(server.addr())
        .unwrap()
        .timeout(std::time::Duration::from_millis(200));
    let request = SayRequest {
        delay_ms: 3_000,
        ..SayRequest::new("never")
    };
    let error = client.say(request, &[]).unwrap_err();
    assert_eq!(error.code, 4, "{error}");
    assert!(error.message.starts_with("client:"), "{error}");
}

#[test]
fn count_streams_one_to_n() {
    let (server, client) = direct("alpha");
    assert_eq!(client.count(CountRequest::new(3), &[]).unwrap(), [1, 2, 3]);
    let spaced = CountRequest {
        interval_ms: 50,
        ..CountRequest::new(2)
    };
    assert_eq!(client.count(spaced, &[]).unwrap(), [1, 2]);
    assert_eq!(client.count(CountRequest::new(0), &[]).unwrap(), [0u32; 0]);
    assert_eq!(server.calls(), 3);
}

#[test]
fn count_ends_with_the_status_asked_for_after_its_messages() {
    let (_server, client) = direct("alpha");
    let request = CountRequest {
        fail_code: RESOURCE_EXHAUSTED,
        ..CountRequest::new(2)
    };
    let (received, error) = client.count(request, &[]).unwrap_err();
    assert_eq!(received, [1, 2]);
    assert_eq!(error.code, RESOURCE_EXHAUSTED, "{error}");
    assert_eq!(error.message, FAILURE_MESSAGE);
    // The headers came before the messages, the status in trailers: both are there.
    assert_eq!(error.header("content-type"), Some("application/grpc"));

    let at_once = CountRequest {
        fail_code: UNAVAILABLE,
        ..CountRequest::new(0)
    };
    let (received, error) = client.count(at_once, &[]).unwrap_err();
    assert!(received.is_empty());
    assert_eq!(error.code, UNAVAILABLE, "{error}");
}

#[test]
fn two_servers_are_told_apart_and_count_their_own_calls() {
    let (a, client_a) = direct("a");
    let (b, client_b) = direct("b");
    for _ in 0..3 {
        assert_eq!(client_a.say(SayRequest::new("x"), &[]).unwrap().server, "a");
    }
    assert_eq!(client_b.say(SayRequest::new("x"), &[]).unwrap().server, "b");
    assert_eq!((a.calls(), b.calls()), (3, 1));
}

#[test]
fn a_stopped_server_fails_the_call_and_nothing_hangs() {
    let (server, client) = direct("gone");
    client.say(SayRequest::new("x"), &[]).unwrap();
    drop(server);
    // The call on the closed connection, then one that cannot connect: tonic's statuses
    // (UNKNOWN or UNAVAILABLE), not the client's timeout; nothing is retried.
    for _ in 0..2 {
        let error = client.say(SayRequest::new("x"), &[]).unwrap_err();
        assert!([UNKNOWN, UNAVAILABLE].contains(&error.code), "{error}");
        assert!(!error.message.starts_with("client:"), "{error}");
    }
}

#[test]
fn through_envoy_without_filters() {
    let server = GrpcEcho::start("echo").unwrap();
    let mesh = server
        .behind(Mesh::builder())
        .unwrap_or_else(|e| panic!("{e}"));
    let client = GrpcClient::connect(mesh.listener()).unwrap();
    let log = || mesh.envoy_log();

    let reply = client
        .say(SayRequest::new("hi"), &[("x-custom", "yes")])
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str()),
        ("hi", "echo")
    );
    assert_eq!(reply.header("x-custom"), Some("yes"));
    // Headers Envoy adds on the way.
    assert!(
        reply.header("x-request-id").is_some(),
        "{:?}",
        reply.metadata
    );
    assert_eq!(reply.header("x-forwarded-proto"), Some("http"));

    let failing = SayRequest {
        fail_code: UNAVAILABLE,
        ..SayRequest::new("hi")
    };
    let error = client.say(failing, &[]).unwrap_err();
    assert_eq!(
        (error.code, error.message.as_str()),
        (UNAVAILABLE, FAILURE_MESSAGE)
    );

    assert_eq!(client.count(CountRequest::new(3), &[]).unwrap(), [1, 2, 3]);
    let failing = CountRequest {
        fail_code: RESOURCE_EXHAUSTED,
        interval_ms: 20,
        ..CountRequest::new(2)
    };
    let (received, error) = client.count(failing, &[]).unwrap_err();
    assert_eq!(received, [1, 2]);
    assert_eq!(
        (error.code, error.message.as_str()),
        (RESOURCE_EXHAUSTED, FAILURE_MESSAGE)
    );
    assert_eq!(server.calls(), 4);
}
