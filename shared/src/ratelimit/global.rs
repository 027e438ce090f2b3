//! The end of a request's call to the rate limit service: what the request gets.
//!
//! The filter holds a request the local limits admitted while its one call is out
//! ([`RouteLimits::global_call`](super::RouteLimits::global_call)), keeping what it knew then
//! ([`Held`]). When the call ends, [`RateLimitPolicy::call_done`] decides from that, how the
//! call ended and the time: the request's [`Decision`] (as counted), how the call is counted,
//! the headers to apply and a local reply, if any. The filter applies and counts it.
//!
//! The table it follows:
//!
//! | the call | decision | the request |
//! | --- | --- | --- |
//! | OK | the local one (`Unlimited` counts as `Allowed`: a limit applied) | goes on with the service's headers |
//! | over limit | `Rejected` | the local rejection's reply with the service's `Retry-After` ([`Reply::OverLimit`]) |
//! | over limit, dry run | `DryRunRejected` | goes on |
//! | failed | the local one | goes on (fail open, the default) |
//! | failed, `failure_mode_deny` | `Unavailable` | 503 ([`Reply::Unavailable`]) |
//! | failed, `failure_mode_deny`, dry run | `DryRunRejected` | goes on: the 503 it would have been |

use std::fmt;

use super::rls::{self, BadAnswer, Header};
use super::{Budget, Decision, RateLimitPolicy, sends_ratelimit_headers, tightest};
use crate::filter::{CallOutcome, LocalReply};
use crate::host::{NANOS_PER_MS, Nanos, RequestHost};

/// What the filter knew when it held the request for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The local limits' decision (never `Rejected`: a local rejection costs no call).
    pub local: Decision,
    /// The local limits' `X-RateLimit-*` budget, when the response tells it
    /// ([`RateLimitPolicy::response_budget`]).
    pub budget: Option<Budget>,
    /// When the call started.
    pub started: Nanos,
}

/// How a call ended, as `mesh_ratelimit_global_calls_total` counts it (`outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The service answered OK.
    Ok,
    /// The service answered over limit.
    OverLimit,
    /// No usable answer: not sent, a gRPC error, the deadline, a bad answer.
    Error,
}

impl CallResult {
    pub const ALL: [CallResult; 3] = [Self::Ok, Self::OverLimit, Self::Error];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::OverLimit => "over_limit",
            Self::Error => "error",
        }
    }
}

/// Why a call did not decide, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    NotSent,
    /// The call's deadline passed.
    Deadline,
    /// gRPC status: 14 unavailable (no connection, no healthy endpoint), 4 deadline, ...
    Status(u32),
    Answer(BadAnswer),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSent => f.write_str("not_sent"),
            Self::Deadline | Self::Status(4) => f.write_str("deadline_exceeded"),
            Self::Status(14) => f.write_str("unavailable"),
            Self::Status(status) => write!(f, "grpc_status_{status}"),
            Self::Answer(BadAnswer::Undecodable) => f.write_str("bad_answer"),
            Self::Answer(BadAnswer::Code(code)) => write!(f, "bad_code_{code}"),
        }
    }
}

/// A local reply in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The service said over limit ([`RateLimitPolicy::global_reject_reply`]).
    OverLimit(rls::Answer),
    /// The service could not decide and `failure_mode_deny` is on
    /// ([`RateLimitPolicy::unavailable_reply`]).
    Unavailable,
}

/// What a request gets when its call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDone {
    /// How the call is counted.
    pub call: CallResult,
    /// Why it did not decide ([`CallResult::Error`] only), for the log line.
    pub error: Option<CallError>,
    /// The call's latency in whole milliseconds.
    pub duration_ms: u64,
    /// How the request is counted: never `Unlimited` (a limit applied).
    pub decision: Decision,
    /// To set on the upstream request (an OK answer's `request_headers_to_add`).
    pub request_headers: Vec<Header>,
    /// The `X-RateLimit-*` values for the response: the tighter of the local limits' and the
    /// service's, when the response tells them and the service sends none of its own.
    pub budget: Option<Budget>,
    /// To add to the response (an OK answer's `response_headers_to_add`).
    pub response_headers: Vec<Header>,
    /// A local reply; `None`: the request goes on.
    pub reply: Option<Reply>,
}

/// Whether a call that ended with `elapsed` of its `timeout_ms` reached its deadline. Envoy
/// 1.40 ends a call past its deadline with status 14 (unavailable), like a refused
/// connection; the time taken tells them apart (for the log line only). Envoy's timer and the
/// wall clock differ by a little: 7/8 of the deadline counts as reached.
pub fn reached_deadline(timeout_ms: u32, elapsed: Nanos) -> bool {
    elapsed >= u64::from(timeout_ms) * NANOS_PER_MS / 8 * 7
}

