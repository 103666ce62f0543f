//! The simulator's cluster (issue 17): in two runs of three, two or three relays share a
//! simulated broker ([`Broker`]) and act as one. This module is the driver a host would be: it
//! carries each relay's [`ClusterAction`]s out against the broker, turns what the broker says
//! back into inputs (`ClusterUp`/`ClusterDown`, presence, frames), and injects the cluster's
//! faults: publications lost, delayed or duplicated, the broker restarting empty, a relay cut
//! from the broker, relays crashing, and peers moving to another relay (failover after theirs
//! died, or of their own will).
//!
//! Every cluster draw comes from a generator of its own, so a run with one relay replays exactly
//! as it did before the cluster existed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use peerlink_core::node::{ClusterAction, ClusterConfig, Input};
use peerlink_core::{EntityId, NodeAddr, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::broker::{Bounds, Broker, BrokerStats};
use super::{Net, World, ms};

/// The cluster's faults, drawn from the seed.
#[derive(Debug, Clone)]
pub struct ClusterFaults {
    /// Latency between a relay and the broker, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Per-mille chance a publication (presence change or forwarded frame) is lost.
    pub lose_per_mille: u32,
    /// Per-mille chance a publication is delayed (its subscriber stalls: order is kept).
    pub delay_per_mille: u32,
    /// Per-mille chance a publication is delivered twice.
    pub duplicate_per_mille: u32,
    /// When the broker restarts (losing everything), in ms after the start.
    pub broker_restart: Option<u64>,
    /// A relay (by position among the relays) cut from the broker: when, and for how long.
    pub relay_cut: Option<(usize, u64, u64)>,
    /// A relay (by position among the relays) that crashes: when.
    pub relay_crash: Option<(usize, u64)>,
    /// Whether peers whose relay died move to another.
    pub failover: bool,
    /// Peers that move to another relay of their own will.
    pub moves: usize,
}

/// Why a peer moves.
#[derive(Debug, Clone, Copy)]
pub enum Why {
    /// Its relay died.
    Failover,
    /// Of its own will.
    Voluntary,
}

/// What crosses between a relay and the broker.
#[derive(Clone)]
pub enum Carried {
    /// A presence change (published), or a record a scan found.
    Presence(EntityId, Option<EntityId>),
    /// A forwarded frame (published to the relay's channel).
    Forwarded(EntityId, Arc<[u8]>),
    /// A drained frame (the drain's reply), and the relay that parked it.
    Drained(EntityId, Arc<[u8]>, usize),
    /// Something was parked for the entity (published by the park, as the host's script does).
    Mail(EntityId),
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Carried::Presence(e, n) => write!(f, "presence {e} on {n:?}"),
            Carried::Forwarded(to, frame) => write!(f, "forwarded for {to} ({} B)", frame.len()),
            Carried::Drained(to, frame, by) => {
                write!(f, "drained for {to} ({} B, parked by {by})", frame.len())
            }
            Carried::Mail(to) => write!(f, "mail for {to}"),
        }
    }
}

/// A cluster event in the world's queue.
#[derive(Debug, Clone)]
pub enum Event {
    /// A relay's broker connection opens (if the broker runs and the relay is up and not cut).
    Connect { relay: usize },
    /// A relay's command reaches the broker over connection `conn`.
    Command { relay: usize, conn: u64, action: ClusterAction },
    /// Something reaches a relay from the broker over connection `conn`.
    Deliver { relay: usize, conn: u64, what: Carried },
    /// The broker restarts, empty.
    BrokerDown,
    /// The broker runs again.
    BrokerUp,
    /// A relay is cut from the broker (`on`), or reaches it again.
    Cut { relay: usize, on: bool },
    /// A peer moves away from `from` to another relay.
    Move { peer: usize, from: usize, why: Why },
}

