//! Per-peer state: the handshake, the session, the reliable stream, reassembly, tasks, and
//! session resume (spec §"Delivery" and §"Recovery").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::links::Source;
use super::stats::TransportStats;
use super::{Event, Node, SendError, SendOptions, Timer};
use crate::backoff::Backoff;
use crate::capabilities::Transport;
use crate::chunking::{Chunk, Reassembler, split};
use crate::encoding::{b64u, decode_b64u_array};
use crate::envelope::{Envelope, NONCE_LEN, PROTOCOL_VERSION, Payload};
use crate::error::{ErrorCode, ProtocolError, UsageError};
use crate::handshake::{HandshakeOutput, Initiator, Responder};
use crate::identity::PublicKey;
use crate::ids::{EntityId, MessageId};
use crate::message_type::MessageType;
use crate::session::Session;
use crate::signed::ErrorBody;
use crate::stream::{
    ChunkHeader, FailReason, Failure, FrameSpec, InFrame, OutgoingMessage, Received, RecvStreams,
    SendStream, StreamControl, decode_data,
};
use crate::time::Timestamp;

/// Context of the proof in `SESSION_RESUME`, followed by the envelope's nonce.
const RESUME_REQUEST: &[u8] = b"request";
/// Context of the proof in `SESSION_RESUMED`, followed by the request's nonce.
const RESUME_RESPONSE: &[u8] = b"response";

/// Everything this node keeps about one remote peer.
pub(super) struct PeerState {
    pub session: Option<Session>,
    pub initiator: Option<Initiator>,
    pub responder: Option<Responder>,
    pub handshake_out: Option<Envelope>,
    pub next_handshake_at: Option<Timestamp>,
    pub handshake_backoff: Backoff,
    pub send: SendStream,
    pub recv: RecvStreams,
    pub reassembly: Reassembler,
    pub ack_due: Option<Timestamp>,
    /// Frames accepted since the last acknowledgement was sent.
    pub unacked: u64,
    pub ack_epochs: BTreeSet<u64>,
    /// What is kept about each message in the outbox besides its frames.
    pub outgoing: BTreeMap<MessageId, Outgoing>,
    /// Requests this node sent, with their deadlines.
    pub requests: BTreeMap<MessageId, Timestamp>,
    /// Requests received and not yet answered.
    pub inbound_requests: BTreeSet<MessageId>,
    /// A `SESSION_RESUME` sent and not yet answered: its id and nonce.
    pub resume: Option<(MessageId, [u8; NONCE_LEN])>,
    /// The last flush stopped at a frame waiting for a WebSocket link.
    pub blocked: bool,
    /// The chunked message being reassembled. Its chunks come on consecutive stream numbers, so
    /// any frame of another message means the sender gave up on the rest of it.
    pub assembling: Option<MessageId>,
    /// Sessions with this peer that were replaced or lost (newest last): a message for one of
    /// them is answered `SESSION_EXPIRED` rather than `SESSION_NOT_FOUND`.
    pub retired: std::collections::VecDeque<crate::ids::SessionId>,
    /// The application asked to connect: a session is wanted even with nothing to send.
    pub wanted: bool,
    /// When this peer last had a `SESSION_RESUME` honoured (at most one a second).
    pub last_resume: Option<Timestamp>,
    /// When this peer was last active: a frame of its session, handshake or stream received from
    /// it or sent to it, or a message from the application to it. Its state is forgotten after
    /// `peer_idle_timeout` without activity, once nothing is outstanding (see `idle.rs`).
    pub last_active: Timestamp,
    pub stats: TransportStats,
}

/// What a node keeps about one message in a peer's outbox besides its frames; it leaves with
/// the message (delivered or failed), so it is bounded by the outbox.
#[derive(Debug, Clone, Default)]
pub(super) struct Outgoing {
    /// The message's transport preference ([`SendOptions::prefer_websocket`]).
    pub prefer_websocket: Option<bool>,
    /// Whether its frames carry an `app_type`, which only sessions that agreed on the
    /// `app_types` capability may carry.
    pub typed: bool,
    /// The transport that took its last copy sent.
    pub carried: Option<Transport>,
}

/// Retired session ids remembered per peer.
const RETIRED_SESSIONS: usize = 4;

impl PeerState {
    /// Forgets the current session, remembering its id as retired.
    fn retire_session(&mut self) -> Option<Session> {
        let old = self.session.take()?;
        self.retired.push_back(old.id().clone());
        while self.retired.len() > RETIRED_SESSIONS {
            self.retired.pop_front();
        }
        Some(old)
    }

    /// The code for a message naming a session this side does not hold.
    pub(super) fn missing_session_code(&self, id: Option<&crate::ids::SessionId>) -> ErrorCode {
        match id {
            Some(id) if self.retired.contains(id) => ErrorCode::SessionExpired,
            _ => ErrorCode::SessionNotFound,
        }
    }

    /// Whether this side has something the peer must hear: messages, or a `forward` for
    /// messages it gave up. Either way a session is needed.
    pub fn needs_session(&self) -> bool {
        self.wanted || self.send.messages() > 0 || self.send.forward_needed()
    }

    pub fn handshaking(&self) -> bool {
        self.initiator.is_some() || self.responder.is_some() || self.handshake_out.is_some()
    }