/// The answer in a call's outcome, or why there is none.
fn answer(outcome: CallOutcome, timed_out: bool) -> Result<rls::Answer, CallError> {
    match outcome {
        CallOutcome::Ok(message) => rls::interpret(&message).map_err(CallError::Answer),
        CallOutcome::Failed { .. } if timed_out => Err(CallError::Deadline),
        CallOutcome::Failed { grpc_status } => Err(CallError::Status(grpc_status)),
        CallOutcome::NotSent => Err(CallError::NotSent),
    }
}

impl RateLimitPolicy {
    /// Whether requests on the route may call the rate limit service: it has a global limit.
    /// Only such a route has the calls' metrics.
    pub fn makes_calls(&self) -> bool {
        self.global.is_some()
    }

    /// Decides a request held for its call (see the module docs for the table): `held` is what
    /// the filter knew then, `outcome` how the call ended, `now` when.
    pub fn call_done(&self, held: Held, outcome: CallOutcome, now: Nanos) -> CallDone {
        let elapsed = now.saturating_sub(held.started);
        // A limit applied: the request is decided, not unlimited.
        let admitted = match held.local {
            Decision::Unlimited => Decision::Allowed,
            local => local,
        };
        let timed_out = self
            .global
            .as_ref()
            .is_some_and(|g| reached_deadline(g.timeout_ms, elapsed));
        let mut done = CallDone {
            call: CallResult::Ok,
            error: None,
            duration_ms: elapsed / NANOS_PER_MS,
            decision: admitted,
            request_headers: Vec::new(),
            budget: held.budget,
            response_headers: Vec::new(),
            reply: None,
        };
        match answer(outcome, timed_out) {
            Ok(answer) if answer.over_limit.is_none() => {
                if self.tells_budget() {
                    done.budget = tightest(held.budget.into_iter().chain(answer.budget));
                }
                // One `x-ratelimit-*` of the service's replaces all three of the filter's.
                if sends_ratelimit_headers(&answer.response_headers) {
                    done.budget = None;
                }
                done.request_headers = answer.request_headers;
                done.response_headers = answer.response_headers;
            }
            Ok(answer) => {
                done.call = CallResult::OverLimit;
                done.budget = None;
                if self.dry_run {
                    done.decision = Decision::DryRunRejected;
                } else {
                    done.decision = Decision::Rejected;
                    done.reply = Some(Reply::OverLimit(answer));
                }
            }
            Err(why) => {
                done.call = CallResult::Error;
                done.error = Some(why);
                if self.failure_mode_deny && self.dry_run {
                    // Dry run lets everything through, a request the service could not
                    // decide included: the 503 it would have been, counted like a would-be
                    // rejection.
                    done.decision = Decision::DryRunRejected;
                } else if self.failure_mode_deny {
                    done.decision = Decision::Unavailable;
                    done.budget = None;
                    done.reply = Some(Reply::Unavailable);
                }
            }
        }
        done
    }

