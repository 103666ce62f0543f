//! Reliable, ordered, exactly-once delivery between two entities (spec §"Delivery").
//!
//! Every application message travels in one or more **data frames**, each the plaintext of one
//! session message. A frame is a small JSON header, a newline, then the body bytes:
//!
//! ```text
//! {"base":3,"epoch":1234,"no":7}\n<body>
//! ```
//!
//! - `epoch` names the sender's stream (a random integer chosen when the sender's state is
//!   created; a restarted sender starts a new epoch);
//! - `no` numbers frames 1, 2, 3 … in sending order within the epoch;
//! - `base` is the lowest `no` the sender has neither had acknowledged nor given up on;
//! - `reply_to` (in a `TASK_RESPONSE`) names the request's message id;
//! - `chunk` (in a `CHUNKED_MESSAGE`) is `{"id","seq","last","total","type"}`.
//!
//! The receiver delivers frames of an epoch in `no` order, each once, and acknowledges with an
//! `ACK` whose plaintext is `{"ack":{"cumulative":N,"epoch":E,"selective":[…]}}`: every `no ≤ N`
//! and every listed `no` was received. The same message may carry `"forward":{"epoch","base"}`,
//! the sender's own `base`, when no data frame is left to carry it. The sender keeps unacknowledged frames in a bounded outbox
//! and re-sends them (sealed anew, so with a new `seq`) after a timeout or when a link or session
//! comes back. Frames are re-sent until acknowledged or until the message's send timeout, when
//! the application is told the message failed; `base` then moves past it so the receiver does not
//! wait for it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::canonical::MAX_SAFE_INTEGER;
use crate::error::ProtocolError;
use crate::ids::MessageId;
use crate::message_type::MessageType;
use crate::time::Timestamp;

/// Largest data-frame header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;

/// Most selective acknowledgements in one `ACK`.
pub const MAX_SELECTIVE: usize = 64;

/// Chunk fields of a `CHUNKED_MESSAGE` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    /// The logical message's id.
    pub id: MessageId,
    /// 0-based position of this chunk.
    pub seq: u32,
    /// Whether this is the final chunk.
    pub last: bool,
    /// Length of the whole message in bytes.
    pub total: u64,
    /// The logical message's type.
    #[serde(rename = "type")]
    pub message_type: MessageType,
}

/// The header of a data frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataHeader {
    /// The sender's stream.
    pub epoch: u64,
    /// This frame's number in the stream.
    pub no: u64,
    /// Lowest frame number still outstanding at the sender.
    pub base: u64,
    /// For `TASK_RESPONSE`: the request's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// For `CHUNKED_MESSAGE`: the chunk fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkHeader>,
}

/// Encodes a data frame: header JSON, `\n`, body.
pub fn encode_data(header: &DataHeader, body: &[u8]) -> Vec<u8> {
    // Serializing a struct of integers, ids and booleans cannot fail.
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.reserve(body.len().saturating_add(1));
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Splits and checks a data frame.
pub fn decode_data(plaintext: &[u8]) -> Result<(DataHeader, &[u8]), ProtocolError> {
    let bad = |reason| ProtocolError::InvalidField { field: "data header", reason };
    let search = plaintext.get(..plaintext.len().min(MAX_HEADER_BYTES.saturating_add(1)));
    let split = search
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
        .ok_or(bad("no header line within 1024 bytes"))?;
    let header_bytes = plaintext.get(..split).ok_or(bad("truncated"))?;
    let body = plaintext.get(split.saturating_add(1)..).ok_or(bad("truncated"))?;
    let header: DataHeader = serde_json::from_slice(header_bytes)
        .map_err(|e| ProtocolError::Malformed(format!("data header: {e}")))?;
    if header.no == 0 || header.no > MAX_SAFE_INTEGER || header.base > header.no {
        return Err(bad("no must be >= 1 and base <= no"));
    }
    if header.epoch == 0 || header.epoch > MAX_SAFE_INTEGER {
        return Err(bad("epoch must be in 1..=2^53-1"));
    }
    Ok((header, body))
}

/// Acknowledgement of the frames received on one of the peer's streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The acknowledged stream.
    pub epoch: u64,
    /// Every frame number up to and including this one was received (or given up by the sender).
    pub cumulative: u64,
    /// Further frame numbers received, above `cumulative` (at most 64).
    pub selective: Vec<u64>,
}

