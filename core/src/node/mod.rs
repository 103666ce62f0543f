//! The node: one local entity's whole protocol state, as a sans-IO state machine.
//!
//! A [`Node`] composes everything below it: end-to-end sessions with many peers, the reliable
//! stream to each, the links (WebSocket connections it opened or accepted), HTTP exchanges, the
//! transport decision for every frame, relaying for other entities, mailboxes and topics.
//!
//! ## Driving it
//!
//! The driver owns sockets and clocks; the node owns every decision. The loop is:
//!
//! 1. Feed one input with the current time: an event from the network or the clock, as an
//!    [`Input`] to [`Node::handle_input`] ([`Input::Timeout`] once the deadline from
//!    `poll_timeout` has passed), or a command from the application (`send`, `broadcast`,
//!    `request`, `respond`, `connect`, `disconnect`, `subscribe`, `unsubscribe`, `publish`),
//!    which answers at once. The network inputs are also methods of their own (`link_up`,
//!    `handle_frame`, …), which `handle_input` calls.
//! 2. Drain [`Node::poll_output`] until it returns `None`, carrying out each [`Output`]: write a
//!    frame, open or close a link, make or answer an HTTP request, or hand an [`Event`] to the
//!    application.
//! 3. Sleep until [`Node::poll_timeout`] or the next input, whichever comes first.
//!
//! The output queue is drained by the driver after every input and is not bounded by the node:
//! a relay turns each relayed frame into one `Transmit`, so it is the driver that bounds what it
//! buffers per link (a slow reader is disconnected, not buffered without end). Events are bounded
//! (`max_events`); past that bound the node applies backpressure to its peers instead of dropping
//! messages, and drops only informational events (never a message's `Event::Failed`).
//!
//! Nothing else is needed to run a peer, a relay, or both at once. All randomness comes from the
//! RNG given to [`Node::new`] and all collections are ordered, so the same inputs with the same
//! seed produce the same outputs, byte for byte.

mod cluster;
mod cluster_topics;
mod config;
mod durability;
mod hop_http;
mod hops;
mod idle;
mod input;
mod io;
mod links;
mod mailboxes;
mod peers;
mod routing;
mod stats;
mod topics;
mod work;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand_core::CryptoRng;

pub use crate::auth::Bearer;
pub use cluster::{ClusterAction, ClusterConfig, ClusterStats};
pub use config::NodeConfig;
pub use durability::{RestoreError, RestoreSummary};
pub use input::{Handled, Input};
pub use io::{Event, HttpCall, HttpMethod, LinkId, LinkKind, Output, RequestId};
pub use stats::TransportStats;
pub(crate) use topics::valid_topic;
pub use work::{Work, WorkDone, WorkId};

use crate::error::UsageError;
use crate::handshake::HandshakeConfig;
use crate::identity::{Identity, PublicKey, TrustStore};
use crate::ids::{AppType, EntityId, MessageId, SessionId};
use crate::message_type::MessageType;
use crate::signed::SignedMessageGuard;
use crate::stream::{FailReason, OutboxFull};
use crate::time::Timestamp;
use crate::timers::TimerQueue;

use hops::Hop;
use links::Link;
use mailboxes::Mailboxes;
use peers::PeerState;
use routing::Admissions;
use topics::Topics;

/// Where a next-hop node is reached: its entity id and its HTTP base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// The node's entity id (it signs its `ERROR`s, `PONG`s and tokens).
    pub entity: EntityId,
    /// `http://host:port` or `https://host:port`; the WebSocket URL is derived from it.
    pub base_url: String,
}

/// Options of one message (seed 000: `send_message(..., prefer_websocket)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendOptions {
    /// `Some(true)`: WebSocket first for this message; `Some(false)`: HTTP first; `None`: the
    /// node's preference. An `*_ONLY` preference is never overridden.
    pub prefer_websocket: Option<bool>,
    /// The application-defined type the receiver gets in [`Event::Message`] (spec §13.1
    /// `app_type`), for `PEER_MESSAGE`, `BROADCAST` and `STATUS`. A session whose peer did not
    /// offer the `app_types` capability cannot carry it: the message then fails with
    /// `FailReason::Rejected` (`maybe_delivered: false`) rather than arrive without its type.
    pub app_type: Option<AppType>,
}

