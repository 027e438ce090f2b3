//! One route's canary policy: as written in plugin JSON, and validated into a
//! [`CanaryPolicy`].

use serde::Deserialize;

use super::cookie;
use super::percent::Percent;

use crate::config::{ConfigError, FieldPath, HeaderName, escape};
use crate::decimal::decimal_string;

pub const DEFAULT_HEADER: &str = "x-canary";
pub const DEFAULT_VALUE: &str = "true";
pub const DEFAULT_COOKIE: &str = "mesh-canary";
/// 30 days.
pub const DEFAULT_COOKIE_MAX_AGE_S: u64 = 30 * 24 * 60 * 60;
/// The Envoy attribute the client address comes from (the connection's peer).
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];

/// One route's canary policy as written in plugin JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"percent": 10, "sticky": {"header": "x-user-id"}}])))]
pub struct CanaryConfig {
    /// The request header that carries the decision.
    #[serde(default = "default_header")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    pub header: String,
    /// Its value for the canary (printable ASCII); stable requests go without the header.
    #[serde(default = "default_value")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub value: String,
    /// Keep and obey a tag the request already carries (for internal hops that tagged).
    /// Otherwise a tag the client sent is removed and the request decided like any other.
    #[serde(default)]
    pub trust_incoming: bool,
    /// Checked in order; the first that matches decides.
    #[serde(default, deserialize_with = "crate::config::objects")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = [])))]
    pub rules: Vec<RuleConfig>,
    /// When no rule matches: the share of keys (or of requests without a key) sent to the
    /// canary, 0-100, at most 6 decimals (`12.5`, `1e-06`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0)))]
    pub percent: Percent,
    /// Where the sticky key comes from.
    #[serde(default, deserialize_with = "crate::config::object")]
    #[cfg_attr(feature = "schema", schemars(extend("default" = {})))]
    pub sticky: StickyConfig,
    /// A cookie that keeps a browser without a sticky key in its cohort; off by default,
    /// `{}` turns it on with the defaults. A request without a key gets a new random key,
    /// which the response stores in this cookie (`Path=/; HttpOnly; SameSite=Lax`, plus
    /// `Secure` unless `secure: false`); the cookie is the last key source. Not with
    /// `sticky.client_address`, which gives every request a key.
    #[serde(default, deserialize_with = "crate::config::optional_object")]
    pub sticky_cookie: Option<StickyCookieConfig>,
    /// The hash salt that picks the cohort; default: the route name. Routes with different
    /// salts have independent cohorts: give a route and its tagged twin the same salt.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub salt: Option<String>,
    /// A response header that tells the decision (for debugging): `canary; rule=force`,
    /// `stable; sticky`, `canary; random`, `stable; trusted`. Off by default.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    pub response_header: Option<String>,
}

fn default_header() -> String {
    DEFAULT_HEADER.to_owned()
}

fn default_value() -> String {
    DEFAULT_VALUE.to_owned()
}

/// Which release a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Release {
    /// The new release (the tag header is set).
    Canary,
    /// The current release (the tag header is not set).
    Stable,
}

crate::config_names!(Release { Canary = "canary", Stable = "stable" });

impl Release {
    pub const ALL: [Release; 2] = [Self::Canary, Self::Stable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Stable => "stable",
        }
    }
}

/// A rule as written: one target (`header`, `cookie`, `query` or `path_prefix`) and, except
/// for `path_prefix`, one test (`exact`, `prefix` or `present`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"header": "x-canary-force", "exact": "true"}])))]
pub struct RuleConfig {
    /// The stats label of the rule; default its index.
    #[serde(default)]
    pub name: Option<String>,
    /// Target: a request header.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    pub header: Option<String>,
    /// Target: a cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Target: a query parameter.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub query: Option<String>,
    /// Target and test: the path starts with this (a gRPC service or method too).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))]
    pub path_prefix: Option<String>,
    /// Test: the target's value is this.
    #[serde(default)]
    pub exact: Option<String>,
    /// Test: the target's value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Test: the target is there (`true`) or not (`false`).
    #[serde(default)]
    pub present: Option<bool>,
    /// Where a matching request goes; default the canary.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "canary")))]
    pub release: Option<Release>,
}

/// Where the sticky key comes from: the first of these the request has, in the order
/// `header`, `cookie`, `client_address` (an empty value counts as absent).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"header": "x-user-id"}])))]
pub struct StickyConfig {
    /// A request header (a user id).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// The client's IP (`source.address` without the port).
    #[serde(default)]
    pub client_address: bool,
}

