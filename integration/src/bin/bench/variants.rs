//! What is measured: the variants, their policies and how each proves it ran.

use serde_json::{Value, json};

/// The variants' policies (the crossing budgets, `filters/bundle/tests/budget.rs`, use the
/// same file): a route-wide and a per-API-key limit far above the load, a sticky 10 % canary
/// split with one rule the load never matches, a breaker that stays closed, one global limit.
const POLICIES: &str = include_str!("../../../../bench/policies.json");

/// The policy of `name` in [`POLICIES`], as plugin JSON.
pub fn policy(name: &str) -> &'static str {
    let policies: Value = serde_json::from_str(POLICIES).unwrap_or(Value::Null);
    let json = policies.get(name).map(Value::to_string).unwrap_or_default();
    json.leak()
}

/// The `chain` variant's four policies as the bundle's plugin JSON.
pub fn bundle_json() -> &'static str {
    let stages: serde_json::Map<String, Value> = ["traceid", "canary", "ratelimit", "breaker"]
        .into_iter()
        .map(|stage| {
            let value = serde_json::from_str(policy(stage)).unwrap_or(Value::Null);
            (stage.to_owned(), value)
        })
        .collect();
    Value::Object(stages).to_string().leak()
}

/// The native module (`dist/libmesh_bundle.so`) with `plugin_json`, as an Envoy filter.
fn native_bundle(plugin_json: &str) -> Value {
    mesh_integration::envoy::native_filter(
        "bundle",
        &mesh_integration::envoy::native_module(),
        plugin_json,
    )
}

/// What proves the native bundle did its work. Its stats carry their labels as Envoy tags:
/// `mesh_x.route.bench...` in /stats.
fn native_bundle_checks() -> Vec<Check> {
    vec![
        Check::UpstreamSaw("traceparent"),
        Check::ResponseHeader("x-trace-id"),
        Check::ResponseHeader("x-ratelimit-limit"),
        Check::StatGrew("mesh_trace_requests_total.route.bench"),
        Check::StatGrew("mesh_ratelimit_requests_total.route.bench.decision.allowed"),
        Check::StatGrew("mesh_breaker_calls_total.route.bench.outcome.success"),
    ]
}

const LUA_SOURCE: &str = "function envoy_on_request(request_handle)\n  \
    request_handle:headers():add(\"x-lua\", \"1\")\nend\n";

