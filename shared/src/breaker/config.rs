//! One route's breaker config as written in plugin JSON, and its validation into a
//! [`BreakerPolicy`].

use crate::config::json::Json;
use crate::config::read::{FromJson, Object, map, one_of, type_error};
use crate::config::{ConfigError, FieldPath, HeaderName};
use crate::grpc::{self, Code, CodeSet};
use crate::host::{NANOS_PER_MS, Nanos};

use super::classify::StatusSet;
use super::{CIRCUIT_STATE_HEADER, RETRY_AFTER_HEADER};

/// Which shared breaker a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    /// One breaker per Envoy route name.
    Route,
    /// One breaker per upstream cluster (`xds.cluster_name`), shared by every route to it.
    Cluster,
}

impl FromJson for KeyBy {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        one_of(
            value,
            at,
            "key",
            &[("route", Self::Route), ("cluster", Self::Cluster)],
        )
    }
}

/// A status code (`503`) or a class of them (`"5xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl FromJson for StatusMatch {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Number(_) => match u64::from_json(value, at)? {
                code @ 100..=599 => Ok(Self::Code(code as u16)),
                _ => Err(at.invalid("must be a status code between 100 and 599")),
            },
            Json::String(s) => match s.as_bytes() {
                [class @ b'1'..=b'5', b'x', b'x'] => Ok(Self::Class(u16::from(class - b'0'))),
                _ => Err(at.invalid(format!(
                    "unknown status class \"{}\", expected \"1xx\" to \"5xx\" or a status code",
                    crate::config::escape(s)
                ))),
            },
            other => Err(type_error(
                other,
                at,
                "a status code or a class like \"5xx\"",
            )),
        }
    }
}

/// The local reply while the breaker is open, as written.
#[derive(Debug, Clone, Default)]
pub struct FallbackConfig {
    pub status: Option<u64>,
    /// In the order written.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// For a gRPC call: the status the reply ends with (default `UNAVAILABLE`).
    pub grpc_status: Option<Code>,
    /// For a gRPC call: the reply's `grpc-message` (default `circuit open`).
    pub grpc_message: Option<String>,
}

impl FromJson for FallbackConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        let status = object.optional("status")?;
        let headers = match object.raw("headers") {
            Some((headers, at)) => map(headers, &at)?,
            None => Vec::new(),
        };
        let body = object.or("body", String::new())?;
        let grpc_status = object.optional("grpc_status")?;
        let grpc_message = object.optional("grpc_message")?;
        object.finish()?;
        Ok(Self {
            status,
            headers,
            body,
            grpc_status,
            grpc_message,
        })
    }
}

/// One route's breaker as written. Trip conditions left out are off; at least one is needed.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub key: KeyBy,
    pub consecutive_failures: Option<u64>,
    pub failure_rate_percent: Option<u64>,
    pub slow_call_ms: Option<u64>,
    pub slow_call_rate_percent: Option<u64>,
    pub window_ms: u64,
    pub min_requests: u64,
    pub open_ms: u64,
    pub half_open_max_requests: u64,
    pub probe_timeout_ms: u64,
    pub failure_status: Vec<StatusMatch>,
    /// gRPC statuses that count as failures, for gRPC calls the upstream answered.
    pub grpc_failure_status: Vec<Code>,
    pub fallback: FallbackConfig,
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

/// The whole-number fields, read as u64 and range-checked in compile (each integer type
/// would cost its own copy of the reading code in the module).
const NUMBER_FIELDS: [&str; 9] = [
    "consecutive_failures",
    "failure_rate_percent",
    "slow_call_ms",
    "slow_call_rate_percent",
    "window_ms",
    "min_requests",
    "open_ms",
    "half_open_max_requests",
    "probe_timeout_ms",
];

impl FromJson for BreakerConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        // One loop, one error exit: each `?` costs its own cleanup code in the module.
        let mut numbers = [None; NUMBER_FIELDS.len()];
        for (number, key) in numbers.iter_mut().zip(NUMBER_FIELDS) {
            *number = object.optional::<u64>(key)?;
        }
        let [
            consecutive_failures,
            failure_rate_percent,
            slow_call_ms,
            slow_call_rate_percent,
            window_ms,
            min_requests,
            open_ms,
            half_open_max_requests,
            probe_timeout_ms,
        ] = numbers;
        let config = Self {
            key: object.or("key", KeyBy::Route)?,
            consecutive_failures,
            failure_rate_percent,
            slow_call_ms,
            slow_call_rate_percent,
            window_ms: window_ms.unwrap_or(DEFAULT_WINDOW_MS),
            min_requests: min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            open_ms: open_ms.unwrap_or(DEFAULT_OPEN_MS),
            half_open_max_requests: half_open_max_requests
                .unwrap_or(DEFAULT_HALF_OPEN_MAX_REQUESTS),
            probe_timeout_ms: probe_timeout_ms.unwrap_or(DEFAULT_PROBE_TIMEOUT_MS),
            failure_status: object.or("failure_status", vec![StatusMatch::Class(5)])?,
            grpc_failure_status: object
                .or("grpc_failure_status", DEFAULT_GRPC_FAILURE_STATUS.to_vec())?,
            fallback: object.or("fallback", FallbackConfig::default())?,
        };
        object.finish()?;
        Ok(config)
    }
}

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
    let mut headers = Vec::with_capacity(config.headers.len());
    for (name, value) in config.headers {
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
