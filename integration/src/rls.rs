//! A rate limit service (Envoy's RLS gRPC API, `envoy.service.ratelimit.v3`) for tests and
//! the bench: tonic, limitador's Redis storage, and Debian's `redis-server` as a child
//! process. The service binds 127.0.0.1 and stops when its runtime is dropped (its sockets
//! close at once, as when the process is killed); Redis listens on a Unix socket of its own
//! and is stopped by PID.
//!
//! The messages and the service are Envoy's own, generated from its protos (the `envoy-types`
//! crate: `RateLimitServiceServer`), not the filter's hand-declared messages
//! ([`mesh_policy::ratelimit::rls`]): a field number wrong on the filter's side fails the
//! global-limit tests instead of being read back the same wrong way. Limits are limitador's:
//! one counter per value of the first descriptor's `descriptor_key`, `max` hits per `seconds`
//! window, per domain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer, SERVICE_NAME,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use limitador::AsyncRateLimiter;
use limitador::limit::{Context, Expression, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::UnaryService;
use tonic::{Request, Response, Status};

use crate::served::{Handler, Served};

/// Debian's `redis-server` on a Unix socket in its own temporary directory, without
/// persistence and without TCP (`--port 0`). Killed on drop. A socket of its own, not a "free"
/// port: a port found free can be handed to another test's server before Redis binds it, and
/// then two tests share one Redis, whose end takes the other's storage with it.
pub struct Redis {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("redis-server: {e} (apt-get install redis-server)"),
                )
            })?;
        let mut redis = Self {
            child,
            socket,
            _dir: dir,
        };
        wait_for_socket(&redis.socket, Duration::from_secs(10)).inspect_err(|_| {
            let _ = redis.child.kill();
        })?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One limit of the service: `max` hits per `seconds` for each value of the first
/// descriptor's `descriptor_key`, in `domain`.
#[derive(Debug, Clone)]
pub struct RlsLimit {
    pub domain: String,
    pub descriptor_key: String,
    pub max: u64,
    pub seconds: u64,
}

impl RlsLimit {
    pub fn new(domain: &str, descriptor_key: &str, max: u64, seconds: u64) -> Self {
        Self {
            domain: domain.to_owned(),
            descriptor_key: descriptor_key.to_owned(),
            max,
            seconds,
        }
    }
}

/// The service's answers carry these headers: `response_headers_to_add` and
/// `request_headers_to_add` (value `over_limit` or `ok`).
pub const RESPONSE_HEADER: &str = "x-rls-response";
pub const REQUEST_HEADER: &str = "x-rls-request";

/// How the service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// limitador decides.
    Normal = 0,
    /// `overall_code` UNKNOWN: a valid message no client can act on.
    Unknown = 1,
    /// Answers after [`HANG`]: longer than any deadline the tests give the call.
    Hang = 2,
    /// Answers OK at the gRPC level with bytes that are not a `RateLimitResponse`.
    Garbage = 3,
}

/// How long [`Mode::Hang`] holds each call.
pub const HANG: Duration = Duration::from_secs(5);

