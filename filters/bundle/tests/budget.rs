//! Crossing budgets: the host calls and VM entries a request costs, by kind, for each module
//! with the benchmark's policies (`bench/policies.json`) and a request like the benchmark's
//! (wrk's `GET /` with a user id out of 1000 and an API key out of 16, a fast `200` from the
//! upstream, 5000 requests/s on one worker). The requests run through `mesh_policy::vm::Vm`,
//! the code the adapter runs, against `FakeHost`, which counts every host call the adapter
//! would make; the callbacks Envoy makes per request are the ones a module exports
//! (`CALLBACKS_PER_REQUEST`, checked on the built modules by `scripts/build.sh`).
//!
//! A count over its budget fails the test: the budgets are the regression guard, and raising
//! one needs a reason in the commit. The table the test measures is `bench/crossings.md`
//! (docs/benchmark.md links it); `MESH_BLESS=1` rewrites it, and a stale copy fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write;

use mesh_breaker::Breaker;
use mesh_bundle::Bundle;
use mesh_canary::Canary;
use mesh_policy::chain::{Stage, Stages};
use mesh_policy::fake::{FakeHost, HostCalls};
use mesh_policy::filter::{Plugin, Verdict};
use mesh_policy::host::{NANOS_PER_SEC, Nanos};
use mesh_policy::vm::{CALLBACKS_PER_REQUEST, ROUTE_NAME, Vm};
use mesh_ratelimit::RateLimit;
use mesh_traceid::TraceId;
use serde_json::Value;

const POLICIES: &str = include_str!("../../../bench/policies.json");
const TABLE: &str = "bench/crossings.md";

/// Requests measured, after [`WARMUP`] that bind the route and fill caches.
const REQUESTS: u64 = 10_000;
const WARMUP: u64 = 1_000;
/// The benchmark's rate on one worker: a request every 200 µs.
const INTERVAL: Nanos = 200_000;

/// Per-request counts, in hundredths (deterministic: seeded randomness, a fake clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    property_reads: u64,
    header_map_reads: u64,
    request_header_writes: u64,
    response_header_writes: u64,
    route_cache_clears: u64,
    metric_updates: u64,
    shared_gets: u64,
    shared_sets: u64,
    clock_reads: u64,
    host_calls: u64,
    vm_entries: u64,
}

impl Counts {
    const COLUMNS: [&'static str; 11] = [
        "property reads",
        "header map reads",
        "request header writes",
        "response header writes",
        "route cache clears",
        "metric updates",
        "shared-data gets",
        "shared-data CAS",
        "clock reads",
        "host calls",
        "VM entries",
    ];

    fn values(&self) -> [u64; 11] {
        [
            self.property_reads,
            self.header_map_reads,
            self.request_header_writes,
            self.response_header_writes,
            self.route_cache_clears,
            self.metric_updates,
            self.shared_gets,
            self.shared_sets,
            self.clock_reads,
            self.host_calls,
            self.vm_entries,
        ]
    }

    /// `calls` over [`REQUESTS`] requests and `ticks` root-context ticks, per request.
    fn per_request(calls: HostCalls, ticks: u64) -> Self {
        let hundredths = |n: usize| (n as u64 * 100).div_ceil(REQUESTS);
        let entries =
            REQUESTS * CALLBACKS_PER_REQUEST.len() as u64 + calls.allocations as u64 + ticks;
        Self {
            property_reads: hundredths(calls.property_reads),
            header_map_reads: hundredths(calls.header_map_reads),
            request_header_writes: hundredths(calls.request_header_writes),
            response_header_writes: hundredths(calls.response_header_writes),
            route_cache_clears: hundredths(calls.route_cache_clears),
            metric_updates: hundredths(calls.metric_updates),
            shared_gets: hundredths(calls.shared_gets),
            shared_sets: hundredths(calls.shared_sets),
            clock_reads: hundredths(calls.clock_reads),
            host_calls: hundredths(calls.total()),
            vm_entries: (entries * 100).div_ceil(REQUESTS),
        }
    }
}

/// The budget of each module: at most this much per request, in hundredths.
fn budget(module: &str) -> Counts {
    let c = |values: [u64; 11]| Counts {
        property_reads: values[0],
        header_map_reads: values[1],
        request_header_writes: values[2],
        response_header_writes: values[3],
        route_cache_clears: values[4],
        metric_updates: values[5],
        shared_gets: values[6],
        shared_sets: values[7],
        clock_reads: values[8],
        host_calls: values[9],
        vm_entries: values[10],
    };
    match module {
        //            props map  rqw  rsw  rc  met  get  cas  clk calls entries
        "traceid" => c([100, 100, 100, 100, 0, 1, 0, 0, 0, 401, 601]),
        "canary" => c([100, 100, 10, 0, 10, 1, 0, 0, 0, 219, 601]),
        // Shared data: the 16 API keys in 16 slots (two shared one under the unkeyed
        // placement before issue 29), so one more slot's lease to renew.
        "ratelimit" => c([100, 100, 0, 300, 0, 1, 29, 29, 100, 657, 629]),
        "breaker" => c([300, 0, 0, 0, 0, 1, 8, 4, 301, 612, 708]),
        "bundle" => c([300, 100, 110, 400, 10, 1, 36, 33, 301, 1287, 836]),
        _ => panic!("no budget for {module}"),
    }
}

