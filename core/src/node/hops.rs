//! Next hops this node dials: the WebSocket link to each, reconnect with backoff, the transport
//! decision per frame, and failover between a hop's URLs. HTTP batches with retries, long-polls
//! and the body encoding per hop are in [`super::hop_http`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::links::Direction;
use super::{Event, LinkId, LinkKind, Node, NodeAddr, Output, RequestId, Timer};
use crate::backoff::Backoff;
use crate::capabilities::Transport;
use crate::endpoints::SESSION_PARAM;
use crate::envelope::Envelope;
use crate::ids::{EntityId, MessageId};
use crate::time::Timestamp;
use crate::transport::{HopTransport, Route, RouteQuery, TransportPreference, WsLink, route};
use crate::wire::{self, Encoding};

/// What a frame carries, so an HTTP refusal can be reported to the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    /// A frame of an application message.
    Message(EntityId, MessageId),
    /// A handshake message to this peer: refusing it refuses every message waiting for it.
    Handshake(EntityId),
}

/// A frame queued for an HTTP `POST`, with what it carries (to fail it on a 4xx).
#[derive(Debug, Clone)]
pub(super) struct BatchItem {
    pub frame: Arc<[u8]>,
    pub owner: Option<Owner>,
}

/// An HTTP `POST` in flight or waiting to be retried.
#[derive(Debug, Clone)]
pub(super) struct Exchange {
    pub items: Vec<BatchItem>,
    pub attempt: u32,
    pub retry_at: Option<Timestamp>,
    /// The encoding of its body: a `415` to a binary one sends its frames again in JSON.
    pub encoding: Encoding,
}

/// One next hop.
#[derive(Debug)]
pub(super) struct Hop {
    pub addr: NodeAddr,
    pub ws_link: Option<LinkId>,
    pub transport: HopTransport,
    pub backoff: Backoff,
    pub reconnect_at: Option<Timestamp>,
    /// Whether a WebSocket link to it was ever up (a later one is a reconnect).
    pub had_link: bool,
    /// Whether the application asked to keep it connected.
    pub wanted: bool,
    /// Whether the application closed it; no reconnects until the next send or connect.
    pub closed_by_app: bool,
    /// Frames for the next `POST`s: this step's, and those that met [`MAX_HTTP_INFLIGHT`]
    /// requests in flight (between steps at most `max_http_body_bytes` of them).
    pub batch: Vec<BatchItem>,
    pub inflight: BTreeMap<RequestId, Exchange>,
    pub poll: Option<RequestId>,
    pub poll_retry_at: Option<Timestamp>,
    pub poll_backoff: Backoff,
    /// Every base URL it is served at (the nodes of one cluster), the one in use
    /// (`addr.base_url`) among them; empty when it has one.
    pub urls: Vec<String>,
    /// Attempts to reach it at `addr.base_url` that failed in a row.
    pub failures: u32,
    /// Whether this node posts it binary bodies: an answer from it was binary, and none since
    /// said otherwise ([`wire::hop_speaks_binary`], spec §27.7).
    pub binary_bodies: bool,
}

/// Failed attempts in a row (a WebSocket link that could not be opened or dropped, an HTTP
/// request without an answer or with a 5xx) after which a next hop served at several URLs is
/// reached at the next one.
pub const FAILOVER_AFTER: u32 = 2;

/// The WebSocket URL of a node's HTTP base URL (seed 000: http → ws, https → wss, plus the path).
pub fn websocket_url(base_url: &str, kind: LinkKind) -> String {
    let base = base_url.trim_end_matches('/');
    let swapped = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let path = match kind {
        LinkKind::Peers => "/ws/v1/peers",
        LinkKind::Events => "/ws/v1/events",
    };
    format!("{swapped}{path}")
}

/// The messages endpoint of a node's HTTP base URL.
pub fn messages_url(base_url: &str) -> String {
    format!("{}/v1/messages", base_url.trim_end_matches('/'))
}

/// HTTP `POST`s in flight to one hop at once.
pub(super) const MAX_HTTP_INFLIGHT: usize = 16;

/// Shortest pause between two long-polls when the last one came back empty.
pub(super) const MIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// What happened to a frame handed to a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HopSend {
    /// Handed to this transport (or, for a full mailbox, left to retransmission).
    Sent(Option<Transport>),
    /// Waiting for a WebSocket link.
    Wait,
    /// Refused; the message fails.
    Failed,
}