/// The cluster of a run.
pub struct ClusterSim {
    rng: ChaCha20Rng,
    /// Its faults.
    pub faults: ClusterFaults,
    /// The relays' node indices (the first is the world's relay 0).
    pub relays: Vec<usize>,
    /// Each peer's relay (its default route).
    pub home: BTreeMap<usize, usize>,
    broker: Broker,
    /// Open broker connections: relay → connection number.
    conns: BTreeMap<usize, u64>,
    next_conn: u64,
    /// Relays cut from the broker.
    cut: BTreeSet<usize>,
    /// Per relay: when the last thing sent its way (either direction) arrives, to keep order.
    clock: BTreeMap<(usize, bool), Timestamp>,
    /// What crossed the broker.
    pub stats: BrokerStats,
    /// Frames from the broker that relays refused, from relays since replaced.
    refused_before: u64,
}

/// The cluster config of a relay.
pub fn relay_config() -> ClusterConfig {
    ClusterConfig::default()
}

impl ClusterSim {
    /// The cluster of seed `seed`, whose world has relay 0 and peers `1..=peers`; `None` for a
    /// run with one relay. Its relays get the node indices after the peers.
    pub fn draw(
        seed: u64,
        peers: usize,
        mailbox_messages: usize,
        mailbox_bytes: usize,
    ) -> Option<Self> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0063_6c75_7374_6572);
        let relays = match rng.next_u32() % 3 {
            0 => return None,
            1 => 2,
            _ => 3,
        };
        let mut chance = |n: u32| rng.next_u32().is_multiple_of(n);
        let (restart, cut, crash, failover) = (chance(3), chance(3), chance(2), !chance(4));
        let faults = ClusterFaults {
            latency_ms: (1, 1 + u64::from(rng.next_u32() % 20)),
            lose_per_mille: rng.next_u32() % 60,
            delay_per_mille: rng.next_u32() % 60,
            duplicate_per_mille: rng.next_u32() % 40,
            broker_restart: restart.then(|| 15_000 + rng.next_u64() % 80_000),
            relay_cut: cut.then(|| {
                let which = rng.next_u64() as usize % relays;
                (which, 10_000 + rng.next_u64() % 80_000, 2_000 + rng.next_u64() % 40_000)
            }),
            relay_crash: crash
                .then(|| (rng.next_u64() as usize % relays, 20_000 + rng.next_u64() % 80_000)),
            failover,
            moves: (rng.next_u32() % 3) as usize,
        };
        let ids: Vec<usize> = std::iter::once(0).chain((1..relays).map(|k| peers + k)).collect();
        let home = (1..=peers).map(|p| (p, ids[rng.next_u64() as usize % relays])).collect();
        let bounds = Bounds {
            presence_ttl: relay_config().refresh_every.saturating_mul(3),
            mailbox_messages,
            mailbox_bytes,
            mailbox_ttl: peerlink_core::limits::Limits::default().max_clock_skew,
        };
        Some(Self {
            rng,
            faults,
            relays: ids,
            home,
            broker: Broker::new(bounds),
            conns: BTreeMap::new(),
            next_conn: 0,
            cut: BTreeSet::new(),
            clock: BTreeMap::new(),
            stats: BrokerStats { cluster_runs: 1, ..BrokerStats::default() },
            refused_before: 0,
        })
    }

    /// A fresh secret for an extra relay's identity.
    pub fn secret(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        b
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.next_u64() % (hi - lo + 1)
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.next_u32() % 1000 < per_mille
    }

    /// When something sent now toward (`to_relay`) or from a relay arrives: after the broker's
    /// latency plus `extra`, and never before what was sent that way earlier.
    fn arrival(&mut self, now: Timestamp, relay: usize, to_relay: bool, extra: u64) -> Timestamp {
        let (lo, hi) = self.faults.latency_ms;
        let at = now.saturating_add(ms(self.between(lo, hi) + extra));
        let last = self.clock.get(&(relay, to_relay)).copied().unwrap_or(at);
        let at = at.max(last);
        self.clock.insert((relay, to_relay), at);
        at
    }
}

