//! Durable peers and their crashes (spec §26).
//!
//! In half the seeds (drawn from a generator of its own, so a run without durable peers is as it
//! was) every peer is durable: it has a store, a `BTreeMap` of byte keys to byte values that
//! survives its crashes, and its outputs are carried out as the driver contract says (spec
//! §26.2, `core/src/node/durability.rs`): one group per round of the node's outputs; the writes
//! are collected, and every output for which `Output::waits_for_writes` is false (the events
//! that hand received content to the application) goes at once, as does whatever comes before
//! the round's first write; every other output after it (frames, HTTP answers, a sender's
//! `Delivered` and `Failed`, the other events) is held until the round's writes are committed,
//! then carried out in order. The application takes every event at once, so after each round
//! the simulator says so (`Node::events_taken`): the receive positions and the acknowledgements
//! they held come in a further round. A call (`send`, `request`) made while the round's inputs
//! were handled counts as accepted only once the round commits.
//!
//! At random times a durable peer crashes: its links die (the other side sees them closed), its
//! HTTP exchanges in flight are lost, its pending outputs are lost, and after a while a new node
//! with the same identity and another random seed is rebuilt from the store
//! (`Node::restore`) and set up as at the start. Three crash points:
//!
//! - **clean**: between two inputs;
//! - **after commit**: right after a round's writes are committed, before its held outputs are
//!   carried out: the `Delivered` and `Failed` events held there are lost, so exactly those
//!   messages may end with no outcome at their sender (they must still keep every invariant of
//!   their receiver);
//! - **torn**: before the round's commit, so its writes are lost: the calls of that round were
//!   never answered (their messages do not count as sent), and its outcome events were never
//!   handed over (they come again after the restart, from the restored outbox).
//!
//! A message handed to the receiving application whose receive position was not yet committed
//! when its receiver crashed may be handed again after the restart (at least once at that
//! boundary, spec §26.2): the checker allows exactly those ids one more delivery per such crash.
//! An outcome is never reported twice, nor contradicted, whatever the crash.
//!
//! Crashes and restarts are functions of the node index ([`World::crash_node`],
//! [`World::node_up`]). In half the durable runs the relays are durable too: a relay's restart
//! (every third run has one) is then a crash of one of the three kinds, and the relay comes
//! back with its mailboxes (spec §26.4). Whatever a relay writes must hold no plaintext: no
//! stored value may contain a payload's text (`MSG|`), checked at every commit.

use std::collections::BTreeMap;

use peerlink_core::durable::{StoreOp, describe_key};
use peerlink_core::{EntityId, Event, MessageId, Output};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::{Net, Sent, World, ms};

/// What a durable node's store holds.
pub type Store = BTreeMap<Vec<u8>, Vec<u8>>;

/// A call accepted in a group not yet committed: (sender, receiver) and the message.
type Accepted = ((usize, usize), Sent);

/// Where a crash comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// Between two inputs.
    Clean,
    /// After a group's commit, before its held outputs are carried out.
    AfterCommit,
    /// Before a group's commit: its writes are lost.
    Torn,
}

/// Counters of the durable runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct DurableStats {
    /// Runs with durable peers.
    pub durable_runs: u64,
    /// Crashes between two inputs.
    pub crashes_clean: u64,
    /// Crashes between a commit and the outputs it held.
    pub crashes_after_commit: u64,
    /// Crashes that tore a group's writes.
    pub crashes_torn: u64,
    /// Restarts rebuilt from a store.
    pub restores: u64,
    /// Messages restored to be sent again.
    pub messages_restored: u64,
    /// Messages whose send timeout passed while their sender was down.
    pub expired_at_restore: u64,
    /// Chunks of partly received messages restored.
    pub chunks_restored: u64,
    /// Accepted calls lost with a torn group (never answered, so never counted as sent).
    pub sends_torn: u64,
    /// Messages handed to the application whose receive position was not committed when their
    /// receiver crashed: each may be handed once more. Per crash kind: clean, after commit, torn.
    pub repeats_allowed: [u64; 3],
    /// Messages handed to the application again (all of them must be allowed).
    pub repeats_seen: u64,
    /// Outcomes (`Delivered`, `Failed`) held behind a commit and lost with a crash after it.
    pub outcomes_lost: u64,
    /// Runs whose relays are durable.
    pub durable_relays: u64,
    /// Relay restarts rebuilt from a store.
    pub relay_restores: u64,
    /// Mailbox entries a restarted relay held again.
    pub mailboxed: u64,
    /// Mailbox entries a restarted relay dropped (expired while it was down).
    pub mailbox_dropped: u64,
    /// Writes committed.
    pub writes: u64,
    /// Groups committed.
    pub groups: u64,
}

