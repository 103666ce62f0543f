//! Reconnect backoff: exponential delays (1, 2, 4, 8 … 60 s by default) with jitter drawn from
//! an injected RNG.
//!
//! Everything is computed in whole milliseconds with saturating arithmetic, so no configuration
//! value and no attempt count can make it panic or overflow. The jitter only ever shortens a
//! delay: each delay is drawn uniformly from `[nominal * (100 - j) / 100, nominal]`, so a fleet
//! of peers that lost the same server spreads its reconnects without ever exceeding the nominal
//! schedule.
//!
//! ```
//! use std::time::Duration;
//! use peerlink_core::backoff::{Backoff, BackoffConfig};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let mut backoff = Backoff::new(BackoffConfig::default());
//! let first = backoff.next_delay(&mut rng);
//! assert!(first >= Duration::from_millis(800) && first <= Duration::from_secs(1));
//! backoff.reset(); // the connection came up
//! assert_eq!(backoff.attempt(), 0);
//! ```

use std::time::Duration;

use rand_core::CryptoRng;

use crate::time::duration_millis;

/// How reconnect delays grow and how much they are jittered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Nominal delay before the first retry (attempt 0). Default 1 s. Sub-millisecond parts are
    /// ignored.
    pub initial: Duration,
    /// Upper bound on any nominal delay. Default 60 s. Sub-millisecond parts are ignored.
    pub max: Duration,
    /// Factor applied to the nominal delay after each attempt. Default 2. A value of 0 (rejected
    /// by [`validate`](Self::validate)) behaves as 1: a constant delay.
    pub multiplier: u32,
    /// How much a delay may be shortened, in percent of its nominal value: each delay is drawn
    /// uniformly from `[nominal * (100 - j) / 100, nominal]`. Default 20. Values above 100
    /// (rejected by [`validate`](Self::validate)) behave as 100.
    pub jitter_percent: u8,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2,
            jitter_percent: 20,
        }
    }
}

impl BackoffConfig {
    /// Checks that `initial > 0` (in whole milliseconds), `max >= initial`, `multiplier >= 1`
    /// and `jitter_percent <= 100`.
    ///
    /// An invalid configuration never makes [`Backoff`] panic; it only yields delays that may
    /// not mean what was intended (see the field docs).
    pub fn validate(&self) -> Result<(), &'static str> {
        let initial = duration_millis(self.initial);
        if initial == 0 {
            return Err("backoff initial delay must be at least 1 ms");
        }
        if duration_millis(self.max) < initial {
            return Err("backoff max delay must not be less than the initial delay");
        }
        if self.multiplier == 0 {
            return Err("backoff multiplier must be at least 1");
        }
        if self.jitter_percent > 100 {
            return Err("backoff jitter_percent must be at most 100");
        }
        Ok(())
    }

    /// The un-jittered delay before retry number `attempt` (0-based):
    /// `min(initial * multiplier^attempt, max)`, saturating, in whole milliseconds.
    ///
    /// Never panics, for any `attempt` and any configuration; for a valid configuration it is
    /// non-decreasing in `attempt`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        Duration::from_millis(self.nominal_millis(attempt))
    }

    /// [`nominal`](Self::nominal) in whole milliseconds.
    fn nominal_millis(&self, attempt: u32) -> u64 {
        let max = duration_millis(self.max);
        let mut value = duration_millis(self.initial);
        if self.multiplier > 1 {
            // With a factor of at least 2 a non-zero value reaches `max` (or saturates) within
            // 64 steps, so this loop is short whatever `attempt` is.
            for _ in 0..attempt {
                if value == 0 || value >= max {
                    break;
                }
                value = value.saturating_mul(u64::from(self.multiplier));
            }
        }
        value.min(max)
    }

    /// The inclusive range `[low, nominal]` a jittered delay for `attempt` is drawn from, in ms.
    fn jitter_range_millis(&self, attempt: u32) -> (u64, u64) {
        let nominal = self.nominal_millis(attempt);
        let keep = 100u128.saturating_sub(u128::from(self.jitter_percent.min(100)));
        let low = u128::from(nominal).saturating_mul(keep).checked_div(100).unwrap_or(0);
        (u64::try_from(low).unwrap_or(nominal).min(nominal), nominal)
    }
}

/// Reconnect backoff state: which attempt comes next, and the configuration.
///
/// Call [`next_delay`](Self::next_delay) before each reconnect attempt and
/// [`reset`](Self::reset) once a connection succeeds.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// How delays grow.
    config: BackoffConfig,
    /// The attempt the next delay is for.
    attempt: u32,
}

