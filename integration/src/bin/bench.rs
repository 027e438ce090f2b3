//! `bench`: what each filter costs Envoy, next to bare Envoy, Lua and native local_ratelimit.
//!
//! Run by `scripts/bench.sh` (not a test: timings are never a pass condition of a test).
//! For every variant (no filter, the SDK-only pass-through module, each of our four filters
//! with a realistic policy, all four chained, the four as stages of the bundle module,
//! Envoy's `local_ratelimit`, a Lua filter adding a header) it starts Envoy with `--concurrency 1` in front of a fixed fast upstream, checks
//! that the filters really run and warms up (V8 compiles modules at load).
//!
//! That Envoy has two listeners: the variant's filter chain, and a bare one (router only).
//! wrk sends a fixed number of requests (bounded in time too) in windows that alternate
//! between them (bare, variant, variant, bare, ...), and Envoy's CPU time is read around each
//! window. On a shared machine the CPU time a request takes drifts by tens of percent from
//! one second to the next; a variant compared with the bare listener of the same process a
//! moment apart keeps that drift out of "added µs per request". Three repetitions (a fresh
//! Envoy each), variants interleaved, medians reported; prints a markdown table and the
//! targets, and writes the results file.
//!
//! Everything listens on 127.0.0.1; every process started here is stopped by its own handle.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_integration::envoy::{self, EnvoyProcess};
use mesh_integration::rls::{Redis, Rls, RlsLimit};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

/// The route every request takes; the policies are written for it by name.
const ROUTE: &str = "bench";

/// What `scripts/build.sh` enforces.
const MODULE_BUDGET: u64 = 150 * 1024;
/// `scripts/build.sh`'s budget for `dist/bundle.wasm`.
const BUNDLE_BUDGET: u64 = 200 * 1024;

const USAGE: &str = "usage: bench [--requests N] [--windows N] [--warmup N] [--connections N]
             [--repeat N] [--max-seconds N] [--only name,name] [--copies N] [--out FILE]";

struct Options {
    /// Measured requests per variant and repetition, on each listener.
    requests: u64,
    /// Window pairs those requests are split into.
    windows: u64,
    warmup: u64,
    connections: u32,
    repeat: usize,
    max_seconds: u64,
    only: Option<Vec<String>>,
    /// Each of a variant's modules this many times in its chain (distinct plugins): a
    /// module's marginal cost, measured that many times over. Targets are judged at 1 only.
    copies: usize,
    out: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self, Error> {
        let mut options = Self {
            requests: 30_000,
            windows: 5,
            warmup: 5_000,
            connections: 32,
            repeat: 3,
            max_seconds: 60,
            only: None,
            copies: 1,
            out: None,
        };
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
                "--out" => options.out = Some(PathBuf::from(value()?)),
                _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
            }
        }
        if options.requests == 0
            || options.repeat == 0
            || options.connections == 0
            || options.copies == 0
        {
            return Err(format!(
                "requests, repeat, connections and copies must be positive\n{USAGE}"
            )
            .into());
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------
// Variants

/// The variants' policies (the crossing budgets, `filters/bundle/tests/budget.rs`, use the
/// same file): a route-wide and a per-API-key limit far above the load, a sticky 10 % canary
/// split with one rule the load never matches, a breaker that stays closed, one global limit.
const POLICIES: &str = include_str!("../../../bench/policies.json");

/// The policy of `name` in [`POLICIES`], as plugin JSON.
fn policy(name: &str) -> &'static str {
    let policies: Value = serde_json::from_str(POLICIES).unwrap_or(Value::Null);
    let json = policies.get(name).map(Value::to_string).unwrap_or_default();
    json.leak()
}

