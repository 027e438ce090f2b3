//! `mesh-lint`: what would go wrong in a cluster, found before deploying.
//!
//! Reads WasmPlugins, VirtualServices (and every other Istio kind, for the CRD check) and
//! Envoy configs, and reports:
//! - manifests that do not fit Istio's CRD schemas (field path and the schema's message);
//! - plugin JSON that the filter refuses: the filter's own `compile()`, run natively on the
//!   JSON Istio would hand it, so the message is the one Envoy would log;
//! - route names in plugin JSON that no route defines (a typo silently disables a policy);
//! - a canary tag that no route matches (tagged requests would go where stable ones go);
//! - a missing `sha256`, or one that is not the built module's (`--dist`);
//! - warnings: a tagged twin route configured unlike its route, a VirtualService route
//!   named `default` (Istio's own name for inbound routes and routes of services without a
//!   VirtualService), a WasmPlugin with per-route policies that also runs on inbound traffic,
//!   filters in an order other than trace ID → canary → rate limit → breaker.
//!
//! One module per check: [`crds`] (Istio's CRD schemas), [`virtual_service`] (route tables
//! and the `default` name), [`wasm_plugin`] (which module, the bundle's stages, placement),
//! [`digest`] (`sha256`), [`envoy_config`] (filters of Envoy configs), [`policies`] (the
//! filter's own `configure`, route names), [`canary`] (tags and tagged twins), [`order`]
//! (WasmPlugins on the same workloads). This module holds what they share and the driver.

mod canary;
mod crds;
mod digest;
mod envoy_config;
mod order;
mod policies;
mod virtual_service;
mod wasm_plugin;

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

use crate::docs::{self, Doc};
use crate::filters::Kind;
use crate::routes::Table;

pub use digest::expected_sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing found, named by file, object and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub file: String,
    /// `WasmPlugin mesh-canary`, `VirtualService shop`, `http filter mesh.canary`.
    pub subject: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.file, self.subject)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where the built modules are (`dist/<filter>.wasm`, `dist/oci/<filter>`): `sha256`
    /// values are checked against them.
    pub dist: Option<PathBuf>,
}

/// Lints every YAML/JSON file under `paths`.
pub fn lint_paths(paths: &[PathBuf], options: &Options) -> Result<Vec<Finding>, String> {
    let mut docs = Vec::new();
    for file in docs::files(paths)? {
        docs.extend(docs::load(&file)?);
    }
    Ok(lint(&docs, options))
}

/// A filter's plugin JSON and where it came from.
struct PluginUse {
    kind: Kind,
    file: String,
    subject: String,
    /// Field path of the plugin JSON: `spec.pluginConfig`, `...configuration.value`.
    at: String,
    json: String,
    /// The route tables its route names must come from.
    tables: Vec<Table>,
    /// Istio only: which workloads, and where in the chain.
    placement: Option<Placement>,
    /// A stage of the bundle (`dist/bundle.wasm`), not a filter's own module.
    in_bundle: bool,
}

#[derive(Clone)]
struct Placement {
    selector: String,
    rank: (u8, i64, String),
}

struct Lint<'a> {
    options: &'a Options,
    findings: Vec<Finding>,
}

impl PluginUse {
    /// `istio` for a WasmPlugin's plugin JSON, `envoy` for an Envoy config's.
    fn by_source<'a>(&self, istio: &'a str, envoy: &'a str) -> &'a str {
        if self.placement.is_some() {
            istio
        } else {
            envoy
        }
    }
}

impl Lint<'_> {
    fn push(
        &mut self,
        severity: Severity,
        file: &str,
        subject: &str,
        field: &str,
        message: String,
    ) {
        self.findings.push(Finding {
            severity,
            file: file.to_owned(),
            subject: subject.to_owned(),
            field: field.to_owned(),
            message,
        });
    }

    /// A finding about a plugin JSON, named by the file and object it came from.
    fn on_use(&mut self, u: &PluginUse, severity: Severity, field: &str, message: String) {
        self.push(severity, &u.file, &u.subject, field, message);
    }
}

/// Lints documents (already parsed). Findings are sorted: errors first, then by file.
pub fn lint(docs: &[Doc], options: &Options) -> Vec<Finding> {
    let mut lint = Lint {
        options,
        findings: Vec::new(),
    };
    let crds = crds::vendored(&mut lint);
    // Route tables of every VirtualService: the names Istio gives Envoy routes.
    let mut istio_tables = Vec::new();
    for doc in docs {
        let subject = subject_of(&doc.value);
        if let Some(crds) = crds {
            crds::check(&mut lint, crds, doc, &subject);
        }
        if doc.value["kind"] == "VirtualService" {
            istio_tables.push(virtual_service::table(&mut lint, doc, &subject));
        }
    }
    let mut uses = Vec::new();
    for doc in docs {
        if doc.value["kind"] == "WasmPlugin" {
            uses.extend(wasm_plugin::uses(&mut lint, doc, &istio_tables));
        } else if doc.value.get("static_resources").is_some() {
            uses.extend(envoy_config::uses(&mut lint, doc));
        }
    }
    for u in &uses {
        policies::check(&mut lint, u, &uses);
    }
    order::check(&mut lint, &uses);
    let mut findings = lint.findings;
    findings.sort_by(|a, b| (a.severity, &a.file).cmp(&(b.severity, &b.file)));
    findings
}

fn subject_of(value: &Value) -> String {
    format!(
        "{} {}",
        value["kind"].as_str().unwrap_or("object"),
        value["metadata"]["name"].as_str().unwrap_or("(unnamed)")
    )
}

/// The manifest field of a config error: `at` (the plugin JSON's place) and the error's path.
fn field_at(at: &str, e: &mesh_policy::config::ConfigError) -> String {
    if e.path().as_str().is_empty() {
        at.to_owned()
    } else if e.path().as_str().starts_with('[') {
        format!("{at}{}", e.path())
    } else {
        format!("{at}.{}", e.path())
    }
}
