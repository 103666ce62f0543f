//! What a durable node writes to its store, and how it is rebuilt from it (spec §26; the
//! layout is in [`crate::durable`]).
//!
//! Every write is an [`Output::Persist`]; the driver makes it durable before it carries out any
//! output queued after it other than an event (events go to the application at once). So the
//! order in which this module's writes are queued, relative to frames, is the durability
//! contract:
//!
//! - an accepted message's frames are queued before `send` returns and before any of its frames
//!   is transmitted: a restarted sender re-sends it under the same epoch and numbers, and the
//!   receiver recognises what it already delivered;
//! - an acknowledged or given-up frame is deleted in the same group as its `Delivered` or
//!   `Failed` event;
//! - a receive position (and a chunk held for reassembly) is written after the messages it
//!   covers are handed to the application and before the acknowledgement that covers them.
//!
//! A crash between handing events to the application and the commit of the writes of the same
//! group may show those events again after the restart (at least once at that boundary, with
//! the same message ids); it never loses one.

use super::peers::PeerState;
use super::{Node, Output, SendError};
use crate::chunking::Chunk;
use crate::durable::{
    ChunkRecord, FrameRecord, RecvRecord, Restored, StoreError, StoreOp, StreamRecord,
    TopicsRecord, encode_with_body, key_of, kind, numbered_key,
};
use crate::error::UsageError;
use crate::ids::EntityId;
use crate::stream::{FailReason, FrameSpec, InFrame, RecvStreams, SendStream};
use crate::time::Timestamp;

/// How often a durable node looks whether the application has taken the events it was handed,
/// while receive positions wait for that.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// What [`Node::restore`] rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Peers with stored state.
    pub peers: usize,
    /// Messages waiting for acknowledgement, to be sent again.
    pub messages: usize,
    /// Messages whose send timeout passed while the node was down: reported failed.
    pub expired: usize,
    /// Chunks of partly received messages.
    pub chunks: usize,
    /// Topic subscriptions at next hops, renewed.
    pub subscriptions: usize,
    /// Envelopes held again in mailboxes for entities not connected (a relay's).
    pub mailboxed: usize,
    /// Mailbox entries dropped: they expired while the node was down, or no longer fit its
    /// bounds.
    pub mailbox_dropped: usize,
}

impl Node {
    fn persist(&mut self, op: StoreOp) {
        self.emit(Output::Persist(op));
    }

    /// Stores the frames `first..` of message `id`, just accepted into `peer`'s outbox.
    pub(super) fn persist_accepted(
        &mut self,
        peer: &EntityId,
        first: u64,
        deadline: Timestamp,
        prefer_websocket: Option<bool>,
    ) {
        if !self.config.durable {
            return;
        }
        let Some(p) = self.peers.get(peer) else { return };
        let stream = StreamRecord { epoch: p.send.epoch(), next: p.send.next_no() };
        let mut ops = vec![StoreOp::Put {
            key: key_of(kind::STREAM, peer),
            value: serde_json::to_vec(&stream).unwrap_or_default(),
        }];
        for no in first..p.send.next_no() {
            let Some(f) = p.send.frame(no) else { continue };
            let record = FrameRecord {
                message_type: f.message_type,
                id: f.message_id.clone(),
                logical: f.logical.clone(),
                reply_to: f.reply_to.clone(),
                app_type: f.app_type.clone(),
                chunk: f.chunk.clone(),
                deadline: deadline.as_unix_millis(),
                ws: prefer_websocket,
            };
            ops.push(StoreOp::Put {
                key: numbered_key(kind::FRAME, peer, no),
                value: encode_with_body(&record, &f.body),
            });
        }
        for op in ops {
            self.persist(op);
        }
    }

    /// Stores the topics the application holds at the next hop `node`.
    pub(super) fn persist_topics(&mut self, node: &EntityId) {
        if !self.config.durable {
            return;
        }
        let topics = self.topics.remote(node);
        let key = key_of(kind::TOPICS, node);
        let op = if topics.is_empty() {
            StoreOp::Delete { key }
        } else {
            StoreOp::Put {
                key,
                value: serde_json::to_vec(&TopicsRecord { topics }).unwrap_or_default(),
            }
        };
        self.persist(op);
    }

    /// Deletes the stored copies of the frames `peer`'s outbox dropped since last time.
    pub(super) fn persist_removed(&mut self, peer: &EntityId) {
        if !self.config.durable {
            return;
        }
        let Some(p) = self.peers.get_mut(peer) else { return };
        for no in p.send.take_removed() {
            self.persist(StoreOp::Delete { key: numbered_key(kind::FRAME, peer, no) });
        }
    }

    /// Notes that `peer`'s receive positions moved from `before`. They are written, and
    /// acknowledged, only once the application has taken every event handed to it
    /// ([`Node::settle_positions`]): an event still waiting in a queue of the driver's would
    /// die with the process, and a position written past it would make its sender's copy a
    /// duplicate after the restart.
    pub(super) fn persist_positions(&mut self, peer: &EntityId, before: Option<Vec<(u64, u64)>>) {
        let Some(before) = before else { return };
        let Some(p) = self.peers.get(peer) else { return };
        if p.recv.positions() != before {
            self.unsettled.insert(peer.clone());
            self.schedule(super::Timer::Settle, Some(Timestamp::default()));
        }
    }

