//! The bundle against the four separate modules, compared directly: one scripted sequence of
//! requests (trace headers, canary tags by rule and by split, rate-limit rejections, a
//! breaker opening, rejecting, probing and closing) goes through both, request by request,
//! and every reply, every request header the upstream received and every stat must be the
//! same, bar values drawn at random (span and trace ids, Envoy's request ids, minted cookies).
//! Runs once, whatever `MESH_MODULES` says: it loads both.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_integration::{Mesh, Modules, Reply};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const OPEN_MS: u64 = 300;
const CANARY: &str = r#"{"salt": "shop", "percent": 50, "sticky": {"header": "x-user-id"},
    "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"},
              {"name": "new", "path_prefix": "/checkout/new"}],
    "response_header": "x-canary-decision"}"#;

/// Every filter on every demo route, with limits and a breaker small enough to trip.
fn mesh(modules: Modules) -> Mesh {
    Mesh::builder()
        .modules(modules)
        .filter(
            "traceid",
            r#"{"default": {"emit": ["w3c", "b3", "b3multi", "request_id"], "response_header": "x-trace-id"}}"#,
        )
        .filter(
            "canary",
            // A request without a sticky key would be split at random: every one of the
            // script's on `checkout` has one or matches a rule.
            &format!(r#"{{"routes": {{"checkout": {CANARY}, "checkout-canary": {CANARY}}}}}"#),
        )
        .filter(
            "ratelimit",
            r#"{"routes": {"limited": {"limits": [
                {"rate_per_s": 0.001, "burst": 3, "key": {"header": "x-api-key"}}]}}}"#,
        )
        .filter(
            "breaker",
            &format!(
                r#"{{"routes": {{"fragile": {{"consecutive_failures": 3, "open_ms": {OPEN_MS},
                    "half_open_max_requests": 1}}}}}}"#
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One request of the script: path and headers.
struct Step {
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// A pause after it (the breaker's open time running out).
    pause_ms: u64,
}

fn step(path: &'static str, headers: &[(&'static str, &'static str)]) -> Step {
    Step {
        path,
        headers: headers.to_vec(),
        pause_ms: 0,
    }
}

fn script() -> Vec<Step> {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0";
    let mut steps = vec![
        step("/catalog", &[]),
        step(
            "/checkout",
            &[
                ("traceparent", traceparent),
                ("tracestate", "vendor=1"),
                ("x-user-id", "user-4"),
            ],
        ),
        step("/checkout", &[("b3", b3), ("x-user-id", "user-9")]),
        step("/checkout", &[("x-user-id", "user-1")]),
        step("/checkout", &[("x-canary-force", "true")]),
        step("/checkout/new", &[]),
        step(
            "/checkout",
            &[("x-canary", "true"), ("x-user-id", "user-9")],
        ),
    ];
    for key in ["a", "a", "b", "a", "a", "b", "b", "b", "a"] {
        steps.push(step("/limited", &[("x-api-key", key)]));
    }
    steps.push(step("/limited", &[]));
    for _ in 0..3 {
        steps.push(step("/fragile", &[("x-echo-status", "500")]));
    }
    let mut rejected = step("/fragile", &[]);
    rejected.pause_ms = OPEN_MS + 200;
    steps.push(rejected);
    // The probe, then the closed breaker again.
    steps.push(step("/fragile", &[]));
    steps.push(step("/fragile", &[("x-echo-status", "503")]));
    steps
}

/// A reply as compared: status, response headers and the upstream's view of the request,
/// with random values replaced by their shape.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, String>,
    upstream: Option<BTreeMap<String, String>>,
    body: Option<String>,
}

/// Response headers Envoy itself sets per response (time, upstream timing).
const ENVOY_OWN: [&str; 3] = ["date", "x-envoy-upstream-service-time", "content-length"];

fn seen(reply: &Reply) -> Seen {
    let headers = reply
        .headers
        .iter()
        .filter(|(name, _)| !ENVOY_OWN.contains(&name.to_ascii_lowercase().as_str()))
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                shape(&String::from_utf8_lossy(value)),
            )
        })
        .collect();
    // An echo upstream's answer, or a local reply (its body compared as it is).
    let echo: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let upstream = echo
        .as_ref()
        .and_then(|echo| echo["headers"].as_object())
        .map(|headers| {
            headers
                .iter()
                // The listener's port differs between the two Envoys.
                .filter(|(name, _)| *name != "host")
                .map(|(name, value)| (name.clone(), shape(value.as_str().unwrap())))
                .collect()
        });
    Seen {
        status: reply.status,
        headers,
        body: upstream.is_none().then(|| reply.text()),
        upstream,
    }
}

/// `value` with every run of hex digits of a random id's length (16 and 32: span and trace
/// ids, minted cookies) replaced by `<hexN>`, unless it is a value the script sent; a UUID
/// (Envoy's request ids) by `<uuid>`.
fn shape(value: &str) -> String {
    let groups: Vec<&str> = value.split('-').collect();
    if groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return "<uuid>".to_owned();
    }
    let sent = [
        TRACE,
        "00f067aa0ba902b7",
        "0123456789abcdef0123456789abcdef",
    ];
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if matches!(run.len(), 16 | 32) && !sent.contains(&run.as_str()) {
            out.push_str(&format!("<hex{}>", run.len()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in value.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[test]
fn the_bundle_answers_and_counts_as_the_four_modules_do() {
    let separate = mesh(Modules::Separate);
    let bundle = mesh(Modules::Bundle);
    let mut statuses = Vec::new();
    for (i, step) in script().into_iter().enumerate() {
        let send = |mesh: &Mesh| {
            let mut call = mesh.get(step.path);
            for (name, value) in &step.headers {
                call = call.header(name, value);
            }
            seen(&call.send())
        };
        let (a, b) = (send(&separate), send(&bundle));
        assert_eq!(a, b, "step {i}: {} {:?}", step.path, step.headers);
        statuses.push(a.status);
        std::thread::sleep(Duration::from_millis(step.pause_ms));
    }
    // The script did what it is for: rejections by the limiter and by the open breaker.
    // Key `a` sends 5 with a burst of 3, `b` 4: at least 3 rejected (a keyless request too,
    // if the limit refuses those).
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 3,
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    let (a, b) = (separate.stats(), bundle.stats());
    assert_eq!(a, b);
    for name in [
        "mesh_ratelimit_requests_total;route=limited;decision=rejected",
        "mesh_breaker_transitions_total;route=fragile;to=open",
        "mesh_breaker_transitions_total;route=fragile;to=closed",
        "mesh_canary_requests_total;route=checkout;release=canary;reason=rule;rule=force",
    ] {
        assert!(a.get(name).copied().unwrap_or(0) > 0, "{name}: {a:?}");
    }
}
