//! The stats settings that turn the filters' labels into Prometheus labels: the Istio sidecar's
//! (`istio/observability/sidecar-stats.yaml`, run in an Envoy shaped like a sidecar and
//! scraped by a real Prometheus) and the local demo's (`envoy/envoy.yaml`), each against the
//! harness's extractors (`envoy::stats_tags`).
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mesh_integration::Modules;
use mesh_integration::echo::EchoServer;
use mesh_integration::envoy::{self, Envoy, Harness, Launch, repo_root};
use mesh_integration::observability::series::{
    assert_documented_label_sets, scraped_series, series_key,
};
use mesh_integration::observability::{self, BREAKER, CANARY, RATELIMIT, ROUTES, TRACEID, route};
use mesh_integration::prometheus::{Job, Prometheus};
use serde_json::{Value, json};

/// The `custom_bootstrap.json` of the ConfigMap in istio/observability/sidecar-stats.yaml.
fn sidecar_bootstrap_override() -> String {
    let text = std::fs::read_to_string(observability::file("sidecar-stats.yaml")).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "custom_bootstrap.json: |");
    assert!(
        lines.next().is_some(),
        "no custom_bootstrap.json in sidecar-stats.yaml"
    );
    lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.get(4..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_istio_sidecar_settings_expose_every_label() {
    let fragment = sidecar_bootstrap_override();
    let parsed: Value = serde_json::from_str(&fragment).unwrap();
    assert_eq!(
        parsed["stats_config"]["stats_tags"],
        envoy::stats_tags(),
        "the ConfigMap has one extractor per label of mesh_policy::stats::LABELS, as the harness"
    );

    // A bootstrap shaped like an Istio sidecar's: no default tags, some of Istio's own
    // extractors, and a stats matcher that keeps only what it includes (Istio's required
    // `wasm` prefix is left out so the documented `wasmcustom.mesh_` is what includes ours).
    let harness = Harness::from_env().unwrap();
    let dist = envoy::dist_dir();
    let stages = [
        ("traceid", TRACEID),
        ("canary", CANARY),
        ("ratelimit", RATELIMIT),
        ("breaker", BREAKER),
    ];
    let plugin_configs = Modules::current().load(&stages);
    let modules: Vec<PathBuf> = plugin_configs
        .iter()
        .map(|(module, _)| dist.join(format!("{module}.wasm")))
        .collect();
    let filters = plugin_configs
        .iter()
        .zip(&modules)
        .map(|((module, json), wasm)| envoy::wasm_filter(module, &harness.module_path(wasm), json))
        .collect();
    let v1 = EchoServer::start("v1").unwrap();
    let v2 = EchoServer::start("v2").unwrap();
    let routes = ROUTES
        .iter()
        .map(|name| route(name, &format!("/{name}"), "v1"))
        .collect();
    // Here `global`'s service cluster has no endpoint either (nor has `global-down`'s): the
    // call is not sent, the request is let through, and every series of the route exists
    // all the same.
    let mut config = envoy::bootstrap(
        filters,
        routes,
        vec![
            envoy::cluster("v1", v1.addr),
            envoy::cluster("v2", v2.addr),
            envoy::grpc_cluster("rls", None),
            envoy::grpc_cluster("rls-down", None),
        ],
    );
    config["stats_config"] = json!({
        "use_all_default_tags": false,
        "stats_tags": [
            { "tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)" },
            { "tag_name": "cache", "regex": "(cache\\.(.+?)\\.)" },
            { "tag_name": "component", "regex": "(component\\.(.+?)\\.)" },
            { "tag_name": "tag", "regex": "(tag\\.(.+?);\\.)" },
            { "tag_name": "wasm_filter", "regex": "(wasm_filter\\.(.+?)\\.)" }
        ],
        "stats_matcher": { "inclusion_list": { "patterns": [
            { "prefix": "wasmcustom.mesh_" },
            { "prefix": "wasm." },
            { "prefix": "server." }
        ]}}
    });
    let launch = Launch::new(config.to_string())
        .modules(modules)
        .args(["--config-yaml".to_owned(), fragment]);
    let envoy = Envoy::start(harness, &launch).unwrap_or_else(|e| panic!("{e}"));
    let prometheus = Prometheus::start(&[Job::new("sidecar", &[envoy.admin()])], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    // One request per route defines every series of every filter on it.
    let agent = envoy::agent(Duration::from_secs(20));
    for route in ROUTES {
        let status = agent
            .get(format!("http://{}/{route}", envoy.listener()))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 200, "{route}");
    }
    let settled = Instant::now() + Duration::from_secs(30);
    let admin = |path: &str| -> String {
        agent
            .get(format!("http://{}{path}", envoy.admin()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    // The breaker counts the call when the stream ends, after the client has its reply.
    while !admin("/stats?filter=mesh_breaker_calls_total")
        .contains("route=catalog;outcome=success;protocol=http: 1")
    {
        assert!(Instant::now() < settled, "{}", envoy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    prometheus.wait_for_scrape_after("sidecar", 1, SystemTime::now());

    let scraped = scraped_series(&prometheus, "sidecar");
    assert_documented_label_sets(&scraped, "Istio-like sidecar with the ConfigMap's override");
    assert_eq!(
        scraped[&series_key("mesh_trace_requests_total;route=checkout;outcome=started")],
        1.0
    );
    let plugins = prometheus
        .query(r#"envoy_wasm_vm_reload_success{job="sidecar"}"#)
        .unwrap();
    let plugins: BTreeSet<&str> = plugins
        .iter()
        .filter_map(|s| s.label("wasm_plugin"))
        .collect();
    let expected: BTreeSet<String> = stages
        .iter()
        .map(|(filter, _)| Modules::current().plugin(filter))
        .collect();
    assert_eq!(plugins, expected.iter().map(String::as_str).collect());
    // The matcher is in force: what it does not include is not exported.
    assert_eq!(
        prometheus
            .query(r#"{job="sidecar", __name__=~"envoy_cluster_.+"}"#)
            .unwrap(),
        []
    );
}

#[test]
fn the_demo_config_extracts_every_label() {
    let demo = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    for tag in envoy::stats_tags().as_array().unwrap() {
        let name = tag["tag_name"].as_str().unwrap();
        // The regex as a YAML double-quoted string.
        let regex = tag["regex"].as_str().unwrap().replace('\\', "\\\\");
        let line = format!(r#"- {{ tag_name: {name}, regex: "{regex}" }}"#);
        assert!(demo.contains(&line), "envoy/envoy.yaml lacks {line}");
    }
}
