//! The clock, the one place the client reads it: the wall clock once, then a monotonic clock,
//! so the core's deadlines never go backwards.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use peerlink_core::time::Timestamp;

/// The anchor: an instant and the wall-clock milliseconds at that instant.
fn anchor() -> &'static (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (Instant::now(), wall)
    })
}

/// Milliseconds since the Unix epoch, never decreasing within a process.
pub fn unix_millis() -> u64 {
    let (start, wall) = anchor();
    let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    wall.saturating_add(elapsed)
}

/// The current time, for the core.
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(unix_millis())
}
