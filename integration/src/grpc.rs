//! A gRPC test upstream ([`GrpcEcho`]) and a blocking gRPC test client ([`GrpcClient`]), for
//! tests of the filters on gRPC traffic. Everything binds or connects to 127.0.0.1 over h2c
//! (HTTP/2 without TLS, by prior knowledge: what Envoy's HTTP/2 clusters speak).
//!
//! The proto is our own, written out by hand as prost structs (no protoc, no build script),
//! served and called over tonic's generic types like [`crate::rls`]:
//!
//! ```proto
//! package mesh.test;
//! service Echo {
//!   rpc Say(SayRequest) returns (SayReply);
//!   rpc Count(CountRequest) returns (stream CountReply);
//! }
//! message SayRequest { string message = 1; int32 fail_code = 2; uint32 delay_ms = 3; }
//! message Pair { string name = 1; string value = 2; }
//! message SayReply { string message = 1; repeated Pair metadata = 2; string server = 3; }
//! message CountRequest { uint32 count = 1; uint32 interval_ms = 2; int32 fail_code = 3; }
//! message CountReply { uint32 n = 1; }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::envoy::StartError;
use crate::served::{Handler, Served};
use crate::{Mesh, MeshBuilder, RouteSpec};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, http};
use tonic::metadata::MetadataMap;
use tonic::server::{ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Extensions, Request, Response, Status};
use tonic_prost::ProstCodec;

/// The service's full name.
pub const SERVICE: &str = "mesh.test.Echo";
/// The unary method's path.
pub const SAY_PATH: &str = "/mesh.test.Echo/Say";
/// The server-streaming method's path.
pub const COUNT_PATH: &str = "/mesh.test.Echo/Count";
/// The status message of every failure asked for with `fail_code`.
pub const FAILURE_MESSAGE: &str = "failing on purpose";
/// How long a [`GrpcClient`] call may take, unless [`GrpcClient::timeout`] says otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `Say`'s request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SayRequest {
    /// Echoed in [`SayReply::message`].
    #[prost(string, tag = "1")]
    pub message: String,
    /// 0: succeed; else the server answers with this gRPC status code (an unknown one as
    /// UNKNOWN) and [`FAILURE_MESSAGE`].
    #[prost(int32, tag = "2")]
    pub fail_code: i32,
    /// The server sleeps this long before answering (succeeding or failing).
    #[prost(uint32, tag = "3")]
    pub delay_ms: u32,
}

impl SayRequest {
    /// A request that succeeds at once.
    pub fn new(message: &str) -> Self {
        Self {
            message: message.to_owned(),
            ..Self::default()
        }
    }
}

/// One metadata entry (a request header) as the server received it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Say`'s reply.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SayReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Every request header the server received (pseudo-headers aside), in order, repeated
    /// ones repeated, names lowercase, values as sent (`-bin` ones still base64).
    #[prost(message, repeated, tag = "2")]
    pub metadata: Vec<Pair>,
    /// The name the server was started with.
    #[prost(string, tag = "3")]
    pub server: String,
}

impl SayReply {
    /// The first value of a request header as the server received it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// Every value of a request header as the server received it.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.metadata
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_str())
            .collect()
    }
}

/// `Count`'s request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CountRequest {
    /// The server sends `CountReply { n }` for n = 1..=count.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// The server sleeps this long between two messages.
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
    /// After the messages, the stream ends with this status (0: OK) and, unless OK,
    /// [`FAILURE_MESSAGE`].
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

impl CountRequest {
    /// `count` messages at once, then OK.
    pub fn new(count: u32) -> Self {
        Self {
            count,
            ..Self::default()
        }
    }
}

/// One message of `Count`'s stream.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

