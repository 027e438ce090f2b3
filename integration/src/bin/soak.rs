//! The soak driver: all four filters chained (`mesh_integration::chain`) in a real Envoy at
//! `--concurrency 2`, under a mix of traffic for a fixed time, then checks that held:
//!
//! - no VM failed (Envoy's wasm counters unchanged, no failure in its log), Envoy ready;
//! - no unexpected 5xx: every 5xx is one the driver injected (the upstream's 500/503, the
//!   breaker's fallback, Envoy's 504 for a call slower than the route timeout);
//! - Envoy's memory measured and flat after warm-up: its RSS and heap read in every sample,
//!   and in every later sample within 10 % above what they were when the warm-up ended;
//! - the rate limiter never admitted more than `burst + rate × time` per key, and after a
//!   flood of 20,000 distinct keys (before the clock starts) 95 % of fresh keys still got 9
//!   of their 10 burst tokens;
//! - the breaker's transitions are exactly those the injected failures call for, in its stats
//!   and in its log lines (one per transition);
//! - the filters log little: their other lines at info or above are fewer than 1 % of the
//!   requests (nothing per request above debug);
//! - canary decisions are the sticky split's (and a forged tag never changes one).
//!
//! `soak [--seconds N] [--max-requests N]` (defaults: 300 s, 1,000,000 requests); bounded
//! in time and in requests; everything on 127.0.0.1. Exits 1 when a check fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_integration::chain::{self, Expect};
use mesh_integration::raw::{self, WasmHealth};
use mesh_integration::{Mesh, Reply};
use mesh_policy::canary::point;

/// Memory may end at most this much above its level after warm-up.
const MEMORY_TOLERANCE: f64 = 0.10;
/// Failures listed in full (the rest are counted).
const MAX_LISTED: usize = 20;
/// The filters' log lines at info or above, breaker transitions aside, may be at most this
/// share of the requests: what they log there is per event (a config load, a rate-limited
/// warning), never per request.
const MAX_LOG_LINES_PER_REQUEST: f64 = 0.01;

struct Args {
    seconds: u64,
    max_requests: u64,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        seconds: 300,
        max_requests: 1_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let value: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--seconds" => out.seconds = value,
            "--max-requests" => out.max_requests = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if out.seconds < 10 {
        return Err("--seconds must be at least 10 (warm-up and a measured stretch)".into());
    }
    Ok(out)
}

/// What every load thread shares.
struct Soak<'a> {
    mesh: &'a Mesh,
    deadline: Instant,
    max_requests: u64,
    sent: AtomicU64,
    statuses: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
    stop: AtomicBool,
}

impl Soak<'_> {
    /// Whether a thread may send another request (time and request budget left).
    fn go(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.sent.fetch_add(1, Ordering::Relaxed) < self.max_requests
    }

    fn count(&self, kind: &str, status: u16) {
        *self
            .statuses
            .lock()
            .unwrap()
            .entry(format!("{kind} {status}"))
            .or_default() += 1;
    }

    fn fail(&self, what: String) {
        self.failure_count.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < MAX_LISTED {
            failures.push(what);
        }
    }

    /// Sends through the harness's client; a transport error is a failure (`None`).
    fn send(&self, kind: &str, call: mesh_integration::Call<'_>) -> Option<Reply> {
        match call.try_send() {
            Ok(reply) => {
                self.count(kind, reply.status);
                Some(reply)
            }
            Err(e) => {
                self.fail(format!("{kind}: no response ({e})"));
                None
            }
        }
    }
}

fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Which upstream the split sends `key` to.
fn split(key: &str) -> &'static str {
    if point(chain::CANARY_SALT.as_bytes(), key.as_bytes()) < chain::CANARY_PERCENT / 100.0 {
        "v2"
    } else {
        "v1"
    }
}

/// Canary traffic: 200 users by header or cookie, some with a forged tag, some forced by
/// the rule. Every answer must be the split's (or the rule's), whatever the client sent.
fn canary(soak: &Soak, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while soak.go() {
        let user = format!("user-{}", rng.u32(0..200));
        let path = if rng.bool() { "/checkout" } else { "/" };
        let mut call = soak.mesh.get(path);
        call = if rng.bool() {
            call.header("x-user-id", &user)
        } else {
            call.header("cookie", format!("a=1; uid={user}"))
        };
        let forged = rng.u8(0..4) == 0;
        if forged {
            call = call.header("x-canary", "true");
        }
        let forced = rng.u8(0..10) == 0;
        if forced {
            call = call.header("x-canary-force", "true");
        }
        let Some(reply) = soak.send("canary", call) else {
            continue;
        };
        let want = if forced { "v2" } else { split(&user) };
        let got = reply.service().unwrap_or_default();
        if reply.status != 200 || got != want {
            soak.fail(format!(
                "canary: {path} {user} forged={forged} forced={forced}: {} from {got:?}, expected {want}",
                reply.status
            ));
        }
        pause(4);
    }
}

