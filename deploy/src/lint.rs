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

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::crd::Crds;
use crate::docs::{self, Doc};
use crate::filters::{self, Kind};
use crate::oci;
use crate::plugin_json;
use crate::routes::{self, Table};

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
}

/// Lints documents (already parsed). Findings are sorted: errors first, then by file.
pub fn lint(docs: &[Doc], options: &Options) -> Vec<Finding> {
    let mut lint = Lint {
        options,
        findings: Vec::new(),
    };
    static CRDS: std::sync::OnceLock<Result<Crds, String>> = std::sync::OnceLock::new();
    let crds = match CRDS.get_or_init(Crds::vendored) {
        Ok(crds) => Some(crds),
        Err(e) => {
            lint.push(Severity::Error, "istio/crds", "CRDs", "", e.clone());
            None
        }
    };
    // Route tables of every VirtualService: the names Istio gives Envoy routes.
    let mut istio_tables = Vec::new();
    for doc in docs {
        let value = &doc.value;
        let subject = subject_of(value);
        if let Some(crds) = crds
            && let Some(violations) = crds.validate(value)
        {
            for v in violations {
                lint.push(Severity::Error, &doc.file, &subject, &v.path, v.message);
            }
        }
        if value["kind"] == "VirtualService" {
            let table = routes::virtual_service(&doc.file, value);
            for route in table.routes.iter().filter(|r| r.name == "default") {
                lint.push(
                    Severity::Warning,
                    &doc.file,
                    &subject,
                    &route.at,
                    "an http route named \"default\" shares its Envoy route name with the routes \
                     Istio makes itself (every inbound route, and outbound routes of services \
                     without a VirtualService): a plugin policy for \"default\" applies to them too"
                        .to_owned(),
                );
            }
            istio_tables.push(table);
        }
    }
    let mut uses = Vec::new();
    for doc in docs {
        if doc.value["kind"] == "WasmPlugin" {
            uses.extend(wasm_plugin(&mut lint, doc, &istio_tables));
        } else if doc.value.get("static_resources").is_some() {
            envoy_config(&mut lint, doc, &mut uses);
        }
    }
    for u in &uses {
        check_plugin(&mut lint, u, &uses);
    }
    check_istio_order(&mut lint, &uses);
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

/// Which module of ours a WasmPlugin runs: the module named by its URL (`.../canary:0.1.0`,
/// `.../canary.wasm`), else its name without a `mesh-` prefix.
fn plugin_module(spec: &Value, name: &str) -> Option<&'static str> {
    let url = spec["url"].as_str().unwrap_or_default();
    let last = url.rsplit('/').next().unwrap_or_default();
    let stem = last.split(['@', ':']).next().unwrap_or_default();
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    let name = name.strip_prefix("mesh-").unwrap_or(name);
    filters::module_names()
        .find(|m| *m == stem)
        .or_else(|| filters::module_names().find(|m| *m == name))
}

