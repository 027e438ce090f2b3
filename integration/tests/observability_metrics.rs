//! Every decision visible in a real Prometheus: Debian's `prometheus` scrapes a real Envoy
//! running the four built filters (`dist/*.wasm`; `MESH_MODULES=bundle`: the bundle;
//! `MESH_MODULES=native`: the native module, under the same metric names), with a
//! real rate limit service behind the global limit (Debian's `redis-server`), and the test
//! reads what the clients saw back through its HTTP API, runs every dashboard panel's query
//! and every alert against it. The other observability tests: `observability_alerts.rs`
//! (the VM alert, promtool), `observability_sidecar.rs` (the stats settings of the Istio
//! sidecar and the demo), `observability_dashboard.rs` (the dashboard's own checks).
//!
//! Nothing here asserts how fast anything is: after traffic, the test waits until Envoy's own
//! counters show what the clients saw, notes the time, and waits (bounded, by polling the
//! API) until Prometheus has scraped every target after that time. Then the values must be
//! equal, not close.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use mesh_integration::Modules;
use mesh_integration::observability::seen::{Seen, assert_prometheus_has, send, settle_and_scrape};
use mesh_integration::observability::series::{
    alert_rules, assert_documented_label_sets, scraped_series, value, wait_for_alert,
};
use mesh_integration::observability::{
    self, B3, GLOBAL_ALLOWANCE, OPEN_MS, ROUTES, TRACE, mesh, rate_limit_service,
};
use mesh_integration::prometheus::{Job, Prometheus};

