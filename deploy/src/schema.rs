//! A JSON Schema (draft 2020-12) for each filter's plugin JSON, for editors and CI checks of
//! WasmPlugin `pluginConfig` (committed as `istio/schema/<filter>.schema.json`).
//!
//! The filters read their config with a hand-written reader (no serde: derives would cost
//! ~78 KB of each module's 150 KB budget), so there are no derive-able types to generate
//! from. The schema is written here, natively, from the policy crate's names and defaults,
//! and the reader is the authority it is tested against (`tests/schema.rs`): the field names
//! of every object are the ones the reader lists in its "unknown field, expected one of"
//! error; every enum is the reader's list of choices; every default compiles to the same
//! policy as leaving the field out; values of every JSON type are tried on every field, and
//! what the reader refuses as a shape error the schema refuses, what the filter accepts the
//! schema accepts. Range checks (`must be between 1 and 100`) stay the filter's; the schema
//! gives the bounds it can, and `mesh-lint` runs the filter itself.

use mesh_policy::canary;
use mesh_policy::grpc::Code;
use mesh_policy::trace;
use mesh_policy::{breaker::config as breaker, ratelimit::config as ratelimit};
use serde_json::{Value, json};

use crate::filters::Kind;

/// The schema of the plugin JSON of `kind`.
pub fn plugin_schema(kind: Kind) -> Value {
    let (title, policy) = match kind {
        Kind::TraceId => ("trace-ID filter (traceid)", traceid()),
        Kind::Canary => ("canary filter (canary)", canary_policy()),
        Kind::RateLimit => ("rate-limit filter (ratelimit)", ratelimit_policy()),
        Kind::Breaker => ("circuit breaker filter (breaker)", breaker_policy()),
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("mesh-filters {title}: plugin JSON"),
        "description": "A policy for routes without their own (`default`) and per Envoy route name (`routes`; under Istio the VirtualService http route name, plus `.` and the match name when the match is named). Written by mesh-schema; checked against the filter's reader by deploy/tests/schema.rs.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "default": {"$ref": "#/$defs/policy"},
            "routes": {"type": "object", "additionalProperties": {"$ref": "#/$defs/policy"}}
        },
        "$defs": {"policy": policy}
    })
}

fn object(description: &str, properties: Value, required: &[&str], example: Value) -> Value {
    json!({
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": required,
        "examples": [example]
    })
}

fn header_name() -> Value {
    json!({"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"})
}

fn traceid() -> Value {
    object(
        "One route's trace-ID policy.",
        json!({
            "mode": {"description": "propagate: a valid incoming traceparent is forwarded as is; child: continued with a new span id.", "enum": ["propagate", "child"], "default": "propagate"},
            "emit": {"description": "Formats written upstream.", "type": "array", "minItems": 1, "uniqueItems": true,
                     "items": {"enum": ["w3c", "b3", "b3multi", "request_id"]}, "default": ["w3c"]},
            "response_header": {"description": "Response header carrying the trace id; null turns it off.",
                                "anyOf": [header_name(), {"type": "null"}], "default": trace::DEFAULT_RESPONSE_HEADER}
        }),
        &[],
        json!({}),
    )
}

fn canary_policy() -> Value {
    let test_fields = json!({
        "exact": {"type": "string"}, "prefix": {"type": "string"}, "present": {"type": "boolean"}
    });
    let rule = object(
        "A rule: one target (header, cookie, query or path_prefix) and, except path_prefix, one test (exact, prefix or present).",
        json!({
            "name": {"description": "Stats label; default the rule's index.", "type": "string"},
            "header": header_name(),
            "cookie": {"type": "string"},
            "query": {"type": "string", "minLength": 1},
            "path_prefix": {"type": "string", "pattern": "^/"},
            "exact": test_fields["exact"], "prefix": test_fields["prefix"], "present": test_fields["present"],
            "release": {"enum": ["canary", "stable"], "default": "canary"}
        }),
        &[],
        json!({"header": "x-canary-force", "exact": "true"}),
    );
    object(
        "One route's canary policy.",
        json!({
            "header": {"description": "Request header that carries the decision.", "allOf": [header_name()], "default": canary::DEFAULT_HEADER},
            "value": {"description": "Its value for the canary (printable ASCII).", "type": "string", "minLength": 1, "default": canary::DEFAULT_VALUE},
            "trust_incoming": {"description": "Keep and obey a tag the request already carries.", "type": "boolean", "default": false},
            "rules": {"description": "Checked in order; the first that matches decides.", "type": "array", "items": rule, "default": []},
            "percent": {"description": "Share of users sent to the canary, 0-100, up to 6 decimals.", "type": "number", "minimum": 0, "maximum": 100, "default": 0},
            "sticky": object(
                "Where a user's key comes from: the first the request has.",
                json!({"header": header_name(), "cookie": {"type": "string"}, "client_address": {"type": "boolean", "default": false}}),
                &[],
                json!({"header": "x-user-id"}),
            ),
            "sticky_cookie": {"anyOf": [object(
                "A cookie that keeps a browser without a key in its cohort.",
                json!({
                    "name": {"type": "string", "default": canary::DEFAULT_COOKIE},
                    "max_age_s": {"type": "integer", "minimum": 0, "default": canary::DEFAULT_COOKIE_MAX_AGE_S},
                    "secure": {"type": "boolean", "default": true}
                }),
                &[],
                json!({}),
            ), {"type": "null"}]},
            "salt": {"description": "Hash salt of the cohorts; default the route name.", "type": ["string", "null"], "minLength": 1},
            "response_header": {"description": "Response header naming the decision (debugging).", "anyOf": [header_name(), {"type": "null"}]}
        }),
        &[],
        json!({"percent": 10, "sticky": {"header": "x-user-id"}}),
    )
}