    /// Whether `peer`'s acknowledgements wait for its receive positions to be written.
    pub(super) fn acks_held(&self, peer: &EntityId) -> bool {
        self.unsettled.contains(peer)
    }

    /// A durable node's driver says its application has taken every event handed to it so far
    /// (a driver handing events to the application synchronously calls it after each
    /// `poll_output` round; one with a queue of its own sets [`Node::set_app_backlog`] and the
    /// node looks again before each input and every few milliseconds): the receive positions
    /// held back are written, and the acknowledgements they held sent.
    pub fn events_taken(&mut self, now: Timestamp) {
        self.app_backlog = 0;
        self.settle_positions(now);
    }

    /// Writes the receive positions held back, and sends the acknowledgements they held, if the
    /// application has taken every event; otherwise looks again in [`SETTLE_POLL`].
    pub(super) fn settle_positions(&mut self, now: Timestamp) {
        if self.unsettled.is_empty() {
            return;
        }
        if self.events_queued.saturating_add(self.app_backlog) > 0 {
            self.schedule(super::Timer::Settle, Some(now.saturating_add(SETTLE_POLL)));
            return;
        }
        self.schedule(super::Timer::Settle, None);
        for peer in std::mem::take(&mut self.unsettled) {
            let Some(p) = self.peers.get(&peer) else { continue };
            let epochs = p.recv.positions();
            let value = serde_json::to_vec(&RecvRecord { epochs }).unwrap_or_default();
            self.persist(StoreOp::Put { key: key_of(kind::RECV, &peer), value });
            // The chunks of the messages this position passes, in the same group.
            let freed = self.peers.get_mut(&peer).map(|p| std::mem::take(&mut p.freed_chunks));
            for no in freed.unwrap_or_default() {
                self.persist(StoreOp::Delete { key: numbered_key(kind::CHUNK, &peer, no) });
            }
            // The acknowledgement follows the write.
            self.flush_control(now, &peer);
            self.reschedule_peer(&peer);
        }
    }

    /// `peer`'s receive positions now, if this node stores them.
    pub(super) fn positions_before(&self, peer: &EntityId) -> Option<Vec<(u64, u64)>> {
        self.config.durable.then(|| self.peers.get(peer).map(|p| p.recv.positions()))?
    }

    /// Stores a chunk just handed to reassembly (its receive position moves past it).
    pub(super) fn persist_chunk(&mut self, peer: &EntityId, frame: &InFrame) {
        if !self.config.durable {
            return;
        }
        let record = ChunkRecord {
            message_type: frame.message_type,
            id: frame.message_id.clone(),
            header: frame.header.clone(),
        };
        let no = frame.header.no;
        if let Some(p) = self.peers.get_mut(peer) {
            p.stored_chunks.push(no);
        }
        let value = encode_with_body(&record, &frame.body);
        self.persist(StoreOp::Put { key: numbered_key(kind::CHUNK, peer, no), value });
    }

    /// Deletes the stored chunks of the message `peer` was reassembling (it completed, or was
    /// given up).
    pub(super) fn persist_chunks_done(&mut self, peer: &EntityId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let nos = std::mem::take(&mut p.stored_chunks);
        for no in nos {
            self.persist(StoreOp::Delete { key: numbered_key(kind::CHUNK, peer, no) });
        }
    }

    /// Deletes everything stored about `peer`, whose state is being dropped.
    pub(super) fn persist_forgotten(&mut self, peer: &EntityId, state: &mut PeerState) {
        if !self.config.durable {
            return;
        }
        self.unsettled.remove(peer);
        let mut ops = vec![
            StoreOp::Delete { key: key_of(kind::STREAM, peer) },
            StoreOp::Delete { key: key_of(kind::RECV, peer) },
        ];
        for no in state.send.take_removed().into_iter().chain(state.send.frame_numbers()) {
            ops.push(StoreOp::Delete { key: numbered_key(kind::FRAME, peer, no) });
        }
        let freed = std::mem::take(&mut state.freed_chunks);
        for no in std::mem::take(&mut state.stored_chunks).into_iter().chain(freed) {
            ops.push(StoreOp::Delete { key: numbered_key(kind::CHUNK, peer, no) });
        }
        for op in ops {
            self.persist(op);
        }
    }

