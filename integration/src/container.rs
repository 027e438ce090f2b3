//! The docker backend (`MESH_HARNESS=docker`): Envoy in a container started with
//! testcontainers' blocking API, from the image `ENVOY_IMAGE` (default [`DEFAULT_IMAGE`], which
//! `scripts/envoy-image.sh` builds locally).
//!
//! The container shares the host's network namespace (`--network host`): Envoy binds
//! 127.0.0.1 with port 0 exactly as on the process backend, so the bootstrap, the port
//! discovery, the echo upstreams (threads of the test on 127.0.0.1) and the client address
//! Envoy sees (127.0.0.1) are the same on both backends, and nothing is published.
//!
//! Mounts: the generated config (read-only), each module the config names (read-only, from
//! `dist/` or wherever the test wrote it) and a directory where Envoy writes its admin address. The entrypoint is the `envoy` binary itself (no shell, no
//! wrapper script), which every Envoy image has at `/usr/local/bin/envoy`, run as root (uid 0)
//! whatever user the image defaults to.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use testcontainers::core::{AccessMode, Mount};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use crate::backend::{self, Launch, StartError, Starting};

/// The local image `scripts/envoy-image.sh` builds (FROM scratch, the wheel's Envoy); the tag
/// follows `ENVOY_VERSION` in `scripts/lib.sh` (`scripts/test.sh` passes it as `ENVOY_IMAGE`).
pub const DEFAULT_IMAGE: &str = "mesh-envoy:1.40.0";
/// Where the modules are mounted inside the container, each as its own file.
pub const MODULES: &str = "/mesh/modules";
/// The generated config's directory inside the container.
const CONFIG_DIR: &str = "/mesh/config";
/// Where Envoy writes its admin address inside the container.
const RUN_DIR: &str = "/mesh/run";
/// The Envoy binary in the official images and in ours.
const ENVOY_IN_IMAGE: &str = "/usr/local/bin/envoy";
/// The label on every Envoy container of the scripts and the harness: after an interrupted
/// run, `docker rm -f $(docker ps -aq --filter label=org.mesh-filters.envoy)` removes them.
pub const LABEL: &str = "org.mesh-filters.envoy";

/// Where a module the test has at `wasm` is mounted inside the container.
pub fn module_path(wasm: &Path) -> PathBuf {
    Path::new(MODULES).join(wasm.file_name().unwrap_or_default())
}

/// The image to run: `ENVOY_IMAGE`, else [`DEFAULT_IMAGE`].
pub fn image() -> String {
    std::env::var("ENVOY_IMAGE")
        .ok()
        .filter(|image| !image.is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
}

/// Envoy in a container; the container is removed on drop.
pub struct EnvoyContainer {
    container: Container<GenericImage>,
    // Holds the mounted config and admin address until the container is gone.
    _dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
}

impl EnvoyContainer {
    /// Starts Envoy as `launch` says (each module mounted read-only, see [`Launch::modules`])
    /// and waits until it is ready.
    pub fn start(launch: &Launch) -> Result<Self, StartError> {
        let fail = StartError::before_start;
        let dir = backend::scratch_dir()?;
        let config_dir = dir.path().join("config");
        let run_dir = dir.path().join("run");
        for sub in [&config_dir, &run_dir] {
            fs::create_dir(sub).map_err(|e| fail(format!("{}: {e}", sub.display())))?;
        }
        fs::write(config_dir.join(Launch::CONFIG_FILE), &launch.config)
            .map_err(|e| fail(format!("write config: {e}")))?;
        let mut mounts = Vec::with_capacity(launch.modules.len());
        for module in &launch.modules {
            let host = module
                .canonicalize()
                .map_err(|e| fail(format!("{}: {e}", module.display())))?;
            // A directory (pushed configs and the modules they name) keeps its path.
            let inside = if host.is_dir() {
                host.clone()
            } else {
                module_path(module)
            };
            mounts.push(read_only(&host, &inside.display().to_string()));
        }

        let image = image();
        let (name, tag) = split_image(&image);
        let args = backend::envoy_args(
            &Path::new(CONFIG_DIR).join(Launch::CONFIG_FILE),
            &Path::new(RUN_DIR).join("admin-address"),
            launch,
        );
        let mut image_request = GenericImage::new(name, tag)
            .with_entrypoint(ENVOY_IN_IMAGE)
            // Whatever user the image defaults to: the mounted tempdir is the test's, mode 0700.
            .with_user("0")
            .with_network("host")
            .with_label(LABEL, "harness")
            .with_mount(read_only(&config_dir, CONFIG_DIR))
            .with_mount(Mount::bind_mount(path_text(&run_dir), RUN_DIR))
            .with_cmd(args);
        for mount in mounts {
            image_request = image_request.with_mount(mount);
        }
        let container = image_request.start().map_err(|e| {
            fail(format!(
                "cannot start a container from {image}: {e}\n(is a docker daemon running? \
                     scripts/test.sh starts one; scripts/envoy-image.sh builds the default \
                     image; MESH_HARNESS=process runs Envoy without docker)"
            ))
        })?;
        let mut envoy = Self {
            container,
            _dir: dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match backend::wait_ready(&mut envoy, &run_dir.join("admin-address")) {
            Ok((admin, listener)) => {
                envoy.admin = admin;
                envoy.listener = listener;
                Ok(envoy)
            }
            Err(reason) => Err(StartError {
                reason: format!("container {}: {reason}", envoy.container.id()),
                log: envoy.log(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The container's Envoy process as the host sees it (`docker inspect`); 0 if unknown.
    pub fn pid(&self) -> u32 {
        std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.State.Pid}}", self.id()])
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    /// The container's output (Envoy logs to stderr).
    pub fn log(&self) -> String {
        let mut log = self.container.stderr_to_vec().unwrap_or_default();
        log.extend(self.container.stdout_to_vec().unwrap_or_default());
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Whether the container is still running.
    pub fn is_running(&mut self) -> bool {
        self.container.is_running().unwrap_or(false)
    }
}

impl Starting for EnvoyContainer {
    fn check_alive(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        let code = self.container.exit_code().ok().flatten();
        Err(format!(
            "envoy exited during startup: exit code {}",
            code.map_or("unknown".to_owned(), |c| c.to_string())
        ))
    }

    fn log(&self) -> String {
        EnvoyContainer::log(self)
    }
}

fn read_only(host: &Path, target: &str) -> Mount {
    Mount::bind_mount(path_text(host), target).with_access_mode(AccessMode::ReadOnly)
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// `registry:5000/envoy:v1` → (`registry:5000/envoy`, `v1`); no tag means `latest`.
fn split_image(image: &str) -> (String, String) {
    let last_segment = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_segment..].rfind(':') {
        Some(i) => (
            image[..last_segment + i].to_owned(),
            image[last_segment + i + 1..].to_owned(),
        ),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_names_split_at_the_tag() {
        let split = |image| {
            let (name, tag) = split_image(image);
            format!("{name} {tag}")
        };
        assert_eq!(
            split("envoyproxy/envoy:v1.40-latest"),
            "envoyproxy/envoy v1.40-latest"
        );
        assert_eq!(split("mesh-envoy:1.40.0"), "mesh-envoy 1.40.0");
        assert_eq!(split("localhost:5000/envoy"), "localhost:5000/envoy latest");
        assert_eq!(split("localhost:5000/envoy:v2"), "localhost:5000/envoy v2");
    }
}
