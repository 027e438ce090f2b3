//! The images through a real registry (run by scripts/test.sh after scripts/package.sh;
//! `--ignored` because it needs dist/ and Debian's `docker-registry` and `skopeo`):
//! `scripts/package.sh --push` copies every image to a distribution registry on 127.0.0.1,
//! skopeo pulls each back, and the manifest digest is what the WasmPlugins in istio/ pin,
//! the layer holds exactly dist/<filter>.wasm and its sha256 is the one the manifest names.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_deploy::{filters, repo_root};

/// Debian's distribution registry on 127.0.0.1, its storage in a temporary directory; stopped
/// (by its PID) when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        assert!(
            Path::new("/usr/bin/docker-registry").is_file(),
            "docker-registry is missing: apt-get install docker-registry (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A port that was free a moment ago; the registry binds it at once.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command's standard output; it must succeed.
fn run(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256sum(path: &Path) -> String {
    String::from_utf8(run(Command::new("sha256sum").arg(path))).unwrap()[..64].to_owned()
}

/// The sha256 the WasmPlugins in istio/ pin for `name`'s image (every one that uses it).
fn pinned(name: &str) -> Vec<String> {
    let mut pins = Vec::new();
    for entry in fs::read_dir(repo_root().join("istio")).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let image = format!("/mesh-filters/{name}:");
            if line.trim_start().starts_with("url: oci://") && line.contains(&image) {
                let sha = lines[i + 1].trim().strip_prefix("sha256: ").unwrap();
                pins.push(sha.to_owned());
            }
        }
    }
    pins
}

#[test]
#[ignore = "needs dist/ from scripts/package.sh, docker-registry and skopeo"]
fn pushed_images_pull_back_as_pinned() {
    let registry = Registry::start();
    let repository = format!("{}/mesh-filters", registry.addr);
    run(Command::new(repo_root().join("scripts/package.sh"))
        .args(["--push", &repository, "--insecure"])
        .env("PACKAGE_SKIP_BUILD", "1")
        .current_dir(repo_root()));
    let version = env!("CARGO_PKG_VERSION");
    for name in filters::module_names() {
        let image = format!("docker://{repository}/{name}:{version}");
        let pulled = tempfile::tempdir().unwrap();
        let layout = pulled.path().join("oci");
        run(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &image,
            &format!("oci:{}:{version}", layout.display()),
        ]));
        // The registry's manifest digest (what Istio resolves the tag to) is the pinned one.
        let digest = String::from_utf8(run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &image,
        ])))
        .unwrap();
        let digest = digest.trim().strip_prefix("sha256:").unwrap().to_owned();
        let pins = pinned(name);
        assert!(!pins.is_empty(), "no WasmPlugin in istio/ pins {name}");
        for pin in &pins {
            assert_eq!(
                *pin, digest,
                "{name}: istio/ pins another image (scripts/package.sh --pin)"
            );
        }
        // The pulled manifest is that digest, and its one layer is the module.
        let blobs = layout.join("blobs/sha256");
        assert_eq!(sha256sum(&blobs.join(&digest)), digest, "{name}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blobs.join(&digest)).unwrap()).unwrap();
        let layer = manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert_eq!(sha256sum(&blobs.join(layer)), layer, "{name}");
        let unpacked = run(Command::new("tar")
            .arg("-xzOf")
            .arg(blobs.join(layer))
            .arg("plugin.wasm"));
        let module = fs::read(repo_root().join("dist").join(format!("{name}.wasm"))).unwrap();
        assert!(
            unpacked == module,
            "{name}: the pulled layer is not dist/{name}.wasm"
        );
    }
}