/// The sender's own stream position: "I have nothing outstanding below `base`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The sender's stream.
    pub epoch: u64,
    /// Lowest frame number still outstanding at the sender.
    pub base: u64,
}

/// The plaintext of an `ACK` message: stream control in both directions. `ack` acknowledges the
/// peer's stream; `forward` announces this side's `base` when no data frame is left to carry it
/// (after a message was given up), so the peer stops waiting for frames that will never come.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamControl {
    /// Acknowledgement of the peer's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
    /// This side's stream position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
}

impl StreamControl {
    /// Encodes the `ACK` plaintext.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks an `ACK` plaintext.
    pub fn decode(plaintext: &[u8]) -> Result<Self, ProtocolError> {
        if plaintext.len() > MAX_HEADER_BYTES.saturating_mul(2) {
            return Err(ProtocolError::InvalidField { field: "ack", reason: "too long" });
        }
        let c: StreamControl = serde_json::from_slice(plaintext)
            .map_err(|e| ProtocolError::Malformed(format!("ack: {e}")))?;
        if c.ack.as_ref().is_some_and(|a| a.selective.len() > MAX_SELECTIVE) {
            return Err(ProtocolError::InvalidField { field: "ack", reason: "too many selective" });
        }
        if c.forward.is_some_and(|f| f.epoch == 0 || f.base == 0) {
            return Err(ProtocolError::InvalidField {
                field: "ack",
                reason: "forward out of range",
            });
        }
        Ok(c)
    }
}

impl Ack {
    fn covers(&self, no: u64) -> bool {
        no <= self.cumulative || self.selective.contains(&no)
    }
}

/// Bounds and timers of the delivery layer. Defaults are those of spec §"Limits".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Frames sent but not yet acknowledged, per peer. Default 128.
    pub send_window: u64,
    /// Body bytes of the frames the send window spans, per peer: a frame is first sent only if
    /// it and the unacknowledged frames before it, from `base`, total at most this many bytes.
    /// The frame at `base` is always allowed, however large, so a stream always makes progress.
    /// Default 4 MiB: it drains in less than the 200 ms minimum retransmission timeout at
    /// 20 MiB/s or more, so queueing alone does not trigger retransmissions (with the frame
    /// window alone, 128 chunks of 256 KiB put 32 MiB in a transport's queue). It still spans 16
    /// chunks of 256 KiB and 64 frames of 64 KiB, more than `ack_every`: a byte window that holds
    /// fewer frames than `ack_every` waits `ack_delay` for every acknowledgement (1 MiB halved the
    /// benchmark's WebSocket throughput).
    pub send_window_bytes: usize,
    /// Frames a receiver buffers ahead of the next one it can deliver, per peer. Default 256.
    pub recv_window: u64,
    /// Bytes a receiver buffers out of order, per peer. Default 16 MiB.
    pub max_recv_buffer_bytes: usize,
    /// Messages waiting for acknowledgement, per peer; `send` fails beyond. Default 1024.
    pub max_outbox_messages: usize,
    /// Bytes waiting for acknowledgement, per peer; `send` fails beyond. Default 64 MiB.
    pub max_outbox_bytes: usize,
    /// First retransmission timeout. Default 1 s.
    pub initial_rto: Duration,
    /// Smallest retransmission timeout. Default 200 ms.
    pub min_rto: Duration,
    /// Largest retransmission timeout. Default 10 s.
    pub max_rto: Duration,
    /// A message not acknowledged within this time fails. Default 60 s.
    pub send_timeout: Duration,
    /// Longest an acknowledgement is held to be combined with others. Default 5 ms.
    pub ack_delay: Duration,
    /// Frames received without an acknowledgement after which one is sent at once, without
    /// waiting for `ack_delay` (so a full send window is not held for it). Default 32, a quarter
    /// of the default `send_window`; 0 counts as 1.
    pub ack_every: u64,
    /// Epochs remembered per sender (a restarted sender starts a new one). Default 4.
    pub max_epochs: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            send_window: 128,
            send_window_bytes: 4 << 20,
            recv_window: 256,
            max_recv_buffer_bytes: 16 << 20,
            max_outbox_messages: 1024,
            max_outbox_bytes: 64 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            ack_delay: Duration::from_millis(5),
            ack_every: 32,
            max_epochs: 4,
        }
    }
}

