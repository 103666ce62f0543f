//! Token-bucket rate limiting (per link, 100 messages a minute by default; heartbeats, 2 a minute
//! from a peer).
//!
//! A [`TokenBucket`] holds up to `burst` tokens and gains `count` tokens every `per`, accrued
//! continuously millisecond by millisecond. The arithmetic is exact: internally one token is
//! `per` (in ms) units and every elapsed millisecond adds `count` units, all in `u128`, so no
//! rounding drifts, no floating point is involved, and no gap between timestamps — however
//! large — overflows. Time that goes backwards counts as no time passing.
//!
//! ```
//! use std::time::Duration;
//! use peerlink_core::Timestamp;
//! use peerlink_core::rate_limit::{RateLimit, TokenBucket};
//!
//! let t0 = Timestamp::from_unix_millis(1_000_000);
//! let mut heartbeats = TokenBucket::new(RateLimit::per_minute(2), t0);
//! assert!(heartbeats.try_take(t0) && heartbeats.try_take(t0));
//! assert!(!heartbeats.try_take(t0));
//! // One token comes back every 30 s.
//! assert_eq!(heartbeats.next_token_at(t0), Some(t0.saturating_add(Duration::from_secs(30))));
//! ```

use std::time::Duration;

use crate::time::{Timestamp, duration_millis};

/// A rate: `count` tokens every `per`, with at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The most tokens the bucket holds, and so the longest run of back-to-back takes. A bucket
    /// with `burst` 0 never allows anything.
    pub burst: u32,
    /// The period over which `count` tokens are added, in whole milliseconds (sub-millisecond
    /// parts are ignored). A `per` of 0 (rejected by [`validate`](Self::validate)) means an
    /// unlimited refill rate: the bucket is always full, and every take succeeds unless `burst`
    /// is 0 or `count` is 0.
    pub per: Duration,
    /// Tokens added every `per`, accrued continuously. A `count` of 0 (rejected by
    /// [`validate`](Self::validate)) means the bucket never refills: it allows `burst` takes in
    /// total, whatever `per` is.
    pub count: u32,
}

impl RateLimit {
    /// `n` per minute, with a burst of `n`: `burst: n, count: n, per: 60 s`.
    pub const fn per_minute(n: u32) -> Self {
        Self { burst: n, per: Duration::from_secs(60), count: n }
    }

    /// Checks that `burst >= 1`, `count >= 1` and `per` is at least 1 ms.
    ///
    /// An invalid limit never makes a [`TokenBucket`] panic; see the field docs for how it
    /// behaves.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.burst == 0 {
            return Err("rate limit burst must be at least 1");
        }
        if self.count == 0 {
            return Err("rate limit count must be at least 1");
        }
        if duration_millis(self.per) == 0 {
            return Err("rate limit period must be at least 1 ms");
        }
        Ok(())
    }

    /// Units per token: the period in ms (at least 1).
    fn token_units(&self) -> u128 {
        u128::from(duration_millis(self.per).max(1))
    }

    /// Units of a full bucket.
    fn capacity_units(&self) -> u128 {
        u128::from(self.burst).saturating_mul(self.token_units())
    }
}

