//! Envoy fetching a module itself, as sidecars without the Istio agent do: `vm_config.code`
//! is `remote` (an HTTP URL on a cluster, with the module's `sha256`). A matching digest
//! loads and the filter runs; a wrong one is refused, and the listener then fails closed or
//! open as the plugin's `failure_policy` says.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use mesh_integration::echo::EchoServer;
use mesh_integration::envoy::{self, Envoy, Harness, Launch, dist_dir};
use serde_json::{Value, json};

/// Serves one file to every GET, on 127.0.0.1; stops when dropped.
struct FileServer {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (Arc::clone(&served), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("module");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// The traceid filter on every route, its code fetched from `server` and checked against
/// `sha256`; `failure_policy` as Envoy's Wasm filter takes it.
fn start(server: &FileServer, sha256: &str, failure_policy: &str, upstream: &EchoServer) -> Envoy {
    let module = dist_dir().join("traceid.wasm");
    let mut filter = envoy::wasm_filter("traceid", &module, r#"{"default": {}}"#);
    let config = &mut filter["typed_config"]["config"];
    config["vm_config"]["code"] = json!({
        "remote": {
            "http_uri": {
                "uri": format!("http://{}/traceid.wasm", server.addr),
                "cluster": "modules",
                "timeout": "5s"
            },
            "sha256": sha256
        }
    });
    config["failure_policy"] = json!(failure_policy);
    let route: Value =
        json!({ "name": "checkout", "match": { "prefix": "/" }, "route": { "cluster": "v1" } });
    let bootstrap = envoy::bootstrap(
        vec![filter],
        vec![route],
        vec![
            envoy::cluster("v1", upstream.addr),
            envoy::cluster("modules", server.addr),
        ],
    );
    Envoy::start(
        Harness::from_env().unwrap(),
        &Launch::new(bootstrap.to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn get(envoy: &Envoy) -> (u16, Option<String>) {
    let mut reply = envoy::agent(Duration::from_secs(10))
        .get(format!("http://{}/checkout", envoy.listener()))
        .call()
        .unwrap();
    let status = reply.status().as_u16();
    let body = reply.body_mut().read_to_string().unwrap_or_default();
    let traceparent = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|echo| echo["headers"]["traceparent"].as_str().map(str::to_owned));
    (status, traceparent)
}

#[test]
fn a_module_fetched_with_its_sha256_loads_and_runs() {
    let module = std::fs::read(dist_dir().join("traceid.wasm")).unwrap();
    let server = FileServer::start(module.clone());
    let upstream = EchoServer::start("v1").unwrap();
    let envoy = start(&server, &sha256_hex(&module), "FAIL_CLOSED", &upstream);
    let (status, traceparent) = get(&envoy);
    assert_eq!(status, 200, "{}", envoy.log());
    assert!(
        traceparent.is_some(),
        "the filter did not run: {}",
        envoy.log()
    );
    assert!(server.served.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_wrong_sha256_is_refused_and_the_failure_policy_decides() {
    let module = std::fs::read(dist_dir().join("traceid.wasm")).unwrap();
    let server = FileServer::start(module.clone());
    let upstream = EchoServer::start("v1").unwrap();
    let wrong = sha256_hex(b"another module");
    for (policy, expected) in [("FAIL_CLOSED", 503), ("FAIL_OPEN", 200)] {
        let envoy = start(&server, &wrong, policy, &upstream);
        let (status, traceparent) = get(&envoy);
        let log = envoy.log();
        assert_eq!(status, expected, "{policy}: {log}");
        assert_eq!(traceparent, None, "{policy}: the module ran");
        // Envoy 1.40 treats a digest mismatch as a failed fetch: it retries, then gives up
        // with "Retry limit exceeded" (the log does not say the digest was wrong). The server
        // did send the module, so it was the digest that refused it.
        assert!(
            log.contains("Plugin mesh.traceid failed to load"),
            "{policy}: {log}"
        );
    }
    assert!(server.served.load(Ordering::SeqCst) >= 2);
}
