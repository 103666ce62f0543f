//! [`Carrier`]: the broker's task of a cluster node. It carries the node's requests out in
//! pipelined batches, hands drained frames to the node task, starts the [`Reader`] of each
//! subscription (publications), and reconnects when Redis is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::future;
use peerlink_core::EntityId;
use peerlink_core::node::ClusterAction;
use redis::{FromRedisValue, Value};

use super::layout::{self, Layout, PresenceChange};
use super::reader::Reader;
use super::{ClusterTask, connect};
use crate::broker::{Broker, BrokerError, Subscriber};
use crate::metrics::ClusterCounters;
use crate::runtime::sleep;
use crate::state::{ClusterNews, Input};

/// Requests carried in one round trip at most.
const BATCH: usize = 256;

/// Presence keys asked for per `SCAN` step when rebuilding the presence map.
const SCAN_COUNT: usize = 1000;

/// Why serving the broker stopped.
enum Stop {
    /// The node task is gone: the task ends.
    NodeGone,
    /// The broker is lost: tell the node, wait, reconnect.
    Lost(BrokerError),
}

/// What the answer to one pipelined command means.
enum Answer {
    /// Nothing to do with it.
    Ignore,
    /// A `PUBLISH` of a forwarded frame: its receivers (none means the node is not listening,
    /// so the frame goes to the mailbox instead).
    Forward { to: EntityId, frame: std::sync::Arc<[u8]> },
    /// A mailbox append: kept (1) or refused, full (0).
    Park,
    /// The frames drained from `entity`'s mailbox.
    Drain(EntityId),
}

/// The broker's task.
pub(super) struct Carrier {
    task: ClusterTask,
    layout: Layout,
    presence_channel: String,
    node_channel: String,
    mail_channel: String,
}

impl Carrier {
    pub fn new(task: ClusterTask) -> Self {
        let layout = Layout::new(&task.settings.prefix);
        let presence_channel = layout.presence_channel();
        let node_channel = layout.node_channel(&task.name);
        let mail_channel = layout.mail_channel();
        Self { task, layout, presence_channel, node_channel, mail_channel }
    }

    fn counters(&self) -> &ClusterCounters {
        &self.task.counters
    }

    /// Serves the broker, reconnecting whenever it is lost, until the node stops.
    pub async fn run(mut self, first: Broker) {
        let mut next = Some(first);
        loop {
            let broker = match next.take() {
                Some(b) => b,
                None => {
                    match connect(&self.task.rt, &self.task.settings, self.task.tls.clone()).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster broker still unreachable");
                            if self.wait().await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            match self.serve(&broker).await {
                Stop::NodeGone => return,
                Stop::Lost(e) => {
                    tracing::warn!(
                        error = %e,
                        "cluster broker lost: serving local entities only until it is back"
                    );
                }
            }
            self.counters().up.store(false, Ordering::Relaxed);
            if self.tell(ClusterNews::Down).await.is_err() || self.wait().await.is_err() {
                return;
            }
        }
    }

    /// Waits `retry_every` before the next attempt, dropping (and counting) what the node asks
    /// meanwhile; `Err` when the node has stopped.
    async fn wait(&self) -> Result<(), ()> {
        let mut timer = sleep(&*self.task.rt, self.task.settings.retry_every);
        loop {
            let action = future::or(async { Some(self.task.actions.recv().await) }, async {
                (&mut timer).await;
                None
            })
            .await;
            match action {
                None => return Ok(()),
                Some(Ok(_)) => ClusterCounters::add(&self.counters().requests_dropped, 1),
                Some(Err(_)) => return Err(()),
            }
        }
    }

    /// Subscribes, tells the node the broker is up, rebuilds its presence map, then carries
    /// requests and publications until the broker is lost or the node stops.
    async fn serve(&mut self, broker: &Broker) -> Stop {
        let max_payload = self.task.max_frame.saturating_add(256);
        let sub = match self.subscribe(broker, max_payload).await {
            Ok(sub) => sub,
            Err(e) => return Stop::Lost(e),
        };
        self.counters().up.store(true, Ordering::Relaxed);
        ClusterCounters::add(&self.counters().connects, 1);
        tracing::info!(broker = %broker.url(), node = %self.task.name, "cluster broker reached");
        if self.tell(ClusterNews::Up).await.is_err() {
            return Stop::NodeGone;
        }
        if let Err(stop) = self.rebuild(broker).await {
            return stop;
        }
        // Publications are read by a task of their own, so that they never wait behind this
        // task's requests (the node's acknowledgements would delay the frames they answer).
        let sub = Arc::new(sub);
        let (reader_done_tx, reader_done) = async_channel::bounded::<()>(1);
        let (stop_reader, reader_stop) = async_channel::bounded::<()>(1);
        let reader = Reader {
            layout: self.layout.clone(),
            presence_channel: self.presence_channel.clone(),
            node_channel: self.node_channel.clone(),
            mail_channel: self.mail_channel.clone(),
            counters: Arc::clone(&self.task.counters),
            inputs: self.task.inputs.clone(),
        };
        self.task.rt.spawn(Box::pin(reader.run(Arc::clone(&sub), reader_stop, reader_done_tx)));
        // Dropped when serving ends, whatever the reason: the reader stops with it.
        let _stop_reader = stop_reader;
        enum Next {
            Action(Option<ClusterAction>),
            ReaderEnded,
        }
        loop {
            let next =
                future::or(async { Next::Action(self.task.actions.recv().await.ok()) }, async {
                    let _ = reader_done.recv().await;
                    Next::ReaderEnded
                })
                .await;
            match next {
                Next::Action(None) => return Stop::NodeGone,
                Next::Action(Some(first)) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        let Ok(more) = self.task.actions.try_recv() else { break };
                        batch.push(more);
                    }
                    if let Err(stop) = self.carry(broker, &sub, batch).await {
                        return stop;
                    }
                }
                Next::ReaderEnded => {
                    return Stop::Lost(BrokerError::ConnectionLost(
                        "the subscription ended".into(),
                    ));
                }
            }
        }
    }