impl Node {
    pub(super) fn ensure_hop(&mut self, addr: NodeAddr) {
        let stable = self.config.websocket_stable_after;
        let reconnect = self.config.reconnect.clone();
        self.hops.entry(addr.entity.clone()).or_insert_with(|| Hop {
            addr,
            ws_link: None,
            transport: HopTransport::new(stable),
            backoff: Backoff::new(reconnect.clone()),
            reconnect_at: None,
            had_link: false,
            wanted: false,
            closed_by_app: false,
            batch: Vec::new(),
            inflight: BTreeMap::new(),
            poll: None,
            poll_retry_at: None,
            poll_backoff: Backoff::new(reconnect),
            urls: Vec::new(),
            failures: 0,
            binary_bodies: false,
        });
    }

    /// `hop` is served at every one of `urls` too (the nodes of one cluster, sharing its
    /// identity): after `FAILOVER_AFTER` (2) failed attempts in a row to reach it at the URL in
    /// use, this node reaches it at the next one, in turn. Sessions are end to end, so they
    /// resume through the new node (spec §15.3). The hop must be known (a route to it);
    /// duplicates and its current URL are ignored.
    pub fn set_failover_urls(
        &mut self,
        hop: &EntityId,
        urls: Vec<String>,
    ) -> Result<(), super::SendError> {
        let Some(h) = self.hops.get_mut(hop) else {
            return Err(super::SendError::Unreachable(hop.clone()));
        };
        let mut all = vec![h.addr.base_url.clone()];
        for u in urls {
            if !all.contains(&u) {
                all.push(u);
            }
        }
        h.urls = if all.len() > 1 { all } else { Vec::new() };
        h.failures = 0;
        Ok(())
    }

    /// An attempt to reach `hop` at its current URL failed: after [`FAILOVER_AFTER`] in a row,
    /// the next URL is used from the next attempt on.
    pub(super) fn hop_attempt_failed(&mut self, hop: &EntityId) {
        let Some(h) = self.hops.get_mut(hop) else { return };
        h.failures = h.failures.saturating_add(1);
        if h.failures < FAILOVER_AFTER || h.urls.len() < 2 {
            return;
        }
        h.failures = 0;
        let at = h.urls.iter().position(|u| *u == h.addr.base_url).unwrap_or(0);
        let next = at.saturating_add(1) % h.urls.len();
        if let Some(url) = h.urls.get(next) {
            h.addr.base_url = url.clone();
            // What the last URL's server spoke says nothing of this one's (spec §27.7).
            h.binary_bodies = false;
            self.stats.failovers = self.stats.failovers.saturating_add(1);
        }
    }

    /// An attempt to reach `hop` succeeded.
    pub(super) fn hop_attempt_succeeded(&mut self, hop: &EntityId) {
        if let Some(h) = self.hops.get_mut(hop) {
            h.failures = 0;
        }
    }

    /// The next hop toward `peer`, if a route is configured.
    pub(super) fn route_of(&self, peer: &EntityId) -> Option<EntityId> {
        if self.hops.contains_key(peer) {
            return Some(peer.clone());
        }
        self.routes.get(peer).or(self.default_route.as_ref()).cloned()
    }

    /// The encoding a frame for `peer` is best built in: that of the link it would leave on now
    /// (its own inbound link, else its next hop's WebSocket), else that of the bodies its next
    /// hop is posted ([`Node::hop_body_encoding`]). A frame that ends up elsewhere is translated
    /// there ([`Node::transmit`], [`Node::json_frame`], [`Node::body_frame`]).
    pub(super) fn encoding_toward(&self, peer: &EntityId) -> Encoding {
        if let Some(link) = self.bound.get(peer) {
            return self.link_encoding(*link);
        }
        let Some(hop) = self.route_of(peer) else { return Encoding::Json };
        match self.hops.get(&hop).and_then(|h| h.ws_link) {
            Some(link) => self.link_encoding(link),
            None => self.hop_body_encoding(&hop),
        }
    }

    /// `env` encoded for `peer` ([`Node::encoding_toward`]).
    pub(super) fn frame_toward(&self, peer: &EntityId, env: &Envelope) -> Arc<[u8]> {
        Arc::from(wire::encode(env, self.encoding_toward(peer)))
    }

