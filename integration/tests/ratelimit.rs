//! The rate limiter in a real Envoy with two workers (`--concurrency 2`: a VM each), with the
//! built `dist/ratelimit.wasm`.
//!
//! Pass conditions are GCRA arithmetic over measured time: a bucket of `burst` refilled at
//! `rate` admits at most `burst + floor(rate * elapsed)` requests in `elapsed` seconds, however
//! they are spread over workers. Nothing here asserts how fast the machine is.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_integration::{Mesh, Reply};
use mesh_policy::ratelimit::DEFAULT_SLOTS;

/// `limited` is the demo's (5/s, burst 10 per `x-api-key`); `checkout` has the reference
/// numbers (100/s, burst 50) for the whole route; `catalog` is a dry run. `plain`, `default`
/// and the unnamed route have no policy.
const CONFIG: &str = r#"{
    "routes": {
        "limited": {"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}}]},
        "checkout": {"limits": [{"rate_per_s": 100, "burst": 50}]},
        "catalog": {"limits": [{"rate_per_s": 5, "burst": 10}], "dry_run": true}
    }
}"#;

fn mesh_with(config: &str) -> Mesh {
    Mesh::builder()
        .filter("ratelimit", config)
        .concurrency(2)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn mesh() -> Mesh {
    mesh_with(CONFIG)
}

fn limited(mesh: &Mesh, api_key: &str) -> Reply {
    mesh.get("/limited").header("x-api-key", api_key).send()
}

fn number(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} on {} {:?}", reply.status, reply.headers))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The most a bucket can admit in `elapsed`: its burst plus what refilled meanwhile.
fn admissible(burst: u64, rate_per_s: f64, elapsed: Duration) -> u64 {
    burst + (rate_per_s * elapsed.as_secs_f64()).floor() as u64
}

/// Requests each worker's listener accepted connections for (`worker_0`, `worker_1`, ...).
fn connections_per_worker(mesh: &Mesh) -> Vec<u64> {
    let mut workers: Vec<(String, u64)> = mesh
        .admin("/stats?filter=worker_[0-9]+\\.downstream_cx_total")
        .lines()
        .filter(|line| line.starts_with("listener.127.0.0.1_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    workers.sort();
    workers.into_iter().map(|(_, n)| n).collect()
}

fn assert_rejected_with_headers(reply: &Reply, limit: u64) {
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(number(reply, "retry-after") >= 1);
    assert_eq!(number(reply, "x-ratelimit-limit"), limit);
    assert_eq!(number(reply, "x-ratelimit-remaining"), 0);
    assert!(number(reply, "x-ratelimit-reset") >= 1);
    assert_eq!(reply.text(), r#"{"error":"rate_limited"}"#);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.service(),
        None,
        "a rejection must not come from upstream"
    );
}

#[test]
fn thirty_concurrent_requests_with_one_key_admit_the_burst_and_reject_the_rest() {
    let mesh = mesh();
    let start = Barrier::new(30);
    let began = Instant::now();
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..30)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    limited(&mesh, "alice")
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = began.elapsed();
    let admitted: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let n = admitted.len() as u64;
    eprintln!("admitted {n} of 30 in {elapsed:?}");
    assert!(n >= 10, "the burst of 10 must pass, got {n}");
    assert!(
        n <= admissible(10, 5.0, elapsed),
        "{n} admitted in {elapsed:?}: more than burst + refill, buckets are not shared"
    );
    for reply in &admitted {
        assert_eq!(reply.service().as_deref(), Some("v1"));
        assert_eq!(number(reply, "x-ratelimit-limit"), 10);
        assert!(number(reply, "x-ratelimit-remaining") < 10);
        assert!(number(reply, "x-ratelimit-reset") >= 1);
    }
    for reply in replies.iter().filter(|r| r.status != 200) {
        assert_rejected_with_headers(reply, 10);
    }
    assert_eq!(
        mesh.upstream_count("v1"),
        n,
        "rejected requests reached upstream"
    );
    assert_eq!(
        mesh.stat("mesh_ratelimit_requests_total;route=limited;decision=allowed"),
        n
    );
    assert_eq!(
        mesh.stat("mesh_ratelimit_requests_total;route=limited;decision=rejected"),
        30 - n
    );
    let workers = connections_per_worker(&mesh);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers.iter().all(|n| *n > 0),
        "both workers must have served: {workers:?}"
    );
}

/// The reference numbers, 100/s with a bucket of 50, from several connections spread over
/// both workers as fast as they go: the admitted count follows one bucket, not one per worker.
#[test]
fn reference_rate_holds_across_two_workers_not_doubled() {
    let mesh = mesh();
    let Flood {
        sent,
        admitted,
        elapsed,
        ..
    } = flood(&mesh, "/checkout", 1200);
    let bound = admissible(50, 100.0, elapsed);
    eprintln!("admitted {admitted} of {sent} in {elapsed:?} (bound {bound})");
    assert!(admitted >= 50, "the burst of 50 must pass, got {admitted}");
    assert!(
        admitted <= bound,
        "{admitted} admitted in {elapsed:?}, more than 50 + 100/s: buckets are not shared"
    );
    assert!(admitted < sent, "the load never exceeded the limit");
    assert_eq!(mesh.upstream_count("v1"), admitted);
    assert_eq!(
        mesh.stat("mesh_ratelimit_requests_total;route=checkout;decision=rejected"),
        sent - admitted
    );
    let workers = connections_per_worker(&mesh);
    assert!(
        workers.len() == 2 && workers.iter().all(|n| *n > 0),
        "both workers must have served: {workers:?}"
    );
}

/// A bucket large enough that workers lease tokens (500/s, burst 1000): from both workers as
/// fast as they go, the admitted count never exceeds one bucket's, and falls short of what
/// one bucket admits of the same arrivals (taken one token at a time, as GCRA does without
/// leases) by no more than what leases may hold back: their charge (20 ms of tokens) and the
/// tokens each worker may still hold (31).
#[test]
fn leases_keep_a_large_bucket_exact_across_two_workers() {
    let config = r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 500, "burst": 1000}]}}}"#;
    let mesh = mesh_with(config);
    let Flood {
        admitted,
        elapsed,
        mut arrivals,
        ..
    } = flood(&mesh, "/checkout", 4000);
    let most = admissible(1000, 500.0, elapsed);
    arrivals.sort();
    let gcra = one_token_at_a_time(&arrivals, 1000, Duration::from_millis(2));
    // What leases may hold back, and a few ms of difference between this process's clock
    // and the moment Envoy saw each request (25 tokens).
    let least = gcra.saturating_sub(10 + 2 * 31 + 25);
    eprintln!(
        "admitted {admitted} in {elapsed:?} (one token at a time: {gcra}; bounds {least}..{most})"
    );
    assert!(
        admitted <= most,
        "{admitted} admitted, more than one bucket's {most}"
    );
    assert!(admitted >= least, "{admitted} admitted, fewer than {least}");
    let workers = connections_per_worker(&mesh);
    assert!(
        workers.len() == 2 && workers.iter().all(|n| *n > 0),
        "both workers must have served: {workers:?}"
    );
}

