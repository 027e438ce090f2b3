//! Token-bucket rate limiting, one bucket per key for all of Envoy.
//!
//! Each Envoy worker runs its own VM, so buckets live in Envoy's shared data, where every VM
//! sees them: one fixed-size record per slot (see [`bucket`] for the record, [`key`] for
//! slots). The arithmetic is governor's GCRA; the state it keeps is absolute wall-clock time,
//! so VMs agree.
//!
//! A request is checked in two phases:
//! 1. **Decide.** For every limit that applies, read its slot record and let governor decide.
//!    If any limit rejects, the request is rejected and nothing is written: a request
//!    rejected by one limit takes no token from the others (a client flooding its own
//!    per-key limit does not drain a route-wide one).
//! 2. **Take.** Write each admitting limit's new record with the CAS token of its read. If
//!    another VM wrote the slot in between, that limit is decided again from a fresh read
//!    ([`store::update`], bounded retries). Should it now reject, the request is rejected;
//!    the limits already written keep the token they took (a rare race, never an extra
//!    admission).
//!
//! A request that reads a slot may lease tokens for this VM's later requests on it
//! ([`bucket::decide_lease`]: exact, at worst under-admitting), so while a bucket is far
//! from empty most requests touch no shared data: a lease holds at most [`MAX_LEASE`] tokens
//! for [`LEASE_HOLD`], its size follows what the VM used of the last one, what it left unused
//! is given back by the VM's next decision on the slot ([`bucket::Unused`]), and a bucket holding
//! less than [`bucket::LEASE_SHARE`] times a lease's cost gets none (each request takes its own
//! token, as before). Otherwise a request costs one shared-data read and one CAS write per
//! limit. When the retries run out or the host refuses a write, the request is let through
//! (`failure_mode_deny: false`, the default) or rejected, and the error is reported.
//!
//! A slot record is created (full) by the first request whose key lands in it, then read
//! again for its CAS token, so every decision is a compare-and-swap on a record that exists:
//! memory grows with the slots in use, up to the limit's `slots`. Envoy has no "create if
//! absent": a VM that stalls between finding no record and creating it overwrites what
//! another VM decided on that slot in between, at most once per slot per Envoy start.

pub mod bucket;
pub mod config;
pub mod global;
pub mod key;
pub mod rls;
pub mod secret;

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

pub use config::{
    DEFAULT_SLOTS, Global, GlobalLimit, KeyConfig, Limit, LimitConfig, MAX_LIMITS, RateLimitConfig,
    RateLimitPolicy, Scope,
};

use crate::decimal;
use crate::filter::{GrpcCall, LocalReply};
use crate::grpc;
use crate::host::{Host, NANOS_PER_MS, Nanos, RequestHost, Shared, SharedError};
use crate::store::{self, Step, UpdateError};
use bucket::Outcome;
use key::KeyValue;
use secret::{EnvoySecret, Placement};

pub const RETRY_AFTER: &str = "retry-after";
pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
pub const RESET_HEADER: &str = "x-ratelimit-reset";

/// The shared-data keys of one limit's slots: this, then the slot's number
/// (`<plugin prefix>/ratelimit/<route>/<limit>/<slot>`).
fn key_base(key_prefix: &str, route_name: &str, limit_index: usize) -> String {
    format!("{key_prefix}/ratelimit/{route_name}/{limit_index}/")
}

/// What the policy decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No limit applied (every limit is header-keyed, skipped when the header is missing).
    Unlimited,
    Allowed,
    Rejected,
    /// Dry run: would have been rejected; let through.
    DryRunRejected,
    /// The rate limit service could not decide and `failure_mode_deny` answered 503: not a
    /// client over its limit, so not `Rejected`.
    Unavailable,
}

impl Decision {
    /// The stats label; `None` for [`Decision::Unlimited`], which is not counted.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Unlimited => None,
            Self::Allowed => Some("allowed"),
            Self::Rejected => Some("rejected"),
            Self::DryRunRejected => Some("dry_run_rejected"),
            Self::Unavailable => Some("unavailable"),
        }
    }

    /// What the request got, as a warning about a failure names it (`action=`): answered
    /// here (`rejected`, `unavailable`) or let through.
    pub fn action(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::Unlimited | Self::Allowed | Self::DryRunRejected => "let_through",
        }
    }
}

