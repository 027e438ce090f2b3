//! Canary header tagging: decides which release a request belongs to and writes it as the
//! request header a route (an Istio VirtualService header match) sends to subset v2.
//!
//! Glue only: [`CanaryPolicy::decide`] makes the decision; this crate applies its tag edit,
//! makes Envoy choose the route again, counts the decision and, on the response, sets the
//! sticky cookie and the debugging header.

use std::rc::Rc;

use mesh_policy::canary::{CanaryConfig, CanaryPolicy, Decision, Reason, Release, TagEdit};
use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict};
use mesh_policy::host::{Host, Metric, MetricKind, RequestHost, ResponseHost};
use mesh_policy::stats;

/// `mesh_canary_requests_total{route, release, reason[, rule]}`.
pub const REQUESTS_TOTAL: &str = "mesh_canary_requests_total";
/// `mesh_canary_untrusted_tags_total{route}`: requests that came with the tag header, which
/// the policy does not trust, so the filter decided over it (clients trying to pick their
/// release show here).
pub const UNTRUSTED_TAGS_TOTAL: &str = "mesh_canary_untrusted_tags_total";

#[derive(Debug)]
pub struct Canary;

/// A canary policy bound to one route: its salt and its counters.
#[derive(Debug)]
pub struct CanaryRoute {
    policy: Rc<CanaryPolicy>,
    name: String,
    /// The configured salt, else the route name: each route has its own cohorts.
    salt: Vec<u8>,
    /// One counter per release and reason the policy can produce.
    counters: Vec<(Release, Reason, Metric)>,
    untrusted_tags: Metric,
}

impl CanaryRoute {
    fn counter(&self, decision: &Decision) -> Metric {
        self.counters
            .iter()
            .find(|(release, reason, _)| *release == decision.release && *reason == decision.reason)
            .map_or(Metric(None), |(_, _, metric)| *metric)
    }
}

/// What the response phase adds.
#[derive(Debug, Default)]
pub struct CanaryResponse {
    /// The debugging header's value, when the policy has one.
    decision: Option<String>,
    /// A `set-cookie` value storing a new sticky key.
    set_cookie: Option<String>,
}

fn define_counter(
    host: &mut impl Host,
    route_name: &str,
    release: Release,
    reason: Reason,
    rule: Option<&str>,
) -> Metric {
    let mut labels = vec![
        ("route", stats::route_label(route_name)),
        ("release", release.as_str()),
        ("reason", reason.as_str()),
    ];
    if let Some(rule) = rule {
        labels.push(("rule", rule));
    }
    host.define_metric(
        MetricKind::Counter,
        &stats::metric_name(REQUESTS_TOTAL, &labels),
    )
}

impl Filter for Canary {
    const NAME: &'static str = "canary";
    type Config = CanaryConfig;
    type Policy = CanaryPolicy;
    type Route = CanaryRoute;
    type Request = CanaryResponse;

    fn new(_plugin: &Plugin) -> Self {
        Self
    }

    fn compile(&self, config: CanaryConfig, at: &FieldPath) -> Result<CanaryPolicy, ConfigError> {
        CanaryPolicy::compile(config, at)
    }

    fn bind(
        &self,
        policy: Rc<CanaryPolicy>,
        route_name: &str,
        host: &mut impl Host,
    ) -> CanaryRoute {
        let mut counters = Vec::with_capacity(2 * Reason::SPLITS.len() + policy.rules.len());
        for release in Release::ALL {
            for reason in Reason::SPLITS {
                let metric = define_counter(host, route_name, release, reason, None);
                counters.push((release, reason, metric));
            }
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let reason = Reason::Rule(i);
            let metric = define_counter(host, route_name, rule.release, reason, Some(&rule.name));
            counters.push((rule.release, reason, metric));
        }
        let salt = policy
            .salt
            .as_deref()
            .unwrap_or(route_name)
            .as_bytes()
            .to_vec();
        let untrusted_tags = host.define_metric(
            MetricKind::Counter,
            &stats::metric_name(
                UNTRUSTED_TAGS_TOTAL,
                &[("route", stats::route_label(route_name))],
            ),
        );
        CanaryRoute {
            policy,
            name: stats::route_label(route_name).to_owned(),
            salt,
            counters,
            untrusted_tags,
        }
    }

    fn on_request(
        &self,
        route: &CanaryRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, CanaryResponse) {
        let policy = &route.policy;
        let decision = policy.decide(&route.salt, host);
        match decision.tag {
            TagEdit::Set => {
                host.set_request_header(policy.header.as_str(), policy.value.as_bytes())
            }
            TagEdit::Remove => host.remove_request_header(policy.header.as_str()),
            TagEdit::Keep => {}
        }
        if decision.tag != TagEdit::Keep {
            // The route was chosen with the headers as the client sent them. Envoy 1.40
            // re-matches by itself after a header change from an ABI 0.2.1 module; newer ABIs
            // need this call, so make it rather than depend on the SDK's ABI.
            host.clear_route_cache();
        }
        host.increment_metric(route.counter(&decision), 1);
        if decision.untrusted_tag {
            host.increment_metric(route.untrusted_tags, 1);
        }
        log::debug!("canary route={} {}", route.name, policy.describe(&decision));
        let response = CanaryResponse {
            decision: policy
                .response_header
                .is_some()
                .then(|| policy.describe(&decision)),
            set_cookie: policy
                .sticky_cookie
                .as_ref()
                .zip(decision.new_sticky_key.as_deref())
                .map(|(cookie, key)| cookie.set_cookie(key)),
        };
        (Verdict::Continue, response)
    }

    fn on_response(
        &self,
        route: &CanaryRoute,
        response: &mut CanaryResponse,
        host: &mut impl ResponseHost,
    ) {
        if let (Some(name), Some(decision)) = (&route.policy.response_header, &response.decision) {
            host.set_response_header(name.as_str(), decision.as_bytes());
        }
        if let Some(cookie) = &response.set_cookie {
            host.add_response_header("set-cookie", cookie.as_bytes());
        }
    }
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(Canary);

#[cfg(test)]
mod tests;
