//! One route's rate-limit policy: as written in plugin JSON, and validated.

use std::num::NonZeroU32;
use std::time::Duration;

use super::bucket::Rate;
use super::key::{Key, Missing, Repeated};
use super::secret::{MIN_CONFIGURED_LEN, SlotSecret};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::config::{ConfigError, FieldPath, HeaderName};
use crate::grpc;
use crate::host::NANOS_PER_SEC;

// The bounds below are spelled out in the error messages too (literals, not `format!`: every
// byte counts in the module budget); the tests check the messages.

/// Limits per route: each costs a shared-data read (and a write when it admits) per request.
pub const MAX_LIMITS: usize = 8;
/// Slots of a keyed limit when `slots` is not given: enough that a flood of 20,000 distinct
/// keys leaves a fresh key 9 of its 10 tokens 19 times in 20 (issue 29; docs/ratelimit.md). A slot's
/// record is created by the first key that lands in it.
pub const DEFAULT_SLOTS: u32 = 65_536;
pub const MAX_SLOTS: u32 = 65_536;
/// `rate_per_s` bounds, in thousandths per second: 0.001/s to 1000000/s.
pub const MIN_RATE_MILLIS: u64 = 1;
pub const MAX_RATE_MILLIS: u64 = 1_000_000_000;
pub const MAX_BURST: u32 = 1_000_000;
pub const DEFAULT_STATUS: u16 = 429;
pub const DEFAULT_BODY: &str = r#"{"error":"rate_limited"}"#;
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";
/// The deadline of a global limit's call to the rate limit service.
pub const DEFAULT_TIMEOUT_MS: u32 = 20;
pub const MAX_TIMEOUT_MS: u32 = 10_000;
/// The reply when the rate limit service cannot decide and `failure_mode_deny` is on.
pub const UNAVAILABLE_STATUS: u16 = 503;
pub const UNAVAILABLE_BODY: &str = r#"{"error":"rate_limit_service_unavailable"}"#;
/// A gRPC call's rejection: over quota, which gRPC clients do not retry on their own (they
/// do retry `UNAVAILABLE`, what Envoy makes of a 429).
pub const DEFAULT_GRPC_STATUS: grpc::Code = grpc::Code::RESOURCE_EXHAUSTED;
pub const DEFAULT_GRPC_MESSAGE: &str = "rate limited";
pub const UNAVAILABLE_GRPC_MESSAGE: &str = "rate limit service unavailable";