/// The tightest limit as the `X-RateLimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The limit's burst (bucket size).
    pub limit: u32,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Whole seconds, rounded up, until the bucket is full again.
    pub reset_s: u64,
}

/// The result of [`RouteLimits::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub decision: Decision,
    /// For `X-RateLimit-*`: the rejecting limit, else the one with the fewest tokens left.
    /// `None` when no limit applied or shared data failed.
    pub budget: Option<Budget>,
    /// Rejected: whole seconds, rounded up (at least 1), until a retry can pass.
    pub retry_after_s: u64,
    /// The same wait in milliseconds, rounded up (at least 1): gRPC's retry pushback.
    pub retry_after_ms: u64,
    /// Shared data could not be updated; the decision is `failure_mode_deny`'s.
    pub store_error: Option<UpdateError>,
}

/// A policy bound to one route in one VM: the slot keys of its limits.
#[derive(Debug)]
pub struct RouteLimits {
    policy: Rc<RateLimitPolicy>,
    /// The value of a global limit keyed by route.
    route_name: String,
    limits: Vec<BoundLimit>,
    /// The secret keys are placed in slots with.
    placement: Placement,
    /// Reused to build slot keys, so a request allocates no key.
    scratch: RefCell<String>,
}

#[derive(Debug)]
struct BoundLimit {
    salt: u64,
    key_base: String,
    /// This VM's leases on the limit's slots.
    leases: RefCell<Vec<SlotLease>>,
}

/// How long leased tokens may be used.
pub const LEASE_HOLD: Nanos = 20 * NANOS_PER_MS;
/// The most tokens one decision takes (the request's own included).
pub const MAX_LEASE: u32 = 32;
/// The most slots of one limit a VM holds leases on.
pub const LEASE_SLOTS: usize = 16;

/// A VM's lease on one slot, and what it learnt of the slot's traffic.
#[derive(Debug, Clone, Copy)]
struct SlotLease {
    slot: u32,
    /// Tokens taken at once (the taking request's own included), and left for later ones.
    size: u32,
    left: u32,
    /// The tokens may be used from `taken` until `until` (exclusive).
    taken: Nanos,
    until: Nanos,
    /// The bucket as the lease left it, for `X-RateLimit-*`.
    remaining: u32,
    full_at: Nanos,
    /// The TAT the decision wrote.
    written: Nanos,
}

impl SlotLease {
    fn usable(&self, now: Nanos) -> bool {
        self.left > 0 && (self.taken..self.until).contains(&now)
    }

    /// The tokens the next decision on the slot takes: twice the last lease's when this VM
    /// used it up in the first half of its time (its traffic on the slot is at least twice
    /// the lease), as many when it used it up later, else what it used of it. A lease grows
    /// only with traffic already seen, so one left unused is rare under steady traffic.
    fn next_size(&self, now: Nanos) -> u32 {
        let half = self
            .taken
            .saturating_add(self.until.saturating_sub(self.taken) / 2);
        match (self.left, now) {
            (0, now) if (self.taken..half).contains(&now) => {
                self.size.saturating_mul(2).min(MAX_LEASE)
            }
            (0, _) => self.size,
            (left, _) => self.size.saturating_sub(left).max(1),
        }
    }
}

impl BoundLimit {
    /// The lease on `slot` when it can admit a request at `now`.
    fn usable_lease(&self, slot: u32, now: Nanos) -> Option<SlotLease> {
        let leases = self.leases.try_borrow().ok()?;
        leases
            .iter()
            .find(|l| l.slot == slot)
            .filter(|l| l.usable(now))
            .copied()
    }

    /// How many tokens a decision on `slot` takes for later requests, and the tokens of the
    /// last lease that expired unused, to give back.
    fn next_lease(&self, slot: u32, now: Nanos) -> (u32, Option<bucket::Unused>) {
        let Ok(leases) = self.leases.try_borrow() else {
            return (0, None);
        };
        leases
            .iter()
            .find(|l| l.slot == slot)
            .map_or((0, None), |l| {
                let unused = (l.left > 0).then_some(bucket::Unused {
                    tokens: l.left,
                    written: l.written,
                });
                (l.next_size(now) - 1, unused)
            })
    }

