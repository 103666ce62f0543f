//! WebSocket links: accepting, opening, closing, heartbeats and per-link rate limits.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use super::{Event, LinkId, LinkKind, Node, Output, Timer};
use crate::auth::Bearer;
use crate::capabilities::Transport;
use crate::envelope::Payload;
use crate::error::ErrorCode;
use crate::identity::{PublicKey, TrustPolicy};
use crate::ids::EntityId;
use crate::message_type::MessageType;
use crate::rate_limit::TokenBucket;
use crate::signed::signed_message;
use crate::time::Timestamp;
use crate::transport::WsLink;
use crate::wire::{self, Encoding};

/// Who is at the other end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Direction {
    /// A client connected to this node and authenticated as this entity.
    Inbound(EntityId),
    /// This node dialled the next hop `hop`.
    Outbound(EntityId),
}

/// One WebSocket link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub kind: LinkKind,
    pub direction: Direction,
    /// The key an inbound link's entity proved at `/auth` (its token's `cnf`), kept when the
    /// trust store does not hold the entity: for the life of the link its signed messages
    /// verify with it (spec §2.3). Boxed: most links never need its 192 bytes.
    pub key: Option<Box<PublicKey>>,
    /// Outbound links are up once the driver says so; inbound links are up when accepted.
    pub up: bool,
    /// The encodings the link speaks: JSON alone, or binary too (spec §27).
    pub encoding: Encoding,
    /// Frames accepted from an inbound link.
    pub rate: Option<TokenBucket>,
    /// `PING`s accepted from the link.
    pub pings: TokenBucket,
    /// `ERROR` replies this node sends on the link (so a flood cannot make it sign forever).
    pub errors: TokenBucket,
    pub last_rx: Timestamp,
    pub ping_sent: bool,
    pub subscriptions: BTreeSet<String>,
}

/// Where a frame came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A WebSocket link.
    Link(LinkId),
    /// An HTTP `POST` from an authenticated entity (this node is the server), with the key its
    /// token binds it to.
    Http(EntityId, Option<PublicKey>),
    /// The body of an HTTP response from a next hop (this node is the client).
    Hop(EntityId),
}

impl Node {
    pub(super) fn new_link(
        &self,
        kind: LinkKind,
        direction: Direction,
        up: bool,
        now: Timestamp,
    ) -> Link {
        let inbound = matches!(direction, Direction::Inbound(_));
        Link {
            kind,
            direction,
            key: None,
            up,
            encoding: Encoding::Json,
            rate: inbound.then(|| TokenBucket::new(self.config.link_rate, now)),
            pings: TokenBucket::new(self.config.ping_rate, now),
            errors: TokenBucket::new(self.config.error_rate, now),
            last_rx: now,
            ping_sent: false,
            subscriptions: BTreeSet::new(),
        }
    }

    /// An inbound WebSocket connection, already authenticated by the driver (JWT): `who` is
    /// the token's [`Bearer`] (an [`EntityId`] alone for an entity authenticated without a key).
    /// The link is bound to the entity and to the key it proved (spec §2.3, §19). Returns the
    /// link's id, or the code to close it with: `RATE_LIMIT_EXCEEDED` past `max_links`,
    /// `AUTHENTICATION_FAILED` for an entity (or entity and key) the trust store refuses.
    /// `encoding` is what the upgrade agreed ([`wire::choose`]); binary only if this node's
    /// `binary_links` allows it.
    pub fn accept_link(
        &mut self,
        now: Timestamp,
        kind: LinkKind,
        who: impl Into<Bearer>,
        encoding: Encoding,
    ) -> Result<LinkId, ErrorCode> {
        let who = who.into();
        if self.links.len() >= self.config.max_links {
            return Err(ErrorCode::RateLimitExceeded);
        }
        self.admit(now, &who)?;
        let entity = who.entity.clone();
        let id = self.next_link_id();
        let mut link = self.new_link(kind, Direction::Inbound(entity.clone()), true, now);
        link.encoding = self.agreed(encoding);
        if self.trust.get(&entity).is_none() {
            link.key = who.key().map(Box::new);
        }
        self.links.insert(id, Box::new(link));
        if kind == LinkKind::Peers {
            self.bound.insert(entity.clone(), id);
            self.cluster_bound(&entity);
            self.drain_mailbox_to_link(now, &entity, id);
            if self.peers.contains_key(&entity) {
                self.flush_peer(now, &entity);
            }
        }
        self.reschedule_link(id);
        self.finish(now);
        Ok(id)
    }