/// What a flood of requests got: how many were sent and admitted, over how long, and when
/// each was sent (since the flood began).
struct Flood {
    sent: u64,
    admitted: u64,
    elapsed: Duration,
    arrivals: Vec<Duration>,
}

/// `requests` GETs of `path` from six clients at once, each as fast as it goes (new
/// connections spread over the workers), bounded by a minute.
fn flood(mesh: &Mesh, path: &str, requests: usize) -> Flood {
    const CLIENTS: usize = 6;
    let sent = AtomicUsize::new(0);
    let admitted = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = Barrier::new(CLIENTS);
    let began = Instant::now();
    let arrivals = std::sync::Mutex::new(Vec::with_capacity(requests));
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                start.wait();
                while sent.fetch_add(1, Ordering::SeqCst) < requests && Instant::now() < deadline {
                    arrivals.lock().unwrap().push(began.elapsed());
                    let reply = mesh.get(path).send();
                    match reply.status {
                        200 => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        429 => {}
                        other => panic!("unexpected status {other}: {}", reply.text()),
                    }
                }
            });
        }
    });
    Flood {
        sent: sent.load(Ordering::SeqCst).min(requests) as u64,
        admitted: admitted.load(Ordering::SeqCst) as u64,
        elapsed: began.elapsed(),
        arrivals: arrivals.into_inner().unwrap(),
    }
}