/// One frame of a message waiting for acknowledgement. `Debug` shows the body's length only.
#[derive(Clone)]
pub struct OutFrame {
    /// The envelope type it is sealed as.
    pub message_type: MessageType,
    /// The envelope `message_id` (kept across re-sends).
    pub message_id: MessageId,
    /// The logical message it belongs to.
    pub logical: MessageId,
    /// Header fields other than `epoch`, `no` and `base`.
    pub reply_to: Option<MessageId>,
    /// Chunk fields, for chunks.
    pub chunk: Option<ChunkHeader>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// When it was last sent; `None` if never.
    pub sent_at: Option<Timestamp>,
    /// How many times it was sent.
    pub attempts: u32,
    /// When it is due for (re)transmission.
    pub due: Timestamp,
}

/// A logical message in the outbox.
#[derive(Debug, Clone)]
struct Logical {
    frames: BTreeSet<u64>,
    bytes: usize,
    deadline: Timestamp,
}

/// Why a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Not acknowledged within the send timeout.
    Timeout,
    /// The transport refused it (HTTP 4xx, WebSocket-only with no WebSocket, …).
    Rejected,
    /// The peer is unknown, untrusted or unreachable.
    Unreachable,
    /// The application closed the peer.
    Closed,
}

/// The outbox is full; the message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "outbox full: {messages} messages / {bytes} bytes waiting (limits {max_messages} / {max_bytes})"
)]
pub struct OutboxFull {
    /// Messages waiting.
    pub messages: usize,
    /// Bytes waiting.
    pub bytes: usize,
    /// The message limit.
    pub max_messages: usize,
    /// The byte limit.
    pub max_bytes: usize,
}

/// One frame of an outgoing message, before it gets a frame number. `Debug` shows the body's
/// length only.
#[derive(Clone)]
pub struct FrameSpec {
    /// The envelope type.
    pub message_type: MessageType,
    /// The envelope message id (kept across re-sends).
    pub message_id: MessageId,
    /// For `TASK_RESPONSE`: the request's id.
    pub reply_to: Option<MessageId>,
    /// For `CHUNKED_MESSAGE`: the chunk fields.
    pub chunk: Option<ChunkHeader>,
    /// The body.
    pub body: Vec<u8>,
}

/// A message to add to the outbox, already split into frames.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The logical message id.
    pub id: MessageId,
    /// Its frames, in order.
    pub frames: Vec<FrameSpec>,
}

/// The sending half of a stream to one peer.
#[derive(Debug, Clone)]
pub struct SendStream {
    epoch: u64,
    next_no: u64,
    frames: BTreeMap<u64, OutFrame>,
    logical: BTreeMap<MessageId, Logical>,
    bytes: usize,
    srtt: Option<Duration>,
    /// Highest cumulative acknowledgement seen from the peer.
    peer_cumulative: u64,
    /// When a `forward` announcement is next due, while one is needed.
    forward_due: Option<Timestamp>,
}

