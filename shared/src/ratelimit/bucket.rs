//! One token bucket decision, with governor's GCRA over a slot record read from shared data.
//!
//! A slot's state is one number, governor's *theoretical arrival time* (TAT): the instant at
//! which the bucket is full again. It is stored as absolute wall-clock nanoseconds, so every VM
//! (each with its own limiter) reads it the same way: governor measures time from the
//! limiter's creation instant, and [`decide`] creates its limiter at the Unix epoch.
//!
//! governor does the arithmetic; this module only feeds it the record that was read and
//! takes back the record to write. Reading and writing shared data is the caller's job
//! (one read, then a compare-and-swap write), so the decision itself is a pure function.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::host::{NANOS_PER_MS, NANOS_PER_SEC};

/// How far past an empty bucket a stored TAT may lie and still be taken as written: another
/// worker read its clock a moment after this request did and wrote first (microseconds
/// apart). Further out, the wall clock stepped back and the record is repaired; taking those
/// microseconds for a clock step would rewrite the record on a rejection, a little earlier
/// each time, and hand out refill no one waited for.
const CLOCK_SKEW: u64 = 100 * NANOS_PER_MS;

/// A slot record: the TAT, little-endian u64 nanoseconds since the epoch.
pub type Record = [u8; 8];

/// The record of a slot nobody has used: a TAT at the epoch, so the bucket is full.
pub const FULL: Record = 0u64.to_le_bytes();

/// A validated rate: `burst` tokens, one more every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    quota: Quota,
}

impl Rate {
    /// `None` if the period is zero.
    pub fn new(period: Duration, burst: NonZeroU32) -> Option<Self> {
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Self { quota })
    }

    pub fn burst(&self) -> u32 {
        self.quota.burst_size().get()
    }

    pub fn period(&self) -> Duration {
        self.quota.replenish_interval()
    }

    /// How far ahead of now a TAT can lie: the time an empty bucket takes to fill.
    fn horizon(&self) -> u64 {
        duration_nanos(self.quota.burst_size_replenished_in())
    }
}

/// What the bucket said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted: write `record` (with the CAS token of the read) to take the token.
    Admit {
        record: Record,
        /// Tokens left after this request.
        remaining: u32,
        /// Nanoseconds until the bucket is full again.
        full_in: u64,
    },
    /// Not admitted.
    Reject {
        /// Nanoseconds until a request would be admitted.
        wait: u64,
        /// Nanoseconds until the bucket is full again.
        full_in: u64,
        /// A record to write although nothing was admitted: the read one was impossible (the
        /// clock stepped back, or not a record of ours) and is replaced by an empty bucket
        /// now, so that it refills from now on. `None` normally: a rejection writes nothing.
        repair: Option<Record>,
    },
}

/// Decides one request at `now` (wall-clock nanoseconds) against the slot record read from
/// shared data (`None`: never written, a full bucket).
pub fn decide(rate: &Rate, record: Option<&[u8]>, now: u64) -> Outcome {
    take(rate, &Read::new(rate, record, now), now, NonZeroU32::MIN)
}

/// Tokens a VM takes from the bucket for its later requests, besides a request's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Tokens for later requests of this VM.
    pub tokens: u32,
    /// They may be used until this instant (exclusive).
    pub until: u64,
}

/// Tokens of a lease that expired unused, given back by the VM's next decision on the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unused {
    pub tokens: u32,
    /// The TAT the lease's decision wrote.
    pub written: u64,
}

/// A lease takes at most this share of the tokens the bucket holds (1/32): as the bucket
/// empties, leases shrink to nothing and every request takes its own token.
pub const LEASE_SHARE: u64 = 32;