#[test]
fn every_decision_reaches_prometheus_with_route_labels_and_the_counts_the_clients_saw() {
    let started = SystemTime::now();
    let (_redis, rls) = rate_limit_service();
    let mesh = mesh(rls.addr());
    let alerts = observability::file("alerts.yaml");
    let prometheus = Prometheus::start(&[Job::new("mesh", &[mesh.admin_address()])], &[&alerts])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Seen::default();

    // Every route's counters exist (they are defined when a route is first seen) and are
    // scraped before the traffic, so rates and increases see all of it.
    for route in ROUTES {
        send(&mesh, &mut seen, route, &[("x-api-key", "warm-up")]);
    }
    let mut catalog_requests = 1;
    seen.set("mesh_breaker_state;route=fragile", 0);
    seen.set("mesh_breaker_state;route=catalog;cluster=v1", 0);
    settle_and_scrape(&mesh, &seen, &prometheus);

    // Trace: started, continued (W3C and B3), replaced. Canary: both rules, sticky users,
    // random draws.
    for headers in [
        &[("traceparent", TRACE)][..],
        &[("traceparent", TRACE), ("cookie", "beta=1")],
        &[("b3", B3), ("x-canary-opt-out", "1")],
        &[("traceparent", "00-zzz")],
        &[("traceparent", "00-zzz"), ("cookie", "beta=1")],
        &[("x-canary-opt-out", "1")],
        &[],
        &[],
        &[],
    ] {
        send(&mesh, &mut seen, "checkout", headers);
    }
    for user in 0..12 {
        send(
            &mesh,
            &mut seen,
            "checkout",
            &[("x-user-id", &format!("user-{user}"))],
        );
    }
    // Rate limit: a burst of 5 for key k, then 429s.
    let mut rejected = 0;
    for _ in 0..15 {
        if send(&mesh, &mut seen, "limited", &[("x-api-key", "k")]).status == 429 {
            rejected += 1;
        }
    }
    assert_eq!(rejected, 10, "15 requests over a burst of 5");
    // Global limit: the service admits GLOBAL_ALLOWANCE calls (the warm-up was the first),
    // then answers OVER_LIMIT: 429.
    let mut global_rejected = 0;
    for _ in 0..7 {
        if send(&mesh, &mut seen, "global", &[]).status == 429 {
            global_rejected += 1;
        }
    }
    let global_calls = 1 + 7;
    assert_eq!(global_rejected, global_calls - GLOBAL_ALLOWANCE);
    assert_eq!(rls.requests(), global_calls, "one call per request");
    // The rate limit service unreachable: every call fails, every request passes.
    let down_calls = 1 + 5;
    for _ in 1..down_calls {
        send(&mesh, &mut seen, "global-down", &[]);
    }
    assert_eq!(rls.requests(), global_calls, "global-down never reaches it");
    for _ in 0..4 {
        send(&mesh, &mut seen, "catalog", &[]);
        catalog_requests += 1;
    }
    // Breaker: three failures open it; the next requests get the fallback.
    for _ in 0..3 {
        let reply = send(&mesh, &mut seen, "fragile", &[("x-echo-status", "500")]);
        assert_eq!(reply.status, 500);
    }
    let opened = Instant::now();
    for _ in 0..2 {
        let reply = send(&mesh, &mut seen, "fragile", &[]);
        assert_eq!(reply.header("x-circuit-state").as_deref(), Some("open"));
    }
    seen.set("mesh_breaker_state;route=fragile", 1);
    seen.set("mesh_breaker_transitions_total;route=fragile;to=open", 1);

    let settled = settle_and_scrape(&mesh, &seen, &prometheus);
    let scraped = scraped_series(&prometheus, "mesh");
    assert_documented_label_sets(&scraped, "four filters, demo stats_tags");
    assert_prometheus_has(&prometheus, &settled);
    // The headline numbers, read back through the API.
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="limited",decision="rejected"}"#
        ),
        f64::from(rejected),
        "rejected count = 429s received"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"sum(mesh_ratelimit_requests_total{route="catalog"})"#
        ),
        f64::from(catalog_requests),
        "a dry run decides every request"
    );
    for (outcome, calls) in [
        ("ok", GLOBAL_ALLOWANCE),
        ("over_limit", global_rejected),
        ("error", 0),
    ] {
        assert_eq!(
            value(
                &prometheus,
                &format!(
                    r#"mesh_ratelimit_global_calls_total{{route="global",outcome="{outcome}"}}"#
                )
            ),
            calls as f64,
            "global calls {outcome}"
        );
    }
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="global",decision="rejected"}"#
        ),
        global_rejected as f64,
        "rejected count = 429s received"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_count{route="global"}"#
        ),
        global_calls as f64,
        "every call timed"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_bucket{route="global",le="+Inf"}"#
        ),
        global_calls as f64
    );
    for (outcome, calls) in [("ok", 0), ("over_limit", 0), ("error", down_calls)] {
        assert_eq!(
            value(
                &prometheus,
                &format!(
                    r#"mesh_ratelimit_global_calls_total{{route="global-down",outcome="{outcome}"}}"#
                )
            ),
            f64::from(calls),
            "global-down calls {outcome}"
        );
    }
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_requests_total{route="global-down",decision="allowed"}"#
        ),
        f64::from(down_calls),
        "failed open: every request allowed"
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_ratelimit_global_call_duration_ms_count{route="global-down"}"#
        ),
        f64::from(down_calls),
        "a call not sent is timed too"
    );
    for outcome in ["started", "continued", "replaced"] {
        let name = format!("mesh_trace_requests_total;route=checkout;outcome={outcome}");
        assert!(seen.get(&name) > 0, "{outcome}");
        assert_eq!(
            value(
                &prometheus,
                &format!(r#"mesh_trace_requests_total{{route="checkout",outcome="{outcome}"}}"#)
            ),
            seen.get(&name) as f64
        );
    }
    let canary_seen: u64 = seen
        .counts
        .iter()
        .filter(|(name, _)| {
            name.starts_with("mesh_canary_requests_total;route=checkout;release=canary")
        })
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        value(
            &prometheus,
            r#"sum(mesh_canary_requests_total{route="checkout",release="canary"})"#
        ),
        canary_seen as f64,
        "canary requests = replies from v2"
    );
    assert_eq!(
        value(&prometheus, r#"mesh_breaker_state{route="fragile"}"#),
        1.0
    );
    assert_eq!(
        value(
            &prometheus,
            r#"mesh_breaker_requests_total{route="fragile",decision="rejected"}"#
        ),
        2.0
    );

    // The alerts' expressions hold on the real series now, and the loaded rules go active.
    let exprs = alert_rules(&prometheus);
    assert_eq!(
        exprs.keys().collect::<Vec<_>>(),
        [
            "MeshBreakerOpen",
            "MeshRateLimitRejecting",
            "MeshRateLimitServiceFailing",
            "MeshWasmVmFailing"
        ]
    );
    let open = prometheus.query(&exprs["MeshBreakerOpen"]).unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].label("route"), Some("fragile"));
    let rejecting = prometheus.query(&exprs["MeshRateLimitRejecting"]).unwrap();
    assert_eq!(
        rejecting
            .iter()
            .filter_map(|s| s.label("route"))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["global", "limited"]),
        "limited and global reject: {rejecting:?}"
    );
    assert_eq!(rejecting.len(), 2, "{rejecting:?}");
    assert!(
        rejecting.iter().all(|s| s.value > 0.1 && s.value <= 1.0),
        "{rejecting:?}"
    );
    // Only global-down's calls fail, every one of them; global's service answers.
    let failing = prometheus
        .query(&exprs["MeshRateLimitServiceFailing"])
        .unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(
        failing[0].label("route"),
        Some("global-down"),
        "{failing:?}"
    );
    assert_eq!(failing[0].value, 1.0, "every call failed: {failing:?}");
    assert_eq!(
        prometheus.query(&exprs["MeshWasmVmFailing"]).unwrap(),
        [],
        "no VM failed"
    );
    wait_for_alert(&prometheus, "MeshBreakerOpen", &[("route", "fragile")]);
    for route in ["limited", "global"] {
        wait_for_alert(&prometheus, "MeshRateLimitRejecting", &[("route", route)]);
    }
    wait_for_alert(
        &prometheus,
        "MeshRateLimitServiceFailing",
        &[("route", "global-down")],
    );
    prometheus.wait_for("every rule evaluated without error", |p| {
        let rules = p.api("rules", &[]).ok()?;
        let all_ok = rules["groups"].as_array()?.iter().all(|group| {
            group["rules"]
                .as_array()
                .is_some_and(|rules| rules.iter().all(|r| r["health"] == "ok"))
        });
        all_ok.then_some(())
    });

    // Recovery: after open_ms the next request is the probe; it succeeds and closes it.
    std::thread::sleep(Duration::from_millis(OPEN_MS).saturating_sub(opened.elapsed()));
    let mut probe = None;
    for _ in 0..50 {
        let reply = send(&mesh, &mut seen, "fragile", &[]);
        if reply.header("x-circuit-state").is_none() {
            probe = Some(reply);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe.expect("no probe passed").status, 200);
    // The probe was booked as allowed; it is a probe.
    let allowed = "mesh_breaker_requests_total;route=fragile;decision=allowed";
    seen.set(allowed, seen.get(allowed) - 1);
    seen.add("mesh_breaker_requests_total;route=fragile;decision=probe".to_owned());
    seen.set("mesh_breaker_state;route=fragile", 0);
    seen.set(
        "mesh_breaker_transitions_total;route=fragile;to=half_open",
        1,
    );
    seen.set("mesh_breaker_transitions_total;route=fragile;to=closed", 1);
    let settled = settle_and_scrape(&mesh, &seen, &prometheus);
    assert_prometheus_has(&prometheus, &settled);

    // The breaker's state over time, as the dashboard draws it: closed, open, closed. The
    // range query's last step may fall before the last scrape: poll until it covers it.
    let mut last = Vec::new();
    let found = prometheus.poll(|p| {
        let history = p
            .query_range(r#"mesh_breaker_state{route="fragile"}"#, started, "1s")
            .ok()?;
        let [(_, values)] = history.as_slice() else {
            last = vec![f64::NAN; history.len()];
            return None;
        };
        // A scrape may catch the probe in flight (2, half-open) between open and closed.
        let mut states: Vec<f64> = values.iter().copied().filter(|s| *s != 2.0).collect();
        states.dedup();
        last.clone_from(&states);
        (states == [0.0, 1.0, 0.0]).then_some(())
    });
    assert!(
        found.is_some(),
        "breaker states over time: {last:?}, expected 0, 1, 0"
    );

    // Every panel of the dashboard returns data. The native module runs in no Wasm VM: there,
    // the panels of Envoy's Wasm VM stats return none.
    let vms = Modules::current() != Modules::Native;
    let dashboard = observability::dashboard();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$route", ".*");
            assert!(!promql.contains('$'), "unknown variable in {expr}");
            let series = prometheus.query_range(&promql, started, "1s").unwrap();
            let has_data = series
                .iter()
                .any(|(_, values)| values.iter().any(|v| v.is_finite()));
            let expected = vms || !promql.contains("envoy_wasm_");
            assert_eq!(
                has_data, expected,
                "panel {:?}: data for {promql}: {series:?}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} panel queries");
    // The route variable lists the routes.
    let variable = &dashboard["templating"]["list"][1];
    assert_eq!(variable["name"], "route");
    let selector = variable["query"]["query"]
        .as_str()
        .unwrap()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(", route)"))
        .unwrap();
    let routes = prometheus
        .api("label/route/values", &[("match[]", selector)])
        .unwrap();
    for route in ROUTES {
        assert!(
            routes.as_array().unwrap().iter().any(|r| r == route),
            "{route} not in {routes}"
        );
    }
}