/// The `mesh.test.Echo` service on 127.0.0.1 (h2c only). Stops on drop: its runtime goes,
/// and with it the listener and every connection.
pub struct GrpcEcho {
    addr: SocketAddr,
    name: String,
    calls: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcEcho {
    /// Serves on a free 127.0.0.1 port; `name` comes back in [`SayReply::server`].
    pub fn start(name: &str) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicU64::new(0));
        runtime.spawn(serve_counted(
            name.to_owned(),
            listener,
            Arc::clone(&calls),
            std::future::pending(),
        ));
        Ok(Self {
            addr,
            name: name.to_owned(),
            calls,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests that reached the service so far, whatever their path and outcome.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Starts `builder`'s Envoy with this service behind route `echo` (every method of
    /// `mesh.test.Echo`), through an HTTP/2 cluster.
    pub fn behind(&self, builder: MeshBuilder) -> Result<Mesh, StartError> {
        builder
            .grpc_cluster("grpc-echo", self.addr())
            .routes(vec![RouteSpec::new(
                "echo",
                "/mesh.test.Echo/",
                "grpc-echo",
            )])
            .start()
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Serves `mesh.test.Echo` as `name` on `listener` until `shutdown` completes (the demo's
/// `echo --grpc`; tests use [`GrpcEcho`]).
pub async fn serve(
    name: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_counted(name.to_owned(), listener, Arc::default(), shutdown).await
}

async fn serve_counted(
    name: String,
    listener: tokio::net::TcpListener,
    calls: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let service = EchoService(Arc::new(Inner { name, calls }));
    tonic::transport::Server::builder()
        .add_service(Served(service))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY each reply waits ~40 ms for a delayed ACK (Nagle).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(io::Error::other)
}

struct Inner {
    name: String,
    calls: Arc<AtomicU64>,
}

/// The status a `fail_code` asks for.
fn failure(code: i32) -> Status {
    Status::new(Code::from(code), FAILURE_MESSAGE)
}

/// Every header of `metadata`, in order, values lossily as text.
fn pairs(metadata: &MetadataMap) -> Vec<(String, String)> {
    metadata
        .clone()
        .into_headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[derive(Clone)]
struct EchoService(Arc<Inner>);

impl Handler for EchoService {
    const NAME: &'static str = SERVICE;

    fn handle(
        &mut self,
        request: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
        let inner = Arc::clone(&self.0);
        inner.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(match request.uri().path() {
                SAY_PATH => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(Say(inner), request).await
                }
                COUNT_PATH => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.server_streaming(Count, request).await
                }
                _ => Status::unimplemented("only Say and Count").into_http(),
            })
        })
    }
}

struct Say(Arc<Inner>);

impl UnaryService<SayRequest> for Say {
    type Response = SayReply;
    type Future = BoxFuture<Response<SayReply>, Status>;

    fn call(&mut self, request: Request<SayRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move {
            let metadata = pairs(request.metadata())
                .into_iter()
                .map(|(name, value)| Pair { name, value })
                .collect();
            let request = request.into_inner();
            if request.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
            }
            if request.fail_code != 0 {
                return Err(failure(request.fail_code));
            }
            Ok(Response::new(SayReply {
                message: request.message,
                metadata,
                server: inner.name.clone(),
            }))
        })
    }
}

struct Count;

impl ServerStreamingService<CountRequest> for Count {
    type Response = CountReply;
    type ResponseStream = ReceiverStream<Result<CountReply, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        let request = request.into_inner();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for n in 1..=request.count {
                    if n > 1 && request.interval_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(request.interval_ms.into())).await;
                    }
                    if tx.send(Ok(CountReply { n })).await.is_err() {
                        return; // The client went away.
                    }
                }
                if request.fail_code != 0 {
                    let _ = tx.send(Err(failure(request.fail_code))).await;
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// A call's failure: the gRPC status the client got (from the server, from Envoy, or made
/// by tonic for a transport error) or, for a call over its time, DEADLINE_EXCEEDED with a
/// message starting `client:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcError {
    /// `tonic::Code as i32`.
    pub code: i32,
    pub message: String,
    /// The response's metadata: its headers, then its trailers (`grpc-status`,
    /// `grpc-message` and `grpc-status-details-bin` aside), names lowercase. A
    /// trailers-only response (how Envoy sends its own replies) has only headers.
    pub metadata: Vec<(String, String)>,
}

impl GrpcError {
    /// The status's code, message and metadata; a status tonic made of a local error
    /// (`transport error`) has the error's causes appended to its message.
    fn from_status(status: &Status) -> Self {
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self {
            code: status.code() as i32,
            message,
            metadata: pairs(status.metadata()),
        }
    }

    fn local(code: Code, message: String) -> Self {
        Self {
            code: code as i32,
            message: format!("client: {message}"),
            metadata: Vec::new(),
        }
    }

    /// The code as tonic names it.
    pub fn tonic_code(&self) -> Code {
        Code::from(self.code)
    }

