//! The demo upstream: answers every request with what it received.
//!
//! `200 {"service": "v1", "method": ..., "path": ..., "headers": {lower-case name: value},
//! "header_lines": {lower-case name: how many lines}}` (a repeated header's values joined
//! with `,`);
//! a request header `x-echo-status: N` sets the status, `x-echo-delay-ms: N` delays the
//! answer, `x-echo-respond-header: name=value` adds that header to the answer, `x-echo-hold: 1` holds it until a request to `/__release` lets one held answer go.
//! `/__count` returns how many requests were served (it is not counted itself), so tests can
//! prove the upstream was not contacted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::server_thread::ServerThread;

/// Longest delay or hold honoured, so a test cannot hang an upstream.
const MAX_DELAY_MS: u64 = 30_000;

struct Echo {
    service: String,
    served: AtomicU64,
    /// One permit per `/__release`: a held answer waits for one (a release that comes first
    /// is not lost).
    released: tokio::sync::Semaphore,
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    service: &str,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Echo {
        service: service.to_owned(),
        served: AtomicU64::new(0),
        released: tokio::sync::Semaphore::new(0),
    });
    let app = Router::new()
        .route("/__count", get(count))
        .route("/__release", get(release))
        .fallback(echo)
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn count(State(echo): State<Arc<Echo>>) -> String {
    echo.served.load(Ordering::SeqCst).to_string()
}

async fn release(State(echo): State<Arc<Echo>>) -> &'static str {
    echo.released.add_permits(1);
    "released"
}

async fn echo(State(echo): State<Arc<Echo>>, request: Request) -> Response {
    echo.served.fetch_add(1, Ordering::SeqCst);
    let headers = request.headers();
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let status = number("x-echo-status")
        .and_then(|n| u16::try_from(n).ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(delay) = number("x-echo-delay-ms") {
        tokio::time::sleep(Duration::from_millis(delay.min(MAX_DELAY_MS))).await;
    }
    if number("x-echo-hold") == Some(1) {
        let held =
            tokio::time::timeout(Duration::from_millis(MAX_DELAY_MS), echo.released.acquire());
        if let Ok(Ok(permit)) = held.await {
            permit.forget();
        }
    }
    let mut seen = Map::new();
    let mut lines = Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        lines.insert(name.as_str().to_owned(), Value::from(values.len()));
        seen.insert(name.as_str().to_owned(), Value::String(values.join(",")));
    }
    let respond_header = headers
        .get("x-echo-respond-header")
        .and_then(|v| v.to_str().ok()?.split_once('='))
        .and_then(|(name, value)| {
            Some((
                axum::http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                axum::http::HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
    let body = json!({
        "service": echo.service,
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": seen,
        "header_lines": lines,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some((name, value)) = respond_header {
        response.headers_mut().append(name, value);
    }
    response
}

/// An echo upstream on its own thread and runtime, bound to 127.0.0.1; stopped on drop.
pub struct EchoServer {
    pub service: String,
    pub addr: SocketAddr,
    _server: ServerThread,
}

impl EchoServer {
    pub fn start(service: &str) -> std::io::Result<Self> {
        Self::start_on(
            service,
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        )
    }

    pub fn start_on(service: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let name = service.to_owned();
        let server = ServerThread::start(
            format!("echo-{service}"),
            addr,
            |listener, stop| async move {
                let stop = async {
                    let _ = stop.await;
                };
                if let Err(err) = serve(&name, listener, stop).await {
                    eprintln!("echo {name}: {err}");
                }
            },
        )?;
        Ok(Self {
            service: service.to_owned(),
            addr: server.addr,
            _server: server,
        })
    }
}
