//! A node that is one of a cluster sharing a Redis broker (`docs/cluster.md`, spec §25): the
//! broker's task. The node decides where each frame goes ([`peerlink_core::node::ClusterAction`]);
//! this task carries those decisions out against Redis and hands what Redis says back to the
//! node task (`ClusterNews`). It owns two connections, one for
//! requests (`carrier`) and one for the node's subscriptions (the presence, mail and topic
//! channels and its own forward channel, read by `reader` on a task of its own), and when either
//! is lost it tells the node (which answers "retry later" for entities
//! on other nodes meanwhile), waits, reconnects, resubscribes and rebuilds the presence map from
//! the records Redis holds, by itself, for as long as the node runs.

mod carrier;
mod layout;
mod reader;

use std::sync::Arc;

use async_channel::Receiver;
use peerlink_core::EntityId;
use peerlink_core::node::ClusterAction;

use crate::broker::{Broker, BrokerError};
use crate::config::ClusterSettings;
use crate::metrics::ClusterCounters;
use crate::runtime::Rt;
use crate::state::Input;
use crate::tls::rustls;

pub use layout::{Layout, PresenceChange};

/// The bounds of the shared mailboxes, as the node's own (spec §19).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MailboxBounds {
    /// Frames per entity.
    pub messages: usize,
    /// Bytes per entity.
    pub bytes: usize,
    /// Expiry of a mailbox after its newest frame.
    pub ttl: std::time::Duration,
}

/// Everything the broker's task needs.
pub(crate) struct ClusterTask {
    /// The runtime its connections and timers run on.
    pub rt: Rt,
    /// The cluster's settings.
    pub settings: ClusterSettings,
    /// This node's name in the cluster.
    pub name: EntityId,
    /// TLS for `rediss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Shared mailboxes' bounds.
    pub mailbox: MailboxBounds,
    /// Largest frame the node takes.
    pub max_frame: usize,
    /// Counters shared with the node task and the endpoints.
    pub counters: Arc<ClusterCounters>,
    /// The node task's input queue.
    pub inputs: async_channel::Sender<Input>,
    /// What the node asks of the broker.
    pub actions: Receiver<ClusterAction>,
}

/// Connects to the broker, so that a node that cannot reach it at start fails to start with the
/// reason (a wrong URL, credentials or CA refuse at once, not after retries).
pub(crate) async fn connect(
    rt: &Rt,
    settings: &ClusterSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Broker, BrokerError> {
    Broker::connect(rt, &settings.redis_url, tls, settings.timeout).await
}

/// Runs the broker's task with its first connection, `broker`, until the node stops.
pub(crate) async fn run(task: ClusterTask, broker: Broker) {
    carrier::Carrier::new(task).run(broker).await
}
