//! Transport counters (seed 000's `TransportStats`), per peer and over the whole node.

use std::time::Duration;

use crate::capabilities::Transport;

/// Counters of one peer, or of the whole node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames sent over WebSocket.
    pub ws_messages_sent: u64,
    /// Bytes sent over WebSocket.
    pub ws_bytes_sent: u64,
    /// Frames sent over HTTP (POSTed, or queued in a mailbox for an HTTP poll).
    pub http_messages_sent: u64,
    /// Bytes sent over HTTP.
    pub http_bytes_sent: u64,
    /// Frames received over WebSocket.
    pub ws_messages_received: u64,
    /// Bytes received over WebSocket.
    pub ws_bytes_received: u64,
    /// Frames received over HTTP.
    pub http_messages_received: u64,
    /// Bytes received over HTTP.
    pub http_bytes_received: u64,
    /// Times traffic moved from WebSocket to HTTP.
    pub fallbacks: u64,
    /// Messages that failed: each counted once, when its one `Event::Failed` is queued for the
    /// application (an event never dropped, whatever `max_events`).
    pub failures: u64,
    /// WebSocket reconnect attempts.
    pub reconnects: u64,
    /// Times a next hop served at several URLs (a cluster) was reached at the next one after
    /// the current one failed (`Node::set_failover_urls`).
    pub failovers: u64,
    /// Sessions resumed without a handshake.
    pub resumes: u64,
    /// Full handshakes completed.
    pub handshakes: u64,
    /// Frames refused, by any check.
    pub rejected: u64,
    /// Envelopes that waited for public-key work handed out
    /// ([`NodeConfig::offload_work`](super::NodeConfig::offload_work)) and were dropped: the one
    /// that found the wait full (its link is closed with `RATE_LIMIT_EXCEEDED`), and those whose
    /// link closed while they waited. Never acknowledged (node-wide; always 0 in a peer's own
    /// counters).
    pub parked_dropped: u64,
    /// Idle peers whose state was forgotten after `peer_idle_timeout` (node-wide; always 0 in a
    /// peer's own counters).
    pub peers_forgotten: u64,
    /// Last measured round-trip time (data frame to its acknowledgement, or `PING` to `PONG`).
    pub last_rtt: Option<Duration>,
}

/// Adds one frame of `bytes` to a message counter and a byte counter.
fn count(messages: &mut u64, total: &mut u64, bytes: usize) {
    *messages = messages.saturating_add(1);
    *total = total.saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
}

impl TransportStats {
    /// Counts one frame sent.
    pub fn sent(&mut self, transport: Transport, bytes: usize) {
        match transport {
            Transport::WebSocket => {
                count(&mut self.ws_messages_sent, &mut self.ws_bytes_sent, bytes)
            }
            Transport::Http => {
                count(&mut self.http_messages_sent, &mut self.http_bytes_sent, bytes)
            }
        }
    }

    /// Counts one frame received.
    pub fn received(&mut self, transport: Transport, bytes: usize) {
        match transport {
            Transport::WebSocket => {
                count(&mut self.ws_messages_received, &mut self.ws_bytes_received, bytes)
            }
            Transport::Http => {
                count(&mut self.http_messages_received, &mut self.http_bytes_received, bytes)
            }
        }
    }
}
