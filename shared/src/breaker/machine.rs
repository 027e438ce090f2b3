//! The state machine: Closed → Open → HalfOpen → Closed (or back to Open), as pure
//! functions of a [`Record`] and the time, plus [`create`] and the two calls that run them
//! against shared data with compare-and-swap.
//!
//! - Closed admits everything and counts finished calls; it opens on `consecutive_failures`
//!   in a row, or when, with at least `min_requests` calls in the window, failures reach
//!   `failure_rate_percent` or slow calls reach `slow_call_rate_percent` of them.
//! - Open rejects until `open_ms` have passed; the first request after that moves it to
//!   HalfOpen and is its first probe.
//! - HalfOpen admits at most `half_open_max_requests` probes across all workers (counted in
//!   the record) and rejects the rest. `half_open_max_requests` successful probes close it;
//!   one failed (or slow) probe opens it again. A probe whose client hangs up frees its slot.
//!   A probe that has not finished `probe_timeout_ms` after the last probe was admitted
//!   counts as failed (the next request reopens the breaker), so a lost probe cannot keep
//!   the breaker half-open forever.
//! - Every transition starts a new generation; a call's outcome counts only in the
//!   generation that admitted it, so a late answer from before a transition changes nothing.
//!
//! Each VM keeps a [`Local`] view of a breaker, so most requests touch no shared data: a
//! closed state it read less than [`TRUST`] ago admits without reading the record again, and
//! successes of closed calls wait in a batch (at most [`TRUST`] while requests come, at most
//! [`MAX_BATCH`], else until the root context's tick) that goes into the record with the next
//! write. Failures, slow calls, probes and every transition go through the record at once.
//! So a worker can admit for up to [`TRUST`] after another opened the breaker, and the
//! window misses at most each worker's last [`TRUST`] of successes (a rate can trip a little
//! earlier, or `min_requests` be reached a little later). A batched success ends a run of
//! consecutive failures only if it finished after the run's first failure: one that waited
//! in a batch while other workers' failures went in is older news.

use std::cell::Cell;

use super::classify::{Call, Verdict};
use super::config::BreakerPolicy;
use super::record::{Counts, Record, State};
use crate::host::{Host, NANOS_PER_MS, NANOS_PER_SEC, Nanos};
use crate::store::{self, Step, UpdateError};

/// What a passed request carries to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub generation: u64,
    /// Admitted as a half-open probe.
    pub probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Pass(Ticket),
    /// Answer with the fallback.
    Reject {
        state: State,
        /// Whole seconds until a probe may go, rounded up, at least 1.
        retry_after_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    OpenElapsed,
    ProbeFailed,
    ProbeLost,
    ProbesSucceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::FailureRate => "failure_rate",
            Self::SlowCallRate => "slow_call_rate",
            Self::OpenElapsed => "open_elapsed",
            Self::ProbeFailed => "probe_failed",
            Self::ProbeLost => "probe_lost",
            Self::ProbesSucceeded => "probes_succeeded",
        }
    }
}

/// A state change, with the counts that caused it (for the one log line it gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// The closed window when it opened.
    pub window: Counts,
    pub consecutive_failures: u64,
    pub probes_succeeded: u64,
}

/// One decision: its result, the record to write (if it changed) and the transition made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub result: T,
    pub next: Option<Record>,
    pub transition: Option<Transition>,
}

/// What a call against shared data did, and the state it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome<T> {
    pub result: T,
    pub state: State,
    /// The record's generation after the call.
    pub generation: u64,
    pub transition: Option<Transition>,
    /// [`admit`] only: the write the decision needed failed (the request is rejected as
    /// half-open). [`complete`] returns its error instead.
    pub store_error: Option<UpdateError>,
}

/// Read-modify-write rounds before giving up on a contended breaker.
pub const ATTEMPTS: u32 = store::DEFAULT_ATTEMPTS;

fn secs_until(now: Nanos, then: Nanos) -> u64 {
    then.saturating_sub(now).div_ceil(NANOS_PER_SEC).max(1)
}

