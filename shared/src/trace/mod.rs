//! The trace-ID policy: keep, continue or start a trace and write it in the chosen formats.
//!
//! Precedence of incoming context: a valid `traceparent`, else a valid B3 context (single
//! `b3` header, else `x-b3-*`), else a new trace from the host's randomness. An invalid
//! traceparent is never forwarded: it is replaced, and its `tracestate` dropped.

pub mod b3;
pub mod sampling;
pub mod w3c;

use serde::Deserialize;

use crate::config::{ConfigError, FieldPath, HeaderName};
use crate::hex;
use crate::host::RequestHost;
use b3::B3;
use sampling::{Sampling, Threshold};
use w3c::{TraceParent, TraceStateAction};

pub const REQUEST_ID: &str = "x-request-id";
pub const DEFAULT_RESPONSE_HEADER: &str = "x-trace-id";

/// One route's trace policy as written in plugin JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("examples" = [{"mode": "child", "emit": ["w3c", "b3"]}])))]
pub struct TraceConfig {
    /// `propagate` keeps a valid incoming traceparent; `child` continues it with a new span
    /// id as parent.
    #[serde(default)]
    pub mode: Mode,
    /// Formats written to the upstream request, each at most once.
    #[serde(default = "default_emit")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1), extend("uniqueItems" = true)))]
    pub emit: Vec<Format>,
    /// Response header carrying the trace id; `null` turns it off.
    #[serde(default = "default_response_header")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::config::HEADER_NAME_PATTERN)))]
    pub response_header: Option<String>,
    /// The share of the traces the filter starts that are sampled, decided from the trace
    /// id as OpenTelemetry's consistent probability sampling does, and written as
    /// `ot=th:<threshold>` in `tracestate` on those sampled. Absent: every trace the filter
    /// starts is sampled and no threshold is written. A continued trace keeps its parent's
    /// decision.
    #[serde(default, deserialize_with = "sample_percent")]
    #[cfg_attr(feature = "schema", schemars(with = "f64", range(min = 0, max = 100), extend("examples" = [10])))]
    pub sample_percent: Option<f64>,
}

/// A number, as `number` reads one (no float formatting: the module stays without it).
fn sample_percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    crate::config::number(d, "a number from 0 to 100").map(Some)
}

fn default_emit() -> Vec<Format> {
    vec![Format::W3c]
}

fn default_response_header() -> Option<String> {
    Some(DEFAULT_RESPONSE_HEADER.to_owned())
}

/// What the filter does with a valid incoming trace context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Mode {
    /// Keep the incoming traceparent as it is.
    #[default]
    Propagate,
    /// Continue the trace with a new span id, the incoming one as parent.
    Child,
}

crate::config_names!(Mode { Propagate = "propagate", Child = "child" });

