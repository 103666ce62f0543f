//! A node that is one relay of a cluster: several relays that share a broker (Redis) act as one
//! (`docs/cluster.md`, spec §25). The node decides where a frame for an entity goes, as it decides
//! every route: on its own link to the entity, to the relay that holds the entity's newest link,
//! or into the entity's shared mailbox. The driver carries the decisions out against the broker
//! ([`ClusterAction`]) and feeds back what the broker says ([`Input::ClusterPresence`] and
//! friends). Frames cross the broker unopened: relays never see plaintext, so the broker never
//! does either. What the broker loses is repaired by the end-to-end delivery layer (spec §13).
//!
//! [`Input::ClusterPresence`]: super::Input::ClusterPresence

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Node, Output, Timer};
use crate::capabilities::Transport;
use crate::envelope::Envelope;
use crate::error::ErrorCode;
use crate::ids::EntityId;
use crate::time::Timestamp;

/// Settings of a relay that is one node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Most entities the presence map holds; announcements beyond it are ignored (and counted),
    /// so frames for those entities go to their shared mailbox. Default 100,000.
    pub max_presence: usize,
    /// How often this node announces again every entity linked to it, so the broker's copy
    /// (which expires after three times this) stays alive while the link does. Default 10 s.
    pub refresh_every: Duration,
    /// This node's name in the cluster: what presence records and forwards name it by. `None`
    /// (the default) names it by its entity id. Nodes of one cluster may share one identity
    /// (one relay, many processes, so a client trusts one key whichever node it reaches) and
    /// then need names of their own.
    pub name: Option<EntityId>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { max_presence: 100_000, refresh_every: Duration::from_secs(10), name: None }
    }
}

/// What a cluster node asks of the broker.
#[derive(Clone, PartialEq, Eq)]
pub enum ClusterAction {
    /// `entity`'s newest peers link is on this node: record it (with an expiry of three
    /// refreshes) and tell the other nodes.
    Announce {
        /// The entity.
        entity: EntityId,
    },
    /// `entity`'s link on this node is gone: remove the record if it still names this node, and
    /// tell the other nodes.
    Withdraw {
        /// The entity.
        entity: EntityId,
    },
    /// Hand `frame` to the node `node`, which holds `to`'s newest link.
    Forward {
        /// The node.
        node: EntityId,
        /// The recipient.
        to: EntityId,
        /// The envelope, unopened.
        frame: Arc<[u8]>,
    },
    /// Keep `frame` in `to`'s shared mailbox until a node that `to` links to (or polls) drains
    /// it, bounded as spec §19's mailboxes are.
    Park {
        /// The recipient.
        to: EntityId,
        /// The envelope, unopened.
        frame: Arc<[u8]>,
    },
    /// Fetch (and remove) what `entity`'s shared mailbox holds; each frame comes back as
    /// [`Input::ClusterFrame`](super::Input::ClusterFrame).
    Drain {
        /// The entity.
        entity: EntityId,
    },
    /// This node has subscribers to `topic` now: hand it what other nodes publish on it, as
    /// [`Input::ClusterPublication`](super::Input::ClusterPublication).
    Listen {
        /// The topic.
        topic: String,
    },
    /// No subscriber to `topic` is left on this node.
    Unlisten {
        /// The topic.
        topic: String,
    },
    /// A publication this node fanned out to its own subscribers: hand it to every other node
    /// listening on `topic`, for theirs.
    Publish {
        /// The topic.
        topic: String,
        /// The signed `PUBLISH` envelope, as every subscriber gets it.
        frame: Arc<[u8]>,
    },
}

impl std::fmt::Debug for ClusterAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterAction::Announce { entity } => write!(f, "Announce({entity})"),
            ClusterAction::Withdraw { entity } => write!(f, "Withdraw({entity})"),
            ClusterAction::Forward { node, to, frame } => {
                write!(f, "Forward(to {to} via {node}, {} bytes)", frame.len())
            }
            ClusterAction::Park { to, frame } => write!(f, "Park(for {to}, {} bytes)", frame.len()),
            ClusterAction::Drain { entity } => write!(f, "Drain({entity})"),
            ClusterAction::Listen { topic } => write!(f, "Listen({topic})"),
            ClusterAction::Unlisten { topic } => write!(f, "Unlisten({topic})"),
            ClusterAction::Publish { topic, frame } => {
                write!(f, "Publish(on {topic}, {} bytes)", frame.len())
            }
        }
    }
}

