//! WasmPlugins on the same workloads: the order they run in (phase, then priority) must be
//! trace ID, canary, rate limit, breaker; one plugin per filter; the bundle alone.

use std::collections::BTreeMap;

use super::{Lint, PluginUse, Severity};

/// WasmPlugins on the same workloads run by phase, then priority (higher first).
pub(super) fn check(lint: &mut Lint<'_>, uses: &[PluginUse]) {
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
            lint.on_use(
                bundle,
                Severity::Warning,
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
                    lint.on_use(
                        a,
                        Severity::Warning,
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
                    lint.on_use(
                        b,
                        Severity::Warning,
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