/// The `chain` variant's four policies as the bundle's plugin JSON.
fn bundle_json() -> &'static str {
    let stages: serde_json::Map<String, Value> = ["traceid", "canary", "ratelimit", "breaker"]
        .into_iter()
        .map(|stage| {
            let value = serde_json::from_str(policy(stage)).unwrap_or(Value::Null);
            (stage.to_owned(), value)
        })
        .collect();
    Value::Object(stages).to_string().leak()
}

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
    /// Needs the rate limit service (cluster `rls`: limitador over a local Redis).
    rls: bool,
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
        "mesh_breaker_calls_total;route=bench;outcome=success",
    )];
    let chain_checks: Vec<Check> = traceid_checks
        .iter()
        .chain(&canary_checks)
        .chain(&ratelimit_checks)
        .chain(&breaker_checks)
        .copied()
        .collect();
    let chain_checks_bundle = chain_checks.clone();
    vec![
        Variant {
            name: "bare",
            what: "no HTTP filter but the router",
            modules: vec![],
            native: vec![],
            checks: vec![],
            ours: false,
            rls: false,
        },
        Variant {
            name: "passthrough",
            what: "empty proxy-wasm filter, SDK only",
            modules: vec![("passthrough", "")],
            native: vec![],
            checks: vec![],
            ours: false,
            rls: false,
        },
        Variant {
            name: "traceid",
            what: "W3C traceparent + x-trace-id response header",
            modules: vec![("traceid", policy("traceid"))],
            native: vec![],
            checks: traceid_checks.to_vec(),
            ours: true,
            rls: false,
        },
        Variant {
            name: "canary",
            what: "sticky 10 % split on x-user-id, one rule",
            modules: vec![("canary", policy("canary"))],
            native: vec![],
            checks: canary_checks.to_vec(),
            ours: true,
            rls: false,
        },
        Variant {
            name: "ratelimit",
            what: "route + per-API-key buckets in shared data, all admitted",
            modules: vec![("ratelimit", policy("ratelimit"))],
            native: vec![],
            checks: ratelimit_checks.to_vec(),
            ours: true,
            rls: false,
        },
        Variant {
            name: "ratelimit_global",
            what: "one global limit: a gRPC call per request to a local rate limit service",
            modules: vec![("ratelimit", policy("ratelimit_global"))],
            native: vec![],
            checks: vec![
                Check::UpstreamSaw(mesh_integration::rls::REQUEST_HEADER),
                Check::StatGrew("mesh_ratelimit_global_calls_total;route=bench;outcome=ok"),
            ],
            ours: true,
            rls: true,
        },
        Variant {
            name: "breaker",
            what: "closed breaker, every call counted in shared data",
            modules: vec![("breaker", policy("breaker"))],
            native: vec![],
            checks: breaker_checks.to_vec(),
            ours: true,
            rls: false,
        },
        Variant {
            name: "chain",
            what: "traceid, canary, ratelimit, breaker",
            modules: vec![
                ("traceid", policy("traceid")),
                ("canary", policy("canary")),
                ("ratelimit", policy("ratelimit")),
                ("breaker", policy("breaker")),
            ],
            native: vec![],
            checks: chain_checks,
            ours: false,
            rls: false,
        },
        Variant {
            name: "bundle",
            what: "the four as stages of dist/bundle.wasm",
            modules: vec![("bundle", bundle_json())],
            native: vec![],
            checks: chain_checks_bundle,
            ours: false,
            rls: false,
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
            rls: false,
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
            rls: false,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The fixed fast upstream

/// `200 ok` for every request; `/smoke` also lists the request header names it received in
/// `x-seen`, so a run can prove what the filters added.
///
/// A canned HTTP/1.1 responder rather than axum: the upstream shares two CPUs with Envoy and
/// wrk, so the less it costs the less it disturbs Envoy's numbers. It serves what the
/// benchmark sends (GET, no body, keep-alive) and nothing else.
struct Upstream {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// The answer to one request head (`GET ... HTTP/1.1` up to the blank line).
fn upstream_response(head: &[u8]) -> Vec<u8> {
    if !head.starts_with(b"GET /smoke") {
        return OK_RESPONSE.to_vec();
    }
    let names: Vec<String> = String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-seen: {}\r\ncontent-length: 2\r\n\r\nok",
        names.join(",")
    )
    .into_bytes()
}

/// Answers every request head on one connection until the peer closes it.
async fn serve_connection(socket: tokio::net::TcpStream) -> std::io::Result<()> {
    use std::io::ErrorKind::WouldBlock;
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        socket.readable().await?;
        let read = match socket.try_read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => continue,
            Err(e) => return Err(e),
        };
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buffer.drain(..end + 4).collect();
            out.extend_from_slice(&upstream_response(&head));
        }
        let mut written = 0;
        while written < out.len() {
            socket.writable().await?;
            match socket.try_write(out.get(written..).unwrap_or_default()) {
                Ok(n) => written += n,
                Err(e) if e.kind() == WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        out.clear();
        if buffer.len() > 64 * 1024 {
            return Ok(()); // not what the benchmark sends
        }
    }
}

impl Upstream {
    fn start() -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                runtime.block_on(async {
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => {
                                    let _ = socket.set_nodelay(true);
                                    tokio::spawn(async move {
                                        let _ = serve_connection(socket).await;
                                    });
                                }
                                Err(err) => {
                                    eprintln!("bench upstream: {err}");
                                    break;
                                }
                            },
                        }
                    }
                });
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
/// 1000 and an API key out of 16 per request, built once in `init`, so wrk spends little
/// per request). After sending `args[1]` requests the thread says so on stderr (unbuffered)
/// and stops; wrk itself would sleep out its `-d`, so the driver interrupts it then, and wrk
/// prints the summary line from `done`.
const WRK_SCRIPT: &str = r#"
local requests, count, limit, n = {}, 1000, 0, 0
function init(args)
  limit = tonumber(args[1]) or 0
  for i = 1, count do
    requests[i] = wrk.format("GET", "/", {["x-user-id"] = "user-" .. i, ["x-api-key"] = "key-" .. (i % 16)})
  end
