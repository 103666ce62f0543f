//! Everything a driver feeds a [`Node`]: one [`Input`] enum and [`Node::handle_input`], next to
//! [`Output`](super::Output) (as str0m does). The application's commands (`send`, `request`,
//! `subscribe`, …) stay methods: each returns its own result at once.

use super::{Bearer, HttpCall, LinkId, LinkKind, Node, RequestId};
use crate::error::ErrorCode;
use crate::ids::EntityId;
use crate::time::Timestamp;

/// One event from the network or the clock, with what it carries. Borrowed bytes: the node
/// copies what it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// An inbound WebSocket connection, already authenticated by the driver: `who` is its
    /// token's holder (spec §2.3). Handled gives [`Handled::Link`] or the close code.
    AcceptLink {
        /// The endpoint it upgraded on.
        kind: LinkKind,
        /// The token's holder: the entity and the key it proved.
        who: Bearer,
        /// What the upgrade agreed: [`wire::choose`](crate::wire::choose) of the request's
        /// `Sec-WebSocket-Protocol` header, whose subprotocol the `101` answer carried.
        encoding: crate::wire::Encoding,
    },
    /// An outbound link the node asked for ([`Output::OpenLink`](super::Output::OpenLink)) is
    /// connected.
    LinkUp {
        /// The link.
        link: LinkId,
        /// What the server's `101` answer selected:
        /// [`wire::selected`](crate::wire::selected).
        encoding: crate::wire::Encoding,
    },
    /// An outbound link could not be opened.
    LinkFailed(LinkId),
    /// A link closed, either side, for any reason.
    LinkClosed(LinkId),
    /// One frame (a WebSocket text message: a JSON envelope) arrived on a link.
    Frame {
        /// The link.
        link: LinkId,
        /// The frame's bytes.
        frame: &'a [u8],
    },
    /// One WebSocket binary message arrived on a link: a binary envelope on a link that agreed
    /// on them, refused on any other (spec §27.2).
    BinaryFrame {
        /// The link.
        link: LinkId,
        /// The message's bytes.
        frame: &'a [u8],
    },
    /// An inbound HTTP call to `/v1/messages`, already authenticated by the driver. Handled
    /// gives [`Handled::Call`]: the id its [`Output::HttpRespond`](super::Output::HttpRespond)
    /// will carry.
    HttpCall {
        /// The token's holder.
        who: Bearer,
        /// The call.
        call: HttpCall,
    },
    /// The answer to an HTTP request the node made.
    HttpResponse {
        /// The exchange.
        request: RequestId,
        /// Its status code.
        status: u16,
        /// Its body.
        body: &'a [u8],
        /// What its `Content-Type` names:
        /// [`wire::body_encoding`](crate::wire::body_encoding).
        encoding: crate::wire::Encoding,
    },
    /// An HTTP request the node made failed without an answer (refused, timed out).
    HttpFailed(RequestId),
    /// An answer the node gave to an inbound HTTP call could not be handed to its caller (the
    /// connection was gone): see [`Node::http_answer_lost`].
    HttpAnswerLost {
        /// The caller the answer was for.
        to: EntityId,
        /// The answer's body, as the node emitted it.
        body: &'a [u8],
        /// The answer's encoding, as the node emitted it.
        encoding: crate::wire::Encoding,
    },
    /// The deadline from [`Node::poll_timeout`] has passed (harmless if it has not).
    Timeout,
    /// A cluster node's broker is reachable (at start, or again): see [`Node::cluster_up`].
    ClusterUp,
    /// A cluster node's broker is unreachable: see [`Node::cluster_down`].
    ClusterDown,
    /// The broker says which node holds `entity`'s newest link (`None`: none does).
    ClusterPresence {
        /// The entity.
        entity: EntityId,
        /// The node, or none.
        node: Option<EntityId>,
    },
    /// A frame for `to` from the broker: forwarded by another node, or drained from `to`'s
    /// shared mailbox ([`Node::cluster_frame`]).
    ClusterFrame {
        /// The entity it is for.
        to: EntityId,
        /// The envelope.
        frame: &'a [u8],
    },
    /// Something was parked in `entity`'s shared mailbox ([`Node::cluster_mail`]).
    ClusterMail {
        /// The entity.
        entity: EntityId,
    },
    /// A publication another node of the cluster fanned out, for this node's subscribers to
    /// `topic` ([`Node::cluster_publication`]).
    ClusterPublication {
        /// The topic it came on.
        topic: &'a str,
        /// The name of the node it came from.
        origin: EntityId,
        /// The signed `PUBLISH` envelope.
        frame: &'a [u8],
    },
}

