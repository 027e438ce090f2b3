//! The harness's gRPC services (`grpc.rs`'s echo, written by hand; `rls.rs`'s rate limit
//! service, Envoy's generated server plus an answer no generated code sends) as tonic's
//! server takes a service: each says its name and answers a request, whatever its path;
//! [`Served`] does the rest.

use std::convert::Infallible;

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context as TaskContext, Poll, Service, http};
use tonic::server::NamedService;

/// A gRPC service: its full name and its answer to a request (any method, by the path).
pub trait Handler: Clone + Send + Sync + 'static {
    /// The service's full name (`package.Service`).
    const NAME: &'static str;

    fn handle(
        &mut self,
        request: http::Request<Body>,
    ) -> BoxFuture<http::Response<Body>, Infallible>;
}

/// A [`Handler`] as a tonic service, always ready.
#[derive(Clone)]
pub struct Served<H>(pub H);

impl<H: Handler> NamedService for Served<H> {
    const NAME: &'static str = H::NAME;
}

impl<H: Handler> Service<http::Request<Body>> for Served<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0.handle(request)
    }
}