/// How many of `arrivals` (sorted) a bucket of `burst`, a token every `period`, admits when
/// each takes its own token (GCRA, as governor computes it).
fn one_token_at_a_time(arrivals: &[Duration], burst: u32, period: Duration) -> u64 {
    let tolerance = period * (burst - 1);
    let mut tat = Duration::ZERO;
    let mut admitted = 0;
    for &at in arrivals {
        if at + tolerance >= tat {
            tat = tat.max(at) + period;
            admitted += 1;
        }
    }
    admitted
}

#[test]
fn two_keys_are_independent() {
    // Envoy places keys with a secret of its own: alice and bob share a slot with
    // probability 1/DEFAULT_SLOTS.
    const { assert!(DEFAULT_SLOTS >= 65_536) };
    let mesh = mesh();
    let began = Instant::now();
    let alice: Vec<u16> = (0..20).map(|_| limited(&mesh, "alice").status).collect();
    let bob: Vec<u16> = (0..20).map(|_| limited(&mesh, "bob").status).collect();
    let elapsed = began.elapsed();
    for (name, statuses) in [("alice", &alice), ("bob", &bob)] {
        let n = statuses.iter().filter(|s| **s == 200).count() as u64;
        assert!(n >= 10, "{name}: {statuses:?}");
        assert!(n <= admissible(10, 5.0, elapsed), "{name}: {statuses:?}");
        assert!(statuses.contains(&429), "{name}: {statuses:?}");
    }
}

/// Sends `/limited` requests with `key` one after the other until the first 429; returns the
/// admitted count and the time just before and just after that 429.
fn drain(mesh: &Mesh, key: &str) -> (u64, Instant, Instant) {
    let mut admitted = 0;
    for _ in 0..200 {
        let before = Instant::now();
        let reply = limited(mesh, key);
        match reply.status {
            200 => admitted += 1,
            429 => return (admitted, before, Instant::now()),
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    panic!("{key}: no 429 in 200 requests")
}

#[test]
fn after_a_pause_tokens_come_back_at_the_configured_rate() {
    let mesh = mesh();
    let (burst, emptying, emptied) = drain(&mesh, "carol");
    assert!(burst >= 10, "{burst}");
    // The first 429 was decided between `emptying` and `emptied`, with under one token left.
    std::thread::sleep(Duration::from_millis(1200));
    let resumed = Instant::now();
    let (refilled, last_started, _) = drain(&mesh, "carol");
    // At least what accrued from the 429 to the restart; at most the fraction left at the 429
    // plus what accrued from then until the last request was sent.
    let at_least = admissible(0, 5.0, resumed - emptied).min(10);
    let at_most = admissible(1, 5.0, last_started - emptying);
    eprintln!(
        "refilled {refilled} after a pause of {:?} (bounds {at_least}..={at_most})",
        resumed - emptied
    );
    assert!(
        (at_least..=at_most).contains(&refilled),
        "{refilled} not in {at_least}..={at_most}"
    );
}

#[test]
fn retry_after_is_right_and_waiting_it_out_passes() {
    // One token every 2 s.
    let mesh = mesh_with(
        r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.5, "burst": 1, "key": {"header": "x-api-key"}}]}}}"#,
    );
    let began = Instant::now();
    let first = limited(&mesh, "dave");
    assert_eq!(first.status, 200);
    assert_eq!(number(&first, "x-ratelimit-remaining"), 0);
    assert_eq!(number(&first, "x-ratelimit-reset"), 2);
    let second = limited(&mesh, "dave");
    let elapsed = began.elapsed();
    assert_rejected_with_headers(&second, 1);
    // The next token is due 2 s after the first request was decided.
    let retry_after = number(&second, "retry-after");
    let earliest = (2.0 - elapsed.as_secs_f64()).ceil().max(1.0) as u64;
    assert!(
        (earliest..=2).contains(&retry_after),
        "retry-after {retry_after} after {elapsed:?}"
    );
    assert_eq!(number(&second, "x-ratelimit-reset"), retry_after);
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(
        limited(&mesh, "dave").status,
        200,
        "Retry-After was too short"
    );
}

