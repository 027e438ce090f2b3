//! The breaker's shared state: one fixed-size binary record per breaker key, little-endian
//! u64 fields, read and written whole with compare-and-swap (see [`crate::store`]).
//!
//! ```text
//! [0] layout      LAYOUT (a record of another layout reads as a fresh, closed breaker)
//! [1] state       0 closed, 1 open, 2 half-open
//! [2] generation  +1 on every transition; a call's outcome counts only in the generation
//!                 that admitted it
//! [3] since       when the current state began (nanos since the epoch)
//! [4] open_until  open: when the first probe may go
//! [5] consecutive failures in a row (closed)
//! [6] probes admitted (half-open)
//! [7] probes succeeded (half-open)
//! [8] last probe admitted at (half-open)
//! [9] failing since: when the first of the consecutive failures finished (closed)
//! [10..] BUCKETS buckets of [epoch, calls, failures, slow]: the rolling window
//! ```
//!
//! The window is `BUCKETS` buckets of `window_ms / BUCKETS` each; bucket `i` holds the
//! epoch (`now / bucket width`) it counts for, so a stale bucket is recognised and
//! restarted rather than cleared by a timer.

use crate::host::Nanos;
use crate::store::{read_u64s, write_u64s};

/// Buckets in the rolling window.
pub const BUCKETS: usize = 10;
const HEADER_FIELDS: usize = 10;
const BUCKET_FIELDS: usize = 4;
const FIELDS: usize = HEADER_FIELDS + BUCKETS * BUCKET_FIELDS;
/// "brk2" and the bucket count: changes whenever the layout does.
const LAYOUT: u64 = 0x6272_6b32_0000_0000 | BUCKETS as u64;

/// The record's size in bytes.
pub const RECORD_BYTES: usize = FIELDS * 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The `mesh_breaker_state` gauge value.
    pub fn gauge(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// Stats label and `x-circuit-state` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u64(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::Closed),
            1 => Some(Self::Open),
            2 => Some(Self::HalfOpen),
            _ => None,
        }
    }
}

/// One slice of the rolling window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub epoch: u64,
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

/// Calls, failures and slow calls in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    pub generation: u64,
    pub since: Nanos,
    pub open_until: Nanos,
    pub consecutive_failures: u64,
    /// When the first of the `consecutive_failures` finished: a success that finished
    /// earlier (one that waited in another VM's batch) does not end the run.
    pub failing_since: Nanos,
    pub probes_admitted: u64,
    pub probes_succeeded: u64,
    pub last_probe_at: Nanos,
    pub buckets: [Bucket; BUCKETS],
}

impl Record {
    /// A record as stored; a missing, short or foreign one is a fresh closed breaker.
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        bytes.and_then(Self::try_decode).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<Self> {
        let fields = read_u64s::<FIELDS>(bytes)?;
        let (header, rest) = fields.split_first_chunk::<HEADER_FIELDS>()?;
        let [
            layout,
            state,
            generation,
            since,
            open_until,
            consecutive,
            admitted,
            succeeded,
            last_probe,
            failing_since,
        ] = *header;
        if layout != LAYOUT {
            return None;
        }
        let mut buckets = [Bucket::default(); BUCKETS];
        for (bucket, chunk) in buckets.iter_mut().zip(rest.chunks_exact(BUCKET_FIELDS)) {
            if let [epoch, calls, failures, slow] = *chunk {
                *bucket = Bucket {
                    epoch,
                    calls,
                    failures,
                    slow,
                };
            }
        }
        Some(Self {
            state: State::from_u64(state)?,
            generation,
            since,
            open_until,
            consecutive_failures: consecutive,
            probes_admitted: admitted,
            probes_succeeded: succeeded,
            last_probe_at: last_probe,
            failing_since,
            buckets,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut fields = Vec::with_capacity(FIELDS);
        fields.extend_from_slice(&[
            LAYOUT,
            self.state.gauge(),
            self.generation,
            self.since,
            self.open_until,
            self.consecutive_failures,
            self.probes_admitted,
            self.probes_succeeded,
            self.last_probe_at,
            self.failing_since,
        ]);
        for b in &self.buckets {
            fields.extend_from_slice(&[b.epoch, b.calls, b.failures, b.slow]);
        }
        write_u64s(&fields)
    }

    /// Adds one call to the bucket of `now` (restarting it if it held an older epoch).
    pub fn count(&mut self, now: Nanos, bucket_width: Nanos, failed: bool, slow: bool) {
        let epoch = now / bucket_width.max(1);
        let Some(bucket) = self.buckets.get_mut(slot(epoch)) else {
            return;
        };
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u64::from(failed);
        bucket.slow += u64::from(slow);
    }

    /// The window ending at `now`: the buckets of the last `BUCKETS` epochs.
    pub fn window(&self, now: Nanos, bucket_width: Nanos) -> Counts {
        let current = now / bucket_width.max(1);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=current).contains(&b.epoch))
            .fold(Counts::default(), |sum, b| Counts {
                calls: sum.calls + b.calls,
                failures: sum.failures + b.failures,
                slow: sum.slow + b.slow,
            })
    }

    /// Moves to `state` at `now`: a new generation, with the counters of the old state gone.
    pub fn enter(&mut self, state: State, now: Nanos) {
        *self = Self {
            state,
            generation: self.generation.wrapping_add(1),
            since: now,
            ..Self::default()
        };
    }
}

fn slot(epoch: u64) -> usize {
    // BUCKETS is small: the remainder always fits.
    usize::try_from(epoch % BUCKETS as u64).unwrap_or(0)
}
