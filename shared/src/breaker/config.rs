//! One route's breaker config as written in plugin JSON, and its validation into a
//! [`BreakerPolicy`].

use crate::config::json::Json;
use crate::config::read::{FromJson, Object, map, one_of, type_error};
use crate::config::{ConfigError, FieldPath, HeaderName};
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
            Json::Number(_) => {
                let code = u16::from_json(value, at)?;
                if (100..=599).contains(&code) {
                    Ok(Self::Code(code))
                } else {
                    Err(at.invalid("must be a status code between 100 and 599"))
                }
            }
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
    pub status: Option<u16>,
    /// In the order written.
    pub headers: Vec<(String, String)>,
    pub body: String,
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
        object.finish()?;
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

/// One route's breaker as written. Trip conditions left out are off; at least one is needed.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub key: KeyBy,
    pub consecutive_failures: Option<u32>,
    pub failure_rate_percent: Option<u32>,
    pub slow_call_ms: Option<u64>,
    pub slow_call_rate_percent: Option<u32>,
    pub window_ms: u64,
    pub min_requests: u32,
    pub open_ms: u64,
    pub half_open_max_requests: u32,
    pub probe_timeout_ms: u64,
    pub failure_status: Vec<StatusMatch>,
    pub fallback: FallbackConfig,
}

pub const DEFAULT_WINDOW_MS: u64 = 10_000;
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_OPEN_MS: u64 = 60_000;
pub const DEFAULT_HALF_OPEN_MAX_REQUESTS: u32 = 1;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_FALLBACK_STATUS: u16 = 503;

impl FromJson for BreakerConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        let config = Self {
            key: object.or("key", KeyBy::Route)?,
            consecutive_failures: object.optional("consecutive_failures")?,
            failure_rate_percent: object.optional("failure_rate_percent")?,
            slow_call_ms: object.optional("slow_call_ms")?,
            slow_call_rate_percent: object.optional("slow_call_rate_percent")?,
            window_ms: object.or("window_ms", DEFAULT_WINDOW_MS)?,
            min_requests: object.or("min_requests", DEFAULT_MIN_REQUESTS)?,
            open_ms: object.or("open_ms", DEFAULT_OPEN_MS)?,
            half_open_max_requests: object
                .or("half_open_max_requests", DEFAULT_HALF_OPEN_MAX_REQUESTS)?,
            probe_timeout_ms: object.or("probe_timeout_ms", DEFAULT_PROBE_TIMEOUT_MS)?,
            failure_status: object.or("failure_status", vec![StatusMatch::Class(5)])?,
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
    pub rate_percent: u32,
}

/// The local reply while the breaker rejects; the filter adds its state and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A validated breaker policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub key: KeyBy,
    pub consecutive_failures: Option<u32>,
    pub failure_rate_percent: Option<u32>,
    pub slow_calls: Option<SlowCalls>,
    /// Width of one of the window's [`BUCKETS`](super::record::BUCKETS) buckets.
    pub bucket: Nanos,
    pub min_requests: u32,
    pub open: Nanos,
    pub half_open_max_requests: u32,
    pub probe_timeout: Nanos,
    pub failure_status: StatusSet,
    pub fallback: Fallback,
}

/// `at.field`: must be between `low` and `high`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    value: T,
    low: T,
    high: T,
    at: &FieldPath,
    field: &str,
) -> Result<T, ConfigError> {
    if value < low || value > high {
        return Err(at
            .field(field)
            .invalid(format!("must be between {low} and {high}")));
    }
    Ok(value)
}

fn millis(ms: u64) -> Nanos {
    ms.saturating_mul(NANOS_PER_MS)
}

impl BreakerPolicy {
    pub fn compile(config: BreakerConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        let consecutive_failures = match config.consecutive_failures {
            Some(n) => Some(in_range(n, 1, 1_000_000, at, "consecutive_failures")?),
            None => None,
        };
        let failure_rate_percent = match config.failure_rate_percent {
            Some(p) => Some(in_range(p, 1, 100, at, "failure_rate_percent")?),
            None => None,
        };
        let slow_calls = match (config.slow_call_ms, config.slow_call_rate_percent) {
            (Some(ms), Some(rate)) => Some(SlowCalls {
                threshold: millis(in_range(ms, 1, 3_600_000, at, "slow_call_ms")?),
                rate_percent: in_range(rate, 1, 100, at, "slow_call_rate_percent")?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(at
                    .field("slow_call_ms")
                    .invalid("needs slow_call_rate_percent, the share of slow calls that opens"));
            }
            (None, Some(_)) => {
                return Err(at
                    .field("slow_call_rate_percent")
                    .invalid("needs slow_call_ms, the latency that makes a call slow"));
            }
        };
        if consecutive_failures.is_none() && failure_rate_percent.is_none() && slow_calls.is_none()
        {
            return Err(at.invalid(
                "nothing can open this breaker: set consecutive_failures, failure_rate_percent \
                 or slow_call_rate_percent",
            ));
        }
        let window_ms = in_range(config.window_ms, 100, 3_600_000, at, "window_ms")?;
        let bucket = millis(window_ms) / super::record::BUCKETS as u64;
        let min_requests = in_range(config.min_requests, 1, 1_000_000, at, "min_requests")?;
        let open_ms = in_range(config.open_ms, 1, 86_400_000, at, "open_ms")?;
        let half_open_max_requests = in_range(
            config.half_open_max_requests,
            1,
            1_000,
            at,
            "half_open_max_requests",
        )?;
        let probe_timeout_ms = in_range(
            config.probe_timeout_ms,
            1,
            86_400_000,
            at,
            "probe_timeout_ms",
        )?;
        let failure_status = StatusSet::from_matches(&config.failure_status);
        let fallback = compile_fallback(config.fallback, &at.field("fallback"))?;
        Ok(Self {
            key: config.key,
            consecutive_failures,
            failure_rate_percent,
            slow_calls,
            bucket,
            min_requests,
            open: millis(open_ms),
            half_open_max_requests,
            probe_timeout: millis(probe_timeout_ms),
            failure_status,
            fallback,
        })
    }
}

fn compile_fallback(config: FallbackConfig, at: &FieldPath) -> Result<Fallback, ConfigError> {
    let status = match config.status {
        Some(status) => in_range(status, 200, 599, at, "status")?,
        None => DEFAULT_FALLBACK_STATUS,
    };
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
    Ok(Fallback {
        status,
        headers,
        body: config.body.into_bytes(),
    })
}