/// The policy of `name` in `bench/policies.json`, as plugin JSON.
fn policy(name: &str) -> String {
    let policies: Value = serde_json::from_str(POLICIES).unwrap();
    policies[name].to_string()
}

fn bundle_json() -> String {
    format!(
        r#"{{"traceid": {}, "canary": {}, "ratelimit": {}, "breaker": {}}}"#,
        policy("traceid"),
        policy("canary"),
        policy("ratelimit"),
        policy("breaker")
    )
}

/// The `i`-th request as Envoy hands it to the filters (wrk's headers and Envoy's own).
fn request_headers(i: u64) -> Vec<(String, Vec<u8>)> {
    [
        (":authority", "127.0.0.1:10000".to_owned()),
        (":path", "/".to_owned()),
        (":method", "GET".to_owned()),
        (":scheme", "http".to_owned()),
        ("x-user-id", format!("user-{}", i % 1000 + 1)),
        ("x-api-key", format!("key-{}", (i + 1) % 16)),
        ("x-forwarded-proto", "http".to_owned()),
        ("x-request-id", format!("8d2f0c3e-5b1a-4c7e-9f00-{i:012x}")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.into_bytes()))
    .collect()
}

/// Runs the benchmark's requests through a VM of `S` configured with `json`; the host calls
/// of the measured ones, per request.
fn measure<S: Stages>(json: &str) -> Counts {
    let plugin = Plugin {
        name: "bench".to_owned(),
        root_id: "bench".to_owned(),
    };
    let vm = Vm::new(S::configure(&plugin, json.as_bytes()).unwrap());
    let mut host = FakeHost::new()
        .with_property(&ROUTE_NAME, "bench")
        .with_property(&["response", "code"], 200u64.to_le_bytes())
        .with_property(&["response", "flags"], 0u64.to_le_bytes())
        .with_property(&["response", "code_details"], "via_upstream");
    let mut before = host.calls();
    let mut ticks = 0;
    let mut next_tick = host.now + NANOS_PER_SEC;
    for i in 0..WARMUP + REQUESTS {
        if i == WARMUP {
            before = host.calls();
            ticks = 0;
        }
        host.request_headers = request_headers(i);
        let (verdict, mut stream) = vm
            .on_request(&mut host, false)
            .expect("the bench route is bound");
        assert_eq!(verdict, Verdict::Continue, "request {i}");
        host.response_headers = vec![
            (":status".to_owned(), b"200".to_vec()),
            ("content-length".to_owned(), b"2".to_vec()),
        ];
        vm.on_response(&mut stream, &mut host);
        vm.on_done(stream, &mut host);
        host.now += INTERVAL;
        if host.now >= next_tick {
            vm.on_tick(&mut host);
            ticks += 1;
            next_tick += NANOS_PER_SEC;
        }
    }
    let calls = host.calls().since(before);
    Counts::per_request(calls, ticks)
}

fn measured() -> Vec<(&'static str, Counts)> {
    vec![
        ("traceid", measure::<Stage<TraceId>>(&policy("traceid"))),
        ("canary", measure::<Stage<Canary>>(&policy("canary"))),
        (
            "ratelimit",
            measure::<Stage<RateLimit>>(&policy("ratelimit")),
        ),
        ("breaker", measure::<Stage<Breaker>>(&policy("breaker"))),
        ("bundle", measure::<Bundle>(&bundle_json())),
    ]
}

fn hundredths(n: u64) -> String {
    format!("{}.{:02}", n / 100, n % 100)
}

fn table(rows: &[(&str, Counts)]) -> String {
    let mut text = String::from(
        "# Host crossings per request\n\n\
         Written by `filters/bundle/tests/budget.rs` (`MESH_BLESS=1 cargo test -p mesh-bundle \
         --test budget`): each module with the benchmark's policies (`bench/policies.json`) and \
         its request, counted through `FakeHost`, averaged over 10,000 requests at 5,000 \
         requests/s on one worker. \"Host calls\" are the calls out of the VM; \"VM entries\" \
         the calls into it: the four callbacks Envoy makes per request, one allocation per \
         answer that carries data, and the root context's ticks. The test fails when a count \
         exceeds its module's budget.\n\n| module |",
    );
    for column in Counts::COLUMNS {
        let _ = write!(text, " {column} |");
    }
    text.push_str("\n| --- |");
    for _ in Counts::COLUMNS {
        text.push_str(" ---: |");
    }
    text.push('\n');
    for (module, counts) in rows {
        let _ = write!(text, "| {module} |");
        for value in counts.values() {
            let _ = write!(text, " {} |", hundredths(value));
        }
        text.push('\n');
    }
    text
}

#[test]
fn every_module_stays_within_its_crossing_budget() {
    let rows = measured();
    let table = table(&rows);
    println!("{table}");
    let mut over = Vec::new();
    for (module, counts) in &rows {
        let budget = budget(module);
        for ((column, value), limit) in Counts::COLUMNS
            .iter()
            .zip(counts.values())
            .zip(budget.values())
        {
            if value > limit {
                over.push(format!(
                    "{module}: {column} {} per request, budget {}",
                    hundredths(value),
                    hundredths(limit)
                ));
            }
        }
    }
    assert!(over.is_empty(), "over budget:\n{}", over.join("\n"));

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(TABLE);
    if std::env::var_os("MESH_BLESS").is_some() {
        std::fs::write(&path, &table).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == table,
        "{TABLE} is stale: run MESH_BLESS=1 cargo test -p mesh-bundle --test budget"
    );
}