/// One route's rate-limit policy as written in plugin JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"limits": [{"rate_per_s": 5, "burst": 10}]}])))]
// With a global limit, its service; without one, none of the service's fields.
#[cfg_attr(feature = "schema", schemars(extend(
    "if" = {"properties": {"limits": {"contains": {"properties": {"scope": {"const": "global"}}, "required": ["scope"]}}}, "required": ["limits"]},
    "then" = {"required": ["service_cluster", "domain"]},
    "else" = {"properties": {"service_cluster": {"type": "null"}, "domain": {"type": "null"}, "timeout_ms": {"type": "null"}}},
)))]
pub struct RateLimitConfig {
    /// A request passes only if every limit admits it (1 to 8 limits).
    #[serde(deserialize_with = "crate::config::objects")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_LIMITS)))]
    pub limits: Vec<LimitConfig>,
    /// Count and log would-be rejections, reject nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Status of the rejection reply (400-599).
    #[serde(default = "default_status")]
    #[cfg_attr(feature = "schema", schemars(range(min = 400, max = 599)))]
    pub status: u16,
    /// Body of the rejection reply.
    #[serde(default = "default_body")]
    pub body: String,
    /// `content-type` of the rejection reply (set it when `body` is not JSON).
    #[serde(default = "default_content_type")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub content_type: String,
    /// For a gRPC call: the status the rejection ends with (not `OK`).
    #[serde(default = "default_grpc_status")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = DEFAULT_GRPC_STATUS.name())))]
    pub grpc_status: grpc::Code,
    /// For a gRPC call: the rejection's `grpc-message` (one line).
    #[serde(default = "default_grpc_message")]
    pub grpc_message: String,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` on allowed and rejected responses.
    #[serde(default = "yes")]
    pub rate_limit_headers: bool,
    /// When shared data cannot be updated: reject (`true`) or let the request through; when
    /// the rate limit service of a global limit cannot decide: answer 503 or let it through.
    #[serde(default)]
    pub failure_mode_deny: bool,
    /// Proxies in front of this filter trusted to append the address they saw to
    /// `x-forwarded-for`; `client_address` keys read that header only when this is above 0.
    #[serde(default)]
    pub trusted_hops: u32,
    /// The secret keyed limits place their keys in slots with (at least 16 characters), for
    /// the same placement across restarts and replicas. Without it each Envoy draws its own
    /// at random. Clients must not know it: with it they can pick a key that shares another
    /// client's bucket.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = MIN_CONFIGURED_LEN)))]
    pub slot_secret: Option<String>,
    /// The Envoy cluster of the rate limit service (global limits only).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub service_cluster: Option<String>,
    /// The RLS domain of the route's global limits.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub domain: Option<String>,
    /// Deadline of the call to the rate limit service, in milliseconds (default 20).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_TIMEOUT_MS)))]
    pub timeout_ms: Option<u32>,
}

fn default_status() -> u16 {
    DEFAULT_STATUS
}

fn default_body() -> String {
    DEFAULT_BODY.to_owned()
}

fn default_content_type() -> String {
    DEFAULT_CONTENT_TYPE.to_owned()
}

fn default_grpc_status() -> grpc::Code {
    DEFAULT_GRPC_STATUS
}

fn default_grpc_message() -> String {
    DEFAULT_GRPC_MESSAGE.to_owned()
}

fn yes() -> bool {
    true
}

/// A local limit: one token bucket, `burst` tokens refilled at `rate_per_s`, per key, in
/// shared data. A global limit: one descriptor of the call to the rate limit service, which
/// holds the rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"rate_per_s": 5, "burst": 10}])))]
// A local limit has a rate and a burst and no descriptor key; a global one no bucket fields.
#[cfg_attr(feature = "schema", schemars(extend(
    "if" = {"properties": {"scope": {"const": "global"}}, "required": ["scope"]},
    "then" = {"properties": {"rate_per_s": {"type": "null"}, "burst": {"type": "null"}, "slots": {"type": "null"}}},
    "else" = {"required": ["rate_per_s", "burst"], "properties": {"descriptor_key": {"type": "null"}}},
)))]
pub struct LimitConfig {
    /// Where the limit is counted.
    #[serde(default)]
    pub scope: Scope,
    /// Tokens added per second; up to 3 decimals (`0.5` is one every 2 s). Local only.
    #[serde(default)]
    pub rate_per_s: Option<RatePerSecond>,
    /// Bucket size: how many requests may pass at once after a quiet period. Local only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_BURST)))]
    pub burst: Option<u32>,
    /// What the limit counts by: `"route"` (one bucket for the route), `"client_address"`
    /// (one per client address), `"path"` (one per normalised path, a gRPC method), or a
    /// request header's value (`{"header": "x-api-key"}`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "route")))]
    pub key: KeyConfig,
    /// Buckets of a keyed limit (default and at most 65536; not with key `"route"`), each
    /// created when a key first lands in it.
    /// Local only.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_SLOTS)))]
    pub slots: Option<u32>,
    /// The descriptor entry's key (global only; default by key: `route`, `remote_address`,
    /// `path`, or the header's name).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub descriptor_key: Option<String>,
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Scope {
    /// This Envoy's shared data.
    #[default]
    Local,
    /// The rate limit service (Envoy's RLS API), for every replica.
    Global,
}

crate::config_names!(Scope { Local = "local", Global = "global" });

/// A rate as written: a plain decimal number with at most 3 decimals (`100`, `0.5`, `2.25`),
/// kept in thousandths of a token per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePerSecond {
    pub millis: u64,
}

impl<'de> Deserialize<'de> for RatePerSecond {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a number with at most 3 decimals, like 100 or 0.5";
        crate::config::decimal(deserializer, EXPECTED, |text| {
            parse_millis(text).map(|millis| Self { millis })
        })
    }
}

crate::json_schema!(RatePerSecond, "RatePerSecond", {
    "type": "number",
    "minimum": 0.001,
    "maximum": 1_000_000,
    "multipleOf": 0.001,
});

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyConfig {
    /// One bucket for the route.
    #[default]
    Route,
    /// One bucket per client address.
    ClientAddress,
    /// One bucket per request path (a gRPC method).
    Path,
    /// One bucket per value of a request header.
    Header {
        name: String,
        when_missing: Missing,
        when_repeated: Repeated,
    },
}

/// The object form of a key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"header": "x-api-key"}])))]
struct HeaderKey {
    /// The request header whose value is the key.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    header: String,
    /// A request without the header (or with it empty): share one bucket, or skip the limit.
    #[serde(default)]
    when_missing: Missing,
    /// A request with the header on more than one line: reject it, or key on the lines
    /// joined with `,` (only for an upstream that reads them so).
    #[serde(default)]
    when_repeated: Repeated,
}

const KEY_NAMES: [&str; 3] = ["route", "client_address", "path"];

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""route", "client_address", "path" or {"header": "<name>"}"#)
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<KeyConfig, E> {
                match name {
                    "route" => Ok(KeyConfig::Route),
                    "client_address" => Ok(KeyConfig::ClientAddress),
                    "path" => Ok(KeyConfig::Path),
                    other => Err(E::unknown_variant(other, &KEY_NAMES)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeyConfig, A::Error> {
                let key = HeaderKey::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(KeyConfig::Header {
                    name: key.header,
                    when_missing: key.when_missing,
                    when_repeated: key.when_repeated,
                })
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for KeyConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RateLimitKey".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "What the limit counts by: the route, the client address, the path (a gRPC method), or a request header's value.",
            "oneOf": [
                {"enum": KEY_NAMES},
                generator.subschema_for::<HeaderKey>(),
            ],
        })
    }
}

/// A validated rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// The local limits.
    pub limits: Vec<Limit>,
    /// The global limits and their service; `None` when the route has none.
    pub global: Option<Global>,
    pub dry_run: bool,
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: String,
    pub grpc: grpc::Status,
    pub rate_limit_headers: bool,
    pub failure_mode_deny: bool,
    /// `slot_secret`: `None` places keys with the Envoy's own secret.
    pub slot_secret: Option<SlotSecret>,
}

/// A route's global limits: one call per request carries a descriptor of each that applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub service_cluster: String,
    pub domain: String,
    pub timeout_ms: u32,
    pub limits: Vec<GlobalLimit>,
}

/// One descriptor of one entry: `(descriptor_key, the request's key value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLimit {
    pub key: Key,
    pub descriptor_key: String,
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
        let mut globals = Vec::new();
        for (i, limit) in config.limits.into_iter().enumerate() {
            let limit_at = limits_at.index(i);
            match limit.scope {
                Scope::Local => limits.push(Limit::compile(limit, config.trusted_hops, &limit_at)?),
                Scope::Global => {
                    globals.push(GlobalLimit::compile(limit, config.trusted_hops, &limit_at)?);
                }
            }
        }
        let global = Global::compile(
            globals,
            config.service_cluster,
            config.domain,
            config.timeout_ms,
            at,
        )?;
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
        let grpc = grpc::Status::compile(config.grpc_status, config.grpc_message, at)?;
        let slot_secret = match config.slot_secret {
            // The message never shows the secret.
            Some(text) if text.chars().count() < MIN_CONFIGURED_LEN => {
                return Err(at
                    .field("slot_secret")
                    .invalid("must be at least 16 characters long"));
            }
            Some(text) => Some(SlotSecret::from_text(&text)),
            None => None,
        };
        Ok(Self {
            limits,
            global,
            dry_run: config.dry_run,
            status: config.status,
            body: config.body.into_bytes(),
            content_type: config.content_type,
            grpc,
            rate_limit_headers: config.rate_limit_headers,
            failure_mode_deny: config.failure_mode_deny,
            slot_secret,
        })
    }
}