    async fn subscribe(
        &self,
        broker: &Broker,
        max_payload: usize,
    ) -> Result<Subscriber, BrokerError> {
        let sub = broker.subscriber(self.task.settings.publication_queue, max_payload).await?;
        sub.subscribe(&self.presence_channel).await?;
        sub.subscribe(&self.node_channel).await?;
        sub.subscribe(&self.mail_channel).await?;
        Ok(sub)
    }

    /// Hands `news` to the node task (waiting while its queue is full); `Err` when it stopped.
    async fn tell(&self, news: ClusterNews) -> Result<(), Stop> {
        self.task.inputs.send(Input::Cluster(news)).await.map_err(|_| Stop::NodeGone)
    }

    /// Feeds the node every presence record Redis holds (what was published while this node
    /// was away is lost to it), up to the node's presence bound.
    async fn rebuild(&self, broker: &Broker) -> Result<(), Stop> {
        let mut cursor: u64 = 0;
        let mut told = 0usize;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.layout.presence_pattern())
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let (next, keys): (u64, Vec<Vec<u8>>) =
                broker.query(&scan).await.map_err(Stop::Lost)?;
            if !keys.is_empty() {
                let nodes: Vec<Option<String>> =
                    broker.query(redis::cmd("MGET").arg(&keys)).await.map_err(Stop::Lost)?;
                for (key, node) in keys.iter().zip(nodes) {
                    // A record that expired between the two steps has no node: skip it.
                    let Some(node) = node else { continue };
                    let entity = self.layout.entity_of_presence_key(key);
                    let (Some(entity), Ok(node)) = (entity, EntityId::new(&node)) else {
                        ClusterCounters::add(&self.counters().refused, 1);
                        continue;
                    };
                    if told >= self.task.settings.max_presence {
                        return Ok(());
                    }
                    self.tell(ClusterNews::Presence { entity, node: Some(node) }).await?;
                    told = told.saturating_add(1);
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Carries out `batch` in one round trip (and a second for forwarded frames nobody
    /// received, which go to their mailboxes). A request Redis refuses (an ACL that forbids a
    /// command, Redis out of memory) is logged and counted; the end-to-end layer re-sends what
    /// it carried. A lost connection stops serving.
    async fn carry(
        &self,
        broker: &Broker,
        sub: &Subscriber,
        batch: Vec<ClusterAction>,
    ) -> Result<(), Stop> {
        // Listening on a topic or not is a change of the subscription, not a request.
        let mut requests = Vec::with_capacity(batch.len());
        for action in batch {
            let changed = match &action {
                ClusterAction::Listen { topic } => {
                    sub.subscribe(&self.layout.topic_channel(topic)).await
                }
                ClusterAction::Unlisten { topic } => {
                    sub.unsubscribe(&self.layout.topic_channel(topic)).await
                }
                _ => {
                    requests.push(action);
                    continue;
                }
            };
            match changed {
                Ok(()) => {}
                Err(e @ (BrokerError::Refused(_) | BrokerError::Protocol(_))) => {
                    tracing::warn!(error = %e, "topic subscription refused by the broker");
                    ClusterCounters::add(&self.counters().requests_dropped, 1);
                }
                Err(e) => return Err(Stop::Lost(e)),
            }
        }
        let mut batch = requests;
        while !batch.is_empty() {
            let (pipe, answers) = self.pipeline(batch);
            let values: Vec<Value> = match broker.pipeline(&pipe).await {
                Ok(v) => v,
                Err(e @ (BrokerError::Refused(_) | BrokerError::Protocol(_))) => {
                    tracing::warn!(error = %e, "cluster requests refused by the broker");
                    ClusterCounters::add(&self.counters().requests_dropped, answers.len() as u64);
                    return Ok(());
                }
                Err(e) => return Err(Stop::Lost(e)),
            };
            batch = Vec::new();
            for (answer, value) in answers.into_iter().zip(values) {
                if let Value::ServerError(e) = &value {
                    tracing::warn!(error = ?e, "cluster request refused by the broker");
                    ClusterCounters::add(&self.counters().requests_dropped, 1);
                    continue;
                }
                match answer {
                    Answer::Ignore => {}
                    Answer::Forward { to, frame } => {
                        if i64::from_redis_value(value).is_ok_and(|n| n > 0) {
                            ClusterCounters::add(&self.counters().forwarded, 1);
                        } else {
                            // The node named by presence is not listening (it died, or lost
                            // Redis): the frame waits in the recipient's mailbox instead.
                            batch.push(ClusterAction::Park { to, frame });
                        }
                    }
                    Answer::Park => {
                        if i64::from_redis_value(value).is_ok_and(|n| n == 1) {
                            ClusterCounters::add(&self.counters().parked, 1);
                        } else {
                            ClusterCounters::add(&self.counters().parks_refused, 1);
                        }
                    }
                    Answer::Drain(entity) => {
                        let frames = Vec::<Vec<u8>>::from_redis_value(value).unwrap_or_default();
                        ClusterCounters::add(&self.counters().drained, frames.len() as u64);
                        for frame in frames {
                            let to = entity.clone();
                            self.tell(ClusterNews::Frame { to, frame }).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The commands carrying `batch` out, and what each one's answer means.
    fn pipeline(&self, batch: Vec<ClusterAction>) -> (redis::Pipeline, Vec<Answer>) {
        let name = self.task.name.as_str();
        let presence_ttl = millis(self.task.settings.refresh_every.saturating_mul(3));
        let mailbox = self.task.mailbox;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut answers = Vec::with_capacity(batch.len().saturating_mul(2));
        for action in batch {
            match action {
                ClusterAction::Announce { entity } => {
                    let change = PresenceChange { entity, node: Some(self.task.name.clone()) };
                    pipe.cmd("SET")
                        .arg(self.layout.presence_key(&change.entity))
                        .arg(name)
                        .arg("PX")
                        .arg(presence_ttl);
                    pipe.cmd("PUBLISH").arg(&self.presence_channel).arg(change.encode());
                    answers.extend([Answer::Ignore, Answer::Ignore]);
                }
                ClusterAction::Withdraw { entity } => {
                    let key = self.layout.presence_key(&entity);
                    let change = PresenceChange { entity, node: None };
                    pipe.cmd("EVAL")
                        .arg(layout::WITHDRAW_SCRIPT)
                        .arg(1)
                        .arg(key)
                        .arg(name)
                        .arg(&self.presence_channel)
                        .arg(change.encode());
                    answers.push(Answer::Ignore);
                }
                ClusterAction::Forward { node, to, frame } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.layout.node_channel(&node))
                        .arg(layout::encode_forward(&to, &frame));
                    answers.push(Answer::Forward { to, frame });
                }
                ClusterAction::Park { to, frame } => {
                    let [list, bytes] = self.layout.mailbox_keys(&to);
                    pipe.cmd("EVAL")
                        .arg(layout::PARK_SCRIPT)
                        .arg(2)
                        .arg(list)
                        .arg(bytes)
                        .arg(&*frame)
                        .arg(mailbox.messages)
                        .arg(mailbox.bytes)
                        .arg(millis(mailbox.ttl))
                        .arg(&self.mail_channel)
                        .arg(to.as_str());
                    answers.push(Answer::Park);
                }
                ClusterAction::Drain { entity } => {
                    let [list, bytes] = self.layout.mailbox_keys(&entity);
                    pipe.cmd("EVAL").arg(layout::DRAIN_SCRIPT).arg(2).arg(list).arg(bytes);
                    answers.push(Answer::Drain(entity));
                }
                ClusterAction::Publish { topic, frame } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.layout.topic_channel(&topic))
                        .arg(layout::encode_forward(&self.task.name, &frame));
                    answers.push(Answer::Ignore);
                }
                // Carried out before the pipeline (`carry`).
                ClusterAction::Listen { .. } | ClusterAction::Unlisten { .. } => {}
            }
        }
        (pipe, answers)
    }
}

/// `d` in whole milliseconds, at least 1 (Redis refuses an expiry of 0).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