/// [`decide`] for a request that also takes `extra` tokens for this VM's later requests,
/// usable for `hold` nanoseconds; without them (a plain [`decide`]) when the bucket holds
/// less than [`LEASE_SHARE`] times what the lease costs.
///
/// Exact: a lease never lets more through than the bucket would have admitted one request
/// at a time. Its tokens are taken as if at `now + hold`, the last instant they may be used
/// (a bucket holding fewer than `rate x hold` tokens of debt is charged the difference), so
/// the bucket cannot refill under tokens a VM still holds. What a lease costs is only ever
/// under-admission: the charge, and tokens still held when traffic stops.
///
/// `unused`: tokens of this VM's last lease on the slot that expired unused, given back
/// (see [`give_back`]).
pub fn decide_lease(
    rate: &Rate,
    record: Option<&[u8]>,
    now: u64,
    extra: u32,
    hold: u64,
    unused: Option<Unused>,
) -> (Outcome, Option<Lease>) {
    let mut read = Read::new(rate, record, now);
    give_back(rate, &mut read, now, unused);
    let single = || (take(rate, &read, now, NonZeroU32::MIN), None);
    if extra == 0 || read.repaired {
        return single();
    }
    let period = duration_nanos(rate.period()).max(1);
    // How far the bucket is from full, in time; what it holds; what the lease costs.
    let debt = read.tat.unwrap_or(now).saturating_sub(now);
    let available = rate
        .horizon()
        .saturating_sub(debt)
        .checked_div(period)
        .unwrap_or(0);
    let charge = hold.saturating_sub(debt).div_ceil(period);
    let total = charge.saturating_add(u64::from(extra)).saturating_add(1);
    let Some(total) = u32::try_from(total)
        .ok()
        .and_then(NonZeroU32::new)
        .filter(|total| u64::from(total.get()) * LEASE_SHARE <= available)
    else {
        return single();
    };
    match take(rate, &read, now, total) {
        Outcome::Admit {
            record,
            remaining,
            full_in,
        } => (
            Outcome::Admit {
                record,
                remaining,
                full_in,
            },
            Some(Lease {
                tokens: extra,
                until: now.saturating_add(hold),
            }),
        ),
        Outcome::Reject { .. } => single(),
    }
}

/// Takes `unused` tokens off the TAT read, as if they had never been leased: exact only while
/// the bucket without them would not have been full since, which holds until `now` reaches
/// the TAT the lease wrote less the tokens (the record's TAT only grows). Later, or when the
/// record was repaired, they stay lost: under-admission, never over.
fn give_back(rate: &Rate, read: &mut Read, now: u64, unused: Option<Unused>) {
    let (Some(unused), Some(tat)) = (unused, read.tat) else {
        return;
    };
    let owed = duration_nanos(rate.period()).saturating_mul(u64::from(unused.tokens));
    if !read.repaired && tat >= unused.written && now < unused.written.saturating_sub(owed) {
        read.tat = Some(tat - owed);
    }
}

/// A slot record as read, with a clock step repaired.
struct Read {
    /// The TAT to decide from; `None`: never written, a full bucket.
    tat: Option<u64>,
    /// An empty bucket's TAT at `now`.
    empty: u64,
    /// The record read was impossible and is taken as [`Read::empty`].
    repaired: bool,
}

impl Read {
    fn new(rate: &Rate, record: Option<&[u8]>, now: u64) -> Self {
        // An empty bucket at `now`: its TAT is a whole bucket ahead.
        let empty = now.saturating_add(rate.horizon());
        let tat = record.map(|bytes| match Record::try_from(bytes) {
            // Further ahead than an empty bucket (beyond the skew between workers) means the
            // wall clock stepped back: take it as empty now. Never as full: that would hand
            // out tokens.
            Ok(record) => match u64::from_le_bytes(record) {
                tat if tat > empty.saturating_add(CLOCK_SKEW) => empty,
                tat => tat,
            },
            // Not a record of ours: empty as well, for the same reason.
            Err(_) => empty,
        });
        let repaired = tat == Some(empty) && record != Some(empty.to_le_bytes().as_slice());
        Self {
            tat,
            empty,
            repaired,
        }
    }
}

