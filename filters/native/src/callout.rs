//! A unary gRPC call over the ABI's HTTP stream callout: Envoy 1.40's dynamic modules have no
//! gRPC client, so the module frames the call itself (the request headers and the
//! length-prefixed message of gRPC over HTTP/2) and reads the answer's status and message
//! back from the stream's events, as Envoy's own gRPC client would hand them to a Wasm
//! module: the same [`CallOutcome`] for the same answer.

use mesh_policy::filter::{CallOutcome, GrpcCall};
use mesh_policy::grpc::{CONTENT_TYPE, Code, STATUS, parse_status};

/// The most answer bytes kept: a rate limit service's answer is a few hundred bytes; a larger
/// one is refused as gRPC's `RESOURCE_EXHAUSTED` rather than buffered.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// gRPC's 5-byte message prefix: a compression flag, then the length (big-endian u32).
const PREFIX: usize = 5;

/// The request of `call`: its headers (pseudo-headers first) and its body, one uncompressed
/// message. `:authority` is the cluster's name, as Envoy's gRPC client sends it. No
/// `grpc-timeout`: Envoy's timer on the callout is the call's deadline, and a service that
/// honours the header (tonic does) would race it, ending some calls itself (status 4) and
/// others by Envoy's timeout.
pub fn request(call: &GrpcCall) -> (Vec<(&'static str, Vec<u8>)>, Vec<u8>) {
    let headers = vec![
        (":method", b"POST".to_vec()),
        (
            ":path",
            format!("/{}/{}", call.service, call.method).into_bytes(),
        ),
        (":authority", call.cluster.as_bytes().to_vec()),
        (CONTENT_TYPE, b"application/grpc".to_vec()),
        ("te", b"trailers".to_vec()),
    ];
    let length = u32::try_from(call.message.len()).unwrap_or(u32::MAX);
    let mut body = Vec::with_capacity(PREFIX + call.message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&call.message);
    (headers, body)
}

/// The answer as the stream's events bring it.
#[derive(Debug, Default)]
pub struct Answer {
    http_status: Option<u16>,
    /// From the trailers, or from the headers of a trailers-only answer.
    grpc_status: Option<u32>,
    body: Vec<u8>,
    too_large: bool,
}

impl Answer {
    pub fn headers(&mut self, headers: &[(&[u8], &[u8])]) {
        for (name, value) in headers {
            match *name {
                b":status" => {
                    self.http_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                }
                name if name.eq_ignore_ascii_case(STATUS.as_bytes()) => {
                    self.grpc_status = parse_status(value);
                }
                _ => {}
            }
        }
    }

    pub fn data(&mut self, chunks: &[&[u8]]) {
        for chunk in chunks {
            if self.body.len() + chunk.len() > MAX_ANSWER_BYTES {
                self.too_large = true;
                return;
            }
            self.body.extend_from_slice(chunk);
        }
    }

    pub fn trailers(&mut self, trailers: &[(&[u8], &[u8])]) {
        for (name, value) in trailers {
            if name.eq_ignore_ascii_case(STATUS.as_bytes()) {
                self.grpc_status = parse_status(value);
            }
        }
    }

    /// How the call ended, as Envoy's gRPC client reports it: the `grpc-status` the service
    /// (or Envoy, for a local reply such as a timeout) sent; without one, an HTTP status other
    /// than 200 mapped as gRPC's HTTP mapping says, else `UNKNOWN`; with `OK`, the first
    /// message (`INTERNAL` when there is none, or it is compressed: none was asked for).
    pub fn outcome(self) -> CallOutcome {
        let status = match (self.grpc_status, self.http_status) {
            (Some(status), _) => status,
            (None, Some(http)) if http != 200 => http_to_grpc(http).0,
            (None, _) => Code::UNKNOWN.0,
        };
        if status != Code::OK.0 {
            return CallOutcome::Failed {
                grpc_status: status,
            };
        }
        if self.too_large {
            return CallOutcome::Failed {
                grpc_status: Code::RESOURCE_EXHAUSTED.0,
            };
        }
        match first_message(&self.body) {
            Some(message) => CallOutcome::Ok(message.to_vec()),
            None => CallOutcome::Failed {
                grpc_status: Code::INTERNAL.0,
            },
        }
    }
}

/// A stream Envoy reset (the connection lost mid-call): unavailable, as Envoy's gRPC client
/// reports a reset.
pub fn reset() -> CallOutcome {
    CallOutcome::Failed {
        grpc_status: Code::UNAVAILABLE.0,
    }
}

/// gRPC's mapping of an HTTP status without `grpc-status` (doc/http-grpc-status-mapping.md).
fn http_to_grpc(http: u16) -> Code {
    match http {
        400 => Code::INTERNAL,
        401 => Code(16),
        403 => Code(7),
        404 => Code(12),
        429 | 502..=504 => Code::UNAVAILABLE,
        _ => Code::UNKNOWN,
    }
}

/// The first length-prefixed message of a body, if it is whole and uncompressed.
fn first_message(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let length: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let length = usize::try_from(u32::from_be_bytes(length)).ok()?;
    (flag == 0).then_some(())?;
    rest.get(4..4 + length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> GrpcCall {
        GrpcCall {
            cluster: "rls".to_owned(),
            service: "envoy.service.ratelimit.v3.RateLimitService",
            method: "ShouldRateLimit",
            message: b"\x0a\x04mesh".to_vec(),
            timeout_ms: 250,
        }
    }

    fn answer(
        headers: &[(&'static str, &'static str)],
        body: &[u8],
        trailers: &[(&'static str, &'static str)],
    ) -> CallOutcome {
        let bytes = |list: &[(&'static str, &'static str)]| -> Vec<(&'static [u8], &'static [u8])> {
            list.iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect()
        };
        let mut answer = Answer::default();
        answer.headers(&bytes(headers));
        // The body in two chunks, as Envoy may slice it.
        let (a, b) = body.split_at(body.len() / 2);
        answer.data(&[a, b]);
        answer.trailers(&bytes(trailers));
        answer.outcome()
    }

    #[test]
    fn the_request_is_a_unary_grpc_call_to_the_service_method() {
        let (headers, body) = request(&call());
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header(":method").as_deref(), Some("POST"));
        assert_eq!(
            header(":path").as_deref(),
            Some("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        );
        assert_eq!(header(":authority").as_deref(), Some("rls"));
        assert_eq!(header("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(header("te").as_deref(), Some("trailers"));
        assert_eq!(
            header("grpc-timeout"),
            None,
            "the deadline is Envoy's timer alone"
        );
        assert_eq!(body, b"\x00\x00\x00\x00\x06\x0a\x04mesh");
    }

    #[test]
    fn an_ok_answer_is_its_message() {
        let ok = answer(
            &[(":status", "200"), ("content-type", "application/grpc")],
            b"\x00\x00\x00\x00\x02\x08\x01",
            &[("grpc-status", "0")],
        );
        assert_eq!(ok, CallOutcome::Ok(vec![0x08, 0x01]));
        // An empty message is a message (every field at its default).
        let empty = answer(
            &[(":status", "200")],
            b"\x00\x00\x00\x00\x00",
            &[("grpc-status", "0")],
        );
        assert_eq!(empty, CallOutcome::Ok(Vec::new()));
    }

    #[test]
    fn a_status_comes_from_the_trailers_or_a_trailers_only_answer() {
        let failed = |grpc_status| CallOutcome::Failed { grpc_status };
        // Trailers-only: Envoy's own reply to a gRPC request (no healthy upstream, timeout).
        assert_eq!(
            answer(&[(":status", "200"), ("grpc-status", "14")], b"", &[]),
            failed(14)
        );
        assert_eq!(
            answer(&[(":status", "200")], b"", &[("grpc-status", "7")]),
            failed(7)
        );
        // The status wins over a message sent before it.
        assert_eq!(
            answer(
                &[(":status", "200")],
                b"\x00\x00\x00\x00\x00",
                &[("grpc-status", "13")]
            ),
            failed(13)
        );
    }

    #[test]
    fn an_answer_without_a_grpc_status_maps_its_http_status() {
        let failed = |grpc_status| CallOutcome::Failed { grpc_status };
        for (http, grpc) in [
            ("503", 14),
            ("504", 14),
            ("429", 14),
            ("404", 12),
            ("400", 13),
            ("401", 16),
            ("403", 7),
            ("500", 2),
        ] {
            assert_eq!(
                answer(&[(":status", http)], b"", &[]),
                failed(grpc),
                "{http}"
            );
        }
        // HTTP 200 with no status at all: unknown, as Envoy's gRPC client says.
        assert_eq!(
            answer(&[(":status", "200")], b"\x00\x00\x00\x00\x00", &[]),
            failed(2)
        );
    }

    #[test]
    fn an_ok_without_a_whole_uncompressed_message_is_internal() {
        let internal = CallOutcome::Failed { grpc_status: 13 };
        let ok = [("grpc-status", "0")];
        assert_eq!(answer(&[(":status", "200")], b"", &ok), internal);
        assert_eq!(
            answer(&[(":status", "200")], b"\x00\x00\x00\x00\x03ab", &ok),
            internal
        );
        assert_eq!(
            answer(&[(":status", "200")], b"\x01\x00\x00\x00\x01a", &ok),
            internal
        );
    }

    #[test]
    fn an_answer_past_the_limit_is_resource_exhausted() {
        let mut answer = Answer::default();
        answer.headers(&[(b":status", b"200")]);
        let chunk = vec![0u8; MAX_ANSWER_BYTES];
        answer.data(&[&chunk, b"x"]);
        answer.trailers(&[(b"grpc-status", b"0")]);
        assert_eq!(answer.outcome(), CallOutcome::Failed { grpc_status: 8 });
        assert_eq!(reset(), CallOutcome::Failed { grpc_status: 14 });
    }
}
