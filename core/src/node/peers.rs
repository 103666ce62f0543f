//! Per-peer state: the handshake, the session, the reliable stream, reassembly, tasks, and
//! session resume (spec §"Delivery" and §"Recovery"). This module holds the state and its
//! timer; the work on it is split by direction: `sending` (the outbox, flushing, failures),
//! `receiving` (opening, in-order delivery, acknowledgements, `ERROR`s), `handshake` and
//! `resume`.

use std::collections::{BTreeMap, BTreeSet};

use super::stats::TransportStats;
use super::{Event, Node, SendError, Timer};
use crate::backoff::Backoff;
use crate::capabilities::Transport;
use crate::chunking::Reassembler;
use crate::envelope::{Envelope, NONCE_LEN};
use crate::error::ErrorCode;
use crate::handshake::{Initiator, Responder};
use crate::ids::{EntityId, MessageId};
use crate::session::Session;
use crate::stream::{FailReason, RecvStreams, SendStream};
use crate::time::Timestamp;

mod handshake;
mod receiving;
mod resume;
mod sending;

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
    /// On a durable node: the numbers of the stored chunks of the message being reassembled.
    pub stored_chunks: Vec<u64>,
    /// On a durable node: stored chunks of messages completed and handed to the application,
    /// deleted with the receive position that passes them (until the application has taken
    /// the message, they are what rebuilds it after a crash).
    pub freed_chunks: Vec<u64>,
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

    /// The earliest deadline of this peer's timer. `acks_held`: its acknowledgements wait for
    /// its receive positions to be written (a durable node), so a due one wakes nothing.
    fn deadline(&self, config: &super::NodeConfig, acks_held: bool) -> Option<Timestamp> {
        // Frames waiting for a link are woken by the link, not by the clock; until then only
        // their send timeouts count.
        let data = if self.session.is_some() && !self.blocked {
            self.send.next_deadline(&config.stream)
        } else {
            self.send.next_expiry()
        };
        [
            data,
            self.session.as_ref().and(self.ack_due).filter(|_| !acks_held),
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
        let mut send = SendStream::new(epoch);
        if self.config.durable {
            send.journal();
        }
        let state = PeerState {
            session: None,
            initiator: None,
            responder: None,
            handshake_out: None,
            next_handshake_at: None,
            handshake_backoff: Backoff::new(self.config.reconnect.clone()),
            send,
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
            stored_chunks: Vec::new(),
            freed_chunks: Vec::new(),
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

    /// Sets `peer`'s timer to its earliest deadline (handshake, retransmission, acknowledgement,
    /// request, idle), or cancels it.
    pub(super) fn reschedule_peer(&mut self, peer: &EntityId) {
        let at = self.peers.get(peer).and_then(|p| {
            // The idle deadline counts only while nothing else keeps the peer: otherwise it
            // would be due, and fire, again and again without forgetting anything.
            let idle = self.may_forget(peer, p).then(|| p.idle_deadline(&self.config));
            let held = self.acks_held(peer);
            [p.deadline(&self.config, held), idle].into_iter().flatten().min()
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
        if p.assembling.as_ref().is_some_and(|a| stale.contains(a)) {
            self.persist_chunks_done(peer);
        }
        let Some(p) = self.peers.get_mut(peer) else { return };
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
}
