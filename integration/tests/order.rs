//! The four filters together, as separate modules and as the bundle (`MESH_MODULES=bundle`):
//! a local reply ends the request there, and the filters before it still answer.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::Mesh;

/// Two requests per 1000 s on `fragile`, a breaker behind it, trace IDs on every reply.
fn mesh() -> Mesh {
    Mesh::builder()
        .filter(
            "traceid",
            r#"{"default": {"response_header": "x-trace-id"}}"#,
        )
        .filter("canary", r#"{"routes": {"fragile": {"percent": 0}}}"#)
        .filter(
            "ratelimit",
            r#"{"routes": {"fragile": {"limits": [{"rate_per_s": 0.001, "burst": 2}]}}}"#,
        )
        .filter(
            "breaker",
            r#"{"routes": {"fragile": {"consecutive_failures": 3}}}"#,
        )
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_rate_limited_request_never_reaches_the_breaker_and_still_gets_its_trace_id() {
    let mesh = mesh();
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            let reply = mesh.get("/fragile").send();
            assert!(
                reply.header("x-trace-id").is_some(),
                "no trace id on {} {:?}",
                reply.status,
                reply.headers
            );
            reply.status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(mesh.upstream_count("v1"), 2);
    // Every stage before the rate limiter saw all five; the breaker only the two admitted.
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=fragile;outcome=started"),
        5
    );
    let canary: u64 = mesh
        .stats()
        .iter()
        .filter(|(name, _)| name.starts_with("mesh_canary_requests_total;route=fragile;"))
        .map(|(_, count)| count)
        .sum();
    assert_eq!(canary, 5, "{:?}", mesh.stats());
    assert_eq!(
        mesh.stat("mesh_ratelimit_requests_total;route=fragile;decision=rejected"),
        3
    );
    assert_eq!(
        mesh.stat("mesh_breaker_requests_total;route=fragile;decision=allowed"),
        2
    );
    assert_eq!(
        mesh.stat("mesh_breaker_calls_total;route=fragile;outcome=success;protocol=http"),
        2,
        "{:?}",
        mesh.stats()
    );
}
