//! A WasmPlugin: which of this repository's modules it runs, the plugin JSON of each filter
//! (one, or the bundle's stages after the bundle's own `configure`), where it runs (a
//! warning for per-route policies on the inbound listener too) and its place among the
//! plugins on the same workloads.

use serde_json::Value;

use crate::docs::Doc;
use crate::filters::{self, Kind};
use crate::plugin_json;
use crate::routes::Table;

use super::{Lint, Placement, PluginUse, Severity, digest, field_at, subject_of};

/// Which module of ours a WasmPlugin runs: the module named by its URL (`.../canary:0.1.0`,
/// `.../canary.wasm`), else its name without a `mesh-` prefix.
fn plugin_module(spec: &Value, name: &str) -> Option<&'static str> {
    let url = spec["url"].as_str().unwrap_or_default();
    let last = url.rsplit('/').next().unwrap_or_default();
    let stem = last.split(['@', ':']).next().unwrap_or_default();
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    let name = name.strip_prefix("mesh-").unwrap_or(name);
    filters::module_names()
        .find(|m| *m == stem)
        .or_else(|| filters::module_names().find(|m| *m == name))
}

/// The filters a WasmPlugin runs, each with its plugin JSON: one, or the bundle's stages (each
/// checked like the filter's own plugin, at `spec.pluginConfig.<stage>`).
pub(super) fn uses(lint: &mut Lint<'_>, doc: &Doc, tables: &[Table]) -> Vec<PluginUse> {
    let value = &doc.value;
    let spec = &value["spec"];
    let subject = subject_of(value);
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    let Some(module) = plugin_module(spec, name) else {
        lint.push(
            Severity::Warning,
            &doc.file,
            &subject,
            "spec.url",
            "not one of this repository's modules (traceid, canary, ratelimit, breaker, bundle): not checked"
                .to_owned(),
        );
        return Vec::new();
    };
    digest::check(lint, doc, &subject, module);
    let config = &spec["pluginConfig"];
    let json_of = |config: &Value| {
        if config.is_null() {
            String::new()
        } else {
            plugin_json::from_struct(config)
        }
    };
    // (filter, its plugin JSON, where that sits)
    let mut stages: Vec<(Kind, &Value, String)> = Vec::new();
    if let Some(kind) = Kind::from_name(module) {
        stages.push((kind, config, "spec.pluginConfig".to_owned()));
    } else {
        if let Err(e) = filters::configure_bundle(json_of(config).as_bytes()) {
            lint.push(
                Severity::Error,
                &doc.file,
                &subject,
                &field_at("spec.pluginConfig", &e),
                format!(
                    "the bundle refuses this config (Envoy would log \"bundle config=rejected ... error={e}\")"
                ),
            );
            return Vec::new();
        }
        for kind in Kind::ALL {
            if let Some(stage) = config.get(kind.name()) {
                stages.push((kind, stage, format!("spec.pluginConfig.{}", kind.name())));
            }
        }
    }
    let has_routes = stages
        .iter()
        .any(|(_, config, _)| config["routes"].as_object().is_some_and(|r| !r.is_empty()));
    let client_only = spec["match"]
        .as_array()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|s| s["mode"] == "CLIENT"));
    let on_gateway = spec["targetRefs"].is_array() || spec["targetRef"].is_object();
    if has_routes && !client_only && !on_gateway {
        lint.push(
            Severity::Warning,
            &doc.file,
            &subject,
            "spec.match",
            "per-route policies, but the plugin also runs on the sidecar's inbound listener, \
             where Envoy's route is always named \"default\": VirtualService route names \
             exist where the VirtualService is applied (the caller's sidecar, a gateway); \
             add `match: [{mode: CLIENT}]`"
                .to_owned(),
        );
    }
    let phase = match spec["phase"].as_str() {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        _ => 3,
    };
    let selector = if on_gateway {
        format!("targetRefs {}", spec["targetRefs"])
    } else {
        format!("selector {}", spec["selector"])
    };
    let placement = Placement {
        selector: format!(
            "{} in {}",
            selector,
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("its namespace")
        ),
        rank: (
            phase,
            -spec["priority"].as_i64().unwrap_or(0),
            format!(
                "{}/{}",
                value["metadata"]["namespace"].as_str().unwrap_or(""),
                name
            ),
        ),
    };
    stages
        .into_iter()
        .map(|(kind, config, at)| PluginUse {
            kind,
            file: doc.file.clone(),
            subject: subject.clone(),
            at,
            json: json_of(config),
            tables: tables.to_vec(),
            placement: Some(placement.clone()),
            in_bundle: Kind::from_name(module).is_none(),
        })
        .collect()
}
