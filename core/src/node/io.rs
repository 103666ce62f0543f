//! What a driver feeds a [`Node`](super::Node) and what it drains from it.

use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::Transport;
use crate::error::ErrorCode;
use crate::ids::{EntityId, MessageId, SessionId};
use crate::stream::FailReason;
use crate::wire::Encoding;

/// Names one link (a WebSocket connection) for the lifetime of the node; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// Names one HTTP exchange, outbound or inbound; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// The WebSocket endpoint a link belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// `/ws/v1/peers`: peer traffic.
    Peers,
    /// `/ws/v1/events`: topic subscriptions and server push.
    Events,
}

/// An HTTP method the node asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET` (long-poll for waiting messages).
    Get,
    /// `POST` (messages).
    Post,
}

/// An inbound HTTP call, already authenticated by the driver (spec §"Endpoints").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCall {
    /// `POST /v1/messages`: envelopes, NDJSON or binary ([`crate::http_body`]).
    PostMessages {
        /// The request body.
        body: Vec<u8>,
        /// What its `Content-Type` names: [`wire::body_encoding`](crate::wire::body_encoding).
        /// A binary body to a node whose `binary_links` is off is answered `415` (spec §27.7).
        encoding: Encoding,
        /// Whether its `Accept` names the binary body:
        /// [`wire::accepts_binary`](crate::wire::accepts_binary).
        accept_binary: bool,
    },
    /// `GET /v1/messages`: wait for messages to this entity, up to the lesser of `wait` and
    /// the node's `poll_wait` (spec §21).
    Poll {
        /// The caller's `wait_ms` ([`crate::endpoints::poll_wait_of`]), if it gave one; zero
        /// answers at once.
        wait: Option<Duration>,
        /// Whether its `Accept` names the binary body:
        /// [`wire::accepts_binary`](crate::wire::accepts_binary).
        accept_binary: bool,
    },
}

impl HttpCall {
    /// A `POST` of an NDJSON body from a client that accepts NDJSON answers only.
    pub fn post(body: Vec<u8>) -> Self {
        HttpCall::PostMessages { body, encoding: Encoding::Json, accept_binary: false }
    }

    /// A poll from a client that accepts NDJSON answers only.
    pub fn poll(wait: Option<Duration>) -> Self {
        HttpCall::Poll { wait, accept_binary: false }
    }
}

/// Something the driver must do.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write one frame on a link: a WebSocket binary message when the frame is a binary envelope
    /// ([`Encoding::of`](crate::wire::Encoding::of)), else a text message.
    Transmit {
        /// The link.
        link: LinkId,
        /// The frame; shared when the same bytes go to many links.
        frame: Arc<[u8]>,
    },
    /// Open a WebSocket link, authenticated at `node` (spec §23.2); answer with
    /// [`Input::LinkUp`](super::Input::LinkUp) or [`Input::LinkFailed`](super::Input::LinkFailed).
    OpenLink {
        /// The id the node gave the link.
        link: LinkId,
        /// The finished URL: `ws://…/ws/v1/peers` or `wss://…`, with `?session_id=` when the
        /// link is to resume a session with `node` itself.
        url: String,
        /// The endpoint.
        kind: LinkKind,
        /// The node the link goes to: the entity its token must name and its HTTP base URL.
        node: super::NodeAddr,
        /// Offer the binary envelope: send `Sec-WebSocket-Protocol:`
        /// [`BINARY_SUBPROTOCOL`](crate::wire::BINARY_SUBPROTOCOL) with the upgrade, and report
        /// the server's choice in [`Input::LinkUp`](super::Input::LinkUp) (spec §27.1).
        offer_binary: bool,
    },
    /// Close a link.
    CloseLink {
        /// The link.
        link: LinkId,
        /// Why, for logs and the close frame; `None` for an orderly close.
        reason: Option<ErrorCode>,
    },
    /// Make an HTTP request, authenticated at `node`; answer with
    /// [`Input::HttpResponse`](super::Input::HttpResponse) or
    /// [`Input::HttpFailed`](super::Input::HttpFailed).
    HttpRequest {
        /// The exchange.
        request: RequestId,
        /// The method.
        method: HttpMethod,
        /// The full URL, query included.
        url: String,
        /// The node asked: the entity its token must name and its HTTP base URL.
        node: super::NodeAddr,
        /// The body (empty for `GET`), in `body_encoding`.
        body: Vec<u8>,
        /// The body's encoding: send `Content-Type:` its
        /// [`media_type`](Encoding::media_type) with a `POST`.
        body_encoding: Encoding,
        /// Send `Accept:` [`wire::accept_header`](crate::wire::accept_header)`(accept_binary)`,
        /// and report the answer's `Content-Type` in
        /// [`Input::HttpResponse`](super::Input::HttpResponse) (spec §27.7).
        accept_binary: bool,
    },
    /// Answer an inbound HTTP call.
    HttpRespond {
        /// The exchange.
        request: RequestId,
        /// The status code.
        status: u16,
        /// Envelopes for the caller, in `encoding`.
        body: Vec<u8>,
        /// The body's encoding: answer with `Content-Type:` its
        /// [`media_type`](Encoding::media_type).
        encoding: Encoding,
    },
    /// Tell the application something.
    Event(Event),
    /// Ask the cluster's broker something (a cluster node only, [`ClusterConfig`]).
    ///
    /// [`ClusterConfig`]: super::ClusterConfig
    Cluster(super::ClusterAction),
    /// Write to the node's store (a durable node only, [`NodeConfig::durable`]). Every output
    /// after this one for which [`Output::waits_for_writes`] is true must wait until the write
    /// is durable (spec §26.2).
    ///
    /// [`NodeConfig::durable`]: super::NodeConfig::durable
    Persist(crate::durable::StoreOp),
    /// Run this public-key work anywhere ([`Work::run`](super::Work::run)) and hand its result
    /// back with [`Node::complete_work`](super::Node::complete_work): only with
    /// [`NodeConfig::offload_work`](super::NodeConfig::offload_work) on.
    Work(super::Work),
}

