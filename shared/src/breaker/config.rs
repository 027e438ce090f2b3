//! One route's breaker config as written in plugin JSON, and its validation into a
//! [`BreakerPolicy`].

use serde::Deserialize;

use crate::config::{ConfigError, Entries, FieldPath, HeaderName};
use crate::grpc::{self, Code, CodeSet};
use crate::host::{NANOS_PER_MS, Nanos};

use super::status::{StatusMatch, StatusSet};
use super::{CIRCUIT_STATE_HEADER, RETRY_AFTER_HEADER};

/// Which shared breaker a request belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum KeyBy {
    /// One breaker per Envoy route name.
    #[default]
    Route,
    /// One breaker per upstream cluster (`xds.cluster_name`), shared by every route to it.
    Cluster,
}

crate::config_names!(KeyBy { Route = "route", Cluster = "cluster" });

/// The local reply while the breaker is open, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"status": 503, "headers": {"content-type": "application/json"}, "body": "{\"error\":\"circuit open\"}"}])))]
pub struct FallbackConfig {
    /// The reply's status (200-599; default 503).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599), extend("default" = DEFAULT_FALLBACK_STATUS)))]
    pub status: Option<u64>,
    /// The reply's headers, name to value (not `x-circuit-state` nor `retry-after`, which the
    /// breaker sets).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("propertyNames" = {"pattern": crate::config::HEADER_NAME_PATTERN})))]
    pub headers: Entries<String>,
    /// The reply's body.
    #[serde(default)]
    pub body: String,
    /// For a gRPC call: the status the reply ends with (default `UNAVAILABLE`; not `OK`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_FALLBACK_GRPC_STATUS.name())))]
    pub grpc_status: Option<Code>,
    /// For a gRPC call: the reply's `grpc-message` (default `circuit open`; one line).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_FALLBACK_GRPC_MESSAGE)))]
    pub grpc_message: Option<String>,
}

/// One route's breaker as written. Trip conditions left out are off; at least one is needed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"consecutive_failures": 3}])))]
#[cfg_attr(feature = "schema", schemars(extend("anyOf" = [{"required": ["consecutive_failures"]}, {"required": ["failure_rate_percent"]}, {"required": ["slow_call_rate_percent"]}])))]
pub struct BreakerConfig {
    /// One breaker per route, or per upstream cluster.
    #[serde(default)]
    pub key: KeyBy,
    /// Opens after this many failures in a row (1 to 1000000).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1_000_000)))]
    pub consecutive_failures: Option<u64>,
    /// Opens when failures reach this share of the window's calls (1-100), once it holds
    /// `min_requests`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub failure_rate_percent: Option<u64>,
    /// A call at least this slow (request headers to response headers) is slow (1 to
    /// 3600000 ms); needs `slow_call_rate_percent`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3_600_000)))]
    pub slow_call_ms: Option<u64>,
    /// Opens when slow calls reach this share of the window's calls (1-100); needs
    /// `slow_call_ms`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
    pub slow_call_rate_percent: Option<u64>,
    /// The rolling window of the rate conditions, 10 buckets of `window_ms / 10` (100 to
    /// 3600000 ms).
    #[serde(default = "default_window_ms")]
    #[cfg_attr(feature = "schema", schemars(range(min = 100, max = 3_600_000)))]
    pub window_ms: u64,
    /// Calls the window must hold before a rate condition can open (1 to 1000000).
    #[serde(default = "default_min_requests")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1_000_000)))]
    pub min_requests: u64,
    /// How long it stays open before probing (1 to 86400000 ms).
    #[serde(default = "default_open_ms")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 86_400_000)))]
    pub open_ms: u64,
    /// Probes let through half-open, across all workers; that many successes close it
    /// (1-1000). One, as Hystrix and Sentinel probe: a recovering upstream gets one call,
    /// not a burst; raise it (e.g. 5) where one call is too small a sample.
    #[serde(default = "default_half_open_max_requests")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub half_open_max_requests: u64,
    /// A probe not finished this long after the last probe was admitted counts as failed (1
    /// to 86400000 ms).
    #[serde(default = "default_probe_timeout_ms")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 86_400_000)))]
    pub probe_timeout_ms: u64,
    /// HTTP statuses that are failures: codes (`503`) or classes (`"5xx"`). `[]`: only
    /// resets and timeouts.
    #[serde(default = "default_failure_status")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = ["5xx"])))]
    pub failure_status: Vec<StatusMatch>,
    /// gRPC statuses that are failures, by name, for gRPC calls the upstream answered (add
    /// `"RESOURCE_EXHAUSTED"` where the upstream's quota means it is overloaded).
    #[serde(default = "default_grpc_failure_status")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_GRPC_FAILURE_STATUS.map(Code::name))))]
    pub grpc_failure_status: Vec<Code>,
    /// The reply while it rejects.
    #[serde(default, deserialize_with = "crate::config::object")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = {})))]
    pub fallback: FallbackConfig,
}

