//! A simulated broker, as the host uses Redis for a cluster (`docs/cluster-design.md`): presence
//! records with an expiry, compare-and-delete withdrawals, and bounded per-entity mailboxes that
//! are taken whole by a drain. It holds what a `redis-server --save ''` holds, so a restart loses
//! everything. Pub/sub (which carries presence changes and forwarded frames) is the cluster
//! driver's part (`cluster.rs`), since what it loses depends on who is connected.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use peerlink_core::{EntityId, Timestamp};

/// A frame parked in an entity's mailbox.
#[derive(Debug, Clone)]
pub struct Parked {
    /// The envelope, as the parking relay gave it.
    pub frame: Arc<[u8]>,
    /// The relay (node index) that parked it.
    pub by: usize,
    /// When it expires (spec §19's mailbox expiry).
    pub expires: Timestamp,
}

/// Bounds of the broker's structures.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// How long a presence record lives without a refresh (three refreshes).
    pub presence_ttl: Duration,
    /// Frames one mailbox holds at most.
    pub mailbox_messages: usize,
    /// Bytes one mailbox holds at most.
    pub mailbox_bytes: usize,
    /// How long a parked frame lives.
    pub mailbox_ttl: Duration,
}

/// What the broker holds.
#[derive(Debug)]
pub struct Broker {
    /// Whether it is running.
    pub up: bool,
    bounds: Bounds,
    /// Which node holds each entity's newest link, until when.
    presence: BTreeMap<EntityId, (EntityId, Timestamp)>,
    /// Frames parked per entity, oldest first.
    mailboxes: BTreeMap<EntityId, VecDeque<Parked>>,
}

impl Broker {
    /// A running, empty broker.
    pub fn new(bounds: Bounds) -> Self {
        Self { up: true, bounds, presence: BTreeMap::new(), mailboxes: BTreeMap::new() }
    }

    /// The server stops: without persistence, everything it held is lost.
    pub fn crash(&mut self) {
        self.up = false;
        self.presence.clear();
        self.mailboxes.clear();
    }

    /// `SET presence:{entity} {node} EX ttl`.
    pub fn announce(&mut self, now: Timestamp, entity: EntityId, node: EntityId) {
        let expires = now.saturating_add(self.bounds.presence_ttl);
        self.presence.insert(entity, (node, expires));
    }

    /// The compare-and-delete script: removes the record only if it (still, and unexpired)
    /// names `node`. Whether it did.
    pub fn withdraw(&mut self, now: Timestamp, entity: &EntityId, node: &EntityId) -> bool {
        self.expire(now);
        if self.presence.get(entity).is_some_and(|(n, _)| n == node) {
            self.presence.remove(entity);
            return true;
        }
        false
    }

    /// `SCAN presence:*` + `MGET`: every live record.
    pub fn scan(&mut self, now: Timestamp) -> Vec<(EntityId, EntityId)> {
        self.expire(now);
        self.presence.iter().map(|(e, (n, _))| (e.clone(), n.clone())).collect()
    }

    /// Appends `frame` to `to`'s mailbox; a full mailbox drops it (false).
    pub fn park(&mut self, now: Timestamp, to: EntityId, frame: Arc<[u8]>, by: usize) -> bool {
        self.expire(now);
        let b = self.bounds;
        let mailbox = self.mailboxes.entry(to).or_default();
        let bytes: usize = mailbox.iter().map(|p| p.frame.len()).sum();
        if mailbox.len() >= b.mailbox_messages
            || bytes.saturating_add(frame.len()) > b.mailbox_bytes
        {
            return false;
        }
        mailbox.push_back(Parked { frame, by, expires: now.saturating_add(b.mailbox_ttl) });
        true
    }

    /// Takes (atomically) everything `entity`'s mailbox holds, oldest first.
    pub fn drain(&mut self, now: Timestamp, entity: &EntityId) -> Vec<Parked> {
        self.expire(now);
        self.mailboxes.remove(entity).map(Vec::from).unwrap_or_default()
    }

    /// Bytes held in all mailboxes.
    pub fn held_bytes(&self) -> usize {
        self.mailboxes.values().flatten().map(|p| p.frame.len()).sum()
    }

    /// Most frames and bytes one mailbox holds.
    pub fn fullest(&self) -> (usize, usize) {
        self.mailboxes.values().fold((0, 0), |(n, b), m| {
            (n.max(m.len()), b.max(m.iter().map(|p| p.frame.len()).sum()))
        })
    }