/// Takes `tokens` at once (governor's `check_n`), or none.
fn take(rate: &Rate, read: &Read, now: u64, tokens: NonZeroU32) -> Outcome {
    let slot = OneSlot {
        read: read.tat.map(Nanos::from),
        written: Cell::new(None),
    };
    let limiter = RateLimiter::<NotKeyed, _, _, StateInformationMiddleware>::new(
        rate.quota,
        slot,
        EpochClock(Cell::new(0)),
    );
    // Created at the epoch; from here on governor reads the request's time.
    limiter.clock().0.set(now);
    let checked = match limiter.check_n(tokens) {
        Ok(checked) => checked.map_err(Some),
        // More than the burst: never admitted.
        Err(_) => Err(None),
    };
    let slot = limiter.into_state_store();
    match (checked, slot.written.get()) {
        (Ok(snapshot), Some(tat)) => {
            let tat = tat.as_u64();
            Outcome::Admit {
                record: tat.to_le_bytes(),
                remaining: snapshot.remaining_burst_capacity(),
                full_in: tat.saturating_sub(now),
            }
        }
        (Err(not_until), _) => Outcome::Reject {
            wait: not_until.map_or(rate.horizon(), |not_until| {
                duration_nanos(not_until.wait_time_from(Nanos::from(now)))
            }),
            full_in: read.tat.unwrap_or(now).saturating_sub(now),
            repair: read.repaired.then(|| read.empty.to_le_bytes()),
        },
        // governor admitted without handing back a state: cannot happen; refuse to guess.
        (Ok(_), None) => Outcome::Reject {
            wait: duration_nanos(rate.period()),
            full_in: rate.horizon(),
            repair: None,
        },
    }
}

/// Whole seconds, rounded up: `Retry-After` and `X-RateLimit-Reset`.
pub fn seconds_up(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// governor's state store for a single decision: the TAT as read, and the TAT governor
/// wants stored if it admits.
struct OneSlot {
    read: Option<Nanos>,
    written: Cell<Option<Nanos>>,
}

impl StateStore for OneSlot {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (outcome, tat) = f(self.read)?;
        self.written.set(Some(tat));
        Ok(outcome)
    }
}

/// Absolute time for governor: reads 0 (the epoch) while the limiter is created, so governor's
/// "start" is the epoch, then the request's wall-clock time.
struct EpochClock(Cell<u64>);