impl SendStream {
    /// A new stream with the given epoch (1..=2^53-1, drawn by the caller from its RNG).
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch: epoch.clamp(1, MAX_SAFE_INTEGER),
            next_no: 1,
            frames: BTreeMap::new(),
            logical: BTreeMap::new(),
            bytes: 0,
            srtt: None,
            peer_cumulative: 0,
            forward_due: None,
        }
    }

    /// The stream's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Messages waiting for acknowledgement.
    pub fn messages(&self) -> usize {
        self.logical.len()
    }

    /// Body bytes waiting for acknowledgement.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The lowest frame number not yet acknowledged or given up.
    pub fn base(&self) -> u64 {
        self.frames.keys().next().copied().unwrap_or(self.next_no)
    }

    /// Adds a message. It is due at once; it fails if not acknowledged by `now + send_timeout`.
    pub fn push(
        &mut self,
        message: OutgoingMessage,
        now: Timestamp,
        config: &StreamConfig,
    ) -> Result<(), OutboxFull> {
        let size: usize = message.frames.iter().map(|f| f.body.len()).sum();
        let full = OutboxFull {
            messages: self.logical.len(),
            bytes: self.bytes,
            max_messages: config.max_outbox_messages,
            max_bytes: config.max_outbox_bytes,
        };
        if self.logical.len() >= config.max_outbox_messages
            || self.bytes.saturating_add(size) > config.max_outbox_bytes
            || self.logical.contains_key(&message.id)
        {
            return Err(full);
        }
        let mut nos = BTreeSet::new();
        for spec in message.frames {
            let no = self.next_no;
            self.next_no = self.next_no.saturating_add(1);
            nos.insert(no);
            let frame = OutFrame {
                message_type: spec.message_type,
                message_id: spec.message_id,
                logical: message.id.clone(),
                reply_to: spec.reply_to,
                chunk: spec.chunk,
                body: spec.body,
                sent_at: None,
                attempts: 0,
                due: now,
            };
            self.frames.insert(no, frame);
        }
        self.bytes = self.bytes.saturating_add(size);
        let deadline = now.saturating_add(config.send_timeout);
        self.logical.insert(message.id, Logical { frames: nos, bytes: size, deadline });
        Ok(())
    }

    /// One past the highest frame number the send window allows in flight: below
    /// `base + send_window`, and at most `send_window_bytes` of unacknowledged frame bodies
    /// from `base` on (the frame at `base` always counts as allowed).
    ///
    /// A frame never leaves the window once inside it: frames only leave the outbox (acknowledged
    /// or given up), which moves `base` up and shrinks the byte sums, or are added after every
    /// other. So a frame once sent stays inside the window and its retransmission is never held
    /// back, and the bodies sent and not acknowledged total at most `send_window_bytes`, or are
    /// the single frame at `base`.
    pub fn window_end(&self, config: &StreamConfig) -> u64 {
        let by_frames = self.base().saturating_add(config.send_window);
        let mut bytes = 0usize;
        for (i, (&no, f)) in self.frames.range(..by_frames).enumerate() {
            bytes = bytes.saturating_add(f.body.len());
            if i > 0 && bytes > config.send_window_bytes {
                return no;
            }
        }
        by_frames
    }

    /// Body bytes of the frames sent at least once and not yet acknowledged.
    pub fn bytes_in_flight(&self) -> usize {
        self.frames.values().filter(|f| f.sent_at.is_some()).map(|f| f.body.len()).sum()
    }

    /// Frame numbers due for (re)transmission at `now`, lowest first, within the send window
    /// ([`SendStream::window_end`]).
    pub fn due(&self, now: Timestamp, config: &StreamConfig) -> Vec<u64> {
        let limit = self.window_end(config);
        self.frames.range(..limit).filter(|(_, f)| f.due <= now).map(|(no, _)| *no).collect()
    }

    /// The plaintext to seal for frame `no`, with the current `base`.
    pub fn plaintext(&self, no: u64) -> Option<(MessageType, MessageId, Vec<u8>)> {
        let f = self.frames.get(&no)?;
        let header = DataHeader {
            epoch: self.epoch,
            no,
            base: self.base(),
            reply_to: f.reply_to.clone(),
            chunk: f.chunk.clone(),
        };
        Some((f.message_type, f.message_id.clone(), encode_data(&header, &f.body)))
    }

    /// Records that frame `no` was handed to a transport; schedules its retransmission.
    pub fn on_sent(&mut self, no: u64, now: Timestamp, config: &StreamConfig) {
        let rto = self.rto(config);
        if let Some(f) = self.frames.get_mut(&no) {
            f.attempts = f.attempts.saturating_add(1);
            f.sent_at = Some(now);
            let backoff = 1u32 << f.attempts.saturating_sub(1).min(6);
            f.due = now.saturating_add(rto.saturating_mul(backoff).min(config.max_rto));
        }
    }

    /// The current retransmission timeout: twice the smoothed RTT within the configured bounds.
    pub fn rto(&self, config: &StreamConfig) -> Duration {
        match self.srtt {
            Some(srtt) => srtt.saturating_mul(2).clamp(config.min_rto, config.max_rto),
            None => config.initial_rto,
        }
    }

    /// Makes every unacknowledged frame due now (after a link or session came back).
    pub fn retransmit_all(&mut self, now: Timestamp) {
        for f in self.frames.values_mut() {
            f.due = now;
        }
    }

    /// Applies an acknowledgement; returns the logical messages now completely delivered.
    /// An `ACK` for another epoch is ignored.
    pub fn on_ack(&mut self, ack: &Ack, now: Timestamp) -> Vec<MessageId> {
        if ack.epoch != self.epoch {
            return Vec::new();
        }
        self.peer_cumulative = self.peer_cumulative.max(ack.cumulative);
        let acked: Vec<u64> = self.frames.keys().copied().filter(|no| ack.covers(*no)).collect();
        let mut done = Vec::new();
        for no in acked {
            let Some(frame) = self.frames.remove(&no) else { continue };
            if frame.attempts == 1
                && let Some(sent) = frame.sent_at
            {
                let sample = now.saturating_duration_since(sent);
                self.srtt = Some(match self.srtt {
                    Some(s) => (s.saturating_mul(7).saturating_add(sample)) / 8,
                    None => sample,
                });
            }
            if let Some(l) = self.logical.get_mut(&frame.logical) {
                l.frames.remove(&no);
                if l.frames.is_empty() {
                    self.bytes = self.bytes.saturating_sub(l.bytes);
                    self.logical.remove(&frame.logical);
                    done.push(frame.logical);
                }
            }
        }
        done
    }

    /// Gives up on one logical message; its frames leave the outbox and `base` moves past them.
    pub fn fail(&mut self, id: &MessageId) -> bool {
        let Some(l) = self.logical.remove(id) else { return false };
        for no in &l.frames {
            self.frames.remove(no);
        }
        self.bytes = self.bytes.saturating_sub(l.bytes);
        true
    }

    /// Whether the peer may be waiting for frames this side gave up on, with no data frame left
    /// to tell it so.
    pub fn forward_needed(&self) -> bool {
        self.frames.is_empty() && self.next_no > self.peer_cumulative.saturating_add(1)
    }

    /// A `forward` announcement to send now, if one is needed and due; schedules the next one a
    /// retransmission timeout later, until the peer's acknowledgement shows it moved on.
    pub fn poll_forward(&mut self, now: Timestamp, config: &StreamConfig) -> Option<Forward> {
        if !self.forward_needed() {
            self.forward_due = None;
            return None;
        }
        match self.forward_due {
            Some(due) if due > now => None,
            _ => {
                self.forward_due = Some(now.saturating_add(self.rto(config)));
                Some(Forward { epoch: self.epoch, base: self.base() })
            }
        }
    }

    /// Gives up on every message past its send timeout; returns their ids.
    pub fn expire(&mut self, now: Timestamp) -> Vec<MessageId> {
        let expired: Vec<MessageId> = self
            .logical
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.fail(id);
        }
        expired
    }

    /// Gives up on everything; returns the ids.
    pub fn fail_all(&mut self) -> Vec<MessageId> {
        let ids: Vec<MessageId> = self.logical.keys().cloned().collect();
        self.frames.clear();
        self.logical.clear();
        self.bytes = 0;
        ids
    }

    /// The earliest send timeout of a waiting message.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.logical.values().map(|l| l.deadline).min()
    }

    /// The earliest time something is due: a transmission or a send timeout.
    pub fn next_deadline(&self, config: &StreamConfig) -> Option<Timestamp> {
        let limit = self.window_end(config);
        let due = self.frames.range(..limit).map(|(_, f)| f.due).min();
        let timeout = self.logical.values().map(|l| l.deadline).min();
        let forward = if self.forward_needed() {
            self.forward_due.or(Some(Timestamp::default()))
        } else {
            None
        };
        [due, timeout, forward].into_iter().flatten().min()
    }

    /// The logical message whose frame was sent with envelope id `envelope`, if still waiting.
    pub fn logical_by_envelope(&self, envelope: &MessageId) -> Option<&MessageId> {
        self.frames.values().find(|f| f.message_id == *envelope).map(|f| &f.logical)
    }

    /// The logical message frame `no` belongs to.
    pub fn logical_of(&self, no: u64) -> Option<&MessageId> {
        self.frames.get(&no).map(|f| &f.logical)
    }

    /// Whether frame `no` is still waiting for acknowledgement.
    pub fn is_pending(&self, no: u64) -> bool {
        self.frames.contains_key(&no)
    }
}