    /// Drops expired presence records and parked frames.
    fn expire(&mut self, now: Timestamp) {
        self.presence.retain(|_, (_, until)| now < *until);
        for m in self.mailboxes.values_mut() {
            m.retain(|p| now < p.expires);
        }
        self.mailboxes.retain(|_, m| !m.is_empty());
    }
}

/// What crossed the broker in one run (or a sweep, added up).
#[derive(Debug, Default, Clone, Copy)]
pub struct BrokerStats {
    /// Runs with more than one relay.
    pub cluster_runs: u64,
    /// Presence records written.
    pub announces: u64,
    /// Presence records removed by a withdrawal.
    pub withdrawals: u64,
    /// Frames a relay forwarded to another.
    pub forwards: u64,
    /// Forwarded frames handed to their relay.
    pub forwards_delivered: u64,
    /// Forwarded frames published while their relay was not subscribed (lost).
    pub forwards_unheard: u64,
    /// Frames parked.
    pub parks: u64,
    /// Frames dropped by a full mailbox.
    pub parks_dropped: u64,
    /// Drains.
    pub drains: u64,
    /// Drains that found something.
    pub drains_found: u64,
    /// Drained frames handed to a relay.
    pub drained: u64,
    /// Drained frames handed to another relay than the one that parked them.
    pub drained_elsewhere: u64,
    /// Publications lost by the broker's faults.
    pub publications_lost: u64,
    /// Publications delayed.
    pub publications_delayed: u64,
    /// Publications duplicated.
    pub publications_duplicated: u64,
    /// Commands and replies lost with their relay's broker connection.
    pub connection_lost: u64,
    /// Broker restarts (everything it held lost).
    pub broker_restarts: u64,
    /// Relays cut from the broker.
    pub relay_cuts: u64,
    /// Relays of a cluster that crashed.
    pub relay_crashes: u64,
    /// Peers that moved to another relay after theirs died.
    pub failovers: u64,
    /// Peers that moved voluntarily.
    pub moves: u64,
    /// Most bytes the broker's mailboxes held at once.
    pub max_held_bytes: u64,
}

impl BrokerStats {
    /// Adds `other` to these (the maximum for `max_held_bytes`).
    pub fn add(&mut self, o: &BrokerStats) {
        self.cluster_runs += o.cluster_runs;
        self.announces += o.announces;
        self.withdrawals += o.withdrawals;
        self.forwards += o.forwards;
        self.forwards_delivered += o.forwards_delivered;
        self.forwards_unheard += o.forwards_unheard;
        self.parks += o.parks;
        self.parks_dropped += o.parks_dropped;
        self.drains += o.drains;
        self.drains_found += o.drains_found;
        self.drained += o.drained;
        self.drained_elsewhere += o.drained_elsewhere;
        self.publications_lost += o.publications_lost;
        self.publications_delayed += o.publications_delayed;
        self.publications_duplicated += o.publications_duplicated;
        self.connection_lost += o.connection_lost;
        self.broker_restarts += o.broker_restarts;
        self.relay_cuts += o.relay_cuts;
        self.relay_crashes += o.relay_crashes;
        self.failovers += o.failovers;
        self.moves += o.moves;
        self.max_held_bytes = self.max_held_bytes.max(o.max_held_bytes);
    }
}

impl std::fmt::Display for BrokerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} announces, {} withdrawals, {} forwards ({} delivered, {} unheard), {} parks \
             ({} dropped full), {} drains ({} found frames, {} frames, {} on another relay than \
             the parker), publications {} lost / {} delayed / {} duplicated, {} lost with a \
             connection, {} broker restarts, {} relay cuts, {} relay crashes, {} failovers, {} \
             moves, {} bytes held at most",
            self.announces,
            self.withdrawals,
            self.forwards,
            self.forwards_delivered,
            self.forwards_unheard,
            self.parks,
            self.parks_dropped,
            self.drains,
            self.drains_found,
            self.drained,
            self.drained_elsewhere,
            self.publications_lost,
            self.publications_delayed,
            self.publications_duplicated,
            self.connection_lost,
            self.broker_restarts,
            self.relay_cuts,
            self.relay_crashes,
            self.failovers,
            self.moves,
            self.max_held_bytes,
        )
    }
}