/// A cluster node's view of its broker, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterStats {
    /// Whether the broker is reachable.
    pub up: bool,
    /// Entities in the presence map.
    pub presence: usize,
    /// Announcements ignored because the presence map was full.
    pub presence_dropped: u64,
    /// Frames from the broker refused (not an envelope for the entity they came for).
    pub frames_refused: u64,
}

/// The cluster state of a node.
#[derive(Debug)]
pub(super) struct Cluster {
    config: ClusterConfig,
    /// Whether the broker is reachable: while it is not, frames for entities not linked here
    /// are answered `MAILBOX_FULL` (retry later, spec §19) rather than parked nowhere.
    up: bool,
    /// Which node holds each entity's newest link, as the broker last said, and when. An entry
    /// not announced again for three refreshes is stale (its node may have died: the broker's
    /// record expired, and nobody said so) and counts as absent.
    presence: BTreeMap<EntityId, (EntityId, Timestamp)>,
    /// Announcements ignored because the presence map was full.
    pub dropped: u64,
    /// Frames and publications from the broker refused: not an envelope for the entity they
    /// came for, not a publication on the topic they came on.
    pub refused: u64,
    /// Entities without a peers link here that poll here over HTTP, and when they last did:
    /// announced like linked ones while they keep polling (within two refreshes), so frames
    /// for them come to this node and their polls. Bounded by the polls held (`max_links`).
    pollers: BTreeMap<EntityId, Timestamp>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Self {
        let presence = BTreeMap::new();
        Self { config, up: false, presence, dropped: 0, refused: 0, pollers: BTreeMap::new() }
    }
}

/// Where a frame for an entity not linked to this node goes.
pub(super) enum ClusterRoute {
    /// Not a cluster node: spec §19 as for a single relay.
    Alone,
    /// The broker is unreachable: retry later.
    Unavailable,
    /// Another node holds the entity's link.
    Node(EntityId),
    /// Nobody does: its shared mailbox.
    Mailbox,
}