/// Per-key accounting of the rate-limited route.
#[derive(Default)]
struct KeyLoad {
    first_sent: Option<Instant>,
    last_answered: Option<Instant>,
    allowed: u64,
    rejected: u64,
}

/// `/limited` (5/s, burst 10 per `x-api-key`) with 4 keys at about 20/s each.
fn limited(soak: &Soak) -> BTreeMap<String, KeyLoad> {
    let mut keys: BTreeMap<String, KeyLoad> = (0..4)
        .map(|i| (format!("soak-key-{i}"), KeyLoad::default()))
        .collect();
    let names: Vec<String> = keys.keys().cloned().collect();
    let mut turn = 0;
    while soak.go() {
        let key = &names[turn % names.len()];
        turn += 1;
        let sent = Instant::now();
        let Some(reply) = soak.send(
            "limited",
            soak.mesh.get("/limited").header("x-api-key", key),
        ) else {
            continue;
        };
        let load = keys.get_mut(key).unwrap();
        load.first_sent.get_or_insert(sent);
        load.last_answered = Some(Instant::now());
        match reply.status {
            200 if reply.service().is_some() => load.allowed += 1,
            429 if reply.service().is_none() && reply.header("retry-after").is_some() => {
                load.rejected += 1;
            }
            other => soak.fail(format!(
                "limited: {key}: unexpected {other} {}",
                reply.text()
            )),
        }
        pause(12);
    }
    keys
}

/// Distinct keys in the flood before the soak, and the fresh keys checked after it.
const FLOOD_KEYS: usize = 20_000;
const FRESH_KEYS: usize = 40;

struct Flood {
    took: Duration,
    admitted: usize,
    /// Fresh keys that got at least 9 of their 10 burst tokens right after the flood.
    spared: usize,
    /// Requests the flood and the fresh keys saw admitted (the rate limiter counts them too).
    allowed: u64,
}

/// 20,000 distinct keys on `/limited`, pipelined on 8 connections, then 40 fresh keys send
/// their burst one after the other.
fn flood_then_fresh_keys(mesh: &Mesh) -> Flood {
    let began = Instant::now();
    let statuses = raw::flood_distinct_keys(
        mesh.listener(),
        b"/limited",
        "x-api-key",
        "soak-flood",
        FLOOD_KEYS,
        8,
    )
    .unwrap_or_else(|e| panic!("the flood failed: {e}"));
    let took = began.elapsed();
    let fresh: Vec<usize> = (0..FRESH_KEYS)
        .map(|i| {
            let key = format!("soak-fresh-{i}");
            (0..chain::LIMITED_BURST)
                .filter(|_| mesh.get("/limited").header("x-api-key", &key).send().status == 200)
                .count()
        })
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    Flood {
        took,
        admitted,
        spared: fresh.iter().filter(|n| **n >= 9).count(),
        allowed: (admitted + fresh.iter().sum::<usize>()) as u64,
    }
}

/// The transitions the driver expects of the breaker on `fragile`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Transitions {
    open: u64,
    half_open: u64,
    closed: u64,
}