end
function request()
  n = n + 1
  if limit > 0 and n == limit then
    io.stderr:write("DONE\n")
    wrk.thread:stop()
  end
  return requests[n % count + 1]
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

/// CPU time of the whole process (every thread), in nanoseconds: the sum of its threads'
/// `/proc/<pid>/task/<tid>/schedstat` run times. The same quantity as utime + stime, at
/// nanosecond rather than clock-tick resolution (short windows need it).
fn process_cpu_ns(pid: u32) -> Result<u64, Error> {
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

fn rss_kb(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// The body of Envoy's admin page `path`.
fn admin_text(agent: &ureq::Agent, admin: SocketAddr, path: &str) -> Result<String, Error> {
    Ok(agent
        .get(format!("http://{admin}{path}"))
        .call()?
        .body_mut()
        .read_to_string()?)
}

/// The sum of every Envoy stat whose name contains `needle` (0 when none does); a needle
/// starting with `=` matches one name exactly.
fn stat_sum(agent: &ureq::Agent, admin: SocketAddr, needle: &str) -> Result<u64, Error> {
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

/// The two listeners of a run: the variant's chain and the bare one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bare,
    Variant,
}

impl Side {
    /// The connection manager's stat prefix (`http.<prefix>.downstream_rq_total`).
    fn stat_prefix(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Variant => "ingress",
        }
    }
}

/// Envoy's config for a variant: its filters on the first listener, none on a second one
/// named `bare`; both take the one route named [`ROUTE`] to the upstream. Each module
/// appears `copies` times, as plugins of their own (own name and root id: own root context,
/// stats and shared-data keys) in one VM.
fn envoy_config(
    variant: &Variant,
    upstream: SocketAddr,
    rls: Option<SocketAddr>,
    copies: usize,
) -> Result<String, Error> {
    let dist = envoy::dist_dir();
    let mut filters = Vec::new();
    for (module, plugin_json) in &variant.modules {
        let wasm = dist.join(format!("{module}.wasm"));
        if !wasm.is_file() {
            return Err(format!("{} is missing: run scripts/build.sh", wasm.display()).into());
        }
        for copy in 0..copies {
            let name = match copy {
                0 => (*module).to_owned(),
                _ => format!("{module}.{copy}"),
            };
            filters.push(envoy::wasm_filter(&name, &wasm, plugin_json));
        }
    }
    filters.extend(variant.native.iter().cloned());
    let route = || {
        json!({
            "name": ROUTE,
            "match": { "prefix": "/" },
            "route": { "cluster": "upstream", "timeout": "15s" }
        })
    };
    let cluster = || vec![envoy::cluster("upstream", upstream)];
    let mut clusters = cluster();
    if variant.rls {
        let rls = rls.ok_or("the rate limit service is not running")?;
        clusters.push(envoy::grpc_cluster("rls", Some(rls)));
    }
    let mut config = envoy::bootstrap(filters, vec![route()], clusters);
    let mut bare = envoy::bootstrap(Vec::new(), vec![route()], cluster())
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

/// The address Envoy bound the listener `name` to.
fn listener_address(
    agent: &ureq::Agent,
    admin: SocketAddr,
    name: &str,
) -> Result<SocketAddr, Error> {
    let text = admin_text(agent, admin, "/listeners?format=json")?;
    let listeners: Value = serde_json::from_str(&text)?;
    let socket = listeners
        .pointer("/listener_statuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|l| l.pointer("/local_address/socket_address"))
        .ok_or_else(|| format!("no listener {name}"))?;
    let address = socket
        .get("address")
        .and_then(Value::as_str)
        .ok_or("no listener address")?;
    let port = socket
        .get("port_value")
        .and_then(Value::as_u64)
        .ok_or("no listener port")?;
    Ok(format!("{address}:{port}").parse()?)
}

/// One request through Envoy; checks what the variant promises to do to it.
fn smoke(agent: &ureq::Agent, listener: SocketAddr, variant: &Variant) -> Result<(), Error> {
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
struct Window {
    /// Responses wrk received (requests it sent but stopped before are not among them).
    answered: u64,
    rps: f64,
    cpu_us_per_request: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs one window and checks that every request was answered by the upstream.
fn window(
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
struct Sample {
    /// The variant listener.
    rps: f64,
    cpu_us_per_request: f64,
    p50_us: f64,
    p99_us: f64,
    /// The bare listener of the same Envoy.
    bare_cpu_us_per_request: f64,
    /// Window pairs: variant minus the bare window next to it.
    added_us: f64,
    rps_vs_bare: f64,
    rss_kb: u64,
    heap: Heap,
}

/// Envoy's heap as its allocator (tcmalloc) reports it on the admin `/memory` page.
#[derive(Clone, Copy)]
struct Heap {
    /// Bytes in live allocations.
    allocated: u64,
    /// Bytes freed but kept, resident, by the allocator: what its heap holds beyond the live
    /// allocations and the pages it gave back (free pages, central and per-thread free
    /// lists). Envoy returns the free pages to the system only when its bootstrap asks
    /// (`memory_allocator_manager`).
    kept_free: u64,
}

/// Envoy's admin `/memory`: numbers as JSON strings.
fn heap(agent: &ureq::Agent, admin: SocketAddr) -> Result<Heap, Error> {
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

fn measure(
    variant: &Variant,
    upstream: SocketAddr,
    rls: Option<SocketAddr>,
    script: &Path,
    options: &Options,
) -> Result<Sample, Error> {
    let config = envoy_config(variant, upstream, rls, options.copies)?;
    // Envoy's default level for the modules, as in production: their per-request debug
    // lines are not formatted.
    let log_level = ["--component-log-level".to_owned(), "wasm:info".to_owned()];
    let envoy = EnvoyProcess::start(&config, "json", 1, &log_level)?;
    let pid = envoy.pid();
    let admin = envoy.admin;
    let agent = envoy::agent(Duration::from_secs(10));
    let listeners = [
        (Side::Variant, envoy.listener),
        (Side::Bare, listener_address(&agent, admin, "bare")?),
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
    let stat_before: Vec<u64> = variant
        .checks
        .iter()
        .map(|c| match c {
            Check::StatGrew(needle) => stat_sum(&agent, admin, needle),
            _ => Ok(0),
        })
        .collect::<Result<_, _>>()?;
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
            let measured = window(side, listener, pid, &agent, admin, script, options)
                .map_err(|e| format!("{}: {e}", variant.name))?;
            match side {
                Side::Bare => bare.push(measured),
                Side::Variant => ours.push(measured),
            }
        }
    }
    // Every answered request went through the filters; wrk stops with a few sent but unanswered.
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
    Ok(Sample {
        rps: of(&ours, |w| w.rps),
        cpu_us_per_request: of(&ours, |w| w.cpu_us_per_request),
        p50_us: of(&ours, |w| w.p50_us),
        p99_us: of(&ours, |w| w.p99_us),
        bare_cpu_us_per_request: of(&bare, |w| w.cpu_us_per_request),
        added_us: pairs(|v, b| v.cpu_us_per_request - b.cpu_us_per_request),
        rps_vs_bare: pairs(|v, b| v.rps / b.rps),
        rss_kb: rss_kb(pid)?,
        heap: heap(&agent, admin)?,
    })
}

// ---------------------------------------------------------------------------------------
// Results

const MB: f64 = 1024.0 * 1024.0;

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

/// A variant's medians over its repetitions.
struct Row {
    name: &'static str,
    what: &'static str,
    ours: bool,
    rps: f64,
    rps_vs_bare: f64,
    cpu_us: f64,
    bare_cpu_us: f64,
    added_us: f64,
    p50_us: f64,
    p99_us: f64,
    rss_mb: f64,
    /// RSS less what the allocator keeps free.
    in_use_mb: f64,
    heap_mb: f64,
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

fn rows(variants: &[Variant], samples: &[Vec<Sample>]) -> Vec<Row> {
    variants
        .iter()
        .zip(samples)
        .map(|(variant, runs)| {
            let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
            Row {
                name: variant.name,
                what: variant.what,
                ours: variant.ours,
                rps: m(|s| s.rps),
                rps_vs_bare: m(|s| s.rps_vs_bare),
                cpu_us: m(|s| s.cpu_us_per_request),
                bare_cpu_us: m(|s| s.bare_cpu_us_per_request),
                added_us: m(|s| s.added_us),
                p50_us: m(|s| s.p50_us),
                p99_us: m(|s| s.p99_us),
                rss_mb: m(|s| s.rss_kb as f64 / 1024.0),
                in_use_mb: m(|s| s.rss_kb as f64 / 1024.0 - s.heap.kept_free as f64 / MB),
                heap_mb: m(|s| s.heap.allocated as f64 / MB),
                module_bytes: module_bytes(variant),
            }
        })
        .collect()
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| variant | what | req/s | vs bare | Envoy CPU µs/req | bare listener µs/req | added µs/req | p50 ms | p99 ms | RSS MB | in use MB | heap MB | module KB |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let module = if r.module_bytes == 0 {
            "–".to_owned()
        } else {
            format!("{:.1}", r.module_bytes as f64 / 1024.0)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:+.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {module} |",
            r.name,
            r.what,
            r.rps,
            r.rps_vs_bare,
            r.cpu_us,
            r.bare_cpu_us,
            r.added_us,
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.rss_mb,
            r.in_use_mb,
            r.heap_mb
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
    if let (Some(bundle), Some(floor)) = (find("bundle"), find("passthrough")) {
        let limit = 2.0 * floor.added_us;
        out.push((
            bundle.added_us <= limit,
            format!(
                "the bundle (four stages) adds at most 2× the pass-through's CPU: {:+.1} µs vs ≤ {limit:.1} µs",
                bundle.added_us
            ),
        ));
    }
    if let Some(bundle) = find("bundle") {
        out.push((
            bundle.rps_vs_bare >= 0.8,
            format!(
                "the bundle keeps ≥ 0.8× bare Envoy's requests/s: {:.2}×",
                bundle.rps_vs_bare
            ),
        ));
    }
    if let (Some(bundle), Some(floor), Some(bare)) =
        (find("bundle"), find("passthrough"), find("bare"))
    {
        // One module's memory: the bundle's VMs cost about what one module's do (above the
        // bare Envoy), where the chain pays for four. Judged on RSS, and on RSS less what the
        // allocator keeps free: most of a module's RSS beyond the pass-through's is the
        // scratch memory of compiling it, freed and kept by tcmalloc (README, "Benchmark").
        type Measure = fn(&Row) -> f64;
        let measures: [(&str, Measure); 2] = [
            ("the bundle needs one module's memory: RSS", |r| r.rss_mb),
            (
                "the bundle needs one module's memory in use (RSS less what the allocator holds free):",
                |r| r.in_use_mb,
            ),
        ];
        for (what, mb) in measures {
            let over_bare = |row: &Row| mb(row) - mb(bare);
            let one = over_bare(floor);
            let limit = 1.5 * one;
            let chain = find("chain").map_or(String::new(), |c| {
                format!(", chain {:+.1} MB", over_bare(c))
            });
            out.push((
                over_bare(bundle) <= limit,
                format!(
                    "{what} {:+.1} MB over bare vs ≤ {limit:.1} MB (1.5× pass-through's {one:+.1} MB{chain})",
                    over_bare(bundle)
                ),
            ));
        }
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
    if find("bundle").is_some() {
        let bytes = std::fs::metadata(envoy::dist_dir().join("bundle.wasm"))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        out.push((
            bytes <= BUNDLE_BUDGET,
            format!("bundle.wasm ≤ 200 KB: {bytes} bytes"),
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
        // The bare run stays: it is the first (unmeasured) run and the table's reference.
        variants.retain(|v| v.name == "bare" || only.iter().any(|o| o == v.name));
    }
    let script_dir = tempfile::Builder::new().prefix("mesh-bench-").tempdir()?;
    let script = script_dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let upstream = Upstream::start()?;
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
    let started = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_before = load_average();
    eprintln!("load average before: {load_before}");

    // One unmeasured run first: the first Envoy after a quiet spell runs measurably slower
    // (cold caches, CPU frequency), which would tilt the first repetition.
    if let Some(bare) = variants.first() {
        measure(bare, upstream.addr, None, &script, &options)?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for rep in 1..=options.repeat {
        for (variant, runs) in variants.iter().zip(samples.iter_mut()) {
            let sample = measure(variant, upstream.addr, rls_addr, &script, &options)
                .map_err(|e| format!("{} (repetition {rep}): {e}", variant.name))?;
            eprintln!(
                "  rep {rep} {:<16} {:>7.0} req/s ({:.2}× bare)  {:>6.1} µs/req (bare listener {:>6.1}, added {:>+6.1})  p50 {:>5.2} ms  p99 {:>5.2} ms  RSS {:>5.1} MB (heap {:>4.1}, kept free {:>4.1})  (load {})",
                variant.name,
                sample.rps,
                sample.rps_vs_bare,
                sample.cpu_us_per_request,
                sample.bare_cpu_us_per_request,
                sample.added_us,
                sample.p50_us / 1000.0,
                sample.p99_us / 1000.0,
                sample.rss_kb as f64 / 1024.0,
                sample.heap.allocated as f64 / MB,
                sample.heap.kept_free as f64 / MB,
                load_average()
            );
            runs.push(sample);
        }
    }
    let load_after = load_average();
    let rows = rows(&variants, &samples);
    let mut table = table(&rows);
    if options.copies > 1 {
        table = format!(
            "Each module {n} times in its chain (`--copies {n}`); targets are judged at one copy only.\n\n{table}",
            n = options.copies
        );
    }
    // The targets are about one module each.
    let targets = if options.copies == 1 {
        targets(&rows)
    } else {
        Vec::new()
    };
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
             Written by `scripts/bench.sh` ({started}); what it measures and how: README.md,\n\
             \"Benchmark\". Envoy `--concurrency 1` in front of a fixed upstream answering `200 ok`,\n\
             wrk with 1 thread and {} connections on loopback. Each Envoy has two listeners, the\n\
             variant's filters and a bare one; after {} warm-up requests on each, {} measured\n\
             requests per listener in {} window pairs alternating between them. Envoy CPU is the\n\
             process's CPU time (all threads; utime + stime, read at ns resolution from\n\
             schedstat) over a window divided by the requests Envoy served in it; \"added\" and\n\
             \"vs bare\" compare each variant window with the bare window next to it. Medians over\n\
             windows, then over {} repetitions (a fresh Envoy each, variants interleaved). RSS\n\
             after the run; \"in use\" is RSS less what Envoy's allocator holds free (its resident\n\
             heap less live allocations), \"heap\" those allocations (both from admin `/memory`).\n\
             The bare row compares two bare listeners: its \"added\" is the method's noise.\n\n\
             ## Machine\n\n{}\
             - load average (1, 5, 15 min): {load_before} before, {load_after} after (the\n  \
             benchmark itself keeps about one CPU busy)\n\n\
             ## Results\n\n{table}\n## Targets\n\n{target_lines}",
            options.connections,
            options.warmup,
            options.requests / options.windows * options.windows,
            options.windows,
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
        let trace = Envelope::<TraceConfig>::from_json(policy("traceid").as_bytes()).unwrap();
        assert!(
            trace
                .compile(&at, TracePolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let canary = Envelope::<CanaryConfig>::from_json(policy("canary").as_bytes()).unwrap();
        assert!(
            canary
                .compile(&at, CanaryPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let limits =
            Envelope::<RateLimitConfig>::from_json(policy("ratelimit").as_bytes()).unwrap();
        assert!(
            limits
                .compile(&at, RateLimitPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
        let breaker = Envelope::<BreakerConfig>::from_json(policy("breaker").as_bytes()).unwrap();
        assert!(
            breaker
                .compile(&at, BreakerPolicy::compile)
                .unwrap()
                .policy_for(ROUTE)
                .is_some()
        );
    }
}