fn ratelimit_policy() -> Value {
    let mut limit = object(
        "A local limit (a token bucket in this Envoy's shared data) or, with scope global, one descriptor of the call to the rate limit service.",
        json!({
            "scope": {"description": "local: a token bucket in shared data; global: the rate limit service (Envoy's RLS API) counts, for every replica.", "enum": ["local", "global"], "default": "local"},
            "descriptor_key": {"description": "Global only: the descriptor entry's key (default route, remote_address, path, or the header's name).", "type": "string", "minLength": 1},
            "rate_per_s": {"description": "Tokens per second: a plain decimal with at most 3 decimals, 0.001 to 1000000.", "type": "number", "minimum": 0.001, "maximum": 1_000_000},
            "burst": {"description": "Bucket size.", "type": "integer", "minimum": 1, "maximum": ratelimit::MAX_BURST},
            "key": {"description": "What the limit counts by.", "default": "route", "anyOf": [
                {"enum": ["route", "client_address", "path"]},
                object("A request header's value.", json!({
                    "header": header_name(),
                    "when_missing": {"enum": ["share", "skip"], "default": "share"}
                }), &["header"], json!({"header": "x-api-key"}))
            ]},
            "slots": {"description": "Buckets of a keyed limit (default 1024; not with key route).", "type": "integer", "minimum": 1, "maximum": ratelimit::MAX_SLOTS}
        }),
        &[],
        json!({"rate_per_s": 5, "burst": 10}),
    );
    let global = json!({"properties": {"scope": {"const": "global"}}, "required": ["scope"]});
    let any_of = |fields: &[&str]| json!({"anyOf": fields.iter().map(|f| json!({"required": [f]})).collect::<Vec<_>>()});
    limit["if"] = global.clone();
    limit["then"] = json!({"not": any_of(&["rate_per_s", "burst", "slots"])});
    limit["else"] =
        json!({"required": ["rate_per_s", "burst"], "not": any_of(&["descriptor_key"])});
    let mut policy = object(
        "One route's rate limits.",
        json!({
            "limits": {"type": "array", "minItems": 1, "maxItems": ratelimit::MAX_LIMITS, "items": limit},
            "dry_run": {"type": "boolean", "default": false},
            "status": {"type": "integer", "minimum": 400, "maximum": 599, "default": ratelimit::DEFAULT_STATUS},
            "body": {"type": "string", "default": ratelimit::DEFAULT_BODY},
            "content_type": {"type": "string", "minLength": 1, "default": ratelimit::DEFAULT_CONTENT_TYPE},
            "grpc_status": grpc_status("For a gRPC call: the status the rejection ends with.", ratelimit::DEFAULT_GRPC_STATUS),
            "grpc_message": {"description": "For a gRPC call: the rejection's grpc-message.", "type": "string", "default": ratelimit::DEFAULT_GRPC_MESSAGE},
            "rate_limit_headers": {"type": "boolean", "default": true},
            "failure_mode_deny": {"type": "boolean", "default": false},
            "trusted_hops": {"description": "Proxies in front trusted to append to x-forwarded-for; client_address keys read it only above 0.", "type": "integer", "minimum": 0, "maximum": u32::MAX, "default": 0},
            "service_cluster": {"description": "With a global limit: the Envoy cluster of the rate limit service (under Istio e.g. outbound|8081||ratelimit.infra.svc.cluster.local).", "type": "string", "minLength": 1},
            "domain": {"description": "With a global limit: the RLS domain.", "type": "string", "minLength": 1},
            "timeout_ms": {"description": "With a global limit: the call's deadline in ms (default 20).", "type": "integer", "minimum": 1, "maximum": ratelimit::MAX_TIMEOUT_MS}
        }),
        &["limits"],
        json!({"limits": [{"rate_per_s": 5, "burst": 10}]}),
    );
    policy["if"] = json!({"properties": {"limits": {"type": "array", "contains": global}}, "required": ["limits"]});
    policy["then"] = json!({"required": ["service_cluster", "domain"]});
    policy["else"] = json!({"not": any_of(&["service_cluster", "domain", "timeout_ms"])});
    policy
}

