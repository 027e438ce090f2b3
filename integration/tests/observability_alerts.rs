//! The alert rules of `istio/observability/alerts.yaml`: promtool checks them and runs their
//! unit tests, and a real VM failure in a real Envoy fires the VM alert in a real Prometheus.
//! The other alerts fire in `observability_metrics.rs`, on the filters' own series.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use mesh_integration::echo::EchoServer;
use mesh_integration::envoy::{self, Envoy, Harness, Launch};
use mesh_integration::observability::series::{alert_rules, value, wait_for_alert};
use mesh_integration::observability::{self, route};
use mesh_integration::prometheus::{Job, Prometheus, promtool_binary};
use serde_json::json;

/// A module whose every request traps (`unreachable`): a real VM failure.
const FAILING_MODULE: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))
"#;

#[test]
fn a_failed_vm_fires_the_vm_alert() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("failing.wasm");
    std::fs::write(&wasm, wat::parse_str(FAILING_MODULE).unwrap()).unwrap();
    let harness = Harness::from_env().unwrap();
    let mut filter = envoy::wasm_filter("failing", &harness.module_path(&wasm), "");
    filter["typed_config"]["config"]["failure_policy"] = json!("FAIL_RELOAD");
    let upstream = EchoServer::start("v1").unwrap();
    let config = envoy::bootstrap(
        vec![filter],
        vec![route("any", "/", "v1")],
        vec![envoy::cluster("v1", upstream.addr)],
    );
    let envoy = Envoy::start(harness, &Launch::new(config.to_string()).modules([wasm]))
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = observability::file("alerts.yaml");
    let prometheus = Prometheus::start(&[Job::new("failing", &[envoy.admin()])], &[&alerts])
        .unwrap_or_else(|e| panic!("{e}"));
    let reloads = r#"envoy_wasm_vm_reload_success{wasm_plugin="mesh.failing"}"#;
    // Scraped before the failure: an increase needs a sample before it.
    prometheus.wait_for_scrape_after("failing", 1, SystemTime::now());
    assert_eq!(value(&prometheus, reloads), 0.0);

    let agent = envoy::agent(Duration::from_secs(20));
    let admin = envoy::agent(Duration::from_secs(5));
    let reload_count = || -> u64 {
        let text = admin
            .get(format!(
                "http://{}/stats?filter=mesh.failing.vm_reload",
                envoy.admin()
            ))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .filter(|l| l.contains("vm_reload_success") || l.contains("vm_reload_backoff"))
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reload_count() == 0 {
        let status = agent
            .get(format!("http://{}/", envoy.listener()))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 503, "a failed VM under FAIL_RELOAD answers 503");
        assert!(Instant::now() < deadline, "Envoy never reloaded the VM");
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus.wait_for_scrape_after("failing", 1, SystemTime::now());

    let expr = &alert_rules(&prometheus)["MeshWasmVmFailing"];
    let failing = prometheus.query(expr).unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].label("wasm_plugin"), Some("mesh.failing"));
    let alert = wait_for_alert(
        &prometheus,
        "MeshWasmVmFailing",
        &[("wasm_plugin", "mesh.failing")],
    );
    assert_eq!(alert["state"], "firing", "no `for`: it fires at once");
    assert!(
        envoy
            .log()
            .contains("failed: Uncaught RuntimeError: unreachable")
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = observability::file("");
    for args in [
        &["check", "rules", "alerts.yaml"][..],
        &["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(promtool_binary())
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool (Debian's prometheus; scripts/test.sh installs it): {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
