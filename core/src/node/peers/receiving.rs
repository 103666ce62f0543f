//! Receiving from a peer: opening its session messages, delivering frames in order to the
//! application, acting on acknowledgements and on `ERROR`s (spec §13.4, §13.5, §15.4).

use std::sync::Arc;

use crate::capabilities::Transport;
use crate::chunking::Chunk;
use crate::envelope::Envelope;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{EntityId, MessageId};
use crate::message_type::MessageType;
use crate::node::links::Source;
use crate::node::{Event, Node};
use crate::signed::ErrorBody;
use crate::stream::{FailReason, InFrame, Received, StreamControl, decode_data};
use crate::time::Timestamp;

impl Node {
    /// A session message addressed to this node.
    pub(in crate::node) fn on_session(&mut self, now: Timestamp, source: &Source, env: Envelope) {
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
                let before = self.config.durable.then(|| p.recv.positions());
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
                // After the messages went to the application, before the `ACK` that covers
                // them (queued by the flush below).
                self.persist_positions(&peer, before);
            }
        }
        self.flush_peer(now, &peer);
    }

    pub(super) fn on_control(&mut self, now: Timestamp, peer: &EntityId, control: StreamControl) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if let Some(ack) = control.ack {
            let done = p.send.on_ack(&ack, now);
            if let Some(rtt) = p.send.srtt() {
                p.stats.last_rtt = Some(rtt);
                self.stats.last_rtt = Some(rtt);
            }
            // Their stored frames go before the application hears they were delivered.
            self.persist_removed(peer);
            for id in done {
                let transport = self
                    .peers
                    .get_mut(peer)
                    .and_then(|p| p.outgoing.remove(&id))
                    .and_then(|m| m.carried);
                self.event(Event::Delivered { to: peer.clone(), id, transport });
            }
        }
        let before = self.positions_before(peer);
        if let Some(forward) = control.forward
            && let Some(p) = self.peers.get_mut(peer)
        {
            let received = p.recv.forward(forward, &self.config.stream);
            p.ack_epochs.insert(forward.epoch);
            p.ack_due = Some(now);
            if let Received::Deliver(frames) = received {
                self.deliver_frames(now, peer, frames);
            }
            self.persist_positions(peer, before);
        }
    }

    pub(super) fn deliver_frames(&mut self, now: Timestamp, peer: &EntityId, frames: Vec<InFrame>) {
        for f in frames {
            let Some(p) = self.peers.get_mut(peer) else { return };
            let current = f.header.chunk.as_ref().map(|c| c.id.clone());
            if let Some(orphan) = p.assembling.take().filter(|a| Some(a) != current.as_ref()) {
                p.reassembly.discard(&orphan);
                self.persist_chunks_done(peer);
            }
            let Some(p) = self.peers.get_mut(peer) else { return };
            // A durable node stores each chunk it holds: its receive position moves past it.
            let stored = (self.config.durable && f.header.chunk.is_some()).then(|| InFrame {
                message_type: f.message_type,
                message_id: f.message_id.clone(),
                header: f.header.clone(),
                body: f.body.clone(),
            });
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
                        Ok(Some(message)) => {
                            self.deliver_message(
                                peer,
                                c.message_type,
                                c.id,
                                (f.header.reply_to, f.header.app_type),
                                message,
                            );
                            // Deleted with the position that passes the last chunk.
                            if let Some(p) = self.peers.get_mut(peer) {
                                let done = std::mem::take(&mut p.stored_chunks);
                                p.freed_chunks.extend(done);
                            }
                        }
                        Ok(None) => {
                            p.assembling = Some(c.id);
                            if let Some(frame) = stored {
                                self.persist_chunk(peer, &frame);
                            }
                        }
                        Err(e) => {
                            self.persist_chunks_done(peer);
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
    pub(super) fn deliver_message(
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
    pub(in crate::node) fn on_error(&mut self, now: Timestamp, env: &Envelope) {
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
    pub(super) fn notify_peer(
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
}
