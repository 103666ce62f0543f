//! The clock, the one place the client reads it: the later of the wall clock and a monotonic
//! clock anchored at the wall clock once, never less than a reading already given, so the core's
//! deadlines never go backwards. The wall clock counts where the monotonic one stops: a machine's
//! suspension (Linux's monotonic clock does not advance while suspended), after which envelopes
//! would otherwise carry stale timestamps and messages outlive their send timeout (spec §15.5).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use peerlink_core::time::{Timestamp, clock_reading};

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The anchor: an instant and the wall-clock milliseconds at that instant.
fn anchor() -> &'static (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    ANCHOR.get_or_init(|| (Instant::now(), wall_millis()))
}

/// The latest reading given.
static LAST: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the Unix epoch, never decreasing within a process.
pub fn unix_millis() -> u64 {
    let (start, wall) = anchor();
    let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    clock_reading(wall.saturating_add(elapsed), wall_millis(), &LAST).as_unix_millis()
}

/// The current time, for the core.
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(unix_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_wall_clock_and_never_decrease() {
        let (a, b) = (unix_millis(), unix_millis());
        assert!(b >= a && a >= wall_millis().saturating_sub(1_000));
    }
}