impl World {
    /// Whether node `i` is a relay.
    pub(super) fn is_relay(&self, i: usize) -> bool {
        self.cluster.as_ref().map_or(i == super::RELAY, |c| c.relays.contains(&i))
    }

    /// The relays' node indices.
    pub(super) fn relays(&self) -> Vec<usize> {
        self.cluster.as_ref().map_or(vec![super::RELAY], |c| c.relays.clone())
    }

    /// The relay peer `i` reaches the world through.
    pub(super) fn home_of(&self, i: usize) -> usize {
        self.cluster.as_ref().and_then(|c| c.home.get(&i).copied()).unwrap_or(super::RELAY)
    }

    /// Schedules the cluster's connections and faults at the start of a run.
    pub(super) fn start_cluster(&mut self) {
        let Some(c) = self.cluster.as_mut() else { return };
        let f = c.faults.clone();
        let relays = c.relays.clone();
        let mut moves = Vec::new();
        for _ in 0..f.moves {
            let peer = 1 + c.rng.next_u64() as usize % self.peers;
            moves.push((peer, c.between(5_000, 150_000)));
        }
        for &relay in &relays {
            self.schedule(ms(0), Net::Cluster(Event::Connect { relay }));
        }
        if let Some(at) = f.broker_restart {
            self.schedule(ms(at), Net::Cluster(Event::BrokerDown));
        }
        if let Some((which, at, length)) = f.relay_cut {
            let relay = relays[which];
            self.schedule(ms(at), Net::Cluster(Event::Cut { relay, on: true }));
            self.schedule(ms(at + length), Net::Cluster(Event::Cut { relay, on: false }));
        }
        if let Some((which, at)) = f.relay_crash {
            self.schedule(ms(at), Net::Restart { node: relays[which] });
        }
        for (peer, at) in moves {
            // Decided when it happens: away from wherever the peer is then.
            self.schedule(
                ms(at),
                Net::Cluster(Event::Move { peer, from: usize::MAX, why: Why::Voluntary }),
            );
        }
    }

