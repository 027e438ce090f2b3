//! `bench`: what each filter costs Envoy, next to bare Envoy, Lua and native local_ratelimit.
//!
//! Run by `scripts/bench.sh` (not a test: timings are never a pass condition of a test).
//! For every variant (no filter, the SDK-only pass-through module, each of our four filters
//! with a realistic policy, all four chained, Envoy's `local_ratelimit`, a Lua filter adding a
//! header) it starts Envoy with `--concurrency 1` in front of a fixed fast upstream, checks
//! that the filters really run, warms up (V8 compiles modules at load), then lets `wrk` send
//! a fixed number of requests (bounded in time too) and reads Envoy's CPU time (utime +
//! stime from `/proc/<pid>/stat`) and request count around it. Three repetitions, variants
//! interleaved, medians reported; prints a markdown table and the targets, and writes the
//! results file.
//!
//! Everything listens on 127.0.0.1; every process started here is stopped by its own handle.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_integration::envoy::{self, EnvoyProcess};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

/// The route every request takes; the policies are written for it by name.
const ROUTE: &str = "bench";

/// What `scripts/build.sh` enforces.
const MODULE_BUDGET: u64 = 150 * 1024;

const USAGE: &str = "usage: bench [--requests N] [--warmup N] [--connections N] [--repeat N]
             [--max-seconds N] [--only name,name] [--out FILE] [--perf DIR]";

struct Options {
    requests: u64,
    warmup: u64,
    connections: u32,
    repeat: usize,
    max_seconds: u64,
    only: Option<Vec<String>>,
    out: Option<PathBuf>,
    /// Record `perf` profiles of Envoy during the measured requests here.
    perf: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self, Error> {
        let mut options = Self {
            requests: 40_000,
            warmup: 5_000,
            connections: 32,
            repeat: 3,
            max_seconds: 60,
            only: None,
            out: None,
            perf: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--requests" => options.requests = value()?.parse()?,
                "--warmup" => options.warmup = value()?.parse()?,
                "--connections" => options.connections = value()?.parse()?,
                "--repeat" => options.repeat = value()?.parse()?,
                "--max-seconds" => options.max_seconds = value()?.parse()?,
                "--only" => {
                    options.only = Some(value()?.split(',').map(str::to_owned).collect());
                }
                "--out" => options.out = Some(PathBuf::from(value()?)),
                "--perf" => options.perf = Some(PathBuf::from(value()?)),
                _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
            }
        }
        if options.requests == 0 || options.repeat == 0 || options.connections == 0 {
            return Err(
                format!("requests, repeat and connections must be positive\n{USAGE}").into(),
            );
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------
// Variants

const TRACEID: &str = r#"{"routes": {"bench": {}}}"#;
/// A sticky 10 % split on a user header, one forcing rule (never matched by the load).
const CANARY: &str = r#"{"routes": {"bench": {
    "percent": 10, "sticky": {"header": "x-user-id"}, "salt": "bench",
    "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}]}}}"#;
/// A route-wide limit and a per-API-key limit, both far above the load: everything passes.
const RATELIMIT: &str = r#"{"routes": {"bench": {"limits": [
    {"rate_per_s": 1000000, "burst": 1000000},
    {"rate_per_s": 100000, "burst": 100000, "key": {"header": "x-api-key"}}]}}}"#;
/// Closed all along: the upstream always answers 200, quickly.
const BREAKER: &str = r#"{"routes": {"bench": {
    "consecutive_failures": 5, "failure_rate_percent": 50, "min_requests": 20,
    "slow_call_ms": 1000, "slow_call_rate_percent": 80, "open_ms": 5000}}}"#;
const PASSTHROUGH: &str = "";

const LUA_SOURCE: &str = "function envoy_on_request(request_handle)\n  \
    request_handle:headers():add(\"x-lua\", \"1\")\nend\n";

