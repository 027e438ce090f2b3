//! The local demo (envoy/envoy.yaml) mirrors the Istio working set (istio/): the same route
//! names, in the same order, with the same matches and destinations as demo.yaml's
//! VirtualService, and each filter's policies on the same routes as its WasmPlugin and the
//! bundle's stage. mesh-lint checks each file against its own routes; this checks that the
//! two say the same thing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::fs;

use mesh_deploy::docs::{self, Doc};
use mesh_deploy::filters::Kind;
use mesh_deploy::repo_root;
use mesh_deploy::routes::{self, HeaderTest, Route};
use serde_json::Value;

fn parse(rel: &str) -> Vec<Doc> {
    docs::parse(rel, &fs::read_to_string(repo_root().join(rel)).unwrap()).unwrap()
}

/// The one document of `kind` in `rel`.
fn only_of_kind(rel: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = parse(rel)
        .into_iter()
        .map(|doc| doc.value)
        .filter(|value| value["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{rel}: one {kind}");
    found.remove(0)
}

/// envoy/envoy.yaml's HTTP connection manager (the demo has one).
fn envoy_connection_manager() -> Value {
    let envoy = parse("envoy/envoy.yaml").remove(0).value;
    envoy
        .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .filter(|hcm| hcm.get("route_config").is_some())
        .cloned()
        .expect("envoy/envoy.yaml: a connection manager with a route_config")
}

/// What a route matches: its name, path prefix (`None`: not a prefix match) and headers.
type Matching = (String, Option<String>, Vec<(String, HeaderTest)>);

fn istio_matching(route: &Route) -> Matching {
    // A match without `uri` (or no match at all) takes every path.
    let prefix = match route.rest.get("uri") {
        None => Some("/".to_owned()),
        Some(uri) => uri["prefix"].as_str().map(str::to_owned),
    };
    (route.name.clone(), prefix, route.headers.clone())
}

fn envoy_matching(route: &Route) -> Matching {
    let prefix = route.rest["prefix"].as_str().map(str::to_owned);
    (route.name.clone(), prefix, route.headers.clone())
}

#[test]
fn envoy_routes_mirror_the_virtual_service_routes() {
    let service = only_of_kind("istio/demo.yaml", "VirtualService");
    let istio = routes::virtual_service("istio/demo.yaml", &service);
    let hcm = envoy_connection_manager();
    let tables =
        routes::envoy_route_config("envoy/envoy.yaml", "route_config", &hcm["route_config"]);
    assert_eq!(tables.len(), 1, "one virtual host in envoy/envoy.yaml");
    let envoy = &tables[0];
    assert!(!istio.routes.is_empty());
    let names = |routes: &[Route]| routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&envoy.routes),
        names(&istio.routes),
        "route names, in order"
    );
    assert_eq!(
        envoy.routes.iter().map(envoy_matching).collect::<Vec<_>>(),
        istio.routes.iter().map(istio_matching).collect::<Vec<_>>(),
        "what each route matches"
    );
    // Where each goes: the Istio subset of `shop` is the Envoy cluster (v1, v2), another
    // host is the cluster of its name (grpc-echo).
    let istio_destinations: Vec<(String, String)> = service["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|http| {
            let destination = &http["route"][0]["destination"];
            let cluster = match destination.get("subset") {
                Some(subset) => subset,
                None => &destination["host"],
            };
            (
                http["name"].as_str().unwrap().to_owned(),
                cluster.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let envoy_destinations: Vec<(String, String)> = hcm
        .pointer("/route_config/virtual_hosts/0/routes")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|route| {
            let cluster = &route["route"]["cluster"];
            (
                route["name"].as_str().unwrap().to_owned(),
                cluster.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(envoy_destinations, istio_destinations);
}

/// Whether a plugin config has a default policy, and the routes it names.
fn policy_routes(config: &Value) -> (bool, BTreeSet<String>) {
    let routes = config["routes"]
        .as_object()
        .map(|routes| routes.keys().cloned().collect())
        .unwrap_or_default();
    (config.get("default").is_some(), routes)
}

/// envoy/envoy.yaml's plugin JSON for the filter `mesh.<name>`.
fn envoy_plugin_config(hcm: &Value, name: &str) -> Value {
    let plugin = format!("mesh.{name}");
    let filter = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["typed_config"]["config"]["name"] == plugin.as_str())
        .unwrap_or_else(|| panic!("envoy/envoy.yaml: no filter {plugin}"));
    let json = filter["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("envoy/envoy.yaml: {plugin} has no JSON configuration"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("envoy/envoy.yaml: {plugin}: {e}"))
}

#[test]
fn each_filter_has_policies_on_the_same_routes_in_envoy_and_istio() {
    let hcm = envoy_connection_manager();
    let bundle = only_of_kind("istio/bundle.yaml", "WasmPlugin");
    for kind in Kind::ALL {
        let name = kind.name();
        let envoy = policy_routes(&envoy_plugin_config(&hcm, name));
        let plugin = only_of_kind(&format!("istio/{name}.yaml"), "WasmPlugin");
        let istio = policy_routes(&plugin["spec"]["pluginConfig"]);
        let staged = policy_routes(&bundle["spec"]["pluginConfig"][name]);
        assert!(envoy.0 || !envoy.1.is_empty(), "{name}: no policy at all");
        assert_eq!(
            envoy, istio,
            "{name}: envoy/envoy.yaml and istio/{name}.yaml"
        );
        assert_eq!(
            istio, staged,
            "{name}: istio/{name}.yaml and istio/bundle.yaml"
        );
    }
}
