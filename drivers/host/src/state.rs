//! The node task's state and inbox: [`Core`], everything the node task owns, and [`Input`],
//! everything it is told, with the replies, calls and handlers they carry. Every other task
//! (links, endpoints, the application's handle) talks to the node task with these; the loop
//! that acts on them is `driver`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_channel::Sender;
use async_tungstenite::tungstenite::Bytes;
use peerlink_core::auth::{AuthError, Authority, Bearer, Challenge, ChallengeAnswer};
use peerlink_core::endpoints::{DiscoveredPeer, MAX_DISCOVERED};
use peerlink_core::node::{ClusterAction, HttpCall, LinkId, LinkKind, Output, RequestId};
use peerlink_core::wire::Encoding;
use peerlink_core::{EntityId, ErrorCode, Event, MessageId, Node, Timestamp};
use rand_chacha::ChaCha20Rng;

use crate::client::{ClientCtx, HttpAnswer};
use crate::clock::Clock;
use crate::delivery::{Handler, HandlerKey, Waiter};
use crate::error::ApiError;
use crate::link_queue::LinkHandle;
use crate::metrics::{ClusterCounters, Snapshot};

/// A one-shot reply channel (a bounded channel of one).
pub(crate) type Reply<T> = Sender<T>;

/// Where the answer to an inbound HTTP call goes.
pub(crate) type HttpReply = Reply<HttpAnswer>;

/// A command run on the node task with the node and the current time.
pub(crate) type Call = Box<dyn FnOnce(&mut Core, Timestamp) + Send>;

/// What the node task is told.
pub(crate) enum Input {
    /// An authenticated inbound WebSocket wants to become a link.
    Accept {
        /// The endpoint it came in on.
        kind: LinkKind,
        /// The token's holder: the entity and the key it proved (spec §2.3).
        who: Bearer,
        /// What the upgrade agreed (spec §27.1).
        encoding: Encoding,
        /// The node task's end of the link's send queue.
        handle: LinkHandle,
        /// The new link's id, or why the node refused it.
        reply: Reply<Result<LinkId, ErrorCode>>,
    },
    /// A text or binary message arrived on a link (the bytes tungstenite read it into, not a
    /// copy).
    Frame { link: LinkId, data: Bytes, binary: bool },
    /// A link's task ended.
    Closed { link: LinkId },
    /// An outbound link connected, speaking what the server's `101` selected.
    LinkUp { link: LinkId, encoding: Encoding },
    /// An outbound link could not be opened.
    LinkFailed { link: LinkId },
    /// An authenticated HTTP call to `/v1/messages`, bound to the token's holder (spec §2.3).
    Http { who: Bearer, call: HttpCall, reply: HttpReply },
    /// The outcome of an HTTP request the node asked for (`None`: no answer).
    HttpResult { request: RequestId, result: Option<HttpAnswer> },
    /// `GET /auth/token`.
    Challenge { entity: EntityId, pubkey: String, reply: Reply<Result<Challenge, AuthError>> },
    /// `POST /auth/verify`: the pending challenge, taken out; the connection's task checks the
    /// answer's signature and mints the token, off the node task.
    Verify { entity: EntityId, challenge: String, reply: Reply<Result<ChallengeAnswer, AuthError>> },
    /// An API command.
    Call(Call),
    /// Graceful shutdown: `BYE` and close every link, answer held HTTP calls, stop.
    Shutdown { reply: Reply<()> },
    /// What the cluster's broker says (a cluster node only).
    Cluster(ClusterNews),
    /// Public-key work the node handed out, run on another task.
    WorkDone(peerlink_core::node::WorkDone),
}

/// What the cluster's broker says, as the broker's task hands it to the node task.
#[derive(Debug)]
pub(crate) enum ClusterNews {
    /// The broker is reachable (again).
    Up,
    /// The broker is unreachable.
    Down,
    /// `entity`'s newest link is on the node named `node` (`None`: on none).
    Presence { entity: EntityId, node: Option<EntityId> },
    /// A frame for `to`: forwarded to this node, or drained from `to`'s shared mailbox.
    Frame { to: EntityId, frame: Vec<u8> },
    /// Something was parked in `entity`'s shared mailbox.
    Mail { entity: EntityId },
    /// A publication on `topic` the node named `origin` fanned out.
    Publication { topic: String, origin: EntityId, frame: Vec<u8> },
}

