//! The bundle: the four filters as stages of one proxy-wasm module (`dist/bundle.wasm`).
//!
//! Each proxy-wasm module costs a VM per worker and several VM entries per request; the
//! bundle pays that once for all four. It holds no filter logic: the stages are the filter
//! crates' own [`Filter`](mesh_policy::filter::Filter) implementations, chained by
//! [`mesh_policy::chain`] (order, holds for calls, local replies, reverse response phase) and
//! driven by the same adapter as the separate modules.
//!
//! Plugin JSON: `{"traceid": E, "canary": E, "ratelimit": E, "breaker": E}`, each `E` the
//! envelope the filter's own module takes; a missing key disables that stage.

use mesh_breaker::Breaker;
use mesh_canary::Canary;
use mesh_policy::chain::Stage;
use mesh_ratelimit::RateLimit;
use mesh_traceid::TraceId;

/// trace-ID → canary → rate limit → breaker. Every stage reads the route the request had
/// before the canary stage tagged it, as a separate module after the canary module does.
pub type Bundle = (
    Stage<TraceId>,
    (Stage<Canary>, (Stage<RateLimit>, Stage<Breaker>)),
);

#[cfg(target_arch = "wasm32")]
mesh_adapter::export_stages!(crate::Bundle);
