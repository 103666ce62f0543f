//! The node's counters and gauges ([`Snapshot`]), and `GET /metrics`: them in the Prometheus
//! text exposition format (0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// The node's view of its cluster; `None` when it runs alone.
    pub cluster: Option<ClusterSnapshot>,
    /// A durable node's store; `None` when the node keeps everything in memory.
    pub store: Option<StoreSnapshot>,
}

/// A durable node's store counters (`/metrics`' `peerlink_store_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Transactions committed (each a group of writes).
    pub commits: u64,
    /// Writes (puts and deletes) committed.
    pub writes: u64,
    /// Bytes of keys and values written.
    pub bytes_written: u64,
    /// Flushes to the disk waited for.
    pub fsyncs: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (keys and values).
    pub bytes: u64,
}

/// A cluster node's broker counters (`/metrics`' `peerlink_cluster_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Whether the broker is reachable now.
    pub up: bool,
    /// Entities the presence map holds (on any node).
    pub presence: usize,
    /// Presence announcements ignored because the map was full.
    pub presence_dropped: u64,
    /// Times the node (re)connected to the broker.
    pub connects: u64,
    /// Frames handed to another node through the broker.
    pub forwarded: u64,
    /// Frames put in shared mailboxes.
    pub parked: u64,
    /// Frames a full shared mailbox refused (their senders re-send them).
    pub parks_refused: u64,
    /// Frames taken out of shared mailboxes.
    pub drained: u64,
    /// Frames received from the broker (forwarded to this node, or drained).
    pub frames_received: u64,
    /// Requests to the broker dropped: the queue was full, or the broker was unreachable.
    pub requests_dropped: u64,
    /// Publications dropped: the queue was full, or they were larger than a frame may be.
    pub publications_dropped: u64,
    /// Publications and frames refused as malformed, forged or not for their entity.
    pub refused: u64,
}

/// A cluster node's broker counters as its tasks update them (the broker's task, the node
/// task, `/healthz`), read into a [`ClusterSnapshot`].
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Whether the broker is reachable now.
    pub up: AtomicBool,
    /// See [`ClusterSnapshot::connects`].
    pub connects: AtomicU64,
    /// See [`ClusterSnapshot::forwarded`].
    pub forwarded: AtomicU64,
    /// See [`ClusterSnapshot::parked`].
    pub parked: AtomicU64,
    /// See [`ClusterSnapshot::parks_refused`].
    pub parks_refused: AtomicU64,
    /// See [`ClusterSnapshot::drained`].
    pub drained: AtomicU64,
    /// See [`ClusterSnapshot::frames_received`].
    pub frames_received: AtomicU64,
    /// See [`ClusterSnapshot::requests_dropped`].
    pub requests_dropped: AtomicU64,
    /// See [`ClusterSnapshot::publications_dropped`].
    pub publications_dropped: AtomicU64,
    /// Publications refused as malformed or forged (frames the node refused are added).
    pub refused: AtomicU64,
}

impl ClusterCounters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the broker is reachable now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The counters now, with what only the node knows (its presence map, and the frames it
    /// refused).
    pub fn snapshot(&self, node: Option<peerlink_core::node::ClusterStats>) -> ClusterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let node = node.unwrap_or_default();
        ClusterSnapshot {
            up: self.is_up(),
            presence: node.presence,
            presence_dropped: node.presence_dropped,
            connects: get(&self.connects),
            forwarded: get(&self.forwarded),
            parked: get(&self.parked),
            parks_refused: get(&self.parks_refused),
            drained: get(&self.drained),
            frames_received: get(&self.frames_received),
            requests_dropped: get(&self.requests_dropped),
            publications_dropped: get(&self.publications_dropped),
            refused: get(&self.refused).saturating_add(node.frames_refused),
        }
    }
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
        "peerlink_failovers_total",
        "counter",
        "Times a next hop served at several URLs was reached at the next one.",
        &[("", t.failovers)],
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
    if let Some(c) = &s.cluster {
        render_cluster(&mut out, c);
    }
    if let Some(st) = &s.store {
        render_store(&mut out, st);
    }
    out
}

/// The `peerlink_store_*` families, present on a durable node only.
fn render_store(out: &mut String, s: &StoreSnapshot) {
    let families: [(&str, &str, &str, u64); 6] = [
        ("commits_total", "counter", "Transactions committed (groups of writes).", s.commits),
        ("writes_total", "counter", "Puts and deletes committed.", s.writes),
        ("written_bytes_total", "counter", "Bytes of keys and values written.", s.bytes_written),
        ("fsyncs_total", "counter", "Flushes to the disk the commits waited for.", s.fsyncs),
        ("entries", "gauge", "Entries the store holds.", s.entries),
        ("bytes", "gauge", "Bytes of keys and values the store holds.", s.bytes),
    ];
    for (name, kind, help, value) in families {
        metric(out, &format!("peerlink_store_{name}"), kind, help, &[("", value)]);
    }
}

/// The `peerlink_cluster_*` families, present on a cluster node only.
fn render_cluster(out: &mut String, c: &ClusterSnapshot) {
    let families: [(&str, &str, &str, u64); 12] = [
        ("up", "gauge", "1 when the cluster's broker is reachable, else 0.", u64::from(c.up)),
        ("presence", "gauge", "Entities in the presence map.", n(c.presence)),
        (
            "presence_dropped_total",
            "counter",
            "Presence announcements ignored because the map was full.",
            c.presence_dropped,
        ),
        ("connects_total", "counter", "Connections made to the broker.", c.connects),
        ("forwarded_total", "counter", "Frames handed to other nodes.", c.forwarded),
        ("parked_total", "counter", "Frames put in shared mailboxes.", c.parked),
        (
            "parks_refused_total",
            "counter",
            "Frames a full shared mailbox refused.",
            c.parks_refused,
        ),
        ("drained_total", "counter", "Frames taken from shared mailboxes.", c.drained),
        ("frames_received_total", "counter", "Frames received from the broker.", c.frames_received),
        (
            "requests_dropped_total",
            "counter",
            "Requests to the broker dropped (queue full or broker unreachable).",
            c.requests_dropped,
        ),
        (
            "publications_dropped_total",
            "counter",
            "Publications dropped (queue full or too large).",
            c.publications_dropped,
        ),
        (
            "refused_total",
            "counter",
            "Publications and frames from the broker refused as malformed or forged.",
            c.refused,
        ),
    ];
    for (name, kind, help, value) in families {
        metric(out, &format!("peerlink_cluster_{name}"), kind, help, &[("", value)]);
    }
}
