//! The seam between a filter and the proxy-wasm adapter.
//!
//! A filter implements [`Filter`] against the [`host`](crate::host) traits only; the adapter
//! (`filters/adapter`) turns proxy-wasm callbacks into these calls and a [`Verdict`] into
//! proxy-wasm actions. Tests drive a filter with `FakeHost` (`fake`, feature `test-util`).
//!
//! Lifecycle:
//! 1. `on_configure`: the envelope's policies are compiled once with [`Filter::compile`].
//! 2. The first request on a route [`Filter::bind`]s the route's policy to that route name
//!    (stats handles, shared-data keys); the result is cached for the VM's lifetime.
//! 3. Each request: [`Filter::on_request`] (and [`Filter::on_call_done`] for each gRPC call it
//!    asked for), then [`Filter::on_response`] and [`Filter::on_done`] unless this filter
//!    answered the request itself.

use std::rc::Rc;

use crate::config::{ConfigError, Envelope, FieldPath, Routes};
use crate::grpc;
use crate::host::{Host, RequestHost, ResponseHost, TrailersHost};

/// Who this instance of the plugin is: Istio sets no vm_id, so shared-data keys are
/// prefixed with the plugin name and root id to keep plugins apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plugin {
    pub name: String,
    pub root_id: String,
}

impl Plugin {
    /// Prefix for this plugin's shared-data keys.
    pub fn key_prefix(&self) -> String {
        format!("{}/{}", self.name, self.root_id)
    }
}

/// What to do with a request after the request-headers phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Answer locally; the upstream is not contacted.
    Reply(LocalReply),
    /// Hold the request and call a gRPC service through an Envoy cluster. Its outcome comes
    /// to [`Filter::on_call_done`], still in the request phase (headers can be changed),
    /// which decides again.
    Call(GrpcCall),
}

/// A unary gRPC call made through Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// The Envoy cluster of the service.
    pub cluster: String,
    /// Fully qualified service, e.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: &'static str,
    pub method: &'static str,
    /// The serialized request message.
    pub message: Vec<u8>,
    /// The deadline for the whole call. The adapter keeps it itself (a root-context tick);
    /// Envoy's own timeout is set later, as a backstop.
    pub timeout_ms: u32,
}

/// How a [`GrpcCall`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// `grpc-status: 0` with this response message.
    Ok(Vec<u8>),
    /// Any other gRPC status, Envoy's own included: 14 (unavailable) for a refused or reset
    /// connection and also, measured with Envoy 1.40, for a call past its timeout (Envoy's
    /// 504 mapped to gRPC), so only the time taken tells a deadline apart.
    Failed { grpc_status: u32 },
    /// Envoy refused to start the call (e.g. an unknown cluster).
    NotSent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For a gRPC call: the reply in gRPC form (trailers-only: HTTP 200, this status and
    /// message; `body` is not sent). `None` for HTTP.
    pub grpc: Option<grpc::Status>,
}

impl LocalReply {
    /// This reply as the request it answers takes it. An HTTP request gets it unchanged. A
    /// gRPC call gets it trailers-only (Envoy sends HTTP 200 with `status`'s code and message):
    /// the headers go as metadata, except `content-type`, which Envoy writes itself; there is
    /// no body; a wait to announce (`retry_after_ms`) also goes as `grpc-retry-pushback-ms`
    /// (gRFC A6).
    pub fn for_request(
        mut self,
        host: &impl RequestHost,
        status: &grpc::Status,
        retry_after_ms: Option<u64>,
    ) -> Self {
        if !grpc::is_call(host) {
            return self;
        }
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(grpc::CONTENT_TYPE));
        if let Some(ms) = retry_after_ms {
            self.headers
                .push((grpc::RETRY_PUSHBACK.to_owned(), ms.to_string()));
        }
        self.body = Vec::new();
        self.grpc = Some(status.clone());
        self
    }
}

pub trait Filter: Sized {
    /// Short name: log prefix and stats namespace (`traceid`, `canary`, ...).
    const NAME: &'static str;
    /// Whether [`Filter::on_request`] or [`Filter::on_call_done`] may answer
    /// [`Verdict::Call`]. Without, the adapter leaves out its call machinery (deadline tick,
    /// dispatch): ~2.5 KB of module that filters without calls do not carry. A call from a
    /// filter that says `false` is treated as [`CallOutcome::NotSent`].
    const MAKES_CALLS: bool = false;
    /// One route's policy as written in plugin JSON.
    type Config: serde::de::DeserializeOwned;
    /// One route's policy, validated and compiled.
    type Policy;
    /// A policy bound to a concrete route name: what each request on it needs ready.
    type Route;
    /// What the response phase needs from the request phase.
    type Request;

    fn new(plugin: &Plugin) -> Self;

    /// Validates one route's config; errors name the field under `at`.
    fn compile(&self, config: Self::Config, at: &FieldPath) -> Result<Self::Policy, ConfigError>;

    /// Prepares a policy for the route `route_name` (define its metrics, build keys).
    fn bind(&self, policy: Rc<Self::Policy>, route_name: &str, host: &mut impl Host)
    -> Self::Route;

    fn on_request(
        &self,
        route: &Self::Route,
        host: &mut impl RequestHost,
    ) -> (Verdict, Self::Request);

    /// The outcome of the call an earlier [`Verdict::Call`] asked for. Runs in the request
    /// phase; the request is held until this returns something other than a call.
    fn on_call_done(
        &self,
        _route: &Self::Route,
        _request: &mut Self::Request,
        _outcome: CallOutcome,
        _host: &mut impl RequestHost,
    ) -> Verdict {
        Verdict::Continue
    }

    fn on_response(
        &self,
        _route: &Self::Route,
        _request: &mut Self::Request,
        _host: &mut impl ResponseHost,
    ) {
    }

    /// The response's trailers, when it has any (gRPC calls do; HTTP/1 responses seldom).
    fn on_response_trailers(
        &self,
        _route: &Self::Route,
        _request: &mut Self::Request,
        _host: &mut impl TrailersHost,
    ) {
    }

    /// The stream is over (Envoy's log phase): after the response, or after a reset or
    /// timeout that produced no upstream response. Properties such as `["response", "code"]`
    /// and `["response", "flags"]` are readable here; headers are not.
    fn on_done(&self, _route: &Self::Route, _request: &mut Self::Request, _host: &mut impl Host) {}

    /// The root context's tick (at least once a second), for every route the VM has bound:
    /// work a filter defers from its requests, such as the breaker's batched successes.
    fn on_tick(&self, _route: &Self::Route, _host: &mut impl Host) {}
}

/// Reads and compiles plugin JSON for `filter`: what the adapter's `on_configure` runs for a
/// filter's own module (through [`Stage`](crate::chain::Stage)), run natively by `mesh-lint`
/// so it reports exactly the error Envoy would log.
pub fn configure<F: Filter>(filter: &F, json: &[u8]) -> Result<Routes<F::Policy>, ConfigError> {
    Envelope::<F::Config>::from_json(json)
        .and_then(|envelope| envelope.compile(&FieldPath::root(), |c, at| filter.compile(c, at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn shared_data_keys_start_with_the_plugin_name_and_root_id() {
        let plugin = Plugin {
            name: "mesh.ratelimit".to_owned(),
            root_id: "edge".to_owned(),
        };
        assert_eq!(plugin.key_prefix(), "mesh.ratelimit/edge");
        assert_eq!(Plugin::default().key_prefix(), "/");
    }
}
