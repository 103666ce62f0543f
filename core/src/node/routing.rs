//! Frames in: checks, relaying to other entities, mailboxes for offline entities, and this
//! node's HTTP server side (spec §"Routing").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;

use super::links::Source;
use super::{HttpCall, Node, Output, RequestId, Timer};
use crate::auth::Bearer;
use crate::binary_envelope::{self, Head};
use crate::capabilities::Transport;
use crate::envelope::{Envelope, Payload};
use crate::error::ErrorCode;
use crate::http_body;
use crate::identity::PublicKey;
use crate::ids::{EntityId, MessageId, SessionId};
use crate::message_type::MessageType;
use crate::rate_limit::TokenBucket;
use crate::signed::{error_message, signed_message};
use crate::time::Timestamp;
use crate::transport::TransportPreference;
use crate::wire::{self, Encoding};

/// Entities the trust store does not hold, admitted under the open policy by a token that binds
/// them to a key (spec §2.3): until the token expires, replies to them may wait in their
/// mailbox (spec §19). At most `max` entries; past that the one whose token expires first goes.
#[derive(Debug, Default)]
pub(super) struct Admissions {
    until: BTreeMap<EntityId, Timestamp>,
    by_expiry: BTreeSet<(Timestamp, EntityId)>,
}

impl Admissions {
    /// Admits `entity` until `expires` (the newest token counts, earlier or later).
    pub fn admit(&mut self, entity: &EntityId, expires: Timestamp, now: Timestamp, max: usize) {
        if let Some(old) = self.until.remove(entity) {
            self.by_expiry.remove(&(old, entity.clone()));
        }
        if expires <= now {
            return;
        }
        while self.by_expiry.first().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, e)) = self.by_expiry.pop_first() {
                self.until.remove(&e);
            }
        }
        while self.until.len() >= max.max(1) {
            let Some((_, e)) = self.by_expiry.pop_first() else { break };
            self.until.remove(&e);
        }
        self.until.insert(entity.clone(), expires);
        self.by_expiry.insert((expires, entity.clone()));
    }

    /// Whether `entity` holds an admission still valid at `now`.
    pub fn holds(&self, entity: &EntityId, now: Timestamp) -> bool {
        self.until.get(entity).is_some_and(|t| *t > now)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }
}