/// How a run proves the variant's filters did their work.
#[derive(Clone, Copy)]
pub enum Check {
    /// The upstream saw this request header (on the smoke request).
    UpstreamSaw(&'static str),
    /// The client got this response header (on the smoke request).
    ResponseHeader(&'static str),
    /// Envoy stats whose names contain this grew by at least the measured requests.
    StatGrew(&'static str),
}

pub struct Variant {
    pub name: &'static str,
    pub what: &'static str,
    /// Modules (file names in a `dist/`), with their plugin JSON, in filter order.
    pub modules: Vec<(&'static str, &'static str)>,
    /// Native filters (built from JSON here).
    pub native: Vec<Value>,
    pub checks: Vec<Check>,
    /// Needs the rate limit service (cluster `rls`: limitador over a local Redis).
    pub rls: bool,
    /// A Wasm module (and its plugin JSON) on the second listener instead of none: the run
    /// measures the variant head to head against it, in one Envoy, "added" being the
    /// difference (`report::head_to_head_table`).
    pub against: Option<(&'static str, &'static str)>,
}

impl Variant {
    /// Runs our modules: measured at the baseline too, when there is one.
    pub fn has_our_modules(&self) -> bool {
        self.modules
            .iter()
            .any(|(module, _)| *module != "passthrough")
    }

    /// Measured with `--copies` too: a module's marginal cost, several copies' worth. The
    /// chain (already four modules) and the global limit (a call per copy) are not.
    pub fn copies_apply(&self) -> bool {
        !self.modules.is_empty() && self.name != "chain" && !self.rls
    }
}

pub fn variants() -> Vec<Variant> {
    let traceid_checks = [
        Check::UpstreamSaw("traceparent"),
        Check::ResponseHeader("x-trace-id"),
        Check::StatGrew("mesh_trace_requests_total;route=bench"),
    ];
    let canary_checks = [Check::StatGrew("mesh_canary_requests_total;route=bench")];
    let ratelimit_checks = [
        Check::ResponseHeader("x-ratelimit-limit"),
        Check::StatGrew("mesh_ratelimit_requests_total;route=bench;decision=allowed"),
    ];
    // A name all releases share (the `protocol` label came later), summed over what has it.
    let breaker_checks = [Check::StatGrew(
        "mesh_breaker_calls_total;route=bench;outcome=success",
    )];
    let chain_checks: Vec<Check> = traceid_checks
        .iter()
        .chain(&canary_checks)
        .chain(&ratelimit_checks)
        .chain(&breaker_checks)
        .copied()
        .collect();
    let chain_checks_bundle = chain_checks.clone();
    vec![
        Variant {
            name: "bare",
            what: "no HTTP filter but the router",
            modules: vec![],
            native: vec![],
            checks: vec![],
            rls: false,
            against: None,
        },
        Variant {
            name: "passthrough",
            what: "empty proxy-wasm filter, SDK only",
            modules: vec![("passthrough", "")],
            native: vec![],
            checks: vec![],
            rls: false,
            against: None,
        },
        Variant {
            name: "traceid",
            what: "W3C traceparent + x-trace-id response header",
            modules: vec![("traceid", policy("traceid"))],
            native: vec![],
            checks: traceid_checks.to_vec(),
            rls: false,
            against: None,
        },
        Variant {
            name: "canary",
            what: "sticky 10 % split on x-user-id, one rule",
            modules: vec![("canary", policy("canary"))],
            native: vec![],
            checks: canary_checks.to_vec(),
            rls: false,
            against: None,
        },
        Variant {
            name: "ratelimit",
            what: "route + per-API-key buckets in shared data, all admitted",
            modules: vec![("ratelimit", policy("ratelimit"))],
            native: vec![],
            checks: ratelimit_checks.to_vec(),
            rls: false,
            against: None,
        },
        Variant {
            name: "ratelimit_global",
            what: "one global limit: a gRPC call per request to a local rate limit service",
            modules: vec![("ratelimit", policy("ratelimit_global"))],
            native: vec![],
            checks: vec![
                Check::UpstreamSaw(mesh_integration::rls::REQUEST_HEADER),
                Check::StatGrew("mesh_ratelimit_global_calls_total;route=bench;outcome=ok"),
            ],
            rls: true,
            against: None,
        },
        Variant {
            name: "breaker",
            what: "closed breaker, every call counted in shared data",
            modules: vec![("breaker", policy("breaker"))],
            native: vec![],
            checks: breaker_checks.to_vec(),
            rls: false,
            against: None,
        },
        Variant {
            name: "chain",
            what: "traceid, canary, ratelimit, breaker",
            modules: vec![
                ("traceid", policy("traceid")),
                ("canary", policy("canary")),
                ("ratelimit", policy("ratelimit")),
                ("breaker", policy("breaker")),
            ],
            native: vec![],
            checks: chain_checks,
            rls: false,
            against: None,
        },
        Variant {
            name: "bundle",
            what: "the four as stages of dist/bundle.wasm",
            modules: vec![("bundle", bundle_json())],
            native: vec![],
            checks: chain_checks_bundle,
            rls: false,
            against: None,
        },
        Variant {
            name: "native_bundle",
            what: "the four as the native dynamic module dist/libmesh_bundle.so",
            modules: vec![],
            native: vec![native_bundle(bundle_json())],
            checks: native_bundle_checks(),
            rls: false,
            against: None,
        },
        Variant {
            name: "native_vs_passthrough",
            what: "dist/libmesh_bundle.so, all four stages, head to head with the empty Wasm module on the other listener",
            modules: vec![],
            native: vec![native_bundle(bundle_json())],
            checks: native_bundle_checks(),
            rls: false,
            against: Some(("passthrough", "")),
        },
        Variant {
            name: "native_idle",
            what: "the native module loaded, no stage for the route: the ABI's own cost",
            modules: vec![],
            native: vec![native_bundle(
                r#"{"traceid": {"routes": {"elsewhere": {}}}}"#,
            )],
            checks: vec![],
            rls: false,
            against: None,
        },
        Variant {
            name: "local_ratelimit",
            what: "Envoy's native token bucket, all admitted",
            modules: vec![],
            native: vec![json!({
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "bench_local",
                    "token_bucket": {
                        "max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"
                    },
                    "filter_enabled": {
                        "runtime_key": "bench_local_enabled",
                        "default_value": { "numerator": 100, "denominator": "HUNDRED" }
                    },
                    "filter_enforced": {
                        "runtime_key": "bench_local_enforced",
                        "default_value": { "numerator": 100, "denominator": "HUNDRED" }
                    }
                }
            })],
            checks: vec![Check::StatGrew("bench_local.http_local_rate_limit.enabled")],
            rls: false,
            against: None,
        },
        Variant {
            name: "lua",
            what: "Lua filter adding a request header",
            modules: vec![],
            native: vec![json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": LUA_SOURCE }
                }
            })],
            checks: vec![Check::UpstreamSaw("x-lua")],
            rls: false,
            against: None,
        },
    ]
}
