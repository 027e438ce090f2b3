//! The load generator: wrk, bounded in requests and in time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// wrk's per-thread script: the same request stream for every variant (a user id out of
/// 1000 and an API key out of 16 per request, built once in `init`, so wrk spends little
/// per request). After sending `args[1]` requests the thread says so on stderr (unbuffered)
/// and stops; wrk itself would sleep out its `-d`, so the driver interrupts it then, and wrk
/// prints the summary line from `done`.
pub const WRK_SCRIPT: &str = r#"
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

pub struct Load {
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Runs wrk until `requests` responses arrived or `max_seconds` passed.
pub fn run_wrk(
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