/// The filters a WasmPlugin runs, each with its plugin JSON: one, or the bundle's stages (each
/// checked like the filter's own plugin, at `spec.pluginConfig.<stage>`).
fn wasm_plugin(lint: &mut Lint<'_>, doc: &Doc, tables: &[Table]) -> Vec<PluginUse> {
    let value = &doc.value;
    let spec = &value["spec"];
    let subject = subject_of(value);
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    let Some(module) = plugin_module(spec, name) else {
        lint.push(
            Severity::Warning,
            &doc.file,
            &subject,
            "spec.url",
            "not one of this repository's modules (traceid, canary, ratelimit, breaker, bundle): not checked"
                .to_owned(),
        );
        return Vec::new();
    };
    check_sha256(lint, doc, &subject, module);
    let config = &spec["pluginConfig"];
    let json_of = |config: &Value| {
        if config.is_null() {
            String::new()
        } else {
            plugin_json::from_struct(config)
        }
    };
    // (filter, its plugin JSON, where that sits)
    let mut stages: Vec<(Kind, &Value, String)> = Vec::new();
    if let Some(kind) = Kind::from_name(module) {
        stages.push((kind, config, "spec.pluginConfig".to_owned()));
    } else {
        if let Err(e) = filters::configure_bundle(json_of(config).as_bytes()) {
            lint.push(
                Severity::Error,
                &doc.file,
                &subject,
                &field_at("spec.pluginConfig", &e),
                format!(
                    "the bundle refuses this config (Envoy would log \"bundle config=rejected ... error={e}\")"
                ),
            );
            return Vec::new();
        }
        for kind in Kind::ALL {
            if let Some(stage) = config.get(kind.name()) {
                stages.push((kind, stage, format!("spec.pluginConfig.{}", kind.name())));
            }
        }
    }
    let has_routes = stages
        .iter()
        .any(|(_, config, _)| config["routes"].as_object().is_some_and(|r| !r.is_empty()));
    let client_only = spec["match"]
        .as_array()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|s| s["mode"] == "CLIENT"));
    let on_gateway = spec["targetRefs"].is_array() || spec["targetRef"].is_object();
    if has_routes && !client_only && !on_gateway {
        lint.push(
            Severity::Warning,
            &doc.file,
            &subject,
            "spec.match",
            "per-route policies, but the plugin also runs on the sidecar's inbound listener, \
             where Envoy's route is always named \"default\": VirtualService route names \
             exist where the VirtualService is applied (the caller's sidecar, a gateway); \
             add `match: [{mode: CLIENT}]`"
                .to_owned(),
        );
    }
    let phase = match spec["phase"].as_str() {
        Some("AUTHN") => 0,
        Some("AUTHZ") => 1,
        Some("STATS") => 2,
        _ => 3,
    };
    let selector = if on_gateway {
        format!("targetRefs {}", spec["targetRefs"])
    } else {
        format!("selector {}", spec["selector"])
    };
    let placement = Placement {
        selector: format!(
            "{} in {}",
            selector,
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("its namespace")
        ),
        rank: (
            phase,
            -spec["priority"].as_i64().unwrap_or(0),
            format!(
                "{}/{}",
                value["metadata"]["namespace"].as_str().unwrap_or(""),
                name
            ),
        ),
    };
    stages
        .into_iter()
        .map(|(kind, config, at)| PluginUse {
            kind,
            file: doc.file.clone(),
            subject: subject.clone(),
            at,
            json: json_of(config),
            tables: tables.to_vec(),
            placement: Some(placement.clone()),
            in_bundle: Kind::from_name(module).is_none(),
        })
        .collect()
}

/// The digest a WasmPlugin's `sha256` must have for the module this repository built.
pub fn expected_sha256(url: &str, module: &str, dist: &Path) -> Result<String, String> {
    if url.starts_with("oci://") || !url.contains("://") {
        let reference = url.trim_start_matches("oci://");
        // `name:tag`, `name@sha256:...` or `name:tag@sha256:...`: the layout holds the image
        // by tag (a registry's port sits before the last `/`).
        let name = reference
            .split_once('@')
            .map_or(reference, |(name, _)| name);
        let tag = name
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, tag)| tag);
        let layout = dist.join("oci").join(module);
        let pulled =
            oci::read_layout(&layout, tag).map_err(|e| format!("{e} (run scripts/package.sh)"))?;
        Ok(pulled.digest)
    } else {
        let file = dist.join(format!("{module}.wasm"));
        let bytes = fs::read(&file)
            .map_err(|e| format!("{}: {e} (run scripts/build.sh)", file.display()))?;
        Ok(oci::sha256_hex(&bytes))
    }
}

