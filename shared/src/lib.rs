//! Pure policy logic shared by the mesh filters.
//!
//! Nothing here knows about proxy-wasm or Envoy: the filters reach the proxy through
//! the [`host`] traits, which `fake::FakeHost` implements in memory for tests (the module
//! exists in this crate's own tests and, for other crates' tests, with the `test-util`
//! feature, which they enable in `[dev-dependencies]` only).
//!
//! - [`config`]: the per-route envelope, field paths and typed config errors.
//! - [`host`]: what a filter may ask of the proxy, split by request phase.
//! - [`filter`]: the [`filter::Filter`] trait every filter implements.
//! - [`chain`]: one filter ([`chain::Stage`]) or filters chained in one module (the bundle).
//! - [`vm`]: what the adapter drives: one VM's stages, bound routes and batched counters, and
//!   each request's phases over the host calls alone.
//! - [`stats`]: metric naming shared by all filters.
//! - [`store`]: shared-data records updated with compare-and-swap.
//! - [`grpc`]: which requests are gRPC calls; gRPC status codes.
//! - [`decimal`]: integers in decimal without `core::fmt` or allocation.
//! - [`hash`]: the stable hash behind slots and cohorts.
//! - [`headers`]: a header map as the host serializes it, read in place.
//! - [`request`]: request facts several filters key on (client IP, the connection's peer,
//!   the address a trusted proxy saw).
//! - [`trace`]: W3C trace context, B3 and the trace-ID policy.
//! - [`canary`]: the canary release decision, cookie and query-string parsing.
//! - [`ratelimit`]: token buckets (governor's GCRA) in shared data, keys and slots.
//! - [`breaker`]: the circuit breaker's policy, failure classification and state machine.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod canary;
pub mod chain;
pub mod config;
pub mod decimal;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod filter;
pub mod grpc;
pub mod hash;
pub mod headers;
pub mod hex;
pub mod host;
pub mod ratelimit;
pub mod request;
pub mod stats;
pub mod store;
pub mod trace;
pub mod vm;
