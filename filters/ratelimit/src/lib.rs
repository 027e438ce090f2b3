//! Token-bucket rate limiting, one bucket per key for all Envoy workers.
//!
//! Glue only: [`RouteLimits::check`](mesh_policy::ratelimit::RouteLimits::check) decides and
//! takes the tokens in shared data; this crate counts the decision, answers rejected
//! requests locally (the upstream is not contacted) and puts the `X-RateLimit-*` headers on
//! allowed responses.

use std::cell::Cell;
use std::rc::Rc;

use mesh_policy::config::{ConfigError, FieldPath};
use mesh_policy::filter::{Filter, Plugin, Verdict};
use mesh_policy::host::{Host, Metric, NANOS_PER_SEC, Nanos, RequestHost, ResponseHost};
use mesh_policy::ratelimit::{
    Budget, Decision, RateLimitConfig, RateLimitPolicy, RouteLimits, budget_headers,
};
use mesh_policy::stats;
use mesh_policy::store::UpdateError;

/// `mesh_ratelimit_requests_total{route, decision}`.
pub const REQUESTS_TOTAL: &str = "mesh_ratelimit_requests_total";
/// `mesh_ratelimit_store_errors_total{route, error}`: shared data could not be updated.
pub const STORE_ERRORS_TOTAL: &str = "mesh_ratelimit_store_errors_total";

/// How often a VM logs a summary of would-be rejections or store errors per route.
const LOG_EVERY: Nanos = 10 * NANOS_PER_SEC;

#[derive(Debug)]
pub struct RateLimit {
    key_prefix: String,
}

/// A policy bound to one route: its slot keys, counters and log throttles.
#[derive(Debug)]
pub struct RateLimitRoute {
    limits: RouteLimits,
    name: String,
    /// allowed, rejected, dry_run_rejected.
    decisions: [Metric; 3],
    /// contended, failed.
    store_errors: [Metric; 2],
    dry_run_log: Throttle,
    store_error_log: Throttle,
}

impl RateLimitRoute {
    fn decision_counter(&self, decision: Decision) -> Option<Metric> {
        let [allowed, rejected, dry_run_rejected] = self.decisions;
        match decision {
            Decision::Unlimited => None,
            Decision::Allowed => Some(allowed),
            Decision::Rejected => Some(rejected),
            Decision::DryRunRejected => Some(dry_run_rejected),
        }
    }

    fn store_error_counter(&self, error: UpdateError) -> Metric {
        let [contended, failed] = self.store_errors;
        match error {
            UpdateError::Contended => contended,
            UpdateError::Failed => failed,
        }
    }
}

const DECISIONS: [Decision; 3] = [
    Decision::Allowed,
    Decision::Rejected,
    Decision::DryRunRejected,
];

impl Filter for RateLimit {
    const NAME: &'static str = "ratelimit";
    type Config = RateLimitConfig;
    type Policy = RateLimitPolicy;
    type Route = RateLimitRoute;
    /// The `X-RateLimit-*` values for the response, when they are on.
    type Request = Option<Budget>;

    fn new(plugin: &Plugin) -> Self {
        Self {
            key_prefix: plugin.key_prefix(),
        }
    }

    fn compile(
        &self,
        config: RateLimitConfig,
        at: &FieldPath,
    ) -> Result<RateLimitPolicy, ConfigError> {
        RateLimitPolicy::compile(config, at)
    }

    fn bind(
        &self,
        policy: Rc<RateLimitPolicy>,
        route_name: &str,
        host: &mut impl Host,
    ) -> RateLimitRoute {
        let decisions = DECISIONS.map(|decision| {
            let label = decision.label().unwrap_or_default();
            stats::route_counter(host, REQUESTS_TOTAL, route_name, ("decision", label))
        });
        let store_errors = UpdateError::ALL.map(|error| {
            stats::route_counter(
                host,
                STORE_ERRORS_TOTAL,
                route_name,
                ("error", error.as_str()),
            )
        });
        RateLimitRoute {
            limits: policy.bind(&self.key_prefix, route_name, host),
            name: stats::route_label(route_name).to_owned(),
            decisions,
            store_errors,
            dry_run_log: Throttle::default(),
            store_error_log: Throttle::default(),
        }
    }

