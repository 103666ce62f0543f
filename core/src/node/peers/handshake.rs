//! The handshake with a peer (spec §7): answering its messages, installing the session,
//! losing it.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::error::{ErrorCode, ProtocolError};
use crate::handshake::{HandshakeOutput, Responder};
use crate::identity::PublicKey;
use crate::ids::EntityId;
use crate::message_type::MessageType;
use crate::node::links::Source;
use crate::node::{Event, Node};
use crate::session::Session;
use crate::stream::FailReason;
use crate::time::Timestamp;

impl Node {
    /// A transport refused a handshake message (HTTP 4xx: `Rejected`), or could not deliver it
    /// past its retries (`Unreachable`): every message waiting for that handshake fails (seed
    /// 001: no retry on 4xx).
    pub(in crate::node) fn handshake_refused(
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

    /// A durable node's handshake message got no answer from the next hop: the handshake is
    /// tried again after its backoff, and the messages waiting for it stay (spec §26.3).
    pub(in crate::node) fn handshake_unanswered(&mut self, now: Timestamp, peer: &EntityId) {
        if self.peers.get(peer).is_some_and(|p| p.session.is_none()) {
            self.handshake_failed(now, peer, ErrorCode::Timeout);
            self.reschedule_peer(peer);
        }
    }

    pub(super) fn handshake_failed(&mut self, now: Timestamp, peer: &EntityId, code: ErrorCode) {
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

    pub(super) fn install_session(&mut self, now: Timestamp, peer: &EntityId, session: Session) {
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
    pub(in crate::node) fn lose_session(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        reason: ErrorCode,
    ) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if p.retire_session().is_none() {
            return;
        }
        p.resume = None;
        p.send.retransmit_all(now);
        self.event(Event::SessionLost { peer: peer.clone(), reason });
        self.flush_peer(now, peer);
    }

    pub(super) fn send_handshake_reply(&mut self, now: Timestamp, peer: &EntityId, env: Envelope) {
        let preference = self.config.preference;
        let frame: Arc<[u8]> = Arc::from(env.encode());
        let owner = Some(crate::node::hops::Owner::Handshake(peer.clone()));
        if self.send_frame_to(now, peer, frame, preference, owner)
            == crate::node::hops::HopSend::Wait
            && let Some(p) = self.peers.get_mut(peer)
        {
            p.handshake_out = Some(env);
        }
    }

    /// A handshake message addressed to this node.
    /// `accepted`: the answer to a `HANDSHAKE_INIT`, worked out off the task
    /// ([`crate::node::Work`]).
    pub(in crate::node) fn on_handshake(
        &mut self,
        now: Timestamp,
        source: &Source,
        env: Envelope,
        accepted: Option<Box<crate::node::work::Accepted>>,
    ) {
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
            let answered = accepted.and_then(|a| a.answer_for(&self.trust, &env));
            let accepted = match answered {
                Some(answer) => answer,
                None => Responder::accept(
                    Arc::clone(&self.identity),
                    &self.trust,
                    self.handshake.clone(),
                    &env,
                    now,
                    &mut *self.rng,
                ),
            }
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
    pub(in crate::node) fn presents_another_key(&self, source: &Source, env: &Envelope) -> bool {
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
}
