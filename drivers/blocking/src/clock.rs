//! The wall clock, the one place the client reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use peerlink_core::time::Timestamp;

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The current time, for the core.
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(unix_millis())
}
