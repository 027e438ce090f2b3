//! Deploying the filters under Istio, checked natively before anything reaches a cluster.
//!
//! - [`lint`]: `mesh-lint`, plugin JSON from WasmPlugins and Envoy configs against the
//!   filters' real `compile()`, the VirtualServices' route names and canary matches, Istio's
//!   CRD schemas ([`crd`]) and the built modules' digests.
//! - [`oci`]: `mesh-oci`, Wasm OCI images (Istio's "compat" variant) in an OCI image layout,
//!   and pinning the manifests' `sha256` to them.
//! - [`schema`]: `mesh-schema`, a JSON Schema per filter's plugin config, generated from the
//!   config types; [`reference`]: the configuration reference pages rendered from them.
//! - [`tour`]: `mesh-tour`, the README's tour as examples run against the demo.
//!
//! Never built for wasm; nothing here is in a module.

// Documents are read as serde_json values: `value["key"]` reads `Null` for a missing key or
// a non-object (it panics only when assigning through it, which this crate never does).
#![allow(clippy::indexing_slicing)]

pub mod crd;
pub mod docs;
pub mod ecds;
pub mod filters;
pub mod lint;
pub mod oci;
pub mod pin;
pub mod plugin_json;
pub mod reference;
pub mod routes;
pub mod schema;
pub mod tour;

use std::path::{Path, PathBuf};

/// The repository's root (this crate's parent directory), where `istio/`, `envoy/` and
/// `dist/` are; for tests and tools run from the source tree.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
