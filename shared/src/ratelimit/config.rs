//! One route's rate-limit policy: as written in plugin JSON, and validated.

use std::num::NonZeroU32;
use std::time::Duration;

use super::bucket::Rate;
use super::key::{Key, Missing};
use crate::config::json::Json;
use crate::config::read::{FromJson, Object, one_of, type_error};
use crate::config::{ConfigError, FieldPath, HeaderName};
use crate::host::NANOS_PER_SEC;

// The bounds below are spelled out in the error messages too (literals, not `format!`: every
// byte counts in the module budget); the tests check the messages.

/// Limits per route: each costs a shared-data read (and a write when it admits) per request.
pub const MAX_LIMITS: usize = 8;
/// Slots of a keyed limit when `slots` is not given.
pub const DEFAULT_SLOTS: u32 = 1024;
/// Every VM creates a limit's slots when it first sees the route.
pub const MAX_SLOTS: u32 = 65_536;
/// `rate_per_s` bounds, in thousandths per second: 0.001/s to 1000000/s.
pub const MIN_RATE_MILLIS: u64 = 1;
pub const MAX_RATE_MILLIS: u64 = 1_000_000_000;
pub const MAX_BURST: u32 = 1_000_000;
pub const DEFAULT_STATUS: u16 = 429;
pub const DEFAULT_BODY: &str = r#"{"error":"rate_limited"}"#;
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// One route's rate-limit policy as written in plugin JSON.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// A request passes only if every limit admits it.
    pub limits: Vec<LimitConfig>,
    /// Count and log would-be rejections, reject nothing.
    pub dry_run: bool,
    /// Status of the rejection reply.
    pub status: u16,
    /// Body of the rejection reply.
    pub body: String,
    pub content_type: String,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` on allowed and rejected responses.
    pub rate_limit_headers: bool,
    /// When shared data cannot be updated: reject (`true`) or let the request through.
    pub failure_mode_deny: bool,
    /// Proxies in front of this filter trusted to append the address they saw to
    /// `x-forwarded-for`; `client_address` keys read that header only when this is above 0.
    pub trusted_hops: u32,
}

impl FromJson for RateLimitConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        let config = Self {
            limits: object.required("limits")?,
            dry_run: object.or("dry_run", false)?,
            status: object.or("status", DEFAULT_STATUS)?,
            body: object.or("body", DEFAULT_BODY.to_owned())?,
            content_type: object.or("content_type", DEFAULT_CONTENT_TYPE.to_owned())?,
            rate_limit_headers: object.or("rate_limit_headers", true)?,
            failure_mode_deny: object.or("failure_mode_deny", false)?,
            trusted_hops: object.or("trusted_hops", 0)?,
        };
        object.finish()?;
        Ok(config)
    }
}

/// One token bucket: `burst` tokens, refilled at `rate_per_s`, per key.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Tokens added per second; up to 3 decimals (`0.5` is one every 2 s).
    pub rate_per_s: RatePerSecond,
    /// Bucket size: how many requests may pass at once after a quiet period.
    pub burst: u32,
    pub key: KeyConfig,
    /// Buckets of a keyed limit (default [`DEFAULT_SLOTS`]).
    pub slots: Option<u32>,
}

impl FromJson for LimitConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        let config = Self {
            rate_per_s: object.required("rate_per_s")?,
            burst: object.required("burst")?,
            key: object.or("key", KeyConfig::Route)?,
            slots: object.optional("slots")?,
        };
        object.finish()?;
        Ok(config)
    }
}

/// A rate as written: a plain decimal number with at most 3 decimals (`100`, `0.5`, `2.25`),
/// kept in thousandths of a token per second. Read without floating point, whose parsing and
/// formatting code would cost ~35 KB of the module budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePerSecond {
    pub millis: u64,
}

impl FromJson for RatePerSecond {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Number(text) => {
                parse_millis(text)
                    .map(|millis| Self { millis })
                    .ok_or_else(|| {
                        type_error(
                            value,
                            at,
                            "a plain decimal number with at most 3 decimals, like 100 or 0.5",
                        )
                    })
            }
            other => Err(type_error(other, at, "a number")),
        }
    }
}

/// `"12.5"` is 12500 thousandths; signs, exponents and a 4th decimal are refused.
fn parse_millis(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = fraction.trim_end_matches('0');
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if whole.is_empty() || fraction.len() > 3 || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut millis = whole.parse::<u64>().ok()?.checked_mul(1000)?;
    for (digit, scale) in fraction.bytes().zip([100, 10, 1]) {
        millis = millis.checked_add(u64::from(digit - b'0') * scale)?;
    }
    Some(millis)
}

/// `"route"`, `"client_address"`, `"path"`, or `{"header": "x-api-key", "when_missing": "share"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyConfig {
    Route,
    ClientAddress,
    Path,
    Header { name: String, when_missing: Missing },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyName {
    Route,
    ClientAddress,
    Path,
}

impl FromJson for KeyConfig {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::String(_) => {
                let name = one_of(
                    value,
                    at,
                    "key",
                    &[
                        ("route", KeyName::Route),
                        ("client_address", KeyName::ClientAddress),
                        ("path", KeyName::Path),
                    ],
                )?;
                Ok(match name {
                    KeyName::Route => Self::Route,
                    KeyName::ClientAddress => Self::ClientAddress,
                    KeyName::Path => Self::Path,
                })
            }
            Json::Object(_) => {
                let mut object = Object::new(value, at)?;
                let key = Self::Header {
                    name: object.required("header")?,
                    when_missing: object.or("when_missing", Missing::Share)?,
                };
                object.finish()?;
                Ok(key)
            }
            other => Err(type_error(
                other,
                at,
                r#""route", "client_address", "path" or {"header": "<name>"}"#,
            )),
        }
    }
}