/// A trace header format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", serde(rename_all = "snake_case"))]
pub enum Format {
    /// `traceparent` (and `tracestate` when kept).
    W3c,
    /// The single `b3` header.
    B3,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`.
    B3multi,
    /// `x-request-id`, set only when absent.
    RequestId,
}

crate::config_names!(Format { W3c = "w3c", B3 = "b3", B3multi = "b3multi", RequestId = "request_id" });

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
            Self::B3multi => "b3multi",
            Self::RequestId => "request_id",
        }
    }
}

/// A validated trace policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePolicy {
    pub mode: Mode,
    pub emit: Emit,
    pub response_header: Option<HeaderName>,
    /// The head-sampling threshold of the traces the filter starts; `None`: all sampled,
    /// none written.
    pub sampler: Option<Threshold>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Emit {
    pub w3c: bool,
    pub b3: bool,
    pub b3multi: bool,
    pub request_id: bool,
}

impl TracePolicy {
    pub fn compile(config: TraceConfig, at: &FieldPath) -> Result<Self, ConfigError> {
        if config.emit.is_empty() {
            return Err(at.field("emit").invalid("must list at least one format"));
        }
        let mut emit = Emit::default();
        for (i, format) in config.emit.iter().enumerate() {
            let flag = match format {
                Format::W3c => &mut emit.w3c,
                Format::B3 => &mut emit.b3,
                Format::B3multi => &mut emit.b3multi,
                Format::RequestId => &mut emit.request_id,
            };
            if *flag {
                return Err(at
                    .field("emit")
                    .index(i)
                    .invalid(format!("{} is listed twice", format.as_str())));
            }
            *flag = true;
        }
        let response_header = match config.response_header {
            Some(name) => Some(HeaderName::parse(&name, &at.field("response_header"))?),
            None => None,
        };
        let sampler = match config.sample_percent {
            Some(percent) if !(0.0..=100.0).contains(&percent) => {
                return Err(at.field("sample_percent").invalid("must be from 0 to 100"));
            }
            percent => percent.map(Threshold::from_percent),
        };
        Ok(Self {
            mode: config.mode,
            emit,
            response_header,
            sampler,
        })
    }
}

/// What happened to the request's trace; a stats label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No incoming context: a new trace.
    Started,
    /// A valid traceparent, or (without one) a valid B3 context, was carried on.
    Continued,
    /// An invalid traceparent came in and was replaced (by B3's context or a new trace).
    Replaced,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Self::Started, Self::Continued, Self::Replaced];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Continued => "continued",
            Self::Replaced => "replaced",
        }
    }
}

/// Where the trace id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    W3c,
    B3,
    New,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
            Self::New => "new",
        }
    }
}

/// A request header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Set(&'static str, String),
    Remove(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub trace_id: [u8; 16],
    pub outcome: Outcome,
    pub source: Source,
    /// Changes to the request headers, in order.
    pub edits: Vec<Edit>,
    /// Whether the trace sent upstream is sampled (its sampled flag).
    pub sampled: bool,
    /// The sampling decision of a trace the filter started (`source` is `New`).
    pub started: Option<Sampling>,
}

impl Decision {
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex::new(&self.trace_id)
    }
}

/// A trace id in lower-case hex, kept inline in the request's state from the request to the
/// response phase (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn new(trace_id: &[u8; 16]) -> Self {
        let mut text = [0; 32];
        hex::encode_to(trace_id, &mut text);
        Self(text)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl TracePolicy {
    /// What the response phase keeps of `decision`: its trace id (hex), when the policy puts
    /// it on the response.
    pub fn kept_for_response(&self, decision: &Decision) -> Option<TraceIdHex> {
        self.response_header
            .as_ref()
            .map(|_| decision.trace_id_hex())
    }

    /// The header the response phase sets, name and value: the policy's `response_header`
    /// with the trace id `kept` ([`TracePolicy::kept_for_response`]); `None`: none.
    pub fn trace_id_header<'a>(
        &'a self,
        kept: Option<&'a TraceIdHex>,
    ) -> Option<(&'a str, &'a [u8])> {
        Some((self.response_header.as_ref()?.as_str(), kept?.as_bytes()))
    }
}

/// The context sent upstream.
struct Outgoing {
    trace_id: [u8; 16],
    /// The span the upstream sees as its parent (traceparent's parent-id, B3's span id).
    span_id: [u8; 8],
    flags: u8,
    /// B3's parent of `span_id`, when known.
    b3_parent: Option<[u8; 8]>,
}

impl TracePolicy {
    /// Reads the incoming context through `host` (request headers, randomness) and decides
    /// what to send upstream. Changes nothing: the caller applies [`Decision::edits`].
    pub fn decide(&self, host: &mut impl RequestHost) -> Decision {
        let incoming = host
            .request_header(w3c::TRACEPARENT)
            .map(TraceParent::parse)
            .map(|parsed| match parsed {
                // Envoy shows only the first of repeated headers; two are invalid.
                Ok(_) if host.request_header_count(w3c::TRACEPARENT) > 1 => {
                    Err(w3c::TraceParentError::Repeated)
                }
                other => other,
            });
        let invalid_traceparent = matches!(incoming, Some(Err(_)));
        // `threshold`: what a trace the filter started and sampled was sampled with.
        let (mut out, source, traceparent, threshold) = match incoming {
            Some(Ok(tp)) => (
                Outgoing {
                    trace_id: tp.trace_id,
                    span_id: tp.parent_id,
                    flags: tp.flags,
                    b3_parent: None,
                },
                Source::W3c,
                Some(tp),
                None,
            ),
            _ => match read_b3(host) {
                Some(B3::Context(ctx)) => (
                    Outgoing {
                        trace_id: ctx.trace_id,
                        span_id: ctx.span_id,
                        // Never the random flag: nothing in B3 says how its id was made
                        // (a 64-bit id is widened with zeros; 128-bit ids of some tracers
                        // begin with a timestamp).
                        flags: sampled_flag(ctx.sampling),
                        b3_parent: ctx.parent_span_id,
                    },
                    Source::B3,
                    None,
                    None,
                ),
                // The client decided: the sampler does not overrule it.
                Some(B3::SamplingOnly(sampling)) => (
                    new_trace(host, sampled_flag(Some(sampling))),
                    Source::New,
                    None,
                    None,
                ),
                None => {
                    let (out, threshold) = self.start_sampled(host);
                    (out, Source::New, None, threshold)
                }
            },
        };
        if self.mode == Mode::Child && source != Source::New {
            out.b3_parent = Some(out.span_id);
            out.span_id = random_span_id(host);
        }
        let outcome = match (invalid_traceparent, source) {
            (true, _) => Outcome::Replaced,
            (false, Source::New) => Outcome::Started,
            (false, _) => Outcome::Continued,
        };

        let mut edits = Vec::new();
        if self.emit.w3c {
            // A valid version-00 header that is passed on unchanged is left alone.
            let unchanged =
                self.mode == Mode::Propagate && traceparent.is_some_and(|tp| tp.version == 0);
            if !unchanged {
                let tp = TraceParent {
                    version: 0,
                    trace_id: out.trace_id,
                    parent_id: out.span_id,
                    flags: out.flags,
                };
                edits.push(Edit::Set(w3c::TRACEPARENT, tp.format()));
            }
            if source == Source::W3c {
                // Its lines are one list (read from the header map already fetched).
                let lines: Vec<&[u8]> = host.request_header_values(w3c::TRACESTATE).collect();
                if !lines.is_empty() {
                    match w3c::check_tracestate(&lines) {
                        TraceStateAction::Keep => {}
                        TraceStateAction::Rewrite(kept) => {
                            edits.push(Edit::Set(w3c::TRACESTATE, kept));
                        }
                        TraceStateAction::Drop => edits.push(Edit::Remove(w3c::TRACESTATE)),
                    }
                }
            } else if let Some(threshold) = threshold {
                // A new trace's own tracestate: the threshold it was sampled with.
                edits.push(Edit::Set(w3c::TRACESTATE, threshold.tracestate_member()));
            } else {
                // tracestate belongs to the traceparent it came with.
                remove_if_present(host, w3c::TRACESTATE, &mut edits);
            }
        } else if invalid_traceparent {
            // Not emitted, yet an invalid one is never passed on, nor its tracestate.
            edits.push(Edit::Remove(w3c::TRACEPARENT));
            remove_if_present(host, w3c::TRACESTATE, &mut edits);
        }
        let sampled = out.flags & w3c::FLAG_SAMPLED != 0;
        if self.emit.b3 {
            let value =
                b3::format_single(&out.trace_id, &out.span_id, sampled, out.b3_parent.as_ref());
            edits.push(Edit::Set(b3::B3, value));
        }
        if self.emit.b3multi {
            edits.push(Edit::Set(b3::TRACE_ID, hex::encode(&out.trace_id)));
            edits.push(Edit::Set(b3::SPAN_ID, hex::encode(&out.span_id)));
            match out.b3_parent {
                Some(parent) => edits.push(Edit::Set(b3::PARENT_SPAN_ID, hex::encode(&parent))),
                None => remove_if_present(host, b3::PARENT_SPAN_ID, &mut edits),
            }
            edits.push(Edit::Set(
                b3::SAMPLED,
                (if sampled { "1" } else { "0" }).to_owned(),
            ));
        }
        if self.emit.request_id && host.request_header(REQUEST_ID).is_none_or(|v| v.is_empty()) {
            edits.push(Edit::Set(REQUEST_ID, uuid_text(&out.trace_id)));
        }
        Decision {
            trace_id: out.trace_id,
            outcome,
            source,
            edits,
            sampled,
            started: (source == Source::New).then_some(Sampling::of(sampled)),
        }
    }
}

impl TracePolicy {
    /// A new trace with no decision given: sampled as the route's sampler says (every one
    /// without a sampler), and the threshold when it is sampled by one.
    fn start_sampled(&self, host: &mut impl RequestHost) -> (Outgoing, Option<Threshold>) {
        let mut out = new_trace(host, w3c::FLAG_SAMPLED);
        let Some(threshold) = self.sampler else {
            return (out, None);
        };
        if threshold.samples(sampling::randomness(&out.trace_id)) {
            (out, Some(threshold))
        } else {
            out.flags &= !w3c::FLAG_SAMPLED;
            (out, None)
        }
    }
}

/// Removes a header only when the request has it: each removal is a host call and makes
/// Envoy choose the route again.
fn remove_if_present(host: &impl RequestHost, name: &'static str, edits: &mut Vec<Edit>) {
    if host.request_header(name).is_some() {
        edits.push(Edit::Remove(name));
    }
}

/// The single `b3` header if it holds a context, else the multi-header form, else the
/// single header's sampling decision.
fn read_b3(host: &mut impl RequestHost) -> Option<B3> {
    let single = host.request_header(b3::B3).and_then(b3::parse_single);
    if let Some(B3::Context(_)) = single {
        return single;
    }
    match b3::read_multi(|name| host.request_header(name)) {
        Some(B3::Context(ctx)) => Some(B3::Context(ctx)),
        multi => single.or(multi),
    }
}

/// A deferred B3 decision (no sampling state) starts sampled, like a new trace.
fn sampled_flag(sampling: Option<b3::Sampling>) -> u8 {
    match sampling {
        Some(b3::Sampling::Deny) => 0,
        _ => w3c::FLAG_SAMPLED,
    }
}

/// A trace id of the host's randomness, all 128 bits: Level 2's random flag says so.
fn new_trace(host: &mut impl RequestHost, flags: u8) -> Outgoing {
    let mut trace_id = [0u8; 16];
    let (high, low) = trace_id.split_at_mut(8);
    high.copy_from_slice(&host.random_u64().to_be_bytes());
    // Never all-zero: that id is invalid.
    low.copy_from_slice(&host.random_u64().max(1).to_be_bytes());
    Outgoing {
        trace_id,
        span_id: random_span_id(host),
        flags: flags | w3c::FLAG_RANDOM,
        b3_parent: None,
    }
}

fn random_span_id(host: &mut impl RequestHost) -> [u8; 8] {
    host.random_u64().max(1).to_be_bytes()
}

/// The trace id in UUID layout (8-4-4-4-12), for `x-request-id`.
fn uuid_text(trace_id: &[u8; 16]) -> String {
    let hex = hex::encode(trace_id);
    let mut out = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
