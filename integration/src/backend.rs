//! What both Envoy backends (the process in `envoy.rs`, the container in `container.rs`)
//! share: Envoy's arguments, a scratch directory, the readiness wait ([`READY_LINE`], then
//! admin `/ready`), the listener's address from the admin API, [`StartError`], and the HTTP
//! clients the harness talks to Envoy with. Both backends depend on this module; it depends
//! on neither.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long Envoy may take to become ready (V8 compiles every module at load).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Envoy's log line once its listeners and workers are up.
pub const READY_LINE: &str = "starting main dispatch loop";

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

impl StartError {
    /// A failure before Envoy wrote any log.
    pub(crate) fn before_start(reason: String) -> Self {
        Self {
            reason,
            log: String::new(),
        }
    }
}

/// A fresh directory for one Envoy's config, log and admin address (removed on drop).
pub(crate) fn scratch_dir() -> Result<tempfile::TempDir, StartError> {
    tempfile::Builder::new()
        .prefix("mesh-envoy-")
        .tempdir()
        .map_err(|e| StartError::before_start(format!("tempdir: {e}")))
}

/// What an Envoy is started with, on either backend: its bootstrap (JSON), the workers, the
/// module files the bootstrap names and arguments after Envoy's own ([`envoy_args`]).
///
/// ```ignore
/// Envoy::start(harness, &Launch::new(config.to_string()).concurrency(2).modules([wasm]))
/// ```
#[derive(Debug, Clone)]
pub struct Launch {
    pub(crate) config: String,
    pub(crate) concurrency: u32,
    pub(crate) modules: Vec<PathBuf>,
    pub(crate) extra_args: Vec<String>,
}

impl Launch {
    /// The bootstrap's file name in the scratch directory.
    pub(crate) const CONFIG_FILE: &str = "envoy.json";

    /// The bootstrap in JSON; one worker, no module files, no extra arguments.
    pub fn new(config: impl Into<String>) -> Self {
        Self {
            config: config.into(),
            concurrency: 1,
            modules: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// Envoy's worker threads (`--concurrency`).
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// The module files the bootstrap names (through [`crate::envoy::Harness::module_path`]):
    /// a container gets each mounted read-only; a directory is mounted at its own path
    /// (configs pushed through ECDS name files in it by their host path). A process reads
    /// them where they are.
    pub fn modules(mut self, modules: impl IntoIterator<Item = PathBuf>) -> Self {
        self.modules.extend(modules);
        self
    }

    /// Arguments after Envoy's own on either backend (`--config-yaml`, log levels); they must
    /// name no host path (a container does not see it).
    pub fn args(mut self, args: impl IntoIterator<Item = String>) -> Self {
        self.extra_args.extend(args);
        self
    }
}

/// Envoy's arguments on both backends (paths as Envoy sees them), then the launch's own. The
/// modules (Wasm and native) log at debug (per-request lines) unless the launch sets
/// `--component-log-level` itself (Envoy takes the option once), as the benchmark does.
pub fn envoy_args(config: &Path, admin_address_path: &Path, launch: &Launch) -> Vec<String> {
    const COMPONENT_LOG_LEVEL: &str = "--component-log-level";
    let mut args: Vec<String> = vec!["-c".into(), config.display().to_string()];
    args.extend(
        [
            "--disable-hot-restart",
            "--concurrency",
            &launch.concurrency.to_string(),
            "--log-level",
            "info",
            "--admin-address-path",
        ]
        .map(str::to_owned),
    );
    args.push(admin_address_path.display().to_string());
    if !launch
        .extra_args
        .iter()
        .any(|arg| arg == COMPONENT_LOG_LEVEL)
    {
        args.extend([
            COMPONENT_LOG_LEVEL.to_owned(),
            "wasm:debug,dynamic_modules:debug".to_owned(),
        ]);
    }
    args.extend_from_slice(&launch.extra_args);
    args
}

/// What the readiness wait asks of a starting Envoy, whichever backend runs it.
pub(crate) trait Starting {
    /// `Err` with the reason once Envoy has exited.
    fn check_alive(&mut self) -> Result<(), String>;
    fn log(&self) -> String;
}

/// Waits until the log has [`READY_LINE`] and admin `/ready` answers 200; returns the admin
/// and listener addresses. `admin_path` is the `--admin-address-path` file as the test sees it.
pub(crate) fn wait_ready(
    envoy: &mut impl Starting,
    admin_path: &Path,
) -> Result<(SocketAddr, SocketAddr), String> {
    let agent = agent(Duration::from_secs(2));
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        envoy.check_alive()?;
        let admin = fs::read_to_string(admin_path)
            .ok()
            .and_then(|text| text.trim().parse::<SocketAddr>().ok());
        if let Some(admin) = admin {
            let ready = envoy.log().contains(READY_LINE)
                && agent
                    .get(format!("http://{admin}/ready"))
                    .call()
                    .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok((admin, listener_address(&agent, admin, None)?));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("envoy not ready after {READY_TIMEOUT:?}"))
}

/// The bound address of the listener `name` (the first listener when `None`), from the
/// admin API.
pub fn listener_address(
    agent: &ureq::Agent,
    admin: SocketAddr,
    name: Option<&str>,
) -> Result<SocketAddr, String> {
    let body = agent
        .get(format!("http://{admin}/listeners?format=json"))
        .call()
        .map_err(|e| format!("admin /listeners: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("admin /listeners: {e}"))?;
    let listeners: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let statuses = listeners["listener_statuses"].as_array();
    let listener = match name {
        None => statuses.and_then(|all| all.first()),
        Some(name) => statuses
            .into_iter()
            .flatten()
            .find(|l| l["name"].as_str() == Some(name)),
    }
    .ok_or_else(|| format!("no listener {}", name.unwrap_or("at all")))?;
    let socket = &listener["local_address"]["socket_address"];
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