impl Output {
    /// Whether a durable node's driver must hold this output until the writes queued before it
    /// are committed (spec §26.2): everything but the writes themselves and the events that
    /// hand received content to the application (a message, a request, a response, a topic
    /// publication), which go at once. So frames, HTTP answers and a sender's `Delivered` or
    /// `Failed` follow the writes they depend on, and a crash can repeat neither an outcome nor
    /// contradict one.
    pub fn waits_for_writes(&self) -> bool {
        match self {
            Output::Persist(_) | Output::Work(_) => false,
            Output::Event(e) => !matches!(
                e,
                Event::Message { .. }
                    | Event::Request { .. }
                    | Event::Response { .. }
                    | Event::Topic { .. }
            ),
            _ => true,
        }
    }

    /// What this output is, with ids and sizes but no content: for trace logs.
    pub fn describe(&self) -> String {
        match self {
            Output::Transmit { link, frame } => {
                format!("transmit on {link:?}: {} bytes", frame.len())
            }
            Output::OpenLink { link, url, .. } => format!("open {link:?} to {url}"),
            Output::CloseLink { link, reason } => format!("close {link:?} ({reason:?})"),
            Output::HttpRequest { request, method, url, body, body_encoding, .. } => {
                format!("{method:?} {url} as {request:?}: {} bytes ({body_encoding:?})", body.len())
            }
            Output::HttpRespond { request, status, body, encoding } => {
                format!("answer {request:?}: {status}, {} bytes ({encoding:?})", body.len())
            }
            Output::Event(_) => "event".to_owned(),
            Output::Cluster(action) => format!("cluster {action:?}"),
            Output::Persist(op) => format!("persist {op:?}"),
            Output::Work(work) => format!("{work:?}"),
        }
    }
}