impl Global {
    fn compile(
        limits: Vec<GlobalLimit>,
        service_cluster: Option<String>,
        domain: Option<String>,
        timeout_ms: Option<u32>,
        at: &FieldPath,
    ) -> Result<Option<Self>, ConfigError> {
        if limits.is_empty() {
            for (field, given) in [
                ("service_cluster", service_cluster.is_some()),
                ("domain", domain.is_some()),
                ("timeout_ms", timeout_ms.is_some()),
            ] {
                if given {
                    return Err(at.field(field).invalid(
                        "applies only to a route with a global limit (scope \"global\")",
                    ));
                }
            }
            return Ok(None);
        }
        let text = |value: Option<String>, field: &str| match value {
            Some(value) if !value.is_empty() && !value.chars().any(char::is_control) => Ok(value),
            Some(_) => Err(at.field(field).invalid("must be a non-empty name")),
            None => Err(at
                .field(field)
                .invalid("is required with a global limit (scope \"global\")")),
        };
        let service_cluster = text(service_cluster, "service_cluster")?;
        let domain = text(domain, "domain")?;
        let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(at
                .field("timeout_ms")
                .invalid("must be between 1 and 10000"));
        }
        Ok(Some(Self {
            service_cluster,
            domain,
            timeout_ms,
            limits,
        }))
    }
}

