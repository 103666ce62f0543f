//! Signed session-less messages in: heartbeats, errors, goodbyes, resume, and topics (seed 004:
//! subscribe, unsubscribe, publish; one encoding, the same bytes to every subscriber).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::links::Source;
use super::{Event, LinkId, LinkKind, Node, SendError};
use crate::envelope::{Envelope, Payload};
use crate::error::{ErrorCode, UsageError};
use crate::ids::EntityId;
use crate::message_type::MessageType;
use crate::signed::signed_message;
use crate::time::Timestamp;
use crate::transport::TransportPreference;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Checks a topic name: 1 to 128 bytes of `A-Z a-z 0-9 . _ / -`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

/// Topic subscriptions held by this node, and those its application holds on next hops.
#[derive(Debug, Default)]
pub(super) struct Topics {
    subscribers: BTreeMap<String, BTreeSet<LinkId>>,
    /// Topics this node's application subscribed to, per next hop.
    remote: BTreeMap<EntityId, BTreeSet<String>>,
}

impl Topics {
    /// Removes `link`'s subscriptions to `topics`; returns the topics left with no subscriber.
    pub fn remove_link(&mut self, link: LinkId, topics: &BTreeSet<String>) -> Vec<String> {
        let mut emptied = Vec::new();
        for t in topics {
            if let Some(set) = self.subscribers.get_mut(t) {
                set.remove(&link);
                if set.is_empty() {
                    self.subscribers.remove(t);
                    emptied.push(t.clone());
                }
            }
        }
        emptied
    }

    /// The topics with at least one subscriber on this node.
    pub fn subscribed(&self) -> impl Iterator<Item = &String> {
        self.subscribers.keys()
    }

    /// Sets what the application subscribed to on `hop` (a durable node's restore).
    pub fn restore_remote(&mut self, hop: EntityId, topics: Vec<String>) {
        self.remote.insert(hop, topics.into_iter().collect());
    }

