//! Each filter's plugin JSON against the filter's own `configure` (the message is the line
//! Envoy would log), and its route names against the routes that can reach it (a near name
//! as a hint).

use crate::filters::Kind;

use super::{Lint, PluginUse, Severity, canary, field_at};

/// One plugin JSON: the filter's own `configure` accepts it, its route names exist, then the
/// canary checks.
pub(super) fn check(lint: &mut Lint<'_>, u: &PluginUse, all: &[PluginUse]) {
    let configured = match u.kind.configure(u.json.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            let field = field_at(&u.at, &e);
            lint.on_use(
                u,
                Severity::Error,
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
        let none = u.by_source(
            "no VirtualService among the inputs",
            "no route_config in this connection manager",
        );
        lint.on_use(
            u,
            Severity::Warning,
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
            let defined_by =
                u.by_source("no VirtualService", "no route of this connection manager");
            lint.on_use(
                u,
                Severity::Error,
                &format!("{}.routes[\"{route}\"]", u.at),
                format!("{defined_by} defines a route named \"{route}\": this policy never applies{hint}"),
            );
        }
    }
    if u.kind == Kind::Canary {
        canary::check_tags(lint, u, &configured);
    } else if u.kind > Kind::Canary {
        canary::check_twins(lint, u, all);
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