/// The breaker on `fragile` (3 failures in a row open it for 1 s, one probe), driven by one
/// thread so that every transition is known: three injected 500s open it; after `open_ms`
/// a probe goes; odd cycles the probe fails too (open again), then a good probe closes it.
fn fragile(soak: &Soak) -> Transitions {
    let mut expected = Transitions::default();
    let mut cycle = 0u64;
    // A client of its own: one keep-alive connection, so one worker takes these requests in
    // order and each call is counted (Envoy's log phase) before the next one is read.
    let agent = mesh_integration::envoy::agent(Duration::from_secs(20));
    let fail = || {
        soak.mesh
            .get("/fragile")
            .via(&agent)
            .header("x-echo-status", "500")
    };
    let ok = || soak.mesh.get("/fragile").via(&agent);
    let check = |reply: Option<Reply>, want: &str, cycle: u64, step: &str| -> bool {
        let Some(reply) = reply else {
            return false;
        };
        let state = reply.header("x-circuit-state");
        let got = match (reply.status, reply.service(), state.as_deref()) {
            (500, Some(_), None) => "failure",
            (200, Some(_), None) => "success",
            (503, None, Some("open")) => "open",
            (503, None, Some("half_open")) => "half_open",
            _ => "unexpected",
        };
        if got != want {
            soak.fail(format!(
                "fragile: cycle {cycle} {step}: {} {state:?} ({got}), expected {want}",
                reply.status
            ));
        }
        got == want
    };
    // Each step needs its request; a cycle cut short by the deadline stops where it is, and
    // only transitions that surely happened are expected.
    'cycles: loop {
        for _ in 0..chain::FRAGILE_FAILURES {
            if !soak.go() {
                break 'cycles;
            }
            check(soak.send("fragile", fail()), "failure", cycle, "failure");
        }
        expected.open += 1;
        if !soak.go() {
            break;
        }
        check(soak.send("fragile", ok()), "open", cycle, "while open");
        pause(chain::FRAGILE_OPEN_MS + 150);
        if cycle % 2 == 1 {
            if !soak.go() {
                break;
            }
            // The failing probe: half-open, then open again.
            check(
                soak.send("fragile", fail()),
                "failure",
                cycle,
                "failed probe",
            );
            expected.half_open += 1;
            expected.open += 1;
            if !soak.go() {
                break;
            }
            check(
                soak.send("fragile", ok()),
                "open",
                cycle,
                "after a failed probe",
            );
            pause(chain::FRAGILE_OPEN_MS + 150);
        }
        if !soak.go() {
            break;
        }
        check(soak.send("fragile", ok()), "success", cycle, "good probe");
        expected.half_open += 1;
        expected.closed += 1;
        for _ in 0..5 {
            if !soak.go() {
                break 'cycles;
            }
            let call = ok().header("x-echo-delay-ms", "20");
            check(soak.send("fragile", call), "success", cycle, "closed");
            pause(20);
        }
        cycle += 1;
    }
    expected
}

/// Calls to `slow` (route timeout 250 ms) that the upstream answers after 10 to 600 ms. A call
/// slower than the timeout always gets Envoy's 504 (the upstream cannot answer sooner); a
/// faster one gets 200, or 504 when the machine is too loaded to answer within the timeout
/// (counted apart, not a failure: nothing here depends on how fast the machine is).
fn slow(soak: &Soak, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while soak.go() {
        let delay = [10u64, 50, 100, 400, 600][rng.usize(0..5)];
        let call = soak
            .mesh
            .get("/slow")
            .header("x-echo-delay-ms", delay.to_string());
        let Some(reply) = soak.send("slow", call) else {
            continue;
        };
        let timed_out = reply.status == 504 && reply.service().is_none();
        match (delay > chain::SLOW_TIMEOUT_MS, reply.status) {
            (true, _) if timed_out => {}
            (false, 200) if reply.service().is_some() => {}
            (false, _) if timed_out => soak.count("slow (fast call timed out)", 504),
            _ => soak.fail(format!("slow: delay {delay} ms: {}", reply.status)),
        }
        pause(20);
    }
}

/// The hostile corpus over raw TCP, round after round, with the upstream's own 503s in
/// between (a failing call on a route whose breaker never opens).
fn hostile(soak: &Soak) {
    let corpus = chain::hostile_corpus();
    'rounds: loop {
        for hostile in &corpus {
            if !soak.go() {
                break 'rounds;
            }
            match soak.mesh.raw(&hostile.bytes) {
                Ok(reply) => {
                    soak.count("hostile", reply.status);
                    let sane = match hostile.expect {
                        Expect::Served => reply.status == 200 && reply.try_echo().is_some(),
                        Expect::Refused => (400..500).contains(&reply.status),
                    };
                    if !sane {
                        soak.fail(format!("hostile: {}: {}", hostile.name, reply.status));
                    }
                }
                Err(e) => soak.fail(format!("hostile: {}: no answer ({e})", hostile.name)),
            }
            pause(40);
            if !soak.go() {
                break 'rounds;
            }
            let call = soak.mesh.get("/catalog").header("x-echo-status", "503");
            if let Some(reply) = soak.send("injected-503", call)
                && (reply.status != 503 || reply.service().is_none())
            {
                soak.fail(format!(
                    "catalog: injected 503 came back as {}",
                    reply.status
                ));
            }
        }
    }
}