    /// Topics the application subscribed to on `hop`.
    pub fn remote(&self, hop: &EntityId) -> Vec<String> {
        self.remote.get(hop).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

pub(super) fn topic_of(env: &Envelope) -> Option<String> {
    env.payload
        .value()
        .get("topic")
        .and_then(Value::as_str)
        .filter(|t| valid_topic(t))
        .map(str::to_owned)
}

impl Node {
    /// A signed session-less message addressed to this node (or to the next hop, `null`).
    pub(super) fn on_signed(&mut self, now: Timestamp, source: &Source, env: Envelope) {
        let Some(key) = self.key_of(source, &env.sender_id) else {
            self.answer(now, source, &env, ErrorCode::AuthenticationFailed);
            return;
        };
        if let Err(e) = self.guard.accept(&env, &key, now) {
            self.answer(now, source, &env, e.code());
            return;
        }
        let events_link = match source {
            Source::Link(l) => self.links.get(l).is_some_and(|l| l.kind == LinkKind::Events),
            _ => false,
        };
        match env.message_type {
            MessageType::Ping => self.answer_ping(now, source, &env),
            MessageType::Pong => {}
            MessageType::Error => self.on_error(now, &env),
            MessageType::Bye => {
                if let Source::Link(link) = source {
                    self.close_link(now, *link, None);
                }
            }
            MessageType::SessionResume if !events_link => self.on_resume(now, source, &env),
            MessageType::SessionResumed if !events_link => self.on_resumed(now, &env),
            MessageType::Subscribe | MessageType::Unsubscribe => {
                self.on_subscription(now, source, &env)
            }
            MessageType::Publish => self.on_publish(now, source, &env),
            _ => self.answer(now, source, &env, ErrorCode::InvalidState),
        }
    }

    fn on_subscription(&mut self, now: Timestamp, source: &Source, env: &Envelope) {
        let (Source::Link(link), Some(topic)) = (source, topic_of(env)) else {
            // Topics need a push channel: only WebSocket links subscribe.
            self.answer(now, source, env, ErrorCode::InvalidMessage);
            return;
        };
        let link = *link;
        let max_per_link = self.config.max_subscriptions_per_link;
        let max_topics = self.config.max_topics;
        let Some(l) = self.links.get_mut(&link) else { return };
        if env.message_type == MessageType::Unsubscribe {
            l.subscriptions.remove(&topic);
            let single = BTreeSet::from([topic]);
            for emptied in self.topics.remove_link(link, &single) {
                self.cluster_unlisten(&emptied);
            }
            return;
        }
        let new_topic = !self.topics.subscribers.contains_key(&topic);
        if l.subscriptions.len() >= max_per_link
            || (new_topic && self.topics.subscribers.len() >= max_topics)
        {
            self.answer(now, source, env, ErrorCode::RateLimitExceeded);
            return;
        }
        l.subscriptions.insert(topic.clone());
        self.topics.subscribers.entry(topic.clone()).or_default().insert(link);
        if new_topic {
            self.cluster_listen(&topic);
        }
    }

    fn on_publish(&mut self, now: Timestamp, source: &Source, env: &Envelope) {
        let Some(topic) = topic_of(env) else {
            self.answer(now, source, env, ErrorCode::InvalidMessage);
            return;
        };
        let data = env.payload.value().get("data").cloned().unwrap_or(Value::Null);
        match source {
            // From a next hop we subscribed on: it is for the application.
            _ if self.is_remote_subscription(source, &topic) => {
                self.event(Event::Topic { topic, from: env.sender_id.clone(), data });
            }
            _ => {
                // From a client: fan the same bytes out to every subscriber but the publisher.
                let frame: Arc<[u8]> = Arc::from(env.encode());
                let exclude = match source {
                    Source::Link(l) => Some(*l),
                    _ => None,
                };
                self.fan_out(&topic, Arc::clone(&frame), exclude);
                self.cluster_publish(&topic, frame);
            }
        }
    }

    fn is_remote_subscription(&self, source: &Source, topic: &str) -> bool {
        let hop = match source {
            Source::Hop(h) => Some(h.clone()),
            Source::Link(l) => match self.links.get(l).map(|l| &l.direction) {
                Some(super::links::Direction::Outbound(h)) => Some(h.clone()),
                _ => None,
            },
            Source::Http(..) => None,
        };
        hop.is_some_and(|h| self.topics.remote.get(&h).is_some_and(|s| s.contains(topic)))
    }

    pub(super) fn fan_out(
        &mut self,
        topic: &str,
        frame: Arc<[u8]>,
        exclude: Option<LinkId>,
    ) -> usize {
        let links: Vec<LinkId> = self
            .topics
            .subscribers
            .get(topic)
            .map(|s| s.iter().copied().filter(|l| Some(*l) != exclude).collect())
            .unwrap_or_default();
        for link in &links {
            self.transmit(*link, Arc::clone(&frame));
        }
        links.len()
    }

    /// Publishes `data` on `topic` to every link subscribed on this node. The message is signed
    /// and encoded once; every subscriber gets the same bytes. Returns how many links it reached.
    pub fn publish(
        &mut self,
        now: Timestamp,
        topic: &str,
        data: Value,
    ) -> Result<usize, UsageError> {
        let env = self.publish_envelope(now, topic, data)?;
        let frame: Arc<[u8]> = Arc::from(env.encode());
        let reached = self.fan_out(topic, Arc::clone(&frame), None);
        self.cluster_publish(topic, frame);
        self.finish(now);
        Ok(reached)
    }

    fn publish_envelope(
        &mut self,
        now: Timestamp,
        topic: &str,
        data: Value,
    ) -> Result<Envelope, UsageError> {
        if !valid_topic(topic) {
            return Err(UsageError::InvalidId {
                kind: "topic",
                reason: "1-128 bytes of A-Z a-z 0-9 . _ / -",
            });
        }
        let payload = Payload::new(json!({"topic": topic, "data": data}))?;
        signed_message(
            &self.identity,
            MessageType::Publish,
            None,
            None,
            payload,
            now,
            &mut *self.rng,
        )
    }

    /// Publishes on `topic` through the next hop `node`, which fans it out to its subscribers.
    pub fn publish_via(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        topic: &str,
        data: Value,
    ) -> Result<(), SendError> {
        let env = self.publish_envelope(now, topic, data)?;
        self.send_to_hop(now, node, env)?;
        self.finish(now);
        Ok(())
    }

    /// Subscribes to `topic` on the next hop `node`; messages arrive as [`Event::Topic`]. The
    /// subscription is renewed on every reconnect.
    pub fn subscribe(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        topic: &str,
    ) -> Result<(), SendError> {
        self.subscription(now, node, topic, MessageType::Subscribe)
    }

    /// Ends a subscription made with [`Node::subscribe`].
    pub fn unsubscribe(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        topic: &str,
    ) -> Result<(), SendError> {
        self.subscription(now, node, topic, MessageType::Unsubscribe)
    }

    fn subscription(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        topic: &str,
        kind: MessageType,
    ) -> Result<(), SendError> {
        if !valid_topic(topic) {
            return Err(UsageError::InvalidId {
                kind: "topic",
                reason: "1-128 bytes of A-Z a-z 0-9 . _ / -",
            }
            .into());
        }
        if !self.hops.contains_key(node) {
            return Err(SendError::Unreachable(node.clone()));
        }
        let set = self.topics.remote.entry(node.clone()).or_default();
        let changed = if kind == MessageType::Subscribe {
            set.insert(topic.to_owned())
        } else {
            set.remove(topic)
        };
        if changed {
            self.persist_topics(node);
        }
        if let Some(h) = self.hops.get_mut(node) {
            h.wanted = true;
        }
        self.send_subscription(now, node, topic, kind);
        self.finish(now);
        Ok(())
    }

    /// Sends one `SUBSCRIBE`/`UNSUBSCRIBE` over the hop's WebSocket link (opening it if needed).
    pub(super) fn send_subscription(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        topic: &str,
        kind: MessageType,
    ) {
        let payload = Payload::trusted(json!({"topic": topic}));
        if let Ok(env) =
            signed_message(&self.identity, kind, None, None, payload, now, &mut *self.rng)
        {
            let frame = Arc::from(env.encode());
            // If the link is not up yet, the subscription is sent on `link_up`.
            let _ = self.send_via_hop(now, node, frame, TransportPreference::WebsocketOnly, None);
        }
    }

    /// Sends one `SUBSCRIBE` directly on `link`.
    pub(super) fn subscribe_on_link(&mut self, now: Timestamp, link: LinkId, topic: &str) {
        let payload = Payload::trusted(json!({"topic": topic}));
        let kind = MessageType::Subscribe;
        if let Ok(env) =
            signed_message(&self.identity, kind, None, None, payload, now, &mut *self.rng)
        {
            self.transmit(link, Arc::from(env.encode()));
        }
    }

    fn send_to_hop(
        &mut self,
        now: Timestamp,
        node: &EntityId,
        env: Envelope,
    ) -> Result<(), SendError> {
        if !self.hops.contains_key(node) {
            return Err(SendError::Unreachable(node.clone()));
        }
        let preference = self.config.preference;
        match self.send_via_hop(now, node, Arc::from(env.encode()), preference, None) {
            super::hops::HopSend::Failed => Err(SendError::Unreachable(node.clone())),
            _ => Ok(()),
        }
    }
}