impl SendOptions {
    /// Options that give the message an application-defined type.
    pub fn typed(app_type: AppType) -> Self {
        Self { app_type: Some(app_type), ..Self::default() }
    }
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's outbox is full; retry once messages are delivered.
    #[error(transparent)]
    OutboxFull(#[from] OutboxFull),
    /// The message exceeds the largest message the peer accepts.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u64,
    },
    /// No route, link or mailbox leads to the peer, or it is not trusted.
    #[error("no route to {0}")]
    Unreachable(EntityId),
    /// Too many peers or requests are tracked already.
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The request id names no request received from that peer.
    #[error("no pending request {0} from that peer")]
    UnknownRequest(MessageId),
    /// The embedder misused the API.
    #[error(transparent)]
    Usage(#[from] UsageError),
}

/// What [`Node::broadcast`] did: the copies accepted, and the peers whose outbox refused one.
pub type BroadcastResult = (Vec<(EntityId, MessageId)>, Vec<(EntityId, SendError)>);

/// Keys of the node's timers: each object keeps one deadline, its earliest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Peer(EntityId),
    Link(LinkId),
    Hop(EntityId),
    Poll(EntityId),
    Mailboxes,
    Cluster,
    /// A durable node re-checks whether the application has taken every event, to write the
    /// receive positions held back meanwhile (see `durability.rs`).
    Settle,
}

/// One local entity's protocol state machine. See the [module docs](self) for the driving loop.
pub struct Node {
    config: NodeConfig,
    handshake: HandshakeConfig,
    identity: Arc<Identity>,
    trust: TrustStore,
    rng: Box<dyn CryptoRng + Send>,
    next_id: u64,
    /// Boxed: a `Link` is a few hundred bytes and a map's nodes are about two thirds full, so
    /// inline values would cost every idle link about 1.6 times its size.
    links: BTreeMap<LinkId, Box<Link>>,
    /// Inbound `/ws/v1/peers` links by the entity they authenticated as (the newest wins).
    bound: BTreeMap<EntityId, LinkId>,
    hops: BTreeMap<EntityId, Hop>,
    routes: BTreeMap<EntityId, EntityId>,
    default_route: Option<EntityId>,
    peers: BTreeMap<EntityId, PeerState>,
    mailboxes: Mailboxes,
    /// Entities admitted under the open policy, until their tokens expire (spec §2.3, §19).
    admitted: Admissions,
    /// Held long-polls by entity: the request, when to answer it empty, and the encoding of
    /// its answer's body.
    polls: BTreeMap<EntityId, (RequestId, Timestamp, crate::wire::Encoding)>,
    /// The entity whose `POST` is being processed: frames for it wait in its mailbox for that
    /// `POST`'s answer and release no poll it holds (spec §21).
    posting: Option<EntityId>,
    /// Entities whose HTTP callers are rate limited, with their buckets.
    http_rate: BTreeMap<EntityId, crate::rate_limit::TokenBucket>,
    /// `ERROR` budgets of HTTP callers and of remote peers answered through a next hop.
    error_budget: BTreeMap<EntityId, crate::rate_limit::TokenBucket>,
    topics: Topics,
    guard: SignedMessageGuard,
    timers: TimerQueue<Timer>,
    outputs: VecDeque<Output>,
    events_queued: usize,
    /// Events the driver took from the queue but the application has not consumed yet.
    app_backlog: usize,
    events_dropped: u64,
    stats: TransportStats,
    /// The last [`RECENT_SENDS`] frames sent, oldest first: the envelope id, the peer it was for
    /// and the session it was sealed under (to correlate `ERROR`s, and to ignore one about a
    /// session already replaced). A ring, so sending costs one push and one pop; it is searched,
    /// newest first, only for an `ERROR` whose signature has been verified.
    recent: VecDeque<(MessageId, EntityId, Option<SessionId>)>,
    /// Set on a cluster node.
    cluster: Option<cluster::Cluster>,
    /// On a durable node: peers whose receive positions moved while the application had not
    /// taken every event yet; written (and acknowledged) once it has.
    unsettled: std::collections::BTreeSet<EntityId>,
    /// Envelopes waiting for public-key work handed out ([`Output::Work`]).
    parking: work::Parking,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.identity)
            .field("links", &self.links.len())
            .field("peers", &self.peers.len())
            .field("hops", &self.hops.len())
            .finish_non_exhaustive()
    }
}