/// The cookie that keeps a browser without a sticky key in its cohort.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{}])))]
pub struct StickyCookieConfig {
    /// The cookie's name.
    #[serde(default = "default_cookie")]
    pub name: String,
    /// Its lifetime in seconds (default 30 days).
    #[serde(default = "default_cookie_max_age_s")]
    pub max_age_s: u64,
    /// Sent with `Secure` (HTTPS only).
    #[serde(default = "yes")]
    pub secure: bool,
}

fn default_cookie() -> String {
    DEFAULT_COOKIE.to_owned()
}

fn default_cookie_max_age_s() -> u64 {
    DEFAULT_COOKIE_MAX_AGE_S
}

fn yes() -> bool {
    true
}

/// A validated canary policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryPolicy {
    pub header: HeaderName,
    pub value: String,
    pub trust_incoming: bool,
    pub rules: Vec<Rule>,
    /// 0–100.
    pub percent: Percent,
    pub sticky: Sticky,
    pub sticky_cookie: Option<StickyCookie>,
    pub salt: Option<String>,
    pub response_header: Option<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub target: Target,
    pub release: Release,
}

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Header(HeaderName, Test),
    Cookie(String, Test),
    /// A query parameter, compared decoded.
    Query(String, Test),
    /// The path without its query string starts with this.
    PathPrefix(String),
}

/// How a rule tests the value it looks at (bytes; case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Exact(String),
    Prefix(String),
    /// `true`: the value is there (even empty); `false`: it is not.
    Present(bool),
}

impl Test {
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        match self {
            Self::Exact(expected) => value == Some(expected.as_bytes()),
            Self::Prefix(prefix) => value.is_some_and(|v| v.starts_with(prefix.as_bytes())),
            Self::Present(present) => value.is_some() == *present,
        }
    }
}

/// The sticky key sources, tried in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sticky {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
    pub client_address: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    pub max_age_s: u64,
    pub secure: bool,
}

impl StickyCookie {
    /// The `set-cookie` value that stores a new sticky key.
    pub fn set_cookie(&self, key: &str) -> String {
        cookie::set_cookie(&self.name, key, self.max_age_s, self.secure)
    }
}

impl CanaryPolicy {
    pub fn compile(config: CanaryConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        let header = HeaderName::parse(&config.header, &at.field("header"))?;
        if !is_header_value(&config.value) {
            return Err(bad(
                &at.field("value"),
                &config.value,
                "is not a usable header value: printable ASCII, not empty, no spaces at either end",
            ));
        }
        let rules_at = at.field("rules");
        let mut rules: Vec<Rule> = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.into_iter().enumerate() {
            let at = rules_at.index(i);
            let rule = Rule::compile(rule, i, &header, &at)?;
            if rules.iter().any(|other| other.name == rule.name) {
                return Err(bad(&at.field("name"), &rule.name, "names two rules"));
            }
            rules.push(rule);
        }
        if config.percent > Percent::HUNDRED {
            return Err(at.field("percent").invalid("must be at most 100"));
        }
        let sticky = Sticky::compile(config.sticky, &header, &at.field("sticky"))?;
        let sticky_cookie = match config.sticky_cookie {
            Some(c) => Some(StickyCookie::compile(c, &at.field("sticky_cookie"))?),
            None => None,
        };
        // The cookie is the last key source and every request has an address: it would never
        // be set nor read.
        if sticky.client_address && sticky_cookie.is_some() {
            return Err(at
                .field("sticky_cookie")
                .invalid("is never used: sticky.client_address gives every request a key"));
        }
        if config.salt.as_deref() == Some("") {
            return Err(at
                .field("salt")
                .invalid("must not be empty (leave it out to salt with the route name)"));
        }
        let response_header = match config.response_header {
            Some(name) => Some(HeaderName::parse(&name, &at.field("response_header"))?),
            None => None,
        };
        Ok(Self {
            header,
            value: config.value,
            trust_incoming: config.trust_incoming,
            rules,
            percent: config.percent,
            sticky,
            sticky_cookie,
            salt: config.salt,
            response_header,
        })
    }
}

/// `"<value>" <why>`: one formatting site for every message that quotes a value.
fn bad(at: &FieldPath, value: &str, why: &str) -> ConfigError {
    at.invalid(format!("\"{}\" {why}", escape(value)))
}

const TAG_IN_RULE: &str =
    "is the tag header itself, which is removed before rules run (set trust_incoming to obey it)";
const TAG_AS_KEY: &str = "is the tag header itself, which carries the decision, not a key";