/// What the application learns. `Debug` shows payload lengths, never payloads, so logging events
/// leaks no message content.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived (exactly once, in the sender's order).
    Message {
        /// The sender.
        from: EntityId,
        /// Its id.
        id: MessageId,
        /// `PEER_MESSAGE`, `BROADCAST` or `STATUS`.
        kind: crate::message_type::MessageType,
        /// The application-defined type the sender gave it ([`SendOptions::app_type`]).
        ///
        /// [`SendOptions::app_type`]: super::SendOptions::app_type
        app_type: Option<crate::ids::AppType>,
        /// The content.
        payload: Vec<u8>,
    },
    /// A task request arrived; answer it with `Node::respond`.
    Request {
        /// The requester.
        from: EntityId,
        /// The request's id.
        id: MessageId,
        /// The content.
        payload: Vec<u8>,
    },
    /// The answer to one of this node's requests.
    Response {
        /// The responder.
        from: EntityId,
        /// The request's id.
        request: MessageId,
        /// The content.
        payload: Vec<u8>,
    },
    /// A request got no answer before its deadline.
    RequestTimedOut {
        /// The peer asked.
        to: EntityId,
        /// The request's id.
        request: MessageId,
    },
    /// The peer acknowledged a message: its application has it (seed 000's `TransportResult`,
    /// with the transport that carried it).
    Delivered {
        /// The recipient.
        to: EntityId,
        /// The message.
        id: MessageId,
        /// The transport that carried the last copy sent toward the recipient (or its next hop):
        /// for a chunked message, its last chunk's. `None` only if no copy was ever handed to a
        /// transport, which an acknowledgement cannot follow.
        transport: Option<Transport>,
    },
    /// The node gave up on a message: it will not be sent again, and it was not confirmed
    /// delivered (spec §13.6). Counted in `TransportStats::failures`; never dropped for a full
    /// event queue.
    Failed {
        /// The recipient.
        to: EntityId,
        /// The message.
        id: MessageId,
        /// Why.
        reason: FailReason,
        /// `false`: some part of the message never left this node, so it is certainly not
        /// delivered, now or later. `true`: it was sent and not confirmed, so it may have been
        /// delivered (its acknowledgement lost), or may still be delivered, exactly once and in
        /// order, by a copy already sent: one in flight, or one the recipient holds behind an
        /// earlier message, released when the recipient learns that this node gave up on that
        /// one. An application that must know sends again with its own idempotency key.
        maybe_delivered: bool,
    },
    /// A session with a peer was established (a full handshake).
    SessionEstablished {
        /// The peer.
        peer: EntityId,
        /// The session.
        session: SessionId,
    },
    /// A session continued on a new link without a handshake.
    SessionResumed {
        /// The peer.
        peer: EntityId,
        /// The session.
        session: SessionId,
    },
    /// A session ended; a new handshake will be needed.
    SessionLost {
        /// The peer.
        peer: EntityId,
        /// Why.
        reason: ErrorCode,
    },
    /// Traffic to a node moved from one transport to another.
    TransportSwitched {
        /// The next hop.
        node: EntityId,
        /// The transport used before.
        from: Transport,
        /// The transport used now.
        to: Transport,
    },
    /// A message published on a topic.
    Topic {
        /// The topic.
        topic: String,
        /// The publisher.
        from: EntityId,
        /// The published JSON data.
        data: serde_json::Value,
    },
    /// A peer or next hop reported an error, or a frame was refused.
    Error {
        /// Who it concerns.
        peer: Option<EntityId>,
        /// The code.
        code: ErrorCode,
    },
    /// Events were dropped because the application did not drain them (the queue is bounded).
    EventsDropped {
        /// How many.
        count: u64,
    },
}

/// Stands in for a payload in `Debug` output.
struct Len(usize);

impl std::fmt::Debug for Len {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Message { from, id, kind, app_type, payload } => f
                .debug_struct("Message")
                .field("from", from)
                .field("id", id)
                .field("kind", kind)
                .field("app_type", app_type)
                .field("payload", &Len(payload.len()))
                .finish(),
            Event::Request { from, id, payload } => f
                .debug_struct("Request")
                .field("from", from)
                .field("id", id)
                .field("payload", &Len(payload.len()))
                .finish(),
            Event::Response { from, request, payload } => f
                .debug_struct("Response")
                .field("from", from)
                .field("request", request)
                .field("payload", &Len(payload.len()))
                .finish(),
            Event::Topic { topic, from, data } => f
                .debug_struct("Topic")
                .field("topic", topic)
                .field("from", from)
                .field("data", &Len(data.to_string().len()))
                .finish(),
            Event::RequestTimedOut { to, request } => {
                f.debug_struct("RequestTimedOut").field("to", to).field("request", request).finish()
            }
            Event::Delivered { to, id, transport } => f
                .debug_struct("Delivered")
                .field("to", to)
                .field("id", id)
                .field("transport", transport)
                .finish(),
            Event::Failed { to, id, reason, maybe_delivered } => f
                .debug_struct("Failed")
                .field("to", to)
                .field("id", id)
                .field("reason", reason)
                .field("maybe_delivered", maybe_delivered)
                .finish(),
            Event::SessionEstablished { peer, session } => f
                .debug_struct("SessionEstablished")
                .field("peer", peer)
                .field("session", session)
                .finish(),
            Event::SessionResumed { peer, session } => f
                .debug_struct("SessionResumed")
                .field("peer", peer)
                .field("session", session)
                .finish(),
            Event::SessionLost { peer, reason } => {
                f.debug_struct("SessionLost").field("peer", peer).field("reason", reason).finish()
            }
            Event::TransportSwitched { node, from, to } => f
                .debug_struct("TransportSwitched")
                .field("node", node)
                .field("from", from)
                .field("to", to)
                .finish(),
            Event::Error { peer, code } => {
                f.debug_struct("Error").field("peer", peer).field("code", code).finish()
            }
            Event::EventsDropped { count } => {
                f.debug_struct("EventsDropped").field("count", count).finish()
            }
        }
    }
}