    /// An outbound link this node asked for (`Output::OpenLink`) is connected, speaking
    /// `encoding` ([`wire::selected`] from the server's answer).
    pub fn link_up(&mut self, now: Timestamp, link: LinkId, encoding: Encoding) {
        let encoding = self.agreed(encoding);
        let Some(l) = self.links.get_mut(&link) else { return };
        l.up = true;
        l.encoding = encoding;
        l.last_rx = now;
        let Direction::Outbound(hop) = l.direction.clone() else { return };
        let reconnected = match self.hops.get_mut(&hop) {
            Some(h) => {
                h.transport.set_ws(WsLink::Up { since: now });
                h.backoff.reset();
                h.failures = 0;
                std::mem::replace(&mut h.had_link, true)
            }
            None => false,
        };
        if reconnected {
            self.resume_sessions_via(now, &hop);
        }
        self.reschedule_hop(now, &hop);
        self.reschedule_link(link);
        // Subscriptions are renewed on the new link itself (spec §20).
        for topic in self.topics.remote(&hop) {
            self.subscribe_on_link(now, link, &topic);
        }
        self.flush_peers_via(now, &hop);
        self.finish(now);
    }

    /// An outbound link could not be opened.
    pub fn link_failed(&mut self, now: Timestamp, link: LinkId) {
        self.drop_link(now, link);
        self.finish(now);
    }

    /// A link closed (either side, any reason).
    pub fn link_closed(&mut self, now: Timestamp, link: LinkId) {
        self.drop_link(now, link);
        self.finish(now);
    }

    /// Forgets a link and repairs everything that used it.
    pub(super) fn drop_link(&mut self, now: Timestamp, link: LinkId) {
        self.settle_parked_link(now, link);
        let Some(l) = self.links.remove(&link) else { return };
        self.timers.cancel(&Timer::Link(link));
        for emptied in self.topics.remove_link(link, &l.subscriptions) {
            self.cluster_unlisten(&emptied);
        }
        match l.direction {
            Direction::Inbound(entity) => {
                if self.bound.get(&entity) == Some(&link) {
                    self.bound.remove(&entity);
                    self.cluster_unbound(&entity);
                    // Frames in flight to it are lost; the stream re-sends them another way. Its
                    // idle time starts now: being connected was not idle.
                    if let Some(p) = self.peers.get_mut(&entity) {
                        p.send.retransmit_all(now);
                        p.touch(now);
                        self.reschedule_peer(&entity);
                    }
                }
            }
            Direction::Outbound(hop) => {
                if let Some(h) = self.hops.get_mut(&hop)
                    && h.ws_link == Some(link)
                {
                    h.ws_link = None;
                    h.transport.set_ws(WsLink::Down);
                    h.transport.note_ws_failure(now);
                    self.stats.fallbacks = self.stats.fallbacks.saturating_add(1);
                    self.hop_attempt_failed(&hop);
                    // A next hop that is also a peer: its idle time starts now.
                    self.touch_peer(now, &hop);
                    self.schedule_reconnect(now, &hop);
                    self.retransmit_via(now, &hop);
                    self.flush_peers_via(now, &hop);
                }
            }
        }
    }

    /// One text message received on a link: a JSON envelope (spec §23.3).
    pub fn handle_frame(&mut self, now: Timestamp, link: LinkId, frame: &[u8]) {
        self.receive(now, link, frame, Encoding::Json);
    }

    /// One binary message received on a link: a binary envelope, on a link that agreed on them
    /// (spec §27.2); on any other link it is refused with `INVALID_MESSAGE`.
    pub fn handle_binary_frame(&mut self, now: Timestamp, link: LinkId, frame: &[u8]) {
        self.receive(now, link, frame, Encoding::Binary);
    }

