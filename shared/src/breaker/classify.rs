//! What one finished call means for the breaker, decided apart from the state machine (as
//! tower-http separates its response classifiers from the services that use them).
//!
//! The facts come from Envoy's log phase, measured on Envoy 1.40:
//! - `response.code_details` is `via_upstream` exactly when the status came from the upstream.
//! - A connect failure, reset or timeout is a local reply by the router (503, 504) with
//!   `response.flags` saying why (UF, UR, UC, UT...) and details such as
//!   `upstream_reset_before_response_started{...}` or `response_timeout`.
//! - A client that hangs up first leaves no status, flag DC and details
//!   `downstream_remote_disconnect`: not the upstream's fault.
//! - A gRPC call the upstream answered is HTTP 200 whatever its outcome; its `grpc-status` is
//!   in the trailers, or the headers of a trailers-only response. The filter reads it there:
//!   `response.grpc_status` is no help once the stream's context is deleted (Envoy no longer
//!   holds the headers and infers `UNKNOWN` from the 200).

use super::status::StatusSet;
use crate::grpc::{CodeSet, Protocol};
use crate::host::{Host, Nanos};

/// Envoy's `response.flags` bits (`StreamInfo::CoreResponseFlag`, the legacy bit vector).
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x8_0000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;

    /// The upstream failed to answer: unreachable, reset, too slow or broken. Not UO: that is
    /// Envoy's own concurrency cap refusing to call the upstream, not the upstream failing.
    pub const UPSTREAM_FAILURE: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR;
}

/// `response.code_details` of a response whose status the upstream sent.
pub const VIA_UPSTREAM: &[u8] = b"via_upstream";

/// What Envoy says about a finished stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// `response.code`; `None` when no response was sent (the client left first).
    pub status: Option<u16>,
    /// `response.flags`.
    pub flags: u64,
    /// `response.code_details` was `via_upstream`.
    pub via_upstream: bool,
    /// A gRPC call the upstream answered with HTTP 200: its `grpc-status`, when it sent one.
    pub grpc_status: Option<u32>,
    /// Request headers to response headers; to the end of the stream when no response
    /// headers were sent.
    pub latency: Nanos,
}

/// How the breaker counts a finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered with a status outside the failure set.
    Success,
    /// A failure status, or a reset, connect failure or timeout.
    Failure(Failure),
    /// Not the upstream's doing (the client hung up, another filter or a direct response
    /// answered): not counted, except as slow once it took `slow_call_ms`.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Status,
    Timeout,
    Reset,
}

/// A classified call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub verdict: Verdict,
    /// At least `slow_call_ms` (only with the slow-call condition configured).
    pub slow: bool,
}

impl Call {
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Failure(_))
    }

    /// Whether the call counts in the window at all.
    pub fn counts(&self) -> bool {
        !matches!(self.verdict, Verdict::Ignored) || self.slow
    }
}

pub const RESPONSE_FLAGS: [&str; 2] = ["response", "flags"];
pub const RESPONSE_CODE: [&str; 2] = ["response", "code"];
pub const RESPONSE_CODE_DETAILS: [&str; 2] = ["response", "code_details"];

impl Finished {
    /// Envoy's facts about the stream that just ended, read only as far as [`classify`] needs
    /// them (each property is a host call and an allocation in the module): the flags first,
    /// which decide alone when they name an upstream failure; then the status; the details
    /// only for a status outside 2xx, to tell the upstream's from a local reply's. A 2xx
    /// without flags counts as the upstream's: a filter before the breaker that answers
    /// itself ends the request before the breaker sees it. A gRPC call reads the details
    /// always (Envoy answers gRPC calls itself with 200 too) and takes `grpc_status` (what
    /// the response's headers or trailers said) when the upstream sent the 200; an HTTP
    /// request reads nothing more than before.
    pub fn read(
        host: &impl Host,
        latency: Nanos,
        protocol: Protocol,
        grpc_status: Option<u32>,
    ) -> Self {
        let flags = host.property_u64(&RESPONSE_FLAGS).unwrap_or(0);
        let mut finished = Self {
            status: None,
            flags,
            via_upstream: false,
            grpc_status: None,
            latency,
        };
        if flags & flags::UPSTREAM_FAILURE != 0 {
            return finished;
        }
        finished.status = host
            .property_u64(&RESPONSE_CODE)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| *code != 0);
        let via_upstream =
            || host.property(&RESPONSE_CODE_DETAILS).as_deref() == Some(VIA_UPSTREAM);
        finished.via_upstream = match (finished.status, protocol) {
            (None, _) => false,
            (Some(200..=299), Protocol::Http) => true,
            (Some(_), _) => via_upstream(),
        };
        if protocol == Protocol::Grpc && finished.via_upstream && finished.status == Some(200) {
            finished.grpc_status = grpc_status;
        }
        finished
    }
}

/// Classifies a finished stream: a gRPC call by its gRPC status, anything else by its HTTP
/// status; `slow_threshold` is `slow_call_ms` when configured.
pub fn classify(
    finished: &Finished,
    failure_status: &StatusSet,
    grpc_failure_status: CodeSet,
    slow_threshold: Option<Nanos>,
) -> Call {
    let timeouts = flags::UPSTREAM_REQUEST_TIMEOUT | flags::UPSTREAM_MAX_STREAM_DURATION_REACHED;
    let verdict = if finished.flags & timeouts != 0 {
        Verdict::Failure(Failure::Timeout)
    } else if finished.flags & flags::UPSTREAM_FAILURE != 0 {
        // Also after a 200 whose body was cut off by a reset.
        Verdict::Failure(Failure::Reset)
    } else {
        let failed = match (finished.status, finished.grpc_status) {
            _ if !finished.via_upstream => None,
            (Some(_), Some(code)) => Some(grpc_failure_status.contains(code)),
            (Some(status), None) => Some(failure_status.contains(status)),
            (None, _) => None,
        };
        match failed {
            Some(true) => Verdict::Failure(Failure::Status),
            Some(false) => Verdict::Success,
            None => Verdict::Ignored,
        }
    };
    let slow = slow_threshold.is_some_and(|threshold| finished.latency >= threshold);
    Call { verdict, slow }
}