    /// Uses a token of the lease on `slot`.
    fn use_lease(&self, slot: u32) {
        if let Ok(mut leases) = self.leases.try_borrow_mut()
            && let Some(lease) = leases.iter_mut().find(|l| l.slot == slot)
        {
            lease.left = lease.left.saturating_sub(1);
        }
    }

    /// Notes the decision that took `size` tokens of `slot` at `now`, `lease` of them for
    /// later requests. A slot without an entry gets one in place of one whose lease is over
    /// (never of a live lease: its tokens would be lost); with none free, it learns nothing.
    fn note_taken(
        &self,
        slot: u32,
        now: Nanos,
        lease: Option<bucket::Lease>,
        record: bucket::Record,
        remaining: u32,
        full_in: Nanos,
    ) {
        let Ok(mut leases) = self.leases.try_borrow_mut() else {
            return;
        };
        let tokens = lease.map_or(0, |l| l.tokens);
        let entry = SlotLease {
            slot,
            size: tokens + 1,
            left: tokens,
            taken: now,
            until: lease.map_or(now.saturating_add(LEASE_HOLD), |l| l.until),
            remaining,
            full_at: now.saturating_add(full_in),
            written: u64::from_le_bytes(record),
        };
        if let Some(existing) = leases.iter_mut().find(|l| l.slot == slot) {
            *existing = entry;
        } else if leases.len() < LEASE_SLOTS {
            leases.push(entry);
        } else if let Some(free) = leases.iter_mut().find(|l| !l.usable(now)) {
            *free = entry;
        }
    }
}

/// A limit that admitted the request in phase 1 and has its token to take.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// From this VM's lease: nothing to write.
    Leased { slot: u32 },
    /// From the shared record read: write `record` with the read's CAS token.
    Read {
        slot: u32,
        cas: Option<u32>,
        record: bucket::Record,
        lease: Option<bucket::Lease>,
        remaining: u32,
        full_in: Nanos,
    },
}

impl RateLimitPolicy {
    /// Binds the policy to `route_name`: slot keys, and the secret keys are placed with.
    /// Slot records are created on first use.
    pub fn bind(
        self: &Rc<Self>,
        key_prefix: &str,
        route_name: &str,
        secret: &EnvoySecret,
        host: &mut impl Host,
    ) -> RouteLimits {
        let placement = secret.placement(self.slot_secret, host);
        let limits: Vec<BoundLimit> = (0..self.limits.len())
            .map(|i| BoundLimit {
                salt: key::salt(route_name, i),
                key_base: key_base(key_prefix, route_name, i),
                leases: RefCell::new(Vec::new()),
            })
            .collect();
        // Room for the longest slot key: a request builds its keys in it without allocating.
        let longest = limits.iter().map(|b| b.key_base.len()).max().unwrap_or(0);
        RouteLimits {
            policy: Rc::clone(self),
            route_name: route_name.to_owned(),
            limits,
            placement,
            scratch: RefCell::new(String::with_capacity(longest + 5)),
        }
    }
}