/// What handling an input gives back that the driver needs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Nothing: the outputs say the rest.
    Done,
    /// The id of the link just accepted.
    Link(LinkId),
    /// The id of the inbound HTTP call just taken.
    Call(RequestId),
}

impl Node {
    /// Feeds one input at time `now`; then drain [`Node::poll_output`]. The only error is the
    /// close code of an inbound link that is refused ([`Input::AcceptLink`]).
    pub fn handle_input(&mut self, now: Timestamp, input: Input<'_>) -> Result<Handled, ErrorCode> {
        self.settle_positions(now);
        match input {
            Input::AcceptLink { kind, who, encoding } => {
                return self.accept_link(now, kind, who, encoding).map(Handled::Link);
            }
            Input::LinkUp { link, encoding } => self.link_up(now, link, encoding),
            Input::LinkFailed(link) => self.link_failed(now, link),
            Input::LinkClosed(link) => self.link_closed(now, link),
            Input::Frame { link, frame } => self.handle_frame(now, link, frame),
            Input::BinaryFrame { link, frame } => self.handle_binary_frame(now, link, frame),
            Input::HttpCall { who, call } => {
                return Ok(Handled::Call(self.handle_http_request(now, who, call)));
            }
            Input::HttpResponse { request, status, body, encoding } => {
                self.handle_http_response(now, request, status, body, encoding)
            }
            Input::HttpFailed(request) => self.handle_http_failure(now, request),
            Input::HttpAnswerLost { to, body, encoding } => {
                self.http_answer_lost(now, &to, body, encoding)
            }
            Input::Timeout => self.handle_timeout(now),
            Input::ClusterUp => self.cluster_up(now),
            Input::ClusterDown => self.cluster_down(now),
            Input::ClusterPresence { entity, node } => self.cluster_presence(now, entity, node),
            Input::ClusterFrame { to, frame } => self.cluster_frame(now, to, frame),
            Input::ClusterPublication { topic, origin, frame } => {
                self.cluster_publication(now, topic, &origin, frame)
            }
            Input::ClusterMail { entity } => self.cluster_mail(now, entity),
        }
        Ok(Handled::Done)
    }
}

impl Input<'_> {
    /// What this input is, with ids and sizes but no content: for trace logs.
    pub fn describe(&self) -> String {
        match self {
            Input::AcceptLink { kind, who, encoding } => {
                format!("accept {kind:?} link ({encoding:?}) from {}", who.entity)
            }
            Input::LinkUp { link, encoding } => format!("link up {link:?} ({encoding:?})"),
            Input::LinkFailed(link) => format!("link failed {link:?}"),
            Input::LinkClosed(link) => format!("closed {link:?}"),
            Input::Frame { link, frame } => format!("frame on {link:?}: {} bytes", frame.len()),
            Input::BinaryFrame { link, frame } => {
                format!("binary frame on {link:?}: {} bytes", frame.len())
            }
            Input::HttpCall { who, .. } => format!("HTTP call from {}", who.entity),
            Input::HttpResponse { request, status, body, encoding } => {
                format!("HTTP answer to {request:?}: {status}, {} bytes ({encoding:?})", body.len())
            }
            Input::HttpFailed(request) => format!("HTTP request {request:?} got no answer"),
            Input::HttpAnswerLost { to, body, .. } => {
                format!("answer for {to} lost: {} bytes", body.len())
            }
            Input::Timeout => "timeout".to_owned(),
            Input::ClusterUp => "cluster up".to_owned(),
            Input::ClusterDown => "cluster down".to_owned(),
            Input::ClusterPresence { entity, node } => format!("{entity} is on {node:?}"),
            Input::ClusterFrame { to, frame } => {
                format!("cluster frame for {to}: {} bytes", frame.len())
            }
            Input::ClusterPublication { topic, origin, frame } => {
                format!("cluster publication on {topic} from {origin}: {} bytes", frame.len())
            }
            Input::ClusterMail { entity } => format!("cluster mail for {entity}"),
        }
    }
}
