//! The node's clock: Unix milliseconds for the core that never go backwards and keep counting
//! across a machine's suspension, and the instant a node deadline falls at.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerlink_core::Timestamp;

/// Milliseconds since the Unix epoch for the core: the later of the wall clock and a monotonic
/// clock anchored at the wall clock when the node started, and never less than a reading already
/// given (`peerlink_core::time`): deadlines never go backwards. The wall clock counts where the
/// monotonic one stops: a machine's suspension (Linux's monotonic clock does not advance while
/// suspended). Without it, a node waking from a 12-minute sleep would stamp its envelopes
/// 12 minutes late (refused by its peers as stale) and let a message outlive its send timeout
/// by as much, which spec §15.5 relies on not happening.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    start: Instant,
    start_ms: u64,
    /// The latest reading given, shared by every copy.
    last: Arc<AtomicU64>,
}

/// Milliseconds since the Unix epoch on the wall clock (0 before it).
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Clock {
    pub fn new() -> Self {
        let start_ms = unix_millis();
        Self { start: Instant::now(), start_ms, last: Arc::new(AtomicU64::new(start_ms)) }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let monotonic = self.start_ms.saturating_add(elapsed);
        peerlink_core::time::clock_reading(monotonic, unix_millis(), &self.last)
    }

    /// The instant of a node deadline, measured from now (far future if unrepresentable).
    pub fn instant_of(&self, t: Timestamp) -> Instant {
        let now = Instant::now();
        let after =
            Duration::from_millis(t.as_unix_millis().saturating_sub(self.now().as_unix_millis()));
        now.checked_add(after).unwrap_or_else(|| now + Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_maps_to_an_instant_measured_from_now() {
        let clock = Clock::new();
        let before = Instant::now();
        let at = clock.instant_of(clock.now().saturating_add(Duration::from_secs(5)));
        let after = Instant::now();
        assert!(
            at >= before + Duration::from_millis(4_900) && at <= after + Duration::from_secs(5)
        );
        assert!(
            clock.instant_of(Timestamp::from_unix_millis(0)) <= Instant::now(),
            "a past one: now"
        );
    }
}
