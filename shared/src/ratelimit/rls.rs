//! Envoy's rate limit service (RLS) protocol: `envoy.service.ratelimit.v3.RateLimitService`.
//!
//! The messages are declared by hand with prost's derive (only the fields the filter uses;
//! prost skips the others when decoding), so no `protoc` runs at build time. Field numbers
//! are those of `envoy/service/ratelimit/v3/rls.proto`,
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto` and
//! `envoy/config/core/v3/base.proto`. The integration crate's test service does not share
//! them: it speaks Envoy's messages as generated from those protos (the `envoy-types` crate),
//! so a wrong field number here fails the global-limit tests.
//!
//! [`request`] builds the one call of a request; [`interpret`] reads the answer into what the
//! filter does: continue (with the service's headers) or reject (with `Retry-After`). An
//! answer that is not a valid `RateLimitResponse` with code OK or OVER_LIMIT is an error,
//! handled like an unreachable service.

use prost::Message;

use super::{Budget, tightest};
use crate::request::is_token_byte;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Headers taken from one answer, per list: the rest are dropped.
pub const MAX_HEADERS: usize = 16;

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// 0 means 1 to the service.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    /// [`Code`] as its number.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The limit that applied to the descriptor; absent when none did.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`: `requests_per_unit` per `unit` (the name, 3, is skipped).
#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `RateLimitResponse.RateLimit.Unit` as its number (1 second, 2 minute, 3 hour, 4 day).
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.config.core.v3.HeaderValue`: `raw_value` is used when `value` is empty.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// A header to add: a lower-case token name and a value without control bytes.
pub type Header = (String, Vec<u8>);

/// What the filter does with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `None`: OK. `Some(seconds)`: over the limit, retry after that many seconds (at least
    /// 1: the longest `duration_until_reset` of the descriptors over their limit, rounded up).
    pub over_limit: Option<u64>,
    /// For `X-RateLimit-*`, from the descriptors the service names a limit for
    /// (`current_limit`): over the limit, the one retried after; else the one with the
    /// fewest requests left.
    pub budget: Option<Budget>,
    /// `request_headers_to_add`: set on the upstream request (OK only).
    pub request_headers: Vec<Header>,
    /// `response_headers_to_add`: added to the response, or to the rejection.
    pub response_headers: Vec<Header>,
}

/// Why an answer was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAnswer {
    /// Not a `RateLimitResponse`.
    Undecodable,
    /// `overall_code` neither OK nor OVER_LIMIT.
    Code(i32),
}

/// The serialized request for `descriptors` (each a list of key/value entries).
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
    .encode_to_vec()
}

/// One descriptor of one entry; bytes that are not UTF-8 (client-controlled header values)
/// become U+FFFD, as protobuf strings must be UTF-8.
pub fn descriptor(key: &str, value: &[u8]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
        }],
    }
}

/// Reads a `ShouldRateLimit` answer.
pub fn interpret(message: &[u8]) -> Result<Answer, BadAnswer> {
    let response = RateLimitResponse::decode(message).map_err(|_| BadAnswer::Undecodable)?;
    let over_limit = match response.overall_code {
        c if c == Code::Ok as i32 => None,
        c if c == Code::OverLimit as i32 => Some(
            response
                .statuses
                .iter()
                .filter(|s| s.code == Code::OverLimit as i32)
                .filter_map(|s| s.duration_until_reset.as_ref())
                .map(seconds_up)
                .max()
                .unwrap_or(1)
                .max(1),
        ),
        other => return Err(BadAnswer::Code(other)),
    };
    let over = over_limit.is_some();
    let budget = tightest(
        response
            .statuses
            .iter()
            .filter(|s| !over || s.code == Code::OverLimit as i32)
            .filter_map(|s| {
                let limit = s.current_limit.as_ref()?;
                let reset_s = s.duration_until_reset.as_ref().map_or(0, seconds_up);
                Some(Budget {
                    limit: limit.requests_per_unit,
                    remaining: if over { 0 } else { s.limit_remaining },
                    // Over the limit, as `Retry-After`: at least 1 s.
                    reset_s: if over { reset_s.max(1) } else { reset_s },
                })
            }),
    );
    Ok(Answer {
        over_limit,
        budget,
        request_headers: if over_limit.is_none() {
            headers(response.request_headers_to_add)
        } else {
            Vec::new()
        },
        response_headers: headers(response.response_headers_to_add),
    })
}

/// A duration in whole seconds, rounded up; negative durations are 0.
fn seconds_up(duration: &Duration) -> u64 {
    let seconds = u64::try_from(duration.seconds).unwrap_or(0);
    if duration.seconds >= 0 && duration.nanos > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
}

/// The valid headers of a list (at most [`MAX_HEADERS`]), names lower-cased. A name must be
/// an HTTP token (so no pseudo-header), a value free of control bytes but tab.
fn headers(list: Vec<HeaderValue>) -> Vec<Header> {
    list.into_iter()
        .filter_map(|header| {
            let value = if header.value.is_empty() {
                header.raw_value
            } else {
                header.value.into_bytes()
            };
            let name_ok = !header.key.is_empty() && header.key.bytes().all(is_token_byte);
            let value_ok = value
                .iter()
                .all(|c| *c == b'\t' || (*c >= 0x20 && *c != 0x7f));
            (name_ok && value_ok).then(|| (header.key.to_ascii_lowercase(), value))
        })
        .take(MAX_HEADERS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn status(code: Code, reset: Option<(i64, i32)>) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: reset.map(|(seconds, nanos)| Duration { seconds, nanos }),
        }
    }

    /// A status naming its limit: `limit` per minute, `remaining` left.
    fn limited(code: Code, limit: u32, remaining: u32, reset_s: i64) -> DescriptorStatus {
        DescriptorStatus {
            current_limit: Some(RateLimit {
                requests_per_unit: limit,
                unit: 2,
            }),
            limit_remaining: remaining,
            ..status(code, Some((reset_s, 0)))
        }
    }

    fn header(key: &str, value: &str) -> HeaderValue {
        HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }
    }

    #[test]
    fn the_request_has_envoys_field_numbers() {
        let bytes = request("mesh", vec![descriptor("remote_address", b"10.0.0.1")]);
        // domain (1, "mesh"), descriptors (2: entries (1: key 1, value 2)).
        let mut expected = vec![0x0a, 4];
        expected.extend_from_slice(b"mesh");
        let entry = {
            let mut e = vec![0x0a, 14];
            e.extend_from_slice(b"remote_address");
            e.extend_from_slice(&[0x12, 8]);
            e.extend_from_slice(b"10.0.0.1");
            e
        };
        let mut descriptor = vec![0x0a, u8::try_from(entry.len()).unwrap()];
        descriptor.extend_from_slice(&entry);
        expected.extend_from_slice(&[0x12, u8::try_from(descriptor.len()).unwrap()]);
        expected.extend_from_slice(&descriptor);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn non_utf8_values_are_replaced_not_refused() {
        let d = descriptor("x-api-key", b"a\xffb");
        assert_eq!(d.entries[0].value, "a\u{fffd}b");
    }

    #[test]
    fn ok_passes_the_request_headers_and_the_response_headers() {
        let message = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![status(Code::Ok, Some((3, 0)))],
            response_headers_to_add: vec![header("X-RateLimit-Limit", "10")],
            request_headers_to_add: vec![header("x-ratelimited-by", "rls")],
        }
        .encode_to_vec();
        assert_eq!(
            interpret(&message),
            Ok(Answer {
                over_limit: None,
                budget: None,
                request_headers: vec![("x-ratelimited-by".into(), b"rls".to_vec())],
                response_headers: vec![("x-ratelimit-limit".into(), b"10".to_vec())],
            })
        );
    }

    #[test]
    fn over_limit_retries_after_the_longest_reset_rounded_up() {
        let message = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                status(Code::OverLimit, Some((2, 1))),
                status(Code::OverLimit, Some((1, 0))),
                status(Code::Ok, Some((60, 0))),
            ],
            response_headers_to_add: Vec::new(),
            request_headers_to_add: vec![header("x-a", "b")],
        }
        .encode_to_vec();
        let answer = interpret(&message).unwrap();
        assert_eq!(answer.over_limit, Some(3));
        // A rejected request goes nowhere: no request headers.
        assert!(answer.request_headers.is_empty());
    }

    #[test]
    fn the_budget_is_the_tightest_descriptor_the_service_names_a_limit_for() {
        let answer = |code: Code, statuses| {
            interpret(
                &RateLimitResponse {
                    overall_code: code as i32,
                    statuses,
                    ..Default::default()
                }
                .encode_to_vec(),
            )
            .unwrap()
            .budget
        };
        // OK: the fewest left; a descriptor without a limit says nothing.
        let ok = vec![
            limited(Code::Ok, 100, 40, 30),
            status(Code::Ok, Some((1, 0))),
            limited(Code::Ok, 10, 3, 20),
        ];
        let budget = |limit, remaining, reset_s| {
            Some(Budget {
                limit,
                remaining,
                reset_s,
            })
        };
        assert_eq!(answer(Code::Ok, ok), budget(10, 3, 20));
        // Over the limit: the descriptor over it that resets last, nothing left.
        let over = vec![
            limited(Code::Ok, 5, 0, 50),
            limited(Code::OverLimit, 100, 2, 10),
            limited(Code::OverLimit, 60, 0, 45),
        ];
        assert_eq!(answer(Code::OverLimit, over), budget(60, 0, 45));
        // Over the limit without a reset: 1 s, as Retry-After.
        let over = vec![DescriptorStatus {
            duration_until_reset: None,
            ..limited(Code::OverLimit, 60, 0, 0)
        }];
        assert_eq!(answer(Code::OverLimit, over).map(|b| b.reset_s), Some(1));
        assert_eq!(answer(Code::Ok, vec![status(Code::Ok, Some((1, 0)))]), None);
        assert_eq!(answer(Code::Ok, Vec::new()), None);
    }

    #[test]
    fn over_limit_without_a_reset_retries_after_one_second() {
        for statuses in [vec![], vec![status(Code::OverLimit, Some((-5, 0)))]] {
            let message = RateLimitResponse {
                overall_code: Code::OverLimit as i32,
                statuses,
                ..Default::default()
            }
            .encode_to_vec();
            assert_eq!(interpret(&message).unwrap().over_limit, Some(1));
        }
    }

    #[test]
    fn garbage_and_unknown_codes_are_errors() {
        assert_eq!(interpret(b"\xff\xff\xff"), Err(BadAnswer::Undecodable));
        // A string field (1) with invalid UTF-8 where a number belongs is undecodable too.
        assert_eq!(interpret(&[0x0a, 1, 0xff]), Err(BadAnswer::Undecodable));
        // An empty message is code UNKNOWN.
        assert_eq!(interpret(b""), Err(BadAnswer::Code(0)));
        let message = RateLimitResponse {
            overall_code: 7,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(interpret(&message), Err(BadAnswer::Code(7)));
    }

    #[test]
    fn invalid_headers_are_dropped_and_the_list_is_bounded() {
        let mut list = vec![
            header(":path", "/admin"),
            header("x-bad", "a\r\nb: c"),
            header("", "v"),
            HeaderValue {
                key: "x-raw".into(),
                value: String::new(),
                raw_value: b"raw".to_vec(),
            },
        ];
        list.extend((0..40).map(|i| header(&format!("x-{i}"), "v")));
        let message = RateLimitResponse {
            overall_code: Code::Ok as i32,
            response_headers_to_add: list,
            ..Default::default()
        }
        .encode_to_vec();
        let answer = interpret(&message).unwrap();
        assert_eq!(answer.response_headers.len(), MAX_HEADERS);
        assert_eq!(
            answer.response_headers[0],
            ("x-raw".into(), b"raw".to_vec())
        );
        assert_eq!(answer.response_headers[1].0, "x-0");
    }
}
