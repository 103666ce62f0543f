//! Limits and timeouts shared by the decoder, the handshake and sessions.

use std::time::Duration;

use crate::error::UsageError;
use crate::replay::ReplayWindow;

/// Bounds on what a peer can make this node accept or hold. Every field has the documented
/// default of spec §"Limits"; [`Limits::validate`] checks a hand-built value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, in bytes, checked before any parsing. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Largest accepted distance between a message's `timestamp` and local time. Default 300 s.
    pub max_clock_skew: Duration,
    /// Time allowed from the first handshake message to `READY`. Default 5 s.
    pub handshake_timeout: Duration,
    /// Size of a session's replay window in sequence numbers (multiple of 64, 64..=65536).
    /// Default 2048.
    pub replay_window: u32,
    /// Entries kept by the `(sender_id, nonce)` cache for signed session-less messages.
    /// Default 65536.
    pub nonce_cache_capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_clock_skew: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(5),
            replay_window: ReplayWindow::DEFAULT_SIZE,
            nonce_cache_capacity: 65_536,
        }
    }
}

impl Limits {
    /// Smallest allowed `max_frame_bytes`: a handshake message must fit.
    pub const MIN_FRAME_BYTES: usize = 4096;

    /// Checks that every field is in range.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.max_frame_bytes < Self::MIN_FRAME_BYTES {
            return Err(UsageError::InvalidConfig("max_frame_bytes must be at least 4096"));
        }
        if ReplayWindow::new(self.replay_window).is_err() {
            return Err(UsageError::InvalidConfig(
                "replay_window must be a multiple of 64 in 64..=65536",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(UsageError::InvalidConfig("handshake_timeout must be positive"));
        }
        if self.nonce_cache_capacity == 0 {
            return Err(UsageError::InvalidConfig("nonce_cache_capacity must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        assert!(Limits::default().validate().is_ok());
        let bad = [
            Limits { max_frame_bytes: 100, ..Limits::default() },
            Limits { replay_window: 100, ..Limits::default() },
            Limits { handshake_timeout: Duration::ZERO, ..Limits::default() },
            Limits { nonce_cache_capacity: 0, ..Limits::default() },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
    }
}
