//! Issue 29: floods of distinct keys against the rate limiter's slots, simulated on the
//! policy with `FakeHost` (host only, like `hostile_input.rs`: the measurements are
//! `--ignored` and a wasm32 run lists only the unit tests). What chose the default slots:
//! `cargo test --release -p mesh-policy --test floods -- --ignored --nocapture` (the
//! README's table).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::rc::Rc;

use mesh_policy::config::{FieldPath, parse_json};
use mesh_policy::fake::FakeHost;
use mesh_policy::host::{NANOS_PER_MS, NANOS_PER_SEC, RequestHost};
use mesh_policy::ratelimit::secret::{EnvoySecret, SlotSecret};
use mesh_policy::ratelimit::{DEFAULT_SLOTS, Decision, RateLimitConfig, RateLimitPolicy};

const PREFIX: &str = "mesh.ratelimit/mesh.ratelimit";

/// `flood` distinct keys, one request each, spread evenly over `over_ms`, then `fresh` new
/// keys send 10 requests each at once: how many fresh keys got at least 9 of their 10 burst
/// tokens (5/s, burst 10 per `x-api-key`, the demo's `limited`). `secret` seeds the Envoy's
/// slot secret.
fn fresh_keys_spared(slots: u32, flood: u64, over_ms: u64, fresh: usize, secret: u64) -> usize {
    let json = format!(
        r#"{{"limits": [{{"rate_per_s": 5, "burst": 10, "key": {{"header": "x-api-key"}}, "slots": {slots}}}]}}"#
    );
    let config: RateLimitConfig = parse_json(json.as_bytes()).unwrap();
    let policy = Rc::new(RateLimitPolicy::compile(config, &FieldPath::root()).unwrap());
    let mut host = FakeHost::new();
    host.script_random(&[secret, !secret]);
    let route = policy.bind(PREFIX, "limited", &EnvoySecret::new(PREFIX), &mut host);
    let start = host.now;
    for i in 0..flood {
        host.now = start + over_ms * NANOS_PER_MS * i / flood;
        host.set_request_header("x-api-key", format!("flood-{i}").as_bytes());
        route.check(&mut host);
    }
    host.now = start + over_ms * NANOS_PER_MS;
    (0..fresh)
        .filter(|i| {
            host.set_request_header("x-api-key", format!("fresh-{i}").as_bytes());
            let admitted = (0..10)
                .filter(|_| route.check(&mut host).decision == Decision::Allowed)
                .count();
            admitted >= 9
        })
        .count()
}

/// After 20,000 distinct keys, a fresh key gets at least 9 of its 10 burst tokens in at
/// least 95 % of trials with the default slots, even when the flood arrives all at once (its
/// worst case: no token comes back before the fresh key asks).
#[test]
fn a_flood_of_distinct_keys_spares_fresh_keys() {
    for (over_ms, secret) in [(0, 1), (0, 2), (1000, 3)] {
        let spared = fresh_keys_spared(DEFAULT_SLOTS, 20_000, over_ms, 200, secret);
        assert!(
            spared >= 190,
            "{over_ms} ms, secret {secret}: {spared} of 200"
        );
    }
}

#[test]
#[ignore]
fn measure_floods() {
    for slots in [1024, 4096, 16384, 32768, 65536] {
        for over_ms in [0, 1000, 5000] {
            let spared: usize = (0..5)
                .map(|t| fresh_keys_spared(slots, 20_000, over_ms, 200, t))
                .sum();
            eprintln!(
                "slots {slots} over {over_ms} ms: {:.1} %",
                spared as f64 / 10.0
            );
        }
    }
}

/// The same flood against placement in `choices` slots per key with conservative update (a
/// key's bucket is its fullest slot; admitting raises each of its slots to at least that
/// slot's new level), modelled on GCRA directly: the filter places a key in one slot.
fn fresh_spared_choices(
    choices: u8,
    slots: u64,
    flood: u64,
    over_ms: u64,
    fresh: usize,
    seed: u64,
) -> usize {
    let period = 200 * NANOS_PER_MS;
    let tau = 9 * period;
    let mut tat = vec![0u64; slots as usize];
    let secret = SlotSecret::from_text(&format!("seed {seed} for the simulation"));
    let mut admit = |key: &str, now: u64| {
        let at: Vec<usize> = (0..choices)
            .map(|c| (secret.hash(&[key.as_bytes(), &[c]]) % slots) as usize)
            .collect();
        let fullest = at.iter().map(|s| tat[*s].max(now)).min().unwrap();
        if fullest - now > tau {
            return false;
        }
        for s in &at {
            tat[*s] = tat[*s].max(fullest + period);
        }
        true
    };
    let start = 1_000_000 * NANOS_PER_SEC;
    for i in 0..flood {
        admit(
            &format!("flood-{i}"),
            start + over_ms * NANOS_PER_MS * i / flood,
        );
    }
    let end = start + over_ms * NANOS_PER_MS;
    (0..fresh)
        .filter(|i| {
            (0..10)
                .filter(|_| admit(&format!("fresh-{i}"), end))
                .count()
                >= 9
        })
        .count()
}

#[test]
#[ignore]
fn measure_floods_choices() {
    for choices in [1, 2, 3] {
        for slots in [4096, 8192, 16384, 32768, 65536] {
            for over_ms in [0, 1000, 5000] {
                let spared: usize = (0..5)
                    .map(|t| fresh_spared_choices(choices, slots, 20_000, over_ms, 200, t))
                    .sum();
                eprintln!(
                    "choices {choices} slots {slots} over {over_ms} ms: {:.1} %",
                    spared as f64 / 10.0
                );
            }
        }
    }
}