/// Whether undecodable bytes carry `"type":"ERROR"` (so they are not answered with an ERROR).
pub(super) fn looks_like_error(bytes: &[u8]) -> bool {
    if Encoding::of(bytes) == Encoding::Binary {
        return bytes.get(1) == Some(&binary_envelope::type_code(MessageType::Error));
    }
    const NEEDLE: &[u8] = b"\"type\":\"ERROR\"";
    bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

impl Node {
    /// One frame from any source, in the encoding its carrier says (`kind`: the WebSocket
    /// opcode; HTTP bodies are JSON): decode, check the sender binding, then relay or handle. A
    /// binary frame for another entity is relayed on its header alone (spec §27.4).
    pub(super) fn process_frame(
        &mut self,
        now: Timestamp,
        source: Source,
        bytes: &[u8],
        kind: Encoding,
    ) {
        let max = self.config.limits.max_frame_bytes;
        let me = self.identity.id();
        let (decoded, head) = match kind {
            Encoding::Binary => match binary_envelope::head(bytes, max) {
                Ok(head) if head.recipient_id.as_ref().is_some_and(|to| to != me) => {
                    (Ok((head, None)), None)
                }
                Ok(head) => {
                    let env = binary_envelope::decode(bytes, max);
                    (env.map(|env| (Head::of(&env), Some(env))), Some(head))
                }
                Err(e) => (Err(e), None),
            },
            Encoding::Json => {
                (Envelope::decode(bytes, max).map(|env| (Head::of(&env), Some(env))), None)
            }
        };
        let (head, env) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                match head {
                    // A binary frame whose header reads but whose payload does not: the answer
                    // names the message and goes to its sender, as a relay's would have
                    // (spec §27.4); `answer_head` never answers an ERROR.
                    Some(head) => self.answer_head(now, &source, &head, e.code()),
                    // Never answer an ERROR with an ERROR, even a malformed one.
                    None => {
                        self.stats.rejected = self.stats.rejected.saturating_add(1);
                        if !looks_like_error(bytes) {
                            self.reply_error(now, &source, None, e.code(), None);
                        }
                    }
                }
                return;
            }
        };
        if let Some(bound) = self.bound_entity(&source)
            && head.sender_id != bound
        {
            // A link cannot send as an entity it is not.
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            if head.message_type != MessageType::Error {
                self.reply_error(now, &source, None, ErrorCode::AuthenticationFailed, None);
            }
            if let Source::Link(link) = source {
                self.close_link(now, link, Some(ErrorCode::AuthenticationFailed));
            }
            return;
        }
        if head.sender_id == *self.identity.id() {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return;
        }
        match (head.recipient_id.clone(), env) {
            (Some(to), _) if to != *self.identity.id() => {
                self.forward(now, &source, &head, bytes, &to)
            }
            (_, Some(env)) => self.take_local(now, source, env, bytes.len()),
            // Only frames for another entity skip the whole decode.
            (_, None) => {}
        }
    }

    /// Relays an envelope for another entity: to its link, else its mailbox (spec §"Routing").
    fn forward(
        &mut self,
        now: Timestamp,
        source: &Source,
        head: &Head,
        bytes: &[u8],
        to: &EntityId,
    ) {
        let from_client = self.bound_entity(source).is_some();
        if !self.config.relay || !from_client {
            // Only a relay forwards, and only for its own clients: no forwarding loops.
            self.answer_head(now, source, head, ErrorCode::UnknownRecipient);
            return;
        }
        if let Err(code) = self.deliver_to_entity(now, to, Arc::from(bytes)) {
            self.answer_head(now, source, head, code);
        }
    }

    /// Delivers a frame to an entity connected to this node (or waiting on it): its inbound
    /// link, else its mailbox (answering a held poll at once).
    pub(super) fn deliver_to_entity(
        &mut self,
        now: Timestamp,
        to: &EntityId,
        frame: Arc<[u8]>,
    ) -> Result<Transport, ErrorCode> {
        use super::cluster::ClusterRoute;
        if let Some(link) = self.bound.get(to).copied() {
            // A binary frame relayed on its header alone is decoded whole if its link speaks
            // JSON: its sender hears when it does not decode (spec §27.4).
            self.try_transmit(link, frame)?;
            return Ok(Transport::WebSocket);
        }
        // An HTTP caller of this node (a poll held here, or the `POST` being answered) takes its
        // frames from the mailbox here, cluster or not (spec §21).
        let calling_here = self.polls.contains_key(to)
            || self.posting.as_ref() == Some(to)
            || self.calls_here(now, to);
        // A cluster node: the node that holds the entity's link knows it, even if this one
        // never met it (open policy).
        let route = if calling_here { ClusterRoute::Alone } else { self.cluster_route(now, to) };
        if let ClusterRoute::Node(_) = route {
            return self.cluster_send(route, to, frame);
        }
        // Trusted, in session, or admitted under the open policy with a token still valid.
        let known = self.trust.get(to).is_some()
            || self.peers.get(to).is_some_and(|p| p.session.is_some())
            || self.admitted.holds(to, now);
        if !known {
            // A cluster node under the open policy cannot tell an entity that exists nowhere
            // from one whose presence has not reached it yet (it linked to another node a
            // moment ago): "retry later", so the sender's retransmission finds it, and a
            // recipient that never appears fails at the sender's own timeout.
            let open = self.trust.policy() == crate::identity::TrustPolicy::Open;
            if open && !matches!(route, ClusterRoute::Alone) {
                return Err(ErrorCode::MailboxFull);
            }
            return Err(ErrorCode::UnknownRecipient);
        }
        // A cluster node: its shared mailbox (§19 in a cluster), or "retry later".
        if !matches!(route, ClusterRoute::Alone) {
            return self.cluster_send(route, to, frame);
        }
        self.mailbox_push(now, to, frame)
    }

    pub(super) fn on_poll_timer(&mut self, _now: Timestamp, entity: &EntityId) {
        if let Some((request, _, encoding)) = self.polls.remove(entity) {
            self.answer_poll(request, entity, encoding);
        }
    }

    /// An HTTP call to this node, already authenticated by the driver (JWT): `who` is the
    /// token's [`Bearer`] (an [`EntityId`] alone for an entity authenticated without a key).
    /// The call is bound to the entity and the key it proved (spec §2.3, §21); 403 for an entity
    /// (or entity and key) the trust store refuses. The answer comes as [`Output::HttpRespond`]
    /// with the returned id: at once for a `POST` (carrying whatever waits for the caller), or
    /// when a message arrives or `poll_wait` passes for a poll.
    pub fn handle_http_request(
        &mut self,
        now: Timestamp,
        who: impl Into<Bearer>,
        call: HttpCall,
    ) -> RequestId {
        let who = who.into();
        let request = self.next_request_id();
        if self.admit(now, &who).is_err() {
            self.emit(Output::HttpRespond {
                request,
                status: 403,
                body: Vec::new(),
                encoding: Encoding::Json,
            });
            return request;
        }
        let key = who.key();
        let entity = who.entity;
        match call {
            HttpCall::PostMessages { body, encoding, accept_binary } => {
                let binary_links = self.config.binary_links;
                let refusal = if body.len() > self.config.max_http_body_bytes {
                    Some(413)
                } else if !wire::accepts_post_body(encoding, binary_links) {
                    Some(415)
                } else {
                    None
                };
                if let Some(status) = refusal {
                    let body = Vec::new();
                    self.emit(Output::HttpRespond {
                        request,
                        status,
                        body,
                        encoding: Encoding::Json,
                    });
                    return request;
                }
                let answer = wire::answer_encoding(accept_binary, binary_links);
                let limit = self.config.link_rate;
                // One bucket per HTTP caller, at most `max_links` of them (the oldest goes first).
                if !self.http_rate.contains_key(&entity)
                    && self.http_rate.len() >= self.config.max_links
                {
                    self.http_rate.pop_first();
                }
                self.posting = Some(entity.clone());
                let source = Source::Http(entity.clone(), key);
                let max = self.config.limits.max_frame_bytes;
                for frame in http_body::frames(&body, encoding, max) {
                    let frame = match frame {
                        Ok(frame) => frame,
                        // A body that cannot be framed further: answered as a bad line is.
                        Err(e) => {
                            self.stats.rejected = self.stats.rejected.saturating_add(1);
                            self.reply_error(now, &source, None, e.code(), None);
                            continue;
                        }
                    };
                    self.stats.received(Transport::Http, frame.len());
                    let bucket = self
                        .http_rate
                        .entry(entity.clone())
                        .or_insert_with(|| TokenBucket::new(limit, now));
                    if bucket.try_take(now) {
                        self.process_frame(now, source.clone(), frame, encoding);
                    } else {
                        self.stats.rejected = self.stats.rejected.saturating_add(1);
                        self.reply_error(now, &source, None, ErrorCode::RateLimitExceeded, None);
                    }
                }
                self.finish(now);
                self.posting = None;
                self.answer_poll(request, &entity, answer);
                // What did not fit in that answer releases a poll the caller holds.
                if self.mailboxes.has(&entity) {
                    self.release_poll(&entity);
                }
                // In a cluster, what waits in its shared mailbox comes here for its next call.
                self.cluster_polled(now, &entity);
            }
            HttpCall::Poll { wait, accept_binary } => {
                let answer = wire::answer_encoding(accept_binary, self.config.binary_links);
                let wait = wait.map_or(self.config.poll_wait, |w| w.min(self.config.poll_wait));
                if self.mailboxes.has(&entity) || wait.is_zero() {
                    self.answer_poll(request, &entity, answer);
                } else {
                    if let Some((old, _, encoding)) = self.polls.remove(&entity) {
                        let body = Vec::new();
                        self.emit(Output::HttpRespond {
                            request: old,
                            status: 200,
                            body,
                            encoding,
                        });
                    }
                    // At most `max_links` polls are held; past that the oldest is released empty.
                    if self.polls.len() >= self.config.max_links {
                        let oldest =
                            self.polls.iter().min_by_key(|(_, (r, ..))| *r).map(|(e, _)| e.clone());
                        if let Some((other, (old, _, encoding))) =
                            oldest.and_then(|e| self.polls.remove_entry(&e))
                        {
                            self.timers.cancel(&Timer::Poll(other));
                            let body = Vec::new();
                            self.emit(Output::HttpRespond {
                                request: old,
                                status: 200,
                                body,
                                encoding,
                            });
                        }
                    }
                    let until = now.saturating_add(wait);
                    self.polls.insert(entity.clone(), (request, until, answer));
                    // In a cluster, what waits in its shared mailbox comes to this poll.
                    self.cluster_polled(now, &entity);
                    self.schedule(Timer::Poll(entity), Some(until));
                }
                self.finish(now);
            }
        }
        request
    }

    /// The key that verifies the signatures of `entity` on a frame from `source` (spec §2.3,
    /// §9.1): the trust store's; else the key the source's client proved at `/auth` (a link or
    /// HTTP call bound to `entity` under the open policy); else the key of the session with it.
    pub(super) fn key_of(&self, source: &Source, entity: &EntityId) -> Option<PublicKey> {
        if let Some(key) = self.trust.get(entity) {
            return Some(*key);
        }
        if self.bound_entity(source).as_ref() == Some(entity)
            && let Some(key) = self.bound_key(source)
        {
            return Some(key);
        }
        self.peers.get(entity).and_then(|p| p.session.as_ref()).map(|s| *s.peer_key())
    }

    /// Sends an envelope back the way a frame came.
    pub(super) fn reply_on(&mut self, now: Timestamp, source: &Source, env: &Envelope) {
        let frame: Arc<[u8]> = Arc::from(env.encode());
        match source {
            Source::Link(link) => self.transmit(*link, frame),
            Source::Http(entity, _) => {
                let _ = self.deliver_to_entity(now, entity, frame);
            }
            Source::Hop(hop) => {
                let preference = self.config.preference;
                let _ = self.send_via_hop(now, hop, frame, preference, None);
            }
        }
    }

    /// Answers an offending envelope with an `ERROR` (never an `ERROR` with an `ERROR`).
    pub(super) fn answer(
        &mut self,
        now: Timestamp,
        source: &Source,
        env: &Envelope,
        code: ErrorCode,
    ) {
        self.answer_head(now, source, &Head::of(env), code);
    }

    /// [`Node::answer`] from the routing members alone.
    pub(super) fn answer_head(
        &mut self,
        now: Timestamp,
        source: &Source,
        env: &Head,
        code: ErrorCode,
    ) {
        self.stats.rejected = self.stats.rejected.saturating_add(1);
        if env.message_type == MessageType::Error {
            return;
        }
        let to = Some(env.sender_id.clone());
        // An answer saying a session is gone names that session (spec §15.4): the sender then
        // knows which of its sessions it is about, even when it re-sent the same message under a
        // newer one.
        let session = match code {
            ErrorCode::SessionNotFound | ErrorCode::SessionExpired => env.session_id.clone(),
            _ => None,
        };
        self.send_error(now, source, to, code, Some(env.message_id.clone()), session);
    }

    /// Sends a signed `ERROR` back the way a frame came, at most 60 a minute per link.
    pub(super) fn reply_error(
        &mut self,
        now: Timestamp,
        source: &Source,
        to: Option<EntityId>,
        code: ErrorCode,
        in_reply_to: Option<MessageId>,
    ) {
        self.send_error(now, source, to, code, in_reply_to, None);
    }

    /// [`Node::reply_error`], with `session` as the `ERROR`'s `session_id`.
    fn send_error(
        &mut self,
        now: Timestamp,
        source: &Source,
        to: Option<EntityId>,
        code: ErrorCode,
        in_reply_to: Option<MessageId>,
        session: Option<SessionId>,
    ) {
        let allowed = match source {
            Source::Link(link) => self.links.get_mut(link).is_some_and(|l| l.errors.try_take(now)),
            Source::Http(entity, _) => self.take_error_budget(Some(entity.clone()), now),
            // In a next hop's response, only an envelope from a remote peer is answered (an
            // end-to-end error such as SESSION_NOT_FOUND, which recovery depends on), under that
            // peer's budget. Garbage, and anything from the hop itself, is dropped: no
            // amplification toward the hop.
            Source::Hop(hop) => {
                let remote = to.as_ref().filter(|peer| *peer != hop).cloned();
                self.take_error_budget(remote, now)
            }
        };
        if !allowed {
            return;
        }
        let err =
            error_message(&self.identity, to, session, code, in_reply_to, now, &mut *self.rng);
        self.reply_on(now, source, &err);
    }

    /// Takes one `ERROR` from `entity`'s budget (at most `max_links` budgets are kept).
    fn take_error_budget(&mut self, entity: Option<EntityId>, now: Timestamp) -> bool {
        let Some(entity) = entity else { return false };
        let rate = self.config.error_rate;
        if !self.error_budget.contains_key(&entity)
            && self.error_budget.len() >= self.config.max_links
        {
            self.error_budget.pop_first();
        }
        self.error_budget.entry(entity).or_insert_with(|| TokenBucket::new(rate, now)).try_take(now)
    }

    /// A `PONG` for a `PING` received from `source`, if the link's `PING` budget allows.
    pub(super) fn answer_ping(&mut self, now: Timestamp, source: &Source, ping: &Envelope) {
        if let Source::Link(link) = source
            && let Some(l) = self.links.get_mut(link)
            && !l.pings.try_take(now)
        {
            // Seed 002: at most 2 heartbeats a minute from a peer.
            self.answer(now, source, ping, ErrorCode::RateLimitExceeded);
            return;
        }
        let payload = Payload::trusted(json!({"in_reply_to": ping.message_id.as_str()}));
        if let Ok(pong) = signed_message(
            &self.identity,
            MessageType::Pong,
            None,
            None,
            payload,
            now,
            &mut *self.rng,
        ) {
            self.reply_on(now, source, &pong);
        }
    }

    /// Sends a frame this node originated to `peer`: over its inbound link, through the route's
    /// next hop, or into its mailbox. Returns whether it left (or is queued to leave).
    pub(super) fn send_frame_to(
        &mut self,
        now: Timestamp,
        peer: &EntityId,
        frame: Arc<[u8]>,
        preference: TransportPreference,
        owner: Option<super::hops::Owner>,
    ) -> super::hops::HopSend {
        use super::hops::HopSend;
        let len = frame.len();
        let sent = if let Some(link) = self.bound.get(peer).copied() {
            self.transmit(link, frame);
            HopSend::Sent(Some(Transport::WebSocket))
        } else if let Some(hop) = self.route_of(peer) {
            self.send_via_hop(now, &hop, frame, preference, owner)
        } else {
            match self.deliver_to_entity(now, peer, frame) {
                Ok(t) => HopSend::Sent(Some(t)),
                // MAILBOX_FULL means "retry later" (spec §19): the frame counts as sent and its
                // retransmission timer retries it.
                Err(ErrorCode::MailboxFull) => HopSend::Sent(None),
                Err(_) => HopSend::Failed,
            }
        };
        if let Some(p) = self.peers.get_mut(peer) {
            p.touch(now);
            if let HopSend::Sent(Some(t)) = sent {
                p.stats.sent(t, len);
            }
        }
        sent
    }
}