/// Envoy's memory: resident set (from /proc) and tcmalloc's allocated heap (admin /memory).
/// `None` where it could not be read; zero counts as unread (no running Envoy has zero of
/// either).
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: Option<u64>,
    heap: Option<u64>,
}

impl Memory {
    fn measured(&self) -> bool {
        self.rss.is_some() && self.heap.is_some()
    }
}

fn memory(mesh: &Mesh) -> Memory {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", mesh.envoy_pid())).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .filter(|bytes| *bytes > 0);
    let admin: serde_json::Value = serde_json::from_str(&mesh.admin("/memory")).unwrap_or_default();
    let heap = admin["allocated"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|bytes| *bytes > 0);
    Memory { rss, heap }
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "unmeasured".to_owned(),
        |bytes| format!("{:.1} MB", bytes as f64 / 1e6),
    )
}

/// Envoy's log lines from our filters (`wasm log mesh.<plugin>`) at info or above.
fn filter_lines_above_debug(log: &str) -> Vec<&str> {
    const LEVELS: [&str; 4] = [
        "[info][wasm] ",
        "[warning][wasm] ",
        "[error][wasm] ",
        "[critical][wasm] ",
    ];
    log.lines()
        .filter(|line| line.contains(" wasm log mesh."))
        .filter(|line| LEVELS.iter().any(|level| line.contains(level)))
        .collect()
}