/// Envelope ids remembered for correlating `ERROR` replies.
const RECENT_SENDS: usize = 4096;

impl Node {
    /// A node for `identity`, trusting the entities of `trust`, drawing all randomness from `rng`.
    pub fn new(
        config: NodeConfig,
        identity: Identity,
        trust: TrustStore,
        rng: impl CryptoRng + Send + 'static,
    ) -> Result<Self, UsageError> {
        config.validate()?;
        let handshake = HandshakeConfig::new(config.limits.clone(), config.capabilities.clone())?;
        Ok(Self {
            guard: SignedMessageGuard::new(&config.limits),
            topics: Topics::default(),
            mailboxes: Mailboxes::durable(config.durable),
            admitted: Admissions::default(),
            handshake,
            identity: Arc::new(identity),
            trust,
            rng: Box::new(rng),
            next_id: 1,
            links: BTreeMap::new(),
            bound: BTreeMap::new(),
            hops: BTreeMap::new(),
            routes: BTreeMap::new(),
            default_route: None,
            peers: BTreeMap::new(),
            polls: BTreeMap::new(),
            posting: None,
            http_rate: BTreeMap::new(),
            error_budget: BTreeMap::new(),
            timers: TimerQueue::new(),
            outputs: VecDeque::new(),
            cluster: config.cluster.clone().map(cluster::Cluster::new),
            unsettled: std::collections::BTreeSet::new(),
            parking: work::Parking::default(),
            events_queued: 0,
            app_backlog: 0,
            events_dropped: 0,
            stats: TransportStats::default(),
            recent: VecDeque::new(),
            config,
        })
    }

    /// This node's entity id.
    pub fn id(&self) -> &EntityId {
        self.identity.id()
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.identity.public_key()
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The trust store.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Adds or replaces a trusted entity.
    pub fn trust_entity(&mut self, id: EntityId, key: PublicKey) {
        self.trust.insert(id, key);
    }

    /// Makes `node` the next hop for `peer` (the node may be the peer itself: a direct route).
    pub fn add_route(&mut self, peer: EntityId, node: NodeAddr) {
        let hop = node.entity.clone();
        self.ensure_hop(node);
        self.routes.insert(peer, hop);
    }

    /// Makes `node` the next hop for every peer without a route of its own (a relay). This node
    /// is reachable there: from now on it keeps a link or a long-poll open to it, even with
    /// nothing to send, since anyone may write to it at any time (spec §19).
    pub fn set_default_route(&mut self, now: Timestamp, node: NodeAddr) {
        let hop = node.entity.clone();
        self.ensure_hop(node);
        self.default_route = Some(hop);
        self.finish(now);
    }

    /// Transport counters over all peers.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Transport counters for one peer.
    pub fn peer_stats(&self, peer: &EntityId) -> Option<&TransportStats> {
        self.peers.get(peer).map(|p| &p.stats)
    }

    /// Whether a session with `peer` is established.
    pub fn has_session(&self, peer: &EntityId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.session.is_some())
    }

