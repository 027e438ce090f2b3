//! B3 propagation (https://github.com/openzipkin/b3-propagation): the single `b3` header
//! and the multi-header form `x-b3-*`.

use crate::hex;
use crate::request::trim_ows;

pub const B3: &str = "b3";
pub const TRACE_ID: &str = "x-b3-traceid";
pub const SPAN_ID: &str = "x-b3-spanid";
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const SAMPLED: &str = "x-b3-sampled";
pub const FLAGS: &str = "x-b3-flags";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Accept,
    Deny,
    /// Debug implies accept.
    Debug,
}

impl Sampling {
    pub fn sampled(self) -> bool {
        !matches!(self, Self::Deny)
    }
}

/// A B3 trace context. A 64-bit trace id is widened to 128 bits with leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampling: Option<Sampling>,
}

/// What B3 headers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    Context(B3Context),
    /// Only a sampling decision (`b3: 0`, or `x-b3-sampled` alone): no ids to carry.
    SamplingOnly(Sampling),
}

/// Parses the single header: `{trace}-{span}[-{sampling}[-{parent}]]` or `{sampling}`.
pub fn parse_single(value: &[u8]) -> Option<B3> {
    let value = trim_ows(value);
    if value.len() == 1 {
        return parse_sampling_state(value).map(B3::SamplingOnly);
    }
    let mut parts = value.split(|c| *c == b'-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let sampling = match parts.next() {
        Some(state) => Some(parse_sampling_state(state)?),
        None => None,
    };
    let parent_span_id = match parts.next() {
        Some(parent) => Some(parse_span_id(parent)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(B3::Context(B3Context {
        trace_id,
        span_id,
        parent_span_id,
        sampling,
    }))
}

/// Reads the multi-header form through `header`; `None` when no `x-b3-traceid` or
/// `x-b3-sampled` is present or the ids are malformed.
pub fn read_multi<'a>(mut header: impl FnMut(&str) -> Option<&'a [u8]>) -> Option<B3> {
    let Some(trace_id) = header(TRACE_ID) else {
        return multi_sampling(&mut header).map(B3::SamplingOnly);
    };
    let trace_id = parse_trace_id(trim_ows(trace_id))?;
    let span_id = parse_span_id(trim_ows(header(SPAN_ID)?))?;
    let parent_span_id = match header(PARENT_SPAN_ID) {
        Some(parent) => Some(parse_span_id(trim_ows(parent))?),
        None => None,
    };
    Some(B3::Context(B3Context {
        trace_id,
        span_id,
        parent_span_id,
        sampling: multi_sampling(&mut header),
    }))
}

/// `x-b3-flags: 1` (debug) wins over `x-b3-sampled` (`1`/`0`, or legacy `true`/`false`).
fn multi_sampling<'a>(header: &mut impl FnMut(&str) -> Option<&'a [u8]>) -> Option<Sampling> {
    if header(FLAGS).is_some_and(|flags| trim_ows(flags) == b"1") {
        return Some(Sampling::Debug);
    }
    header(SAMPLED).and_then(|sampled| match trim_ows(sampled) {
        b"1" | b"true" => Some(Sampling::Accept),
        b"0" | b"false" => Some(Sampling::Deny),
        _ => None,
    })
}

fn parse_sampling_state(state: &[u8]) -> Option<Sampling> {
    match state {
        b"1" => Some(Sampling::Accept),
        b"0" => Some(Sampling::Deny),
        b"d" => Some(Sampling::Debug),
        _ => None,
    }
}

