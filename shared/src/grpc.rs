//! gRPC as the filters meet it: which requests are gRPC calls, and status codes by name.
//!
//! A gRPC call is a request whose `content-type` is `application/grpc` or
//! `application/grpc+<codec>`: the test Envoy applies itself before it answers a local reply
//! in gRPC form (trailers-only, `grpc-status` and `grpc-message`). gRPC-Web is not: a gRPC-Web
//! filter in front translates it.

use crate::config::{ConfigError, FieldPath};
use crate::host::RequestHost;

pub const CONTENT_TYPE: &str = "content-type";
/// A call's status: in the trailers, or in the headers of a trailers-only response.
pub const STATUS: &str = "grpc-status";
/// gRFC A6: how long a client should wait before it retries, in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether the request is a gRPC call. A gRPC call always has a body, so a request without one
/// costs no header read (no host call for a GET in a module that reads no other header).
pub fn is_call(host: &impl RequestHost) -> bool {
    host.request_has_body()
        && host
            .request_header(CONTENT_TYPE)
            .is_some_and(is_grpc_content_type)
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    // Media type parameters (`; charset=...`) do not change it.
    let media = value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media.eq_ignore_ascii_case(b"application/grpc")
        || media
            .get(..17)
            .is_some_and(|head| head.eq_ignore_ascii_case(b"application/grpc+"))
}

/// A `grpc-status` value: a decimal code.
pub fn parse_status(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// What kind of call a request is, for the stats (`protocol` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    /// The request's: see [`is_call`].
    pub fn of(host: &impl RequestHost) -> Self {
        if is_call(host) {
            Self::Grpc
        } else {
            Self::Http
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// A set of gRPC status codes: one bit per code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeSet(u32);

impl CodeSet {
    pub fn of(codes: &[Code]) -> Self {
        Self(codes.iter().fold(0, |bits, code| bits | 1 << code.0))
    }

    pub fn contains(self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

/// A gRPC status code, 0 to 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Code(pub u32);

impl Code {
    /// The canonical names, by code.
    pub const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    pub const OK: Code = Code(0);
    pub const UNKNOWN: Code = Code(2);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const DATA_LOSS: Code = Code(15);

    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
}

/// A code in plugin JSON: its canonical name (`"UNAVAILABLE"`).
impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(deserializer)?;
        (0u32..)
            .zip(Self::NAMES)
            .find(|(_, known)| *known == name)
            .map(|(code, _)| Self(code))
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &Self::NAMES))
    }
}

crate::json_schema!(Code, "GrpcCode", {
    "description": "A gRPC status code by its canonical name.",
    "enum": Self::NAMES,
});

/// The gRPC form of a local reply: a trailers-only response with this status and message
/// (Envoy writes `grpc-status` and `grpc-message`; the reply's headers go with them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    /// A reply's status as configured at `at` (`grpc_status`, `grpc_message`): a local reply
    /// ends a call, so never `OK`; the message is one line of text.
    pub fn compile(code: Code, message: String, at: &FieldPath) -> Result<Self, ConfigError> {
        if code == Code::OK {
            return Err(at
                .field("grpc_status")
                .invalid("a reply that ends a call cannot be OK"));
        }
        if message.chars().any(char::is_control) {
            return Err(at
                .field("grpc_message")
                .invalid("must be one line of text, without control characters"));
        }
        Ok(Self { code, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn grpc_content_types_are_told_from_others() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/json", false),
            ("application/grpcx", false),
        ] {
            let host = FakeHost::new()
                .with_request_header("content-type", value)
                .with_body();
            assert_eq!(is_call(&host), grpc, "{value}");
        }
    }

    #[test]
    fn a_grpc_status_is_a_decimal_code() {
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b" 4 "), Some(4));
        for bad in [&b""[..], b"UNAVAILABLE", b"-1", b"1.5", b"\xff"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_protocol_label_values_are_the_documented_ones() {
        assert_eq!(Protocol::Http.label(), "http");
        assert_eq!(Protocol::Grpc.label(), "grpc");
    }

    #[test]
    fn a_code_set_holds_its_codes_however_often_named_and_no_others() {
        let set = CodeSet::of(&[Code(14), Code(4), Code(14)]);
        assert!(set.contains(14) && set.contains(4));
        assert!(!set.contains(0) && !set.contains(13));
        // Past the set's 32 bits: not held, and no shift overflow.
        assert!(!set.contains(32) && !set.contains(u32::MAX));
    }

    #[test]
    fn a_request_without_a_body_is_no_call_and_costs_no_read() {
        let host = FakeHost::new().with_request_header("content-type", "application/grpc");
        assert!(!is_call(&host));
    }

    #[test]
    fn codes_read_by_name() {
        let code = |json: &str| crate::config::parse_json::<Code>(json.as_bytes());
        assert_eq!(code(r#""UNAVAILABLE""#).unwrap(), Code::UNAVAILABLE);
        assert_eq!(Code::RESOURCE_EXHAUSTED.name(), "RESOURCE_EXHAUSTED");
        let err = code(r#""unavailable""#).unwrap_err().to_string();
        assert!(
            err.starts_with("(config): unknown variant `unavailable`, expected one of `OK`"),
            "{err}"
        );
        assert_eq!(
            code("14").unwrap_err().to_string(),
            "(config): invalid type: integer `14`, expected a string"
        );
    }
}