/// The state a breaker transition log line for `fragile` names
/// (`breaker route=fragile key=... from=closed to=open reason=...`); `None` for other lines.
fn transition_to(line: &str) -> Option<&str> {
    let (_, fields) = line.split_once("breaker route=fragile ")?;
    fields
        .split(' ')
        .find_map(|field| field.strip_prefix("to="))
}

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak [--seconds N] [--max-requests N]");
            std::process::exit(2);
        }
    };
    // As in production: the modules' per-request debug lines would fill the log (and cost
    // CPU) over minutes of load.
    let mesh = chain::builder()
        .module_log_level("info")
        .start()
        .unwrap_or_else(|e| {
            eprintln!("soak: Envoy did not start: {e}");
            std::process::exit(1);
        });
    // Before the clock starts (its slot records are Envoy's memory from then on): a flood of
    // distinct keys on /limited, then fresh keys must still get their burst (issue 29).
    let flood = flood_then_fresh_keys(&mesh);
    let started = Instant::now();
    let warm_up = Duration::from_secs((args.seconds / 5).clamp(5, 60));
    println!(
        "soak: {} s (warm-up {} s), at most {} requests; Envoy pid {} on {}",
        args.seconds,
        warm_up.as_secs(),
        args.max_requests,
        mesh.envoy_pid(),
        mesh.listener()
    );
    let baseline = mesh.wasm_health();
    let soak = Soak {
        mesh: &mesh,
        deadline: started + Duration::from_secs(args.seconds),
        max_requests: args.max_requests,
        sent: AtomicU64::new(0),
        statuses: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
        failure_count: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let mut samples: Vec<(Duration, Memory)> = Vec::new();
    let (keys, expected) = std::thread::scope(|s| {
        s.spawn(|| canary(&soak, 1));
        s.spawn(|| canary(&soak, 2));
        s.spawn(|| slow(&soak, 3));
        s.spawn(|| hostile(&soak));
        let keys = s.spawn(|| limited(&soak));
        let expected = s.spawn(|| fragile(&soak));
        // Memory every 5 s, from the main thread.
        while Instant::now() < soak.deadline && !soak.stop.load(Ordering::Relaxed) {
            samples.push((started.elapsed(), memory(&mesh)));
            if !mesh.ready() {
                soak.fail("Envoy's admin does not answer ready".into());
                soak.stop.store(true, Ordering::Relaxed);
            }
            let left = soak.deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_secs(5)));
            if soak.sent.load(Ordering::Relaxed) >= soak.max_requests {
                break;
            }
        }
        (keys.join().unwrap(), expected.join().unwrap())
    });
    let elapsed = started.elapsed();
    samples.push((elapsed, memory(&mesh)));

    let mut failed: Vec<String> = Vec::new();
    let sent = soak.sent.load(Ordering::Relaxed).min(args.max_requests);
    println!("\nsent {sent} requests in {:.0} s", elapsed.as_secs_f64());
    for (kind, count) in soak.statuses.lock().unwrap().iter() {
        println!("  {kind:<18} {count}");
    }

    // VMs and readiness.
    let health: WasmHealth = mesh.wasm_health();
    println!(
        "\nwasm VMs: created {} -> {}, active {} -> {}, reloads {}, failures in the log {}",
        baseline.created,
        health.created,
        baseline.active,
        health.active,
        health.reloads,
        health.failures.len()
    );
    if !health.failures.is_empty()
        || health.reloads != 0
        || (health.created, health.active) != (baseline.created, baseline.active)
    {
        failed.push(format!(
            "a VM failed: {:?}",
            health.failures.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if !mesh.ready() {
        failed.push("Envoy is not ready at the end".into());
    }

    // Memory after warm-up.
    let warm = samples
        .iter()
        .find(|(at, _)| *at >= warm_up)
        .map(|(_, m)| *m);
    let last = samples.last().map(|(_, m)| *m).unwrap();
    // Flat means every sample after warm-up, not only the last: a rise that falls back by the
    // end is still a rise.
    let peak = |of: fn(&Memory) -> Option<u64>| {
        samples
            .iter()
            .filter(|(at, _)| *at >= warm_up)
            .filter_map(|(_, m)| of(m))
            .max()
    };
    let (peak_rss, peak_heap) = (peak(|m| m.rss), peak(|m| m.heap));
    println!(
        "\nmemory (every 5 s): {}",
        samples
            .iter()
            .map(|(at, m)| format!("{}s {}/{}", at.as_secs(), mb(m.rss), mb(m.heap)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match warm {
        Some(warm) => {
            println!(
                "  after warm-up: RSS {}, heap {}; at the end: RSS {}, heap {}; highest RSS since {}",
                mb(warm.rss),
                mb(warm.heap),
                mb(last.rss),
                mb(last.heap),
                mb(peak_rss)
            );
            for (what, before, highest) in
                [("RSS", warm.rss, peak_rss), ("heap", warm.heap, peak_heap)]
            {
                let (Some(before), Some(highest)) = (before, highest) else {
                    continue;
                };
                if highest as f64 > before as f64 * (1.0 + MEMORY_TOLERANCE) {
                    failed.push(format!(
                        "Envoy's {what} rose more than 10 % after warm-up: {} -> {} at its highest",
                        mb(Some(before)),
                        mb(Some(highest))
                    ));
                }
            }
        }
        None => failed.push("no memory sample after warm-up".into()),
    }
    // An unread sample would make the check above pass on nothing.
    let unmeasured = samples.iter().filter(|(_, m)| !m.measured()).count();
    if unmeasured > 0 {
        failed.push(format!(
            "memory not measured: {unmeasured} of {} samples lack Envoy's RSS or heap",
            samples.len()
        ));
    }

    // The rate limiter.
    println!(
        "\nrate limit on /limited ({} /s, burst {}):",
        chain::LIMITED_RATE_PER_S,
        chain::LIMITED_BURST
    );
    let mut allowed_total = 0;
    for (key, load) in &keys {
        let (Some(first), Some(last)) = (load.first_sent, load.last_answered) else {
            continue;
        };
        let window = last - first;
        let bound = chain::LIMITED_BURST
            + (chain::LIMITED_RATE_PER_S * window.as_secs_f64()).floor() as u64;
        println!(
            "  {key}: {} allowed, {} rejected in {:.1} s; at most {bound}",
            load.allowed,
            load.rejected,
            window.as_secs_f64()
        );
        allowed_total += load.allowed;
        if load.allowed > bound {
            failed.push(format!(
                "{key}: {} admitted, more than {bound}",
                load.allowed
            ));
        }
        if load.allowed < chain::LIMITED_BURST.min(load.allowed + load.rejected) {
            failed.push(format!(
                "{key}: only {} admitted, the burst must pass",
                load.allowed
            ));
        }
    }
    let counted =
        mesh.stat("mesh_ratelimit_requests_total;route=limited;decision=allowed") - flood.allowed;
    if counted != allowed_total {
        failed.push(format!(
            "the rate limiter counted {counted} allowed on /limited, the clients saw {allowed_total}"
        ));
    }

    // The flood before the soak.
    println!(
        "\nflood of {FLOOD_KEYS} distinct keys on /limited in {:.1} s, {} admitted: {} of {FRESH_KEYS} fresh keys then got 9+ of their 10 tokens",
        flood.took.as_secs_f64(),
        flood.admitted,
        flood.spared
    );
    if flood.spared * 100 < FRESH_KEYS * 95 {
        failed.push(format!(
            "after the flood only {} of {FRESH_KEYS} fresh keys got 9 of their 10 tokens",
            flood.spared
        ));
    }

    // The breaker.
    let actual = Transitions {
        open: mesh.stat("mesh_breaker_transitions_total;route=fragile;to=open"),
        half_open: mesh.stat("mesh_breaker_transitions_total;route=fragile;to=half_open"),
        closed: mesh.stat("mesh_breaker_transitions_total;route=fragile;to=closed"),
    };
    println!("\nbreaker on /fragile: transitions {actual:?}, expected {expected:?}");
    if actual != expected {
        failed.push(format!(
            "breaker transitions {actual:?}, expected {expected:?}"
        ));
    }

    // The filters' log.
    let log = mesh.envoy_log();
    let mut logged = Transitions::default();
    // Everything else the filters logged at info or above: config loads, rate-limited
    // warnings. The transitions follow the breaker's timing, not the request count: they are
    // checked apart, exactly.
    let mut other = Vec::new();
    for line in filter_lines_above_debug(&log) {
        match transition_to(line) {
            Some("open") => logged.open += 1,
            Some("half_open") => logged.half_open += 1,
            Some("closed") => logged.closed += 1,
            _ => other.push(line),
        }
    }
    println!(
        "\nlog from the filters at info or above: breaker transitions {logged:?}, {} other lines for {sent} requests",
        other.len()
    );
    if logged != expected {
        failed.push(format!(
            "breaker transition log lines {logged:?}, expected {expected:?}"
        ));
    }
    if other.len() as f64 > sent as f64 * MAX_LOG_LINES_PER_REQUEST {
        failed.push(format!(
            "{} log lines from the filters at info or above for {sent} requests (at most 1 %): {:?}",
            other.len(),
            other.iter().take(5).collect::<Vec<_>>()
        ));
    }

    let count = soak.failure_count.load(Ordering::Relaxed);
    if count > 0 {
        failed.push(format!("{count} unexpected answers"));
        for failure in soak.failures.lock().unwrap().iter() {
            println!("  unexpected: {failure}");
        }
    }
    if failed.is_empty() {
        println!(
            "\nsoak passed: no VM failure, no unexpected 5xx, memory flat, limits and breaker held, log quiet"
        );
    } else {
        println!("\nsoak FAILED:");
        for failure in &failed {
            println!("  - {failure}");
        }
        drop(mesh);
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Envoy 1.40 writes them (`--component-log-level wasm:debug`).
    const LOG: &str = "\
[2026-11-26 10:43:53.595][4757][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log mesh.breaker: breaker config=loaded plugin=mesh.breaker root_id=mesh.breaker default=true routes=fragile
[2026-11-26 10:43:54.001][4757][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log mesh.breaker: breaker route=fragile key=mesh.breaker/mesh.breaker/breaker/route/fragile from=closed to=open reason=consecutive_failures window_calls=3 window_failures=3 window_slow=0 consecutive_failures=3 probes_succeeded=0
[2026-11-26 10:43:55.201][4757][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log mesh.bundle: breaker route=fragile key=mesh.bundle/mesh.bundle/breaker/route/fragile from=open to=half_open reason=open_elapsed window_calls=0 window_failures=0 window_slow=0 consecutive_failures=3 probes_succeeded=0
[2026-11-26 10:43:55.202][4757][debug][wasm] [source/extensions/common/wasm/context.cc:1148] wasm log mesh.breaker: breaker route=fragile key=x from=half_open to=closed
[2026-11-26 10:43:55.300][4757][warning][wasm] [source/extensions/common/wasm/context.cc:1154] wasm log mesh.ratelimit: ratelimit route=limited store_error=contended requests=3 action=let_through
[2026-11-26 10:43:55.400][4757][info][wasm] [source/extensions/common/wasm/wasm.cc:120] Creating 2 wasm VMs
";

    #[test]
    fn reads_the_filters_lines_at_info_or_above_and_the_breakers_transitions() {
        let lines = filter_lines_above_debug(LOG);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let to: Vec<Option<&str>> = lines.iter().map(|line| transition_to(line)).collect();
        assert_eq!(to, [None, Some("open"), Some("half_open"), None]);
    }
}