impl DurableStats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &Self) {
        self.durable_runs += o.durable_runs;
        self.crashes_clean += o.crashes_clean;
        self.crashes_after_commit += o.crashes_after_commit;
        self.crashes_torn += o.crashes_torn;
        self.restores += o.restores;
        self.messages_restored += o.messages_restored;
        self.expired_at_restore += o.expired_at_restore;
        self.chunks_restored += o.chunks_restored;
        self.sends_torn += o.sends_torn;
        for (a, b) in self.repeats_allowed.iter_mut().zip(o.repeats_allowed) {
            *a += b;
        }
        self.repeats_seen += o.repeats_seen;
        self.outcomes_lost += o.outcomes_lost;
        self.durable_relays += o.durable_relays;
        self.relay_restores += o.relay_restores;
        self.mailboxed += o.mailboxed;
        self.mailbox_dropped += o.mailbox_dropped;
        self.writes += o.writes;
        self.groups += o.groups;
    }
}

impl std::fmt::Display for DurableStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crashes {} clean / {} after commit / {} torn, {} restores ({} messages \
             restored, {} expired while down, {} chunks), {} sends lost with a torn group, {} \
             outcomes lost after a commit, repeats allowed {} / {} / {} by crash kind ({} seen), \
             {} runs with durable relays ({} relay restores, {} mailbox entries kept, {} \
             expired), {} writes in {} groups committed",
            self.crashes_clean,
            self.crashes_after_commit,
            self.crashes_torn,
            self.restores,
            self.messages_restored,
            self.expired_at_restore,
            self.chunks_restored,
            self.sends_torn,
            self.outcomes_lost,
            self.repeats_allowed[0],
            self.repeats_allowed[1],
            self.repeats_allowed[2],
            self.repeats_seen,
            self.durable_relays,
            self.relay_restores,
            self.mailboxed,
            self.mailbox_dropped,
            self.writes,
            self.groups,
        )
    }
}

/// The durable part of a world.
pub(super) struct DurableSim {
    rng: ChaCha20Rng,
    /// The store of each durable node: a node is durable if and only if it has one.
    pub(super) stores: BTreeMap<usize, Store>,
    /// Crashes waiting for the node's next group with writes.
    armed: BTreeMap<usize, CrashKind>,
    /// Calls made in the current group, counted as sent once it commits.
    pending: BTreeMap<usize, Vec<Accepted>>,
    /// Per node, the messages handed to its application (with their senders) whose receive
    /// position is not written yet.
    unsettled: BTreeMap<usize, Vec<(EntityId, MessageId)>>,
    /// Per node, messages whose receive position is written in the current round, not yet
    /// committed.
    covered: BTreeMap<usize, Vec<MessageId>>,
    /// Crashes to schedule at the start: (node, when in ms, kind).
    pub(super) crashes: Vec<(usize, u64, CrashKind)>,
    /// Whether the relays are durable too, and how a relay's restart crashes it.
    pub(super) relays: Option<CrashKind>,
    pub(super) stats: DurableStats,
}