    fn deadline(&self, config: &super::NodeConfig) -> Option<Timestamp> {
        // Frames waiting for a link are woken by the link, not by the clock; until then only
        // their send timeouts count.
        let data = if self.session.is_some() && !self.blocked {
            self.send.next_deadline(&config.stream)
        } else {
            self.send.next_expiry()
        };
        [
            data,
            self.session.as_ref().and(self.ack_due),
            self.reassembly.next_expiry(),
            self.requests.values().min().copied(),
            self.initiator.as_ref().and_then(Initiator::poll_timeout),
            self.responder.as_ref().and_then(Responder::poll_timeout),
            self.next_handshake_at
                .filter(|_| self.session.is_none() && !self.handshaking() && self.needs_session()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Compares two byte strings without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Node {
    /// Creates the state for `peer` if there is none, within `max_peers`.
    pub(super) fn ensure_peer(&mut self, now: Timestamp, peer: &EntityId) -> Result<(), SendError> {
        if self.peers.contains_key(peer) {
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(SendError::LimitReached("max_peers"));
        }
        let epoch = 1 + self.rng.next_u64() % crate::canonical::MAX_SAFE_INTEGER;
        let state = PeerState {
            session: None,
            initiator: None,
            responder: None,
            handshake_out: None,
            next_handshake_at: None,
            handshake_backoff: Backoff::new(self.config.reconnect.clone()),
            send: SendStream::new(epoch),
            recv: RecvStreams::default(),
            reassembly: Reassembler::new(self.config.reassembly.clone()),
            ack_due: None,
            unacked: 0,
            ack_epochs: BTreeSet::new(),
            outgoing: BTreeMap::new(),
            requests: BTreeMap::new(),
            inbound_requests: BTreeSet::new(),
            resume: None,
            blocked: false,
            assembling: None,
            retired: std::collections::VecDeque::new(),
            wanted: false,
            last_resume: None,
            last_active: now,
            stats: TransportStats::default(),
        };
        self.peers.insert(peer.clone(), state);
        // Every state has its timer from the start, so even one that never does anything is
        // forgotten once idle.
        self.reschedule_peer(peer);
        Ok(())
    }

    fn reachable(&self, peer: &EntityId) -> bool {
        self.bound.contains_key(peer)
            || self.route_of(peer).is_some()
            || self.trust.get(peer).is_some()
            || self.peers.get(peer).is_some_and(|p| p.session.is_some())
    }

    /// Accepts an application message into `peer`'s outbox and starts sending it.
    pub(super) fn enqueue(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        kind: MessageType,
        reply_to: Option<MessageId>,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, SendError> {
        if peer == self.identity.id() {
            return Err(UsageError::InvalidId {
                kind: "entity id",
                reason: "cannot send to itself",
            }
            .into());
        }
        if !self.reachable(peer) {
            return Err(SendError::Unreachable(peer.clone()));
        }
        let max = self.config.reassembly.max_message_bytes;
        if u64::try_from(payload.len()).unwrap_or(u64::MAX) > max {
            return Err(SendError::TooLarge { len: payload.len(), max });
        }
        if let Some(request) = &reply_to
            && !self.peers.get(peer).is_some_and(|p| p.inbound_requests.contains(request))
        {
            return Err(SendError::UnknownRequest(request.clone()));
        }
        self.ensure_peer(now, peer)?;
        self.touch_peer(now, peer);
        // An application send reopens a link the application closed (seed 001: lazy connect).
        if let Some(hop) = self.route_of(peer)
            && let Some(h) = self.hops.get_mut(&hop)
        {
            h.closed_by_app = false;
        }
        let id = MessageId::random(&mut *self.rng);
        let frames = if payload.len() > self.config.chunk_threshold {
            let total = u64::try_from(payload.len()).unwrap_or(u64::MAX);
            split(&id, &payload, self.config.chunk_size)
                .into_iter()
                .map(|c| FrameSpec {
                    message_type: MessageType::ChunkedMessage,
                    message_id: MessageId::random(&mut *self.rng),
                    reply_to: reply_to.clone(),
                    app_type: options.app_type.clone(),
                    chunk: Some(ChunkHeader {
                        id: id.clone(),
                        seq: c.sequence_number,
                        last: c.is_last,
                        total,
                        message_type: kind,
                    }),
                    body: c.data,
                })
                .collect()
        } else {
            vec![FrameSpec {
                message_type: kind,
                message_id: id.clone(),
                reply_to: reply_to.clone(),
                app_type: options.app_type.clone(),
                chunk: None,
                body: payload,
            }]
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return Err(SendError::Unreachable(peer.clone()));
        };
        p.send.push(OutgoingMessage { id: id.clone(), frames }, now, &self.config.stream)?;
        let meta = Outgoing {
            prefer_websocket: options.prefer_websocket,
            typed: options.app_type.is_some(),
            carried: None,
        };
        p.outgoing.insert(id.clone(), meta);
        if let Some(request) = &reply_to {
            p.inbound_requests.remove(request);
        }
        self.flush_peer(now, peer);
        Ok(id)
    }

    /// Counts message `id` to `peer` failed and tells the application: the one place either
    /// happens, so `TransportStats::failures` counts exactly the `Event::Failed` reported (an
    /// event never dropped, see `Node::event`).
    pub(super) fn report_failed(&mut self, peer: &EntityId, failure: Failure, reason: FailReason) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.stats.failures = p.stats.failures.saturating_add(1);
        }
        self.stats.failures = self.stats.failures.saturating_add(1);
        let Failure { id, maybe_delivered } = failure;
        self.event(Event::Failed { to: peer.clone(), id, reason, maybe_delivered });
    }

    /// Reports one message failed and removes it from the outbox.
    pub(super) fn fail_message(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        id: &MessageId,
        reason: FailReason,
    ) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if let Some(failure) = p.send.fail(id) {
            p.outgoing.remove(id);
            p.requests.remove(id);
            self.report_failed(peer, failure, reason);
            // The peer may be waiting for the frames given up: the peer's timer (due at once)
            // sends a `forward`. Not flushing here keeps failure handling free of recursion.
            let _ = now;
            self.reschedule_peer(peer);
        }
    }

    fn fail_all(&mut self, peer: &EntityId, reason: FailReason) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let failures = p.send.fail_all();
        p.outgoing.clear();
        for failure in failures {
            self.report_failed(peer, failure, reason);
        }
        // An empty outbox may leave the peer idle.
        self.reschedule_peer(peer);
    }

    /// Sends whatever `peer` has due: a handshake message, data frames, acknowledgements.
    pub(super) fn flush_peer(&mut self, now: Timestamp, peer: &EntityId) {
        if self.peers.get(peer).is_some_and(|p| p.session.is_none()) {
            self.flush_handshake(now, peer);
        } else {
            // A READY that had to wait for a link goes first.
            self.send_pending_handshake(now, peer);
            self.flush_data(now, peer);
            self.flush_control(now, peer);
        }
        self.reschedule_peer(peer);
    }

    fn flush_handshake(&mut self, now: Timestamp, peer: &EntityId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let start =
            !p.handshaking() && p.needs_session() && p.next_handshake_at.is_none_or(|t| t <= now);
        if start {
            match Initiator::start(
                Arc::clone(&self.identity),
                peer.clone(),
                &self.trust,
                self.handshake.clone(),
                now,
                &mut *self.rng,
            ) {
                Ok((initiator, init)) => {
                    p.initiator = Some(initiator);
                    p.handshake_out = Some(init);
                    p.next_handshake_at = None;
                }
                Err(_) => {
                    self.fail_all(peer, FailReason::Unreachable);
                    return;
                }
            }
        }
        self.send_pending_handshake(now, peer);
    }

    /// Sends the handshake message waiting for a transport, if any.
    fn send_pending_handshake(&mut self, now: Timestamp, peer: &EntityId) {
        let Some(env) = self.peers.get_mut(peer).and_then(|p| p.handshake_out.take()) else {
            return;
        };
        let frame: Arc<[u8]> = Arc::from(env.encode());
        let preference = self.config.preference;
        let owner = Some(super::hops::Owner::Handshake(peer.clone()));
        match self.send_frame_to(now, peer, frame, preference, owner) {
            super::hops::HopSend::Sent(_) => {
                self.remember_sent(&env.message_id, peer, env.session_id.clone());
            }
            super::hops::HopSend::Wait => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.handshake_out = Some(env);
                }
            }
            super::hops::HopSend::Failed => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.initiator = None;
                }
                self.fail_all(peer, FailReason::Unreachable);
            }
        }
    }

    fn flush_data(&mut self, now: Timestamp, peer: &EntityId) {
        let due = match self.peers.get_mut(peer) {
            Some(p) => {
                p.blocked = false;
                p.send.due(now, &self.config.stream)
            }
            None => return,
        };
        for no in due {
            let Some(p) = self.peers.get_mut(peer) else { return };
            let Some((kind, message_id, plaintext)) = p.send.plaintext(no) else { continue };
            let Some(logical) = p.send.logical_of(no).cloned() else { continue };
            let meta = p.outgoing.get(&logical);
            let prefer = meta.and_then(|m| m.prefer_websocket);
            let typed = meta.is_some_and(|m| m.typed);
            let preference = self.config.preference.for_message(prefer);
            let Some(session) = p.session.as_mut() else { return };
            // No chunks toward a peer that did not agree to chunking (spec §14), and no
            // application types toward one that did not agree to them (§13.1).
            let agreed = session.capabilities();
            let refused = (kind == MessageType::ChunkedMessage && !agreed.chunking)
                || (typed && !agreed.app_types);
            let sealed = if refused {
                Err(UsageError::WrongMessageType(kind))
            } else {
                session.seal(kind, message_id.clone(), &plaintext, now)
            };
            let env = match sealed {
                Ok(env) => env,
                Err(_) => {
                    self.fail_message(now, peer, &logical, FailReason::Rejected);
                    continue;
                }
            };
            let frame: Arc<[u8]> = Arc::from(env.encode());
            let owner = Some(super::hops::Owner::Message(peer.clone(), logical.clone()));
            match self.send_frame_to(now, peer, frame, preference, owner) {
                super::hops::HopSend::Sent(carrier) => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.send.on_sent(no, now, &self.config.stream);
                        if let (Some(t), Some(m)) = (carrier, p.outgoing.get_mut(&logical)) {
                            m.carried = Some(t);
                        }
                    }
                    self.remember_sent(&message_id, peer, env.session_id.clone());
                }
                super::hops::HopSend::Wait => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.blocked = true;
                    }
                    break;
                }
                super::hops::HopSend::Failed => {
                    self.fail_message(now, peer, &logical, FailReason::Rejected);
                }
            }
        }
    }

    /// Sends every acknowledgement still held for `ack_delay`, now (before a shutdown).
    pub(super) fn flush_held_acks(&mut self, now: Timestamp) {
        let held: Vec<EntityId> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.ack_due.is_some() && p.session.is_some())
            .map(|(id, p)| {
                p.ack_due = Some(now);
                id.clone()
            })
            .collect();
        for peer in held {
            self.flush_control(now, &peer);
            self.reschedule_peer(&peer);
        }
    }

    /// Sends acknowledgements that are due, and a `forward` announcement when needed.
    fn flush_control(&mut self, now: Timestamp, peer: &EntityId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let mut controls = Vec::new();
        if p.ack_due.is_some_and(|t| t <= now) {
            p.ack_due = None;
            p.unacked = 0;
            for epoch in std::mem::take(&mut p.ack_epochs) {
                controls.push(StreamControl { ack: p.recv.ack(epoch), forward: None });
            }
        }
        if let Some(forward) = p.send.poll_forward(now, &self.config.stream) {
            match controls.first_mut() {
                Some(c) => c.forward = Some(forward),
                None => controls.push(StreamControl { ack: None, forward: Some(forward) }),
            }
        }
        for control in controls {
            let id = MessageId::random(&mut *self.rng);
            let Some(session) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) else {
                return;
            };
            let Ok(env) = session.seal(MessageType::Ack, id, &control.encode(), now) else {
                continue;
            };
            let preference = self.config.preference;
            let _ = self.send_frame_to(now, peer, Arc::from(env.encode()), preference, None);
        }
    }

    pub(super) fn reschedule_peer(&mut self, peer: &EntityId) {
        let at = self.peers.get(peer).and_then(|p| {
            // The idle deadline counts only while nothing else keeps the peer: otherwise it
            // would be due, and fire, again and again without forgetting anything.
            let idle = self.may_forget(peer, p).then(|| p.idle_deadline(&self.config));
            [p.deadline(&self.config), idle].into_iter().flatten().min()
        });
        self.schedule(Timer::Peer(peer.clone()), at);
    }

    pub(super) fn on_peer_timer(&mut self, now: Timestamp, peer: &EntityId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        // Handshake deadlines.
        let failed = [
            p.initiator.as_mut().map(|i| i.handle_timeout(now)),
            p.responder.as_mut().map(|r| r.handle_timeout(now)),
        ];
        if failed.iter().flatten().any(Result::is_err) {
            self.handshake_failed(now, peer, ErrorCode::Timeout);
        }
        let Some(p) = self.peers.get_mut(peer) else { return };
        // Send timeouts.
        let expired = p.send.expire(now);
        for failure in expired {
            if let Some(p) = self.peers.get_mut(peer) {
                p.outgoing.remove(&failure.id);
                p.requests.remove(&failure.id);
            }
            self.report_failed(peer, failure, FailReason::Timeout);
        }
        let Some(p) = self.peers.get_mut(peer) else { return };
        // Partial chunked messages too old to finish.
        let stale = p.reassembly.expire(now);
        // Requests past their deadline.
        let late: Vec<MessageId> =
            p.requests.iter().filter(|(_, t)| **t <= now).map(|(id, _)| id.clone()).collect();
        for id in &late {
            p.requests.remove(id);
        }
        if !stale.is_empty() {
            self.event(Event::Error { peer: Some(peer.clone()), code: ErrorCode::Timeout });
        }
        for request in late {
            self.event(Event::RequestTimedOut { to: peer.clone(), request });
        }
        self.flush_peer(now, peer);
        self.forget_if_idle(now, peer);
    }

    /// A transport refused a handshake message (HTTP 4xx: `Rejected`), or could not deliver it
    /// past its retries (`Unreachable`): every message waiting for that handshake fails (seed
    /// 001: no retry on 4xx).
    pub(super) fn handshake_refused(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        reason: FailReason,
    ) {
        if self.peers.get(peer).is_some_and(|p| p.session.is_none()) {
            // A refusal (4xx) is an authentication failure; no answer at all is a timeout.
            let code = match reason {
                FailReason::Rejected => ErrorCode::AuthenticationFailed,
                _ => ErrorCode::Timeout,
            };
            self.handshake_failed(now, peer, code);
            self.fail_all(peer, reason);
        }
    }

    fn handshake_failed(&mut self, now: Timestamp, peer: &EntityId, code: ErrorCode) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        p.initiator = None;
        p.responder = None;
        p.handshake_out = None;
        let delay = p.handshake_backoff.next_delay(&mut *self.rng);
        p.next_handshake_at = Some(now.saturating_add(delay));
        // A `forward` still owed is never abandoned: the peer may hold acknowledged frames behind
        // the messages given up, and only the forward releases them. Retries back off to 60 s.
        self.event(Event::Error { peer: Some(peer.clone()), code });
        self.reschedule_peer(peer);
    }

    fn install_session(&mut self, now: Timestamp, peer: &EntityId, session: Session) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let id = session.id().clone();
        p.retire_session();
        p.session = Some(session);
        p.initiator = None;
        p.responder = None;
        // `handshake_out` may hold the READY still to send: it stays.
        p.next_handshake_at = None;
        p.resume = None;
        p.handshake_backoff.reset();
        // Everything unacknowledged goes again under the new session.
        p.send.retransmit_all(now);
        p.stats.handshakes = p.stats.handshakes.saturating_add(1);
        self.stats.handshakes = self.stats.handshakes.saturating_add(1);
        self.event(Event::SessionEstablished { peer: peer.clone(), session: id });
        self.flush_peer(now, peer);
    }

    /// Forgets the session with `peer`; the next flush starts a new handshake.
    pub(super) fn lose_session(&mut self, now: Timestamp, peer: &EntityId, reason: ErrorCode) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if p.retire_session().is_none() {
            return;
        }
        p.resume = None;
        p.send.retransmit_all(now);
        self.event(Event::SessionLost { peer: peer.clone(), reason });
        self.flush_peer(now, peer);
    }

    fn send_handshake_reply(&mut self, now: Timestamp, peer: &EntityId, env: Envelope) {
        let preference = self.config.preference;
        let frame: Arc<[u8]> = Arc::from(env.encode());
        let owner = Some(super::hops::Owner::Handshake(peer.clone()));
        if self.send_frame_to(now, peer, frame, preference, owner) == super::hops::HopSend::Wait
            && let Some(p) = self.peers.get_mut(peer)
        {
            p.handshake_out = Some(env);
        }
    }

    /// A handshake message addressed to this node.
    pub(super) fn on_handshake(&mut self, now: Timestamp, source: &Source, env: Envelope) {
        let peer = env.sender_id.clone();
        if self.presents_another_key(source, &env) {
            // A link or HTTP call bound to a key (spec §2.3) cannot handshake with another.
            self.answer(now, source, &env, ErrorCode::AuthenticationFailed);
            if env.message_type == MessageType::HandshakeInitAck
                && self.peers.get(&peer).is_some_and(|p| p.initiator.is_some())
            {
                self.handshake_failed(now, &peer, ErrorCode::AuthenticationFailed);
            }
            return;
        }
        if env.message_type == MessageType::HandshakeInit {
            // Simultaneous open: the handshake started by the smaller entity id wins.
            if self.peers.get(&peer).is_some_and(|p| p.initiator.is_some())
                && self.identity.id() < &peer
            {
                return;
            }
            // Authorize and verify first: no state is created for an entity before that.
            let accepted = Responder::accept(
                Arc::clone(&self.identity),
                &self.trust,
                self.handshake.clone(),
                &env,
                now,
                &mut *self.rng,
            )
            // A replayed INIT must not abandon a handshake in progress.
            .and_then(|r| self.guard.check_fresh(&env, now).map(|()| r));
            match accepted {
                Ok((responder, ack)) => {
                    if self.ensure_peer(now, &peer).is_err() {
                        self.answer(now, source, &env, ErrorCode::RateLimitExceeded);
                        return;
                    }
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.initiator = None;
                        p.handshake_out = None;
                        p.responder = Some(responder);
                        p.touch(now);
                    }
                    self.send_handshake_reply(now, &peer, ack);
                }
                Err(e) => self.answer(now, source, &env, e.code()),
            }
            self.reschedule_peer(&peer);
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            self.answer(now, source, &env, ErrorCode::InvalidState);
            return;
        };
        let result = match env.message_type {
            MessageType::HandshakeInitAck
            | MessageType::SessionEstablished
            | MessageType::Ready => {
                p.initiator.as_mut().map(|i| i.handle(&env, now, &mut *self.rng))
            }
            _ => p.responder.as_mut().map(|r| r.handle(&env, now, &mut *self.rng)),
        };
        // Only a message the handshake accepted counts as activity.
        if matches!(result, Some(Ok(_))) {
            p.touch(now);
        }
        match result {
            None => self.answer(now, source, &env, ErrorCode::InvalidState),
            Some(Ok(HandshakeOutput::Send(reply))) => self.send_handshake_reply(now, &peer, reply),
            Some(Ok(HandshakeOutput::Complete { send, session })) => {
                if let Some(ready) = send {
                    self.send_handshake_reply(now, &peer, ready);
                }
                self.install_session(now, &peer, *session);
            }
            Some(Err(e)) => {
                let code = e.code();
                if !matches!(e, ProtocolError::PeerReported { .. }) {
                    self.answer(now, source, &env, code);
                }
                self.handshake_failed(now, &peer, code);
            }
        }
        self.reschedule_peer(&peer);
    }

    /// Whether a `HANDSHAKE_INIT` or `HANDSHAKE_INIT_ACK` from a source bound to a key (an
    /// entity the trust store does not hold, admitted under the open policy) presents another
    /// `identity_key` (spec §2.3). The store's own key is checked by the handshake itself.
    fn presents_another_key(&self, source: &Source, env: &Envelope) -> bool {
        if !matches!(env.message_type, MessageType::HandshakeInit | MessageType::HandshakeInitAck)
            || self.trust.get(&env.sender_id).is_some()
            || self.bound_entity(source).as_ref() != Some(&env.sender_id)
        {
            return false;
        }
        let Some(bound) = self.bound_key(source) else { return false };
        // A payload without a well-formed key is refused by the handshake with its own code.
        let presented = env
            .payload
            .value()
            .get("identity_key")
            .and_then(serde_json::Value::as_str)
            .and_then(|k| PublicKey::from_b64u(k).ok());
        presented.is_some_and(|k| k != bound)
    }

    /// A session message addressed to this node.
    pub(super) fn on_session(&mut self, now: Timestamp, source: &Source, env: Envelope) {
        let peer = env.sender_id.clone();
        let transport = match source {
            Source::Link(_) => Transport::WebSocket,
            Source::Http(..) | Source::Hop(_) => Transport::Http,
        };
        let opened = match self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) {
            Some(session) if Some(session.id()) == env.session_id.as_ref() => {
                session.open(&env, now)
            }
            _ => Err(ProtocolError::WrongSession),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(ProtocolError::WrongSession) => {
                let code = self.peers.get(&peer).map_or(ErrorCode::SessionNotFound, |p| {
                    p.missing_session_code(env.session_id.as_ref())
                });
                self.answer(now, source, &env, code);
                return;
            }
            Err(e) => {
                self.answer(now, source, &env, e.code());
                return;
            }
        };
        let events_full = self.events_full();
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.touch(now);
        p.stats.received(transport, opened.plaintext.len());
        match opened.message_type {
            MessageType::Ack => match StreamControl::decode(&opened.plaintext) {
                Ok(control) => self.on_control(now, &peer, control),
                Err(e) => self.answer(now, source, &env, e.code()),
            },
            MessageType::CapabilityExchange => {}
            _ => {
                // Backpressure: while the application has not drained its events, data frames
                // are refused unacknowledged; the sender re-sends them later.
                if events_full {
                    return;
                }
                let (header, body) = match decode_data(&opened.plaintext) {
                    // Chunk fields belong in exactly the CHUNKED_MESSAGE frames (spec §13.1).
                    Ok(v)
                        if v.0.chunk.is_some()
                            == (opened.message_type == MessageType::ChunkedMessage) =>
                    {
                        v
                    }
                    Ok(_) => {
                        self.answer(now, source, &env, ErrorCode::InvalidMessage);
                        return;
                    }
                    Err(e) => {
                        self.answer(now, source, &env, e.code());
                        return;
                    }
                };
                // A chunk this side could never reassemble is refused before it is acknowledged,
                // so the sender learns it failed instead of believing it delivered (spec §14).
                if let Some(c) = &header.chunk {
                    let limits = &self.config.reassembly;
                    if c.total > limits.max_message_bytes || c.seq >= limits.max_chunks {
                        self.answer(now, source, &env, ErrorCode::MessageTooLarge);
                        return;
                    }
                }
                let epoch = header.epoch;
                let frame = InFrame {
                    message_type: opened.message_type,
                    message_id: opened.message_id,
                    header,
                    body: body.to_vec(),
                };
                let received = p.recv.accept(frame, &self.config.stream);
                if received != Received::Dropped {
                    p.ack_epochs.insert(epoch);
                    p.unacked = p.unacked.saturating_add(1);
                    let due = if p.unacked >= self.config.stream.ack_every.max(1) {
                        now
                    } else {
                        now.saturating_add(self.config.stream.ack_delay)
                    };
                    p.ack_due = Some(p.ack_due.map_or(due, |d| d.min(due)));
                }
                if let Received::Deliver(frames) = received {
                    self.deliver_frames(now, &peer, frames);
                }
            }
        }
        self.flush_peer(now, &peer);
    }

    fn on_control(&mut self, now: Timestamp, peer: &EntityId, control: StreamControl) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if let Some(ack) = control.ack {
            let done = p.send.on_ack(&ack, now);
            if let Some(rtt) = p.send.srtt() {
                p.stats.last_rtt = Some(rtt);
                self.stats.last_rtt = Some(rtt);
            }
            for id in done {
                let transport = self
                    .peers
                    .get_mut(peer)
                    .and_then(|p| p.outgoing.remove(&id))
                    .and_then(|m| m.carried);
                self.event(Event::Delivered { to: peer.clone(), id, transport });
            }
        }
        if let Some(forward) = control.forward
            && let Some(p) = self.peers.get_mut(peer)
        {
            let received = p.recv.forward(forward, &self.config.stream);
            p.ack_epochs.insert(forward.epoch);
            p.ack_due = Some(now);
            if let Received::Deliver(frames) = received {
                self.deliver_frames(now, peer, frames);
            }
        }
    }

    fn deliver_frames(&mut self, now: Timestamp, peer: &EntityId, frames: Vec<InFrame>) {
        for f in frames {
            let Some(p) = self.peers.get_mut(peer) else { return };
            let current = f.header.chunk.as_ref().map(|c| c.id.clone());
            if let Some(orphan) = p.assembling.take().filter(|a| Some(a) != current.as_ref()) {
                p.reassembly.discard(&orphan);
            }
            match f.header.chunk {
                Some(c) => {
                    let chunk = Chunk {
                        chunk_id: c.id.clone(),
                        sequence_number: c.seq,
                        is_last: c.last,
                        total_len: c.total,
                        data: f.body,
                    };
                    match p.reassembly.insert(chunk, now) {
                        Ok(Some(message)) => self.deliver_message(
                            peer,
                            c.message_type,
                            c.id,
                            (f.header.reply_to, f.header.app_type),
                            message,
                        ),
                        Ok(None) => p.assembling = Some(c.id),
                        Err(e) => {
                            self.event(Event::Error { peer: Some(peer.clone()), code: e.code() });
                            self.notify_peer(now, peer, e.code(), Some(c.id));
                        }
                    }
                }
                None => self.deliver_message(
                    peer,
                    f.message_type,
                    f.message_id,
                    (f.header.reply_to, f.header.app_type),
                    f.body,
                ),
            }
        }
    }

    /// Hands one message to the application. `reply_to` counts in a `TASK_RESPONSE` only and
    /// `app_type` in a message only; elsewhere both are ignored (spec §13.1).
    fn deliver_message(
        &mut self,
        peer: &EntityId,
        kind: MessageType,
        id: MessageId,
        (reply_to, app_type): (Option<MessageId>, Option<crate::ids::AppType>),
        payload: Vec<u8>,
    ) {
        let from = peer.clone();
        match kind {
            MessageType::PeerMessage | MessageType::Broadcast | MessageType::Status => {
                self.event(Event::Message { from, id, kind, app_type, payload })
            }
            MessageType::TaskRequest => {
                let max = self.config.max_pending_requests;
                if let Some(p) = self.peers.get_mut(peer) {
                    if p.inbound_requests.len() >= max {
                        p.inbound_requests.pop_first();
                    }
                    p.inbound_requests.insert(id.clone());
                }
                self.event(Event::Request { from, id, payload })
            }
            MessageType::TaskResponse => {
                let pending = reply_to.and_then(|r| {
                    self.peers.get_mut(peer).and_then(|p| p.requests.remove_entry(&r))
                });
                if let Some((request, _)) = pending {
                    self.event(Event::Response { from, request, payload });
                }
            }
            _ => self.event(Event::Error { peer: Some(from), code: ErrorCode::InvalidMessage }),
        }
    }

    /// An `ERROR` from a peer or a next hop.
    pub(super) fn on_error(&mut self, now: Timestamp, env: &Envelope) {
        let Ok(body) = ErrorBody::parse(&env.payload) else { return };
        let sender = env.sender_id.clone();
        // An `ERROR` that names a session is about that session only (spec §15.4): one naming
        // a session the sender lost earlier may arrive during, or after, the handshake that
        // replaced it.
        let named = env.session_id.as_ref();
        // An error during our handshake with the sender ends that handshake.
        if let Some(p) = self.peers.get_mut(&sender)
            && let Some(i) = p.initiator.as_mut()
            && named.is_none_or(|s| i.session_id() == Some(s))
        {
            if let Err(e) = i.handle(env, now, &mut *self.rng) {
                self.handshake_failed(now, &sender, e.code());
            }
            return;
        }
        let recent = body.in_reply_to.as_ref().and_then(|id| self.recent_send(id));
        let about = recent.as_ref().map(|(peer, _)| peer.clone());
        // An answer about an older session says nothing about the current one (it was delayed,
        // or crossed the new handshake). The session it names decides; without one, the session
        // the frame it answers was last sealed under (a guess: a frame re-sent under a new
        // session keeps its message id, so an answer to its older copy looks current).
        let current = self.peers.get(&sender).and_then(|p| p.session.as_ref()).map(|s| s.id());
        let stale = match named {
            Some(named) => Some(named) != current,
            None => recent.as_ref().is_some_and(|(_, sealed)| sealed.as_ref() != current),
        };
        match body.code {
            // Only the peer itself can declare its session gone.
            ErrorCode::SessionNotFound | ErrorCode::SessionExpired
                if current.is_some() && !stale =>
            {
                self.lose_session(now, &sender, body.code);
            }
            // The peer refused a frame it can never accept: that message fails now, not at its
            // send timeout.
            ErrorCode::MessageTooLarge if about.as_ref() == Some(&sender) => {
                let logical = body.in_reply_to.as_ref().and_then(|env_id| {
                    self.peers
                        .get(&sender)
                        .and_then(|p| p.send.logical_by_envelope(env_id))
                        .cloned()
                });
                if let Some(id) = logical {
                    self.fail_message(now, &sender, &id, FailReason::Rejected);
                }
            }
            // Only the next hop the frame went through can declare its recipient unknown.
            ErrorCode::UnknownRecipient => {
                let from_our_hop = about.as_ref().is_some_and(|a| {
                    self.route_of(a).as_ref() == Some(&sender) && !self.bound.contains_key(a)
                });
                if let Some(peer) = about.clone().filter(|_| from_our_hop) {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.initiator = None;
                        p.handshake_out = None;
                    }
                    self.fail_all(&peer, FailReason::Unreachable);
                }
            }
            _ => {}
        }
        self.event(Event::Error { peer: Some(about.unwrap_or(sender)), code: body.code });
    }

    /// Tells `peer` (through its route) that something it sent failed with `code`.
    fn notify_peer(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        code: ErrorCode,
        about: Option<MessageId>,
    ) {
        let err = crate::signed::error_message(
            &self.identity,
            Some(peer.clone()),
            None,
            code,
            about,
            now,
            &mut *self.rng,
        );
        let preference = self.config.preference;
        let _ = self.send_frame_to(now, peer, Arc::from(err.encode()), preference, None);
    }

    /// After a WebSocket link to `hop` came back: asks each peer behind it to resume its
    /// session, proving possession of the resumption secret.
    pub(super) fn resume_sessions_via(&mut self, now: Timestamp, hop: &EntityId) {
        for peer in self.peers_via(hop) {
            let mut nonce = [0u8; NONCE_LEN];
            self.rng.fill_bytes(&mut nonce);
            let message_id = MessageId::random(&mut *self.rng);
            let Some(p) = self.peers.get_mut(&peer) else { continue };
            let Some(session) = p.session.as_ref() else { continue };
            if !session.capabilities().resume {
                continue;
            }
            let proof = session.resumption_proof(&[RESUME_REQUEST, &nonce].concat());
            let mut env = Envelope {
                message_id: message_id.clone(),
                message_type: MessageType::SessionResume,
                version: PROTOCOL_VERSION.to_owned(),
                timestamp: now,
                seq: 0,
                session_id: Some(session.id().clone()),
                sender_id: self.identity.id().clone(),
                recipient_id: Some(peer.clone()),
                payload: Payload::trusted(json!({"proof": b64u(&proof)})),
                nonce,
                signature: None,
            };
            env.sign(&self.identity);
            p.resume = Some((message_id, nonce));
            p.touch(now);
            let preference = self.config.preference;
            // Straight on the link that just came up: the transport decision may still hold
            // traffic back from it, but this message is what proves the link's session.
            let link = self.hops.get(hop).and_then(|h| h.ws_link);
            match link {
                Some(link) => self.transmit(link, Arc::from(env.encode())),
                None => {
                    let _ =
                        self.send_frame_to(now, &peer, Arc::from(env.encode()), preference, None);
                }
            }
        }
    }

    /// `SESSION_RESUME` from a peer (already signature- and replay-checked).
    pub(super) fn on_resume(&mut self, now: Timestamp, source: &Source, env: &Envelope) {
        let peer = env.sender_id.clone();
        let proof = env.payload.value().get("proof").and_then(|v| v.as_str());
        let proof = proof.and_then(|p| decode_b64u_array::<32>("proof", p).ok());
        let session = self.peers.get(&peer).and_then(|p| p.session.as_ref());
        let Some(session) = session.filter(|s| Some(s.id()) == env.session_id.as_ref()) else {
            let code = self.peers.get(&peer).map_or(ErrorCode::SessionNotFound, |p| {
                p.missing_session_code(env.session_id.as_ref())
            });
            self.answer(now, source, env, code);
            return;
        };
        if !session.capabilities().resume {
            self.answer(now, source, env, ErrorCode::InvalidState);
            return;
        }
        // At most one honoured resume a second per peer: each re-sends the whole window.
        let recent = self.peers.get(&peer).and_then(|p| p.last_resume);
        if recent
            .is_some_and(|t| now.saturating_duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.answer(now, source, env, ErrorCode::RateLimitExceeded);
            return;
        }
        let expected = session.resumption_proof(&[RESUME_REQUEST, &env.nonce].concat());
        if !proof.is_some_and(|p| constant_time_eq(&p, &expected)) {
            self.answer(now, source, env, ErrorCode::AuthenticationFailed);
            return;
        }
        let answer = session.resumption_proof(&[RESUME_RESPONSE, &env.nonce].concat());
        let session_id = session.id().clone();
        let payload = Payload::trusted(json!({
            "proof": b64u(&answer),
            "in_reply_to": env.message_id.as_str(),
        }));
        let reply = crate::signed::signed_message(
            &self.identity,
            MessageType::SessionResumed,
            Some(peer.clone()),
            Some(session_id.clone()),
            payload,
            now,
            &mut *self.rng,
        );
        if let Ok(reply) = reply {
            let preference = self.config.preference;
            let _ = self.send_frame_to(now, &peer, Arc::from(reply.encode()), preference, None);
        }
        self.resumed(now, &peer, session_id);
    }

    /// `SESSION_RESUMED` from a peer (already signature- and replay-checked).
    pub(super) fn on_resumed(&mut self, now: Timestamp, env: &Envelope) {
        let peer = env.sender_id.clone();
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let (Some((request, nonce)), Some(session)) = (p.resume.as_ref(), p.session.as_ref())
        else {
            return;
        };
        let answers = env.payload.value().get("in_reply_to").and_then(|v| v.as_str());
        let proof = env.payload.value().get("proof").and_then(|v| v.as_str());
        let proof = proof.and_then(|p| decode_b64u_array::<32>("proof", p).ok());
        let expected = session.resumption_proof(&[RESUME_RESPONSE, nonce.as_slice()].concat());
        if answers != Some(request.as_str())
            || !proof.is_some_and(|p| constant_time_eq(&p, &expected))
        {
            return;
        }
        let session_id = session.id().clone();
        p.resume = None;
        self.resumed(now, &peer, session_id);
    }

    fn resumed(&mut self, now: Timestamp, peer: &EntityId, session: crate::ids::SessionId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.touch(now);
            p.last_resume = Some(now);
            p.send.retransmit_all(now);
            p.stats.resumes = p.stats.resumes.saturating_add(1);
        }
        self.stats.resumes = self.stats.resumes.saturating_add(1);
        self.event(Event::SessionResumed { peer: peer.clone(), session });
        self.flush_peer(now, peer);
    }
}
