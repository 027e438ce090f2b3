//! One measurement: an Envoy pinned to its CPU with a variant's filters on one listener and
//! none on another, windows of load alternating between them, Envoy's CPU time around each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_integration::envoy::{self, EnvoyProcess, Launch};
use serde_json::{Value, json};

use crate::load::run_wrk;
use crate::profile::{Profiler, Recording};
use crate::side::Side;
use crate::variants::{Check, Variant};
use crate::{Error, Options, median};

/// The route every request takes; the policies are written for it by name.
pub const ROUTE: &str = "bench";

/// Envoy's CPU; wrk, the upstream (threads of this process) and the rate limit service run on
/// [`LOAD_CPU`]: each side gets a CPU of its own instead of trading places on both.
pub const ENVOY_CPU: usize = 0;
pub const LOAD_CPU: usize = 1;

/// Pins every thread of process `pid` to `cpu` (threads it starts later inherit it).
pub fn pin(pid: u32, cpu: usize) -> Result<(), Error> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset (util-linux): {e}"))?;
    if !status.success() {
        return Err(format!("taskset could not pin {pid} to CPU {cpu}").into());
    }
    Ok(())
}

/// Where a measurement's modules come from: today's build, or a baseline's.
#[derive(Clone, Debug)]
pub struct ModuleSet {
    /// `now`, or the git ref the baseline was built from.
    pub label: String,
    pub dist: PathBuf,
}

/// One thing measured: a variant, its modules from one set, each `copies` times.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub variant: &'a Variant,
    pub set: &'a ModuleSet,
    pub copies: usize,
}

/// CPU time of the whole process (every thread), in nanoseconds: the sum of its threads'
/// `/proc/<pid>/task/<tid>/schedstat` run times. The same quantity as utime + stime, at
/// nanosecond rather than clock-tick resolution (short windows need it).
pub fn process_cpu_ns(pid: u32) -> Result<u64, Error> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file any more: skip it.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

