//! `bench`: what each filter costs Envoy, next to bare Envoy, Lua and native local_ratelimit,
//! and next to the modules of a baseline commit measured in the same run.
//!
//! Run by `scripts/bench.sh` (not a test: timings are never a pass condition of a test).
//! For every variant (no filter, the SDK-only pass-through module, each of our four filters
//! with a realistic policy, all four chained, the four as stages of the bundle module,
//! Envoy's `local_ratelimit`, a Lua filter adding a header) it starts Envoy with
//! `--concurrency 1`, pinned to CPU 0, in front of a fixed fast upstream (this process,
//! pinned with wrk to CPU 1), checks that the filters really run and warms up (V8 compiles
//! modules at load).
//!
//! That Envoy has two listeners: the variant's filter chain, and a bare one (router only).
//! wrk sends a fixed number of requests (bounded in time too) in windows that alternate
//! between them (bare, variant, variant, bare, ...), and Envoy's CPU time is read around each
//! window: a variant compared with the bare listener of the same process a moment apart keeps
//! the machine's drift out of "added µs per request". Each repetition (a fresh Envoy per
//! measurement) measures every variant, with today's modules and the baseline's back to back
//! in alternating order, so "now / baseline" is a ratio taken within one repetition. Rows
//! report min, median and max over repetitions; one whose spread exceeds 20 % of its median
//! is marked unstable and judges no target.
//!
//! Everything listens on 127.0.0.1; every process started here is stopped by its own handle.

mod chart;
mod load;
mod machine;
mod measure;
mod profile;
mod report;
mod side;
mod upstream;
mod variants;

use std::fmt::Write as _;
use std::path::PathBuf;

use mesh_integration::envoy;
use mesh_integration::rls::{Redis, Rls, RlsLimit};

use measure::{LOAD_CPU, ModuleSet, Run, Sample};
use profile::Profiler;
use report::Row;
use variants::Variant;

type Error = Box<dyn std::error::Error>;

const USAGE: &str = "usage: bench [--requests N] [--windows N] [--warmup N] [--connections N]
             [--repeat N] [--max-seconds N] [--only name,name] [--copies N]
             [--baseline-dist DIR --baseline-label REF] [--profile VARIANT] [--no-pin]
             [--out FILE]
       bench --chart-from FILE   (FILE's results table drawn as FILE.svg; nothing measured)";

pub struct Options {
    /// Measured requests per variant and repetition, on each listener.
    requests: u64,
    /// Window pairs those requests are split into.
    windows: u64,
    warmup: u64,
    connections: u32,
    repeat: usize,
    max_seconds: u64,
    only: Option<Vec<String>>,
    /// Besides one copy, each module this many times in its chain (distinct plugins): a
    /// module's marginal cost, measured that many times over. Targets are judged at one copy.
    copies: usize,
    /// The baseline's modules (`scripts/bench.sh --baseline REF` builds them).
    baseline: Option<ModuleSet>,
    /// A variant whose windows are recorded with perf, in a run of its own after the
    /// repetitions (today's modules, and the baseline's when there is one).
    profile: Option<String>,
    /// Envoy on CPU 0, the load on CPU 1 (off with `--no-pin`, or with fewer than 2 CPUs).
    pin: bool,
    /// Besides FILE (the results), the chart of its rows as FILE.svg.
    out: Option<PathBuf>,
    /// Only draw the chart of a results file written before.
    chart_from: Option<PathBuf>,
}

impl Options {
    fn defaults() -> Self {
        Self {
            requests: 30_000,
            windows: 5,
            warmup: 5_000,
            connections: 32,
            repeat: 5,
            max_seconds: 60,
            only: None,
            copies: 1,
            baseline: None,
            profile: None,
            pin: true,
            out: None,
            chart_from: None,
        }
    }

    fn parse() -> Result<Self, Error> {
        let mut options = Self::defaults();
        let mut baseline_dist = None;
        let mut baseline_label = None;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--requests" => options.requests = value()?.parse()?,
                "--windows" => options.windows = value()?.parse()?,
                "--warmup" => options.warmup = value()?.parse()?,
                "--connections" => options.connections = value()?.parse()?,
                "--repeat" => options.repeat = value()?.parse()?,
                "--max-seconds" => options.max_seconds = value()?.parse()?,
                "--only" => {
                    options.only = Some(value()?.split(',').map(str::to_owned).collect());
                }
                "--copies" => options.copies = value()?.parse()?,
                "--baseline-dist" => baseline_dist = Some(PathBuf::from(value()?)),
                "--baseline-label" => baseline_label = Some(value()?),
                "--profile" => options.profile = Some(value()?),
                "--no-pin" => options.pin = false,
                "--out" => options.out = Some(PathBuf::from(value()?)),
                "--chart-from" => options.chart_from = Some(PathBuf::from(value()?)),
                _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
            }
        }
        options.baseline = match (baseline_dist, baseline_label) {
            (Some(dist), Some(label)) => Some(ModuleSet { label, dist }),
            (None, None) => None,
            _ => {
                return Err(
                    format!("--baseline-dist and --baseline-label go together\n{USAGE}").into(),
                );
            }
        };
        if options.requests == 0
            || options.repeat == 0
            || options.connections == 0
            || options.copies == 0
            || options.windows == 0
        {
            return Err(format!(
                "requests, windows, repeat, connections and copies must be positive\n{USAGE}"
            )
            .into());
        }
        Ok(options)
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(f64::NAN),
        _ => {
            let a = values.get(n / 2 - 1).copied().unwrap_or(f64::NAN);
            let b = values.get(n / 2).copied().unwrap_or(f64::NAN);
            (a + b) / 2.0
        }
    }
}