fn check_sha256(lint: &mut Lint<'_>, doc: &Doc, subject: &str, module: &str) {
    let spec = &doc.value["spec"];
    let url = spec["url"].as_str().unwrap_or_default();
    let sha = spec["sha256"].as_str().unwrap_or_default();
    let is_file = url.starts_with("file://");
    if let Some((_, pinned)) = url.split_once("@sha256:")
        && !sha.is_empty()
        && pinned != sha
    {
        lint.push(
            Severity::Error,
            &doc.file,
            subject,
            "spec.sha256",
            format!(
                "{sha} differs from the digest in the url ({pinned}): Istio refuses the plugin"
            ),
        );
    }
    if sha.is_empty() {
        let (severity, why) = if is_file {
            (
                Severity::Warning,
                "Istio does not check file:// modules, but a pinned digest says which build was linted",
            )
        } else {
            (
                Severity::Error,
                "Istio would run whatever the url serves now, not the module that was tested",
            )
        };
        lint.push(
            severity,
            &doc.file,
            subject,
            "spec.sha256",
            format!("missing: {why}"),
        );
        return;
    }
    let Some(dist) = &lint.options.dist else {
        return;
    };
    match expected_sha256(url, module, dist) {
        Ok(expected) if expected == sha => {}
        Ok(expected) => {
            let what = if url.starts_with("file://") || url.starts_with("http") {
                format!(
                    "the sha256 of {}",
                    dist.join(format!("{module}.wasm")).display()
                )
            } else {
                format!(
                    "the manifest digest of the image in {} (for oci:// urls Istio checks the \
                     image manifest's digest, not the module's)",
                    dist.join("oci").join(module).display()
                )
            };
            lint.push(
                Severity::Error,
                &doc.file,
                subject,
                "spec.sha256",
                format!("{sha} is not {what}: {expected}; run scripts/package.sh --pin"),
            );
        }
        Err(e) => lint.push(Severity::Error, &doc.file, subject, "spec.sha256", e),
    }
}

/// The mesh filters of an Envoy config: every wasm http filter whose module is one of ours,
/// checked against the routes of its own connection manager.
fn envoy_config(lint: &mut Lint<'_>, doc: &Doc, uses: &mut Vec<PluginUse>) {
    let mut managers = Vec::new();
    find_managers(&doc.value, "", &mut managers);
    for (at, hcm) in managers {
        let tables = routes::envoy_route_config(
            &doc.file,
            &format!("{at}.route_config"),
            &hcm["route_config"],
        );
        let mut seen = Vec::new();
        for (i, filter) in hcm["http_filters"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let config = &filter["typed_config"]["config"];
            let code = &config["vm_config"]["code"]["local"]["filename"];
            let Some(kind) = code
                .as_str()
                .and_then(|f| Path::new(f).file_stem()?.to_str())
                .and_then(Kind::from_name)
            else {
                continue;
            };
            let subject = format!("http filter {}", filter["name"].as_str().unwrap_or("?"));
            let value = &config["configuration"]["value"];
            let json = match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if let Some(&(before, _)) = seen.iter().find(|&&(k, _): &&(Kind, usize)| k > kind) {
                lint.push(
                    Severity::Warning,
                    &doc.file,
                    &subject,
                    &format!("{at}.http_filters[{i}]"),
                    format!(
                        "{} runs after {}: the order is trace ID, canary, rate limit, breaker",
                        kind.name(),
                        Kind::name(before)
                    ),
                );
            }
            seen.push((kind, i));
            uses.push(PluginUse {
                kind,
                file: doc.file.clone(),
                subject,
                at: format!("{at}.http_filters[{i}].typed_config.config.configuration.value"),
                json,
                tables: tables.clone(),
                placement: None,
                in_bundle: false,
            });
        }
    }
}

