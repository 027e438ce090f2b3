//! Real-Envoy test support: the echo upstream, Envoy config generation, the Envoy backends
//! (a child process, or a container: `MESH_HARNESS=process|docker`) and the [`Mesh`] harness
//! that ties them together behind one builder; [`raw`] for
//! requests no HTTP client sends (bytes that are not UTF-8, repeated and oversized headers);
//! [`grpc`] for a gRPC upstream and a blocking gRPC client.
//!
//! ```no_run
//! use mesh_integration::Mesh;
//! let mesh = Mesh::builder()
//!     .filter("traceid", r#"{"routes": {"checkout": {}}}"#)
//!     .start()
//!     .unwrap();
//! let reply = mesh.get("/checkout").send();
//! assert!(reply.upstream_header("traceparent").is_some());
//! ```
// Test support: a failed expectation should stop the test loudly, with Envoy's log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod backend;
pub mod chain;
pub mod container;
pub mod ecds;
pub mod echo;
pub mod envoy;
pub mod grpc;
mod mesh;
mod noop_list;
pub mod observability;
pub mod oracle;
pub mod prometheus;
pub mod raw;
pub mod rls;
mod served;
pub mod server_thread;

pub use mesh::{
    BUNDLE_STAGES, Call, Mesh, MeshBuilder, Modules, Reply, RouteSpec, demo_routes,
    demo_routes_with, wait_for_stats_flush,
};
