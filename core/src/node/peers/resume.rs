//! Resuming a session on a new link without a handshake (spec §15.3).

use std::sync::Arc;

use serde_json::json;

use super::constant_time_eq;
use crate::encoding::{b64u, decode_b64u_array};
use crate::envelope::{Envelope, NONCE_LEN, PROTOCOL_VERSION, Payload};
use crate::error::ErrorCode;
use crate::ids::{EntityId, MessageId};
use crate::message_type::MessageType;
use crate::node::links::Source;
use crate::node::{Event, Node};
use crate::time::Timestamp;

/// Context of the proof in `SESSION_RESUME`, followed by the envelope's nonce.
const RESUME_REQUEST: &[u8] = b"request";
/// Context of the proof in `SESSION_RESUMED`, followed by the request's nonce.
const RESUME_RESPONSE: &[u8] = b"response";

impl Node {
    /// After a WebSocket link to `hop` came back: asks each peer behind it to resume its
    /// session, proving possession of the resumption secret.
    pub(in crate::node) fn resume_sessions_via(&mut self, now: Timestamp, hop: &EntityId) {
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
                verified: crate::envelope::Verified::NO,
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
    pub(in crate::node) fn on_resume(&mut self, now: Timestamp, source: &Source, env: &Envelope) {
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
    pub(in crate::node) fn on_resumed(&mut self, now: Timestamp, env: &Envelope) {
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

    pub(super) fn resumed(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        session: crate::ids::SessionId,
    ) {
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