impl RouteLimits {
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    /// The call to the rate limit service for this request, whose local limits decided
    /// `local`: one descriptor per global limit that applies (a header-keyed limit with
    /// `when_missing: skip` and no header does not). `None` when the route has no global
    /// limit or none applies, and for a request the local limits reject: that never costs a
    /// call.
    pub fn global_call(&self, local: Decision, host: &impl RequestHost) -> Option<GrpcCall> {
        if local == Decision::Rejected {
            return None;
        }
        let global = self.policy.global.as_ref()?;
        let descriptors: Vec<rls::RateLimitDescriptor> = global
            .limits
            .iter()
            .filter_map(|limit| {
                let value: Cow<'_, [u8]> = match limit.key.read(host) {
                    KeyValue::Skip | KeyValue::Refused => return None,
                    KeyValue::Anonymous => Cow::Borrowed(&[]),
                    KeyValue::Value(_) if limit.key == key::Key::Route => {
                        Cow::Borrowed(self.route_name.as_bytes())
                    }
                    KeyValue::Value(value) => value,
                };
                Some(rls::descriptor(&limit.descriptor_key, &value))
            })
            .collect();
        if descriptors.is_empty() {
            return None;
        }
        Some(GrpcCall {
            cluster: global.service_cluster.clone(),
            service: rls::SERVICE,
            method: rls::METHOD,
            message: rls::request(&global.domain, descriptors),
            timeout_ms: global.timeout_ms,
        })
    }

    /// Decides one request and takes its tokens (see the module docs for the two phases).
    pub fn check(&self, host: &mut impl RequestHost) -> Check {
        let now = host.now();
        let policy = &*self.policy;
        let mut pending: [Option<Pending>; MAX_LIMITS] = [None; MAX_LIMITS];
        let mut budgets: [Option<Budget>; MAX_LIMITS] = [None; MAX_LIMITS];
        // (wait, budget) of the rejecting limit that asks for the longest wait.
        let mut rejected: Option<(u64, Budget)> = None;

        let secret = self.placement.secret();
        let global_keys = policy.global.iter().flat_map(|g| &g.limits);
        if global_keys.map(|l| &l.key).any(|k| k.refuses(host)) {
            return self.reject(0, None, None);
        }
        for (i, (limit, bound)) in policy.limits.iter().zip(&self.limits).enumerate() {
            let value = limit.key.read(host);
            match value {
                KeyValue::Skip => continue,
                KeyValue::Refused => return self.reject(0, None, None),
                KeyValue::Value(_) | KeyValue::Anonymous => {}
            }
            let slot = key::slot(secret, bound.salt, &value, limit.slots);
            if let Some(lease) = bound.usable_lease(slot, now) {
                let remaining = lease.remaining.saturating_add(lease.left - 1);
                let full_in = lease.full_at.saturating_sub(now);
                set(&mut budgets, i, budget(limit, remaining, full_in));
                set(&mut pending, i, Pending::Leased { slot });
                continue;
            }
            let (extra, unused) = bound.next_lease(slot, now);
            let read = self.with_key(i, slot, |key| read_or_create(host, key));
            let record = read.as_ref().map(|r| r.value.as_slice());
            match bucket::decide_lease(&limit.rate, record, now, extra, LEASE_HOLD, unused) {
                (
                    Outcome::Admit {
                        record,
                        remaining,
                        full_in,
                    },
                    lease,
                ) => {
                    let leased = lease.map_or(0, |l| l.tokens);
                    let shown = remaining.saturating_add(leased);
                    set(&mut budgets, i, budget(limit, shown, full_in));
                    set(
                        &mut pending,
                        i,
                        Pending::Read {
                            slot,
                            cas: read.map(|r| r.cas),
                            record,
                            lease,
                            remaining,
                            full_in,
                        },
                    );
                }
                (
                    Outcome::Reject {
                        wait,
                        full_in,
                        repair,
                    },
                    _,
                ) => {
                    if let Some(repair) = repair {
                        // Rare (the clock stepped back): best effort, the next request repairs
                        // it otherwise.
                        let cas = read.map(|r| r.cas);
                        let _ = self.with_key(i, slot, |key| host.shared_set(key, &repair, cas));
                    }
                    if rejected.is_none_or(|(longest, _)| wait > longest) {
                        rejected = Some((wait, budget(limit, 0, full_in)));
                    }
                }
            }
        }
        if let Some((wait, budget)) = rejected {
            return self.reject(wait, Some(budget), None);
        }
        if pending.iter().all(Option::is_none) {
            return Check {
                decision: Decision::Unlimited,
                budget: None,
                retry_after_s: 0,
                retry_after_ms: 0,
                store_error: None,
            };
        }

        let mut store_error = None;
        for (i, ((limit, bound), pending)) in policy
            .limits
            .iter()
            .zip(&self.limits)
            .zip(pending)
            .enumerate()
        {
            let (slot, cas, record, lease, remaining, full_in) = match pending {
                None => continue,
                Some(Pending::Leased { slot }) => {
                    bound.use_lease(slot);
                    continue;
                }
                Some(Pending::Read {
                    slot,
                    cas,
                    record,
                    lease,
                    remaining,
                    full_in,
                }) => (slot, cas, record, lease, remaining, full_in),
            };
            let taken = self.with_key(i, slot, |key| {
                match host.shared_set(key, &record, cas) {
                    Ok(()) => {
                        bound.note_taken(slot, now, lease, record, remaining, full_in);
                        Ok(None)
                    }
                    Err(SharedError::Failed) => Err(UpdateError::Failed),
                    // Another VM took from this slot since the read: decide again.
                    Err(SharedError::CasMismatch) => {
                        let (_, unused) = bound.next_lease(slot, now);
                        store::update(host, key, store::DEFAULT_ATTEMPTS - 1, |record| {
                            let (outcome, _) =
                                bucket::decide_lease(&limit.rate, record, now, 0, 0, unused);
                            let write = match outcome {
                                Outcome::Admit { record, .. }
                                | Outcome::Reject {
                                    repair: Some(record),
                                    ..
                                } => Some(record.to_vec()),
                                Outcome::Reject { repair: None, .. } => None,
                            };
                            Step {
                                write,
                                result: outcome,
                            }
                        })
                        .map(Some)
                    }
                }
            });
            match taken {
                Ok(None) => {}
                Ok(Some(Outcome::Admit {
                    record,
                    remaining,
                    full_in,
                })) => {
                    bound.note_taken(slot, now, None, record, remaining, full_in);
                    set(&mut budgets, i, budget(limit, remaining, full_in));
                }
                Ok(Some(Outcome::Reject { wait, full_in, .. })) => {
                    return self.reject(wait, Some(budget(limit, 0, full_in)), None);
                }
                Err(error) => {
                    store_error = Some(error);
                    if policy.failure_mode_deny {
                        return self.reject(0, None, store_error);
                    }
                }
            }
        }
        Check {
            decision: Decision::Allowed,
            budget: if store_error.is_some() {
                None
            } else {
                tightest(budgets.into_iter().flatten())
            },
            retry_after_s: 0,
            retry_after_ms: 0,
            store_error,
        }
    }

    fn reject(&self, wait: u64, budget: Option<Budget>, store_error: Option<UpdateError>) -> Check {
        Check {
            decision: if self.policy.dry_run {
                Decision::DryRunRejected
            } else {
                Decision::Rejected
            },
            budget,
            retry_after_s: bucket::seconds_up(wait).max(1),
            retry_after_ms: wait.div_ceil(NANOS_PER_MS).max(1),
            store_error,
        }
    }

    /// Tokens this VM holds in leases on limit `limit`'s slots.
    #[cfg(test)]
    fn leased_tokens(&self, limit: usize) -> u32 {
        self.limits.get(limit).map_or(0, |bound| {
            bound.leases.borrow().iter().map(|l| l.left).sum()
        })
    }

    /// Runs `f` with the shared-data key of `slot` of limit `limit`.
    fn with_key<R>(&self, limit: usize, slot: u32, f: impl FnOnce(&str) -> R) -> R {
        let base = self.limits.get(limit).map_or("", |b| b.key_base.as_str());
        match self.scratch.try_borrow_mut() {
            Ok(mut key) => {
                key.clear();
                key.push_str(base);
                let mut digits = [0; decimal::MAX_DIGITS];
                let digits = decimal::decimal(u64::from(slot), &mut digits);
                key.extend(digits.iter().map(|&d| char::from(d)));
                f(&key)
            }
            Err(_) => f(&format!("{base}{slot}")),
        }
    }
}