    /// The local reply a [`Reply`] stands for, in gRPC form for a gRPC call.
    pub fn global_reply(&self, reply: Reply, host: &impl RequestHost) -> LocalReply {
        match reply {
            Reply::OverLimit(answer) => self.global_reject_reply(answer, host),
            Reply::Unavailable => self.unavailable_reply(host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldPath, parse_json};
    use crate::fake::FakeHost;
    use crate::ratelimit::RateLimitConfig;
    use crate::ratelimit::rls::{
        DescriptorStatus, Duration, HeaderValue, RateLimit, RateLimitResponse,
    };
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A policy with one global limit (timeout 20 ms) and `options` (`"dry_run": true, ...`).
    fn policy(options: &str) -> RateLimitPolicy {
        let json = format!(
            r#"{{"limits": [{{"scope": "global"}}], "service_cluster": "rls", "domain": "d"{options}}}"#
        );
        let config: RateLimitConfig = parse_json(json.as_bytes()).unwrap();
        RateLimitPolicy::compile(config, &FieldPath::root()).unwrap()
    }

    const T0: Nanos = 1_000_000 * NANOS_PER_MS;
    const LOCAL: Budget = Budget {
        limit: 10,
        remaining: 4,
        reset_s: 1,
    };
    /// The service's budget: fewer left than [`LOCAL`].
    const SERVICE: Budget = Budget {
        limit: 60,
        remaining: 2,
        reset_s: 30,
    };

    /// An answer with `code` (1 OK, 2 over limit), naming [`SERVICE`]'s limit, resetting in
    /// 30 s, with a header `x-rls: yes` in both lists.
    fn answered(code: i32) -> CallOutcome {
        let header = || HeaderValue {
            key: "x-rls".into(),
            value: "yes".into(),
            raw_value: Vec::new(),
        };
        CallOutcome::Ok(prost::Message::encode_to_vec(&RateLimitResponse {
            overall_code: code,
            statuses: vec![DescriptorStatus {
                code,
                current_limit: Some(RateLimit {
                    requests_per_unit: SERVICE.limit,
                    unit: 2,
                }),
                limit_remaining: SERVICE.remaining,
                duration_until_reset: Some(Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![header()],
            request_headers_to_add: vec![header()],
        }))
    }

    fn held(local: Decision, budget: Option<Budget>) -> Held {
        Held {
            local,
            budget,
            started: T0,
        }
    }

    fn x_rls() -> Vec<Header> {
        vec![("x-rls".into(), b"yes".to_vec())]
    }

    /// What a row expects besides the call's result and the decision.
    #[derive(Debug, PartialEq)]
    enum Then {
        /// Goes on with the service's headers and this budget.
        Headers(Option<Budget>),
        /// Goes on, nothing added, with this budget.
        Plain(Option<Budget>),
        OverLimit,
        Unavailable,
    }

    fn then(done: &CallDone) -> Then {
        match &done.reply {
            Some(Reply::OverLimit(answer)) => {
                assert_eq!(answer.over_limit, Some(30));
                assert_eq!(answer.response_headers, x_rls());
                Then::OverLimit
            }
            Some(Reply::Unavailable) => Then::Unavailable,
            None if done.request_headers.is_empty() => {
                assert!(done.response_headers.is_empty());
                Then::Plain(done.budget)
            }
            None => {
                assert_eq!(
                    (&done.request_headers, &done.response_headers),
                    (&x_rls(), &x_rls())
                );
                Then::Headers(done.budget)
            }
        }
    }

    #[test]
    fn every_outcome_under_every_mode() {
        use CallResult as C;
        use Decision::{Allowed, DryRunRejected, Rejected, Unavailable, Unlimited};
        let failed = CallOutcome::Failed { grpc_status: 14 };
        let deny = r#", "failure_mode_deny": true"#;
        let dry = r#", "dry_run": true"#;
        let both = r#", "dry_run": true, "failure_mode_deny": true"#;
        let off = r#", "rate_limit_headers": false"#;
        #[rustfmt::skip]
        let rows = [
            // options, local decision and budget, outcome => counted call, decision, then
            ("", Allowed, Some(LOCAL), answered(1), C::Ok, Allowed, Then::Headers(Some(SERVICE))),
            ("", Unlimited, None, answered(1), C::Ok, Allowed, Then::Headers(Some(SERVICE))),
            (off, Allowed, None, answered(1), C::Ok, Allowed, Then::Headers(None)),
            (dry, DryRunRejected, None, answered(1), C::Ok, DryRunRejected, Then::Headers(None)),
            ("", Allowed, Some(LOCAL), answered(2), C::OverLimit, Rejected, Then::OverLimit),
            (deny, Allowed, Some(LOCAL), answered(2), C::OverLimit, Rejected, Then::OverLimit),
            (dry, Allowed, None, answered(2), C::OverLimit, DryRunRejected, Then::Plain(None)),
            (both, Allowed, None, answered(2), C::OverLimit, DryRunRejected, Then::Plain(None)),
            ("", Allowed, Some(LOCAL), failed.clone(), C::Error, Allowed, Then::Plain(Some(LOCAL))),
            ("", Unlimited, None, failed.clone(), C::Error, Allowed, Then::Plain(None)),
            (dry, DryRunRejected, None, failed.clone(), C::Error, DryRunRejected, Then::Plain(None)),
            (deny, Allowed, Some(LOCAL), failed.clone(), C::Error, Unavailable, Then::Unavailable),
            (deny, Unlimited, None, CallOutcome::NotSent, C::Error, Unavailable, Then::Unavailable),
            (both, Allowed, None, failed.clone(), C::Error, DryRunRejected, Then::Plain(None)),
            (both, DryRunRejected, None, failed, C::Error, DryRunRejected, Then::Plain(None)),
        ];
        for (options, local, budget, outcome, call, decision, expected) in rows {
            let row = format!("{options} {local:?} {outcome:?}");
            let done = policy(options).call_done(held(local, budget), outcome, T0 + NANOS_PER_MS);
            assert_eq!((done.call, done.decision), (call, decision), "{row}");
            assert_eq!(done.error.is_some(), call == C::Error, "{row}");
            assert_eq!(then(&done), expected, "{row}");
        }
    }

    #[test]
    fn the_tighter_budget_of_the_local_limits_and_the_service_is_told() {
        let roomy = Budget {
            remaining: 50,
            ..SERVICE
        };
        let tight = Budget {
            remaining: 1,
            ..LOCAL
        };
        for (local, expected) in [
            (None, SERVICE),
            (Some(roomy), SERVICE),
            (Some(tight), tight),
        ] {
            let done = policy("").call_done(held(Decision::Allowed, local), answered(1), T0);
            assert_eq!(done.budget, Some(expected), "{local:?}");
        }
    }

    #[test]
    fn a_ratelimit_header_of_the_services_replaces_the_budget() {
        let CallOutcome::Ok(message) = answered(1) else {
            panic!("an answer")
        };
        let mut response =
            <RateLimitResponse as prost::Message>::decode(message.as_slice()).unwrap();
        response.response_headers_to_add[0].key = "X-RateLimit-Limit".into();
        let outcome = CallOutcome::Ok(prost::Message::encode_to_vec(&response));
        let done = policy("").call_done(held(Decision::Allowed, Some(LOCAL)), outcome, T0);
        assert_eq!(done.budget, None);
        assert_eq!(
            done.response_headers,
            [("x-ratelimit-limit".to_owned(), b"yes".to_vec())]
        );
    }

    #[test]
    fn only_a_route_with_a_global_limit_makes_calls() {
        assert!(policy("").makes_calls());
        let local: RateLimitConfig =
            parse_json(br#"{"limits": [{"rate_per_s": 1, "burst": 1}]}"#).unwrap();
        let local = RateLimitPolicy::compile(local, &FieldPath::root()).unwrap();
        assert!(!local.makes_calls());
    }

    #[test]
    fn why_a_call_failed_is_told_apart_by_the_time_it_took() {
        let p = policy("");
        // 7/8 of the 20 ms deadline counts as reached: Envoy's 14 after its timeout.
        for (grpc_status, elapsed, expected) in [
            (14, 17_499_999, CallError::Status(14)),
            (14, 17_500_000, CallError::Deadline),
            (4, 1, CallError::Status(4)),
            (13, 30 * NANOS_PER_MS, CallError::Deadline),
        ] {
            let outcome = CallOutcome::Failed { grpc_status };
            let done = p.call_done(held(Decision::Allowed, None), outcome, T0 + elapsed);
            assert_eq!(done.error, Some(expected), "{grpc_status} after {elapsed}");
        }
        for (outcome, expected) in [
            (CallOutcome::NotSent, CallError::NotSent),
            (
                CallOutcome::Ok(b"\xff\xff".to_vec()),
                CallError::Answer(BadAnswer::Undecodable),
            ),
            (
                CallOutcome::Ok(Vec::new()),
                CallError::Answer(BadAnswer::Code(0)),
            ),
        ] {
            // An answer or a refusal is never a deadline, however late.
            let done = p.call_done(
                held(Decision::Allowed, None),
                outcome,
                T0 + NANOS_PER_MS * 99,
            );
            assert_eq!(done.error, Some(expected));
        }
    }

    #[test]
    fn the_deadline_rule_and_the_log_names() {
        assert!(!reached_deadline(8, 6_999_999));
        assert!(reached_deadline(8, 7_000_000));
        assert!(reached_deadline(1, NANOS_PER_MS));
        let names = [
            (CallError::NotSent, "not_sent"),
            (CallError::Deadline, "deadline_exceeded"),
            (CallError::Status(4), "deadline_exceeded"),
            (CallError::Status(14), "unavailable"),
            (CallError::Status(13), "grpc_status_13"),
            (CallError::Answer(BadAnswer::Undecodable), "bad_answer"),
            (CallError::Answer(BadAnswer::Code(7)), "bad_code_7"),
        ];
        for (error, name) in names {
            assert_eq!(error.to_string(), name);
        }
        let labels = CallResult::ALL.map(CallResult::label);
        assert_eq!(labels, ["ok", "over_limit", "error"]);
    }

    #[test]
    fn the_duration_is_in_whole_milliseconds_and_never_negative() {
        let p = policy("");
        let done = p.call_done(held(Decision::Allowed, None), answered(1), T0 + 3_999_999);
        assert_eq!(done.duration_ms, 3);
        let early = p.call_done(held(Decision::Allowed, None), answered(1), T0 - 1);
        assert_eq!(early.duration_ms, 0);
    }

    #[test]
    fn a_reply_is_the_policys_own_reply() {
        let p = policy("");
        let host = FakeHost::new();
        assert_eq!(
            p.global_reply(Reply::Unavailable, &host),
            p.unavailable_reply(&host)
        );
        let CallOutcome::Ok(message) = answered(2) else {
            panic!("an answer")
        };
        let answer = rls::interpret(&message).unwrap();
        assert_eq!(
            p.global_reply(Reply::OverLimit(answer.clone()), &host),
            p.global_reject_reply(answer, &host)
        );
    }
}