fn find_managers(value: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("http_filters") && map.contains_key("route_config") {
                out.push((at.to_owned(), value.clone()));
                return;
            }
            for (k, v) in map {
                let next = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                find_managers(v, &next, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_managers(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_plugin(lint: &mut Lint<'_>, u: &PluginUse, all: &[PluginUse]) {
    let configured = match u.kind.configure(u.json.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            let field = field_at(&u.at, &e);
            lint.push(
                Severity::Error,
                &u.file,
                &u.subject,
                &field,
                format!(
                    "the {name} filter refuses this config (Envoy would log \"{name} config=rejected ... error={e}\")",
                    name = u.kind.name()
                ),
            );
            return;
        }
    };
    if u.tables.is_empty() && !configured.routes.is_empty() {
        let none = if u.placement.is_some() {
            "no VirtualService among the inputs"
        } else {
            "no route_config in this connection manager"
        };
        lint.push(
            Severity::Warning,
            &u.file,
            &u.subject,
            &format!("{}.routes", u.at),
            format!("route names not checked: {none}"),
        );
        return;
    }
    let known: Vec<&str> = u
        .tables
        .iter()
        .flat_map(|t| t.routes.iter().map(|r| r.name.as_str()))
        .collect();
    for route in &configured.routes {
        if !known.contains(&route.as_str()) {
            let hint = strsim_nearest(route, &known)
                .map(|n| format!(" (did you mean \"{n}\"?)"))
                .unwrap_or_default();
            let defined_by = if u.placement.is_some() {
                "no VirtualService"
            } else {
                "no route of this connection manager"
            };
            lint.push(
                Severity::Error,
                &u.file,
                &u.subject,
                &format!("{}.routes[\"{route}\"]", u.at),
                format!("{defined_by} defines a route named \"{route}\": this policy never applies{hint}"),
            );
        }
    }
    if u.kind == Kind::Canary {
        check_canary(lint, u, &configured);
    } else if u.kind > Kind::Canary {
        check_after_canary(lint, u, all);
    }
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

fn strsim_nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn check_canary(lint: &mut Lint<'_>, u: &PluginUse, configured: &filters::Configured) {
    let tags = filters::canary_tags(u.json.as_bytes());
    for tag in &tags {
        let field = match &tag.route {
            Some(route) => format!("{}.routes[\"{route}\"]", u.at),
            None => format!("{}.default", u.at),
        };
        // The tables a tagged request is matched in again: the route's own, or any.
        let tables: Vec<&Table> = match &tag.route {
            Some(route) => u.tables.iter().filter(|t| t.has(route)).collect(),
            None => u.tables.iter().collect(),
        };
        if tables.is_empty() {
            continue;
        }
        if !tables
            .iter()
            .any(|t| t.matches_tag(&tag.header, &tag.value))
        {
            let scope = match &tag.route {
                Some(route) => format!("the routes beside \"{route}\""),
                None => "any route".to_owned(),
            };
            lint.push(
                Severity::Error,
                &u.file,
                &u.subject,
                &field,
                format!(
                    "tags {}: \"{}\", but no route matches that value ({} in {}): canary requests \
                     go where stable ones go",
                    tag.header,
                    tag.value,
                    scope,
                    tables
                        .iter()
                        .map(|t| t.subject.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        }
        let Some(route) = &tag.route else { continue };
        for table in &tables {
            for twin in table.twins(route, &tag.header, &tag.value) {
                let twin_tag = tags.iter().find(|t| t.route.as_deref() == Some(&twin.name));
                let problem = match twin_tag {
                    None if configured.has_default => None,
                    None => Some("has no canary policy: a request that arrives tagged is matched to it first and the client's tag decides".to_owned()),
                    Some(t) if t.policy != tag.policy || t.header != tag.header => {
                        Some("has a different canary policy: a request that arrives tagged is decided by that one".to_owned())
                    }
                    Some(t) if t.salt != tag.salt => Some(format!(
                        "has another salt ({}): users get a different cohort when they arrive tagged; give both the same `salt`",
                        t.salt.as_deref().unwrap_or("its route name")
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    lint.push(
                        Severity::Warning,
                        &u.file,
                        &u.subject,
                        &field,
                        format!(
                            "its tagged twin \"{}\" ({}, {}) {problem}",
                            twin.name, table.subject, twin.at
                        ),
                    );
                }
            }
        }
    }
}

/// Filters after canary read the route chosen before the tag changed: a route and its tagged
/// twin should have the same policy in them.
fn check_after_canary(lint: &mut Lint<'_>, u: &PluginUse, all: &[PluginUse]) {
    let Some(canary) = all.iter().find(|c| {
        c.kind == Kind::Canary
            && match (&c.placement, &u.placement) {
                (Some(a), Some(b)) => a.selector == b.selector,
                (None, None) => c.file == u.file,
                _ => false,
            }
    }) else {
        return;
    };
    let tags = filters::canary_tags(canary.json.as_bytes());
    let policies: BTreeMap<Option<String>, String> =
        u.kind.policies(u.json.as_bytes()).into_iter().collect();
    let policy_of = |route: &str| {
        policies
            .get(&Some(route.to_owned()))
            .or(policies.get(&None))
            .cloned()
    };
    let mut reported = Vec::new();
    for tag in tags.iter().filter(|t| t.route.is_some()) {
        let Some(route) = &tag.route else { continue };
        for table in u.tables.iter().filter(|t| t.has(route)) {
            for twin in table.twins(route, &tag.header, &tag.value) {
                if policy_of(route) != policy_of(&twin.name) && !reported.contains(&twin.name) {
                    reported.push(twin.name.clone());
                    lint.push(
                        Severity::Warning,
                        &u.file,
                        &u.subject,
                        &format!("{}.routes", u.at),
                        format!(
                            "\"{route}\" and its tagged twin \"{}\" have different {} policies: this filter runs after canary and reads the route chosen before the tag changed (\"{route}\" for requests the canary filter tags, \"{}\" for requests that arrive tagged); configure both alike",
                            twin.name,
                            u.kind.name(),
                            twin.name
                        ),
                    );
                }
            }
        }
    }
}

/// WasmPlugins on the same workloads run by phase, then priority (higher first).
fn check_istio_order(lint: &mut Lint<'_>, uses: &[PluginUse]) {
    let mut groups: BTreeMap<&str, Vec<&PluginUse>> = BTreeMap::new();
    for u in uses {
        if let Some(p) = &u.placement {
            groups.entry(p.selector.as_str()).or_default().push(u);
        }
    }
    for (_, mut group) in groups {
        // The bundle runs every filter it configures: another plugin of ours beside it runs a
        // filter twice, or out of order.
        if let Some(bundle) = group.iter().find(|u| u.in_bundle)
            && let Some(other) = group.iter().find(|u| u.subject != bundle.subject)
        {
            lint.push(
                Severity::Warning,
                &bundle.file,
                &bundle.subject,
                "spec.selector",
                format!(
                    "the bundle and {} ({}) select the same workloads: a workload runs the \
                     bundle or the separate plugins, not both (a filter would run twice, or \
                     out of order)",
                    other.subject, other.file
                ),
            );
            continue;
        }
        group.sort_by(|a, b| {
            let rank = |u: &PluginUse| u.placement.as_ref().map(|p| p.rank.clone());
            rank(a).cmp(&rank(b))
        });
        // Sorted by run order: `a` runs before `b`.
        for pair in group.windows(2) {
            if let [a, b] = pair {
                if a.kind > b.kind {
                    lint.push(
                        Severity::Warning,
                        &a.file,
                        &a.subject,
                        "spec.phase",
                        format!(
                            "runs before {} ({}) on the same workloads, but {} must run after \
                             {}: by phase, then priority (higher first), the order must be \
                             trace ID, canary, rate limit, breaker",
                            b.subject,
                            b.file,
                            a.kind.name(),
                            b.kind.name()
                        ),
                    );
                } else if a.kind == b.kind {
                    lint.push(
                        Severity::Warning,
                        &b.file,
                        &b.subject,
                        "spec.selector",
                        format!(
                            "a second {} plugin on the same workloads as {} ({})",
                            b.kind.name(),
                            a.subject,
                            a.file
                        ),
                    );
                }
            }
        }
    }
}
