//! The circuit breaker: stop calling an upstream that keeps failing or turns slow, answer
//! with a fallback meanwhile, then let a few probes decide whether it is back.
//!
//! - [`config`]: the per-route config and its validation into a [`BreakerPolicy`].
//! - [`classify`]: what a finished call was (success, failure, not the upstream's doing;
//!   slow or not), from the facts Envoy gives at the end of a stream.
//! - [`record`]: the state shared by every Envoy worker, as a fixed-size binary record.
//! - [`machine`]: the state machine over that record, pure, plus [`machine::admit`] and
//!   [`machine::complete`], which run it against shared data with compare-and-swap, and
//!   [`machine::create`], which creates the record before either does.
//! - [`reply`]: the fallback reply, in HTTP or gRPC form.
//! - [`status`]: the failure statuses as written (`503`, `"5xx"`) and as the set
//!   [`classify`] tests.
//!
//! Nothing here reads a clock or shared data except through [`Host`](crate::host::Host).

pub mod classify;
pub mod config;
pub mod machine;
pub mod record;
pub mod reply;
pub mod status;

pub use config::{BreakerConfig, BreakerPolicy, KeyBy};

/// Response header on a rejected request: the breaker's state (`open`, `half_open`).
pub const CIRCUIT_STATE_HEADER: &str = "x-circuit-state";
pub const RETRY_AFTER_HEADER: &str = "retry-after";

/// The shared-data key of one breaker: the plugin's prefix, what the breaker is keyed by,
/// and the route or cluster name. Both name sets come from Envoy's config, so the keys are
/// bounded (Envoy never deletes a key).
pub fn shared_key(prefix: &str, by: KeyBy, name: &str) -> String {
    let kind = match by {
        KeyBy::Route => "route",
        KeyBy::Cluster => "cluster",
    };
    format!("{prefix}/breaker/{kind}/{name}")
}

impl BreakerPolicy {
    /// The shared-data key of the route's one breaker when the policy keys by route; `None`
    /// when it keys by cluster: a breaker per upstream cluster, found per request.
    pub fn route_key(&self, prefix: &str, route_name: &str) -> Option<String> {
        match self.key {
            KeyBy::Route => Some(shared_key(prefix, KeyBy::Route, route_name)),
            KeyBy::Cluster => None,
        }
    }

    /// How the breaker counts a finished call under this policy (its failure statuses and
    /// slow-call threshold): [`classify::classify`].
    pub fn classify(&self, finished: &classify::Finished) -> classify::Call {
        classify::classify(
            finished,
            &self.failure_status,
            self.grpc_failure_status,
            self.slow_calls.map(|slow| slow.threshold),
        )
    }
}

#[cfg(test)]
mod tests;