    fn on_request(
        &self,
        route: &RateLimitRoute,
        host: &mut impl RequestHost,
    ) -> (Verdict, Option<Budget>) {
        let check = route.limits.check(host);
        let policy = route.limits.policy();
        if let Some(counter) = route.decision_counter(check.decision) {
            host.increment_metric(counter, 1);
        }
        if let Some(error) = check.store_error {
            host.increment_metric(route.store_error_counter(error), 1);
            if let Some(count) = route.store_error_log.note(host.now()) {
                log::warn!(
                    "ratelimit route={} store_error={} requests={count} action={}",
                    route.name,
                    error.as_str(),
                    if policy.failure_mode_deny {
                        "rejected"
                    } else {
                        "let_through"
                    }
                );
            }
        }
        log::debug!(
            "ratelimit route={} decision={} retry_after={}",
            route.name,
            check.decision.label().unwrap_or("unlimited"),
            check.retry_after_s
        );
        match check.decision {
            Decision::Rejected => (Verdict::Reply(policy.reject_reply(&check)), None),
            Decision::DryRunRejected => {
                if let Some(count) = route.dry_run_log.note(host.now()) {
                    log::info!(
                        "ratelimit route={} dry_run=true would_reject={count}",
                        route.name
                    );
                }
                (Verdict::Continue, None)
            }
            Decision::Allowed if policy.rate_limit_headers && !policy.dry_run => {
                (Verdict::Continue, check.budget)
            }
            Decision::Allowed | Decision::Unlimited => (Verdict::Continue, None),
        }
    }

    fn on_response(
        &self,
        _route: &RateLimitRoute,
        budget: &mut Option<Budget>,
        host: &mut impl ResponseHost,
    ) {
        if let Some(budget) = budget {
            let mut digits = [0u8; 20];
            for (name, value) in budget_headers(budget) {
                host.set_response_header(name, decimal(value, &mut digits));
            }
        }
    }
}

/// Logs at most once per [`LOG_EVERY`] per route and VM, with the count since the last line
/// (the first event is logged at once): never a line per request.
#[derive(Debug, Default)]
struct Throttle {
    next_at: Cell<Nanos>,
    pending: Cell<u64>,
}

impl Throttle {
    /// Counts one event; returns how many to report when a line is due.
    fn note(&self, now: Nanos) -> Option<u64> {
        let pending = self.pending.get().saturating_add(1);
        if now < self.next_at.get() {
            self.pending.set(pending);
            return None;
        }
        self.next_at.set(now.saturating_add(LOG_EVERY));
        self.pending.set(0);
        Some(pending)
    }
}

/// `n` in decimal, written into `buf` (no allocation per response).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    buf.get(start..).unwrap_or_default()
}

