//! Configuration of a [`Node`](super::Node): every bound and timer, with the defaults of spec
//! §"Limits".

use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::capabilities::Capabilities;
use crate::chunking::ReassemblyLimits;
use crate::error::UsageError;
use crate::limits::Limits;
use crate::rate_limit::RateLimit;
use crate::stream::StreamConfig;
use crate::transport::{HttpRetry, TransportPreference};

/// Everything a node can be told. `NodeConfig::default()` is a client that also accepts links.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Wire limits, handshake timeout, replay window.
    pub limits: Limits,
    /// Capabilities offered in handshakes.
    pub capabilities: Capabilities,
    /// Delivery-layer windows, outbox bounds and retransmission timers.
    pub stream: StreamConfig,
    /// Reassembly bounds for chunked messages, per peer.
    pub reassembly: ReassemblyLimits,
    /// Messages larger than this travel as `CHUNKED_MESSAGE` frames. Default 256 KiB.
    pub chunk_threshold: usize,
    /// Size of each chunk. Default 256 KiB.
    pub chunk_size: usize,
    /// Default transport preference. Default `WEBSOCKET_FIRST`.
    pub preference: TransportPreference,
    /// A WebSocket link must stay up this long after a failure before traffic returns to it.
    /// Default 1 s.
    pub websocket_stable_after: Duration,
    /// HTTP retry policy for 5xx and transport failures.
    pub http_retry: HttpRetry,
    /// How long a client's long-poll waits at the server. Default 25 s.
    pub poll_wait: Duration,
    /// Largest HTTP body this node sends or accepts, in bytes. Default 8 MiB.
    pub max_http_body_bytes: usize,
    /// Reconnect backoff for links this node opened.
    pub reconnect: BackoffConfig,
    /// Send `PING` on a link idle this long. Default 30 s.
    pub ping_interval: Duration,
    /// Declare a link dead when nothing arrived for `ping_interval` plus this. Default 10 s.
    pub pong_grace: Duration,
    /// Frames accepted per inbound link (token bucket). Default 100 per minute (seed 002).
    pub link_rate: RateLimit,
    /// `PING`s accepted from one link. Default 2 per minute (seed 002).
    pub ping_rate: RateLimit,
    /// Whether this node forwards envelopes addressed to other entities (acts as a relay).
    /// Default true.
    pub relay: bool,
    /// Envelopes held per offline entity. Default 256.
    pub mailbox_messages: usize,
    /// Bytes held per offline entity. Default 8 MiB.
    pub mailbox_bytes: usize,
    /// Offline entities with a mailbox at once. Default 10 000.
    pub max_mailboxes: usize,
    /// Bytes held in all mailboxes together. Default 256 MiB.
    pub max_mailbox_total_bytes: usize,
    /// `ERROR`s this node sends on one link, or to one HTTP caller. Default 60 per minute.
    pub error_rate: RateLimit,
    /// Links this node accepts at once; also bounds held long-polls and per-caller HTTP rate
    /// buckets. Default 10 000.
    pub max_links: usize,
    /// Remote peers this node keeps state for. Default 10 000.
    pub max_peers: usize,
    /// Outstanding task requests. Default 1024.
    pub max_pending_requests: usize,
    /// Topics a link may subscribe to. Default 64.
    pub max_subscriptions_per_link: usize,
    /// Distinct topics with subscribers. Default 10 000.
    pub max_topics: usize,
    /// Events queued for the application. Past it, new data frames are refused unacknowledged
    /// (their senders re-send them: backpressure) and informational events are dropped with a
    /// count. Default 65 536.
    pub max_events: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            capabilities: Capabilities::default(),
            stream: StreamConfig::default(),
            reassembly: ReassemblyLimits::default(),
            chunk_threshold: 256 * 1024,
            chunk_size: 256 * 1024,
            preference: TransportPreference::default(),
            websocket_stable_after: Duration::from_secs(1),
            http_retry: HttpRetry::default(),
            poll_wait: Duration::from_secs(25),
            max_http_body_bytes: 8 << 20,
            reconnect: BackoffConfig::default(),
            ping_interval: Duration::from_secs(30),
            pong_grace: Duration::from_secs(10),
            link_rate: RateLimit::per_minute(100),
            ping_rate: RateLimit::per_minute(2),
            relay: true,
            mailbox_messages: 256,
            mailbox_bytes: 8 << 20,
            max_mailboxes: 10_000,
            max_mailbox_total_bytes: 256 << 20,
            error_rate: RateLimit::per_minute(60),
            max_links: 10_000,
            max_peers: 10_000,
            max_pending_requests: 1024,
            max_subscriptions_per_link: 64,
            max_topics: 10_000,
            max_events: 65_536,
        }
    }
}

impl NodeConfig {
    /// Checks every value; [`Node::new`](super::Node::new) calls this.
    pub fn validate(&self) -> Result<(), UsageError> {
        self.limits.validate()?;
        let bad = UsageError::InvalidConfig;
        self.reconnect.validate().map_err(bad)?;
        self.link_rate.validate().map_err(bad)?;
        self.ping_rate.validate().map_err(bad)?;
        self.error_rate.validate().map_err(bad)?;
        if self.chunk_size == 0 || self.chunk_threshold == 0 {
            return Err(bad("chunk_size and chunk_threshold must be positive"));
        }
        // A chunk, base64url-encoded and wrapped in an envelope, must fit in a frame.
        let worst_frame = self.chunk_size.saturating_mul(4) / 3 + 2048;
        if worst_frame > self.limits.max_frame_bytes
            || self.chunk_threshold.saturating_mul(4) / 3 + 2048 > self.limits.max_frame_bytes
        {
            return Err(bad(
                "chunk_size and chunk_threshold must fit in max_frame_bytes once encoded",
            ));
        }
        if self.stream.send_window == 0 || self.stream.recv_window < self.stream.send_window {
            return Err(bad("send_window must be positive and at most recv_window"));
        }
        if self.max_http_body_bytes < self.limits.max_frame_bytes {
            return Err(bad("max_http_body_bytes must hold at least one frame"));
        }
        if self.ping_interval.is_zero() {
            return Err(bad("ping_interval must be positive"));
        }
        Ok(())
    }
}