impl GlobalLimit {
    fn compile(
        config: LimitConfig,
        trusted_hops: u32,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        for (field, given) in [
            ("rate_per_s", config.rate_per_s.is_some()),
            ("burst", config.burst.is_some()),
            ("slots", config.slots.is_some()),
        ] {
            if given {
                return Err(at.field(field).invalid(
                    "applies only to a local limit: a global limit's rate is the rate limit service's",
                ));
            }
        }
        let key = compile_key(config.key, trusted_hops, at)?;
        let descriptor_key = match config.descriptor_key {
            Some(name) if name.is_empty() || name.chars().any(char::is_control) => {
                return Err(at
                    .field("descriptor_key")
                    .invalid("must be a non-empty name"));
            }
            Some(name) => name,
            None => match &key {
                Key::Route => "route".to_owned(),
                Key::ClientAddress { .. } => "remote_address".to_owned(),
                Key::Path => "path".to_owned(),
                Key::Header { name, .. } => name.as_str().to_owned(),
            },
        };
        Ok(Self {
            key,
            descriptor_key,
        })
    }
}

fn compile_key(config: KeyConfig, trusted_hops: u32, at: &FieldPath) -> Result<Key, ConfigError> {
    Ok(match config {
        KeyConfig::Route => Key::Route,
        KeyConfig::ClientAddress => Key::ClientAddress { trusted_hops },
        KeyConfig::Path => Key::Path,
        KeyConfig::Header {
            name,
            when_missing,
            when_repeated,
        } => Key::Header {
            name: HeaderName::parse(&name, &at.field("key").field("header"))?,
            missing: when_missing,
            repeated: when_repeated,
        },
    })
}

impl Limit {
    fn compile(
        config: LimitConfig,
        trusted_hops: u32,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        if config.descriptor_key.is_some() {
            return Err(at
                .field("descriptor_key")
                .invalid("applies only to a global limit (scope \"global\")"));
        }
        let rate_per_s = config.rate_per_s.ok_or_else(|| {
            at.field("rate_per_s")
                .invalid("is required for a local limit")
        })?;
        let burst = config
            .burst
            .ok_or_else(|| at.field("burst").invalid("is required for a local limit"))?;
        let millis = rate_per_s.millis;
        if !(MIN_RATE_MILLIS..=MAX_RATE_MILLIS).contains(&millis) {
            return Err(at
                .field("rate_per_s")
                .invalid("must be between 0.001 and 1000000"));
        }
        let burst_value = burst;
        let burst = NonZeroU32::new(burst_value)
            .ok_or_else(|| at.field("burst").invalid("must be at least 1"))?;
        if burst_value > MAX_BURST {
            return Err(at.field("burst").invalid("must be at most 1000000"));
        }
        // One token every 1e12 / millis ns, rounded: 1000 ns (1e6/s) to 1e12 ns (0.001/s).
        let period = Duration::from_nanos((NANOS_PER_SEC * 1000 + millis / 2) / millis);
        let rate = Rate::new(period, burst)
            .ok_or_else(|| at.field("rate_per_s").invalid("is too high"))?;
        let key = compile_key(config.key, trusted_hops, at)?;
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