impl BreakerPolicy {
    /// Whether a request may go to the upstream now.
    pub fn admit(&self, record: &Record, now: Nanos) -> Decision<Admission> {
        let pass = |record: &Record, probe| {
            Admission::Pass(Ticket {
                generation: record.generation,
                probe,
            })
        };
        match record.state {
            State::Closed => Decision {
                result: pass(record, false),
                next: None,
                transition: None,
            },
            State::Open if now < record.open_until => Decision {
                result: Admission::Reject {
                    state: State::Open,
                    retry_after_secs: secs_until(now, record.open_until),
                },
                next: None,
                transition: None,
            },
            State::Open => {
                let mut next = record.clone();
                next.enter(State::HalfOpen, now);
                next.probes_admitted = 1;
                next.last_probe_at = now;
                let transition = self.transition(record, &next, Reason::OpenElapsed, now);
                Decision {
                    result: pass(&next, true),
                    next: Some(next),
                    transition: Some(transition),
                }
            }
            State::HalfOpen if record.probes_admitted < self.half_open_max_requests => {
                let mut next = record.clone();
                next.probes_admitted += 1;
                next.last_probe_at = now;
                Decision {
                    result: pass(&next, true),
                    next: Some(next),
                    transition: None,
                }
            }
            State::HalfOpen if now >= record.last_probe_at.saturating_add(self.probe_timeout) => {
                let next = self.opened(record, now);
                let transition = self.transition(record, &next, Reason::ProbeLost, now);
                Decision {
                    result: Admission::Reject {
                        state: State::Open,
                        retry_after_secs: secs_until(now, next.open_until),
                    },
                    next: Some(next),
                    transition: Some(transition),
                }
            }
            State::HalfOpen => Decision {
                result: Admission::Reject {
                    state: State::HalfOpen,
                    // The probes decide soon; ask again then.
                    retry_after_secs: 1,
                },
                next: None,
                transition: None,
            },
        }
    }

    /// Counts a call admitted with `ticket` that finished at `now`.
    pub fn complete(
        &self,
        record: &Record,
        ticket: Ticket,
        call: Call,
        now: Nanos,
    ) -> Decision<()> {
        self.complete_finished(record, ticket, call, now, now)
    }

    /// [`Self::complete`] for a call that finished at `finished`, counted at `now` (a
    /// success that waited in a batch).
    fn complete_finished(
        &self,
        record: &Record,
        ticket: Ticket,
        call: Call,
        finished: Nanos,
        now: Nanos,
    ) -> Decision<()> {
        let unchanged = Decision {
            result: (),
            next: None,
            transition: None,
        };
        if ticket.generation != record.generation {
            // Admitted before the last transition: that state is gone.
            return unchanged;
        }
        let mut next = record.clone();
        let reason = match (record.state, ticket.probe) {
            (State::Closed, false) => {
                if !call.counts() {
                    return unchanged;
                }
                next.count(now, self.bucket, call.failed(), call.slow);
                match call.verdict {
                    Verdict::Failure(_) => {
                        if next.consecutive_failures == 0 {
                            next.failing_since = finished;
                        }
                        next.consecutive_failures += 1;
                    }
                    // Only a success after the run's first failure ends it: one from before
                    // it (held in another VM's batch) is older news.
                    Verdict::Success if finished >= next.failing_since => {
                        next.consecutive_failures = 0;
                    }
                    Verdict::Success | Verdict::Ignored => {}
                }
                self.trips(&next, now)
            }
            (State::HalfOpen, true) => {
                if !call.counts() {
                    // The client left: the probe proved nothing, let another one go.
                    next.probes_admitted = next.probes_admitted.saturating_sub(1);
                    None
                } else if call.failed() || call.slow {
                    Some(Reason::ProbeFailed)
                } else {
                    next.probes_succeeded += 1;
                    (next.probes_succeeded >= self.half_open_max_requests)
                        .then_some(Reason::ProbesSucceeded)
                }
            }
            _ => return unchanged,
        };
        let transition = reason.map(|reason| {
            let before = next.clone();
            next = match reason {
                Reason::ProbesSucceeded => {
                    let mut closed = before.clone();
                    closed.enter(State::Closed, now);
                    closed
                }
                _ => self.opened(&before, now),
            };
            self.transition(&before, &next, reason, now)
        });
        Decision {
            result: (),
            next: Some(next),
            transition,
        }
    }

