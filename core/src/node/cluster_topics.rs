//! Topics across a cluster (`docs/cluster.md`): a publication fanned out on one node reaches
//! the subscribers on every other node, each once. A node listens on a topic's cluster channel
//! while it has subscribers to it ([`ClusterAction::Listen`]), hands every publication it fans
//! out to the other nodes ([`ClusterAction::Publish`]), and fans out what they publish to its
//! own subscribers ([`Node::cluster_publication`]), the same signed bytes, never its own again.

use std::sync::Arc;

use super::cluster::ClusterAction;
use super::topics::topic_of;
use super::{Node, Timestamp};
use crate::envelope::Envelope;
use crate::ids::EntityId;
use crate::message_type::MessageType;

impl Node {
    /// `topic` has its first subscriber on this node.
    pub(super) fn cluster_listen(&mut self, topic: &str) {
        if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Listen { topic: topic.to_owned() });
        }
    }

    /// `topic` has no subscriber left on this node.
    pub(super) fn cluster_unlisten(&mut self, topic: &str) {
        if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Unlisten { topic: topic.to_owned() });
        }
    }

    /// The broker is reachable (again): listen on every topic with subscribers here.
    pub(super) fn cluster_listen_all(&mut self) {
        let topics: Vec<String> = self.topics.subscribed().cloned().collect();
        for topic in topics {
            self.cluster_listen(&topic);
        }
    }

    /// A publication this node fanned out goes to the other nodes too.
    pub(super) fn cluster_publish(&mut self, topic: &str, frame: Arc<[u8]>) {
        if self.cluster_up_now() {
            self.cluster_out(ClusterAction::Publish { topic: topic.to_owned(), frame });
        }
    }

    /// A publication on `topic` that the node named `origin` fanned out: this node's
    /// subscribers to `topic` get it (not its own publications, which its subscribers already
    /// have). Anything but a `PUBLISH` envelope on that very topic is refused and counted.
    pub fn cluster_publication(
        &mut self,
        now: Timestamp,
        topic: &str,
        origin: &EntityId,
        frame: &[u8],
    ) {
        if self.cluster.is_none() || self.cluster_name() == Some(origin) {
            return;
        }
        let on_topic =
            Envelope::decode(frame, self.config.limits.max_frame_bytes).is_ok_and(|env| {
                env.message_type == MessageType::Publish && topic_of(&env).as_deref() == Some(topic)
            });
        if !on_topic {
            if let Some(c) = self.cluster.as_mut() {
                c.refused = c.refused.saturating_add(1);
            }
            return;
        }
        self.fan_out(topic, Arc::from(frame), None);
        self.finish(now);
    }
}