fn module_bytes(variant: &Variant, set: &ModuleSet) -> u64 {
    variant
        .modules
        .iter()
        .filter_map(|(m, _)| std::fs::metadata(set.dist.join(format!("{m}.wasm"))).ok())
        .map(|meta| meta.len())
        .sum()
}

/// What one repetition measures, in order: every variant with today's modules and, for ours,
/// the baseline's (alternating which goes first), then the copies.
fn plan<'a>(
    variants: &'a [Variant],
    now: &'a ModuleSet,
    options: &'a Options,
    rep: usize,
) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    let mut add = |variant: &'a Variant, copies: usize| {
        let mut sets = vec![now];
        if let Some(baseline) = options
            .baseline
            .as_ref()
            .filter(|_| variant.has_our_modules())
        {
            sets.push(baseline);
            if rep.is_multiple_of(2) {
                sets.reverse();
            }
        }
        for set in sets {
            runs.push(Run {
                variant,
                set,
                copies,
            });
        }
    };
    for variant in variants {
        add(variant, 1);
    }
    if options.copies > 1 {
        for variant in variants.iter().filter(|v| v.copies_apply()) {
            add(variant, options.copies);
        }
    }
    runs
}

fn main() {
    if let Err(err) = run() {
        eprintln!("bench: {err}");
        std::process::exit(1);
    }
}

