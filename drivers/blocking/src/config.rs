//! What a [`Client`](crate::Client) is told: the core node's configuration, where to reach
//! other nodes, and the bounds of its own threads and queues.

use std::time::Duration;

use peerlink_core::ids::EntityId;
use peerlink_core::node::{NodeAddr, NodeConfig};

/// Configuration of a blocking client. `ClientConfig::default()` has no route: give it a relay
/// ([`ClientConfig::relay`]) or direct routes.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// The core state machine's configuration (transport preference, limits, timers).
    pub node: NodeConfig,
    /// The relay this client is reachable through and sends to by default.
    pub relay: Option<NodeAddr>,
    /// Peers reached at a node of their own (a direct route), or through another relay.
    pub routes: Vec<(EntityId, NodeAddr)>,
    /// WebSocket links.
    pub websocket: WebSocketSettings,
    /// HTTP fallback.
    pub http: HttpSettings,
    /// Bounds of the queues between the application and the client's thread.
    pub queues: QueueSettings,
    /// CA certificates (PEM) trusted for `https://` and `wss://` nodes; `None`: the Mozilla
    /// roots (webpki-roots). TLS is 1.3 only.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

/// WebSocket settings.
#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// TCP connect, authentication and upgrade must finish within this. Default 5 s.
    pub connect_timeout: Duration,
    /// A link's thread alternates between reading (for at most this long) and writing what is
    /// queued; it bounds the extra latency of a send on an idle link. Default 5 ms.
    pub read_poll: Duration,
    /// Largest WebSocket message and frame accepted. Default 1 MiB (spec §11).
    pub max_frame_bytes: usize,
    /// Read buffer per link. Default 4 KiB (tungstenite's default, 128 KiB, costs that much per
    /// idle link).
    pub read_buffer_bytes: usize,
    /// Frames queued for one link; a link whose queue is full (the server does not read) is
    /// closed, and the core moves its traffic elsewhere. Default 1024.
    pub send_queue: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_poll: Duration::from_millis(5),
            max_frame_bytes: 1 << 20,
            read_buffer_bytes: 4096,
            send_queue: 1024,
        }
    }
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// A request must be answered within this long after the core's poll wait. Default 10 s
    /// (so a long poll of 25 s may take 35 s).
    pub timeout_margin: Duration,
    /// Requests in flight at once; past it a request fails at once and the core retries it
    /// later. Default 16.
    pub max_in_flight: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { timeout_margin: Duration::from_secs(10), max_in_flight: 16 }
    }
}

/// Bounds of the client's queues.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Inputs (application commands, frames from links, HTTP answers) waiting for the client's
    /// thread; a full queue blocks the caller and stops link threads reading, so TCP pushes
    /// back on the sender. Default 4096.
    pub inputs: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { inputs: 4096 }
    }
}