/// The node task's end of the cluster: where it sends what it asks of the broker.
pub(crate) struct ClusterLink {
    /// Requests for the broker's task; bounded, a full queue drops and counts.
    pub actions: Sender<ClusterAction>,
    /// Counters shared with the broker's task and the endpoints.
    pub counters: Arc<ClusterCounters>,
}

impl Input {
    /// What this input is, with its ids and sizes but no content, for trace logs (`None` for
    /// the node's own inputs, which describe themselves).
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Input::Challenge { entity, .. } => format!("challenge for {entity}"),
            Input::Verify { entity, .. } => format!("verify for {entity}"),
            Input::Call(_) => "API call".to_owned(),
            Input::Shutdown { .. } => "shutdown".to_owned(),
            _ => return None,
        })
    }
}

/// Everything the node task owns.
pub(crate) struct Core {
    /// The sans-IO node.
    pub node: Node,
    /// Issues challenges and takes their answers (tokens are checked off the node task).
    pub authority: Authority,
    /// Randomness for challenges.
    pub rng: ChaCha20Rng,
    /// The node's clock.
    pub clock: Clock,
    /// Every open link, inbound and outbound, with the node task's end of its send queue.
    pub links: BTreeMap<LinkId, (LinkKind, LinkHandle)>,
    /// The links this node opened.
    pub outbound: BTreeSet<LinkId>,
    /// HTTP calls the node has yet to answer: the caller and where its answer goes.
    pub pending_http: BTreeMap<RequestId, (EntityId, HttpReply)>,
    /// Requests the application waits on (`Handle::request`), by id: where the answer goes.
    pub waiting: BTreeMap<MessageId, Reply<Result<Vec<u8>, ApiError>>>,
    /// The application's event stream (`Handle::incoming`), once asked for.
    pub events: Option<Sender<Event>>,
    /// How the application's end of `events` says it emptied the queue, and the node task's
    /// end of that (`events.rs`).
    pub taken: Option<crate::events::TakenWord>,
    /// Confirmed sends the application waits on (`Handle::send_confirmed`), by message id.
    pub delivering: BTreeMap<MessageId, Waiter>,
    /// Handlers the application registered (`Handle::on_message`, `Handle::on_app_type`).
    pub handlers: BTreeMap<HandlerKey, Handler>,
    /// What the tasks reaching other nodes share.
    pub client: Arc<ClientCtx>,
    /// The node task's own input queue, for the tasks it spawns.
    pub inputs: Sender<Input>,
    /// `Event::Error`s seen, by error code.
    pub errors_by_code: BTreeMap<ErrorCode, u64>,
    /// Links disconnected because their send queue was full.
    pub slow_readers: u64,
    /// Informational events dropped because the event stream was full.
    pub events_dropped: u64,
    /// Shutting down: no new outbound links or HTTP requests.
    pub stopping: bool,
    /// Outbound links that came up (inbound ones are up from the start).
    pub up: BTreeSet<LinkId>,
    /// Links the shutdown closed whose tasks are still writing what was queued on them: the
    /// shutdown returns once they have ended (or after `link::CLOSE_BOUND`).
    pub closing: BTreeSet<LinkId>,
    /// The cluster's broker task, on a cluster node.
    pub cluster: Option<ClusterLink>,
    /// A durable node's store (`Config::storage`), written in groups by `drain`.
    pub store: Option<crate::store::StoreWriter>,
    /// What the store's commits did, for the metrics.
    pub store_stats: StoreTotals,
    /// Set when a commit failed: the node task stops (the reason is logged).
    pub store_failed: Option<String>,
    /// Answers to the application's calls, held on a durable node until the writes of the
    /// calls' batch are committed (what `send` accepted is on disk when it returns).
    pub deferred: Vec<HeldReply>,
    /// The group of writes being committed, with what waits for it (`commits.rs`).
    pub in_flight: Option<InFlight>,
    /// The next group of writes, gathered meanwhile.
    pub group: Group,
}

