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
    /// Largest HTTP body this node sends or accepts, in bytes: at least the frame limit plus 4,
    /// so that one frame of the largest size fits with its framing (spec §27.7). Default 8 MiB.
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
    /// Whether this node's WebSocket links may agree on the binary envelope (spec §27): it
    /// offers [`BINARY_SUBPROTOCOL`](crate::wire::BINARY_SUBPROTOCOL) on the links it opens and
    /// selects it on the upgrades it accepts. It also speaks binary HTTP bodies (spec §27.7):
    /// it accepts them in its polls and posts, posts them to a hop that answered binary, answers
    /// them to a caller that accepts them, and takes binary `POST` bodies (without it, `415`).
    /// Default true; false keeps every link and HTTP body on JSON.
    pub binary_links: bool,
    /// Whether the node hands its public-key work out ([`Output::Work`](super::Output::Work)):
    /// answering a `HANDSHAKE_INIT`, and checking the signatures of the other handshake steps
    /// and of `sign_all` messages, so that a driver runs them off the node's task, in parallel.
    /// Default false: a driver that runs work turns it on (the host driver does).
    pub offload_work: bool,
    /// With [`offload_work`](Self::offload_work): the signature of an envelope smaller than
    /// this (in bytes, as received) is checked in place, not handed out. A `HANDSHAKE_INIT` is
    /// always handed out. Handing out a check costs a task, a message and a wake-up of the node
    /// task, about as much as checking a small envelope's signature. Measured on 2 cores under
    /// `sign_all`, against checking everything in place: this default left 64 B messages as
    /// they were and made 64 KiB ones 1.1-1.2x faster; handing out every check (0) made 64 B
    /// ones 10-15 % slower and 64 KiB ones 1.4-1.6x faster (`docs/benchmarks.md`). Default
    /// 16 KiB; 0 hands out every check.
    pub offload_verify_min_bytes: usize,
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
    /// Remote peers this node keeps state for at once. Idle peers are forgotten after
    /// `peer_idle_timeout`, so this bounds the peers active together, not all peers ever met.
    /// Default 10 000.
    pub max_peers: usize,
    /// How long a peer must be idle before this node forgets its state (session, stream
    /// positions), freeing its place under `max_peers`. Idle means: nothing received from it or
    /// sent to it for its session, handshake or stream, and no `send` to it, for this long; and
    /// nothing outstanding: no message waiting for acknowledgement or `forward` owed, no frame
    /// buffered out of order or chunked message being reassembled, no task request pending in
    /// either direction, no handshake in progress, no acknowledgement held, no
    /// [`Node::connect`](super::Node::connect) to it that no
    /// [`Node::disconnect`](super::Node::disconnect) withdrew, and no link of this node bound
    /// to it (an accepted peers link from it, or a WebSocket link to it as a next hop). If it talks again
    /// under its old session, it is answered `SESSION_NOT_FOUND`, runs a new handshake and
    /// re-sends what it has unacknowledged (spec §15.5). Default 10 minutes.
    ///
    /// It must be greater than the stream's `send_timeout` (and than the send timeout of every
    /// peer this node talks to): a receiver that forgets a peer's receive stream while that peer
    /// may still re-send a frame already delivered (its acknowledgement lost) would deliver it
    /// twice (spec §13.6). A sender gives up on a message at its send timeout, so once a peer has
    /// been silent for longer than that, nothing it sent before can come again.
    pub peer_idle_timeout: Duration,
    /// Outstanding task requests. Default 1024.
    pub max_pending_requests: usize,
    /// Topics a link may subscribe to. Default 64.
    pub max_subscriptions_per_link: usize,
    /// Distinct topics with subscribers. Default 10 000.
    pub max_topics: usize,
    /// Events queued for the application. Past it, new data frames are refused unacknowledged
    /// (their senders re-send them: backpressure) and informational events are dropped with a
    /// count; `Event::Failed` never is (at most one per message accepted). Default 65 536.
    pub max_events: usize,
    /// Set on a relay that is one node of a cluster sharing a broker (`docs/cluster.md`, spec
    /// §25); `None` (the default): the node runs alone.
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// Whether the node keeps its promises across a restart (spec §26): it emits
    /// [`Output::Persist`](super::Output::Persist) for every accepted message, acknowledgement
    /// and receive position, and is rebuilt with [`Node::restore`](super::Node::restore).
    /// Default false (everything in memory).
    pub durable: bool,
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
            binary_links: true,
            offload_work: false,
            offload_verify_min_bytes: 16 * 1024,
            mailbox_messages: 256,
            mailbox_bytes: 8 << 20,
            max_mailboxes: 10_000,
            max_mailbox_total_bytes: 256 << 20,
            error_rate: RateLimit::per_minute(60),
            max_links: 10_000,
            max_peers: 10_000,
            peer_idle_timeout: Duration::from_secs(600),
            max_pending_requests: 1024,
            max_subscriptions_per_link: 64,
            max_topics: 10_000,
            max_events: 65_536,
            cluster: None,
            durable: false,
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
        if self.max_http_body_bytes
            < self.limits.max_frame_bytes.saturating_add(crate::http_body::LENGTH_PREFIX_LEN)
        {
            return Err(bad("max_http_body_bytes must hold at least one frame and its framing"));
        }
        if self.ping_interval.is_zero() {
            return Err(bad("ping_interval must be positive"));
        }
        // Forgetting a receive stream while its sender may still re-send delivers twice.
        if self.peer_idle_timeout <= self.stream.send_timeout {
            return Err(bad("peer_idle_timeout must be greater than stream.send_timeout"));
        }
        Ok(())
    }
}
