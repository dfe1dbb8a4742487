//! Throttling a source subtask to a number of records per second (`--source-rate`, for tests
//! and demos that need a job to run for a while): a token bucket consulted once per source
//! step. The source runner reads the clock once per step and asks the bucket how many records
//! the step may emit; an empty bucket answers with the time at which it will hold enough for a
//! batch, which the runner returns as [`SourceStatus::IdleUntil`](crate::api::sources::SourceStatus),
//! so the task waits on a timer and never sleeps on its slot's thread.
//!
//! The bucket's decisions are a pure function of its state and the time it is given, so they
//! are unit-tested with made-up times. Invariant: over any interval of length `t` the bucket
//! grants at most `burst + rate·t` records.

use std::time::{Duration, Instant};

/// Units of one token: a refill of `elapsed_ns × rate` units is exact in integers.
const UNITS_PER_TOKEN: u128 = 1_000_000_000;

/// How many records a step may emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// At most this many (at least 1).
    Take(usize),
    /// None now; call again at this time.
    WaitUntil(Instant),
}

/// A token bucket of `rate` tokens per second holding at most `burst` tokens (a twentieth of a
/// second's worth, at least 1), full at the start.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    units: u128,
    last: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` records per second (at least 1), full at `now`.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1);
        let burst = (rate / 20).max(1);
        Self { rate, burst, units: burst as u128 * UNITS_PER_TOKEN, last: now }
    }

    #[cfg(test)]
    pub(crate) fn burst(&self) -> u64 {
        self.burst
    }

    /// Tokens held after the refill up to `now` (whole tokens).
    pub(crate) fn tokens(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (self.units / UNITS_PER_TOKEN) as u64
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        let cap = self.burst as u128 * UNITS_PER_TOKEN;
        self.units = (self.units + elapsed.saturating_mul(self.rate as u128)).min(cap);
        self.last = now;
    }

    /// How many of `want` records may be emitted at `now`. With no whole token, the answer is
    /// the time at which the bucket holds `min(want, burst)` tokens, so a throttled source
    /// wakes once per batch rather than once per record. What is granted is not spent until
    /// [`spend`](Self::spend) says how many records were emitted.
    pub(crate) fn grant(&mut self, now: Instant, want: usize) -> Grant {
        let want = want.max(1) as u64;
        let tokens = self.tokens(now);
        if tokens > 0 {
            return Grant::Take(tokens.min(want) as usize);
        }
        let target = want.min(self.burst) as u128 * UNITS_PER_TOKEN;
        let missing = target - self.units;
        let wait_ns = missing.div_ceil(self.rate as u128);
        Grant::WaitUntil(now + Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
    }

    /// `records` were emitted (at most what was granted).
    pub(crate) fn spend(&mut self, records: usize) {
        self.units = self.units.saturating_sub(records as u128 * UNITS_PER_TOKEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, ms: u64) -> Instant {
        origin + Duration::from_millis(ms)
    }

    #[test]
    fn a_full_bucket_grants_its_burst_then_asks_to_wait_for_a_batch() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.burst(), 50);
        assert_eq!(b.grant(t0, 1024), Grant::Take(50));
        b.spend(50);
        // 50 tokens at 1000/s take 50 ms.
        assert_eq!(b.grant(t0, 1024), Grant::WaitUntil(at(t0, 50)));
        // Half-way, 25 have accumulated: granted (the source was woken early).
        assert_eq!(b.grant(at(t0, 25), 1024), Grant::Take(25));
        assert_eq!(b.grant(at(t0, 25), 10), Grant::Take(10), "never more than wanted");
    }

    #[test]
    fn a_wait_is_for_what_the_step_wants_when_less_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.spend(50);
        assert_eq!(b.grant(t0, 4), Grant::WaitUntil(at(t0, 4)));
    }

    #[test]
    fn idle_time_does_not_save_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.spend(50);
        assert_eq!(b.grant(at(t0, 3_600_000), usize::MAX), Grant::Take(50));
    }

    #[test]
    fn a_slow_rate_still_grants_one_record_at_a_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert_eq!(b.burst(), 1);
        assert_eq!(b.grant(t0, 100), Grant::Take(1));
        b.spend(1);
        // One token at 3/s: 333.33… ms, rounded up to the nanosecond.
        assert_eq!(b.grant(t0, 100), Grant::WaitUntil(t0 + Duration::from_nanos(333_333_334)));
        assert_eq!(TokenBucket::new(0, t0).grant(t0, 1), Grant::Take(1), "a rate of 0 is taken as 1");
    }

    /// A source that always wants a batch, run against the bucket in simulated time (it is
    /// called again exactly when told): the records granted over `t` seconds stay within
    /// `burst + rate·t` and reach at least `rate·t`.
    #[test]
    fn records_over_time_follow_the_rate() {
        for (rate, secs) in [(1u64, 30u64), (7, 10), (1000, 5), (123_457, 3), (10_000_000, 2)] {
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs(secs);
            let mut b = TokenBucket::new(rate, t0);
            let (mut now, mut emitted, mut waits) = (t0, 0u64, 0u64);
            while now < end {
                match b.grant(now, 1024) {
                    Grant::Take(n) => {
                        b.spend(n);
                        emitted += n as u64;
                    }
                    Grant::WaitUntil(t) => {
                        assert!(t > now, "a wait is in the future");
                        now = t;
                        waits += 1;
                    }
                }
            }
            let budget = b.burst() + rate * secs;
            assert!(emitted <= budget, "rate {rate}: {emitted} records > {budget}");
            assert!(emitted >= rate * secs, "rate {rate}: {emitted} records < {}", rate * secs);
            // One wake-up per granted batch, never one per record at high rates.
            let batch = b.burst().min(1024);
            assert!(waits <= emitted / batch + 1, "rate {rate}: {waits} waits for {emitted} records");
        }
    }
}