/// A frame ready for the application, in stream order. `Debug` shows the body's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct InFrame {
    /// The envelope type.
    pub message_type: MessageType,
    /// The envelope message id.
    pub message_id: MessageId,
    /// The header.
    pub header: DataHeader,
    /// The body.
    pub body: Vec<u8>,
}

/// What the receiving half did with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Seen before; acknowledge again, deliver nothing.
    Duplicate,
    /// Buffered until the frames before it arrive.
    Buffered,
    /// Beyond the receive window or buffer; dropped unacknowledged (the sender will re-send).
    Dropped,
    /// These frames are now deliverable, in order.
    Deliver(Vec<InFrame>),
}

#[derive(Debug, Clone)]
struct RecvState {
    next: u64,
    buffer: BTreeMap<u64, InFrame>,
    buffered_bytes: usize,
    last_used: u64,
}

impl RecvState {
    /// Stops waiting for holes below `base`, returning (in order) what was buffered there.
    fn advance_to(&mut self, base: u64) -> Vec<InFrame> {
        let mut ready = Vec::new();
        if base > self.next {
            let skipped: Vec<u64> = self.buffer.range(..base).map(|(n, _)| *n).collect();
            for n in skipped {
                if let Some(f) = self.buffer.remove(&n) {
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(f.body.len());
                    ready.push(f);
                }
            }
            self.next = base;
        }
        ready
    }