impl FromJson for Missing {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        one_of(
            value,
            at,
            "choice",
            &[("share", Self::Share), ("skip", Self::Skip)],
        )
    }
}

/// A validated rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub limits: Vec<Limit>,
    pub dry_run: bool,
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: String,
    pub rate_limit_headers: bool,
    pub failure_mode_deny: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub rate: Rate,
    pub key: Key,
    /// 1 for [`Key::Route`].
    pub slots: u32,
}

impl RateLimitPolicy {
    pub fn compile(config: RateLimitConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        let limits_at = at.field("limits");
        if config.limits.is_empty() {
            return Err(limits_at.invalid("must list at least one limit"));
        }
        if config.limits.len() > MAX_LIMITS {
            return Err(limits_at.invalid("at most 8 limits per route"));
        }
        let mut limits = Vec::with_capacity(config.limits.len());
        for (i, limit) in config.limits.into_iter().enumerate() {
            limits.push(Limit::compile(
                limit,
                config.trusted_hops,
                &limits_at.index(i),
            )?);
        }
        if !(400..=599).contains(&config.status) {
            return Err(at
                .field("status")
                .invalid("must be a 4xx or 5xx status (default 429)"));
        }
        if config.content_type.is_empty()
            || config
                .content_type
                .chars()
                .any(|c| c.is_control() || !c.is_ascii())
        {
            return Err(at
                .field("content_type")
                .invalid("must be a non-empty header value of printable ASCII"));
        }
        Ok(Self {
            limits,
            dry_run: config.dry_run,
            status: config.status,
            body: config.body.into_bytes(),
            content_type: config.content_type,
            rate_limit_headers: config.rate_limit_headers,
            failure_mode_deny: config.failure_mode_deny,
        })
    }
}

impl Limit {
    fn compile(
        config: LimitConfig,
        trusted_hops: u32,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        let millis = config.rate_per_s.millis;
        if !(MIN_RATE_MILLIS..=MAX_RATE_MILLIS).contains(&millis) {
            return Err(at
                .field("rate_per_s")
                .invalid("must be between 0.001 and 1000000"));
        }
        let burst = NonZeroU32::new(config.burst)
            .ok_or_else(|| at.field("burst").invalid("must be at least 1"))?;
        if config.burst > MAX_BURST {
            return Err(at.field("burst").invalid("must be at most 1000000"));
        }
        // One token every 1e12 / millis ns, rounded: 1000 ns (1e6/s) to 1e12 ns (0.001/s).
        let period = Duration::from_nanos((NANOS_PER_SEC * 1000 + millis / 2) / millis);
        let rate = Rate::new(period, burst)
            .ok_or_else(|| at.field("rate_per_s").invalid("is too high"))?;
        let key = match config.key {
            KeyConfig::Route => Key::Route,
            KeyConfig::ClientAddress => Key::ClientAddress { trusted_hops },
            KeyConfig::Path => Key::Path,
            KeyConfig::Header { name, when_missing } => Key::Header {
                name: HeaderName::parse(&name, &at.field("key").field("header"))?,
                missing: when_missing,
            },
        };
        let slots_at = at.field("slots");
        let slots = match (&key, config.slots) {
            (Key::Route, Some(_)) => {
                return Err(slots_at.invalid(
                    "a route-wide limit (no key) has one bucket; slots apply to keyed limits",
                ));
            }
            (Key::Route, None) => 1,
            (_, None) => DEFAULT_SLOTS,
            (_, Some(0)) => return Err(slots_at.invalid("must be at least 1")),
            (_, Some(slots)) if slots > MAX_SLOTS => {
                return Err(slots_at.invalid("must be at most 65536"));
            }
            (_, Some(slots)) => slots,
        };
        Ok(Self { rate, key, slots })
    }
}