impl DurableSim {
    /// The durability of seed `seed`'s world of `peers` peers: in half the seeds every peer is
    /// durable and crashes one to four times.
    pub(super) fn draw(seed: u64, peers: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0064_7572_6162_6c65);
        let mut me = Self {
            rng: ChaCha20Rng::seed_from_u64(0),
            stores: BTreeMap::new(),
            armed: BTreeMap::new(),
            pending: BTreeMap::new(),
            unsettled: BTreeMap::new(),
            covered: BTreeMap::new(),
            crashes: Vec::new(),
            relays: None,
            stats: DurableStats::default(),
        };
        if peers > 0 && rng.next_u32().is_multiple_of(2) {
            me.stats.durable_runs = 1;
            for p in 1..=peers {
                me.stores.insert(p, Store::new());
            }
            for _ in 0..1 + rng.next_u32() % 4 {
                let node = 1 + rng.next_u64() as usize % peers;
                let at = 5_000 + rng.next_u64() % 170_000;
                let kind = match rng.next_u32() % 3 {
                    0 => CrashKind::Clean,
                    1 => CrashKind::AfterCommit,
                    _ => CrashKind::Torn,
                };
                me.crashes.push((node, at, kind));
            }
            if rng.next_u32().is_multiple_of(2) {
                me.stats.durable_relays = 1;
                me.relays = Some(match rng.next_u32() % 3 {
                    0 => CrashKind::Clean,
                    1 => CrashKind::AfterCommit,
                    _ => CrashKind::Torn,
                });
            }
        }
        me.rng = rng;
        me
    }

    /// A peer's downtime after a crash, in milliseconds.
    pub(super) fn downtime(&mut self) -> u64 {
        100 + self.rng.next_u64() % 3_000
    }
}

impl World {
    /// Whether node `i` writes a store.
    pub(super) fn is_durable(&self, i: usize) -> bool {
        self.durable.stores.contains_key(&i)
    }

    /// Records a call of node `from` accepted now: at once for a node without a store, at the
    /// commit of the current group for a durable one.
    pub(super) fn accepted(&mut self, from: usize, to: usize, sent: Sent) {
        if self.is_durable(from) {
            self.durable.pending.entry(from).or_default().push(((from, to), sent));
        } else {
            self.outcome.sent.entry((from, to)).or_default().push(sent);
        }
    }

    /// Node `i` handed message `id`, from `from`, to its application.
    pub(super) fn handed(&mut self, i: usize, from: &EntityId, id: &MessageId) {
        if self.outcome.delivered_at.contains_key(id) {
            self.durable.stats.repeats_seen += 1;
        }
        if self.is_durable(i) {
            self.durable.unsettled.entry(i).or_default().push((from.clone(), id.clone()));
        }
    }

    /// A crash of node `kind` comes now: at once if clean, else at the node's next group with
    /// writes.
    pub(super) fn crash_due(&mut self, node: usize, kind: CrashKind) {
        if self.nodes[node].down {
            return;
        }
        if self.trace {
            eprintln!("{:?} node {node}: crash {kind:?} due", self.now);
        }
        match kind {
            CrashKind::Clean => {
                self.durable.stats.crashes_clean += 1;
                self.durable_crash(node, kind);
            }
            _ => {
                self.durable.armed.entry(node).or_insert(kind);
            }
        }
    }