/// The answer of an application's call, held until the writes before it are committed.
pub(crate) type HeldReply = Box<dyn FnOnce() + Send>;

/// The group being committed, and what waits for it.
pub(crate) struct InFlight {
    pub answer: std::pin::Pin<Box<crate::store::CommitAnswer>>,
    pub held: Vec<Output>,
    pub replies: Vec<HeldReply>,
}

/// The next group, gathered while one is in flight (or within one drain).
#[derive(Default)]
pub(crate) struct Group {
    pub writes: Vec<peerlink_core::durable::StoreOp>,
    /// Outputs queued after the group in flight and before this group's first write.
    pub early: Vec<Output>,
    pub early_replies: Vec<HeldReply>,
    /// Outputs queued after this group's first write.
    pub held: Vec<Output>,
    pub replies: Vec<HeldReply>,
}

/// Totals of a durable node's commits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StoreTotals {
    pub commits: u64,
    pub ops: u64,
    pub bytes: u64,
    pub fsyncs: u64,
}

impl StoreTotals {
    pub fn add(&mut self, stats: &crate::store::CommitStats) {
        self.commits = self.commits.saturating_add(1);
        self.ops = self.ops.saturating_add(u64::try_from(stats.ops).unwrap_or(u64::MAX));
        self.bytes = self.bytes.saturating_add(stats.bytes_written);
        self.fsyncs = self.fsyncs.saturating_add(u64::from(stats.fsyncs));
    }
}

impl Core {
    /// `GET /peers/discover`'s list: the entities linked here, then (on a cluster node) those
    /// linked to other nodes, in entity-id order, at most `MAX_DISCOVERED`.
    pub fn discovered_peers(&self, now: Timestamp) -> Vec<DiscoveredPeer> {
        let here = self.node.connected_entities().map(|e| (e, None));
        let elsewhere = self.node.cluster_entities(now).map(|(e, n)| (e, Some(n)));
        let mut all: Vec<(&EntityId, Option<&EntityId>)> = here.chain(elsewhere).collect();
        // Linked here and (by a stale record) elsewhere: here wins, being sorted first.
        all.sort_by(|a, b| a.0.cmp(b.0).then(a.1.is_some().cmp(&b.1.is_some())));
        all.dedup_by(|b, a| a.0 == b.0);
        all.into_iter()
            .take(MAX_DISCOVERED)
            .map(|(e, n)| DiscoveredPeer {
                entity_id: e.as_str().to_owned(),
                transport: "websocket".to_owned(),
                node: n.map(|n| n.as_str().to_owned()),
            })
            .collect()
    }

    /// Counters and gauges for `/metrics` and the API.
    pub fn snapshot(&self) -> Snapshot {
        let count = |kind: LinkKind| {
            self.links
                .iter()
                .filter(|(id, (k, _))| *k == kind && !self.outbound.contains(id))
                .count()
        };
        Snapshot {
            stats: self.node.stats().clone(),
            inbound_peer_links: count(LinkKind::Peers),
            inbound_event_links: count(LinkKind::Events),
            outbound_links: self.outbound.len(),
            sessions: self.node.session_count(),
            mailbox_messages: self.node.mailbox_len(),
            mailbox_bytes: self.node.mailbox_bytes(),
            held_http_calls: self.pending_http.len(),
            errors_by_code: self
                .errors_by_code
                .iter()
                .map(|(c, n)| (c.as_str().to_owned(), *n))
                .collect(),
            slow_readers_disconnected: self.slow_readers,
            events_dropped: self.events_dropped,
            cluster: self.cluster.as_ref().map(|c| c.counters.snapshot(self.node.cluster_stats())),
            store: self.store.as_ref().map(|w| {
                let usage = w.usage();
                crate::metrics::StoreSnapshot {
                    commits: self.store_stats.commits,
                    writes: self.store_stats.ops,
                    bytes_written: self.store_stats.bytes,
                    fsyncs: self.store_stats.fsyncs,
                    entries: usage.entries,
                    bytes: usage.bytes,
                }
            }),
        }
    }
}