fn default_window_ms() -> u64 {
    DEFAULT_WINDOW_MS
}

fn default_min_requests() -> u64 {
    DEFAULT_MIN_REQUESTS
}

fn default_open_ms() -> u64 {
    DEFAULT_OPEN_MS
}

fn default_half_open_max_requests() -> u64 {
    DEFAULT_HALF_OPEN_MAX_REQUESTS
}

fn default_probe_timeout_ms() -> u64 {
    DEFAULT_PROBE_TIMEOUT_MS
}

fn default_failure_status() -> Vec<StatusMatch> {
    vec![StatusMatch::Class(5)]
}

fn default_grpc_failure_status() -> Vec<Code> {
    DEFAULT_GRPC_FAILURE_STATUS.to_vec()
}

/// A gRPC call fails with these by default: the upstream is down, overloaded or broken.
/// Not `RESOURCE_EXHAUSTED` (a quota, usually the caller's) nor the caller's own errors.
pub const DEFAULT_GRPC_FAILURE_STATUS: [Code; 5] = [
    Code::UNAVAILABLE,
    Code::DEADLINE_EXCEEDED,
    Code::INTERNAL,
    Code::UNKNOWN,
    Code::DATA_LOSS,
];
pub const DEFAULT_FALLBACK_GRPC_STATUS: Code = Code::UNAVAILABLE;
pub const DEFAULT_FALLBACK_GRPC_MESSAGE: &str = "circuit open";

pub const DEFAULT_WINDOW_MS: u64 = 10_000;
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
pub const DEFAULT_OPEN_MS: u64 = 60_000;
pub const DEFAULT_HALF_OPEN_MAX_REQUESTS: u64 = 1;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_FALLBACK_STATUS: u64 = 503;

/// The slow-call trip condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowCalls {
    /// A call at least this slow (request headers to response headers) is slow.
    pub threshold: Nanos,
    pub rate_percent: u64,
}

/// The local reply while the breaker rejects; the filter adds its state and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The reply to a gRPC call.
    pub grpc: grpc::Status,
}

/// A validated breaker policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub key: KeyBy,
    pub consecutive_failures: Option<u64>,
    pub failure_rate_percent: Option<u64>,
    pub slow_calls: Option<SlowCalls>,
    /// Width of one of the window's [`BUCKETS`](super::record::BUCKETS) buckets.
    pub bucket: Nanos,
    pub min_requests: u64,
    pub open: Nanos,
    pub half_open_max_requests: u64,
    pub probe_timeout: Nanos,
    pub failure_status: StatusSet,
    pub grpc_failure_status: CodeSet,
    pub fallback: Fallback,
}

/// `at.field`: must be between `low` and `high`.
fn in_range(
    value: u64,
    low: u64,
    high: u64,
    at: &FieldPath,
    field: &str,
) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(at
            .field(field)
            .invalid(format!("must be between {low} and {high}")));
    }
    Ok(())
}

fn millis(ms: u64) -> Nanos {
    ms.saturating_mul(NANOS_PER_MS)
}