// The module entry point; without the `module` feature (the bundle) the filter is a library.
#[cfg(all(target_arch = "wasm32", feature = "module"))]
mesh_adapter::export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_policy::config::Envelope;
    use mesh_policy::fake::FakeHost;

    fn bound(json: &str, route: &str, host: &mut FakeHost) -> (RateLimit, RateLimitRoute) {
        let filter = RateLimit::new(&Plugin {
            name: "mesh.ratelimit".to_owned(),
            root_id: "mesh.ratelimit".to_owned(),
        });
        let routes = Envelope::<RateLimitConfig>::from_json(json.as_bytes())
            .unwrap()
            .compile(&FieldPath::root(), |c, at| filter.compile(c, at))
            .unwrap();
        let bound = filter.bind(Rc::clone(routes.policy_for(route).unwrap()), route, host);
        (filter, bound)
    }

    const LIMITED: &str = r#"{"routes": {"limited": {"limits": [{"rate_per_s": 5, "burst": 2, "key": {"header": "x-api-key"}}]}}}"#;

    #[test]
    fn allowed_requests_get_the_headers_rejected_ones_a_429_and_both_are_counted() {
        let mut host = FakeHost::new().with_request_header("x-api-key", "k");
        let (filter, route) = bound(LIMITED, "limited", &mut host);
        let (verdict, mut budget) = filter.on_request(&route, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        filter.on_response(&route, &mut budget, &mut host);
        assert_eq!(host.response_values("x-ratelimit-limit"), ["2"]);
        assert_eq!(host.response_values("x-ratelimit-remaining"), ["1"]);
        assert_eq!(host.response_values("x-ratelimit-reset"), ["1"]);
        filter.on_request(&route, &mut host);
        let (verdict, budget) = filter.on_request(&route, &mut host);
        let Verdict::Reply(reply) = verdict else {
            panic!("not rejected: {verdict:?}")
        };
        assert_eq!(budget, None);
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("retry-after".into(), "1".into())));
        assert!(
            reply
                .headers
                .contains(&("x-ratelimit-remaining".into(), "0".into()))
        );
        let metric = |decision: &str| {
            host.metric(&format!(
                "mesh_ratelimit_requests_total;route=limited;decision={decision}"
            ))
        };
        assert_eq!(metric("allowed"), Some(2));
        assert_eq!(metric("rejected"), Some(1));
        assert_eq!(metric("dry_run_rejected"), Some(0));
    }

    #[test]
    fn dry_run_lets_everything_through_without_headers_and_counts() {
        let mut host = FakeHost::new();
        let (filter, route) = bound(
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}], "dry_run": true}}"#,
            "",
            &mut host,
        );
        for _ in 0..5 {
            let (verdict, budget) = filter.on_request(&route, &mut host);
            assert_eq!(verdict, Verdict::Continue);
            assert_eq!(budget, None);
        }
        assert_eq!(
            host.metric("mesh_ratelimit_requests_total;route=unnamed;decision=dry_run_rejected"),
            Some(4)
        );
        assert_eq!(
            host.metric("mesh_ratelimit_requests_total;route=unnamed;decision=allowed"),
            Some(1)
        );
    }

    #[test]
    fn store_errors_are_counted_and_fail_open() {
        let mut host = FakeHost::new();
        let (filter, route) = bound(
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}]}}"#,
            "r",
            &mut host,
        );
        host.cas_conflicts = usize::MAX;
        for _ in 0..3 {
            let (verdict, budget) = filter.on_request(&route, &mut host);
            assert_eq!(verdict, Verdict::Continue);
            assert_eq!(budget, None);
        }
        assert_eq!(
            host.metric("mesh_ratelimit_store_errors_total;route=r;error=contended"),
            Some(3)
        );
        assert_eq!(
            host.metric("mesh_ratelimit_requests_total;route=r;decision=allowed"),
            Some(3)
        );
    }

    #[test]
    fn headers_can_be_turned_off() {
        let mut host = FakeHost::new();
        let (filter, route) = bound(
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 5}], "rate_limit_headers": false}}"#,
            "r",
            &mut host,
        );
        let (_, mut budget) = filter.on_request(&route, &mut host);
        assert_eq!(budget, None);
        filter.on_response(&route, &mut budget, &mut host);
        assert!(host.response_values("x-ratelimit-limit").is_empty());
    }

    #[test]
    fn throttle_reports_the_first_event_then_a_count_per_interval() {
        let throttle = Throttle::default();
        let t0 = 1_000 * NANOS_PER_SEC;
        assert_eq!(throttle.note(t0), Some(1));
        assert_eq!(throttle.note(t0 + 1), None);
        assert_eq!(throttle.note(t0 + 2), None);
        assert_eq!(throttle.note(t0 + LOG_EVERY), Some(3));
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1204, &mut buf), b"1204");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