/// A header a rule or the sticky key reads (`header` in both): a header name, not the tag
/// header (`why` says what that would do there).
fn key_header(
    name: &str,
    tag: &HeaderName,
    at: &FieldPath,
    why: &str,
) -> Result<HeaderName, ConfigError> {
    let header = HeaderName::parse(name, at)?;
    if header == *tag {
        return Err(bad(at, name, why));
    }
    Ok(header)
}

/// A cookie a rule, the sticky key or the sticky cookie names.
fn cookie_name(name: String, at: &FieldPath) -> Result<String, ConfigError> {
    if !cookie::is_name(&name) {
        return Err(bad(at, &name, "is not a cookie name"));
    }
    Ok(name)
}

impl Rule {
    fn compile(
        config: RuleConfig,
        index: usize,
        tag: &HeaderName,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        let name = config
            .name
            .unwrap_or_else(|| decimal_string(u64::try_from(index).unwrap_or(u64::MAX)));
        if !is_label_value(&name) {
            return Err(bad(
                &at.field("name"),
                &name,
                "is not a usable stats label: letters, digits, '_', '-', '.'",
            ));
        }
        let targets = [
            ("header", config.header.is_some()),
            ("cookie", config.cookie.is_some()),
            ("query", config.query.is_some()),
            ("path_prefix", config.path_prefix.is_some()),
        ];
        at_most_one(at, &targets, "a rule looks at one thing: write two rules")?;
        let tests = [
            ("exact", config.exact.is_some()),
            ("prefix", config.prefix.is_some()),
            ("present", config.present.is_some()),
        ];
        at_most_one(
            at,
            &tests,
            r#"a rule has one test: "exact", "prefix" or "present""#,
        )?;
        let test = config
            .exact
            .map(Test::Exact)
            .or(config.prefix.map(Test::Prefix))
            .or(config.present.map(Test::Present));
        let needs_test = |field: &str| {
            at.field(field)
                .invalid("needs a test next to it: \"exact\", \"prefix\" or \"present\"")
        };
        let target = if let Some(value) = config.header {
            let name = key_header(&value, tag, &at.field("header"), TAG_IN_RULE)?;
            Target::Header(name, test.ok_or_else(|| needs_test("header"))?)
        } else if let Some(name) = config.cookie {
            let name = cookie_name(name, &at.field("cookie"))?;
            Target::Cookie(name, test.ok_or_else(|| needs_test("cookie"))?)
        } else if let Some(name) = config.query {
            if name.is_empty() {
                return Err(at.field("query").invalid("the parameter name is empty"));
            }
            Target::Query(name, test.ok_or_else(|| needs_test("query"))?)
        } else if let Some(prefix) = config.path_prefix {
            if test.is_some() {
                return Err(at
                    .field("path_prefix")
                    .invalid("is its own test: it takes no \"exact\", \"prefix\" or \"present\""));
            }
            if !prefix.starts_with('/') {
                return Err(bad(
                    &at.field("path_prefix"),
                    &prefix,
                    "must start with '/'",
                ));
            }
            Target::PathPrefix(prefix)
        } else {
            return Err(at.invalid(r#"needs one of "header", "cookie", "query", "path_prefix""#));
        };
        Ok(Self {
            name,
            target,
            release: config.release.unwrap_or(Release::Canary),
        })
    }
}

/// Refuses a second field of `fields` (name, whether given) at that field, saying `why`.
fn at_most_one(at: &FieldPath, fields: &[(&str, bool)], why: &str) -> Result<(), ConfigError> {
    match fields.iter().filter(|(_, given)| *given).nth(1) {
        Some((second, _)) => Err(at.field(second).invalid(why)),
        None => Ok(()),
    }
}

impl Sticky {
    fn compile(
        config: StickyConfig,
        tag: &HeaderName,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        let header = config
            .header
            .as_deref()
            .map(|name| key_header(name, tag, &at.field("header"), TAG_AS_KEY))
            .transpose()?;
        let cookie = config
            .cookie
            .map(|name| cookie_name(name, &at.field("cookie")))
            .transpose()?;
        Ok(Self {
            header,
            cookie,
            client_address: config.client_address,
        })
    }
}

impl StickyCookie {
    fn compile(config: StickyCookieConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        let name = cookie_name(config.name, &at.field("name"))?;
        if config.max_age_s == 0 {
            return Err(at.field("max_age_s").invalid("must be at least 1"));
        }
        Ok(Self {
            name,
            max_age_s: config.max_age_s,
            secure: config.secure,
        })
    }
}

/// Printable ASCII, not empty, no space at either end: safe in any header and in a route's
/// exact header match.
fn is_header_value(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && value.bytes().all(|c| (0x20..0x7f).contains(&c))
}

fn is_label_value(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}