#[test]
fn dry_run_lets_everything_through_and_counts() {
    let mesh = mesh();
    let began = Instant::now();
    for _ in 0..30 {
        let reply = mesh.get("/catalog").send();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.service().as_deref(), Some("v1"));
        assert_eq!(
            reply.header("x-ratelimit-limit"),
            None,
            "dry run adds no headers"
        );
    }
    let elapsed = began.elapsed();
    assert_eq!(mesh.upstream_count("v1"), 30);
    let allowed = mesh.stat("mesh_ratelimit_requests_total;route=catalog;decision=allowed");
    let dry = mesh.stat("mesh_ratelimit_requests_total;route=catalog;decision=dry_run_rejected");
    assert_eq!(allowed + dry, 30);
    assert!(
        (10..=admissible(10, 5.0, elapsed)).contains(&allowed),
        "{allowed}"
    );
    assert_eq!(
        mesh.stat("mesh_ratelimit_requests_total;route=catalog;decision=rejected"),
        0
    );
    assert!(
        mesh.envoy_log()
            .contains("ratelimit route=catalog dry_run=true would_reject=1"),
        "{}",
        mesh.envoy_log()
    );
}

#[test]
fn routes_without_policy_are_untouched() {
    let mesh = mesh();
    for path in ["/plain", "/unnamed", "/"] {
        for _ in 0..40 {
            let reply = mesh.get(path).send();
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.header("x-ratelimit-limit"), None, "{path}");
        }
    }
    assert_eq!(mesh.upstream_count("v1"), 120);
    assert!(mesh.stats().is_empty(), "{:?}", mesh.stats());
    // The control: the module is loaded, and its own route is limited and counted.
    assert!(
        limited(&mesh, "control")
            .header("x-ratelimit-limit")
            .is_some()
    );
    assert_eq!(
        mesh.nonzero_stats().into_keys().collect::<Vec<_>>(),
        ["mesh_ratelimit_requests_total;route=limited;decision=allowed"]
    );
}

#[test]
fn stats_reach_prometheus_with_route_and_decision_labels() {
    let mesh = mesh();
    for _ in 0..12 {
        limited(&mesh, "erin");
    }
    let prometheus = mesh.stats_page("/stats/prometheus");
    assert!(
        prometheus.contains(r#"mesh_ratelimit_requests_total{route="limited",decision="allowed"}"#),
        "{prometheus}"
    );
    assert!(
        prometheus
            .contains(r#"mesh_ratelimit_store_errors_total{route="limited",error="contended"} 0"#),
        "{prometheus}"
    );
}

/// With `use_remote_address: true` the client address is the connection's peer:
/// `x-forwarded-for` cannot pick a fresh bucket. The reply is configurable (status, body,
/// content type, headers off).
#[test]
fn client_address_keys_ignore_forwarded_for_and_the_reply_is_configurable() {
    let mesh = Mesh::builder()
        .filter(
            "ratelimit",
            r#"{"routes": {"limited": {
                "limits": [{"rate_per_s": 0.01, "burst": 2, "key": "client_address"}],
                "status": 503, "body": "slow down", "content_type": "text/plain",
                "rate_limit_headers": false
            }}}"#,
        )
        .concurrency(2)
        .use_remote_address(true)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let began = Instant::now();
    let replies: Vec<Reply> = (1..=4)
        .map(|i| {
            mesh.get("/limited")
                .header("x-forwarded-for", format!("192.0.2.{i}"))
                .send()
        })
        .collect();
    let elapsed = began.elapsed();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 503, 503]);
    assert_eq!(
        replies[0].header("x-ratelimit-limit"),
        None,
        "headers are off"
    );
    let rejected = &replies[2];
    assert_eq!(rejected.text(), "slow down");
    assert_eq!(
        rejected.header("content-type").as_deref(),
        Some("text/plain")
    );
    assert_eq!(rejected.header("x-ratelimit-remaining"), None);
    // One token every 100 s.
    let retry_after = number(rejected, "retry-after");
    let earliest = (100.0 - elapsed.as_secs_f64()).ceil() as u64;
    assert!((earliest..=100).contains(&retry_after), "{retry_after}");
    assert_eq!(mesh.upstream_count("v1"), 2);
}

