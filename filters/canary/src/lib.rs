//! Canary header tagging: decides which release a request belongs to and writes it as the
//! request header a route (an Istio VirtualService header match) sends to subset v2.
//!
//! Glue only: [`CanaryPolicy::decide`] makes the decision; this crate applies its tag edit,
//! makes Envoy choose the route again, counts the decision and, on the response, sets the
//! sticky cookie and the debugging header.

use std::rc::Rc;

use mesh_policy::canary::{CanaryConfig, CanaryPolicy, Reason, Release, Response, TagEdit};
use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict};
use mesh_policy::host::{Host, RequestHost, ResponseHost};
use mesh_policy::stats::{self, Counters};

/// `mesh_canary_requests_total{route, release, reason[, rule]}`.
pub const REQUESTS_TOTAL: &str = "mesh_canary_requests_total";
/// `mesh_canary_untrusted_tags_total{route}`: requests that came with the tag header, which
/// the policy does not trust, so the filter decided over it (clients trying to pick their
/// release show here).
pub const UNTRUSTED_TAGS_TOTAL: &str = "mesh_canary_untrusted_tags_total";

#[derive(Debug)]
pub struct Canary;

/// What the filter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A request, once, by its release and why (each rule by its name).
    Request(Release, Reason),
    /// A request that came with the tag header, which the policy does not trust.
    UntrustedTag,
}

impl Counted {
    /// Everything counted on a route with `policy`.
    pub fn all(policy: &CanaryPolicy) -> impl Iterator<Item = Counted> + '_ {
        let requests = policy.counted();
        let requests = requests.map(|(release, reason)| Self::Request(release, reason));
        requests.chain([Self::UntrustedTag])
    }

    /// The metric and its labels besides `route`.
    pub fn metric(self, policy: &CanaryPolicy) -> (&'static str, Vec<(&'static str, &str)>) {
        match self {
            Self::Request(release, reason) => {
                let mut labels = vec![("release", release.as_str()), ("reason", reason.as_str())];
                labels.extend(policy.rule_name(reason).map(|rule| ("rule", rule)));
                (REQUESTS_TOTAL, labels)
            }
            Self::UntrustedTag => (UNTRUSTED_TAGS_TOTAL, Vec::new()),
        }
    }
}

/// A canary policy bound to one route: its salt and its counters.
#[derive(Debug)]
pub struct CanaryRoute {
    policy: Rc<CanaryPolicy>,
    name: String,
    /// The salt of the route's cohorts ([`CanaryPolicy::cohort_salt`]).
    salt: Vec<u8>,
    counters: Counters<Counted>,
}

impl Filter for Canary {
    const NAME: &'static str = "canary";
    type Config = CanaryConfig;
    type Policy = CanaryPolicy;
    type Route = CanaryRoute;
    type Request = Response;

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
        let counted = Counted::all(&policy);
        let counters = Counters::define(host, route_name, counted, |c| c.metric(&policy));
        CanaryRoute {
            salt: policy.cohort_salt(route_name).to_vec(),
            policy,
            name: stats::route_label(route_name).to_owned(),
            counters,
        }
    }

    fn on_request(&self, route: &CanaryRoute, host: &mut impl RequestHost) -> (Verdict, Response) {
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
        let counted = Counted::Request(decision.release, decision.reason);
        route.counters.count(host, counted);
        if decision.untrusted_tag {
            route.counters.count(host, Counted::UntrustedTag);
        }
        log::debug!("canary route={} {}", route.name, policy.describe(&decision));
        (Verdict::Continue, policy.response(&decision))
    }

    fn on_response(
        &self,
        route: &CanaryRoute,
        response: &mut Response,
        host: &mut impl ResponseHost,
    ) {
        if let Some((name, decision)) = route.policy.decision_header(response) {
            host.set_response_header(name, decision);
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