    /// Carries out durable node `i`'s outputs as the driver does (spec §26.2), round after
    /// round until it has nothing left: the writes of a round in one transaction, what does not
    /// wait for writes (and whatever precedes the first write) at once, the rest once the
    /// writes are committed; then the application has taken every event handed to it, which
    /// may give a further round (receive positions and the acknowledgements they held). Crashes
    /// at a round's commit if a crash is armed.
    pub(super) fn drain_durable(&mut self, i: usize) {
        loop {
            let (mut writes, mut held) = (Vec::new(), Vec::new());
            let mut any = false;
            while let Some(out) = self.nodes[i].node.poll_output() {
                any = true;
                match out {
                    Output::Persist(op) => {
                        self.note_write(i, &op);
                        writes.push(op);
                    }
                    out if writes.is_empty() || !out.waits_for_writes() => self.carry(i, out),
                    out => held.push(out),
                }
            }
            if !any {
                return;
            }
            if writes.is_empty() {
                self.commit_pending(i);
            } else {
                let crash = self.durable.armed.remove(&i);
                if crash == Some(CrashKind::Torn) {
                    // The last write is torn: the group never committed. Its calls were never
                    // answered, and its outcomes never handed over (they come again from the
                    // restored outbox).
                    let lost = self.durable.pending.remove(&i).unwrap_or_default();
                    self.durable.stats.sends_torn += lost.len() as u64;
                    if self.trace {
                        eprintln!(
                            "{:?} node {i}: torn crash, {} writes and {} calls lost",
                            self.now,
                            writes.len(),
                            lost.len()
                        );
                    }
                    self.durable.stats.crashes_torn += 1;
                    self.durable_crash(i, CrashKind::Torn);
                    return;
                }
                if self.is_relay(i) {
                    self.check_no_plaintext(i, &writes);
                }
                let store = self.durable.stores.get_mut(&i).expect("a durable node has a store");
                self.durable.stats.writes += writes.len() as u64;
                self.durable.stats.groups += 1;
                for op in writes {
                    match op {
                        StoreOp::Put { key, value } => {
                            store.insert(key, value);
                        }
                        StoreOp::Delete { key } => {
                            store.remove(&key);
                        }
                    }
                }
                self.durable.covered.remove(&i);
                self.commit_pending(i);
                if crash == Some(CrashKind::AfterCommit) {
                    // The outcomes held behind the writes die with the process: exactly those
                    // messages may end with no outcome at their sender.
                    for out in &held {
                        if let Output::Event(
                            Event::Delivered { id, .. } | Event::Failed { id, .. },
                        ) = out
                        {
                            self.durable.stats.outcomes_lost += 1;
                            self.outcome.outcomes_lost.insert(id.clone());
                        }
                    }
                    if self.trace {
                        eprintln!(
                            "{:?} node {i}: crash after commit, {} held",
                            self.now,
                            held.len()
                        );
                    }
                    self.durable.stats.crashes_after_commit += 1;
                    self.durable_crash(i, CrashKind::AfterCommit);
                    return;
                }
                for out in held {
                    self.carry(i, out);
                }
            }
            // The application took every event of the round (the simulator hands them over at
            // once).
            let now = self.now;
            self.nodes[i].node.events_taken(now);
        }
    }

    /// Node `i` queued write `op`: a receive position covers the messages from its peer handed
    /// so far, once committed.
    fn note_write(&mut self, i: usize, op: &StoreOp) {
        let StoreOp::Put { key, .. } = op else { return };
        let described = describe_key(key);
        let Some(peer) = described.strip_prefix("r/") else { return };
        let Some(unsettled) = self.durable.unsettled.get_mut(&i) else { return };
        let (covered, rest): (Vec<_>, Vec<_>) =
            std::mem::take(unsettled).into_iter().partition(|(from, _)| from.as_str() == peer);
        *unsettled = rest;
        let into = self.durable.covered.entry(i).or_default();
        into.extend(covered.into_iter().map(|(_, id)| id));
    }

    /// A relay stores envelopes as they came: a payload's text (every payload starts with
    /// `MSG|`) must never be among them.
    fn check_no_plaintext(&mut self, i: usize, writes: &[StoreOp]) {
        const TEXT: &[u8] = b"MSG|";
        for op in writes {
            if let StoreOp::Put { key, value } = op
                && value.windows(TEXT.len()).any(|w| w == TEXT)
            {
                let key = describe_key(key);
                self.outcome.leaks.push(format!("relay {i} stored plaintext under {key}"));
            }
        }
    }

    /// A relay restarts: a durable one crashes the way the run drew, else it loses everything.
    /// A relay may write nothing for a long while (its mailboxes stay empty while its clients
    /// are linked): a crash armed for its next commit that has not come within 2 s comes then,
    /// cleanly, so that every durable relay does restart.
    pub(super) fn relay_restart(&mut self, i: usize) {
        match self.durable.relays {
            Some(kind) if self.is_durable(i) => {
                self.crash_due(i, kind);
                if kind != CrashKind::Clean {
                    self.schedule(ms(2_000), Net::CrashIfArmed { node: i });
                }
            }
            _ => self.crash_node(i),
        }
    }

    /// The crash armed for node `i`'s next commit has not come: it crashes now, cleanly.
    pub(super) fn crash_if_armed(&mut self, i: usize) {
        if self.durable.armed.remove(&i).is_some() && !self.nodes[i].down {
            self.durable.stats.crashes_clean += 1;
            self.durable_crash(i, CrashKind::Clean);
        }
    }

    fn commit_pending(&mut self, i: usize) {
        for (pair, sent) in self.durable.pending.remove(&i).unwrap_or_default() {
            self.outcome.sent.entry(pair).or_default().push(sent);
        }
    }

