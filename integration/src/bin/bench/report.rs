//! From samples to the results file: each row's spread over repetitions, today's modules
//! against the baseline's in the same run, the targets.

use std::fmt::Write as _;

use crate::measure::Sample;
use crate::median;
use crate::variants::Variant;

/// A row whose spread (max - min) is more than this share of its median is unstable: shown,
/// never used to pass or fail a target.
pub const UNSTABLE_SPREAD: f64 = 0.2;

/// The budgets `scripts/build.sh` enforces.
const MODULE_BUDGET: u64 = 250 * 1024;
const BUNDLE_BUDGET: u64 = 350 * 1024;

/// Minimum, median and maximum over repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            min,
            median: median(values.to_vec()),
            max,
        }
    }

    pub fn stable(&self) -> bool {
        self.max - self.min <= UNSTABLE_SPREAD * self.median.abs()
    }

    /// `median [min, max]`, with `*` when unstable.
    fn show(&self, decimals: usize, sign: bool) -> String {
        let f = |v: f64| {
            if sign {
                format!("{v:+.decimals$}")
            } else {
                format!("{v:.decimals$}")
            }
        };
        let mark = if self.stable() { "" } else { " ⚠" };
        format!(
            "{} [{}, {}]{mark}",
            f(self.median),
            f(self.min),
            f(self.max)
        )
    }
}

/// Everything measured of one variant with one module set and copy count, over repetitions.
pub struct Row<'a> {
    pub variant: &'a Variant,
    pub set: String,
    pub copies: usize,
    pub samples: Vec<Sample>,
    pub module_bytes: u64,
}

impl Row<'_> {
    pub fn spread(&self, f: fn(&Sample) -> f64) -> Spread {
        Spread::of(&self.samples.iter().map(f).collect::<Vec<_>>())
    }

    pub fn label(&self) -> String {
        let mut label = self.variant.name.to_owned();
        if self.set != "now" {
            let _ = write!(label, " @{}", self.set);
        }
        if self.copies > 1 {
            let _ = write!(label, " ×{}", self.copies);
        }
        label
    }
}

/// The rows of `name` now and at the baseline (one copy each).
fn pair<'r, 'a>(
    rows: &'r [Row<'a>],
    name: &str,
    baseline: &str,
) -> Option<(&'r Row<'a>, &'r Row<'a>)> {
    let find = |set: &str| {
        rows.iter()
            .find(|r| r.variant.name == name && r.set == set && r.copies == 1)
    };
    Some((find("now")?, find(baseline)?))
}

/// Today's added CPU over the baseline's, per repetition (both measured in it, back to back).
pub fn ratio(now: &Row<'_>, base: &Row<'_>) -> Spread {
    let ratios: Vec<f64> = now
        .samples
        .iter()
        .zip(&base.samples)
        .map(|(n, b)| n.added_us / b.added_us)
        .collect();
    Spread::of(&ratios)
}

pub fn main_table(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "| variant | what | req/s | vs bare | Envoy CPU µs/req | added µs/req: median [min, max] | p50 ms | p99 ms | RSS MB | in use MB | heap MB | module KB |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in (rows.iter()).filter(|r| r.copies == 1 && r.variant.against.is_none()) {
        let module = if r.module_bytes == 0 {
            "–".to_owned()
        } else {
            format!("{:.1}", r.module_bytes as f64 / 1024.0)
        };
        let m = |f: fn(&Sample) -> f64| r.spread(f).median;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.1} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {module} |",
            r.label(),
            r.variant.what,
            m(|s| s.rps),
            m(|s| s.rps_vs_bare),
            m(|s| s.cpu_us_per_request),
            r.spread(|s| s.added_us).show(1, true),
            m(|s| s.p50_us) / 1000.0,
            m(|s| s.p99_us) / 1000.0,
            m(|s| s.rss_kb as f64 / 1024.0),
            m(|s| s.rss_kb as f64 / 1024.0 - s.heap.kept_free as f64 / MB),
            m(|s| s.heap.allocated as f64 / MB),
        );
    }
    out
}

const MB: f64 = 1024.0 * 1024.0;

/// Today's modules against the baseline's: added CPU and its ratio, per variant.
pub fn baseline_table(rows: &[Row<'_>], baseline: &str) -> String {
    let mut out = format!(
        "| variant | added µs/req now | added µs/req at {baseline} | now / {baseline}: median [min, max] |\n\
         | --- | ---: | ---: | ---: |\n"
    );
    for now in rows.iter().filter(|r| r.set == "now" && r.copies == 1) {
        if let Some((now, base)) = pair(rows, now.variant.name, baseline) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                now.variant.name,
                now.spread(|s| s.added_us).show(1, true),
                base.spread(|s| s.added_us).show(1, true),
                ratio(now, base).show(2, false)
            );
        }
    }
    out
}

/// Added CPU per copy with each module `copies` times in the chain.
pub fn copies_table(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "| variant | copies | added µs/req per copy: median [min, max] | one copy, same run |\n\
         | --- | ---: | ---: | ---: |\n",
    );
    for r in rows.iter().filter(|r| r.copies > 1) {
        let n = r.copies as f64;
        let per_copy = Spread::of(&r.samples.iter().map(|s| s.added_us / n).collect::<Vec<_>>());
        let single = rows
            .iter()
            .find(|o| o.variant.name == r.variant.name && o.set == r.set && o.copies == 1)
            .map_or("–".to_owned(), |o| o.spread(|s| s.added_us).show(1, true));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {single} |",
            r.label(),
            r.copies,
            per_copy.show(1, true)
        );
    }
    out
}

