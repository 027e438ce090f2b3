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
use mesh_integration::oracle::{self, canary_point};
use mesh_integration::raw;
use mesh_integration::{Mesh, Reply};
use std::time::Instant;

// Inputs only: the keys an attacker computes offline with the public code (the expected
// values, each key's own burst, do not come from it).
use mesh_policy::hash::stable_hash;
use mesh_policy::ratelimit::DEFAULT_SLOTS;
use mesh_policy::ratelimit::key::{self, KeyValue};
use mesh_policy::ratelimit::secret::SlotSecret;

fn start() -> Mesh {
    chain::builder().start().unwrap_or_else(|e| panic!("{e}"))
}

/// `/limited` keyed by `x-api-key` with the demo's burst but a refill too slow to matter (one
/// token per 100 s): a drained key stays drained however slowly a loaded machine runs the
/// test (at the demo's 5/s, a drain slower than 200 ms per request counted refills).
fn start_slow_refill() -> Mesh {
    let config = format!(
        r#"{{"routes": {{"limited": {{"limits": [{{"rate_per_s": 0.01, "burst": {}, "key": {{"header": "x-api-key"}}}}]}}}}}}"#,
        chain::LIMITED_BURST
    );
    Mesh::builder()
        .filter("ratelimit", &config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A valid version-`00` traceparent by the W3C grammar (the test crate's own reading).
fn is_traceparent(value: &str) -> bool {
    oracle::traceparent(value).is_ok_and(|tp| tp.version == "00")
}

/// What every served request must look like: the echo's JSON from the upstream the tag
/// chose, a valid trace context sent upstream, the trace id on the response.
fn assert_sane_served(name: &str, reply: &Reply) {
    assert_eq!(reply.status, 200, "{name}: {reply:?}");
    let echo = reply
        .try_echo()
        .unwrap_or_else(|| panic!("{name}: not the echo's JSON"));
    let headers = &echo["headers"];
    let traceparent = headers["traceparent"].as_str().unwrap_or_default();
    assert!(
        is_traceparent(traceparent),
        "{name}: traceparent {traceparent:?}"
    );
    let trace_id = reply.header_bytes("x-trace-id").unwrap_or_default();
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
            canary_point(chain::CANARY_SALT.as_bytes(), user.as_bytes())
                >= chain::CANARY_PERCENT / 100.0
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
            let echo = reply.echo();
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

/// Sends `/limited` with `key` until the first 429 (at most `bound` requests); the admitted
/// count.
fn drain(mesh: &Mesh, key: &str, bound: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..bound {
        match mesh.get("/limited").header("x-api-key", key).send().status {
            200 => admitted += 1,
            429 => return admitted,
            other => panic!("{key}: {other}"),
        }
    }
    panic!("{key}: no 429 after {bound} requests")
}

/// `/limited` with `x-api-key` on two lines, as raw bytes (Envoy forwards both lines).
fn two_key_lines(first: &str, second: &str) -> Vec<u8> {
    raw::request(
        "GET",
        b"/limited",
        &[
            ("x-api-key", first.as_bytes().to_vec()),
            ("x-api-key", second.as_bytes().to_vec()),
        ],
    )
}

/// Issue 29: a key header on two lines. Envoy forwards both lines, in order; an upstream may
/// read the first, the last or both joined, so keying on one line let a client with an
/// exhausted key through (`fresh` first, its real key last). By default such a request is
/// rejected, in either order, whatever the buckets hold; with `when_repeated: join` the key
/// is the lines joined with `,`, what the upstream that combines them reads.
#[test]
fn a_key_header_on_two_lines_is_rejected_or_keyed_on_what_the_upstream_reads() {
    let mesh = start_slow_refill();
    assert_eq!(drain(&mesh, "exhausted", 100) as u64, chain::LIMITED_BURST);
    for (first, second) in [
        ("fresh", "exhausted"),
        ("exhausted", "fresh"),
        ("fresh-a", "fresh-b"),
    ] {
        let reply = mesh.raw(&two_key_lines(first, second)).unwrap();
        assert_eq!(reply.status, 429, "{first}, {second}: {reply:?}");
        let served = reply
            .try_echo()
            .is_some_and(|echo| echo.get("service").is_some());
        assert!(!served, "{first}, {second} reached the upstream");
    }
    // One line is read as it is: a fresh key is served.
    assert_eq!(
        mesh.get("/limited")
            .header("x-api-key", "fresh")
            .send()
            .status,
        200
    );

    // Join: no refill during the test (one token per 100 s).
    let mesh = Mesh::builder()
        .concurrency(2)
        .filter(
            "ratelimit",
            r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.01, "burst": 3, "key": {"header": "x-api-key", "when_repeated": "join"}}]}}}"#,
        )
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(drain(&mesh, "exhausted", 10), 3);
    // The joined key is what the upstream reads: exhausted first, fresh last is a new key...
    let reply = mesh.raw(&two_key_lines("exhausted", "fresh")).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.echo();
    assert_eq!(echo["headers"]["x-api-key"], "exhausted,fresh", "{echo}");
    // ...and the same bucket as that value on one line, in that order only.
    assert_eq!(drain(&mesh, "exhausted,fresh", 10), 2);
    let reply = mesh.raw(&two_key_lines("exhausted", "fresh")).unwrap();
    assert_eq!(reply.status, 429, "{reply:?}");
    let reply = mesh.raw(&two_key_lines("fresh", "exhausted")).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.echo()["headers"]["x-api-key"], "fresh,exhausted");
}