/// 16 or 32 lower-case hex digits, not all zero.
fn parse_trace_id(text: &[u8]) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match text.len() {
        32 => id = hex::decode_lower(text)?,
        16 => {
            let low: [u8; 8] = hex::decode_lower(text)?;
            id.get_mut(8..)?.copy_from_slice(&low);
        }
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

/// 16 lower-case hex digits, not all zero.
fn parse_span_id(text: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = hex::decode_lower(text)?;
    (id != [0; 8]).then_some(id)
}

/// The single header for a context: `{trace}-{span}-{1|0}[-{parent}]`.
pub fn format_single(
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    sampled: bool,
    parent: Option<&[u8; 8]>,
) -> String {
    let mut out = String::with_capacity(68 + 17);
    hex::encode_into(trace_id, &mut out);
    out.push('-');
    hex::encode_into(span_id, &mut out);
    out.push_str(if sampled { "-1" } else { "-0" });
    if let Some(parent) = parent {
        out.push('-');
        hex::encode_into(parent, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use std::collections::HashMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T32: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const T16: &str = "64fe8b2a57d3eff7";
    const SPAN: &str = "e457b5a2e4d86bd1";
    const PARENT: &str = "05e3ac9a4f6e3b90";

    fn ctx(b3: Option<B3>) -> B3Context {
        match b3 {
            Some(B3::Context(c)) => c,
            other => panic!("expected a context, got {other:?}"),
        }
    }

    #[test]
    fn single_header_forms_from_the_spec() {
        let c = ctx(parse_single(format!("{T32}-{SPAN}-1-{PARENT}").as_bytes()));
        assert_eq!(hex::encode(&c.trace_id), T32);
        assert_eq!(hex::encode(&c.span_id), SPAN);
        assert_eq!(
            c.parent_span_id.map(|p| hex::encode(&p)).as_deref(),
            Some(PARENT)
        );
        assert_eq!(c.sampling, Some(Sampling::Accept));

        let c = ctx(parse_single(format!("{T16}-{SPAN}").as_bytes()));
        assert_eq!(hex::encode(&c.trace_id), format!("0000000000000000{T16}"));
        assert_eq!(c.sampling, None);

        let c = ctx(parse_single(format!("{T32}-{SPAN}-d").as_bytes()));
        assert_eq!(c.sampling, Some(Sampling::Debug));

        assert_eq!(parse_single(b"0"), Some(B3::SamplingOnly(Sampling::Deny)));
        assert_eq!(parse_single(b"d"), Some(B3::SamplingOnly(Sampling::Debug)));
    }

    #[test]
    fn single_header_rejects_malformed() {
        for v in [
            String::new(),
            "x".to_owned(),
            T32.to_owned(),
            format!("{T32}-"),
            format!("{T32}-{SPAN}-2"),
            format!("{T32}-{SPAN}-1-{PARENT}-extra"),
            format!("{}-{SPAN}-1", T32.to_uppercase()),
            format!("{T32}-0000000000000000-1"),
            format!("00000000000000000000000000000000-{SPAN}-1"),
            format!("{}-{SPAN}", &T32[..20]),
        ] {
            assert_eq!(parse_single(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn multi_headers() {
        let headers: HashMap<&str, &str> = [
            (TRACE_ID, T16),
            (SPAN_ID, SPAN),
            (PARENT_SPAN_ID, PARENT),
            (SAMPLED, "1"),
        ]
        .into();
        let c = ctx(read_multi(|n| headers.get(n).map(|v| v.as_bytes())));
        assert_eq!(hex::encode(&c.trace_id), format!("0000000000000000{T16}"));
        assert_eq!(c.sampling, Some(Sampling::Accept));

        let headers: HashMap<&str, &str> = [(TRACE_ID, T32), (SPAN_ID, SPAN), (FLAGS, "1")].into();
        let c = ctx(read_multi(|n| headers.get(n).map(|v| v.as_bytes())));
        assert_eq!(c.sampling, Some(Sampling::Debug));
    }

    #[test]
    fn multi_headers_without_span_or_with_bad_ids_are_ignored() {
        let headers: HashMap<&str, &str> = [(TRACE_ID, T32)].into();
        assert_eq!(read_multi(|n| headers.get(n).map(|v| v.as_bytes())), None);
        let headers: HashMap<&str, &str> = [(TRACE_ID, "xyz"), (SPAN_ID, SPAN)].into();
        assert_eq!(read_multi(|n| headers.get(n).map(|v| v.as_bytes())), None);
        let headers: HashMap<&str, &str> = [(SAMPLED, "0")].into();
        assert_eq!(
            read_multi(|n| headers.get(n).map(|v| v.as_bytes())),
            Some(B3::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(read_multi(|_| None), None);
    }

    #[test]
    fn format_single_round_trips() {
        let c = ctx(parse_single(format!("{T32}-{SPAN}-1-{PARENT}").as_bytes()));
        let text = format_single(&c.trace_id, &c.span_id, true, c.parent_span_id.as_ref());
        assert_eq!(text, format!("{T32}-{SPAN}-1-{PARENT}"));
    }

    #[test]
    fn only_deny_is_unsampled() {
        assert!(Sampling::Accept.sampled());
        assert!(!Sampling::Deny.sampled());
        assert!(Sampling::Debug.sampled(), "debug implies accept");
    }
}
