//! The Grafana dashboard (`istio/observability/dashboard.json`) as a file: it queries only
//! documented metrics, and its panels do not overlap. That every panel returns data is checked
//! against a real Prometheus in `observability_metrics.rs`.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use mesh_integration::observability::{self, series::documented_series};
use serde_json::Value;

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let dashboard = observability::dashboard();
    let documented = documented_series();
    let envoy_metrics = [
        "envoy_wasm_vm_reload_success",
        "envoy_wasm_vm_reload_failure",
        "envoy_wasm_vm_reload_backoff",
        "envoy_wasm_envoy_wasm_runtime_v8_active",
    ];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("mesh_") || w.starts_with("envoy_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(
                    documented.contains_key(name) || envoy_metrics.contains(&name),
                    "panel {:?} queries {name}, which is not documented",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_dashboard_panels_do_not_overlap() {
    let dashboard = observability::dashboard();
    let panels = dashboard["panels"].as_array().unwrap();
    let boxes: Vec<(&Value, [u64; 4])> = panels
        .iter()
        .map(|panel| {
            let grid = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
            assert!(
                x + w <= 24 && w > 0 && h > 0,
                "{:?}: {grid}",
                panel["title"]
            );
            (&panel["title"], [x, y, w, h])
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "panels {a} and {b} overlap");
        }
    }
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}