    /// The condition that opens a closed breaker with these counts, if any.
    fn trips(&self, record: &Record, now: Nanos) -> Option<Reason> {
        if self
            .consecutive_failures
            .is_some_and(|n| record.consecutive_failures >= n)
        {
            return Some(Reason::ConsecutiveFailures);
        }
        let window = record.window(now, self.bucket);
        if window.calls < self.min_requests {
            return None;
        }
        let reached = |part: u64, percent: u64| part * 100 >= percent * window.calls;
        if self
            .failure_rate_percent
            .is_some_and(|p| reached(window.failures, p))
        {
            return Some(Reason::FailureRate);
        }
        if self
            .slow_calls
            .is_some_and(|slow| reached(window.slow, slow.rate_percent))
        {
            return Some(Reason::SlowCallRate);
        }
        None
    }

    fn opened(&self, record: &Record, now: Nanos) -> Record {
        let mut next = record.clone();
        next.enter(State::Open, now);
        next.open_until = now.saturating_add(self.open);
        next
    }

    fn transition(
        &self,
        before: &Record,
        after: &Record,
        reason: Reason,
        now: Nanos,
    ) -> Transition {
        Transition {
            from: before.state,
            to: after.state,
            reason,
            window: before.window(now, self.bucket),
            consecutive_failures: before.consecutive_failures,
            probes_succeeded: before.probes_succeeded,
        }
    }
}

/// Creates the breaker at `key` (closed, empty window) unless it exists, before any request
/// is decided with it: the first count or transition is then a compare-and-swap like every
/// other, not a plain write that another VM's could overwrite. False when the host refused
/// the write (the breaker is then created by its first write).
pub fn create(host: &mut impl Host, key: &str) -> bool {
    store::create_if_absent(host, key, &Record::default().encode())
}

/// Admits or rejects a request against the breaker stored at `key` at time `now` (the
/// caller's clock read: the request's start).
///
/// A closed breaker is only read. When the write a probe needs loses every CAS round (or the
/// host refuses it), the request is rejected as half-open: the breaker is not closed, and
/// a probe that cannot be counted could break the probe budget.
pub fn admit(
    policy: &BreakerPolicy,
    host: &mut impl Host,
    key: &str,
    now: Nanos,
) -> Outcome<Admission> {
    let updated = store::update(host, key, ATTEMPTS, |bytes| {
        let record = Record::decode(bytes);
        step(&record, policy.admit(&record, now))
    });
    updated.unwrap_or_else(|error| {
        let record = Record::decode(host.shared_get(key).as_ref().map(|s| s.value.as_slice()));
        Outcome {
            result: Admission::Reject {
                state: State::HalfOpen,
                retry_after_secs: 1,
            },
            state: record.state,
            generation: record.generation,
            transition: None,
            store_error: Some(error),
        }
    })
}

/// Counts a call whose stream ended at `now` in the breaker at `key`. When every CAS round
/// is lost (or the host refuses the write) the call is not counted: the caller reports it as
/// dropped.
pub fn complete(
    policy: &BreakerPolicy,
    host: &mut impl Host,
    key: &str,
    ticket: Ticket,
    call: Call,
    now: Nanos,
) -> Result<Outcome<()>, UpdateError> {
    store::update(host, key, ATTEMPTS, |bytes| {
        let record = Record::decode(bytes);
        step(&record, policy.complete(&record, ticket, call, now))
    })
}

/// A decision about `record` as one round of [`store::update`].
fn step<T>(record: &Record, decision: Decision<T>) -> Step<Outcome<T>> {
    let after = decision.next.as_ref().unwrap_or(record);
    let (state, generation) = (after.state, after.generation);
    Step {
        write: decision.next.map(|next| next.encode()),
        result: Outcome {
            result: decision.result,
            state,
            generation,
            transition: decision.transition,
            store_error: None,
        },
    }
}

/// How long a VM trusts a closed state it read (admitting without reading the record), and
/// the longest a success waits in its batch while requests keep coming.
pub const TRUST: Nanos = 5 * NANOS_PER_MS;
/// The most successes a VM's batch holds before they go into the record.
pub const MAX_BATCH: u64 = 64;

/// What one VM keeps of one breaker between requests (see the module docs).
#[derive(Debug, Default)]
pub struct Local {
    /// The record was closed, in this generation, when this VM read or wrote it at this time.
    closed: Cell<Option<(u64, Nanos)>>,
    batch: Cell<Batch>,
}

/// Successes of closed calls that are not in the record yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Batch {
    generation: u64,
    successes: u64,
    /// When the first of them finished.
    since: Nanos,
    /// When the last of them finished.
    last: Nanos,
}