/// Envoy's default (`use_remote_address: false`, also Istio's sidecar inbound listener) takes
/// `source.address` from the last `x-forwarded-for` entry, which the client writes (with port
/// 0). Without trusted hops the filter never keys on such an address: every request whose
/// address came from the header shares one bucket, so forging buys nothing; a request
/// without the header is keyed on its connection's peer.
#[test]
fn a_forged_forwarded_for_buys_no_fresh_bucket() {
    let mesh = mesh_with(
        r#"{"routes": {"limited": {"limits": [{"rate_per_s": 0.01, "burst": 1, "key": "client_address"}]}}}"#,
    );
    let forged: Vec<u16> = (1..=3)
        .map(|i| {
            mesh.get("/limited")
                .header("x-forwarded-for", format!("192.0.2.{i}"))
                .send()
                .status
        })
        .collect();
    assert_eq!(forged, [200, 429, 429], "each forged address got a bucket");
    let plain: Vec<u16> = (0..2).map(|_| mesh.get("/limited").send().status).collect();
    assert_eq!(plain, [200, 429]);
}

/// With `trusted_hops: 1` the key is the last `x-forwarded-for` entry (the one the trusted
/// proxy in front appended); what the client wrote left of it changes nothing.
#[test]
fn trusted_hops_key_on_the_entry_the_trusted_proxy_appended() {
    let mesh = mesh_with(
        r#"{"routes": {"limited": {"trusted_hops": 1,
            "limits": [{"rate_per_s": 0.01, "burst": 1, "key": "client_address"}]}}}"#,
    );
    let send = |xff: &str| {
        mesh.get("/limited")
            .header("x-forwarded-for", xff)
            .send()
            .status
    };
    assert_eq!(send("198.51.100.1"), 200);
    assert_eq!(send("6.6.6.1, 198.51.100.1"), 429);
    assert_eq!(send("6.6.6.2,198.51.100.1"), 429);
    assert_eq!(send("198.51.100.2"), 200, "another client of the proxy");
    // No header: the connection's peer, a bucket of its own.
    assert_eq!(mesh.get("/limited").send().status, 200);
}

/// Path keys: spellings of one path share its bucket; another path has its own.
#[test]
fn path_keys_are_normalised() {
    let mesh = mesh_with(
        r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 0.01, "burst": 3, "key": "path"}]}}}"#,
    );
    // Every spelling must still match the route's prefix (`/checkout`, case-sensitive).
    for path in [
        "/checkout/items",
        "/checkout/Items?page=2",
        "/checkout//%69tems/",
    ] {
        let reply = mesh.get(path).send();
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.service().as_deref(), Some("v1"), "{path}");
    }
    assert_eq!(mesh.get("/checkout/ITEMS").send().status, 429);
    assert_eq!(mesh.get("/checkout/other").send().status, 200);
}

/// The tricks an attacker tries on a path-keyed limit: double encoding, encoded slashes and
/// dots, dot segments, path parameters, backslashes. Envoy passes them on unchanged (no
/// `normalize_path` in the test config), so the filter's normalisation alone must catch them.
#[test]
fn path_keys_cannot_be_dodged_by_encoding_tricks() {
    let mesh = mesh_with(
        r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 0.01, "burst": 1, "key": "path"}]}}}"#,
    );
    assert_eq!(mesh.get("/checkout/pay").send().status, 200);
    for path in [
        "/checkout/%2570ay",
        "/checkout%2Fpay",
        "/checkout/x/../pay",
        "/checkout/x/%2e%2e/pay",
        "/checkout/./pay;jsessionid=1",
        "/checkout/x/..;/pay",
        "/checkout%5Cpay",
        "/checkout/PAY/",
    ] {
        let reply = mesh.get(path).send();
        assert_eq!(reply.status, 429, "{path} got a bucket of its own");
    }
    assert_eq!(mesh.get("/checkout/paid").send().status, 200);
}

