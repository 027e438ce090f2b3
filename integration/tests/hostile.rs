//! Hostile input through all four filters chained (`mesh_integration::chain`) in a real
//! Envoy at `--concurrency 2`: malformed, non-UTF-8, 60 KB and repeated header values, odd
//! paths, sent as raw bytes. Envoy must stay ready, no VM may fail, every answer must be
//! sane; and clients must not be able to pick their release or rate-limit bucket.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::chain::{self, Expect};
use mesh_integration::raw::RawReply;
use mesh_integration::{Mesh, Reply};
use mesh_policy::canary::point;

fn start() -> Mesh {
    chain::builder().start().unwrap_or_else(|e| panic!("{e}"))
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && parts.iter().zip([2, 32, 16, 2]).all(|(part, len)| {
            part.len() == len && part.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
        && parts[0] == "00"
}

/// What every served request must look like: the echo's JSON from the upstream the tag
/// chose, a valid trace context sent upstream, the trace id on the response.
fn assert_sane_served(name: &str, reply: &RawReply) {
    assert_eq!(reply.status, 200, "{name}: {reply:?}");
    let echo = reply
        .echo()
        .unwrap_or_else(|| panic!("{name}: not the echo's JSON"));
    let headers = &echo["headers"];
    let traceparent = headers["traceparent"].as_str().unwrap_or_default();
    assert!(
        is_traceparent(traceparent),
        "{name}: traceparent {traceparent:?}"
    );
    let trace_id = reply.header("x-trace-id").unwrap_or_default();
    assert_eq!(trace_id, traceparent.as_bytes()[3..35].as_ref(), "{name}");
    let tag = headers["x-canary"].as_str();
    let path = echo["path"].as_str().unwrap_or_default();
    // `catalog` trusts an incoming tag and keeps it as it came.
    if !path.starts_with("/catalog") {
        // Untrusted routes: the tag is the filter's, and the router followed it.
        assert!(
            matches!(tag, None | Some("true")),
            "{name}: tag {tag:?} went upstream"
        );
        let service = echo["service"].as_str().unwrap_or_default();
        assert_eq!(
            service == "v2",
            tag == Some("true"),
            "{name}: {service} with tag {tag:?}"
        );
    }
}

#[test]
fn hostile_headers_leave_envoy_ready_no_vm_failed_and_every_answer_sane() {
    let mut mesh = start();
    let baseline = mesh.wasm_health();
    assert!(baseline.failures.is_empty(), "{baseline:?}");
    let corpus = chain::hostile_corpus();
    let mut served = 0;
    let mut report = Vec::new();
    // Twice: new connections spread over both workers.
    for round in 0..2 {
        for hostile in &corpus {
            let reply = mesh.raw(&hostile.bytes).unwrap_or_else(|e| {
                panic!("{}: no answer ({e})\n{}", hostile.name, mesh.envoy_log())
            });
            if round == 0 {
                report.push(format!("{:>4} {}", reply.status, hostile.name));
            }
            match hostile.expect {
                Expect::Served => {
                    assert_sane_served(hostile.name, &reply);
                    served += 1;
                }
                Expect::Refused => {
                    assert!(
                        (400..500).contains(&reply.status),
                        "{}: {} {:?}",
                        hostile.name,
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                    assert!(
                        reply.header("x-trace-id").is_none(),
                        "{}: a filter ran",
                        hostile.name
                    );
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(mesh.envoy_running(), "Envoy exited");
    assert!(mesh.ready(), "Envoy is not ready");
    let health = mesh.wasm_health();
    assert!(
        health.failures.is_empty(),
        "a VM failed: {:#?}",
        health.failures
    );
    assert_eq!(
        (health.created, health.active, health.reloads),
        (baseline.created, baseline.active, 0),
        "VMs were replaced: {baseline:?} -> {health:?}"
    );
    // Every VM handled every request that reached it: each filter counted all of them.
    for counter in [
        "mesh_trace_requests_total;",
        "mesh_canary_requests_total;",
        "mesh_ratelimit_requests_total;",
    ] {
        assert_eq!(total(&mesh, counter), served, "{counter}");
    }
    let admitted: u64 = mesh
        .stats()
        .iter()
        .filter(|(name, _)| {
            name.starts_with("mesh_breaker_requests_total;") && name.ends_with(";decision=allowed")
        })
        .map(|(_, value)| value)
        .sum();
    assert_eq!(
        admitted, served,
        "mesh_breaker_requests_total decision=allowed"
    );
    // And a plain request still works.
    let reply = mesh.get("/checkout").send();
    assert_eq!(reply.status, 200);
}

/// Users whose sticky point is outside the 20 % canary split.
fn stable_users(n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|user| {
            point(chain::CANARY_SALT.as_bytes(), user.as_bytes()) >= chain::CANARY_PERCENT / 100.0
        })
        .take(n)
        .collect()
}

/// Through all four filters, a client's own `x-canary` (any spelling, repeated, not UTF-8)
/// never sends it to v2 and never reaches the upstream; only a route that trusts incoming
/// tags keeps it.
#[test]
fn a_client_cannot_force_the_canary_unless_the_route_trusts_it() {
    let mesh = start();
    for user in stable_users(4) {
        for path in ["/checkout", "/", "/checkout/items?x=1"] {
            for forged in [
                &["true"][..],
                &["TRUE"],
                &["true", "true"],
                &["1"],
                &[" true "],
            ] {
                let mut call = mesh.get(path).header("x-user-id", &user);
                for value in forged {
                    call = call.header("x-canary", value);
                }
                let reply = call.send();
                assert_eq!(service(&reply), "v1", "{user} {path} {forged:?}");
                assert_eq!(
                    reply.upstream_header("x-canary"),
                    None,
                    "{user} {path} {forged:?}"
                );
                assert_eq!(
                    reply.header("x-canary-decision").as_deref(),
                    Some("stable; sticky"),
                    "{user} {path} {forged:?}"
                );
            }
            let raw = mesh_integration::raw::request(
                "GET",
                path.as_bytes(),
                &[
                    ("x-user-id", user.clone().into_bytes()),
                    ("x-canary", b"true".to_vec()),
                    ("x-canary", chain::NOT_UTF8.to_vec()),
                ],
            );
            let reply = mesh.raw(&raw).unwrap();
            let echo = reply.echo().unwrap();
            assert_eq!(echo["service"], "v1", "{user} {path}: {echo}");
            assert!(
                echo["headers"]["x-canary"].is_null(),
                "{user} {path}: {echo}"
            );
        }
    }
    // The rule that may force it does; and the trusted route keeps an incoming tag.
    let forced = mesh
        .get("/checkout")
        .header("x-canary-force", "true")
        .send();
    assert_eq!(service(&forced), "v2");
    assert_eq!(forced.upstream_header("x-canary").as_deref(), Some("true"));
    let trusted = mesh.get("/catalog").header("x-canary", "true").send();
    assert_eq!(trusted.upstream_header("x-canary").as_deref(), Some("true"));
    assert_eq!(
        trusted.header("x-canary-decision").as_deref(),
        Some("canary; trusted")
    );
}

/// What the rate limiter's client-address key rests on, measured: with Envoy's default
/// `use_remote_address: false`, `source.address` is the last `x-forwarded-for` entry with
/// port 0; without the header, or with `use_remote_address: true`, it is the connection's
/// peer with its port. No other attribute gives a filter the peer.
#[test]
fn envoy_reports_an_address_from_forwarded_for_with_port_zero() {
    let source = |reply: &Reply| reply.upstream_header("x-fixture-source-address").unwrap();
    let mesh = Mesh::builder()
        .fixture()
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let forged = mesh
        .get("/plain")
        .header("x-forwarded-for", "6.6.6.6, 192.0.2.9")
        .send();
    assert_eq!(source(&forged), "192.0.2.9:0");
    let junk = mesh
        .get("/plain")
        .header("x-forwarded-for", "not-an-address")
        .send();
    let plain = mesh.get("/plain").send();
    for reply in [&junk, &plain] {
        let address = source(reply);
        let port: u16 = address.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
        assert_ne!(port, 0, "{address}");
    }
    let mesh = Mesh::builder()
        .fixture()
        .use_remote_address(true)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = mesh
        .get("/plain")
        .header("x-forwarded-for", "192.0.2.9")
        .send();
    assert!(
        source(&reply).starts_with("127.0.0.1:"),
        "{}",
        source(&reply)
    );
    assert!(!source(&reply).ends_with(":0"));
    // Envoy appended its own entry; the filter sees the header with it.
    let forwarded = reply.upstream_header("x-fixture-forwarded-for").unwrap();
    assert!(forwarded.starts_with("192.0.2.9,"), "{forwarded}");
}

/// A counter summed over every series whose name starts with `prefix`.
fn total(mesh: &Mesh, prefix: &str) -> u64 {
    mesh.stats()
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, value)| value)
        .sum()
}

fn service(reply: &Reply) -> String {
    reply
        .service()
        .unwrap_or_else(|| panic!("not from an upstream: {} {}", reply.status, reply.text()))
}