impl Clock for EpochClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.get())
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: u64 = 1_767_225_600 * NANOS_PER_SEC;

    fn rate(per_s: u64, burst: u32) -> Rate {
        Rate::new(
            Duration::from_nanos(NANOS_PER_SEC / per_s),
            NonZeroU32::new(burst).unwrap(),
        )
        .unwrap()
    }

    /// Runs `n` requests at `now` against `record`, writing back what the outcomes say.
    fn run(rate: &Rate, record: &mut Option<Record>, now: u64, n: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            match decide(rate, record.as_ref().map(|r| r.as_slice()), now) {
                Outcome::Admit { record: next, .. } => {
                    *record = Some(next);
                    admitted += 1;
                }
                Outcome::Reject {
                    repair: Some(next), ..
                } => *record = Some(next),
                Outcome::Reject { repair: None, .. } => {}
            }
        }
        admitted
    }

    #[test]
    fn a_fresh_bucket_admits_the_burst_then_refills_at_the_rate() {
        let rate = rate(100, 50);
        let mut record = None;
        assert_eq!(run(&rate, &mut record, NOW, 80), 50);
        // 100/s: one token every 10 ms.
        assert_eq!(run(&rate, &mut record, NOW + 10 * NANOS_PER_MS, 5), 1);
        assert_eq!(run(&rate, &mut record, NOW + 255 * NANOS_PER_MS, 100), 24);
        // Long idle: never more than the burst.
        assert_eq!(run(&rate, &mut record, NOW + 3600 * NANOS_PER_SEC, 100), 50);
    }

    #[test]
    fn the_never_written_record_is_a_full_bucket() {
        let rate = rate(5, 10);
        let mut record = Some(FULL);
        assert_eq!(run(&rate, &mut record, NOW, 30), 10);
    }

    #[test]
    fn state_is_absolute_so_limiters_made_at_any_time_agree() {
        // Every decide() makes its own limiter (as every VM does); the record alone carries
        // the state, so a bucket emptied "by one VM" is empty for the next.
        let rate = rate(5, 10);
        let mut record = None;
        assert_eq!(run(&rate, &mut record, NOW, 10), 10);
        let later = NOW + 50 * NANOS_PER_MS;
        assert!(matches!(
            decide(&rate, record.as_ref().map(|r| r.as_slice()), later),
            Outcome::Reject { .. }
        ));
        let tat = u64::from_le_bytes(record.unwrap());
        assert_eq!(tat, NOW + 10 * 200 * NANOS_PER_MS, "TAT is wall-clock time");
    }

    #[test]
    fn admitted_requests_report_remaining_tokens_and_time_to_full() {
        let rate = rate(5, 10);
        match decide(&rate, None, NOW) {
            Outcome::Admit {
                remaining, full_in, ..
            } => {
                assert_eq!(remaining, 9);
                assert_eq!(full_in, 200 * NANOS_PER_MS);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_say_how_long_to_wait() {
        let rate = rate(5, 10);
        let mut record = None;
        run(&rate, &mut record, NOW, 10);
        let at = NOW + 30 * NANOS_PER_MS;
        match decide(&rate, record.as_ref().map(|r| r.as_slice()), at) {
            Outcome::Reject { wait, full_in, .. } => {
                assert_eq!(wait, 170 * NANOS_PER_MS);
                assert_eq!(full_in, 2 * NANOS_PER_SEC - 30 * NANOS_PER_MS);
                assert_eq!(seconds_up(wait), 1);
                assert_eq!(seconds_up(full_in), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slow_rates_wait_whole_periods() {
        // One token every 10 s.
        let rate = Rate::new(Duration::from_secs(10), NonZeroU32::new(1).unwrap()).unwrap();
        let mut record = None;
        assert_eq!(run(&rate, &mut record, NOW, 1), 1);
        match decide(&rate, record.as_ref().map(|r| r.as_slice()), NOW + 1) {
            Outcome::Reject { wait, .. } => assert_eq!(seconds_up(wait), 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(run(&rate, &mut record, NOW + 10 * NANOS_PER_SEC, 2), 1);
    }

    #[test]
    fn a_clock_step_back_leaves_an_empty_bucket_not_a_stuck_one() {
        let rate = rate(5, 10);
        let mut record = None;
        run(&rate, &mut record, NOW, 10);
        // The clock goes back an hour: the stored TAT lies far in the future.
        let back = NOW - 3600 * NANOS_PER_SEC;
        assert_eq!(run(&rate, &mut record, back, 5), 0, "empty, not full");
        assert_eq!(
            run(&rate, &mut record, back + 400 * NANOS_PER_MS, 5),
            2,
            "refilling at the rate, not blocked for an hour"
        );
    }

    #[test]
    fn another_workers_later_clock_is_not_a_clock_step() {
        let rate = rate(100, 5);
        let mut record = None;
        assert_eq!(run(&rate, &mut record, NOW, 5), 5);
        // Drained by a worker at NOW; this request read its clock 50 µs earlier, so the
        // stored TAT lies past its empty bucket: rejected, and nothing written.
        let earlier = NOW - 50_000;
        match decide(&rate, record.as_ref().map(|r| r.as_slice()), earlier) {
            Outcome::Reject { repair, wait, .. } => {
                assert_eq!(repair, None);
                assert_eq!(wait, 10 * NANOS_PER_MS + 50_000);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Up to 100 ms past an empty bucket a stored TAT is another worker's (taken as written);
    /// a nanosecond further it is a clock step (repaired to an empty bucket).
    #[test]
    fn workers_may_disagree_by_up_to_100_ms() {
        // 100/s, burst 5: an empty bucket's TAT is 50 ms ahead, a token every 10 ms.
        let rate = rate(100, 5);
        let empty = NOW + 50 * NANOS_PER_MS;
        let at_skew = (empty + 100 * NANOS_PER_MS).to_le_bytes();
        match decide(&rate, Some(&at_skew), NOW) {
            Outcome::Reject { repair, wait, .. } => {
                assert_eq!(repair, None);
                assert_eq!(wait, 110 * NANOS_PER_MS);
            }
            other => panic!("{other:?}"),
        }
        let past_skew = (empty + 100 * NANOS_PER_MS + 1).to_le_bytes();
        match decide(&rate, Some(&past_skew), NOW) {
            Outcome::Reject { repair, wait, .. } => {
                assert_eq!(repair, Some(empty.to_le_bytes()));
                assert_eq!(wait, 10 * NANOS_PER_MS);
            }
            other => panic!("{other:?}"),
        }
    }

    /// The TAT an admitting `decide_lease` writes.
    fn written_tat(outcome: (Outcome, Option<Lease>)) -> u64 {
        match outcome {
            (Outcome::Admit { record, .. }, _) => u64::from_le_bytes(record),
            other => panic!("{other:?}"),
        }
    }

    /// Without extra tokens a decision takes one token and leases nothing, whatever `hold`.
    #[test]
    fn no_extra_tokens_is_a_plain_decision() {
        // 1000/s, burst 2000: a fresh bucket, 20 ms of hold would cost a charge of 20.
        let outcome = decide_lease(&rate(1000, 2000), None, NOW, 0, 20 * NANOS_PER_MS, None);
        assert!(
            matches!(
                outcome,
                (
                    Outcome::Admit {
                        remaining: 1999,
                        ..
                    },
                    None
                )
            ),
            "{outcome:?}"
        );
    }

    /// Unused leased tokens go back while the bucket without them would not have been full
    /// since: `now` before the TAT their decision wrote, less them; and only onto that record
    /// or a later one, never onto a repaired one. 1000/s: a token per ms; 5 unused owe 5 ms.
    #[test]
    fn unused_tokens_go_back_only_in_time_and_onto_their_own_record() {
        let rate = rate(1000, 2000);
        let ms = NANOS_PER_MS;
        let written = NOW + 100 * ms;
        let unused = Some(Unused { tokens: 5, written });
        let record = written.to_le_bytes();
        let decide_at =
            |record: &[u8], now| written_tat(decide_lease(&rate, Some(record), now, 0, 0, unused));
        // In time: the TAT is 5 ms earlier, then this request's token is added.
        assert_eq!(decide_at(&record, NOW), written - 5 * ms + ms);
        assert_eq!(
            decide_at(&record, written - 5 * ms - 1),
            written - 5 * ms + ms
        );
        // From `written - 5 ms` on the bucket would have been full: nothing goes back.
        assert_eq!(decide_at(&record, written - 5 * ms), written + ms);
        // A record older than the lease's (another was written over it): nothing goes back.
        let older = (NOW + 50 * ms).to_le_bytes();
        assert_eq!(decide_at(&older, NOW), NOW + 51 * ms);
        // A repaired record (not ours): an empty bucket, with nothing given back.
        let outcome = decide_lease(&rate, Some(&[1, 2, 3]), NOW, 0, 0, unused);
        assert!(matches!(outcome.0, Outcome::Reject { .. }), "{outcome:?}");
    }

    #[test]
    fn a_record_of_the_wrong_size_is_an_empty_bucket_not_a_full_one() {
        let rate = rate(5, 2);
        let repair = match decide(&rate, Some(&[1, 2, 3]), NOW) {
            Outcome::Reject {
                repair: Some(repair),
                ..
            } => repair,
            other => panic!("{other:?}"),
        };
        assert_eq!(u64::from_le_bytes(repair), NOW + 400 * NANOS_PER_MS);
        assert!(matches!(
            decide(&rate, Some(&repair), NOW + 200 * NANOS_PER_MS),
            Outcome::Admit { remaining: 0, .. }
        ));
        // A normal rejection has nothing to repair.
        assert!(matches!(
            decide(&rate, Some(&repair), NOW),
            Outcome::Reject { repair: None, .. }
        ));
    }
}
