//! Sending to a peer: accepting a message into its outbox, flushing handshake messages, data
//! frames and acknowledgements, and reporting failures (spec §13.3).

use std::sync::Arc;

use super::Outgoing;
use crate::chunking::split;
use crate::error::UsageError;
use crate::handshake::Initiator;
use crate::ids::{EntityId, MessageId};
use crate::message_type::MessageType;
use crate::node::{Event, Node, SendError, SendOptions};
use crate::stream::{ChunkHeader, FailReason, Failure, FrameSpec, OutgoingMessage, StreamControl};
use crate::time::Timestamp;

impl Node {
    /// Accepts an application message into `peer`'s outbox and starts sending it.
    pub(in crate::node) fn enqueue(
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
        let first = p.send.next_no();
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
        let deadline = now.saturating_add(self.config.stream.send_timeout);
        self.persist_accepted(peer, first, deadline, options.prefer_websocket);
        self.flush_peer(now, peer);
        Ok(id)
    }

    /// Counts message `id` to `peer` failed and tells the application: the one place either
    /// happens, so `TransportStats::failures` counts exactly the `Event::Failed` reported (an
    /// event never dropped, see `Node::event`).
    pub(in crate::node) fn report_failed(
        &mut self,
        peer: &EntityId,
        failure: Failure,
        reason: FailReason,
    ) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.stats.failures = p.stats.failures.saturating_add(1);
        }
        // Its stored frames go before the application hears of it.
        self.persist_removed(peer);
        self.stats.failures = self.stats.failures.saturating_add(1);
        let Failure { id, maybe_delivered } = failure;
        self.event(Event::Failed { to: peer.clone(), id, reason, maybe_delivered });
    }

    /// Reports one message failed and removes it from the outbox.
    pub(in crate::node) fn fail_message(
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

    pub(super) fn fail_all(&mut self, peer: &EntityId, reason: FailReason) {
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
    pub(in crate::node) fn flush_peer(&mut self, now: Timestamp, peer: &EntityId) {
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

    pub(super) fn flush_handshake(&mut self, now: Timestamp, peer: &EntityId) {
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
    pub(super) fn send_pending_handshake(&mut self, now: Timestamp, peer: &EntityId) {
        let Some(env) = self.peers.get_mut(peer).and_then(|p| p.handshake_out.take()) else {
            return;
        };
        let frame = self.frame_toward(peer, &env);
        let preference = self.config.preference;
        let owner = Some(crate::node::hops::Owner::Handshake(peer.clone()));
        match self.send_frame_to(now, peer, frame, preference, owner) {
            crate::node::hops::HopSend::Sent(_) => {
                self.remember_sent(&env.message_id, peer, env.session_id.clone());
            }
            crate::node::hops::HopSend::Wait => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.handshake_out = Some(env);
                }
            }
            crate::node::hops::HopSend::Failed => {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.initiator = None;
                }
                self.fail_all(peer, FailReason::Unreachable);
            }
        }
    }

    pub(super) fn flush_data(&mut self, now: Timestamp, peer: &EntityId) {
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
            let frame = self.frame_toward(peer, &env);
            let owner = Some(crate::node::hops::Owner::Message(peer.clone(), logical.clone()));
            match self.send_frame_to(now, peer, frame, preference, owner) {
                crate::node::hops::HopSend::Sent(carrier) => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.send.on_sent(no, now, &self.config.stream);
                        if let (Some(t), Some(m)) = (carrier, p.outgoing.get_mut(&logical)) {
                            m.carried = Some(t);
                        }
                    }
                    self.remember_sent(&message_id, peer, env.session_id.clone());
                }
                crate::node::hops::HopSend::Wait => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.blocked = true;
                    }
                    break;
                }
                crate::node::hops::HopSend::Failed => {
                    self.fail_message(now, peer, &logical, FailReason::Rejected);
                }
            }
        }
    }

    /// Sends every acknowledgement still held for `ack_delay`, now (before a shutdown).
    pub(in crate::node) fn flush_held_acks(&mut self, now: Timestamp) {
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
    pub(in crate::node) fn flush_control(&mut self, now: Timestamp, peer: &EntityId) {
        let mut controls = Vec::new();
        // A durable node acknowledges nothing its store does not hold yet.
        let held = self.acks_held(peer);
        let Some(p) = self.peers.get_mut(peer) else { return };
        if p.ack_due.is_some_and(|t| t <= now) && !held {
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
            let frame = self.frame_toward(peer, &env);
            let _ = self.send_frame_to(now, peer, frame, preference, None);
        }
    }
}