    /// Opens the WebSocket link to `hop` unless it is open, opening, backing off, or closed by
    /// the application.
    pub(super) fn ensure_ws(&mut self, now: Timestamp, hop: &EntityId) {
        let resume = self.peers.get(hop).and_then(|p| p.session.as_ref()).map(|s| s.id().clone());
        let link = self.next_link_id();
        let Some(h) = self.hops.get_mut(hop) else { return };
        if h.ws_link.is_some() || h.reconnect_at.is_some() || h.closed_by_app {
            return;
        }
        if h.had_link {
            self.stats.reconnects = self.stats.reconnects.saturating_add(1);
        }
        h.ws_link = Some(link);
        h.transport.set_ws(WsLink::Connecting);
        let mut url = websocket_url(&h.addr.base_url, LinkKind::Peers);
        if let Some(session) = &resume {
            url = format!("{url}?{SESSION_PARAM}={}", session.as_str());
        }
        let node = h.addr.clone();
        let l = self.new_link(LinkKind::Peers, Direction::Outbound(hop.clone()), false, now);
        self.links.insert(link, Box::new(l));
        let offer_binary = self.config.binary_links;
        self.emit(Output::OpenLink { link, url, kind: LinkKind::Peers, node, offer_binary });
    }

    pub(super) fn close_hop_ws(&mut self, now: Timestamp, hop: &EntityId) {
        let link = match self.hops.get_mut(hop) {
            Some(h) => {
                h.closed_by_app = true;
                h.wanted = false;
                h.reconnect_at = None;
                h.ws_link
            }
            None => None,
        };
        if let Some(link) = link {
            self.close_link(now, link, None);
        }
        self.reschedule_hop(now, hop);
    }

    /// Schedules the next reconnect attempt, with exponential backoff and jitter.
    pub(super) fn schedule_reconnect(&mut self, now: Timestamp, hop: &EntityId) {
        let Some(h) = self.hops.get_mut(hop) else { return };
        if h.closed_by_app || h.reconnect_at.is_some() {
            return;
        }
        let delay = h.backoff.next_delay(&mut self.rng);
        h.reconnect_at = Some(now.saturating_add(delay));
        self.reschedule_hop(now, hop);
    }

    /// Which transports the next hop supports: what a session with it agreed, else both.
    fn hop_transports(&self, hop: &EntityId) -> (bool, bool) {
        match self.peers.get(hop).and_then(|p| p.session.as_ref()) {
            Some(s) => {
                let t = &s.capabilities().transports;
                (t.contains(&Transport::WebSocket), t.contains(&Transport::Http))
            }
            None => (true, true),
        }
    }

    /// Hands one frame to `hop` according to `preference`.
    pub(super) fn send_via_hop(
        &mut self,
        now: Timestamp,
        hop: &EntityId,
        frame: Arc<[u8]>,
        preference: TransportPreference,
        owner: Option<Owner>,
    ) -> HopSend {
        let transports = self.hop_transports(hop);
        let Some(h) = self.hops.get_mut(hop) else { return HopSend::Failed };
        let q = RouteQuery {
            preference,
            peer_transports: transports,
            ws: h.transport.ws(),
            now,
            ws_usable: h.transport.websocket_usable(now),
        };
        let decision = route(&q);
        let wants_ws = transports.0
            && !matches!(
                preference,
                TransportPreference::HttpOnly | TransportPreference::HttpFirst
            );
        let (used, result) = match decision {
            Route::WebSocket => match h.ws_link {
                Some(link) => {
                    self.transmit(link, frame);
                    (Some(Transport::WebSocket), HopSend::Sent(Some(Transport::WebSocket)))
                }
                None => (None, HopSend::Wait),
            },
            Route::Http => {
                // A body carries frames in the encoding the hop speaks (spec §27.7).
                let encoding = self.hop_body_encoding(hop);
                let Ok(frame) = self.body_frame(frame, encoding) else { return HopSend::Failed };
                let Some(h) = self.hops.get_mut(hop) else { return HopSend::Failed };
                self.stats.sent(Transport::Http, frame.len());
                h.batch.push(BatchItem { frame, owner });
                (Some(Transport::Http), HopSend::Sent(Some(Transport::Http)))
            }
            Route::WaitForWebSocket => (None, HopSend::Wait),
            Route::Fail(_) => (None, HopSend::Failed),
        };
        if let Some(t) = used
            && let Some(h) = self.hops.get_mut(hop)
            && let Some((from, to)) = h.transport.note_used(t)
        {
            self.event(Event::TransportSwitched { node: hop.clone(), from, to });
        }
        if wants_ws {
            self.ensure_ws(now, hop);
        }
        if result == HopSend::Wait {
            let waiting_on_down_link = self.hops.get(hop).is_some_and(|h| {
                h.ws_link.is_none() && (h.reconnect_at.is_some() || h.closed_by_app)
            });
            if waiting_on_down_link && preference == TransportPreference::WebsocketOnly {
                // WEBSOCKET_ONLY with no link coming up now: seed 001 says fail.
                return HopSend::Failed;
            }
        }
        result
    }

