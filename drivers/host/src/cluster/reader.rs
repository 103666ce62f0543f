//! [`Reader`]: the subscription side of a cluster node's broker task. It reads what is published
//! on the node's channels, checks it, and hands it to the node task, on a task of its own so that
//! publications never wait behind the requests the carrier has in flight.

use std::sync::Arc;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use peerlink_core::EntityId;

use super::layout::{self, Layout, PresenceChange};
use crate::broker::{Published, Subscriber};
use crate::metrics::ClusterCounters;
use crate::state::{ClusterNews, Input};

/// The node's channels and where what comes on them goes.
pub(super) struct Reader {
    pub layout: Layout,
    pub presence_channel: String,
    pub node_channel: String,
    pub mail_channel: String,
    pub counters: Arc<ClusterCounters>,
    pub inputs: Sender<Input>,
}

impl Reader {
    /// Reads `sub` until it is lost, `stop` closes (the carrier stopped serving) or the node
    /// task is gone; `done` closes when it returns.
    pub async fn run(self, sub: Arc<Subscriber>, stop: Receiver<()>, done: Sender<()>) {
        let messages = sub.messages();
        let mut dropped_seen = 0u64;
        loop {
            let next = future::or(async { messages.recv().await.ok() }, async {
                let _ = stop.recv().await;
                None
            })
            .await;
            let Some(p) = next else { break };
            if !self.published(p).await {
                break;
            }
            let dropped = sub.dropped().saturating_add(sub.oversized());
            if dropped > dropped_seen {
                ClusterCounters::add(&self.counters.publications_dropped, dropped - dropped_seen);
                dropped_seen = dropped;
            }
        }
        drop(done);
    }

    /// A publication on one of the node's channels, checked and handed to the node; `false`
    /// when the node task is gone.
    async fn published(&self, p: Published) -> bool {
        let news = if p.channel == self.presence_channel {
            PresenceChange::decode(&p.payload)
                .map(|c| ClusterNews::Presence { entity: c.entity, node: c.node })
        } else if p.channel == self.node_channel {
            layout::decode_forward(&p.payload)
                .map(|(to, frame)| ClusterNews::Frame { to, frame: frame.to_vec() })
        } else if p.channel == self.mail_channel {
            let entity = std::str::from_utf8(&p.payload).ok().and_then(|e| EntityId::new(e).ok());
            entity.map(|entity| ClusterNews::Mail { entity })
        } else if let Some(topic) = self.layout.topic_of_channel(&p.channel) {
            layout::decode_forward(&p.payload).map(|(origin, frame)| ClusterNews::Publication {
                topic: topic.to_owned(),
                origin,
                frame: frame.to_vec(),
            })
        } else {
            None
        };
        match news {
            Some(news) => {
                if matches!(news, ClusterNews::Frame { .. }) {
                    ClusterCounters::add(&self.counters.frames_received, 1);
                }
                self.inputs.send(Input::Cluster(news)).await.is_ok()
            }
            None => {
                tracing::debug!(channel = %p.channel, bytes = p.payload.len(), "publication refused");
                ClusterCounters::add(&self.counters.refused, 1);
                true
            }
        }
    }
}