impl Backoff {
    /// A backoff at attempt 0 using `config` (which should pass [`BackoffConfig::validate`]).
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Draws the jittered delay for the current attempt from `rng`, then moves to the next
    /// attempt (the counter saturates at `u32::MAX`).
    ///
    /// The delay is uniform over the whole milliseconds of
    /// `[nominal * (100 - jitter_percent) / 100, nominal]` (rounded down at the low end), where
    /// `nominal` is [`BackoffConfig::nominal`] for the current attempt. The same RNG state
    /// always gives the same delay.
    pub fn next_delay(&mut self, rng: &mut (impl CryptoRng + ?Sized)) -> Duration {
        let (low, high) = self.config.jitter_range_millis(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(uniform_inclusive(rng, low, high))
    }

    /// Back to attempt 0, e.g. after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The number of delays drawn since creation or the last [`reset`](Self::reset), saturating
    /// at `u32::MAX`: the attempt the next [`next_delay`](Self::next_delay) is for.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The configuration this backoff uses.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

/// A uniformly distributed integer in `[low, high]` (`low > high` yields `high`).
///
/// Rejection sampling removes modulo bias; after a bounded number of rejections (probability
/// below 2^-64 with a real RNG) it falls back to the biased draw rather than loop forever.
fn uniform_inclusive<R: CryptoRng + ?Sized>(rng: &mut R, low: u64, high: u64) -> u64 {
    let Some(width) = high.checked_sub(low) else { return high };
    if width == 0 {
        return low;
    }
    let Some(span) = width.checked_add(1) else {
        // The full u64 range: every draw is uniform already.
        return rng.next_u64();
    };
    // Draws below `2^64 mod span` are rejected so the rest is an exact multiple of `span`.
    let threshold = span.wrapping_neg().checked_rem(span).unwrap_or(0);
    let mut draw = rng.next_u64();
    for _ in 0..64 {
        if draw >= threshold {
            break;
        }
        draw = rng.next_u64();
    }
    low.saturating_add(draw.checked_rem(span).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_is_exact() {
        let config = BackoffConfig::default();
        assert_eq!(config.validate(), Ok(()));
        let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (attempt, s) in (0u32..).zip(expected) {
            assert_eq!(config.nominal(attempt), secs(s), "attempt {attempt}");
        }
        assert_eq!(config.nominal(u32::MAX), secs(60));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = BackoffConfig::default();
        let bad = [
            BackoffConfig { initial: Duration::ZERO, ..ok.clone() },
            BackoffConfig { initial: Duration::from_micros(999), ..ok.clone() },
            BackoffConfig { max: Duration::from_millis(999), ..ok.clone() },
            BackoffConfig { multiplier: 0, ..ok.clone() },
            BackoffConfig { jitter_percent: 101, ..ok.clone() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let edge =
            BackoffConfig { initial: secs(5), max: secs(5), multiplier: 1, jitter_percent: 100 };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn invalid_configs_do_not_panic() {
        let configs = [
            BackoffConfig {
                initial: Duration::ZERO,
                max: Duration::ZERO,
                multiplier: 0,
                jitter_percent: 255,
            },
            BackoffConfig {
                initial: Duration::MAX,
                max: Duration::MAX,
                multiplier: u32::MAX,
                jitter_percent: 0,
            },
            BackoffConfig {
                initial: Duration::MAX,
                max: Duration::MAX,
                multiplier: u32::MAX,
                jitter_percent: 100,
            },
            BackoffConfig { initial: secs(10), max: secs(1), multiplier: 3, jitter_percent: 50 },
            BackoffConfig {
                initial: Duration::ZERO,
                max: secs(60),
                multiplier: 2,
                jitter_percent: 20,
            },
        ];
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for config in configs {
            for attempt in [0, 1, 2, 63, 64, 65, 1000, u32::MAX - 1, u32::MAX] {
                let nominal = config.nominal(attempt);
                assert!(nominal <= config.max, "{config:?} {attempt}");
            }
            let mut backoff = Backoff::new(config.clone());
            for _ in 0..100 {
                assert!(backoff.next_delay(&mut rng) <= config.max);
            }
        }
        // Multiplier 0 behaves as 1; initial 0 gives zero delays; max < initial caps at max.
        let zero_mult = BackoffConfig { multiplier: 0, ..BackoffConfig::default() };
        assert_eq!(zero_mult.nominal(5), secs(1));
        let zero_initial = BackoffConfig { initial: Duration::ZERO, ..BackoffConfig::default() };
        assert_eq!(zero_initial.nominal(u32::MAX), Duration::ZERO);
        let inverted =
            BackoffConfig { initial: secs(10), max: secs(1), ..BackoffConfig::default() };
        assert_eq!(inverted.nominal(0), secs(1));
    }

    #[test]
    fn attempt_counter_saturates() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        backoff.attempt = u32::MAX;
        let delay = backoff.next_delay(&mut ChaCha20Rng::seed_from_u64(2));
        assert!(delay >= Duration::from_millis(48_000) && delay <= secs(60));
        assert_eq!(backoff.attempt(), u32::MAX);
    }

    #[test]
    fn jitter_covers_its_range() {
        // With a 1 ms-wide range of 3 values, every value should show up.
        let config = BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
            multiplier: 1,
            jitter_percent: 20,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut seen = std::collections::BTreeSet::new();
        let mut backoff = Backoff::new(config);
        for _ in 0..200 {
            seen.insert(backoff.next_delay(&mut rng).as_millis());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![8, 9, 10]);
    }

    #[test]
    fn zero_jitter_is_exact() {
        let config = BackoffConfig { jitter_percent: 0, ..BackoffConfig::default() };
        let mut backoff = Backoff::new(config.clone());
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        for attempt in 0..10 {
            assert_eq!(backoff.next_delay(&mut rng), config.nominal(attempt));
        }
    }

    #[test]
    fn uniform_inclusive_edges() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        assert_eq!(uniform_inclusive(&mut rng, 7, 7), 7);
        assert_eq!(uniform_inclusive(&mut rng, 9, 3), 3);
        let _ = uniform_inclusive(&mut rng, 0, u64::MAX);
        for _ in 0..100 {
            let v = uniform_inclusive(&mut rng, u64::MAX - 2, u64::MAX);
            assert!(v >= u64::MAX - 2);
        }
    }

    fn valid_config() -> impl Strategy<Value = BackoffConfig> {
        (1u64..=100_000, 0u64..=10_000_000, 1u32..=10, 0u8..=100).prop_map(
            |(initial, extra, multiplier, jitter_percent)| BackoffConfig {
                initial: Duration::from_millis(initial),
                max: Duration::from_millis(initial.saturating_add(extra)),
                multiplier,
                jitter_percent,
            },
        )
    }

    proptest! {
        #[test]
        fn nominal_is_monotone_and_bounded(config in valid_config(), attempt in any::<u32>()) {
            prop_assert_eq!(config.validate(), Ok(()));
            let here = config.nominal(attempt);
            let next = config.nominal(attempt.saturating_add(1));
            prop_assert!(here <= next);
            prop_assert!(here <= config.max);
            prop_assert!(here >= Duration::from_millis(duration_millis(config.initial)));
        }

        #[test]
        fn nominal_matches_naive_formula(config in valid_config(), attempt in 0u32..80) {
            let initial = u128::from(duration_millis(config.initial));
            let factor = u128::from(config.multiplier).checked_pow(attempt);
            let max = u128::from(duration_millis(config.max));
            let expected = factor.and_then(|f| f.checked_mul(initial)).map_or(max, |v| v.min(max));
            prop_assert_eq!(u128::from(duration_millis(config.nominal(attempt))), expected);
        }

        #[test]
        fn delays_are_jittered_within_range(
            config in valid_config(),
            seed in any::<u64>(),
            start in any::<u32>(),
            draws in 1usize..40,
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut backoff = Backoff::new(config.clone());
            backoff.attempt = start.min(u32::MAX - 64);
            for _ in 0..draws {
                let nominal = config.nominal(backoff.attempt());
                let n = nominal.as_millis();
                let low = n * u128::from(100 - config.jitter_percent) / 100;
                let before = backoff.attempt();
                let delay = backoff.next_delay(&mut rng);
                prop_assert_eq!(backoff.attempt(), before + 1);
                prop_assert!(delay <= nominal, "{:?} > {:?}", delay, nominal);
                prop_assert!(delay.as_millis() >= low, "{:?} < {}ms", delay, low);
            }
        }

        #[test]
        fn same_seed_same_delays_and_reset_restarts(config in valid_config(), seed in any::<u64>()) {
            let mut a = Backoff::new(config.clone());
            let mut b = Backoff::new(config.clone());
            let mut rng_a = ChaCha20Rng::seed_from_u64(seed);
            let mut rng_b = ChaCha20Rng::seed_from_u64(seed);
            let first: Vec<_> = (0..12).map(|_| a.next_delay(&mut rng_a)).collect();
            let second: Vec<_> = (0..12).map(|_| b.next_delay(&mut rng_b)).collect();
            prop_assert_eq!(&first, &second);

            a.reset();
            prop_assert_eq!(a.attempt(), 0);
            let mut replay = Backoff::new(config);
            let mut rng_c = rng_a.clone();
            for _ in 0..12 {
                prop_assert_eq!(a.next_delay(&mut rng_a), replay.next_delay(&mut rng_c));
            }
        }
    }
}