/// Writes the chart of `bars` beside the results file `results` (its `.svg`).
fn write_chart(results: &std::path::Path, bars: &[chart::Bar]) -> Result<(), Error> {
    let path = results.with_extension("svg");
    std::fs::write(&path, chart::svg(bars)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn run() -> Result<(), Error> {
    let mut options = Options::parse()?;
    if let Some(results) = &options.chart_from {
        let table =
            std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
        let bars =
            chart::bars_from_results(&table).map_err(|e| format!("{}: {e}", results.display()))?;
        return write_chart(results, &bars);
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if options.pin && cpus < 2 {
        eprintln!("warning: {cpus} CPU: Envoy and the load are not pinned apart");
        options.pin = false;
    }
    if options.pin {
        // wrk, the upstream and the rate limit service inherit this CPU.
        measure::pin(std::process::id(), LOAD_CPU)?;
    }
    let mut variants = variants::variants();
    if let Some(only) = &options.only {
        // The bare run stays: it is the first (unmeasured) run and the table's reference.
        variants.retain(|v| v.name == "bare" || only.iter().any(|o| o == v.name));
    }
    let now = ModuleSet {
        label: "now".to_owned(),
        dist: envoy::dist_dir(),
    };
    let script_dir = tempfile::Builder::new().prefix("mesh-bench-").tempdir()?;
    let script = script_dir.path().join("bench.lua");
    std::fs::write(&script, load::WRK_SCRIPT)?;
    let upstream = upstream::Upstream::start()?;
    // Redis and the rate limit service, only for the variants that call it.
    let rls = if variants.iter().any(|v| v.rls) {
        let redis = Redis::start()?;
        let rls = Rls::start(
            &redis,
            vec![RlsLimit::new("bench", "generic_key", 1_000_000_000_000, 60)],
        )?;
        Some((redis, rls))
    } else {
        None
    };
    let rls_addr = rls.as_ref().map(|(_, rls)| rls.addr());
    let started = machine::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_before = machine::load_average();
    eprintln!("load average before: {load_before}");

    // One unmeasured run first: the first Envoy after a quiet spell runs measurably slower
    // (cold caches, CPU frequency), which would tilt the first repetition.
    if let Some(bare) = variants.first() {
        let run = Run {
            variant: bare,
            set: &now,
            copies: 1,
        };
        measure::measure(run, upstream.addr, None, &script, &options, None)?;
    }
    let mut rows: Vec<Row<'_>> = Vec::new();
    for rep in 1..=options.repeat {
        for run in plan(&variants, &now, &options, rep) {
            let (sample, _) =
                measure::measure(run, upstream.addr, rls_addr, &script, &options, None)
                    .map_err(|e| format!("{} (repetition {rep}): {e}", run.variant.name))?;
            log_sample(rep, run, &sample);
            let key = |r: &Row<'_>| {
                std::ptr::eq(r.variant, run.variant)
                    && r.set == run.set.label
                    && r.copies == run.copies
            };
            match rows.iter_mut().find(|r| key(r)) {
                Some(row) => row.samples.push(sample),
                None => rows.push(Row {
                    variant: run.variant,
                    set: run.set.label.clone(),
                    copies: run.copies,
                    samples: vec![sample],
                    module_bytes: module_bytes(run.variant, run.set),
                }),
            }
        }
    }
    let profiles = profile_runs(&variants, &now, &options, upstream.addr, rls_addr, &script)?;
    let load_after = machine::load_average();

    let baseline = options.baseline.as_ref().map(|b| b.label.as_str());
    let mut results = report::main_table(&rows);
    if let Some(baseline) = baseline {
        let _ = write!(
            results,
            "\n### Today's modules against {baseline}'s, in the same repetitions\n\n{}",
            report::baseline_table(&rows, baseline)
        );
    }
    if rows.iter().any(|r| r.variant.against.is_some()) {
        let _ = write!(
            results,
            "\n### Head to head, in one Envoy\n\n{}",
            report::head_to_head_table(&rows)
        );
    }
    if options.copies > 1 {
        let _ = write!(
            results,
            "\n### Marginal cost: each module {} times in its chain\n\n{}",
            options.copies,
            report::copies_table(&rows)
        );
    }
    for (label, profile) in &profiles {
        let _ = write!(
            results,
            "\n### Where {label}'s added time lands (perf, {} and {} samples)\n\n{}",
            profile.samples.0,
            profile.samples.1,
            profile.table()
        );
    }
    let mut target_lines = String::new();
    for (verdict, line) in report::targets(&rows, baseline) {
        let _ = writeln!(target_lines, "- {} {line}", verdict.word());
    }
    println!("{results}\n{target_lines}");

    if let Some(out) = &options.out {
        let pinning = if options.pin {
            "Envoy pinned to CPU 0, wrk, the upstream and the rate limit service to CPU 1 (`taskset`)"
        } else {
            "not pinned"
        };
        let baseline_note = baseline.map_or(String::new(), |b| {
            format!(
                " Rows marked @{b} run the modules built from commit {b} (`scripts/bench.sh \
                 --baseline {b}`), measured right before or after today's in every repetition."
            )
        });
        let chart = out.with_extension("svg");
        let chart = chart
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let report = format!(
            "# Benchmark results\n\n\
             Written by `scripts/bench.sh` ({started}); what it measures and how:\n\
             [docs/benchmark.md](../docs/benchmark.md); the chart: [{chart}]({chart}). Envoy\n\
             `--concurrency 1` in front of a fixed upstream answering `200 ok`,\n\
             wrk with 1 thread and {} connections on loopback; {pinning}. Each Envoy has two\n\
             listeners, the variant's filters and a bare one; after {} warm-up requests on each,\n\
             {} measured requests per listener in {} window pairs alternating between them. Envoy\n\
             CPU is the process's CPU time (all threads, from schedstat) over a window divided by\n\
             the requests Envoy served in it; \"added\" and \"vs bare\" compare each variant window\n\
             with the bare window next to it. Medians over windows; then median [min, max] over\n\
             {} repetitions (a fresh Envoy each, variants interleaved); ⚠ marks a row whose\n\
             spread exceeds {:.0} % of its median: unstable, it judges no target.{baseline_note}\n\
             RSS after the run; \"in use\" is RSS less what Envoy's allocator holds free,\n\
             \"heap\" its live allocations (admin `/memory`). The bare row compares two bare\n\
             listeners: its \"added\" is the method's noise.\n\n\
             ## Machine\n\n{}\
             - load average (1, 5, 15 min): {load_before} before, {load_after} after\n\n\
             ## Results\n\n{results}\n## Targets\n\n{target_lines}",
            options.connections,
            options.warmup,
            options.requests / options.windows * options.windows,
            options.windows,
            options.repeat,
            report::UNSTABLE_SPREAD * 100.0,
            machine::machine(),
        );
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &report)?;
        eprintln!("wrote {}", out.display());
        // Drawn from the table as written (values to 0.1 µs), as `--chart-from` draws it: the
        // committed chart is what the committed table draws, to the pixel.
        write_chart(out, &chart::bars_from_results(&report)?)?;
    }
    Ok(())
}

fn log_sample(rep: usize, run: Run<'_>, sample: &Sample) {
    let label = match (run.set.label.as_str(), run.copies) {
        ("now", 1) => run.variant.name.to_owned(),
        ("now", n) => format!("{} ×{n}", run.variant.name),
        (set, 1) => format!("{} @{set}", run.variant.name),
        (set, n) => format!("{} @{set} ×{n}", run.variant.name),
    };
    eprintln!(
        "  rep {rep} {label:<24} {:>7.0} req/s ({:.2}× bare)  {:>6.1} µs/req (bare listener {:>6.1}, added {:>+6.1})  p50 {:>5.2} ms  p99 {:>5.2} ms  RSS {:>5.1} MB  (load {})",
        sample.rps,
        sample.rps_vs_bare,
        sample.cpu_us_per_request,
        sample.bare_cpu_us_per_request,
        sample.added_us,
        sample.p50_us / 1000.0,
        sample.p99_us / 1000.0,
        sample.rss_kb as f64 / 1024.0,
        machine::load_average()
    );
}

/// The `--profile` variant's windows under perf, with today's modules and the baseline's.
fn profile_runs(
    variants: &[Variant],
    now: &ModuleSet,
    options: &Options,
    upstream: std::net::SocketAddr,
    rls: Option<std::net::SocketAddr>,
    script: &std::path::Path,
) -> Result<Vec<(String, profile::Profile)>, Error> {
    let Some(name) = &options.profile else {
        return Ok(Vec::new());
    };
    let variant = variants
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| format!("--profile {name}: no such variant"))?;
    let profiler = Profiler::new()?;
    let mut sets = vec![now];
    sets.extend(
        options
            .baseline
            .as_ref()
            .filter(|_| variant.has_our_modules()),
    );
    let mut out = Vec::new();
    for set in sets {
        let run = Run {
            variant,
            set,
            copies: 1,
        };
        let (_, recording) =
            measure::measure(run, upstream, rls, script, options, Some(&profiler))?;
        if let Some(recording) = recording {
            let label = if set.label == "now" {
                variant.name.to_owned()
            } else {
                format!("{} @{}", variant.name, set.label)
            };
            out.push((label, recording.summarize()?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_spread_over_a_fifth_of_its_median_is_unstable() {
        assert!(report::Spread::of(&[10.0, 11.0, 12.0]).stable());
        assert!(!report::Spread::of(&[10.0, 11.0, 13.0]).stable());
        assert!(!report::Spread::of(&[-1.0, 0.5, 1.0]).stable());
    }

    /// A repetition whose variant window added `added_us` over the other listener.
    fn sample(added_us: f64) -> measure::Sample {
        measure::Sample {
            rps: 1000.0,
            cpu_us_per_request: 50.0 + added_us,
            p50_us: 1000.0,
            p99_us: 2000.0,
            bare_cpu_us_per_request: 50.0,
            added_us,
            rps_vs_bare: 1.0,
            rss_kb: 1,
            heap: measure::Heap {
                allocated: 1,
                kept_free: 0,
            },
        }
    }

    #[test]
    fn head_to_head_is_judged_by_the_sign_of_every_repetition() {
        let variants = variants::variants();
        let head_to_head = variants
            .iter()
            .find(|v| v.name == "native_vs_passthrough")
            .unwrap();
        assert_eq!(head_to_head.against.map(|a| a.0), Some("passthrough"));
        let verdict = |added: &[f64]| {
            let rows = [report::Row {
                variant: head_to_head,
                set: "now".to_owned(),
                copies: 1,
                samples: added.iter().copied().map(sample).collect(),
                module_bytes: 0,
            }];
            let targets = report::targets(&rows, None);
            let (verdict, line) = targets
                .iter()
                .find(|(_, line)| line.contains("head to head"))
                .unwrap();
            (verdict.word(), line.clone())
        };
        let (word, line) = verdict(&[-2.0, -0.5, 0.0]);
        assert_eq!(word, "PASS");
        assert!(
            line.contains("-0.5 µs/req [-2.0, +0.0] more, no dearer in 3 of 3"),
            "{line}"
        );
        assert_eq!(verdict(&[-2.0, 0.5, -1.0]).0, "UNSTABLE (not judged)");
        assert_eq!(verdict(&[2.0, 0.5, 1.0]).0, "FAIL");
        // Not in the main table (its "added" is not over bare); in its own.
        let rows = [report::Row {
            variant: head_to_head,
            set: "now".to_owned(),
            copies: 1,
            samples: vec![sample(-1.0), sample(2.0)],
            module_bytes: 0,
        }];
        assert!(!report::main_table(&rows).contains("native_vs_passthrough"));
        assert!(
            report::head_to_head_table(&rows).contains(
                "| native_vs_passthrough | passthrough | +0.5 [-1.0, +2.0] ⚠ | 1 of 2 | 1.00 |"
            ),
            "{}",
            report::head_to_head_table(&rows)
        );
    }

    #[test]
    fn every_variant_is_named_once_and_bare_comes_first() {
        let variants = variants::variants();
        assert_eq!(variants.first().map(|v| v.name), Some("bare"));
        let mut names: Vec<&str> = variants.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), variants.len());
    }

    #[test]
    fn a_repetition_measures_ours_at_both_sets_in_alternating_order() {
        let variants = variants::variants();
        let now = ModuleSet {
            label: "now".to_owned(),
            dist: PathBuf::from("dist"),
        };
        let mut options = Options::defaults();
        options.baseline = Some(ModuleSet {
            label: "old".to_owned(),
            dist: PathBuf::from("old"),
        });
        options.copies = 4;
        let labels = |rep| -> Vec<String> {
            plan(&variants, &now, &options, rep)
                .iter()
                .map(|r| format!("{}@{}x{}", r.variant.name, r.set.label, r.copies))
                .collect()
        };
        let first = labels(1);
        assert!(first.contains(&"bare@nowx1".to_owned()));
        assert!(
            !first.contains(&"bare@oldx1".to_owned()),
            "native variants once"
        );
        let at = |labels: &[String], l: &str| labels.iter().position(|x| x == l).unwrap();
        assert!(at(&first, "bundle@nowx1") < at(&first, "bundle@oldx1"));
        let second = labels(2);
        assert!(at(&second, "bundle@oldx1") < at(&second, "bundle@nowx1"));
        assert!(first.contains(&"traceid@oldx4".to_owned()));
        assert!(
            !first
                .iter()
                .any(|l| l.starts_with("chain@") && l.ends_with("x4"))
        );
    }

    #[test]
    fn policies_are_accepted_by_their_filters() {
        use mesh_policy::breaker::{BreakerConfig, BreakerPolicy};
        use mesh_policy::canary::{CanaryConfig, CanaryPolicy};
        use mesh_policy::config::{Envelope, FieldPath};
        use mesh_policy::ratelimit::{RateLimitConfig, RateLimitPolicy};
        use mesh_policy::trace::{TraceConfig, TracePolicy};
        use variants::policy;

        let at = FieldPath::root();
        let route = measure::ROUTE;
        let trace = Envelope::<TraceConfig>::from_json(policy("traceid").as_bytes()).unwrap();
        assert!(
            trace
                .compile(&at, TracePolicy::compile)
                .unwrap()
                .policy_for(route)
                .is_some()
        );
        let canary = Envelope::<CanaryConfig>::from_json(policy("canary").as_bytes()).unwrap();
        assert!(
            canary
                .compile(&at, CanaryPolicy::compile)
                .unwrap()
                .policy_for(route)
                .is_some()
        );
        let limits =
            Envelope::<RateLimitConfig>::from_json(policy("ratelimit").as_bytes()).unwrap();
        assert!(
            limits
                .compile(&at, RateLimitPolicy::compile)
                .unwrap()
                .policy_for(route)
                .is_some()
        );
        let breaker = Envelope::<BreakerConfig>::from_json(policy("breaker").as_bytes()).unwrap();
        assert!(
            breaker
                .compile(&at, BreakerPolicy::compile)
                .unwrap()
                .policy_for(route)
                .is_some()
        );
    }
}