/// Keys an attacker computes offline to share `victim`'s slot of `/limited`: with the
/// placement before issue 29 (`stable_hash(salt, key) % 1024`, public) and with the keyed
/// hash under an all-zero key (what is computable without the Envoy's secret).
fn offline_collisions(victim: &str, each: usize) -> Vec<String> {
    let salt = key::salt("limited", 0);
    let value = |k: &str| KeyValue::Value(k.as_bytes().to_vec().into());
    let public = |k: &str| key::slot(SlotSecret::PUBLIC, salt, &value(k), DEFAULT_SLOTS);
    let before = |k: &str| stable_hash(&[&salt.to_le_bytes(), k.as_bytes()]) % 1024;
    let mut keys: Vec<String> = (0..)
        .map(|i| format!("attacker-{i}"))
        .filter(|k| before(k) == before(victim))
        .take(each)
        .collect();
    keys.extend(
        (0..)
            .map(|i| format!("attacker-{i}"))
            .filter(|k| public(k) == public(victim))
            .take(each),
    );
    keys
}

/// Issue 29: a client cannot lock another out by spending its slot. Keys computed offline
/// to share the victim's slot land elsewhere: each attacker key gets its own burst, and the
/// victim, who sent nothing before, still gets all of its own.
#[test]
fn keys_computed_offline_to_share_a_victims_slot_do_not_lock_it_out() {
    let mesh = start_slow_refill();
    let attackers = offline_collisions("victim", 4);
    for attacker in &attackers {
        assert_eq!(
            drain(&mesh, attacker, 100) as u64,
            chain::LIMITED_BURST,
            "{attacker}"
        );
    }
    // Each attacker key drew a full bucket of its own: no two of them share a slot either
    // (all 8 shared one slot before issue 29, 4 of them with the zero key).
    let victim = (0..chain::LIMITED_BURST)
        .filter(|_| {
            mesh.get("/limited")
                .header("x-api-key", "victim")
                .send()
                .status
                == 200
        })
        .count() as u64;
    assert_eq!(victim, chain::LIMITED_BURST);
}