    /// Durable node `i` crashes (`kind`): the messages handed to its application whose receive
    /// positions are not committed may be handed again after the restart, once more each.
    fn durable_crash(&mut self, i: usize, kind: CrashKind) {
        let mut again: Vec<MessageId> = self.durable.covered.remove(&i).unwrap_or_default();
        again.extend(
            self.durable.unsettled.remove(&i).unwrap_or_default().into_iter().map(|(_, id)| id),
        );
        let slot = match kind {
            CrashKind::Clean => 0,
            CrashKind::AfterCommit => 1,
            CrashKind::Torn => 2,
        };
        self.durable.stats.repeats_allowed[slot] += again.len() as u64;
        for id in again {
            *self.outcome.repeats_allowed.entry(id).or_default() += 1;
        }
        self.crash_node(i);
    }

    /// Node `i` crashes: its links die (the other side sees them closed), HTTP exchanges in
    /// flight are lost, so is everything it had not carried out; it is down for a while, then
    /// [`World::node_up`] runs it again. A node without a store is replaced by a fresh node at
    /// once (it runs again with nothing); a durable one is rebuilt from its store when it comes
    /// up.
    pub(super) fn crash_node(&mut self, i: usize) {
        let links: Vec<_> = self.pairs.keys().filter(|(n, _)| *n == i).map(|(_, l)| *l).collect();
        for link in links {
            self.cut(i, link);
        }
        // Held polls and in-flight requests at the node are lost: their clients see failures.
        // Requests the node made die with it (their answers are dropped by generation).
        let lost: Vec<_> = self
            .http
            .iter()
            .filter(|((s, _), _)| *s == i)
            .map(|(_, &(c, r, _, g))| (c, r, g))
            .collect();
        self.http.retain(|(s, _), _| *s != i);
        for (client, request, generation) in lost {
            if self.nodes[client].generation == generation {
                self.schedule(ms(500), Net::HttpFailure { client, request });
            }
        }
        self.durable.armed.remove(&i);
        self.durable.pending.remove(&i);
        self.durable.unsettled.remove(&i);
        self.durable.covered.remove(&i);
        let refused = self.nodes[i].node.cluster_stats().map_or(0, |s| s.frames_refused);
        self.counter += 1;
        let fresh = self.new_node(i);
        let n = &mut self.nodes[i];
        n.node = fresh;
        n.generation += 1;
        n.down = true;
        let downtime = if self.is_relay(i) {
            1000 + self.rng.next_u64() % 10_000
        } else {
            self.durable.downtime()
        };
        self.schedule(ms(downtime), Net::Up { node: i });
        if self.is_relay(i) {
            self.cluster_relay_crashed(i, refused);
        }
    }

    /// Node `i` runs again after a crash: rebuilt from its store if it has one, then set up as
    /// at the start.
    pub(super) fn node_up(&mut self, i: usize) {
        if let Some(store) = self.durable.stores.get(&i) {
            let entries = store.clone();
            match self.nodes[i].node.restore(self.now, entries) {
                Ok(summary) => {
                    let relay = self.is_relay(i);
                    let s = &mut self.durable.stats;
                    s.restores += 1;
                    s.messages_restored += summary.messages as u64;
                    s.expired_at_restore += summary.expired as u64;
                    s.chunks_restored += summary.chunks as u64;
                    if relay {
                        s.relay_restores += 1;
                        s.mailboxed += summary.mailboxed as u64;
                        s.mailbox_dropped += summary.mailbox_dropped as u64;
                    }
                    if self.trace {
                        eprintln!("{:?} node {i} restored: {summary:?}", self.now);
                    }
                }
                Err(e) => self.outcome.restore_errors.push(format!("node {i}: {e}")),
            }
        }
        self.set_up(i);
        self.nodes[i].down = false;
        if self.is_relay(i) {
            self.cluster_relay_up(i);
        }
        self.drain(i);
    }

    /// The durable part of the summary line.
    pub(super) fn durable_summary(&self) -> String {
        let d = &self.durable;
        if d.stats.durable_runs == 0 {
            return String::new();
        }
        format!("; durable peers: {}", d.stats)
    }
}