/// Variants measured head to head: the variant's listener against one with the `against`
/// module, in one Envoy, window next to window: the difference needs no bare listener, so
/// the noise of two differences to bare does not add up.
pub fn head_to_head_table(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "| variant | against | µs/req more than against: median [min, max] | no dearer in | req/s vs against |\n\
         | --- | --- | ---: | ---: | ---: |\n",
    );
    for r in rows.iter() {
        let Some((against, _)) = r.variant.against else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {against} | {} | {} of {} | {:.2} |",
            r.label(),
            r.spread(|s| s.added_us).show(1, true),
            no_dearer(r),
            r.samples.len(),
            r.spread(|s| s.rps_vs_bare).median,
        );
    }
    out
}

/// In how many repetitions a head-to-head variant cost no more than what it ran against.
fn no_dearer(row: &Row<'_>) -> usize {
    row.samples.iter().filter(|s| s.added_us <= 0.0).count()
}

/// A head-to-head target: the variant costs no more than what it runs against. A difference
/// near zero has no stable spread, so it is judged by sign: pass when every repetition found
/// the variant no dearer, fail when none did, not judged when they disagree.
fn head_to_head_verdict(row: &Row<'_>) -> Verdict {
    match no_dearer(row) {
        0 => Verdict::Fail,
        n if n == row.samples.len() => Verdict::Pass,
        _ => Verdict::Unstable,
    }
}

/// A target's verdict: judged only on stable rows.
pub enum Verdict {
    Pass,
    Fail,
    Unstable,
}

impl Verdict {
    fn of(pass: bool, stable: bool) -> Self {
        match (stable, pass) {
            (false, _) => Self::Unstable,
            (true, true) => Self::Pass,
            (true, false) => Self::Fail,
        }
    }

    pub fn word(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Unstable => "UNSTABLE (not judged)",
        }
    }
}

/// Issue 22's targets (and issue 27's for the native module): what must hold, what we aim
/// at, the size budgets.
pub fn targets(rows: &[Row<'_>], baseline: Option<&str>) -> Vec<(Verdict, String)> {
    let now = |name: &str| {
        rows.iter()
            .find(|r| r.variant.name == name && r.set == "now" && r.copies == 1)
    };
    let mut out = Vec::new();
    if let Some(baseline) = baseline {
        for (name, limit) in [
            ("bundle", 0.6),
            ("traceid", 0.7),
            ("canary", 0.7),
            ("ratelimit", 0.7),
            ("breaker", 0.7),
        ] {
            if let Some((n, b)) = pair(rows, name, baseline) {
                let r = ratio(n, b);
                out.push((
                    Verdict::of(r.median <= limit, r.stable()),
                    format!(
                        "must: {name} adds at most {limit}× the CPU it added at {baseline}: {:.2}× ({:+.1} vs {:+.1} µs)",
                        r.median,
                        n.spread(|s| s.added_us).median,
                        b.spread(|s| s.added_us).median
                    ),
                ));
            }
        }
    }
    for (kind, name, what, least) in [
        ("must", "bundle", "the bundle", 0.7),
        ("aim", "chain", "four modules chained", 0.5),
    ] {
        if let Some(row) = now(name) {
            let r = row.spread(|s| s.rps_vs_bare);
            out.push((
                Verdict::of(r.median >= least, r.stable()),
                format!(
                    "{kind}: {what} keep ≥ {least}× bare Envoy's requests/s: {:.2}×",
                    r.median
                ),
            ));
        }
    }
    if let Some(floor) = now("passthrough") {
        let floor_added = floor.spread(|s| s.added_us);
        for (name, limit) in [
            ("bundle", 2.5),
            ("traceid", 1.5),
            ("canary", 1.5),
            ("ratelimit", 2.0),
            ("breaker", 2.0),
            // Issue 27: all four stages natively, no more than the empty Wasm module.
            ("native_bundle", 1.0),
        ] {
            if let Some(row) = now(name) {
                let added = row.spread(|s| s.added_us);
                let multiple = added.median / floor_added.median;
                out.push((
                    Verdict::of(
                        multiple <= limit,
                        added.stable() && floor_added.stable(),
                    ),
                    format!(
                        "aim: {name} adds at most {limit}× the empty module's CPU: {multiple:.1}× ({:+.1} vs {:+.1} µs)",
                        added.median, floor_added.median
                    ),
                ));
            }
        }
    }
    // Issue 27, measured head to head (steadier than two differences to bare).
    if let Some(row) = now("native_vs_passthrough") {
        let added = row.spread(|s| s.added_us);
        out.push((
            head_to_head_verdict(row),
            format!(
                "aim: native_bundle adds at most the empty module's CPU, head to head in one Envoy: {:+.1} µs/req [{:+.1}, {:+.1}] more, no dearer in {} of {} repetitions",
                added.median,
                added.min,
                added.max,
                no_dearer(row),
                row.samples.len()
            ),
        ));
    }
    for r in rows.iter().filter(|r| r.set == "now" && r.copies == 1) {
        if let [(module, _)] = r.variant.modules.as_slice()
            && *module != "passthrough"
            && !rows
                .iter()
                .take_while(|o| !std::ptr::eq(*o, r))
                .any(|o| o.set == "now" && o.variant.modules.first().map(|m| m.0) == Some(module))
        {
            let budget = if *module == "bundle" {
                BUNDLE_BUDGET
            } else {
                MODULE_BUDGET
            };
            out.push((
                Verdict::of(r.module_bytes <= budget, true),
                format!(
                    "size: {module}.wasm ≤ {} KB: {} bytes",
                    budget / 1024,
                    r.module_bytes
                ),
            ));
        }
    }
    out
}
