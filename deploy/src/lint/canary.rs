//! What the canary tag does to routing: a tag no route matches, a tagged twin route with
//! another canary policy or salt, and (for the filters after canary) a route and its tagged
//! twin with different policies.

use std::collections::BTreeMap;

use crate::filters::{self, Kind};
use crate::routes::Table;

use super::{Lint, PluginUse, Severity};

/// The canary filter's tags: some route matches each tag, and a route's tagged twin is
/// configured alike.
pub(super) fn check_tags(lint: &mut Lint<'_>, u: &PluginUse, configured: &filters::Configured) {
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
            lint.on_use(
                u,
                Severity::Error,
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
                // Without a policy on the twin any client reaches the canary release by
                // sending the tag: an error; a twin decided otherwise is a warning.
                let problem = match twin_tag {
                    None if configured.has_default => None,
                    None => Some((Severity::Error, format!(
                        "has no canary policy: a request that arrives tagged is matched to it first and the client's tag decides, so any client can reach the canary release; fix: give routes[\"{}\"] the same canary policy and salt as routes[\"{route}\"] (or set a `default` policy)",
                        twin.name
                    ))),
                    Some(t) if t.policy != tag.policy || t.header != tag.header => {
                        Some((Severity::Warning, "has a different canary policy: a request that arrives tagged is decided by that one".to_owned()))
                    }
                    Some(t) if t.salt != tag.salt => Some((Severity::Warning, format!(
                        "has another salt ({}): users get a different cohort when they arrive tagged; give both the same `salt`",
                        t.salt.as_deref().unwrap_or("its route name")
                    ))),
                    Some(_) => None,
                };
                if let Some((severity, problem)) = problem {
                    lint.on_use(
                        u,
                        severity,
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
pub(super) fn check_twins(lint: &mut Lint<'_>, u: &PluginUse, all: &[PluginUse]) {
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
                    lint.on_use(
                        u,
                        Severity::Warning,
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