    /// Messages waiting for acknowledgement by `peer`.
    pub fn outbox_len(&self, peer: &EntityId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.send.messages())
    }

    /// Envelopes waiting in this node's mailboxes, over all entities.
    pub fn mailbox_len(&self) -> usize {
        self.mailboxes.len()
    }

    /// Bytes held in this node's mailboxes.
    pub fn mailbox_bytes(&self) -> usize {
        self.mailboxes.bytes()
    }

    /// Links currently open or opening.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Links currently open or opening on `kind` (both directions).
    pub fn link_count_of(&self, kind: LinkKind) -> usize {
        self.links.values().filter(|l| l.kind == kind).count()
    }

    /// Entities holding a peers link to this node, in entity-id order (`GET /peers/discover`).
    pub fn connected_entities(&self) -> impl Iterator<Item = &EntityId> {
        self.bound.keys()
    }

    /// Whether a WebSocket link carries frames for `peer` right now: the peer's own link to this
    /// node, or an open link to the next hop toward it (seed 000's `is_websocket_connected`).
    /// `false` while a link is connecting, and when traffic to the peer goes over HTTP.
    pub fn websocket_connected(&self, peer: &EntityId) -> bool {
        if self.bound.contains_key(peer) {
            return true;
        }
        self.route_of(peer)
            .and_then(|hop| self.hops.get(&hop))
            .and_then(|h| h.ws_link)
            .and_then(|link| self.links.get(&link))
            .is_some_and(|l| l.up)
    }

    /// Tells the node how many events the driver took with [`Node::poll_output`] but the
    /// application has not consumed yet (a driver that hands events over a queue of its own).
    /// They count against `max_events`, so a slow application pushes back on its peers
    /// (unacknowledged data frames are re-sent later) instead of growing that queue.
    pub fn set_app_backlog(&mut self, held: usize) {
        self.app_backlog = held;
    }

    /// Established sessions with remote peers.
    pub fn session_count(&self) -> usize {
        self.peers.values().filter(|p| p.session.is_some()).count()
    }

    /// A diagnostic dump of what this node holds for `peer` (stream positions, buffers); for
    /// simulators and debugging, not a stable format.
    #[doc(hidden)]
    pub fn debug_peer(&self, peer: &EntityId) -> String {
        match self.peers.get(peer) {
            Some(p) => format!(
                "session={:?} handshaking={} send(epoch={}, base={}, messages={}) recv={:?} partials={}",
                p.session.as_ref().map(|s| s.id().clone()),
                p.handshaking(),
                p.send.epoch(),
                p.send.base(),
                p.send.messages(),
                p.recv,
                p.reassembly.partials(),
            ),
            None => "unknown".to_owned(),
        }
    }

    /// The next output for the driver, or `None` when there is nothing left to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        if matches!(out, Output::Event(_)) {
            self.events_queued = self.events_queued.saturating_sub(1);
        }
        Some(out)
    }

    /// The earliest time [`Node::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// Runs everything due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.settle_positions(now);
        // Bounded: each object's handler reschedules it strictly later or not at all.
        let mut budget = self.timers.len().saturating_add(16);
        while budget > 0 {
            budget -= 1;
            let Some(timer) = self.timers.pop_due(now) else { break };
            match timer {
                Timer::Peer(p) => self.on_peer_timer(now, &p),
                Timer::Link(l) => self.on_link_timer(now, l),
                Timer::Hop(h) => self.on_hop_timer(now, &h),
                Timer::Poll(e) => self.on_poll_timer(now, &e),
                Timer::Mailboxes => self.on_mailbox_timer(now),
                Timer::Cluster => self.on_cluster_timer(now),
                Timer::Settle => {}
            }
        }
        self.finish(now);
    }

    /// Whether `max_events` events wait for the application (in the output queue, plus what the
    /// driver reported holding with [`Node::set_app_backlog`]).
    pub(super) fn events_full(&self) -> bool {
        self.events_queued.saturating_add(self.app_backlog) >= self.config.max_events
    }

    fn next_link_id(&mut self) -> LinkId {
        self.next_id = self.next_id.saturating_add(1);
        LinkId(self.next_id)
    }

    fn next_request_id(&mut self) -> RequestId {
        self.next_id = self.next_id.saturating_add(1);
        RequestId(self.next_id)
    }

    fn emit(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    /// Queues an event for the application; past `max_events` undrained events, new
    /// informational ones are counted and dropped (reported once the application drains again).
    fn event(&mut self, event: Event) {
        // Messages, requests and responses are never dropped: data frames are refused
        // unacknowledged while the queue is full (backpressure), so these stay bounded by the
        // receive windows. Nor is the outcome of a message or a request: the application is told
        // of every message that was delivered or failed (spec §13.6) and of every request that
        // timed out (a driver may be waiting on it), and each ends once, so these stay bounded
        // by the outboxes and `max_pending_requests`. Other events past the bound are counted
        // and dropped.
        let kept = matches!(
            event,
            Event::Message { .. }
                | Event::Request { .. }
                | Event::Response { .. }
                | Event::Failed { .. }
                | Event::Delivered { .. }
                | Event::RequestTimedOut { .. }
        );
        if self.events_full() && !kept {
            self.events_dropped = self.events_dropped.saturating_add(1);
            return;
        }
        if self.events_dropped > 0 {
            let count = std::mem::take(&mut self.events_dropped);
            self.events_queued = self.events_queued.saturating_add(1);
            self.outputs.push_back(Output::Event(Event::EventsDropped { count }));
        }
        self.events_queued = self.events_queued.saturating_add(1);
        self.outputs.push_back(Output::Event(event));
    }

    fn remember_sent(&mut self, envelope: &MessageId, peer: &EntityId, session: Option<SessionId>) {
        if self.recent.len() >= RECENT_SENDS {
            self.recent.pop_front();
        }
        self.recent.push_back((envelope.clone(), peer.clone(), session));
    }

    /// The peer and session of the newest frame sent with envelope id `envelope`, if recent.
    fn recent_send(&self, envelope: &MessageId) -> Option<(EntityId, Option<SessionId>)> {
        let (_, peer, session) = self.recent.iter().rev().find(|(id, _, _)| id == envelope)?;
        Some((peer.clone(), session.clone()))
    }

    /// Work every public entry point ends with: flush batched HTTP requests and reschedule.
    fn finish(&mut self, now: Timestamp) {
        self.flush_http_batches(now);
    }

    fn schedule(&mut self, timer: Timer, at: Option<Timestamp>) {
        match at {
            Some(at) => self.timers.set(timer, at),
            None => {
                self.timers.cancel(&timer);
            }
        }
    }

    // ----- application commands -----

    /// Sends `payload` to `peer` as a `PEER_MESSAGE`. The message is accepted into the peer's
    /// outbox (connecting and handshaking as needed); [`Event::Delivered`] or [`Event::Failed`]
    /// follows.
    pub fn send(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, SendError> {
        let r = self.enqueue(now, peer, MessageType::PeerMessage, None, payload, options);
        self.finish(now);
        r
    }

    /// Sends a `STATUS` message to `peer`.
    pub fn send_status(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, SendError> {
        let r = self.enqueue(now, peer, MessageType::Status, None, payload, options);
        self.finish(now);
        r
    }

    /// Sends one `BROADCAST` copy to every peer with an established session, each encrypted under
    /// its own session. Returns the peers and message ids accepted, and the peers whose outbox
    /// refused the copy.
    pub fn broadcast(&mut self, now: Timestamp, payload: &[u8]) -> BroadcastResult {
        self.broadcast_with(now, payload, SendOptions::default())
    }

    /// [`broadcast`](Self::broadcast) with options (an application-defined type, a transport
    /// preference) applied to every copy.
    pub fn broadcast_with(
        &mut self,
        now: Timestamp,
        payload: &[u8],
        options: SendOptions,
    ) -> BroadcastResult {
        let targets: Vec<EntityId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for peer in targets {
            let (kind, body) = (MessageType::Broadcast, payload.to_vec());
            match self.enqueue(now, &peer, kind, None, body, options.clone()) {
                Ok(id) => ok.push((peer, id)),
                Err(e) => failed.push((peer, e)),
            }
        }
        self.finish(now);
        (ok, failed)
    }

    /// Sends a `TASK_REQUEST`; the answer arrives as [`Event::Response`], or
    /// [`Event::RequestTimedOut`] after `timeout`.
    pub fn request(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<MessageId, SendError> {
        let pending: usize = self.peers.values().map(|p| p.requests.len()).sum();
        if pending >= self.config.max_pending_requests {
            return Err(SendError::LimitReached("max_pending_requests"));
        }
        let options = SendOptions::default();
        let r = self.enqueue(now, peer, MessageType::TaskRequest, None, payload, options);
        if let (Ok(id), Some(p)) = (&r, self.peers.get_mut(peer)) {
            p.requests.insert(id.clone(), now.saturating_add(timeout));
            self.reschedule_peer(peer);
        }
        self.finish(now);
        r
    }

    /// Answers a request received as [`Event::Request`] with a `TASK_RESPONSE`.
    pub fn respond(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        request: &MessageId,
        payload: Vec<u8>,
    ) -> Result<MessageId, SendError> {
        let options = SendOptions::default();
        let kind = MessageType::TaskResponse;
        let r = self.enqueue(now, peer, kind, Some(request.clone()), payload, options);
        self.finish(now);
        r
    }

    /// Opens the WebSocket link toward `peer` now and starts the handshake, instead of waiting
    /// for the first message (seed 000: `init_websocket_connection`).
    pub fn connect(&mut self, now: Timestamp, peer: &EntityId) -> Result<(), SendError> {
        let hop = self.route_of(peer).ok_or_else(|| SendError::Unreachable(peer.clone()))?;
        if let Some(h) = self.hops.get_mut(&hop) {
            h.wanted = true;
            h.closed_by_app = false;
        }
        self.ensure_ws(now, &hop);
        self.ensure_peer(now, peer)?;
        if let Some(p) = self.peers.get_mut(peer) {
            p.wanted = true;
            p.touch(now);
        }
        self.flush_peer(now, peer);
        self.finish(now);
        Ok(())
    }

    /// Closes the WebSocket link toward `peer` and stops reconnecting it (seed 000:
    /// `close_websocket_connection`). Sessions stay; traffic moves to HTTP if allowed. It also
    /// withdraws a [`connect`](Self::connect): a session with `peer` is no longer kept up for its
    /// own sake, so once idle the peer may be forgotten (spec §15.5).
    pub fn disconnect(&mut self, now: Timestamp, peer: &EntityId) {
        if let Some(hop) = self.route_of(peer) {
            self.close_hop_ws(now, &hop);
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.wanted = false;
            p.touch(now);
        }
        self.reschedule_peer(peer);
        self.finish(now);
    }

    /// Gives up on every message to `peer`, forgets its session, and reports them failed.
    pub fn close_peer(&mut self, now: Timestamp, peer: &EntityId) {
        if let Some(mut p) = self.remove_peer(peer) {
            for failure in p.send.fail_all() {
                self.report_failed(peer, failure, FailReason::Closed);
            }
        }
        self.finish(now);
    }

    /// Graceful shutdown (spec §23.3): a signed `BYE` on every open link, then its orderly
    /// close; held long-polls are answered with what waits for their callers; no link is reconnected afterwards. Sessions
    /// and outboxes stay, so a node that carries on later resumes where it was.
    pub fn shutdown(&mut self, now: Timestamp) {
        // Acknowledgements still held for `ack_delay` go out first: a peer that never hears of
        // what was delivered would re-send it to whoever answers at this address next.
        self.flush_held_acks(now);
        for h in self.hops.values_mut() {
            h.closed_by_app = true;
            h.reconnect_at = None;
        }
        let bye = crate::signed::signed_message(
            &self.identity,
            MessageType::Bye,
            None,
            None,
            crate::envelope::Payload::trusted(serde_json::json!({"reason": "shutdown"})),
            now,
            &mut *self.rng,
        );
        let links: Vec<(LinkId, bool)> = self.links.iter().map(|(id, l)| (*id, l.up)).collect();
        for (link, up) in links {
            if up && let Ok(bye) = &bye {
                self.emit(Output::Transmit { link, frame: Arc::from(bye.encode()) });
            }
            self.close_link(now, link, None);
        }
        let held: Vec<EntityId> = self.polls.keys().cloned().collect();
        for entity in held {
            if let Some((request, _, encoding)) = self.polls.remove(&entity) {
                self.answer_poll(request, &entity, encoding);
            }
        }
        self.finish(now);
    }
}

#[cfg(test)]
mod tests;
