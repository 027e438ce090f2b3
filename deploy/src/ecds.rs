//! The filters' configs served through Envoy's extension config discovery (ECDS) from
//! files, as istiod pushes WasmPlugin changes to running sidecars: `mesh-push` for the demo
//! (`scripts/run-local.sh --live`), the integration harness for the tests.
//!
//! A listener's wasm filter becomes a `config_discovery` entry whose config source is a file
//! holding a `DiscoveryResponse` with one `TypedExtensionConfig` (the filter's Wasm config).
//! A push writes the next version of that file atomically: a new file renamed over the old,
//! the move Envoy's file watch reacts to. Envoy applies the version or rejects it, and counts
//! either in `extension_config_discovery.<name>.config_reload` / `config_fail`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The config type of every discovered filter: Envoy's Wasm HTTP filter.
pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Envoy subscribes to a config source only when the bootstrap names its node.
pub fn node() -> Value {
    json!({ "id": "mesh-local", "cluster": "mesh-local" })
}

/// The file `name`'s config comes from, in `dir`.
pub fn config_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The listener's filter entry for `name`, its config from [`config_file`] (as Envoy sees
/// `dir`). Envoy starts the listener only once the file holds a config it accepts.
pub fn discovered_filter(dir: &Path, name: &str) -> Value {
    json!({
        "name": name,
        "config_discovery": {
            "config_source": {
                "path_config_source": { "path": config_file(dir, name).display().to_string() },
                "resource_api_version": "V3"
            },
            "type_urls": [WASM_TYPE]
        }
    })
}

/// Writes `typed_config` (a Wasm filter's) as version `version` of `name`'s config in
/// `dir`, atomically.
pub fn push(dir: &Path, name: &str, version: u64, typed_config: &Value) -> Result<(), String> {
    let response = json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": typed_config
        }]
    });
    let staged = dir.join(format!(".{name}.json.staged"));
    let file = config_file(dir, name);
    fs::write(&staged, response.to_string()).map_err(|e| format!("{}: {e}", staged.display()))?;
    fs::rename(&staged, &file).map_err(|e| format!("{}: {e}", file.display()))
}

/// What was last pushed for `name` in `dir`: its version and the filter's Wasm config.
pub fn pushed(dir: &Path, name: &str) -> Result<(u64, Value), String> {
    let file = config_file(dir, name);
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let response: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let version = response["version_info"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{}: no version_info", file.display()))?;
    Ok((version, response["resources"][0]["typed_config"].clone()))
}

/// An Envoy bootstrap (as JSON) with every wasm HTTP filter served through ECDS from `dir`:
/// each one's config is pushed there as version 1, and the listener names the file.
pub fn split(bootstrap: &Value, dir: &Path) -> Result<Value, String> {
    let mut out = bootstrap.clone();
    let mut found = 0;
    let listeners = out["static_resources"]["listeners"]
        .as_array_mut()
        .ok_or("no static_resources.listeners")?;
    for listener in listeners {
        let Some(chains) = listener["filter_chains"].as_array_mut() else {
            continue;
        };
        for chain in chains {
            let Some(filters) = chain["filters"].as_array_mut() else {
                continue;
            };
            for network in filters {
                let Some(http) = network["typed_config"]["http_filters"].as_array_mut() else {
                    continue;
                };
                for filter in http {
                    if filter["typed_config"]["@type"] != WASM_TYPE {
                        continue;
                    }
                    let name = filter["name"]
                        .as_str()
                        .ok_or("a wasm filter without a name")?
                        .to_owned();
                    push(dir, &name, 1, &filter["typed_config"])?;
                    *filter = discovered_filter(dir, &name);
                    found += 1;
                }
            }
        }
    }
    if found == 0 {
        return Err("no wasm HTTP filter in the config".to_owned());
    }
    out["node"] = node();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_moves_every_wasm_filter_to_a_pushed_file() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = json!({"@type": WASM_TYPE, "config": {"name": "mesh.traceid"}});
        let bootstrap = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [
            {"typed_config": {"http_filters": [
                {"name": "mesh.traceid", "typed_config": wasm},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": "router"}}
            ]}}
        ]}]}]}});
        let split = split(&bootstrap, dir.path()).unwrap();
        let http = &split["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"];
        assert_eq!(http[0], discovered_filter(dir.path(), "mesh.traceid"));
        assert_eq!(http[1]["name"], "envoy.filters.http.router");
        assert_eq!(split["node"], node());
        assert_eq!(
            pushed(dir.path(), "mesh.traceid").unwrap(),
            (1, wasm.clone())
        );
        push(dir.path(), "mesh.traceid", 2, &json!({"x": 1})).unwrap();
        assert_eq!(
            pushed(dir.path(), "mesh.traceid").unwrap(),
            (2, json!({"x": 1}))
        );
    }

    #[test]
    fn a_config_without_wasm_filters_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = json!({"static_resources": {"listeners": []}});
        assert_eq!(
            split(&empty, dir.path()),
            Err("no wasm HTTP filter in the config".to_owned())
        );
    }
}