/// How a run proves the variant's filters did their work.
#[derive(Clone, Copy)]
enum Check {
    /// The upstream saw this request header (on the smoke request).
    UpstreamSaw(&'static str),
    /// The client got this response header (on the smoke request).
    ResponseHeader(&'static str),
    /// Envoy stats whose names contain this grew by at least the measured requests.
    StatGrew(&'static str),
}

struct Variant {
    name: &'static str,
    what: &'static str,
    /// Our modules, with their plugin JSON, in filter order.
    modules: Vec<(&'static str, &'static str)>,
    /// Native filters (built from JSON here).
    native: Vec<Value>,
    checks: Vec<Check>,
    /// Rows compared with the Lua filter and the pass-through floor.
    ours: bool,
}

fn variants() -> Vec<Variant> {
    let traceid_checks = [
        Check::UpstreamSaw("traceparent"),
        Check::ResponseHeader("x-trace-id"),
        Check::StatGrew("mesh_trace_requests_total;route=bench"),
    ];
    let canary_checks = [Check::StatGrew("mesh_canary_requests_total;route=bench")];
    let ratelimit_checks = [
        Check::ResponseHeader("x-ratelimit-limit"),
        Check::StatGrew("mesh_ratelimit_requests_total;route=bench;decision=allowed"),
    ];
    let breaker_checks = [Check::StatGrew(
        "mesh_breaker_requests_total;route=bench;outcome=success",
    )];
    let chain_checks: Vec<Check> = traceid_checks
        .iter()
        .chain(&canary_checks)
        .chain(&ratelimit_checks)
        .chain(&breaker_checks)
        .copied()
        .collect();
    vec![
        Variant {
            name: "bare",
            what: "no HTTP filter but the router",
            modules: vec![],
            native: vec![],
            checks: vec![],
            ours: false,
        },
        Variant {
            name: "passthrough",
            what: "empty proxy-wasm filter, SDK only",
            modules: vec![("passthrough", PASSTHROUGH)],
            native: vec![],
            checks: vec![],
            ours: false,
        },
        Variant {
            name: "traceid",
            what: "W3C traceparent + x-trace-id response header",
            modules: vec![("traceid", TRACEID)],
            native: vec![],
            checks: traceid_checks.to_vec(),
            ours: true,
        },
        Variant {
            name: "canary",
            what: "sticky 10 % split on x-user-id, one rule",
            modules: vec![("canary", CANARY)],
            native: vec![],
            checks: canary_checks.to_vec(),
            ours: true,
        },
        Variant {
            name: "ratelimit",
            what: "route + per-API-key buckets in shared data, all admitted",
            modules: vec![("ratelimit", RATELIMIT)],
            native: vec![],
            checks: ratelimit_checks.to_vec(),
            ours: true,
        },
        Variant {
            name: "breaker",
            what: "closed breaker, every call counted in shared data",
            modules: vec![("breaker", BREAKER)],
            native: vec![],
            checks: breaker_checks.to_vec(),
            ours: true,
        },
        Variant {
            name: "chain",
            what: "traceid, canary, ratelimit, breaker",
            modules: vec![
                ("traceid", TRACEID),
                ("canary", CANARY),
                ("ratelimit", RATELIMIT),
                ("breaker", BREAKER),
            ],
            native: vec![],
            checks: chain_checks,
            ours: false,
        },
        Variant {
            name: "local_ratelimit",
            what: "Envoy's native token bucket, all admitted",
            modules: vec![],
            native: vec![json!({
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "bench_local",
                    "token_bucket": {
                        "max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"
                    },
                    "filter_enabled": {
                        "runtime_key": "bench_local_enabled",
                        "default_value": { "numerator": 100, "denominator": "HUNDRED" }
                    },
                    "filter_enforced": {
                        "runtime_key": "bench_local_enforced",
                        "default_value": { "numerator": 100, "denominator": "HUNDRED" }
                    }
                }
            })],
            checks: vec![Check::StatGrew("bench_local.http_local_rate_limit.enabled")],
            ours: false,
        },
        Variant {
            name: "lua",
            what: "Lua filter adding a request header",
            modules: vec![],
            native: vec![json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": LUA_SOURCE }
                }
            })],
            checks: vec![Check::UpstreamSaw("x-lua")],
            ours: false,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The fixed fast upstream

/// `200 ok` for every request; `/smoke` also lists the request header names it received in
/// `x-seen`, so a run can prove what the filters added.
struct Upstream {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Result<Self, Error> {
        use axum::Router;
        use axum::http::HeaderMap;
        use axum::routing::get;

        async fn ok() -> &'static str {
            "ok"
        }
        async fn smoke(headers: HeaderMap) -> ([(&'static str, String); 1], &'static str) {
            let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
            ([("x-seen", names.join(","))], "ok")
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                let app = Router::new().route("/smoke", get(smoke)).fallback(ok);
                let served = runtime.block_on(async {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await
                });
                if let Err(err) = served {
                    eprintln!("bench upstream: {err}");
                }
            })?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The load generator

/// wrk's per-thread script: the same request stream for every variant (a user id out of
/// 1000 and an API key out of 16 per request). After `args[1]` responses the thread stops
/// and says so on stderr (unbuffered); wrk itself would sleep out its `-d`, so the driver
/// interrupts it then, and wrk prints the summary line from `done`.
const WRK_SCRIPT: &str = r#"
local limit, seen, n = 0, 0, 0
function init(args)
  limit = tonumber(args[1]) or 0
end
function request()
  n = n + 1
  return wrk.format("GET", "/", {["x-user-id"] = "user-" .. (n % 1000), ["x-api-key"] = "key-" .. (n % 16)})
end
function response(status, headers, body)
  seen = seen + 1
  if limit > 0 and seen == limit then
    io.stderr:write("DONE\n")
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

struct Load {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Runs wrk until `requests` responses arrived or `max_seconds` passed.
fn run_wrk(
    script: &Path,
    listener: SocketAddr,
    connections: u32,
    requests: u64,
    max_seconds: u64,
) -> Result<Load, Error> {
    let started = Instant::now();
    let mut child = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{max_seconds}s"),
        ])
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(format!("http://{listener}/"))
        .args(["--", &requests.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run wrk (scripts/bench.sh installs it): {e}"))?;
    let stderr = child.stderr.take().ok_or("no wrk stderr")?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut other = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line == "DONE" {
                let _ = done_tx.send(());
            } else {
                other.push_str(&line);
                other.push('\n');
            }
        }
        other
    });
    let grace = Duration::from_secs(max_seconds + 15);
    let finished = match done_rx.recv_timeout(grace) {
        Ok(()) => {
            let elapsed = started.elapsed();
            // SIGINT makes wrk stop at once and print its summary.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            Some(elapsed)
        }
        // wrk exited on its own (its -d ran out) or failed.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err("wrk did not finish in time".into());
        }
    };
    let output = child.wait_with_output()?;
    let errors = reader.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| format!("wrk printed no summary: {stdout}{errors}"))?;
    let field = |name: &str| -> Result<f64, Error> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("no {name} in wrk summary: {line}"))?
            .parse::<f64>()
            .map_err(Into::into)
    };
    let load = Load {
        requests: field("requests")? as u64,
        // Until the last awaited response; wrk's own duration when its -d ended the run.
        seconds: finished.map_or(field("duration_us")? / 1e6, |d| d.as_secs_f64()),
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        errors: field("errors")? as u64,
    };
    if finished.is_none() {
        eprintln!(
            "  (wrk stopped by its {max_seconds} s bound after {} requests)",
            load.requests
        );
    }
    if load.requests == 0 || load.seconds <= 0.0 {
        return Err(format!("wrk sent nothing: {line}").into());
    }
    Ok(load)
}

