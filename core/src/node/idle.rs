//! Forgetting idle peers (spec §15.5): a peer's state is dropped after `peer_idle_timeout`
//! without activity, once nothing it holds matters any more, so `max_peers` bounds the peers
//! active together rather than every peer ever met.
//!
//! The idle deadline is one more deadline of the peer's timer ([`Timer::Peer`]): it is scheduled
//! only while the peer could be forgotten, and checked again when it fires.

use super::peers::PeerState;
use super::{Node, NodeConfig, Timer};
use crate::ids::EntityId;
use crate::time::Timestamp;

impl PeerState {
    /// Records activity at `now`.
    pub(super) fn touch(&mut self, now: Timestamp) {
        self.last_active = self.last_active.max(now);
    }

    /// Whether nothing this state holds is still needed: losing it now loses no message and
    /// delivers none twice (given the idle time, see [`NodeConfig::peer_idle_timeout`]).
    fn quiet(&self) -> bool {
        // Outbox empty, and no `forward` owed: the peer may hold acknowledged frames behind
        // messages given up, which only that forward releases.
        self.send.messages() == 0
            && !self.send.forward_needed()
            // Frames buffered out of order were acknowledged: the sender thinks them delivered.
            && !self.recv.holds_frames()
            // A chunked message being reassembled (`assembling` only names one of these, and
            // outlives it when it expires: it is not a condition of its own).
            && self.reassembly.partials() == 0
            && self.requests.is_empty()
            && self.inbound_requests.is_empty()
            && !self.handshaking()
            // An acknowledgement held for `ack_delay`. Without a session it cannot be sent
            // before a new handshake anyway (which is activity), so it keeps nothing alive then.
            && (self.ack_due.is_none() || self.session.is_none())
            && !self.wanted
    }

    /// When this peer becomes idle, if nothing happens before.
    pub(super) fn idle_deadline(&self, config: &NodeConfig) -> Timestamp {
        self.last_active.saturating_add(config.peer_idle_timeout)
    }
}

impl Node {
    /// Whether one of this node's links is bound to `peer` right now: a peers link it accepted
    /// from `peer`, or a WebSocket link to `peer` as a next hop (open or opening).
    fn linked_to(&self, peer: &EntityId) -> bool {
        self.bound.contains_key(peer) || self.hops.get(peer).is_some_and(|h| h.ws_link.is_some())
    }

    /// Whether `peer`'s state may be forgotten once its idle deadline has passed.
    pub(super) fn may_forget(&self, peer: &EntityId, p: &PeerState) -> bool {
        p.quiet() && !self.linked_to(peer)
    }

    /// Records activity with `peer` at `now`.
    pub(super) fn touch_peer(&mut self, now: Timestamp, peer: &EntityId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.touch(now);
        }
    }

    /// Forgets `peer` if it is idle at `now` (its timer fired).
    pub(super) fn forget_if_idle(&mut self, now: Timestamp, peer: &EntityId) {
        let idle = self
            .peers
            .get(peer)
            .is_some_and(|p| self.may_forget(peer, p) && p.idle_deadline(&self.config) <= now);
        if idle && self.remove_peer(peer).is_some() {
            self.stats.peers_forgotten = self.stats.peers_forgotten.saturating_add(1);
        }
    }

    /// Removes `peer`'s state and its timer; the caller reports what it held.
    pub(super) fn remove_peer(&mut self, peer: &EntityId) -> Option<PeerState> {
        let mut state = self.peers.remove(peer)?;
        self.timers.cancel(&Timer::Peer(peer.clone()));
        self.persist_forgotten(peer, &mut state);
        Some(state)
    }
}
