//! The node's counters and gauges ([`Snapshot`]), and `GET /metrics`: them in the Prometheus
//! text exposition format (0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use peerlink_core::node::TransportStats;

/// Counters and gauges of a running node (what `/metrics` renders).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The core's transport counters over all peers.
    pub stats: TransportStats,
    /// Inbound `/ws/v1/peers` links.
    pub inbound_peer_links: usize,
    /// Inbound `/ws/v1/events` links.
    pub inbound_event_links: usize,
    /// Links this node opened.
    pub outbound_links: usize,
    /// Peers with an established session.
    pub sessions: usize,
    /// Envelopes in mailboxes.
    pub mailbox_messages: usize,
    /// Bytes in mailboxes.
    pub mailbox_bytes: usize,
    /// HTTP calls held (long-polls).
    pub held_http_calls: usize,
    /// `Event::Error`s seen, by error code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Links disconnected because their send queue was full.
    pub slow_readers_disconnected: u64,
    /// Informational events dropped because `incoming()` was not drained.
    pub events_dropped: u64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn n(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Renders a snapshot. Every family is always present (zero when nothing happened).
pub fn render(s: &Snapshot) -> String {
    let t = &s.stats;
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "peerlink_links",
        "gauge",
        "Open WebSocket links by endpoint and direction.",
        &[
            ("endpoint=\"peers\",direction=\"inbound\"", n(s.inbound_peer_links)),
            ("endpoint=\"events\",direction=\"inbound\"", n(s.inbound_event_links)),
            ("endpoint=\"peers\",direction=\"outbound\"", n(s.outbound_links)),
        ],
    );
    metric(
        &mut out,
        "peerlink_sessions",
        "gauge",
        "Established end-to-end sessions.",
        &[("", n(s.sessions))],
    );
    metric(
        &mut out,
        "peerlink_messages_sent_total",
        "counter",
        "Frames sent, by transport.",
        &[
            ("transport=\"websocket\"", t.ws_messages_sent),
            ("transport=\"http\"", t.http_messages_sent),
        ],
    );
    metric(
        &mut out,
        "peerlink_messages_received_total",
        "counter",
        "Frames received, by transport.",
        &[
            ("transport=\"websocket\"", t.ws_messages_received),
            ("transport=\"http\"", t.http_messages_received),
        ],
    );
    metric(
        &mut out,
        "peerlink_bytes_sent_total",
        "counter",
        "Bytes sent, by transport.",
        &[("transport=\"websocket\"", t.ws_bytes_sent), ("transport=\"http\"", t.http_bytes_sent)],
    );
    metric(
        &mut out,
        "peerlink_bytes_received_total",
        "counter",
        "Bytes received, by transport.",
        &[
            ("transport=\"websocket\"", t.ws_bytes_received),
            ("transport=\"http\"", t.http_bytes_received),
        ],
    );
    metric(
        &mut out,
        "peerlink_fallbacks_total",
        "counter",
        "Times traffic moved from WebSocket to HTTP.",
        &[("", t.fallbacks)],
    );
    metric(
        &mut out,
        "peerlink_resumes_total",
        "counter",
        "Sessions resumed without a handshake.",
        &[("", t.resumes)],
    );
    metric(
        &mut out,
        "peerlink_handshakes_total",
        "counter",
        "Full handshakes completed.",
        &[("", t.handshakes)],
    );
    metric(
        &mut out,
        "peerlink_reconnects_total",
        "counter",
        "WebSocket reconnect attempts.",
        &[("", t.reconnects)],
    );
    metric(
        &mut out,
        "peerlink_failures_total",
        "counter",
        "Messages reported failed.",
        &[("", t.failures)],
    );
    metric(
        &mut out,
        "peerlink_rejected_frames_total",
        "counter",
        "Frames refused by any check.",
        &[("", t.rejected)],
    );
    metric(
        &mut out,
        "peerlink_peers_forgotten_total",
        "counter",
        "Idle peers whose state was forgotten after peer_idle_timeout.",
        &[("", t.peers_forgotten)],
    );
    let codes: Vec<(String, u64)> =
        s.errors_by_code.iter().map(|(c, v)| (format!("code=\"{c}\""), *v)).collect();
    let codes: Vec<(&str, u64)> = codes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        &mut out,
        "peerlink_errors_total",
        "counter",
        "Errors reported to the application, by code.",
        &codes,
    );
    metric(
        &mut out,
        "peerlink_mailbox_messages",
        "gauge",
        "Envelopes waiting in mailboxes.",
        &[("", n(s.mailbox_messages))],
    );
    metric(
        &mut out,
        "peerlink_mailbox_bytes",
        "gauge",
        "Bytes waiting in mailboxes.",
        &[("", n(s.mailbox_bytes))],
    );
    metric(
        &mut out,
        "peerlink_held_http_calls",
        "gauge",
        "HTTP calls waiting for the node's answer (long-polls).",
        &[("", n(s.held_http_calls))],
    );
    metric(
        &mut out,
        "peerlink_slow_readers_disconnected_total",
        "counter",
        "Links closed because their send queue was full.",
        &[("", s.slow_readers_disconnected)],
    );
    metric(
        &mut out,
        "peerlink_events_dropped_total",
        "counter",
        "Informational events dropped because the application did not drain them.",
        &[("", s.events_dropped)],
    );
    out
}
