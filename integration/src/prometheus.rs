//! A real Prometheus (Debian's `prometheus` package) as a child process of the test.
//!
//! It listens on 127.0.0.1:0 and learns its port from its own log line ("Listening on"), so
//! tests never race for ports. It scrapes the given Envoy admin addresses at
//! `/stats/prometheus` every [`SCRAPE_INTERVAL`] and evaluates the given rule files as
//! often. Tests wait for data by polling its HTTP API (bounded), never by sleeping a guess:
//! [`Prometheus::wait_for_scrape_after`] returns once every target has been scraped after a
//! moment the test chose. Killed by its PID on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::envoy::{StartError, agent};

/// How often targets are scraped and rules evaluated.
pub const SCRAPE_INTERVAL: &str = "1s";
/// How long any wait on Prometheus may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

/// The Prometheus binary: `MESH_PROMETHEUS`, else `prometheus` on the `PATH`.
pub fn prometheus_binary() -> PathBuf {
    std::env::var_os("MESH_PROMETHEUS").map_or_else(|| PathBuf::from("prometheus"), PathBuf::from)
}

/// `promtool`, from the same package: `MESH_PROMTOOL`, else `promtool` on the `PATH`.
pub fn promtool_binary() -> PathBuf {
    std::env::var_os("MESH_PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from)
}

/// A scrape job: a name and the Envoy admin addresses it scrapes.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

impl Job {
    pub fn new(name: &str, targets: &[SocketAddr]) -> Self {
        Self {
            name: name.to_owned(),
            targets: targets.to_vec(),
        }
    }
}

/// One series of an instant query: its labels (`__name__` included when kept) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// Labels of a series, as the API returns them.
pub type Labels = serde_json::Map<String, Value>;

/// One series of a range query: its labels and its values, oldest first.
pub type Series = (Labels, Vec<f64>);

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

/// Prometheus as a child process of the test.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` and evaluating `rule_files`, and waits until it is
    /// ready.
    pub fn start(jobs: &[Job], rule_files: &[&Path]) -> Result<Self, StartError> {
        let fail = |reason: String| StartError {
            reason,
            log: String::new(),
        };
        let dir = tempfile::Builder::new()
            .prefix("mesh-prometheus-")
            .tempdir()
            .map_err(|e| fail(format!("tempdir: {e}")))?;
        let scrape_configs: Vec<Value> = jobs
            .iter()
            .map(|job| {
                let targets: Vec<String> = job.targets.iter().map(ToString::to_string).collect();
                json!({
                    "job_name": job.name,
                    "metrics_path": "/stats/prometheus",
                    "static_configs": [{ "targets": targets }]
                })
            })
            .collect();
        let rule_files: Vec<String> = rule_files.iter().map(|p| p.display().to_string()).collect();
        // JSON is YAML: no YAML writer needed.
        let config = json!({
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL
            },
            "rule_files": rule_files,
            "scrape_configs": scrape_configs
        });
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config.to_string())
            .map_err(|e| fail(format!("write config: {e}")))?;
        let log_path = dir.path().join("prometheus.log");
        let log = fs::File::create(&log_path).map_err(|e| fail(format!("log file: {e}")))?;
        let binary = prometheus_binary();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run {} (scripts/test.sh installs Debian's prometheus): {e}",
                    binary.display()
                ))
            })?;
        let mut prometheus = Self {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent: agent(Duration::from_secs(10)),
        };
        match prometheus.wait_ready() {
            Ok(()) => Ok(prometheus),
            Err(reason) => Err(StartError {
                reason,
                log: prometheus.log(),
            }),
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("prometheus exited during startup: {status}"));
            }
            if self.addr.port() == 0
                && let Some(addr) = listening_address(&self.log())
            {
                self.addr = addr;
            }
            if self.addr.port() != 0 {
                let ready = self
                    .agent
                    .get(format!("http://{}/-/ready", self.addr))
                    .call()
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("prometheus not ready after {WAIT:?}"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with query parameters; the `data` of a successful answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let mut request = self
            .agent
            .get(format!("http://{}/api/v1/{path}", self.addr));
        for (name, value) in params {
            request = request.query(*name, *value);
        }
        let mut response = request.call().map_err(|e| format!("{path}: {e}"))?;
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{path}: {e}"))?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{path} {params:?}: {body}"));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query at the current time.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let data = self.api("query", &[("query", promql)])?;
        let result = data["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .iter()
            .map(|series| Sample {
                labels: series["metric"].as_object().cloned().unwrap_or_default(),
                value: number(&series["value"][1]),
            })
            .collect())
    }

    /// A range query over `[start, now]` with `step`; each series as labels and its values.
    pub fn query_range(
        &self,
        promql: &str,
        start: SystemTime,
        step: &str,
    ) -> Result<Vec<Series>, String> {
        let start = unix_seconds(start).to_string();
        let end = unix_seconds(SystemTime::now()).to_string();
        let data = self.api(
            "query_range",
            &[
                ("query", promql),
                ("start", &start),
                ("end", &end),
                ("step", step),
            ],
        )?;
        let result = data["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .iter()
            .map(|series| {
                let values = series["values"]
                    .as_array()
                    .map(|points| points.iter().map(|p| number(&p[1])).collect())
                    .unwrap_or_default();
                (
                    series["metric"].as_object().cloned().unwrap_or_default(),
                    values,
                )
            })
            .collect())
    }

    /// Polls `check` until it returns `Some` (bounded by [`WAIT`]); `what` names it in the
    /// failure.
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut(&Self) -> Option<T>) -> T {
        self.poll(check).unwrap_or_else(|| {
            panic!(
                "waited {WAIT:?} for {what}\n--- prometheus log ---\n{}",
                self.log()
            )
        })
    }

    /// Polls `check` until it returns `Some`, for at most [`WAIT`].
    pub fn poll<T>(&self, mut check: impl FnMut(&Self) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = check(self) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every target of `job` has been scraped (successfully) at or after `t`:
    /// the scrape then holds everything Envoy had counted by `t`.
    pub fn wait_for_scrape_after(&self, job: &str, targets: usize, t: SystemTime) {
        let t = unix_seconds(t);
        // `timestamp()` of a plain selector is the sample's (the scrape's) time; of anything
        // else it is the evaluation time, so the health check is a query of its own.
        let scraped_at = format!(r#"timestamp(up{{job="{job}"}})"#);
        let up = format!(r#"up{{job="{job}"}}"#);
        self.wait_for(&format!("a scrape of job {job} after {t}"), |p| {
            let samples = p.query(&scraped_at).ok()?;
            (samples.len() == targets && samples.iter().all(|s| s.value >= t)).then_some(())
        });
        let health = self.query(&up).unwrap_or_default();
        assert!(
            health.len() == targets && health.iter().all(|s| s.value == 1.0),
            "job {job}: a target is down: {health:?}"
        );
    }

    /// The active alerts (`pending` or `firing`), as Prometheus reports them.
    pub fn alerts(&self) -> Vec<Value> {
        self.api("alerts", &[])
            .ok()
            .and_then(|data| data["alerts"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        // Only our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in Prometheus' `msg="Listening on" address=127.0.0.1:40007` log line.
fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains(r#"msg="Listening on""#))
        .find_map(|line| {
            let (_, rest) = line.split_once(" address=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// A sample value: Prometheus writes numbers as strings (`"1"`, `"NaN"`, `"+Inf"`).
fn number(value: &Value) -> f64 {
    match value.as_str() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(text) => text.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_address_from_the_log() {
        let log = "ts=2026-11-26T01:50:32.513Z caller=web.go:503 level=info component=web msg=\"Start listening for connections\" address=127.0.0.1:0\n\
                   ts=2026-11-26T01:50:32.529Z caller=tls_config.go:232 level=info component=web msg=\"Listening on\" address=127.0.0.1:40007\n";
        assert_eq!(
            listening_address(log),
            Some("127.0.0.1:40007".parse().unwrap())
        );
        assert_eq!(
            listening_address("msg=\"Start listening\" address=127.0.0.1:0"),
            None
        );
    }

    #[test]
    fn numbers_come_as_strings() {
        assert_eq!(number(&json!("3")), 3.0);
        assert_eq!(number(&json!("+Inf")), f64::INFINITY);
        assert!(number(&json!("NaN")).is_nan());
    }
}
