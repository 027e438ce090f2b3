//! The mesh filters of an Envoy config (the local demo's, any bootstrap): each wasm http
//! filter whose module is one of ours, with the route table of its own connection manager,
//! and a warning when they run out of order.

use std::path::Path;

use serde_json::Value;

use crate::docs::Doc;
use crate::filters::Kind;
use crate::routes;

use super::{Lint, PluginUse, Severity};

/// The mesh filters of an Envoy config: every wasm http filter whose module is one of ours,
/// checked against the routes of its own connection manager.
pub(super) fn uses(lint: &mut Lint<'_>, doc: &Doc) -> Vec<PluginUse> {
    let mut uses = Vec::new();
    let mut managers = Vec::new();
    find_managers(&doc.value, "", &mut managers);
    for (at, hcm) in managers {
        let tables = routes::envoy_route_config(
            &doc.file,
            &format!("{at}.route_config"),
            &hcm["route_config"],
        );
        let mut seen = Vec::new();
        for (i, filter) in hcm["http_filters"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let config = &filter["typed_config"]["config"];
            let code = &config["vm_config"]["code"]["local"]["filename"];
            let Some(kind) = code
                .as_str()
                .and_then(|f| Path::new(f).file_stem()?.to_str())
                .and_then(Kind::from_name)
            else {
                continue;
            };
            let subject = format!("http filter {}", filter["name"].as_str().unwrap_or("?"));
            let value = &config["configuration"]["value"];
            let json = match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if let Some(&(before, _)) = seen.iter().find(|&&(k, _): &&(Kind, usize)| k > kind) {
                lint.push(
                    Severity::Warning,
                    &doc.file,
                    &subject,
                    &format!("{at}.http_filters[{i}]"),
                    format!(
                        "{} runs after {}: the order is trace ID, canary, rate limit, breaker",
                        kind.name(),
                        Kind::name(before)
                    ),
                );
            }
            seen.push((kind, i));
            uses.push(PluginUse {
                kind,
                file: doc.file.clone(),
                subject,
                at: format!("{at}.http_filters[{i}].typed_config.config.configuration.value"),
                json,
                tables: tables.clone(),
                placement: None,
                in_bundle: false,
            });
        }
    }
    uses
}

fn find_managers(value: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("http_filters") && map.contains_key("route_config") {
                out.push((at.to_owned(), value.clone()));
                return;
            }
            for (k, v) in map {
                let next = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                find_managers(v, &next, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_managers(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}