impl RateLimitPolicy {
    /// Whether responses tell the `X-RateLimit-*` budget: with `rate_limit_headers`, never
    /// in dry run (the client was not limited).
    fn tells_budget(&self) -> bool {
        self.rate_limit_headers && !self.dry_run
    }

    /// The `X-RateLimit-*` budget the response to a request the local limits decided tells:
    /// an admitted request's, when responses tell it.
    pub fn response_budget(&self, check: &Check) -> Option<Budget> {
        check
            .budget
            .filter(|_| check.decision == Decision::Allowed && self.tells_budget())
    }

    /// The local reply for a rejected request; for a gRPC call, in gRPC form with the wait
    /// as pushback ([`LocalReply::for_request`]).
    pub fn reject_reply(&self, check: &Check, host: &impl RequestHost) -> LocalReply {
        self.http_reject_reply(check)
            .for_request(host, &self.grpc, Some(check.retry_after_ms))
    }

    fn http_reject_reply(&self, check: &Check) -> LocalReply {
        let mut headers = vec![
            (RETRY_AFTER.to_owned(), check.retry_after_s.to_string()),
            (grpc::CONTENT_TYPE.to_owned(), self.content_type.clone()),
        ];
        if let Some(budget) = check.budget.filter(|_| self.rate_limit_headers) {
            headers.extend(
                budget_headers(&budget)
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.to_string())),
            );
        }
        LocalReply {
            status: self.status,
            headers,
            body: self.body.clone(),
            grpc: None,
        }
    }

    /// The reply when the rate limit service says over limit: the local rejection's status
    /// and body, `Retry-After` and `X-RateLimit-*` from the service's answer, and the
    /// service's response headers. A header the service sends replaces the filter's own of
    /// that name (the service knows the cluster-wide state; Envoy's ratelimit filter lets the
    /// service's `content-type` win too), and any `x-ratelimit-*` of its replaces all three.
    pub fn global_reject_reply(&self, answer: rls::Answer, host: &impl RequestHost) -> LocalReply {
        let rls::Answer {
            over_limit,
            budget,
            response_headers: headers,
            ..
        } = answer;
        let check = Check {
            decision: Decision::Rejected,
            budget: budget.filter(|_| !sends_ratelimit_headers(&headers)),
            retry_after_s: over_limit.unwrap_or(1),
            retry_after_ms: over_limit.unwrap_or(1).saturating_mul(1000),
            store_error: None,
        };
        let mut reply = self.http_reject_reply(&check);
        reply.headers.retain(|(own, _)| {
            !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(own))
        });
        reply.headers.extend(
            headers
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned())),
        );
        reply.for_request(host, &self.grpc, Some(check.retry_after_ms))
    }

    /// The reply when the rate limit service could not decide and `failure_mode_deny` is on:
    /// 503, or `UNAVAILABLE` for a gRPC call (the service may be back on a retry).
    pub fn unavailable_reply(&self, host: &impl RequestHost) -> LocalReply {
        let http = LocalReply {
            status: config::UNAVAILABLE_STATUS,
            headers: vec![(
                grpc::CONTENT_TYPE.to_owned(),
                config::DEFAULT_CONTENT_TYPE.to_owned(),
            )],
            body: config::UNAVAILABLE_BODY.as_bytes().to_vec(),
            grpc: None,
        };
        let status = grpc::Status {
            code: grpc::Code::UNAVAILABLE,
            message: config::UNAVAILABLE_GRPC_MESSAGE.to_owned(),
        };
        http.for_request(host, &status, None)
    }
}