    /// Removes the frames that are now next in order.
    fn drain_in_order(&mut self) -> Vec<InFrame> {
        let mut ready = Vec::new();
        while let Some(f) = self.buffer.remove(&self.next) {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(f.body.len());
            self.next = self.next.saturating_add(1);
            ready.push(f);
        }
        ready
    }
}

fn deliver_or(ready: Vec<InFrame>, otherwise: Received) -> Received {
    if ready.is_empty() { otherwise } else { Received::Deliver(ready) }
}

/// The receiving half of the streams from one peer (all its epochs).
#[derive(Debug, Clone, Default)]
pub struct RecvStreams {
    epochs: BTreeMap<u64, RecvState>,
    clock: u64,
}

impl RecvStreams {
    /// Accepts one frame.
    pub fn accept(&mut self, frame: InFrame, config: &StreamConfig) -> Received {
        // The buffer bound is per peer, over all its epochs.
        let held = self.buffered_bytes();
        let state = self.state(frame.header.epoch, frame.header.base, config);
        let mut ready = state.advance_to(frame.header.base);
        // What the advance made consecutive is deliverable whatever happens to this frame.
        ready.extend(state.drain_in_order());
        let no = frame.header.no;
        if no < state.next || state.buffer.contains_key(&no) {
            return deliver_or(ready, Received::Duplicate);
        }
        let held = held.saturating_sub(ready.iter().map(|f| f.body.len()).sum::<usize>());
        if no >= state.next.saturating_add(config.recv_window)
            || held.saturating_add(frame.body.len()) > config.max_recv_buffer_bytes
        {
            return deliver_or(ready, Received::Dropped);
        }
        state.buffered_bytes = state.buffered_bytes.saturating_add(frame.body.len());
        state.buffer.insert(no, frame);
        ready.extend(state.drain_in_order());
        deliver_or(ready, Received::Buffered)
    }

    /// Applies the peer's `forward` announcement: frames below `base` will never come, so what is
    /// buffered beyond the holes becomes deliverable.
    pub fn forward(&mut self, forward: Forward, config: &StreamConfig) -> Received {
        let state = self.state(forward.epoch, forward.base, config);
        let mut ready = state.advance_to(forward.base);
        ready.extend(state.drain_in_order());
        deliver_or(ready, Received::Duplicate)
    }

    fn state(&mut self, epoch: u64, base: u64, config: &StreamConfig) -> &mut RecvState {
        self.clock = self.clock.saturating_add(1);
        let clock = self.clock;
        if !self.epochs.contains_key(&epoch) && self.epochs.len() >= config.max_epochs.max(1) {
            let oldest = self.epochs.iter().min_by_key(|(_, s)| s.last_used).map(|(e, _)| *e);
            if let Some(e) = oldest {
                self.epochs.remove(&e);
            }
        }
        let state = self.epochs.entry(epoch).or_insert_with(|| RecvState {
            next: base.max(1),
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            last_used: clock,
        });
        state.last_used = clock;
        state
    }

    /// The acknowledgement describing what was received of `epoch`.
    pub fn ack(&self, epoch: u64) -> Option<Ack> {
        let s = self.epochs.get(&epoch)?;
        Some(Ack {
            epoch,
            cumulative: s.next.saturating_sub(1),
            selective: s.buffer.keys().copied().take(MAX_SELECTIVE).collect(),
        })
    }

    /// Bytes buffered out of order, over all epochs.
    pub fn buffered_bytes(&self) -> usize {
        self.epochs.values().map(|s| s.buffered_bytes).sum()
    }
}

#[cfg(test)]
mod tests;

/// Application content never reaches logs: these `Debug`s show lengths, not bodies.
macro_rules! debug_without_body {
    ($t:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .field("body_len", &self.body.len())
                    .finish_non_exhaustive()
            }
        }
    };
}

debug_without_body!(OutFrame, message_type, message_id, logical, attempts, due);
debug_without_body!(FrameSpec, message_type, message_id, reply_to, chunk);
debug_without_body!(InFrame, message_type, message_id, header);