    /// A message of `kind` (the WebSocket opcode's) on a link.
    fn receive(&mut self, now: Timestamp, link: LinkId, frame: &[u8], kind: Encoding) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.last_rx = now;
        l.ping_sent = false;
        let limited = l.rate.as_mut().is_some_and(|r| !r.try_take(now));
        let misframed = kind == Encoding::Binary && l.encoding == Encoding::Json;
        self.stats.received(Transport::WebSocket, frame.len());
        if misframed {
            // A binary message on a link that did not agree on them (spec §27.2); never an
            // ERROR for an ERROR.
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            if !super::routing::looks_like_error(frame) {
                self.reply_error(now, &Source::Link(link), None, ErrorCode::InvalidMessage, None);
            }
        } else if limited {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            self.reply_error(now, &Source::Link(link), None, ErrorCode::RateLimitExceeded, None);
        } else {
            self.process_frame(now, Source::Link(link), frame, kind);
        }
        self.reschedule_link(link);
        self.finish(now);
    }

    /// Binary only where this node allows it: a driver's report cannot turn it on.
    fn agreed(&self, encoding: Encoding) -> Encoding {
        if self.config.binary_links { encoding } else { Encoding::Json }
    }

    /// The encoding a frame for `link` is best built in: binary on a link that agreed on it.
    pub(super) fn link_encoding(&self, link: LinkId) -> Encoding {
        self.links.get(&link).map_or(Encoding::Json, |l| l.encoding)
    }

    /// Writes one frame on a link: a binary frame on a JSON link is translated to JSON first
    /// (spec §27.3). A frame that cannot be translated is dropped; see [`Node::try_transmit`].
    pub(super) fn transmit(&mut self, link: LinkId, frame: Arc<[u8]>) {
        let _ = self.try_transmit(link, frame);
    }

    /// [`Node::transmit`], with the code of a frame it could not translate (a binary frame
    /// relayed on its header alone that does not decode, spec §27.4), for a caller that answers
    /// its sender.
    pub(super) fn try_transmit(&mut self, link: LinkId, frame: Arc<[u8]>) -> Result<(), ErrorCode> {
        let frame = match self.link_encoding(link) {
            Encoding::Json => self.json_frame(frame)?,
            Encoding::Binary => frame,
        };
        self.stats.sent(Transport::WebSocket, frame.len());
        self.emit(Output::Transmit { link, frame });
        Ok(())
    }

    /// `frame` in JSON, for a JSON link, an HTTP body, a mailbox or the cluster broker; the
    /// code (counted as rejected) of a binary frame relayed on its header alone that does not
    /// decode, or whose JSON is over the frame limit (spec §27.3, §27.4).
    pub(super) fn json_frame(&mut self, frame: Arc<[u8]>) -> Result<Arc<[u8]>, ErrorCode> {
        wire::to_json(frame, self.config.limits.max_frame_bytes).map_err(|e| {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            e.code()
        })
    }

    /// Closes a link with a reason and forgets it.
    pub(super) fn close_link(&mut self, now: Timestamp, link: LinkId, reason: Option<ErrorCode>) {
        // What the link delivered goes before its close, as it would have without offloading.
        self.settle_parked_link(now, link);
        if self.links.contains_key(&link) {
            self.emit(Output::CloseLink { link, reason });
            self.drop_link(now, link);
        }
    }

    /// Sends `PING` on idle links and closes links silent past `ping_interval + pong_grace`.
    pub(super) fn on_link_timer(&mut self, now: Timestamp, link: LinkId) {
        let Some(l) = self.links.get(&link) else { return };
        if !l.up {
            return;
        }
        let idle = now.saturating_duration_since(l.last_rx);
        if idle >= self.config.ping_interval.saturating_add(self.config.pong_grace) {
            let (Direction::Outbound(who) | Direction::Inbound(who)) = &l.direction;
            let peer = Some(who.clone());
            self.event(Event::Error { peer, code: ErrorCode::Timeout });
            self.close_link(now, link, Some(ErrorCode::Timeout));
            return;
        }
        if idle >= self.config.ping_interval && !l.ping_sent {
            let payload = Payload::trusted(json!({}));
            if let Ok(ping) = signed_message(
                &self.identity,
                MessageType::Ping,
                None,
                None,
                payload,
                now,
                &mut self.rng,
            ) {
                self.transmit(link, Arc::from(ping.encode()));
            }
            if let Some(l) = self.links.get_mut(&link) {
                l.ping_sent = true;
            }
        }
        self.reschedule_link(link);
    }

    pub(super) fn reschedule_link(&mut self, link: LinkId) {
        let at = self.links.get(&link).filter(|l| l.up).map(|l| {
            let ping = l.last_rx.saturating_add(self.config.ping_interval);
            if l.ping_sent { ping.saturating_add(self.config.pong_grace) } else { ping }
        });
        self.schedule(Timer::Link(link), at);
    }

    /// Checks an authenticated client against the trust store (spec §2.3): an entity with a
    /// proven key must be accepted with that key, whatever the policy; one without, under the
    /// allowlist, must be held. An entity the store does not hold, admitted by the open policy
    /// with a key, is remembered until its token expires: replies to it may wait in its mailbox
    /// (spec §19).
    pub(super) fn admit(&mut self, now: Timestamp, who: &Bearer) -> Result<(), ErrorCode> {
        match who.proof {
            Some(proof) => {
                self.trust
                    .authorize(&who.entity, &proof.key)
                    .map_err(|_| ErrorCode::AuthenticationFailed)?;
                if self.trust.get(&who.entity).is_none() {
                    self.admitted.admit(&who.entity, proof.expires, now, self.config.max_links);
                }
            }
            None => {
                if self.trust.policy() == TrustPolicy::Allowlist
                    && self.trust.get(&who.entity).is_none()
                {
                    return Err(ErrorCode::AuthenticationFailed);
                }
            }
        }
        Ok(())
    }

    /// The entity a source is bound to, if any: the authenticated client of an inbound link or
    /// HTTP call. Frames from it must carry that `sender_id`.
    pub(super) fn bound_entity(&self, source: &Source) -> Option<EntityId> {
        match source {
            Source::Link(link) => match &self.links.get(link)?.direction {
                Direction::Inbound(e) => Some(e.clone()),
                Direction::Outbound(_) => None,
            },
            Source::Http(e, _) => Some(e.clone()),
            Source::Hop(_) => None,
        }
    }

    /// The key a source's authenticated client proved (its token's `cnf`), if any.
    pub(super) fn bound_key(&self, source: &Source) -> Option<PublicKey> {
        match source {
            Source::Link(link) => match self.links.get(link) {
                Some(l) if matches!(l.direction, Direction::Inbound(_)) => {
                    l.key.as_deref().copied()
                }
                _ => None,
            },
            Source::Http(_, key) => *key,
            Source::Hop(_) => None,
        }
    }
}