/// The rate limit service, on 127.0.0.1. [`Rls::stop`] and [`Rls::restart`] (same address)
/// let tests take it away mid-run.
pub struct Rls {
    addr: SocketAddr,
    redis_url: String,
    limits: Vec<RlsLimit>,
    requests: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Rls {
    /// Changes how the service answers from the next call on.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn start(redis: &Redis, limits: Vec<RlsLimit>) -> io::Result<Self> {
        let mut rls = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            redis_url: redis.url(),
            limits,
            requests: Arc::new(AtomicU64::new(0)),
            answered: Arc::new(AtomicU64::new(0)),
            mode: Arc::new(AtomicU8::new(Mode::Normal as u8)),
            runtime: None,
        };
        rls.serve()?;
        Ok(rls)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ShouldRateLimit` calls received so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Calls the service has answered (sent a response or an error for): with
    /// [`Mode::Hang`], a call still held, or given up by its client, is not one.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Stops serving at once: the listener and every connection close.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Serves again on the same address.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.serve()
    }

    fn serve(&mut self) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(async {
            // The port may linger a moment after a stop.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(listener) => return Ok(listener),
                    Err(e) if Instant::now() < deadline && self.addr.port() != 0 => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })?;
        self.addr = listener.local_addr()?;
        let limiter = runtime
            .block_on(AsyncRedisStorage::new(&self.redis_url))
            .map(|storage| AsyncRateLimiter::new_with_storage(Box::new(storage)))
            .map_err(|e| io::Error::other(format!("limitador redis storage: {e}")))?;
        for limit in &self.limits {
            let variable = Expression::parse(format!("descriptors[0]['{}']", limit.descriptor_key))
                .map_err(|e| io::Error::other(format!("limit variable: {e:?}")))?;
            limiter.add_limit(Limit::new(
                limit.domain.as_str(),
                limit.max,
                limit.seconds,
                [],
                [variable],
            ));
        }
        let inner = Arc::new(Inner {
            limiter,
            requests: Arc::clone(&self.requests),
            answered: Arc::clone(&self.answered),
            mode: Arc::clone(&self.mode),
        });
        let service = RlsService {
            server: RateLimitServiceServer::from_arc(Arc::clone(&inner)),
            inner,
        };
        runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(Served(service))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        self.runtime = Some(runtime);
        Ok(())
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Inner {
    limiter: AsyncRateLimiter,
    requests: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
}

impl Inner {
    async fn decide(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            m if m == Mode::Unknown as u8 => return Ok(RateLimitResponse::default()),
            m if m == Mode::Hang as u8 => tokio::time::sleep(HANG).await,
            _ => {}
        }
        if request.domain.is_empty() || request.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "domain and descriptors are required",
            ));
        }
        let descriptors: Vec<HashMap<String, String>> = request
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_owned(), descriptors);
        let hits = u64::from(request.hits_addend.max(1));
        let result = self
            .limiter
            .check_rate_limited_and_update(&request.domain.as_str().into(), &ctx, hits)
            .await
            .map_err(|e| Status::unavailable(format!("limitador: {e}")))?;
        let code = if result.limited {
            Code::OverLimit
        } else {
            Code::Ok
        };
        let reset = result
            .counters
            .iter()
            .filter_map(|c| c.expires_in())
            .max()
            .unwrap_or(Duration::from_secs(1));
        // Statuses as envoyproxy/ratelimit fills them (Limitador's own server sends none): the
        // counter with the fewest hits left names the limit.
        let tightest = result
            .counters
            .iter()
            .filter_map(|c| Some((c.remaining()?, c)))
            .min_by_key(|(remaining, _)| *remaining);
        let status = DescriptorStatus {
            code: code as i32,
            current_limit: tightest.map(|(_, c)| RateLimit {
                requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
                unit: unit(c.window()) as i32,
                ..RateLimit::default()
            }),
            limit_remaining: tightest.map_or(0, |(r, _)| u32::try_from(r).unwrap_or(u32::MAX)),
            duration_until_reset: Some(PbDuration {
                seconds: i64::try_from(reset.as_secs()).unwrap_or(0),
                nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
            }),
            ..DescriptorStatus::default()
        };
        let header = |key: &str| HeaderValue {
            key: key.to_owned(),
            value: if result.limited { "over_limit" } else { "ok" }.to_owned(),
            raw_value: Vec::new(),
        };
        Ok(RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![status; request.descriptors.len()],
            response_headers_to_add: vec![header(RESPONSE_HEADER)],
            request_headers_to_add: vec![header(REQUEST_HEADER)],
            ..RateLimitResponse::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for Inner {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let answer = self.decide(request.into_inner()).await;
        self.answered.fetch_add(1, Ordering::SeqCst);
        answer.map(Response::new)
    }
}

/// `RateLimit.Unit` for a window: the unit it is one of, else UNKNOWN.
fn unit(window: Duration) -> Unit {
    match window.as_secs() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

/// The generated service, and in [`Mode::Garbage`] an answer no generated code would send.
#[derive(Clone)]
struct RlsService {
    server: RateLimitServiceServer<Inner>,
    inner: Arc<Inner>,
}

impl Handler for RlsService {
    const NAME: &'static str = SERVICE_NAME;

    fn handle(
        &mut self,
        request: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
        if self.inner.mode.load(Ordering::SeqCst) != Mode::Garbage as u8 {
            return self.server.call(request);
        }
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if request.uri().path() != GARBAGE_PATH {
                return Ok(Status::unimplemented("only ShouldRateLimit").into_http());
            }
            inner.requests.fetch_add(1, Ordering::SeqCst);
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(NotARateLimitResponse, request).await)
        })
    }
}

/// The method [`Mode::Garbage`] answers (the generated server answers every other mode).
const GARBAGE_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Field 1 as a string, where `RateLimitResponse` has the varint `overall_code`: well-formed
/// protobuf and gRPC that no `RateLimitResponse` decoder accepts.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(string, tag = "1")]
    overall_code: String,
}

struct NotARateLimitResponse;

impl UnaryService<RateLimitRequest> for NotARateLimitResponse {
    type Response = Garbage;
    type Future = BoxFuture<Response<Garbage>, Status>;

    fn call(&mut self, _request: Request<RateLimitRequest>) -> Self::Future {
        Box::pin(async {
            Ok(Response::new(Garbage {
                overall_code: "OK".to_owned(),
            }))
        })
    }
}

fn wait_for_socket(socket: &Path, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match UnixStream::connect(socket) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{} not listening: {e}", socket.display()),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether `redis-server` can be run (tests say what to install otherwise).
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Path::new("/usr/bin/redis-server").is_file()
}