/// The slot secret is never shown: not in the log (modules at debug), stats, responses or a
/// config error. A configured one is checked (the per-Envoy one is never known outside).
#[test]
fn the_slot_secret_never_shows_in_logs_stats_or_responses() {
    const SECRET: &str = "hostile-probe-slot-secret-7f3a9c";
    let config = format!(
        r#"{{"routes": {{"limited": {{"slot_secret": "{SECRET}", "limits": [{{"rate_per_s": 5, "burst": 2, "key": {{"header": "x-api-key"}}}}]}}}}}}"#
    );
    let mesh = Mesh::builder()
        .module_log_level("debug")
        .filter("ratelimit", &config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = String::new();
    for _ in 0..4 {
        let reply = mesh.get("/limited").header("x-api-key", "k").send();
        seen.push_str(&format!("{reply:?}"));
    }
    assert!(seen.contains("429"), "no rejection: {seen}");
    seen.push_str(&mesh.stats_page("/stats"));
    seen.push_str(&mesh.envoy_log());
    let short = config.replace(SECRET, &SECRET[..12]);
    let refused = Mesh::builder().filter("ratelimit", &short).start();
    seen.push_str(&format!(
        "{}",
        refused.err().expect("a short secret is refused")
    ));
    assert!(seen.contains("slot_secret: must be at least 16 characters long"));
    // Envoy itself logs the plugin configuration only at trace level, and the refused
    // config's error names the field, not the value.
    let shown = seen.lines().find(|l| l.contains(&SECRET[..12]));
    assert_eq!(shown, None, "the secret shows");
}

/// Issue 29: a flood of distinct keys spares honest clients. 20,000 keys, one request each,
/// pipelined on 8 connections; then 100 fresh keys each send their 10 burst requests: at
/// least 95 % of them get 9 or more. What decides is the tokens a slot gets back during the
/// flood (rate x its time): the issue's 5/s over up to 5 s is up to 25; the limit here is
/// 1/s, so a flood of up to 25 s (9 s measured on a busy machine) is as hard as the issue's
/// or harder. Prints the flood's time and Envoy's heap growth (slot records are created as
/// keys land in them: about 17,000 of the 65,536 here).
#[test]
fn a_flood_of_distinct_keys_spares_fresh_keys() {
    const FLOOD: usize = 20_000;
    const CONNECTIONS: usize = 8;
    const FRESH: usize = 100;
    let mesh = Mesh::builder()
        .concurrency(2)
        .filter(
            "ratelimit",
            r#"{"routes": {"limited": {"limits": [{"rate_per_s": 1, "burst": 10, "key": {"header": "x-api-key"}}]}}}"#,
        )
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    // Bind the route on both workers before measuring the heap.
    for i in 0..4 {
        mesh.get("/limited")
            .header("x-api-key", format!("warm-{i}"))
            .new_connection()
            .send();
    }
    let before = allocated(&mesh);
    let began = Instant::now();
    let statuses = raw::flood_distinct_keys(
        mesh.listener(),
        b"/limited",
        "x-api-key",
        "flood",
        FLOOD,
        CONNECTIONS,
    )
    .unwrap();
    let flood_took = began.elapsed();
    assert_eq!(statuses.len(), FLOOD);
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let spared = (0..FRESH)
        .filter(|i| {
            let key = format!("fresh-{i}");
            let call = || mesh.get("/limited").header("x-api-key", &key).send().status;
            (0..chain::LIMITED_BURST).filter(|_| call() == 200).count() >= 9
        })
        .count();
    let after = allocated(&mesh);
    eprintln!(
        "{FLOOD} keys in {flood_took:?} ({admitted} admitted); {spared} of {FRESH} fresh keys got 9+ tokens; \
         Envoy's heap {before} -> {after} (+{} bytes)",
        after.saturating_sub(before)
    );
    assert_eq!(
        admitted, FLOOD,
        "every flood key has a token of its own or shares a full slot"
    );
    assert!(spared * 100 >= FRESH * 95, "{spared} of {FRESH}");
}

/// Bytes Envoy's heap holds (tcmalloc's `allocated`): shared data lives there.
fn allocated(mesh: &Mesh) -> u64 {
    let memory: serde_json::Value = serde_json::from_str(&mesh.admin("/memory")).unwrap();
    memory["allocated"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap()
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
