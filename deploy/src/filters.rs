//! The four filters and the bundle, run natively: the same `configure` as `on_configure` in
//! the module.

use mesh_policy::canary::{CanaryConfig, CanaryPolicy};
use mesh_policy::chain::Stages;
use mesh_policy::config::{ConfigError, Envelope, FieldPath};
use mesh_policy::filter::{Filter, Plugin, configure};

/// The bundle's module name: `dist/bundle.wasm`, the OCI repository `.../bundle`.
pub const BUNDLE: &str = "bundle";

/// Every module this repository ships: the four filters, then the bundle.
pub fn module_names() -> impl Iterator<Item = &'static str> {
    Kind::ALL.into_iter().map(Kind::name).chain([BUNDLE])
}

/// Reads and compiles the bundle's plugin JSON with the bundle's own code (every stage's,
/// unknown stage keys refused).
pub fn configure_bundle(json: &[u8]) -> Result<(), ConfigError> {
    mesh_bundle::Bundle::configure(&Plugin::default(), json).map(|_| ())
}

/// A filter of this repository, in the order a request passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TraceId,
    Canary,
    RateLimit,
    Breaker,
}

impl Kind {
    /// In request order: trace IDs first (every reply, even a rejection, carries one), the
    /// canary tag before anything that keys on the route, the rate limit before the breaker
    /// (a rejected request never counts as a call to the upstream).
    pub const ALL: [Kind; 4] = [Self::TraceId, Self::Canary, Self::RateLimit, Self::Breaker];

    /// The module name: `dist/<name>.wasm`, the OCI repository `.../<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TraceId => mesh_traceid::TraceId::NAME,
            Self::Canary => mesh_canary::Canary::NAME,
            Self::RateLimit => mesh_ratelimit::RateLimit::NAME,
            Self::Breaker => mesh_breaker::Breaker::NAME,
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Reads and compiles plugin JSON with the filter's own code.
    pub fn configure(self, json: &[u8]) -> Result<Configured, ConfigError> {
        let plugin = Plugin::default();
        fn names<F: Filter>(filter: &F, json: &[u8]) -> Result<Configured, ConfigError> {
            let routes = configure(filter, json)?;
            let envelope = Envelope::<F::Config>::from_json(json)?;
            Ok(Configured {
                has_default: envelope.default.is_some(),
                routes: envelope
                    .routes
                    .0
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect(),
                compiled: !routes.is_empty(),
            })
        }
        match self {
            Self::TraceId => names(&mesh_traceid::TraceId::new(&plugin), json),
            Self::Canary => names(&mesh_canary::Canary::new(&plugin), json),
            Self::RateLimit => names(&mesh_ratelimit::RateLimit::new(&plugin), json),
            Self::Breaker => names(&mesh_breaker::Breaker::new(&plugin), json),
        }
    }

    /// Each route's policy, comparable, for plugin JSON that `configure` accepted.
    pub fn policies(self, json: &[u8]) -> Vec<(Option<String>, String)> {
        fn each<F: Filter>(filter: &F, json: &[u8]) -> Vec<(Option<String>, String)>
        where
            F::Policy: std::fmt::Debug,
        {
            let Ok(envelope) = Envelope::<F::Config>::from_json(json) else {
                return Vec::new();
            };
            let at = FieldPath::root();
            let mut out = Vec::new();
            if let Some(config) = envelope.default
                && let Ok(policy) = filter.compile(config, &at)
            {
                out.push((None, format!("{policy:?}")));
            }
            for (name, config) in envelope.routes.0 {
                if let Ok(policy) = filter.compile(config, &at) {
                    out.push((Some(name), format!("{policy:?}")));
                }
            }
            out
        }
        let plugin = Plugin::default();
        match self {
            Self::TraceId => each(&mesh_traceid::TraceId::new(&plugin), json),
            Self::Canary => each(&mesh_canary::Canary::new(&plugin), json),
            Self::RateLimit => each(&mesh_ratelimit::RateLimit::new(&plugin), json),
            Self::Breaker => each(&mesh_breaker::Breaker::new(&plugin), json),
        }
    }
}

/// What a plugin config that compiled names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub has_default: bool,
    /// Route names with a policy of their own, in the order written.
    pub routes: Vec<String>,
    /// Some route or the default has a policy.
    pub compiled: bool,
}

/// A canary policy's tag: the header it writes and its value for the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryTag {
    /// `None` for the default policy.
    pub route: Option<String>,
    pub header: String,
    pub value: String,
    /// The hash salt in effect: the configured one, else the route name.
    pub salt: Option<String>,
    /// The policy without its salt, to compare twins.
    pub policy: String,
}

/// The tags of canary plugin JSON that `configure` accepted.
pub fn canary_tags(json: &[u8]) -> Vec<CanaryTag> {
    let Ok(envelope) = Envelope::<CanaryConfig>::from_json(json) else {
        return Vec::new();
    };
    let at = FieldPath::root();
    let tag = |route: Option<String>, config: CanaryConfig| {
        CanaryPolicy::compile(config, &at).ok().map(|policy| {
            let salt = policy.salt.clone().or_else(|| route.clone());
            let policy_text = format!(
                "{:?}",
                CanaryPolicy {
                    salt: None,
                    ..policy.clone()
                }
            );
            CanaryTag {
                route,
                header: policy.header.as_str().to_owned(),
                value: policy.value.clone(),
                salt,
                policy: policy_text,
            }
        })
    };
    let mut out = Vec::new();
    if let Some(config) = envelope.default {
        out.extend(tag(None, config));
    }
    for (name, config) in envelope.routes.0 {
        out.extend(tag(Some(name), config));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_reports_the_filters_own_error() {
        let err = Kind::TraceId
            .configure(br#"{"routes": {"checkout": {"emit": ["b4"]}}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[\"checkout\"].emit[0]: unknown variant `b4`, expected one of `w3c`, `b3`, `b3multi`, `request_id`"
        );
        let ok = Kind::RateLimit
            .configure(br#"{"routes": {"a": {"limits": [{"rate_per_s": 1, "burst": 1}]}}}"#)
            .unwrap();
        assert_eq!(ok.routes, ["a"]);
        assert!(!ok.has_default);
    }

    #[test]
    fn canary_tags_name_header_value_and_salt() {
        let tags = canary_tags(
            br#"{"default": {}, "routes": {"c": {"header": "X-Rel", "value": "v2", "salt": "s"}}}"#,
        );
        assert_eq!(tags.len(), 2);
        assert_eq!(
            (tags[0].header.as_str(), tags[0].value.as_str()),
            ("x-canary", "true")
        );
        assert_eq!(tags[0].salt, None);
        assert_eq!(
            (tags[1].header.as_str(), tags[1].value.as_str()),
            ("x-rel", "v2")
        );
        assert_eq!(tags[1].salt.as_deref(), Some("s"));
    }
}