impl BreakerPolicy {
    pub fn compile(config: BreakerConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        // Checked in one loop: each early return costs its own cleanup code in the module.
        let ranges = [
            (
                config.consecutive_failures,
                1,
                1_000_000,
                "consecutive_failures",
            ),
            (config.failure_rate_percent, 1, 100, "failure_rate_percent"),
            (config.slow_call_ms, 1, 3_600_000, "slow_call_ms"),
            (
                config.slow_call_rate_percent,
                1,
                100,
                "slow_call_rate_percent",
            ),
            (Some(config.window_ms), 100, 3_600_000, "window_ms"),
            (Some(config.min_requests), 1, 1_000_000, "min_requests"),
            (Some(config.open_ms), 1, 86_400_000, "open_ms"),
            (
                Some(config.half_open_max_requests),
                1,
                1_000,
                "half_open_max_requests",
            ),
            (
                Some(config.probe_timeout_ms),
                1,
                86_400_000,
                "probe_timeout_ms",
            ),
        ];
        for (value, low, high, field) in ranges {
            if let Some(value) = value {
                in_range(value, low, high, at, field)?;
            }
        }
        let slow_calls = match (config.slow_call_ms, config.slow_call_rate_percent) {
            (Some(ms), Some(rate_percent)) => Ok(Some(SlowCalls {
                threshold: millis(ms),
                rate_percent,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err((
                "slow_call_ms",
                "needs slow_call_rate_percent, the share of slow calls that opens",
            )),
            (None, Some(_)) => Err((
                "slow_call_rate_percent",
                "needs slow_call_ms, the latency that makes a call slow",
            )),
        };
        let slow_calls = slow_calls.map_err(|(field, message)| at.field(field).invalid(message))?;
        if config.consecutive_failures.is_none()
            && config.failure_rate_percent.is_none()
            && slow_calls.is_none()
        {
            return Err(at.invalid(
                "nothing can open this breaker: set consecutive_failures, failure_rate_percent \
                 or slow_call_rate_percent",
            ));
        }
        let fallback = compile_fallback(config.fallback, &at.field("fallback"))?;
        Ok(Self {
            key: config.key,
            consecutive_failures: config.consecutive_failures,
            failure_rate_percent: config.failure_rate_percent,
            slow_calls,
            bucket: millis(config.window_ms) / super::record::BUCKETS as u64,
            min_requests: config.min_requests,
            open: millis(config.open_ms),
            half_open_max_requests: config.half_open_max_requests,
            probe_timeout: millis(config.probe_timeout_ms),
            failure_status: StatusSet::from_matches(&config.failure_status),
            grpc_failure_status: CodeSet::of(&config.grpc_failure_status),
            fallback,
        })
    }
}

fn compile_fallback(config: FallbackConfig, at: &FieldPath) -> Result<Fallback, ConfigError> {
    let status = config.status.unwrap_or(DEFAULT_FALLBACK_STATUS);
    in_range(status, 200, 599, at, "status")?;
    let headers_at = at.field("headers");
    let mut headers = Vec::with_capacity(config.headers.0.len());
    for (name, value) in config.headers.0 {
        let at = headers_at.key(&name);
        let header = HeaderName::parse(&name, &at)?;
        if [CIRCUIT_STATE_HEADER, RETRY_AFTER_HEADER].contains(&header.as_str()) {
            return Err(at.invalid("is set by the breaker itself"));
        }
        if headers.iter().any(|(seen, _)| seen == header.as_str()) {
            return Err(at.invalid(format!("{} is written twice", header.as_str())));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(at.invalid("header value has a control character"));
        }
        headers.push((header.as_str().to_owned(), value));
    }
    let grpc = grpc::Status::compile(
        config.grpc_status.unwrap_or(DEFAULT_FALLBACK_GRPC_STATUS),
        config
            .grpc_message
            .unwrap_or_else(|| DEFAULT_FALLBACK_GRPC_MESSAGE.to_owned()),
        at,
    )?;
    Ok(Fallback {
        // In range: checked above.
        status: status as u16,
        headers,
        body: config.body.into_bytes(),
        grpc,
    })
}