impl Node {
    /// The cluster's state as this node sees it; `None` when it runs alone.
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.cluster.as_ref().map(|c| ClusterStats {
            up: c.up,
            presence: c.presence.len(),
            presence_dropped: c.dropped,
            frames_refused: c.refused,
        })
    }

    /// Whether this node is one of a cluster whose broker is reachable now.
    pub(super) fn cluster_up_now(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.up)
    }

    /// This node's name in the cluster (`None` when it runs alone).
    pub fn cluster_name(&self) -> Option<&EntityId> {
        let c = self.cluster.as_ref()?;
        Some(c.config.name.as_ref().unwrap_or(self.identity.id()))
    }

    /// Entities whose newest link is on another node of the cluster, with that node's name, as
    /// far as this node knows (fresh presence records only), in entity-id order; empty when it
    /// runs alone.
    pub fn cluster_entities(&self, now: Timestamp) -> impl Iterator<Item = (&EntityId, &EntityId)> {
        let me = self.cluster_name();
        let fresh = self.cluster.as_ref().map(|c| c.config.refresh_every.saturating_mul(3));
        self.cluster.iter().flat_map(|c| c.presence.iter()).filter_map(move |(e, (node, at))| {
            let fresh = fresh.is_some_and(|f| now < at.saturating_add(f));
            (fresh && Some(node) != me).then_some((e, node))
        })
    }

    /// Where a frame for `to` (not linked here) goes in the cluster.
    pub(super) fn cluster_route(&self, now: Timestamp, to: &EntityId) -> ClusterRoute {
        let Some(c) = &self.cluster else { return ClusterRoute::Alone };
        if !c.up {
            return ClusterRoute::Unavailable;
        }
        let me = c.config.name.as_ref().unwrap_or(self.identity.id());
        let fresh_for = c.config.refresh_every.saturating_mul(3);
        match c.presence.get(to) {
            Some((node, at)) if node != me && now < at.saturating_add(fresh_for) => {
                ClusterRoute::Node(node.clone())
            }
            _ => ClusterRoute::Mailbox,
        }
    }

    /// Carries out a cluster route for a frame of a known entity `to`.
    pub(super) fn cluster_send(
        &mut self,
        route: ClusterRoute,
        to: &EntityId,
        frame: Arc<[u8]>,
    ) -> Result<Transport, ErrorCode> {
        // The broker carries JSON frames (spec §27.3).
        let frame = self.json_frame(frame)?;
        let action = match route {
            ClusterRoute::Alone => return Err(ErrorCode::InternalError),
            ClusterRoute::Unavailable => return Err(ErrorCode::MailboxFull),
            ClusterRoute::Node(node) => ClusterAction::Forward { node, to: to.clone(), frame },
            ClusterRoute::Mailbox => ClusterAction::Park { to: to.clone(), frame },
        };
        self.cluster_out(action);
        // Counted as relayed by the broker, as a local mailbox counts as HTTP (spec §19).
        Ok(Transport::Http)
    }

    pub(super) fn cluster_out(&mut self, action: ClusterAction) {
        self.emit(Output::Cluster(action));
    }

    /// `entity`'s newest peers link is now `link` on this node.
    pub(super) fn cluster_bound(&mut self, entity: &EntityId) {
        if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Announce { entity: entity.clone() });
            self.cluster_out(ClusterAction::Drain { entity: entity.clone() });
        }
    }

    /// `entity` called this node over HTTP (it holds a poll here, or posted): what its shared
    /// mailbox holds comes here, for its poll or its next call, and, unless it has a peers link
    /// here or (by a fresh record) on another node, the cluster learns it is reached here (once,
    /// then at each refresh while it keeps calling).
    pub(super) fn cluster_polled(&mut self, now: Timestamp, entity: &EntityId) {
        if !self.cluster_up_now() {
            return;
        }
        self.cluster_out(ClusterAction::Drain { entity: entity.clone() });
        // Linked here, or (by a fresh record) to another node: that node keeps it; this poll gets
        // what is parked for it (the mail notices, `cluster_mail`).
        let linked = self.bound.contains_key(entity)
            || matches!(self.cluster_route(now, entity), ClusterRoute::Node(_));
        if linked {
            return;
        }
        let max = self.config.max_links;
        let Some(c) = self.cluster.as_mut() else { return };
        let new = c.pollers.insert(entity.clone(), now).is_none();
        if c.pollers.len() > max {
            // Bounded: the poller seen longest ago is forgotten (its record expires by itself).
            let oldest = c.pollers.iter().min_by_key(|(_, at)| **at).map(|(e, _)| e.clone());
            if let Some(e) = oldest {
                c.pollers.remove(&e);
            }
        }
        if new {
            self.cluster_out(ClusterAction::Announce { entity: entity.clone() });
        }
    }

    /// Whether `entity` called this node over HTTP lately (within two refreshes), so that its
    /// next call comes here: frames for it wait in the mailbox here, in order.
    pub(super) fn calls_here(&self, now: Timestamp, entity: &EntityId) -> bool {
        let Some(c) = &self.cluster else { return false };
        let keep_for = c.config.refresh_every.saturating_mul(2);
        c.pollers.get(entity).is_some_and(|at| now < at.saturating_add(keep_for))
    }

    /// The broker says something was parked in `entity`'s shared mailbox: if `entity` is linked
    /// here or holds a poll here, this node drains it now (rather than at its next link or poll).
    pub fn cluster_mail(&mut self, now: Timestamp, entity: EntityId) {
        let here = self.bound.contains_key(&entity) || self.polls.contains_key(&entity);
        if here && self.cluster_up_now() {
            self.cluster_out(ClusterAction::Drain { entity });
        }
        self.finish(now);
    }

    /// `entity` has no peers link on this node any more.
    pub(super) fn cluster_unbound(&mut self, entity: &EntityId) {
        if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Withdraw { entity: entity.clone() });
        }
    }

    /// The broker is reachable (again): this node announces every entity linked to it, drains
    /// their shared mailboxes and listens on the topics it has subscribers to; the driver then
    /// feeds the presence the broker holds.
    pub fn cluster_up(&mut self, now: Timestamp) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.up = true;
        let every = c.config.refresh_every;
        let linked: Vec<EntityId> = self.bound.keys().cloned().collect();
        for entity in &linked {
            self.cluster_bound(entity);
        }
        self.cluster_listen_all();
        self.schedule(Timer::Cluster, Some(now.saturating_add(every)));
        self.finish(now);
    }

    /// The broker is unreachable: what it said may be stale, so the presence map is forgotten
    /// until [`cluster_up`](Self::cluster_up); frames for entities not linked here are answered
    /// "retry later" meanwhile.
    pub fn cluster_down(&mut self, now: Timestamp) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.up = false;
        c.presence.clear();
        c.pollers.clear();
        self.schedule(Timer::Cluster, None);
        self.finish(now);
    }

    /// The broker says `entity`'s newest link is on `node` (`None`: on no node).
    pub fn cluster_presence(&mut self, now: Timestamp, entity: EntityId, node: Option<EntityId>) {
        let Some(c) = self.cluster.as_mut() else { return };
        match node {
            None => {
                c.presence.remove(&entity);
            }
            Some(node) => {
                if c.presence.len() >= c.config.max_presence && !c.presence.contains_key(&entity) {
                    c.dropped = c.dropped.saturating_add(1);
                } else {
                    c.presence.insert(entity, (node, now));
                }
            }
        }
        self.finish(now);
    }

    /// A frame for `to` from the broker: forwarded by another node, or drained from `to`'s
    /// shared mailbox. It goes on `to`'s link here; if `to` has none (it moved), back into its
    /// shared mailbox, never to another node (one cluster hop, so no loops). A frame that is not
    /// an envelope for `to`, or is too large, is refused and counted.
    pub fn cluster_frame(&mut self, now: Timestamp, to: EntityId, frame: &[u8]) {
        if self.cluster.is_none() {
            return;
        }
        let addressed = Envelope::decode(frame, self.config.limits.max_frame_bytes)
            .is_ok_and(|env| env.recipient_id.as_ref() == Some(&to));
        if !addressed {
            if let Some(c) = self.cluster.as_mut() {
                c.refused = c.refused.saturating_add(1);
            }
            return;
        }
        let frame: Arc<[u8]> = Arc::from(frame);
        if let Some(link) = self.bound.get(&to).copied() {
            self.transmit(link, frame);
        } else if self.polls.contains_key(&to) || self.calls_here(now, &to) {
            // An HTTP client polling here (now, or lately: its next call comes here) takes it
            // from the mailbox here, in the order it came (a drained batch releases the poll
            // with its first frame: the rest wait for the next); a full mailbox leaves it parked.
            if self.mailbox_push(now, &to, Arc::clone(&frame)).is_err() {
                self.cluster_out(ClusterAction::Park { to, frame });
            }
        } else if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Park { to, frame });
        }
        // Else the broker went down meanwhile: the sender's retransmission repairs it.
        self.finish(now);
    }

    /// The refresh timer: announce every linked entity again.
    /// Entities that polled within two refreshes stay announced; the others are forgotten and
    /// withdrawn (their polls stopped: they are linked elsewhere, or gone).
    pub(super) fn on_cluster_timer(&mut self, now: Timestamp) {
        let polls = &self.polls;
        let Some(c) = self.cluster.as_mut().filter(|c| c.up) else { return };
        let every = c.config.refresh_every;
        let keep_for = every.saturating_mul(2);
        let stopped: Vec<EntityId> = c
            .pollers
            .iter()
            .filter(|(e, at)| !polls.contains_key(*e) && now >= at.saturating_add(keep_for))
            .map(|(e, _)| e.clone())
            .collect();
        for e in &stopped {
            c.pollers.remove(e);
        }
        let polling: Vec<EntityId> =
            c.pollers.keys().filter(|e| !self.bound.contains_key(*e)).cloned().collect();
        // One that another node announced since (linked there now) is that node's.
        let polling: Vec<EntityId> = polling
            .into_iter()
            .filter(|e| !matches!(self.cluster_route(now, e), ClusterRoute::Node(_)))
            .collect();
        let linked: Vec<EntityId> = self.bound.keys().cloned().collect();
        for entity in stopped {
            if !self.bound.contains_key(&entity) {
                self.cluster_out(ClusterAction::Withdraw { entity });
            }
        }
        for entity in linked {
            self.cluster_out(ClusterAction::Announce { entity });
        }
        for entity in polling {
            self.cluster_out(ClusterAction::Announce { entity });
        }
        self.schedule(Timer::Cluster, Some(now.saturating_add(every)));
    }
}