/// Whether the rate limit service sent `x-ratelimit-*` headers itself: one of them replaces
/// all three of the filter's, so a reply never mixes two limits' numbers.
pub fn sends_ratelimit_headers(service_headers: &[rls::Header]) -> bool {
    service_headers
        .iter()
        .any(|(name, _)| name.starts_with("x-ratelimit-"))
}

/// The `X-RateLimit-*` headers and their values.
pub fn budget_headers(budget: &Budget) -> [(&'static str, u64); 3] {
    [
        (LIMIT_HEADER, u64::from(budget.limit)),
        (REMAINING_HEADER, u64::from(budget.remaining)),
        (RESET_HEADER, budget.reset_s),
    ]
}

fn budget(limit: &Limit, remaining: u32, full_in: u64) -> Budget {
    Budget {
        limit: limit.rate.burst(),
        remaining,
        reset_s: bucket::seconds_up(full_in),
    }
}

/// The budget with the fewest tokens left (the longest reset among equals).
pub fn tightest(budgets: impl IntoIterator<Item = Budget>) -> Option<Budget> {
    budgets
        .into_iter()
        .min_by_key(|b| (b.remaining, std::cmp::Reverse(b.reset_s)))
}

/// Reads a slot record, creating it (full) on its first use: a slot costs memory only once a
/// key lands in it, and every decision is a compare-and-swap on a record that exists.
/// `None` when the host refused to create it (the decision then writes without a token).
fn read_or_create(host: &mut impl Host, key: &str) -> Option<Shared> {
    if let Some(read) = host.shared_get(key) {
        return Some(read);
    }
    // Envoy has no "create if absent": see the module docs for the race.
    let _ = host.shared_set(key, &bucket::FULL, None);
    host.shared_get(key)
}

fn set<T>(slots: &mut [Option<T>], index: usize, value: impl Into<Option<T>>) {
    if let Some(slot) = slots.get_mut(index) {
        *slot = value.into();
    }
}

#[cfg(test)]
mod tests;