/// Whether `now` is less than [`TRUST`] after `then` (never when the clock went back).
fn fresh(then: Nanos, now: Nanos) -> bool {
    (then..then.saturating_add(TRUST)).contains(&now)
}

impl Local {
    /// [`admit`], from the closed state this VM read less than [`TRUST`] ago when there is
    /// one: then no shared data is touched.
    pub fn admit(
        &self,
        policy: &BreakerPolicy,
        host: &mut impl Host,
        key: &str,
        now: Nanos,
    ) -> Outcome<Admission> {
        if let Some((generation, read_at)) = self.closed.get()
            && fresh(read_at, now)
        {
            return Outcome {
                result: Admission::Pass(Ticket {
                    generation,
                    probe: false,
                }),
                state: State::Closed,
                generation,
                transition: None,
                store_error: None,
            };
        }
        let outcome = admit(policy, host, key, now);
        self.saw(&outcome, now);
        outcome
    }

    /// [`complete`], unless the call is a success of a closed call that can wait in the
    /// batch: `Ok(None)`, nothing written. Otherwise the batch and the call are written
    /// together. On an error the batch stays for the next write; the call is not counted.
    pub fn complete(
        &self,
        policy: &BreakerPolicy,
        host: &mut impl Host,
        key: &str,
        ticket: Ticket,
        call: Call,
        now: Nanos,
    ) -> Result<Option<Outcome<()>>, UpdateError> {
        let batch = self.batch.get();
        let success = !ticket.probe && call.verdict == Verdict::Success && !call.slow;
        let joins = batch.successes == 0
            || (batch.generation == ticket.generation
                && batch.successes < MAX_BATCH
                && fresh(batch.since, now));
        if success && joins {
            self.batch.set(Batch {
                generation: ticket.generation,
                successes: batch.successes + 1,
                since: if batch.successes == 0 {
                    now
                } else {
                    batch.since
                },
                last: now,
            });
            return Ok(None);
        }
        self.write(policy, host, key, Some((ticket, call)), now)
            .map(Some)
    }

    /// Writes the batch, if there is one (the root context's tick: successes do not wait
    /// longer than a tick when requests stop).
    pub fn flush(
        &self,
        policy: &BreakerPolicy,
        host: &mut impl Host,
        key: &str,
        now: Nanos,
    ) -> Option<Result<Outcome<()>, UpdateError>> {
        (self.batch.get().successes > 0).then(|| self.write(policy, host, key, None, now))
    }

    fn write(
        &self,
        policy: &BreakerPolicy,
        host: &mut impl Host,
        key: &str,
        call: Option<(Ticket, Call)>,
        now: Nanos,
    ) -> Result<Outcome<()>, UpdateError> {
        let batch = self.batch.get();
        let outcome = store::update(host, key, ATTEMPTS, |bytes| {
            let record = Record::decode(bytes);
            step(&record, policy.complete_batch(&record, batch, call, now))
        })?;
        self.batch.set(Batch::default());
        self.saw(&outcome, now);
        Ok(outcome)
    }

    /// Notes the state the record was in at `now`.
    fn saw<T>(&self, outcome: &Outcome<T>, now: Nanos) {
        let closed = outcome.state == State::Closed && outcome.store_error.is_none();
        self.closed.set(closed.then_some((outcome.generation, now)));
    }
}

/// A success: what a batch holds.
const SUCCESS: Call = Call {
    verdict: Verdict::Success,
    slow: false,
};

impl BreakerPolicy {
    /// Counts a batch of successes, then `call`, as [`BreakerPolicy::complete`] would one by
    /// one: at most one transition (calls of the generation it ended count no more).
    fn complete_batch(
        &self,
        record: &Record,
        batch: Batch,
        call: Option<(Ticket, Call)>,
        now: Nanos,
    ) -> Decision<()> {
        let batched = Ticket {
            generation: batch.generation,
            probe: false,
        };
        let calls = std::iter::repeat_n((batched, SUCCESS, batch.last), batch.successes as usize)
            .chain(call.map(|(ticket, call)| (ticket, call, now)));
        let mut current: Option<Record> = None;
        let mut transition = None;
        for (ticket, call, finished) in calls {
            let record = current.as_ref().unwrap_or(record);
            let decision = self.complete_finished(record, ticket, call, finished, now);
            if let Some(next) = decision.next {
                current = Some(next);
            }
            transition = transition.or(decision.transition);
        }
        Decision {
            result: (),
            next: current,
            transition,
        }
    }
}