#[test]
fn config_with_a_bad_limit_is_refused_naming_route_and_field() {
    for (config, expected) in [
        (
            r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 5, "burst": 0}]}}}"#,
            r#"routes["checkout"].limits[0].burst: must be at least 1"#,
        ),
        (
            r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 5, "burst": 1, "key": "ip"}]}}}"#,
            r#"routes["checkout"].limits[0].key: unknown variant `ip`"#,
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 5, "burst": 1}], "dryrun": true}}"#,
            "default.dryrun: unknown field",
        ),
    ] {
        Mesh::builder()
            .filter("ratelimit", config)
            .assert_refused(expected);
    }
}

/// Bytes Envoy's heap holds (tcmalloc's `allocated`): shared data lives there.
fn allocated(mesh: &Mesh) -> u64 {
    let memory: serde_json::Value = serde_json::from_str(&mesh.admin("/memory")).unwrap();
    memory["allocated"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allocated bytes in {memory}"))
}

/// 100,000 clients, each with its own key, against a limit of 1024 slots: Envoy's heap grows by
/// the slots' records (each created by the first key that lands in it), not by the clients. A record
/// per client would add megabytes (~150 bytes each).
#[test]
fn a_flood_of_distinct_keys_leaves_memory_within_the_slots_budget() {
    /// What issue 6 asks for: about a hundred times the slots, so every slot is taken over
    /// many times.
    const KEYS: usize = 100_000;
    const CLIENTS: usize = 4;
    const SLOTS: u64 = 1024;
    /// A slot record in Envoy's heap (key string, value, map node) with room to spare.
    const BYTES_PER_SLOT: u64 = 512;
    /// Envoy's own churn: connections, buffers, stats (measured: about ±50 KB).
    const NOISE: u64 = 1 << 20;
    let mesh = mesh_with(&format!(
        r#"{{"routes": {{"limited": {{"limits": [{{"rate_per_s": 1, "burst": 1, "key": {{"header": "x-api-key"}}, "slots": {SLOTS}}}]}}}}}}"#
    ));
    let before = allocated(&mesh);
    let next = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let began = Instant::now();
    let mut warm = None;
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= KEYS || Instant::now() >= deadline {
                        break;
                    }
                    let status = limited(&mesh, &format!("flood-{i}")).status;
                    assert!(status == 200 || status == 429, "{status}");
                }
            });
        }
        // Once every worker has bound the route (and created the slots).
        while next.load(Ordering::SeqCst) < KEYS / 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        warm = Some(allocated(&mesh));
    });
    // The deadline only bounds the test; the claim rests on counts: every slot taken over
    // by many keys (TAKEOVERS times its share at least), which the keys sent say. `limited`
    // sends on the mesh's pooled client, whose keep-alive connections the clients reuse.
    // With the process harness on 2 cores the 100,000 took 35-38 s alone, ~51 s beside the
    // file's other tests; the clients' HTTP code, not Envoy, is most of the CPU.
    const TAKEOVERS: usize = 20;
    let sent = next.load(Ordering::SeqCst).min(KEYS);
    assert!(
        sent >= TAKEOVERS * SLOTS as usize,
        "only {sent} keys sent before the deadline: too few to take every slot over"
    );
    let warm = warm.unwrap();
    let after = allocated(&mesh);
    eprintln!(
        "{sent} keys in {:?}: allocated {before} -> {warm} (10% of keys) -> {after}",
        began.elapsed()
    );
    assert!(
        after.saturating_sub(before) <= SLOTS * BYTES_PER_SLOT + NOISE,
        "Envoy's heap grew by {} bytes for {sent} keys",
        after.saturating_sub(before)
    );
    assert!(
        after.saturating_sub(warm) <= NOISE / 2,
        "Envoy's heap kept growing with new keys: {warm} -> {after}"
    );
    assert!(mesh.stat("mesh_ratelimit_requests_total;route=limited;decision=rejected") > 0);
}