/// A token bucket enforcing a [`RateLimit`], driven by the caller's timestamps.
///
/// Each accepted message takes one token ([`try_take`](Self::try_take)). Starting full, over any
/// stretch of time `elapsed` it allows at most `burst + floor(count * elapsed / per)` takes, and
/// exactly that many when takes are attempted often enough that the bucket never overflows.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// The rate enforced.
    limit: RateLimit,
    /// Tokens held, in units of `1 / per_ms` token; at most `limit.capacity_units()`.
    units: u128,
    /// The latest time seen; accrual is counted from here.
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket for `limit`, as of `now`.
    pub fn new(limit: RateLimit, now: Timestamp) -> Self {
        Self { limit, units: limit.capacity_units(), last: now }
    }

    /// The limit this bucket enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token if one is available at `now`; returns whether it did.
    ///
    /// A `now` earlier than a time already seen counts as that time (no time passing).
    pub fn try_take(&mut self, now: Timestamp) -> bool {
        self.advance(now);
        match self.units.checked_sub(self.limit.token_units()) {
            Some(rest) => {
                self.units = rest;
                true
            }
            None => false,
        }
    }

    /// Whole tokens available at `now` (at most `burst`), without taking any.
    pub fn available(&self, now: Timestamp) -> u32 {
        let tokens = self.units_at(now).checked_div(self.limit.token_units()).unwrap_or(0);
        u32::try_from(tokens).unwrap_or(u32::MAX).min(self.limit.burst)
    }

    /// `None` if a token is available at `now`; otherwise the earliest time at which one will
    /// be (if nothing is taken meanwhile).
    ///
    /// A bucket that can never yield a token again (`count` 0 or `burst` 0, once empty) answers
    /// the largest representable [`Timestamp`], as does a wait that would overflow.
    pub fn next_token_at(&self, now: Timestamp) -> Option<Timestamp> {
        let units = self.units_at(now);
        let missing = self.limit.token_units().checked_sub(units).filter(|&m| m > 0)?;
        let never = Timestamp::from_unix_millis(u64::MAX);
        if self.limit.count == 0 || self.limit.burst == 0 {
            return Some(never);
        }
        let count = u128::from(self.limit.count);
        // ceil(missing / count) milliseconds of accrual.
        let wait = missing.div_ceil(count);
        let Ok(wait) = u64::try_from(wait) else { return Some(never) };
        Some(now.max(self.last).saturating_add(Duration::from_millis(wait)))
    }

    /// The units held at `now`, accrual included, without changing the bucket.
    fn units_at(&self, now: Timestamp) -> u128 {
        if self.limit.count == 0 {
            return self.units;
        }
        let capacity = self.limit.capacity_units();
        if duration_millis(self.limit.per) == 0 {
            return capacity;
        }
        let elapsed = now.as_unix_millis().saturating_sub(self.last.as_unix_millis());
        let added = u128::from(elapsed).saturating_mul(u128::from(self.limit.count));
        self.units.saturating_add(added).min(capacity)
    }

    /// Accrues tokens up to `now`, if `now` is later than any time seen.
    fn advance(&mut self, now: Timestamp) {
        self.units = self.units_at(now);
        self.last = self.last.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn limit(burst: u32, count: u32, per_ms: u64) -> RateLimit {
        RateLimit { burst, count, per: Duration::from_millis(per_ms) }
    }

    /// `burst + floor(count * elapsed / per)`, the most takes a run starting full may have.
    fn allowance(l: RateLimit, elapsed_ms: u64) -> u128 {
        let per = u128::from(duration_millis(l.per));
        u128::from(l.burst) + u128::from(l.count) * u128::from(elapsed_ms) / per
    }

    fn drain(bucket: &mut TokenBucket, now: Timestamp) -> u32 {
        let mut n = 0;
        while bucket.try_take(now) {
            n += 1;
        }
        n
    }

    #[test]
    fn per_minute_link_default() {
        let t0 = ts(5_000);
        let l = RateLimit::per_minute(100);
        assert_eq!(l, RateLimit { burst: 100, per: Duration::from_secs(60), count: 100 });
        assert_eq!(l.validate(), Ok(()));
        let mut bucket = TokenBucket::new(l, t0);
        assert_eq!(bucket.available(t0), 100);
        assert_eq!(bucket.next_token_at(t0), None);
        assert_eq!(drain(&mut bucket, t0), 100);
        assert_eq!(bucket.available(t0), 0);
        // 100 per minute: one token every 600 ms.
        let t1 = ts(5_600);
        assert_eq!(bucket.next_token_at(t0), Some(t1));
        assert_eq!(bucket.next_token_at(ts(5_300)), Some(t1));
        assert!(!bucket.try_take(ts(5_599)));
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
        // A long silence refills to the burst, no further.
        assert_eq!(bucket.available(ts(10_000_000)), 100);
        assert_eq!(drain(&mut bucket, ts(10_000_000)), 100);
    }

    #[test]
    fn heartbeats_two_per_minute() {
        let t0 = ts(0);
        let mut bucket = TokenBucket::new(RateLimit::per_minute(2), t0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(ts(1)));
        assert!(!bucket.try_take(ts(29_999)));
        assert_eq!(bucket.next_token_at(ts(29_999)), Some(ts(30_000)));
        assert!(bucket.try_take(ts(30_000)));
        assert_eq!(bucket.next_token_at(ts(30_000)), Some(ts(60_000)));
    }

    #[test]
    fn fractional_accrual_is_exact() {
        // 3 tokens per 1000 ms: tokens at 334, 667, 1000 ms (ceil of k * 1000 / 3).
        // (Burst 2 so the remainder left after a take is never cut off by the cap.)
        let mut bucket = TokenBucket::new(limit(2, 3, 1000), ts(0));
        assert_eq!(drain(&mut bucket, ts(0)), 2);
        let mut got = Vec::new();
        for t in 1..=1000 {
            if bucket.try_take(ts(t)) {
                got.push(t);
            }
        }
        assert_eq!(got, vec![334, 667, 1000]);
    }

    #[test]
    fn validate_rejects_degenerate_limits() {
        assert!(limit(0, 1, 1).validate().is_err());
        assert!(limit(1, 0, 1).validate().is_err());
        assert!(limit(1, 1, 0).validate().is_err());
        let sub_ms = RateLimit { burst: 1, count: 1, per: Duration::from_micros(500) };
        assert!(sub_ms.validate().is_err());
        assert_eq!(limit(1, 1, 1).validate(), Ok(()));
        assert_eq!(RateLimit::per_minute(0).validate(), Err("rate limit burst must be at least 1"));
    }

    #[test]
    fn zero_count_never_refills() {
        let mut bucket = TokenBucket::new(limit(3, 0, 1000), ts(0));
        assert_eq!(drain(&mut bucket, ts(0)), 3);
        assert_eq!(bucket.available(ts(u64::MAX)), 0);
        assert!(!bucket.try_take(ts(u64::MAX)));
        assert_eq!(bucket.next_token_at(ts(7)), Some(ts(u64::MAX)));
        // Also with a zero period.
        let mut bucket = TokenBucket::new(limit(2, 0, 0), ts(0));
        assert_eq!(drain(&mut bucket, ts(10)), 2);
        assert_eq!(bucket.next_token_at(ts(10)), Some(ts(u64::MAX)));
    }

    #[test]
    fn zero_period_is_always_full() {
        let mut bucket = TokenBucket::new(limit(2, 1, 0), ts(0));
        for _ in 0..1000 {
            assert!(bucket.try_take(ts(0)));
        }
        assert_eq!(bucket.available(ts(0)), 2);
        assert_eq!(bucket.next_token_at(ts(0)), None);
    }

    #[test]
    fn zero_burst_never_allows() {
        for l in [limit(0, 1, 1), limit(0, 1, 0), limit(0, 0, 0), RateLimit::per_minute(0)] {
            let mut bucket = TokenBucket::new(l, ts(0));
            assert!(!bucket.try_take(ts(0)));
            assert!(!bucket.try_take(ts(u64::MAX)));
            assert_eq!(bucket.available(ts(u64::MAX)), 0);
            assert_eq!(bucket.next_token_at(ts(u64::MAX)), Some(ts(u64::MAX)));
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let huge = RateLimit { burst: u32::MAX, count: u32::MAX, per: Duration::MAX };
        let mut bucket = TokenBucket::new(huge, ts(0));
        assert!(bucket.try_take(ts(u64::MAX)));
        assert_eq!(bucket.available(ts(u64::MAX)), u32::MAX - 1);
        let fast = RateLimit { burst: u32::MAX, count: u32::MAX, per: Duration::from_millis(1) };
        let mut bucket = TokenBucket::new(fast, ts(u64::MAX));
        assert!(bucket.try_take(ts(0)));
        assert_eq!(bucket.available(ts(u64::MAX)), u32::MAX - 1);
        let slow = RateLimit { burst: 1, count: 1, per: Duration::MAX };
        let mut bucket = TokenBucket::new(slow, ts(u64::MAX - 10));
        assert!(bucket.try_take(ts(u64::MAX - 10)));
        assert_eq!(bucket.next_token_at(ts(u64::MAX - 10)), Some(ts(u64::MAX)));
        assert!(!bucket.try_take(ts(u64::MAX)));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let mut bucket = TokenBucket::new(limit(1, 1, 1000), ts(10_000));
        assert!(bucket.try_take(ts(10_000)));
        // Back and forth must not credit the same second twice.
        assert!(!bucket.try_take(ts(0)));
        assert!(!bucket.try_take(ts(10_999)));
        assert!(!bucket.try_take(ts(5)));
        assert_eq!(bucket.next_token_at(ts(5)), Some(ts(11_000)));
        assert!(bucket.try_take(ts(11_000)));
        assert!(!bucket.try_take(ts(11_999)));
    }

    fn valid_limit() -> impl Strategy<Value = RateLimit> {
        prop_oneof![
            3 => (1u32..=50, 1u32..=50, 1u64..=5_000).prop_map(|(b, c, p)| limit(b, c, p)),
            1 => (1u32..=1000, 1u32..=1000, 1u64..=600_000).prop_map(|(b, c, p)| limit(b, c, p)),
            1 => (any::<u32>(), any::<u32>(), any::<u64>())
                .prop_map(|(b, c, p)| limit(b.max(1), c.max(1), p.max(1))),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Forward(u64),
        Back(u64),
        Take(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u64..=2_000).prop_map(Step::Forward),
            1 => any::<u64>().prop_map(Step::Forward),
            1 => (0u64..=5_000).prop_map(Step::Back),
            4 => any::<u8>().prop_map(Step::Take),
        ]
    }

    proptest! {
        #[test]
        fn never_exceeds_allowance(
            l in valid_limit(),
            start in 0u64..=1_000_000_000,
            steps in prop::collection::vec(step(), 0..60),
        ) {
            let t0 = ts(start);
            let mut bucket = TokenBucket::new(l, t0);
            let mut now = start;
            let mut latest = start;
            let mut taken: u128 = 0;
            for s in steps {
                match s {
                    Step::Forward(d) => now = now.saturating_add(d),
                    Step::Back(d) => now = now.saturating_sub(d),
                    Step::Take(n) => {
                        for _ in 0..n {
                            let before = bucket.available(ts(now));
                            let next = bucket.next_token_at(ts(now));
                            let ok = bucket.try_take(ts(now));
                            prop_assert_eq!(ok, before > 0);
                            prop_assert_eq!(next.is_none(), before > 0);
                            if ok {
                                taken += 1;
                            }
                        }
                    }
                }
                latest = latest.max(now);
                let avail = bucket.available(ts(now));
                prop_assert!(avail <= l.burst);
                prop_assert!(bucket.units <= l.capacity_units());
                prop_assert!(taken <= allowance(l, latest - start));
                prop_assert!(taken + u128::from(avail) <= allowance(l, latest - start));
                if let Some(at) = bucket.next_token_at(ts(now)) {
                    prop_assert!(avail == 0 && (at > ts(now) || at.as_unix_millis() == u64::MAX));
                    // The largest timestamp stands for "too far to represent".
                    if at.as_unix_millis() < u64::MAX {
                        prop_assert!(bucket.available(at) >= 1);
                        let just_before = at.saturating_sub(Duration::from_millis(1));
                        prop_assert_eq!(bucket.available(just_before), 0);
                    }
                }
            }
        }

        #[test]
        fn frequent_takes_reach_allowance(
            (l, advances) in (1u32..=200, 1u32..=200, 1u64..=10_000).prop_flat_map(|(b, c, p)| {
                let l = limit(b, c, p);
                // Steps short enough that a drained bucket (< 1 token left) cannot overflow.
                let max_step =
                    (u64::from(b - 1) * p + 1) / u64::from(c);
                (Just(l), prop::collection::vec(0..=max_step, 0..80))
            }),
            start in 0u64..=1_000_000_000,
        ) {
            let mut bucket = TokenBucket::new(l, ts(start));
            let mut now = start;
            let mut taken = u128::from(drain(&mut bucket, ts(now)));
            for d in advances {
                now += d;
                taken += u128::from(drain(&mut bucket, ts(now)));
                let bound = allowance(l, now - start);
                prop_assert!(taken <= bound);
                // Exact accrual: nothing is lost when the bucket never overflows.
                prop_assert_eq!(taken, bound);
                prop_assert!(taken + 1 >= bound);
            }
        }
    }
}