    /// Whether anything is expected from `hop`: it is the default route (the relay this node is
    /// reachable through, so anyone may write to it there at any time), the application wants
    /// it, or a peer routed through it has a session, a handshake or messages in flight.
    pub(super) fn hop_active(&self, hop: &EntityId) -> bool {
        if self.default_route.as_ref() == Some(hop) || self.hops.get(hop).is_some_and(|h| h.wanted)
        {
            return true;
        }
        self.peers.iter().any(|(id, p)| {
            self.route_of(id).as_ref() == Some(hop)
                && !self.bound.contains_key(id)
                && (p.session.is_some() || p.handshaking() || p.needs_session())
        })
    }

    pub(super) fn on_hop_timer(&mut self, now: Timestamp, hop: &EntityId) {
        let Some(h) = self.hops.get_mut(hop) else { return };
        if h.reconnect_at.is_some_and(|t| t <= now) {
            h.reconnect_at = None;
            // A legacy peer without WebSocket is not dialled again once a session says so.
            if self.hop_transports(hop).0 {
                self.ensure_ws(now, hop);
            }
        }
        let Some(h) = self.hops.get_mut(hop) else { return };
        if h.poll_retry_at.is_some_and(|t| t <= now) {
            h.poll_retry_at = None;
        }
        let due: Vec<RequestId> = h
            .inflight
            .iter()
            .filter(|(_, e)| e.retry_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for request in due {
            if let Some(ex) = self.hops.get_mut(hop).and_then(|h| h.inflight.remove(&request)) {
                let attempt = ex.attempt.saturating_add(1);
                self.post(now, hop, ex.items, attempt);
            }
        }
        // WebSocket may have become usable again: move traffic back to it.
        if self.hops.get(hop).is_some_and(|h| h.transport.usable_at().is_some_and(|t| t <= now)) {
            self.flush_peers_via(now, hop);
        }
        self.reschedule_hop(now, hop);
    }

    pub(super) fn reschedule_hop(&mut self, now: Timestamp, hop: &EntityId) {
        let at = self.hops.get(hop).and_then(|h| {
            let retries = h.inflight.values().filter_map(|e| e.retry_at).min();
            // The moment WebSocket becomes usable again after a fallback, if still ahead.
            let usable = h.transport.usable_at().filter(|t| *t > now);
            [h.reconnect_at, h.poll_retry_at, retries, usable].into_iter().flatten().min()
        });
        self.schedule(Timer::Hop(hop.clone()), at);
    }

    /// Peers whose traffic goes through `hop` (and who have no direct inbound link).
    pub(super) fn peers_via(&self, hop: &EntityId) -> Vec<EntityId> {
        self.peers
            .keys()
            .filter(|id| !self.bound.contains_key(*id) && self.route_of(id).as_ref() == Some(hop))
            .cloned()
            .collect()
    }

    pub(super) fn flush_peers_via(&mut self, now: Timestamp, hop: &EntityId) {
        for peer in self.peers_via(hop) {
            self.flush_peer(now, &peer);
        }
    }

    /// After losing the link to `hop`, frames possibly lost with it are re-sent.
    pub(super) fn retransmit_via(&mut self, now: Timestamp, hop: &EntityId) {
        for peer in self.peers_via(hop) {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.send.retransmit_all(now);
            }
        }
    }
}