/// A local reply's gRPC status, by name (`OK` is the filter's to refuse, like a range).
fn grpc_status(description: &str, default: Code) -> Value {
    json!({"description": description, "enum": Code::NAMES, "default": default.name()})
}

fn breaker_policy() -> Value {
    let count = |min: u64, max: u64| json!({"type": "integer", "minimum": min, "maximum": max});
    let with_default = |min: u64, max: u64, default: u64| {
        let mut v = count(min, max);
        v["default"] = json!(default);
        v
    };
    let props = json!({
        "key": {"enum": ["route", "cluster"], "default": "route"},
        "consecutive_failures": count(1, 1_000_000),
        "failure_rate_percent": count(1, 100),
        "slow_call_ms": count(1, 3_600_000),
        "slow_call_rate_percent": count(1, 100),
        "window_ms": with_default(100, 3_600_000, breaker::DEFAULT_WINDOW_MS),
        "min_requests": with_default(1, 1_000_000, breaker::DEFAULT_MIN_REQUESTS),
        "open_ms": with_default(1, 86_400_000, breaker::DEFAULT_OPEN_MS),
        "half_open_max_requests": with_default(1, 1_000, breaker::DEFAULT_HALF_OPEN_MAX_REQUESTS),
        "probe_timeout_ms": with_default(1, 86_400_000, breaker::DEFAULT_PROBE_TIMEOUT_MS),
        "failure_status": {"description": "Statuses that are failures: codes and classes like \"5xx\".", "type": "array", "default": ["5xx"],
                           "items": {"anyOf": [{"type": "integer", "minimum": 100, "maximum": 599}, {"type": "string", "pattern": "^[1-5]xx$"}]}},
        "grpc_failure_status": {"description": "gRPC statuses that are failures, for gRPC calls the upstream answered.", "type": "array",
                                "default": breaker::DEFAULT_GRPC_FAILURE_STATUS.map(Code::name),
                                "items": {"enum": Code::NAMES}},
        "fallback": object("The reply while the breaker rejects.", json!({
            "status": {"type": "integer", "minimum": 200, "maximum": 599, "default": breaker::DEFAULT_FALLBACK_STATUS},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": "string", "default": ""},
            "grpc_status": grpc_status("For a gRPC call: the status the fallback ends with.", breaker::DEFAULT_FALLBACK_GRPC_STATUS),
            "grpc_message": {"description": "For a gRPC call: the fallback's grpc-message.", "type": "string", "default": breaker::DEFAULT_FALLBACK_GRPC_MESSAGE}
        }), &[], json!({}))
    });
    let mut policy = object(
        "One route's circuit breaker. At least one of consecutive_failures, failure_rate_percent, slow_call_rate_percent.",
        props,
        &[],
        json!({"consecutive_failures": 3}),
    );
    policy["anyOf"] = json!([
        {"required": ["consecutive_failures"]},
        {"required": ["failure_rate_percent"]},
        {"required": ["slow_call_rate_percent"]}
    ]);
    policy
}

/// The schema of the bundle's plugin JSON: an object keyed by stage, each value the envelope
/// of that filter's own schema (its policy under `$defs/<filter>`).
pub fn bundle_schema() -> Value {
    let mut defs = serde_json::Map::new();
    let mut stages = serde_json::Map::new();
    for kind in Kind::ALL {
        let name = kind.name();
        let policy = format!("#/$defs/{name}");
        defs.insert(
            name.to_owned(),
            plugin_schema(kind)["$defs"]["policy"].clone(),
        );
        stages.insert(
            name.to_owned(),
            json!({
                "description": format!("The {name} stage: the plugin JSON of dist/{name}.wasm. Absent: the stage is off."),
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "default": {"$ref": policy},
                    "routes": {"type": "object", "additionalProperties": {"$ref": policy}}
                }
            }),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mesh-filters bundle (bundle): plugin JSON",
        "description": "One key per stage, in the order they run (traceid, canary, ratelimit, breaker); each value is exactly the plugin JSON of that filter's own module. Written by mesh-schema from the four filters' schemas.",
        "type": "object",
        "additionalProperties": false,
        "properties": stages,
        "$defs": defs
    })
}

/// The bundle's schema as committed (`bundle.schema.json`).
pub fn render_bundle() -> String {
    let mut text = serde_json::to_string_pretty(&bundle_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// The committed file name of a filter's schema.
pub fn file_name(kind: Kind) -> String {
    format!("{}.schema.json", kind.name())
}

/// The schema as committed: pretty JSON and a final newline.
pub fn render(kind: Kind) -> String {
    let mut text = serde_json::to_string_pretty(&plugin_schema(kind)).unwrap_or_default();
    text.push('\n');
    text
}