// ---------------------------------------------------------------------------------------
// Envoy as a process

/// utime + stime of the whole process (every thread), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    cpu_ticks_of(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `/proc/.../stat` file.
fn cpu_ticks_of(path: &str) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(path)?;
    // The command name may contain spaces: fields count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let tick = |i: usize| -> Result<u64, Error> {
        Ok(fields.get(i).ok_or("short /proc stat")?.parse::<u64>()?)
    };
    Ok(tick(11)? + tick(12)?)
}

/// CPU ticks of the thread named `wrk:worker_0` (Envoy's one worker) and of all the others
/// (main thread, V8's compiler threads...).
fn worker_and_other_ticks(pid: u32) -> Result<(u64, u64), Error> {
    let (mut worker, mut other) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Ok(tid) = task
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .parse::<u32>()
        else {
            continue;
        };
        let ticks = cpu_ticks_of(&format!("/proc/{pid}/task/{tid}/stat"))?;
        if name.trim() == "wrk:worker_0" {
            worker += ticks;
        } else {
            other += ticks;
        }
    }
    Ok((worker, other))
}

fn rss_kb(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

fn clock_ticks_per_second() -> Result<u64, Error> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The sum of every Envoy stat whose name contains `needle` (0 when none does); a needle
/// starting with `=` matches one name exactly.
fn stat_sum(agent: &ureq::Agent, admin: SocketAddr, needle: &str) -> Result<u64, Error> {
    let text = agent
        .get(format!("http://{admin}/stats"))
        .call()?
        .body_mut()
        .read_to_string()?;
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

/// Envoy's config for a variant: one route named [`ROUTE`] to the upstream.
fn envoy_config(variant: &Variant, upstream: SocketAddr) -> Result<String, Error> {
    let dist = envoy::dist_dir();
    let mut filters = Vec::new();
    for (module, plugin_json) in &variant.modules {
        let wasm = dist.join(format!("{module}.wasm"));
        if !wasm.is_file() {
            return Err(format!("{} is missing: run scripts/build.sh", wasm.display()).into());
        }
        filters.push(envoy::wasm_filter(module, &wasm, plugin_json));
    }
    filters.extend(variant.native.iter().cloned());
    let route = json!({
        "name": ROUTE,
        "match": { "prefix": "/" },
        "route": { "cluster": "upstream", "timeout": "15s" }
    });
    let config = envoy::bootstrap(
        filters,
        vec![route],
        vec![envoy::cluster("upstream", upstream)],
    );
    Ok(config.to_string())
}

/// One request through Envoy; checks what the variant promises to do to it.
fn smoke(agent: &ureq::Agent, envoy: &EnvoyProcess, variant: &Variant) -> Result<(), Error> {
    let response = agent
        .get(format!("http://{}/smoke", envoy.listener))
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

struct Sample {
    rps: f64,
    cpu_us_per_request: f64,
    /// Of that, Envoy's worker thread and every other thread (V8 compiling, main thread).
    worker_us: f64,
    other_us: f64,
    p50_us: f64,
    p99_us: f64,
    rss_kb: u64,
}

fn measure(
    variant: &Variant,
    upstream: SocketAddr,
    script: &Path,
    options: &Options,
    ticks_per_second: u64,
) -> Result<Sample, Error> {
    let config = envoy_config(variant, upstream)?;
    let envoy = EnvoyProcess::start(&config, "json", 1)?;
    let pid = envoy.pid();
    let agent = envoy::agent(Duration::from_secs(10));
    smoke(&agent, &envoy, variant)?;
    // Warm-up: V8 compiles at load, first requests bind routes and create shared data.
    run_wrk(
        script,
        envoy.listener,
        options.connections,
        options.warmup,
        options.max_seconds,
    )?;
    let stat_before: Vec<u64> = variant
        .checks
        .iter()
        .map(|c| match c {
            Check::StatGrew(needle) => stat_sum(&agent, envoy.admin, needle),
            _ => Ok(0),
        })
        .collect::<Result<_, _>>()?;
    let served_before = stat_sum(&agent, envoy.admin, "=http.ingress.downstream_rq_total")?;
    let refused = |agent: &ureq::Agent| -> Result<u64, Error> {
        Ok(
            stat_sum(agent, envoy.admin, "=http.ingress.downstream_rq_4xx")?
                + stat_sum(agent, envoy.admin, "=http.ingress.downstream_rq_5xx")?,
        )
    };
    let refused_before = refused(&agent)?;
    let perf = match &options.perf {
        Some(dir) => Some(start_perf(dir, variant.name, pid)?),
        None => None,
    };
    let threads_before = worker_and_other_ticks(pid)?;
    let cpu_before = cpu_ticks(pid)?;
    let load = run_wrk(
        script,
        envoy.listener,
        options.connections,
        options.requests,
        options.max_seconds,
    )?;
    let cpu_after = cpu_ticks(pid)?;
    let threads_after = worker_and_other_ticks(pid)?;
    if let Some(perf) = perf {
        stop_perf(perf)?;
    }
    let log_bytes = envoy.log().len();
    if log_bytes > 1_000_000 {
        eprintln!("  warning: Envoy logged {log_bytes} bytes: per-request log lines cost CPU");
    }
    let served =
        stat_sum(&agent, envoy.admin, "=http.ingress.downstream_rq_total")? - served_before;
    let refused = refused(&agent)? - refused_before;
    let rss = rss_kb(pid)?;
    // Requests still in flight when wrk stops are reset, not refused: only 4xx/5xx count.
    if load.errors > 0 || refused > 0 || served < load.requests {
        return Err(format!(
            "{}: {} wrk errors, {refused} of {served} requests answered 4xx/5xx (wrk counted {})",
            variant.name, load.errors, load.requests
        )
        .into());
    }
    for (check, before) in variant.checks.iter().zip(stat_before) {
        if let Check::StatGrew(needle) = check {
            let grown = stat_sum(&agent, envoy.admin, needle)? - before;
            if grown < load.requests {
                return Err(format!(
                    "{}: {needle} grew by {grown} for {} requests",
                    variant.name, load.requests
                )
                .into());
            }
        }
    }
    let cpu_seconds = (cpu_after - cpu_before) as f64 / ticks_per_second as f64;
    let per_request = |ticks: u64| ticks as f64 * 1e6 / ticks_per_second as f64 / served as f64;
    Ok(Sample {
        worker_us: per_request(threads_after.0.saturating_sub(threads_before.0)),
        other_us: per_request(threads_after.1.saturating_sub(threads_before.1)),
        rps: load.requests as f64 / load.seconds,
        cpu_us_per_request: cpu_seconds * 1e6 / served as f64,
        p50_us: load.p50_us,
        p99_us: load.p99_us,
        rss_kb: rss,
    })
}

/// `perf record` of the Envoy process, call graphs included.
fn start_perf(dir: &Path, name: &str, pid: u32) -> Result<std::process::Child, Error> {
    std::fs::create_dir_all(dir)?;
    let child = Command::new("perf")
        .args(["record", "-g", "-q", "-p", &pid.to_string(), "-o"])
        .arg(dir.join(format!("{name}.data")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run perf: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

fn stop_perf(mut perf: std::process::Child) -> Result<(), Error> {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while perf.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = perf.kill();
            let _ = perf.wait();
            return Err("perf did not stop".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Results

fn median(mut values: Vec<f64>) -> f64 {
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

/// A variant's medians; ratios and added CPU are taken per repetition against that
/// repetition's bare run, then the median of those.
struct Row {
    name: &'static str,
    what: &'static str,
    ours: bool,
    rps: f64,
    rps_vs_bare: f64,
    cpu_us: f64,
    added_us: f64,
    p50_us: f64,
    p99_us: f64,
    rss_mb: f64,
    module_bytes: u64,
}

fn module_bytes(variant: &Variant) -> u64 {
    let dist = envoy::dist_dir();
    variant
        .modules
        .iter()
        .filter_map(|(m, _)| std::fs::metadata(dist.join(format!("{m}.wasm"))).ok())
        .map(|meta| meta.len())
        .sum()
}

fn rows(variants: &[Variant], samples: &[Vec<Sample>]) -> Result<Vec<Row>, Error> {
    let bare = samples.first().ok_or("no bare runs")?;
    variants
        .iter()
        .zip(samples)
        .map(|(variant, runs)| {
            let paired = |f: &dyn Fn(&Sample, &Sample) -> f64| {
                median(runs.iter().zip(bare).map(|(s, b)| f(s, b)).collect())
            };
            Ok(Row {
                name: variant.name,
                what: variant.what,
                ours: variant.ours,
                rps: median(runs.iter().map(|s| s.rps).collect()),
                rps_vs_bare: paired(&|s, b| s.rps / b.rps),
                cpu_us: median(runs.iter().map(|s| s.cpu_us_per_request).collect()),
                added_us: paired(&|s, b| s.cpu_us_per_request - b.cpu_us_per_request),
                p50_us: median(runs.iter().map(|s| s.p50_us).collect()),
                p99_us: median(runs.iter().map(|s| s.p99_us).collect()),
                rss_mb: median(runs.iter().map(|s| s.rss_kb as f64 / 1024.0).collect()),
                module_bytes: module_bytes(variant),
            })
        })
        .collect()
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| variant | what | req/s | vs bare | Envoy CPU µs/req | added µs/req | p50 ms | p99 ms | RSS MB | module KB |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let module = if r.module_bytes == 0 {
            "–".to_owned()
        } else {
            format!("{:.1}", r.module_bytes as f64 / 1024.0)
        };
        let added = if r.name == "bare" {
            "–".to_owned()
        } else {
            format!("{:+.1}", r.added_us)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.1} | {added} | {:.2} | {:.2} | {:.1} | {module} |",
            r.name,
            r.what,
            r.rps,
            r.rps_vs_bare,
            r.cpu_us,
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.rss_mb
        );
    }
    out
}

/// The issue's targets, one line each: `PASS`/`FAIL`, what, the numbers.
fn targets(rows: &[Row]) -> Vec<(bool, String)> {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let mut out = Vec::new();
    if let Some(floor) = find("passthrough") {
        for r in rows.iter().filter(|r| r.ours) {
            let limit = 1.5 * floor.added_us;
            out.push((
                r.added_us <= limit,
                format!(
                    "{} adds at most 1.5× the pass-through's CPU: {:+.1} µs vs ≤ {limit:.1} µs",
                    r.name, r.added_us
                ),
            ));
        }
    }
    if let (Some(rl), Some(lua)) = (find("ratelimit"), find("lua")) {
        out.push((
            rl.added_us < lua.added_us,
            format!(
                "ratelimit costs less than the Lua header filter: {:+.1} µs vs {:+.1} µs",
                rl.added_us, lua.added_us
            ),
        ));
    }
    if let Some(chain) = find("chain") {
        out.push((
            chain.rps_vs_bare >= 0.6,
            format!(
                "four filters chained keep ≥ 0.6× bare Envoy's requests/s: {:.2}×",
                chain.rps_vs_bare
            ),
        ));
    }
    for module in ["traceid", "canary", "ratelimit", "breaker"] {
        let bytes = std::fs::metadata(envoy::dist_dir().join(format!("{module}.wasm")))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        out.push((
            bytes <= MODULE_BUDGET,
            format!("{module}.wasm ≤ 150 KB: {bytes} bytes"),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The machine

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_owned();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let envoy_version = command_line(&envoy::envoy_binary().to_string_lossy(), &["--version"]);
    let envoy_version = envoy_version
        .split_once("version: ")
        .map_or(envoy_version.as_str(), |(_, v)| v)
        .to_owned();
    format!(
        "- CPU: {model}, {cpus} logical CPUs\n\
         - memory: {memory}\n\
         - OS: {os}, kernel {}\n\
         - Envoy: {envoy_version}\n\
         - load generator: {}\n\
         - Rust: {}\n",
        command_line("uname", &["-r"]),
        command_line("wrk", &["-v"]),
        command_line("rustc", &["--version"]),
    )
}

// ---------------------------------------------------------------------------------------

fn main() {
    if let Err(err) = run() {
        eprintln!("bench: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let options = Options::parse()?;
    let mut variants = variants();
    if let Some(only) = &options.only {
        // The bare run stays: every other number is relative to it.
        variants.retain(|v| v.name == "bare" || only.iter().any(|o| o == v.name));
    }
    let ticks = clock_ticks_per_second()?;
    let script_dir = tempfile::Builder::new().prefix("mesh-bench-").tempdir()?;
    let script = script_dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let upstream = Upstream::start()?;
    let started = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_before = load_average();
    eprintln!("load average before: {load_before}");

    // One unmeasured run first: the first Envoy after a quiet spell runs measurably slower
    // (cold caches, CPU frequency), which would tilt the first repetition.
    if let Some(bare) = variants.first() {
        measure(bare, upstream.addr, &script, &options, ticks)?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for rep in 1..=options.repeat {
        for (variant, runs) in variants.iter().zip(samples.iter_mut()) {
            let sample = measure(variant, upstream.addr, &script, &options, ticks)
                .map_err(|e| format!("{} (repetition {rep}): {e}", variant.name))?;
            eprintln!(
                "  rep {rep} {:<16} {:>7.0} req/s  {:>6.1} µs/req (worker {:>6.1}, other {:>5.1})  p50 {:>5.2} ms  p99 {:>5.2} ms  RSS {:>5.1} MB  (load {})",
                variant.name,
                sample.rps,
                sample.cpu_us_per_request,
                sample.worker_us,
                sample.other_us,
                sample.p50_us / 1000.0,
                sample.p99_us / 1000.0,
                sample.rss_kb as f64 / 1024.0,
                load_average()
            );
            runs.push(sample);
        }
    }
    let load_after = load_average();
    let rows = rows(&variants, &samples)?;
    let table = table(&rows);
    let targets = targets(&rows);
    let mut target_lines = String::new();
    for (pass, line) in &targets {
        let _ = writeln!(
            target_lines,
            "- {} {line}",
            if *pass { "PASS" } else { "FAIL" }
        );
    }
    println!("{table}\n{target_lines}");

    if let Some(out) = &options.out {
        let report = format!(
            "# Benchmark results\n\n\
             Written by `scripts/bench.sh` ({started}). What it measures and how: README.md,\n\
             \"Benchmark\". Envoy `--concurrency 1` in front of a fixed upstream answering `200 ok`;\n\
             wrk with 1 thread and {} connections on loopback; per run {} warm-up requests, then\n\
             {} measured; {} repetitions, variants interleaved, medians. \"vs bare\" and \"added\"\n\
             are taken per repetition against that repetition's bare run. Envoy CPU is the\n\
             process's utime + stime over the measured requests; RSS after them.\n\n\
             ## Machine\n\n{}\
             - load average (1, 5, 15 min): {load_before} before, {load_after} after\n\n\
             ## Results\n\n{table}\n## Targets\n\n{target_lines}",
            options.connections,
            options.warmup,
            options.requests,
            options.repeat,
            machine(),
        );
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
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
    fn every_variant_is_named_once_and_bare_comes_first() {
        let variants = variants();
        assert_eq!(variants.first().map(|v| v.name), Some("bare"));
        let mut names: Vec<&str> = variants.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), variants.len());
    }

    #[test]
    fn policies_are_accepted_by_their_filters() {
        use mesh_policy::breaker::{BreakerConfig, BreakerPolicy};
        use mesh_policy::canary::{CanaryConfig, CanaryPolicy};
        use mesh_policy::config::{Envelope, FieldPath};
        use mesh_policy::ratelimit::{RateLimitConfig, RateLimitPolicy};
        use mesh_policy::trace::{TraceConfig, TracePolicy};

        let at = FieldPath::root();
        let trace = Envelope::<TraceConfig>::from_json(TRACEID.as_bytes()).unwrap();
        assert!(
            trace
                .compile(&at, TracePolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let canary = Envelope::<CanaryConfig>::from_json(CANARY.as_bytes()).unwrap();
        assert!(
            canary
                .compile(&at, CanaryPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let limits = Envelope::<RateLimitConfig>::from_json(RATELIMIT.as_bytes()).unwrap();
        assert!(
            limits
                .compile(&at, RateLimitPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let breaker = Envelope::<BreakerConfig>::from_json(BREAKER.as_bytes()).unwrap();
        assert!(
            breaker
                .compile(&at, BreakerPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
    }
}
