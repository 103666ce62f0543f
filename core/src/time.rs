//! Time as the core sees it: an argument, never a clock.
//!
//! Every input to a peerlink state machine carries the current time as a [`Timestamp`]: whole
//! milliseconds since the Unix epoch. The same value is written into envelopes (`timestamp`) and
//! used for deadlines, so a driver should derive it from a monotonic clock anchored at the wall
//! clock when the driver starts (`anchor_unix_ms + monotonic_elapsed_ms`), combined with the wall
//! clock by [`clock_reading`]; then deadlines never go backwards, timestamps stay close to real
//! time, and a suspension of the machine (during which a monotonic clock may stop) still counts.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One reading of a driver's clock, in milliseconds since the Unix epoch: the later of
/// `monotonic_ms` (a monotonic clock anchored at the wall clock) and `wall_ms` (the wall clock
/// now), and never less than `last`, the latest reading given, which it raises. The wall clock
/// counts where the monotonic one stops (Linux's does not advance while the machine is
/// suspended); the monotonic one, and `last`, where the wall clock steps back. Spec §15.5 needs
/// send timeouts to count suspensions.
pub fn clock_reading(monotonic_ms: u64, wall_ms: u64, last: &AtomicU64) -> Timestamp {
    let candidate = monotonic_ms.max(wall_ms);
    Timestamp::from_unix_millis(last.fetch_max(candidate, Ordering::AcqRel).max(candidate))
}

/// A point in time: milliseconds since the Unix epoch (1970-01-01T00:00:00Z).
///
/// Arithmetic saturates: a hostile timestamp can never overflow a deadline computation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the largest representable time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(d)))
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Absolute distance between two timestamps.
    pub fn abs_diff(self, other: Timestamp) -> Duration {
        Duration::from_millis(self.0.abs_diff(other.0))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_the_later_of_the_two_clocks_and_never_goes_back() {
        let last = AtomicU64::new(1_000);
        let at = |m, w| clock_reading(m, w, &last).as_unix_millis();
        assert_eq!(at(2_000, 1_500), 2_000, "the wall clock stepped back: the monotonic one");
        assert_eq!(at(2_100, 9_000), 9_000, "after a suspension: the wall clock");
        assert_eq!(at(2_200, 8_000), 9_000, "and it stepped back again: never backwards");
        assert_eq!(at(9_500, 8_100), 9_500);
        assert_eq!(last.load(Ordering::SeqCst), 9_500);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_millis(u64::MAX - 1);
        assert_eq!(t.saturating_add(Duration::from_secs(10)).as_unix_millis(), u64::MAX);
        let z = Timestamp::from_unix_millis(5);
        assert_eq!(z.saturating_sub(Duration::from_secs(1)).as_unix_millis(), 0);
        assert_eq!(z.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(z.abs_diff(Timestamp::from_unix_millis(2)), Duration::from_millis(3));
        assert_eq!(duration_millis(Duration::MAX), u64::MAX);
    }
}