    /// The first value of a response header or trailer.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<Status> for GrpcError {
    fn from(status: Status) -> Self {
        Self::from_status(&status)
    }
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grpc status {} ({:?}): {}",
            self.code,
            self.tonic_code(),
            self.message
        )
    }
}

impl std::error::Error for GrpcError {}

/// A blocking client of `mesh.test.Echo` over h2c, with a runtime of its own. Plain: tonic's
/// channel neither retries nor sets a deadline on the wire (no `grpc-timeout` header); each
/// call is cut off locally after [`CALL_TIMEOUT`] (or [`GrpcClient::timeout`]). A lost
/// connection fails the call on it; the next call connects again.
pub struct GrpcClient {
    channel: Channel,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl GrpcClient {
    /// Connects to `http://<addr>` (5 s at most).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .connect_timeout(Duration::from_secs(5));
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|e| io::Error::other(format!("grpc connect to {addr}: {e:?}")))?;
        Ok(Self {
            channel,
            timeout: CALL_TIMEOUT,
            runtime,
        })
    }

    /// Cuts each call off after `timeout` instead of [`CALL_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls `Say` with `metadata` as request headers.
    pub fn say(
        &self,
        request: SayRequest,
        metadata: &[(&str, &str)],
    ) -> Result<SayReply, GrpcError> {
        let request = with_metadata(request, metadata)?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        self.run(async move {
            grpc.ready()
                .await
                .map_err(|e| GrpcError::from(Status::from_error(e.into())))?;
            let reply = grpc
                .unary(
                    request,
                    PathAndQuery::from_static(SAY_PATH),
                    ProstCodec::default(),
                )
                .await?;
            Ok(reply.into_inner())
        })
    }

    /// Calls `Count` with `metadata` as request headers and reads its stream to the end: the
    /// `n` of every message, or those that came before the status that ended it (a status
    /// other than OK, or the call's timeout).
    pub fn count(
        &self,
        request: CountRequest,
        metadata: &[(&str, &str)],
    ) -> Result<Vec<u32>, (Vec<u32>, GrpcError)> {
        let request = with_metadata(request, metadata).map_err(|e| (Vec::new(), e))?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let mut received = Vec::new();
        let got = &mut received;
        let outcome = self.run(async move {
            grpc.ready()
                .await
                .map_err(|e| GrpcError::from(Status::from_error(e.into())))?;
            let (headers, mut stream, _) = grpc
                .server_streaming(
                    request,
                    PathAndQuery::from_static(COUNT_PATH),
                    ProstCodec::default(),
                )
                .await?
                .into_parts();
            loop {
                match stream.message().await {
                    Ok(Some(CountReply { n })) => got.push(n),
                    Ok(None) => return Ok(()),
                    // The status came in trailers: its metadata holds them only.
                    Err(status) => {
                        let mut error = GrpcError::from_status(&status);
                        let mut metadata = pairs(&headers);
                        metadata.append(&mut error.metadata);
                        error.metadata = metadata;
                        return Err(error);
                    }
                }
            }
        });
        match outcome {
            Ok(()) => Ok(received),
            Err(error) => Err((received, error)),
        }
    }

    /// Runs a call on the client's runtime, cut off after the timeout.
    fn run<T>(&self, call: impl Future<Output = Result<T, GrpcError>>) -> Result<T, GrpcError> {
        let timeout = self.timeout;
        self.runtime.block_on(async {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(GrpcError::local(
                        Code::DeadlineExceeded,
                        format!("no answer within {timeout:?}"),
                    ))
                })
        })
    }
}

/// `message` with `metadata` as its request headers (names lowercased). tonic drops `te`,
/// `content-type`, `grpc-status`, `grpc-message` and `grpc-message-type` and sets its own.
fn with_metadata<T>(message: T, metadata: &[(&str, &str)]) -> Result<Request<T>, GrpcError> {
    let mut headers = HeaderMap::new();
    for (name, value) in metadata {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
            GrpcError::local(
                Code::InvalidArgument,
                format!("metadata name {name:?}: {e}"),
            )
        })?;
        let value = HeaderValue::from_str(value).map_err(|e| {
            GrpcError::local(
                Code::InvalidArgument,
                format!("metadata value of {name:?}: {e}"),
            )
        })?;
        headers.append(header, value);
    }
    Ok(Request::from_parts(
        MetadataMap::from_headers(headers),
        Extensions::default(),
        message,
    ))
}