    /// Relay `relay` crashed (its node is already replaced): its broker connection is gone, and
    /// its peers may fail over to another relay.
    pub(super) fn cluster_relay_crashed(&mut self, relay: usize, old_refused: u64) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.conns.remove(&relay);
        c.stats.relay_crashes += 1;
        c.refused_before += old_refused;
        if !c.faults.failover {
            return;
        }
        let peers: Vec<usize> =
            c.home.iter().filter(|(_, r)| **r == relay).map(|(p, _)| *p).collect();
        let moves: Vec<(usize, u64)> =
            peers.into_iter().map(|p| (p, c.between(2_000, 8_000))).collect();
        for (peer, after) in moves {
            self.schedule(
                ms(after),
                Net::Cluster(Event::Move { peer, from: relay, why: Why::Failover }),
            );
        }
    }

    /// Relay `relay` runs again after a crash: it connects to the broker.
    pub(super) fn cluster_relay_up(&mut self, relay: usize) {
        let Some(c) = self.cluster.as_mut() else { return };
        let after = c.between(0, 500);
        self.schedule(ms(after), Net::Cluster(Event::Connect { relay }));
    }

    /// Carries out `action` of relay `relay`: it travels to the broker over the relay's
    /// connection (lost if there is none).
    pub(super) fn cluster_command(&mut self, relay: usize, action: ClusterAction) {
        if let ClusterAction::Forward { frame, .. } | ClusterAction::Park { frame, .. } = &action {
            let frame = Arc::clone(frame);
            self.check_leak("frame to the broker", &frame);
        }
        let now = self.now;
        let Some(c) = self.cluster.as_mut() else {
            panic!("cluster output from node {relay} outside a cluster: {action:?}")
        };
        let Some(&conn) = c.conns.get(&relay) else {
            c.stats.connection_lost += 1;
            return;
        };
        let at = c.arrival(now, relay, false, 0);
        let after = at.saturating_duration_since(now);
        self.schedule(after, Net::Cluster(Event::Command { relay, conn, action }));
    }

    /// A cluster event happens.
    pub(super) fn apply_cluster(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Connect { relay } => self.connect(relay),
            Event::Command { relay, conn, action } => {
                let c = self.cluster.as_mut().expect("cluster");
                if c.conns.get(&relay) != Some(&conn) {
                    c.stats.connection_lost += 1;
                    return;
                }
                self.on_command(relay, conn, action);
            }
            Event::Deliver { relay, conn, what } => {
                let c = self.cluster.as_mut().expect("cluster");
                if c.conns.get(&relay) != Some(&conn) || self.nodes[relay].down {
                    c.stats.connection_lost += 1;
                    return;
                }
                match what {
                    Carried::Presence(entity, node) => {
                        self.feed(relay, Input::ClusterPresence { entity, node });
                    }
                    Carried::Forwarded(to, frame) => {
                        self.check_leak("frame from the broker", &frame);
                        self.cluster.as_mut().expect("cluster").stats.forwards_delivered += 1;
                        self.feed(relay, Input::ClusterFrame { to, frame: &frame });
                    }
                    Carried::Drained(to, frame, by) => {
                        self.check_leak("frame from the broker", &frame);
                        let c = self.cluster.as_mut().expect("cluster");
                        c.stats.drained += 1;
                        if by != relay {
                            c.stats.drained_elsewhere += 1;
                        }
                        self.feed(relay, Input::ClusterFrame { to, frame: &frame });
                    }
                    Carried::Mail(entity) => self.feed(relay, Input::ClusterMail { entity }),
                }
                self.drain(relay);
            }
            Event::BrokerDown => {
                let c = self.cluster.as_mut().expect("cluster");
                c.broker.crash();
                c.stats.broker_restarts += 1;
                let lost: Vec<usize> = std::mem::take(&mut c.conns).into_keys().collect();
                let downtime = c.between(1_000, 10_000);
                for relay in lost {
                    self.connection_down(relay);
                }
                self.schedule(ms(downtime), Net::Cluster(Event::BrokerUp));
            }
            Event::BrokerUp => {
                let c = self.cluster.as_mut().expect("cluster");
                c.broker.up = true;
                let delays: Vec<(usize, u64)> =
                    c.relays.clone().into_iter().map(|r| (r, c.between(50, 2_000))).collect();
                for (relay, after) in delays {
                    self.schedule(ms(after), Net::Cluster(Event::Connect { relay }));
                }
            }
            Event::Cut { relay, on } => {
                let c = self.cluster.as_mut().expect("cluster");
                if on {
                    c.cut.insert(relay);
                    c.stats.relay_cuts += 1;
                    if c.conns.remove(&relay).is_some() {
                        self.connection_down(relay);
                    }
                } else {
                    c.cut.remove(&relay);
                    self.connect(relay);
                }
            }
            Event::Move { peer, from, why } => self.move_peer(now, peer, from, why),
        }
    }

    /// Relay `relay` lost its broker connection and notices.
    fn connection_down(&mut self, relay: usize) {
        if !self.nodes[relay].down {
            self.feed(relay, Input::ClusterDown);
            self.drain(relay);
        }
    }

    /// Relay `relay` (re)connects to the broker if it can: `ClusterUp`, then what a scan of the
    /// presence records finds.
    fn connect(&mut self, relay: usize) {
        let now = self.now;
        let down = self.nodes[relay].down;
        let c = self.cluster.as_mut().expect("cluster");
        if !c.broker.up || down || c.cut.contains(&relay) || c.conns.contains_key(&relay) {
            return;
        }
        c.next_conn += 1;
        c.conns.insert(relay, c.next_conn);
        let found = c.broker.scan(now);
        if self.trace {
            eprintln!("{now:?} broker: relay {relay} connected, scan finds {}", found.len());
        }
        self.feed(relay, Input::ClusterUp);
        for (entity, node) in found {
            self.feed(relay, Input::ClusterPresence { entity, node: Some(node) });
        }
        self.drain(relay);
    }

    /// What the broker does with a command of `relay`.
    fn on_command(&mut self, relay: usize, conn: u64, action: ClusterAction) {
        let now = self.now;
        let me = self.nodes[relay].node.id().clone();
        let c = self.cluster.as_mut().expect("cluster");
        match action {
            ClusterAction::Announce { entity } => {
                c.stats.announces += 1;
                c.broker.announce(now, entity.clone(), me.clone());
                self.publish_presence(entity, Some(me));
            }
            ClusterAction::Withdraw { entity } => {
                if c.broker.withdraw(now, &entity, &me) {
                    c.stats.withdrawals += 1;
                    self.publish_presence(entity, None);
                }
            }
            ClusterAction::Forward { node, to, frame } => {
                c.stats.forwards += 1;
                let target = self.index_of(&node);
                let c = self.cluster.as_mut().expect("cluster");
                match target.and_then(|t| c.conns.get(&t).map(|conn| (t, *conn))) {
                    Some((target, conn)) => {
                        self.publish(target, conn, Carried::Forwarded(to, frame));
                    }
                    // No receiver (PUBLISH answers 0): the host parks it instead.
                    None => {
                        c.stats.forwards_unheard += 1;
                        self.park(relay, to, frame);
                    }
                }
            }
            ClusterAction::Park { to, frame } => self.park(relay, to, frame),
            // The simulated peers use no topics: nothing to carry.
            ClusterAction::Listen { .. }
            | ClusterAction::Unlisten { .. }
            | ClusterAction::Publish { .. } => {}
            ClusterAction::Drain { entity } => {
                c.stats.drains += 1;
                let taken = c.broker.drain(now, &entity);
                if !taken.is_empty() {
                    c.stats.drains_found += 1;
                }
                // The reply travels back over the same connection, in order, never lost but
                // with the connection.
                let replies: Vec<(Timestamp, Carried)> = taken
                    .into_iter()
                    .map(|p| {
                        let at = c.arrival(now, relay, true, 0);
                        (at, Carried::Drained(entity.clone(), p.frame, p.by))
                    })
                    .collect();
                for (at, what) in replies {
                    let after = at.saturating_duration_since(now);
                    self.schedule(after, Net::Cluster(Event::Deliver { relay, conn, what }));
                }
            }
        }
    }

    /// Publishes a presence change to every relay connected to the broker.
    /// A park (the host's script): kept within the mailbox's bounds, and announced on the mail
    /// channel to every relay.
    fn park(&mut self, relay: usize, to: EntityId, frame: Arc<[u8]>) {
        let now = self.now;
        let c = self.cluster.as_mut().expect("cluster");
        if c.broker.park(now, to.clone(), frame, relay) {
            c.stats.parks += 1;
            let held = c.broker.held_bytes() as u64;
            c.stats.max_held_bytes = c.stats.max_held_bytes.max(held);
            let subscribers: Vec<(usize, u64)> = c.conns.iter().map(|(r, n)| (*r, *n)).collect();
            for (r, conn) in subscribers {
                self.publish(r, conn, Carried::Mail(to.clone()));
            }
        } else {
            c.stats.parks_dropped += 1;
        }
    }

    fn publish_presence(&mut self, entity: EntityId, node: Option<EntityId>) {
        let c = self.cluster.as_ref().expect("cluster");
        let subscribers: Vec<(usize, u64)> = c.conns.iter().map(|(r, n)| (*r, *n)).collect();
        for (relay, conn) in subscribers {
            self.publish(relay, conn, Carried::Presence(entity.clone(), node.clone()));
        }
    }

    /// Pub/sub to one subscriber: at most once, and subject to the faults.
    fn publish(&mut self, relay: usize, conn: u64, what: Carried) {
        let now = self.now;
        let trace = self.trace;
        let c = self.cluster.as_mut().expect("cluster");
        if c.chance(c.faults.lose_per_mille) {
            c.stats.publications_lost += 1;
            if trace {
                eprintln!("{now:?} broker: publication to relay {relay} lost: {what:?}");
            }
            return;
        }
        let mut extra = 0;
        if c.chance(c.faults.delay_per_mille) {
            c.stats.publications_delayed += 1;
            extra = c.between(100, 3_000);
        }
        let copies = if c.chance(c.faults.duplicate_per_mille) {
            c.stats.publications_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let c = self.cluster.as_mut().expect("cluster");
            let at = c.arrival(now, relay, true, extra);
            let after = at.saturating_duration_since(now);
            self.schedule(after, Net::Cluster(Event::Deliver { relay, conn, what: what.clone() }));
        }
    }

    /// Peer `peer` leaves relay `from` (`usize::MAX`: wherever it is) for another relay.
    fn move_peer(&mut self, now: Timestamp, peer: usize, from: usize, why: Why) {
        let c = self.cluster.as_mut().expect("cluster");
        let Some(&home) = c.home.get(&peer) else { return };
        let from = if from == usize::MAX { home } else { from };
        if home != from {
            return; // Already moved.
        }
        let others: Vec<usize> = c.relays.iter().copied().filter(|r| *r != from).collect();
        let alive: Vec<usize> = others.iter().copied().filter(|r| !self.nodes[*r].down).collect();
        let pool = if alive.is_empty() { others } else { alive };
        let to = pool[c.rng.next_u64() as usize % pool.len()];
        c.home.insert(peer, to);
        match why {
            Why::Failover => c.stats.failovers += 1,
            Why::Voluntary => c.stats.moves += 1,
        }
        if self.trace {
            eprintln!("{now:?} peer {peer} moves from relay {from} to relay {to} ({why:?})");
        }
        if self.nodes[peer].down {
            return; // It finds its new relay when it runs again (`World::set_up`).
        }
        let addr = NodeAddr {
            entity: self.nodes[to].node.id().clone(),
            base_url: self.nodes[to].base_url.clone(),
        };
        self.nodes[peer].node.set_default_route(now, addr);
        self.drain(peer);
    }

    /// Invariants of the cluster part: nothing a relay refused from the broker (it only carries
    /// what relays gave it), and its mailboxes within their bounds.
    pub(super) fn cluster_violations(&self) -> Vec<String> {
        let Some(c) = &self.cluster else { return Vec::new() };
        let mut v = Vec::new();
        let refused: u64 = c.refused_before
            + c.relays
                .iter()
                .filter_map(|r| self.nodes[*r].node.cluster_stats())
                .map(|s| s.frames_refused)
                .sum::<u64>();
        if refused > 0 {
            v.push(format!("relays refused {refused} frames from the broker"));
        }
        let (n, b) = c.broker.fullest();
        if n > self.config.mailbox_messages || b > self.config.mailbox_bytes {
            v.push(format!("a broker mailbox held {n} frames, {b} bytes"));
        }
        v
    }

    /// The cluster's counters (zero for a run with one relay).
    pub fn broker_stats(&self) -> BrokerStats {
        self.cluster.as_ref().map(|c| c.stats).unwrap_or_default()
    }

    /// The cluster part of the summary line.
    pub(super) fn cluster_summary(&self) -> String {
        match &self.cluster {
            None => String::new(),
            Some(c) => format!(
                "; cluster of {} relays {:?}, homes {:?}, {:?}; broker: {}",
                c.relays.len(),
                c.relays,
                c.home,
                c.faults,
                c.stats
            ),
        }
    }
}