pub fn rss_kb(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// The body of Envoy's admin page `path`.
pub fn admin_text(agent: &ureq::Agent, admin: SocketAddr, path: &str) -> Result<String, Error> {
    Ok(agent
        .get(format!("http://{admin}{path}"))
        .call()?
        .body_mut()
        .read_to_string()?)
}

/// The sum of every Envoy stat whose name contains `needle` (0 when none does); a needle
/// starting with `=` matches one name exactly.
pub fn stat_sum(agent: &ureq::Agent, admin: SocketAddr, needle: &str) -> Result<u64, Error> {
    let text = admin_text(agent, admin, "/stats")?;
    Ok(text
        .lines()
        .filter_map(|line| line.rsplit_once(": "))
        .filter(|(name, _)| match needle.strip_prefix('=') {
            Some(exact) => *name == exact,
            None => name.contains(needle),
        })
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum())
}

/// Envoy's config for a run: the variant's filters on the first listener, none on a second one
/// named `bare` (or the variant's `against` module); both take the one route named [`ROUTE`]
/// to the upstream. Each module appears `copies` times, as plugins of their own (own name and
/// root id: own root context, stats and shared-data keys) in one VM. The modules run with
/// their defaults (counters flushed every second), as in production.
fn envoy_config(
    run: Run<'_>,
    upstream: SocketAddr,
    rls: Option<SocketAddr>,
) -> Result<String, Error> {
    let mut filters = Vec::new();
    for (module, plugin_json) in &run.variant.modules {
        for copy in 0..run.copies {
            let name = match copy {
                0 => (*module).to_owned(),
                _ => format!("{module}.{copy}"),
            };
            filters.push(wasm_filter(run.set, module, &name, plugin_json)?);
        }
    }
    filters.extend(run.variant.native.iter().cloned());
    let route = || {
        json!({
            "name": ROUTE,
            "match": { "prefix": "/" },
            "route": { "cluster": "upstream", "timeout": "15s" }
        })
    };
    let cluster = || vec![envoy::cluster("upstream", upstream)];
    let mut clusters = cluster();
    if run.variant.rls {
        let rls = rls.ok_or("the rate limit service is not running")?;
        clusters.push(envoy::grpc_cluster("rls", Some(rls)));
    }
    let mut config = envoy::bootstrap(filters, vec![route()], clusters);
    let against = match run.variant.against {
        Some((module, plugin_json)) => vec![wasm_filter(run.set, module, module, plugin_json)?],
        None => Vec::new(),
    };
    let mut bare = envoy::bootstrap(against, vec![route()], cluster())
        .pointer("/static_resources/listeners/0")
        .cloned()
        .ok_or("bootstrap without a listener")?;
    *bare.pointer_mut("/name").ok_or("listener without a name")? = json!("bare");
    *bare
        .pointer_mut("/filter_chains/0/filters/0/typed_config/stat_prefix")
        .ok_or("listener without a connection manager")? = json!(Side::Bare.stat_prefix());
    config
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .ok_or("bootstrap listeners are not a list")?
        .push(bare);
    Ok(config.to_string())
}

/// `module` from `set` as a Wasm filter named `name`, without the test harness's environment
/// (the module's defaults, as in production).
fn wasm_filter(
    set: &ModuleSet,
    module: &str,
    name: &str,
    plugin_json: &str,
) -> Result<Value, Error> {
    let wasm = set.dist.join(format!("{module}.wasm"));
    if !wasm.is_file() {
        return Err(format!("{} is missing: run scripts/build.sh", wasm.display()).into());
    }
    let mut filter = envoy::wasm_filter(name, &wasm, plugin_json);
    if let Some(vm) = filter
        .pointer_mut("/typed_config/config/vm_config")
        .and_then(Value::as_object_mut)
    {
        vm.remove("environment_variables");
    }
    Ok(filter)
}

/// One request through Envoy; checks what the variant promises to do to it.
pub fn smoke(agent: &ureq::Agent, listener: SocketAddr, variant: &Variant) -> Result<(), Error> {
    let response = agent
        .get(format!("http://{listener}/smoke"))
        .header("x-user-id", "user-1")
        .header("x-api-key", "key-1")
        .call()?;
    if response.status() != 200 {
        return Err(format!("{}: smoke request got {}", variant.name, response.status()).into());
    }
    let seen = response
        .headers()
        .get("x-seen")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    for check in &variant.checks {
        match check {
            Check::UpstreamSaw(name) if !seen.split(',').any(|n| n == *name) => {
                return Err(
                    format!("{}: upstream did not see {name} (saw {seen})", variant.name).into(),
                );
            }
            Check::ResponseHeader(name) if response.headers().get(*name).is_none() => {
                return Err(format!("{}: no {name} on the response", variant.name).into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// One window: requests on one listener and the CPU Envoy spent on them.
pub struct Window {
    /// Responses wrk received (requests it sent but stopped before are not among them).
    pub answered: u64,
    pub rps: f64,
    pub cpu_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs one window and checks that every request was answered by the upstream.
pub fn window(
    side: Side,
    listener: SocketAddr,
    pid: u32,
    agent: &ureq::Agent,
    admin: SocketAddr,
    script: &Path,
    options: &Options,
) -> Result<Window, Error> {
    let prefix = side.stat_prefix();
    let served_stat = format!("=http.{prefix}.downstream_rq_total");
    let refused = |agent: &ureq::Agent| -> Result<u64, Error> {
        Ok(
            stat_sum(agent, admin, &format!("=http.{prefix}.downstream_rq_4xx"))?
                + stat_sum(agent, admin, &format!("=http.{prefix}.downstream_rq_5xx"))?,
        )
    };
    let served_before = stat_sum(agent, admin, &served_stat)?;
    let refused_before = refused(agent)?;
    // The admin calls above run on Envoy's main thread: read the CPU after them.
    let cpu_before = process_cpu_ns(pid)?;
    let requests = options.requests / options.windows;
    let load = run_wrk(
        script,
        listener,
        options.connections,
        requests,
        options.max_seconds,
    )?;
    let cpu_after = process_cpu_ns(pid)?;
    let served = stat_sum(agent, admin, &served_stat)? - served_before;
    let refused = refused(agent)? - refused_before;
    // Requests still in flight when wrk stops are reset, not refused: only 4xx/5xx count.
    if load.errors > 0 || refused > 0 || served < load.requests || served == 0 {
        return Err(format!(
            "{prefix} listener: {} wrk errors, {refused} of {served} requests answered 4xx/5xx (wrk counted {})",
            load.errors, load.requests
        )
        .into());
    }
    Ok(Window {
        answered: load.requests,
        rps: load.requests as f64 / load.seconds,
        cpu_us_per_request: (cpu_after - cpu_before) as f64 / 1e3 / served as f64,
        p50_us: load.p50_us,
        p99_us: load.p99_us,
    })
}

/// One repetition of one variant: medians over its windows.
pub struct Sample {
    /// The variant listener.
    pub rps: f64,
    pub cpu_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The bare listener of the same Envoy.
    pub bare_cpu_us_per_request: f64,
    /// Window pairs: variant minus the bare window next to it.
    pub added_us: f64,
    pub rps_vs_bare: f64,
    pub rss_kb: u64,
    pub heap: Heap,
}

/// Envoy's heap as its allocator (tcmalloc) reports it on the admin `/memory` page.
#[derive(Clone, Copy)]
pub struct Heap {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes freed but kept, resident, by the allocator: what its heap holds beyond the live
    /// allocations and the pages it gave back (free pages, central and per-thread free
    /// lists). Envoy returns the free pages to the system only when its bootstrap asks
    /// (`memory_allocator_manager`).
    pub kept_free: u64,
}

/// Envoy's admin `/memory`: numbers as JSON strings.
pub fn heap(agent: &ureq::Agent, admin: SocketAddr) -> Result<Heap, Error> {
    let text = admin_text(agent, admin, "/memory")?;
    let memory: Value = serde_json::from_str(&text)?;
    let field = |name: &str| -> Result<u64, Error> {
        Ok(memory
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("/memory without {name}: {text}"))?
            .parse()?)
    };
    let allocated = field("allocated")?;
    // heap_size counts every byte the heap reserved, the unmapped (given back) included.
    let resident = field("heap_size")?.saturating_sub(field("pageheap_unmapped")?);
    Ok(Heap {
        allocated,
        kept_free: resident.saturating_sub(allocated),
    })
}

/// How long the modules may keep counts before Envoy has them (their default flush period is
/// a second), before a run checks their stats.
const STATS_SETTLE: Duration = Duration::from_millis(1500);

/// Measures one run: a fresh Envoy, warm-up, then alternating windows. With `profiler`, the
/// windows are recorded with perf (each side to its own recording).
pub fn measure(
    run: Run<'_>,
    upstream: SocketAddr,
    rls: Option<SocketAddr>,
    script: &Path,
    options: &Options,
    profiler: Option<&Profiler>,
) -> Result<(Sample, Option<Recording>), Error> {
    let variant = run.variant;
    let config = envoy_config(run, upstream, rls)?;
    // Envoy's default level for the modules, as in production: their per-request debug
    // lines are not formatted.
    let log_level = ["--component-log-level".to_owned(), "wasm:info".to_owned()];
    let envoy = EnvoyProcess::start(&Launch::new(config).args(log_level))?;
    let pid = envoy.pid();
    if options.pin {
        pin(pid, ENVOY_CPU)?;
    }
    let admin = envoy.admin;
    let agent = envoy::agent(Duration::from_secs(10));
    let listeners = [
        (Side::Variant, envoy.listener),
        (
            Side::Bare,
            envoy::listener_address(&agent, admin, Some("bare"))?,
        ),
    ];
    smoke(&agent, envoy.listener, variant)?;
    // Warm-up: V8 compiles at load (and tiers up hot code), first requests bind routes and
    // create shared data.
    for (_, listener) in listeners {
        run_wrk(
            script,
            listener,
            options.connections,
            options.warmup,
            options.max_seconds,
        )?;
    }
    std::thread::sleep(STATS_SETTLE);
    let stat_before: Vec<u64> = variant
        .checks
        .iter()
        .map(|c| match c {
            Check::StatGrew(needle) => stat_sum(&agent, admin, needle),
            _ => Ok(0),
        })
        .collect::<Result<_, _>>()?;
    let mut recording = profiler.map(|p| p.start(pid));
    let mut bare = Vec::new();
    let mut ours = Vec::new();
    for w in 0..options.windows {
        // bare, variant, variant, bare, ...: neither side always goes first.
        let order = if w % 2 == 0 {
            [Side::Bare, Side::Variant]
        } else {
            [Side::Variant, Side::Bare]
        };
        for side in order {
            let listener = listeners
                .iter()
                .find(|(s, _)| *s == side)
                .map(|(_, l)| *l)
                .ok_or("no listener")?;
            let recorder = match &mut recording {
                Some(recording) => Some(recording.record(side)?),
                None => None,
            };
            let measured = window(side, listener, pid, &agent, admin, script, options)
                .map_err(|e| format!("{}: {e}", variant.name))?;
            if let (Some(recording), Some(recorder)) = (&mut recording, recorder) {
                recording.stop(side, recorder, measured.cpu_us_per_request)?;
            }
            match side {
                Side::Bare => bare.push(measured),
                Side::Variant => ours.push(measured),
            }
        }
    }
    // Every answered request went through the filters; wrk stops with a few sent but
    // unanswered. The modules hand Envoy their counts within a second.
    std::thread::sleep(STATS_SETTLE);
    let measured_requests: u64 = ours.iter().map(|w| w.answered).sum();
    for (check, before) in variant.checks.iter().zip(stat_before) {
        if let Check::StatGrew(needle) = check {
            let grown = stat_sum(&agent, admin, needle)? - before;
            if grown < measured_requests {
                return Err(format!(
                    "{}: {needle} grew by {grown} for {measured_requests} requests",
                    variant.name
                )
                .into());
            }
        }
    }
    let log_bytes = envoy.log().len();
    if log_bytes > 1_000_000 {
        eprintln!("  warning: Envoy logged {log_bytes} bytes: per-request log lines cost CPU");
    }
    let of = |windows: &[Window], f: fn(&Window) -> f64| median(windows.iter().map(f).collect());
    let pairs = |f: fn(&Window, &Window) -> f64| {
        median(ours.iter().zip(&bare).map(|(v, b)| f(v, b)).collect())
    };
    let sample = Sample {
        rps: of(&ours, |w| w.rps),
        cpu_us_per_request: of(&ours, |w| w.cpu_us_per_request),
        p50_us: of(&ours, |w| w.p50_us),
        p99_us: of(&ours, |w| w.p99_us),
        bare_cpu_us_per_request: of(&bare, |w| w.cpu_us_per_request),
        added_us: pairs(|v, b| v.cpu_us_per_request - b.cpu_us_per_request),
        rps_vs_bare: pairs(|v, b| v.rps / b.rps),
        rss_kb: rss_kb(pid)?,
        heap: heap(&agent, admin)?,
    };
    Ok((sample, recording))
}