    /// Rebuilds a durable node from the entries its store holds, read back after a restart:
    /// outboxes (re-sent under their old epochs and numbers once a session is up), receive
    /// positions, and chunks of partly received messages. Call it once, on a new node, before
    /// any other input. Messages whose send timeout passed while the node was down are reported
    /// failed (`maybe_delivered` as the stored frames allow).
    ///
    /// Entries are hostile input: a malformed one is a [`StoreError`] and the node is left as
    /// it was.
    pub fn restore(
        &mut self,
        now: Timestamp,
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<RestoreSummary, RestoreError> {
        if !self.config.durable {
            return Err(RestoreError::Usage(UsageError::InvalidConfig(
                "restore needs a node with NodeConfig::durable set",
            )));
        }
        let restored = Restored::parse(entries)?;
        if restored.peers.keys().any(|p| self.peers.contains_key(p)) {
            return Err(RestoreError::Usage(UsageError::InvalidConfig(
                "restore must come before anything is sent or received",
            )));
        }
        let with_state = restored.peers.values().filter(|r| r.has_peer_state()).count();
        if with_state > self.config.max_peers.saturating_add(self.config.max_links) {
            return Err(StoreError::OverLimit("more peers than max_peers").into());
        }
        let mut summary = RestoreSummary::default();
        for (peer, mut records) in restored.peers {
            for (number, (record, frame)) in std::mem::take(&mut records.mailbox) {
                if self.restore_mailbox_entry(now, &peer, number, record, frame) {
                    summary.mailboxed = summary.mailboxed.saturating_add(1);
                } else {
                    summary.mailbox_dropped = summary.mailbox_dropped.saturating_add(1);
                }
            }
            // Subscriptions at a next hop: renewed at once if the hop is configured, else kept
            // until it is (sent when its link comes up).
            if !records.topics.is_empty() {
                summary.subscriptions = summary.subscriptions.saturating_add(records.topics.len());
                let topics = records.topics.clone();
                self.topics.restore_remote(peer.clone(), std::mem::take(&mut records.topics));
                if let Some(h) = self.hops.get_mut(&peer) {
                    h.wanted = true;
                    for topic in &topics {
                        self.send_subscription(
                            now,
                            &peer,
                            topic,
                            crate::message_type::MessageType::Subscribe,
                        );
                    }
                }
            }
            if !records.has_peer_state() {
                continue;
            }
            self.ensure_peer(now, &peer).map_err(|e| match e {
                SendError::LimitReached(what) => RestoreError::Store(StoreError::OverLimit(what)),
                _ => RestoreError::Store(StoreError::OverLimit("max_peers")),
            })?;
            summary.peers = summary.peers.saturating_add(1);
            let Some(p) = self.peers.get_mut(&peer) else { continue };
            p.send.journal();
            let mut outgoing = std::collections::BTreeMap::new();
            let frames: Vec<_> = records
                .frames
                .into_iter()
                .map(|(no, (r, body))| {
                    let meta = super::peers::Outgoing {
                        prefer_websocket: r.ws,
                        typed: r.app_type.is_some(),
                        carried: None,
                    };
                    outgoing.insert(r.logical.clone(), meta);
                    let spec = FrameSpec {
                        message_type: r.message_type,
                        message_id: r.id,
                        reply_to: r.reply_to,
                        app_type: r.app_type,
                        chunk: r.chunk,
                        body,
                    };
                    (no, spec, r.logical, Timestamp::from_unix_millis(r.deadline))
                })
                .collect();
            if let Some(stream) = records.stream {
                p.send = SendStream::restored(stream.epoch, stream.next, frames, now);
            } else if !frames.is_empty() {
                return Err(StoreError::Corrupt {
                    key: crate::durable::describe_key(&key_of(kind::STREAM, &peer)),
                    reason: "outbox frames stored without their stream".to_owned(),
                }
                .into());
            }
            summary.messages = summary.messages.saturating_add(outgoing.len());
            p.outgoing = outgoing;
            if let Some(recv) = records.recv {
                p.recv = RecvStreams::restored(&recv.epochs, &self.config.stream);
            }
            for (no, (r, body)) in records.chunks {
                let Some(c) = r.header.chunk else { continue };
                let chunk = Chunk {
                    chunk_id: c.id.clone(),
                    sequence_number: c.seq,
                    is_last: c.last,
                    total_len: c.total,
                    data: body,
                };
                // A chunk that does not fit what is held (a store from another configuration)
                // is dropped with the rest of its message, as reassembly would.
                if p.reassembly.insert(chunk, now).is_ok() {
                    p.assembling = Some(c.id);
                    summary.chunks = summary.chunks.saturating_add(1);
                }
                p.stored_chunks.push(no);
            }
        }
        self.schedule_mailbox_expiry();
        let peers: Vec<EntityId> = self.peers.keys().cloned().collect();
        for peer in &peers {
            let expired = self.peers.get_mut(peer).map(|p| p.send.expire(now)).unwrap_or_default();
            summary.expired = summary.expired.saturating_add(expired.len());
            for failure in expired {
                if let Some(p) = self.peers.get_mut(peer) {
                    p.outgoing.remove(&failure.id);
                }
                self.report_failed(peer, failure, FailReason::Timeout);
            }
            self.flush_peer(now, peer);
        }
        Ok(summary)
    }
}

/// Why [`Node::restore`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// What the store holds cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node was not one to restore.
    #[error(transparent)]
    Usage(#[from] UsageError),
}
