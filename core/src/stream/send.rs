//! The sending half of a stream: the outbox of frames waiting for acknowledgement, the send
//! window, retransmission timers and `base` (spec §13).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Ack, ChunkHeader, DataHeader, Forward, StreamConfig, encode_data};
use crate::canonical::MAX_SAFE_INTEGER;
use crate::ids::{AppType, MessageId};
use crate::message_type::MessageType;
use crate::time::Timestamp;

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
    /// The application-defined type, if any.
    pub app_type: Option<AppType>,
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
    /// Selectively acknowledged: the peer holds it out of order, not yet delivered. It is not
    /// re-sent on timeout, but stays in the outbox until the cumulative acknowledgement covers it
    /// (spec §13.3): only that means it reached the application.
    pub sacked: bool,
}

/// A logical message in the outbox.
#[derive(Debug, Clone)]
pub(super) struct Logical {
    frames: BTreeSet<u64>,
    bytes: usize,
    pub(super) deadline: Timestamp,
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

/// A message given up, as [`SendStream::fail`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The logical message.
    pub id: MessageId,
    /// Whether every frame of it still waiting had been handed to a transport at least once:
    /// the peer may have received it (its acknowledgement lost), may hold it out of order, or a
    /// copy may still be in flight, so it may have been or may still be delivered, once and in
    /// order. `false`: some part of it never left this node, so it will never be delivered.
    pub maybe_delivered: bool,
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
    /// The application-defined type, if any.
    pub app_type: Option<AppType>,
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
///
/// Every operation a node performs per message is O(log n) in the outbox size: besides the
/// frames and logical messages, the stream keeps indexes of the frames never sent (by number),
/// of the frames sent (by retransmission time), of the messages' send timeouts, and the body
/// bytes it holds, so nothing scans the outbox per frame.
#[derive(Debug, Clone)]
pub struct SendStream {
    epoch: u64,
    next_no: u64,
    pub(super) frames: BTreeMap<u64, OutFrame>,
    pub(super) logical: BTreeMap<MessageId, Logical>,
    /// Numbers of the frames never sent. Their `due` is the time they were queued (or of the
    /// last [`SendStream::retransmit_all`]), so it never decreases with the number.
    unsent: BTreeSet<u64>,
    /// `(due, no)` of every frame sent at least once.
    retransmits: BTreeSet<(Timestamp, u64)>,
    /// `(deadline, id)` of every logical message.
    expiries: BTreeSet<(Timestamp, MessageId)>,
    /// Frames in `frames` that are selectively acknowledged (in neither `unsent` nor
    /// `retransmits`).
    sacked: usize,
    /// Body bytes of the frames in `frames`.
    frame_bytes: usize,
    /// Body bytes of the logical messages waiting (what the outbox bound counts).
    bytes: usize,
    srtt: Option<Duration>,
    /// Highest cumulative acknowledgement seen from the peer.
    peer_cumulative: u64,
    /// When a `forward` announcement is next due, while one is needed.
    pub(super) forward_due: Option<Timestamp>,
    /// While journaling (a durable node): the numbers of the frames removed since the last
    /// [`SendStream::take_removed`], so their stored copies can be deleted.
    removed: Option<Vec<u64>>,
}

impl SendStream {
    /// A new stream with the given epoch (1..=2^53-1, drawn by the caller from its RNG).
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch: epoch.clamp(1, MAX_SAFE_INTEGER),
            next_no: 1,
            frames: BTreeMap::new(),
            logical: BTreeMap::new(),
            unsent: BTreeSet::new(),
            retransmits: BTreeSet::new(),
            expiries: BTreeSet::new(),
            sacked: 0,
            frame_bytes: 0,
            bytes: 0,
            srtt: None,
            peer_cumulative: 0,
            forward_due: None,
            removed: None,
        }
    }

    /// Starts recording the frames removed (see [`SendStream::take_removed`]).
    pub fn journal(&mut self) {
        self.removed.get_or_insert_with(Vec::new);
    }

    /// The numbers of the frames removed (acknowledged or given up) since the last call, while
    /// journaling.
    pub fn take_removed(&mut self) -> Vec<u64> {
        self.removed.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Frame `no`, if still waiting.
    pub fn frame(&self, no: u64) -> Option<&OutFrame> {
        self.frames.get(&no)
    }

    /// The numbers of the frames still waiting.
    pub fn frame_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.frames.keys().copied()
    }

    /// The number the next frame will get.
    pub fn next_no(&self) -> u64 {
        self.next_no
    }

    /// A stream rebuilt from what a durable node stored: its epoch, its next frame number, and
    /// the frames still waiting (by number, with their messages' deadlines). Every frame is due
    /// at `now`, as if never sent. Frames numbered at or past `next_no` move `next_no` past them.
    pub fn restored(
        epoch: u64,
        next_no: u64,
        frames: Vec<(u64, FrameSpec, MessageId, Timestamp)>,
        now: Timestamp,
    ) -> Self {
        let mut stream = Self::new(epoch);
        stream.journal();
        stream.next_no = next_no.clamp(1, MAX_SAFE_INTEGER);
        for (no, spec, logical, deadline) in frames {
            stream.next_no = stream.next_no.max(no.saturating_add(1));
            let size = spec.body.len();
            stream.frame_bytes = stream.frame_bytes.saturating_add(size);
            stream.bytes = stream.bytes.saturating_add(size);
            stream.frames.insert(
                no,
                OutFrame {
                    message_type: spec.message_type,
                    message_id: spec.message_id,
                    logical: logical.clone(),
                    reply_to: spec.reply_to,
                    app_type: spec.app_type,
                    chunk: spec.chunk,
                    body: spec.body,
                    sent_at: None,
                    // The run that stored it may have sent it: given up now, it may still have
                    // been delivered (`Failure::maybe_delivered`).
                    attempts: 1,
                    due: now,
                    sacked: false,
                },
            );
            stream.unsent.insert(no);
            let l = stream.logical.entry(logical.clone()).or_insert_with(|| Logical {
                frames: BTreeSet::new(),
                bytes: 0,
                deadline,
            });
            l.frames.insert(no);
            l.bytes = l.bytes.saturating_add(size);
            // A message's frames were stored with one deadline; the earliest counts.
            if deadline < l.deadline {
                l.deadline = deadline;
            }
        }
        for (id, l) in &stream.logical {
            stream.expiries.insert((l.deadline, id.clone()));
        }
        stream
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
            self.frame_bytes = self.frame_bytes.saturating_add(spec.body.len());
            let frame = OutFrame {
                message_type: spec.message_type,
                message_id: spec.message_id,
                logical: message.id.clone(),
                reply_to: spec.reply_to,
                app_type: spec.app_type,
                chunk: spec.chunk,
                body: spec.body,
                sent_at: None,
                attempts: 0,
                due: now,
                sacked: false,
            };
            self.frames.insert(no, frame);
            self.unsent.insert(no);
        }
        self.bytes = self.bytes.saturating_add(size);
        let deadline = now.saturating_add(config.send_timeout);
        self.expiries.insert((deadline, message.id.clone()));
        self.logical.insert(message.id, Logical { frames: nos, bytes: size, deadline });
        Ok(())
    }

    /// Removes frame `no` from the outbox and from every index.
    fn remove_frame(&mut self, no: u64) -> Option<OutFrame> {
        let frame = self.frames.remove(&no)?;
        if frame.sacked {
            self.sacked = self.sacked.saturating_sub(1);
        } else if frame.sent_at.is_some() {
            self.retransmits.remove(&(frame.due, no));
        } else {
            self.unsent.remove(&no);
        }
        self.frame_bytes = self.frame_bytes.saturating_sub(frame.body.len());
        if let Some(removed) = self.removed.as_mut() {
            removed.push(no);
        }
        Some(frame)
    }

    /// Removes logical message `id` (not its frames) and its send timeout.
    fn remove_logical(&mut self, id: &MessageId) -> Option<Logical> {
        let l = self.logical.remove(id)?;
        self.expiries.remove(&(l.deadline, id.clone()));
        self.bytes = self.bytes.saturating_sub(l.bytes);
        Some(l)
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
        if self.frame_bytes <= config.send_window_bytes {
            return by_frames;
        }
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
        self.retransmits
            .iter()
            .filter_map(|(_, no)| self.frames.get(no))
            .map(|f| f.body.len())
            .sum()
    }

    /// Frame numbers due for (re)transmission at `now`, lowest first, within the send window
    /// ([`SendStream::window_end`]).
    pub fn due(&self, now: Timestamp, config: &StreamConfig) -> Vec<u64> {
        let limit = self.window_end(config);
        let mut due: Vec<u64> = self
            .retransmits
            .range(..(now, u64::MAX))
            .map(|&(_, no)| no)
            .filter(|&no| no < limit)
            .collect();
        let resent = due.len();
        due.extend(
            self.unsent
                .range(..limit)
                .take_while(|no| self.frames.get(no).is_some_and(|f| f.due <= now)),
        );
        if resent > 0 {
            due.sort_unstable();
        }
        due
    }

    /// The plaintext to seal for frame `no`, with the current `base`.
    pub fn plaintext(&self, no: u64) -> Option<(MessageType, MessageId, Vec<u8>)> {
        let f = self.frames.get(&no)?;
        let header = DataHeader {
            epoch: self.epoch,
            no,
            base: self.base(),
            reply_to: f.reply_to.clone(),
            app_type: f.app_type.clone(),
            chunk: f.chunk.clone(),
        };
        Some((f.message_type, f.message_id.clone(), encode_data(&header, &f.body)))
    }

    /// Records that frame `no` was handed to a transport; schedules its retransmission.
    pub fn on_sent(&mut self, no: u64, now: Timestamp, config: &StreamConfig) {
        let rto = self.rto(config);
        let Some(f) = self.frames.get_mut(&no) else { return };
        if f.sacked {
            f.sacked = false;
            self.sacked = self.sacked.saturating_sub(1);
        } else if f.sent_at.is_some() {
            self.retransmits.remove(&(f.due, no));
        } else {
            self.unsent.remove(&no);
        }
        f.attempts = f.attempts.saturating_add(1);
        f.sent_at = Some(now);
        let backoff = 1u32 << f.attempts.saturating_sub(1).min(6);
        f.due = now.saturating_add(rto.saturating_mul(backoff).min(config.max_rto));
        self.retransmits.insert((f.due, no));
    }

    /// The current retransmission timeout: twice the smoothed RTT within the configured bounds.
    pub fn rto(&self, config: &StreamConfig) -> Duration {
        match self.srtt {
            Some(srtt) => srtt.saturating_mul(2).clamp(config.min_rto, config.max_rto),
            None => config.initial_rto,
        }
    }

    /// Makes every frame not cumulatively acknowledged due now (after a link or session came
    /// back). Selectively acknowledged frames are sent again too: a peer that lost what it held
    /// out of order (a new session after it lost its state) still gets them, and one that kept
    /// them treats them as duplicates.
    pub fn retransmit_all(&mut self, now: Timestamp) {
        self.retransmits.clear();
        self.sacked = 0;
        for (&no, f) in self.frames.iter_mut() {
            f.due = now;
            f.sacked = false;
            if f.sent_at.is_some() {
                self.retransmits.insert((now, no));
            }
        }
    }

    /// Marks frame `no` as held by the peer out of order: no more retransmissions on timeout.
    fn mark_sacked(&mut self, no: u64, now: Timestamp) {
        let Some(f) = self.frames.get_mut(&no) else { return };
        // A frame never sent cannot be held by the peer: such a claim is ignored.
        if f.sacked || f.sent_at.is_none() {
            return;
        }
        self.retransmits.remove(&(f.due, no));
        f.sacked = true;
        self.sacked = self.sacked.saturating_add(1);
        let sample = (f.attempts == 1).then_some(f.sent_at).flatten();
        if let Some(sent) = sample {
            self.rtt_sample(now.saturating_duration_since(sent));
        }
    }

    fn rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            Some(s) => (s.saturating_mul(7).saturating_add(sample)) / 8,
            None => sample,
        });
    }

    /// Applies an acknowledgement; returns the logical messages now delivered: every frame of
    /// theirs is covered by `cumulative`, which counts only frames the peer handed to its
    /// application (or that this side gave up). Frames listed in `selective` are only held by
    /// the peer out of order: they stop being re-sent on timeout but complete nothing (spec
    /// §13.2, §13.3). An `ACK` for another epoch is ignored.
    pub fn on_ack(&mut self, ack: &Ack, now: Timestamp) -> Vec<MessageId> {
        if ack.epoch != self.epoch {
            return Vec::new();
        }
        self.peer_cumulative = self.peer_cumulative.max(ack.cumulative);
        for &no in &ack.selective {
            if no > ack.cumulative {
                self.mark_sacked(no, now);
            }
        }
        let acked: Vec<u64> = self.frames.range(..=ack.cumulative).map(|(no, _)| *no).collect();
        let mut done = Vec::new();
        for no in acked {
            let Some(frame) = self.remove_frame(no) else { continue };
            if frame.attempts == 1
                && !frame.sacked
                && let Some(sent) = frame.sent_at
            {
                self.rtt_sample(now.saturating_duration_since(sent));
            }
            let finished = self.logical.get_mut(&frame.logical).is_some_and(|l| {
                l.frames.remove(&no);
                l.frames.is_empty()
            });
            if finished {
                self.remove_logical(&frame.logical);
                done.push(frame.logical);
            }
        }
        done
    }

    /// Gives up on one logical message; its frames leave the outbox and `base` moves past them.
    /// `None` if it is not waiting; otherwise whether it may still have been delivered, or may
    /// still be (see [`Failure::maybe_delivered`]).
    pub fn fail(&mut self, id: &MessageId) -> Option<Failure> {
        let l = self.remove_logical(id)?;
        let mut maybe_delivered = !l.frames.is_empty();
        for no in &l.frames {
            let sent = self.remove_frame(*no).is_some_and(|f| f.attempts > 0);
            maybe_delivered &= sent;
        }
        Some(Failure { id: id.clone(), maybe_delivered })
    }

    /// Whether the peer may be waiting for frames this side gave up on, with no data frame left
    /// that will carry the new `base` to it: the outbox holds nothing but frames the peer
    /// already holds out of order (none are re-sent), and its acknowledgements are behind `base`.
    pub fn forward_needed(&self) -> bool {
        self.frames.len() == self.sacked && self.base() > self.peer_cumulative.saturating_add(1)
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

    /// Gives up on every message past its send timeout.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Failure> {
        let expired: Vec<MessageId> = self
            .expiries
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| id.clone())
            .collect();
        expired.iter().filter_map(|id| self.fail(id)).collect()
    }

    /// Gives up on everything.
    pub fn fail_all(&mut self) -> Vec<Failure> {
        let ids: Vec<MessageId> = self.logical.keys().cloned().collect();
        ids.iter().filter_map(|id| self.fail(id)).collect()
    }

    /// The earliest send timeout of a waiting message.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(deadline, _)| *deadline)
    }

    /// The earliest time something is due: a transmission or a send timeout.
    pub fn next_deadline(&self, config: &StreamConfig) -> Option<Timestamp> {
        let limit = self.window_end(config);
        // A frame once sent stays inside the window (see `window_end`), so the first
        // retransmission is normally the earliest; the filter only guards that invariant.
        let resend = self.retransmits.iter().find(|(_, no)| *no < limit).map(|(due, _)| *due);
        let first = self.unsent.first().filter(|no| **no < limit);
        let send = first.and_then(|no| self.frames.get(no)).map(|f| f.due);
        let forward = if self.forward_needed() {
            self.forward_due.or(Some(Timestamp::default()))
        } else {
            None
        };
        [resend, send, self.next_expiry(), forward].into_iter().flatten().min()
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

debug_without_body!(OutFrame, message_type, message_id, logical, attempts, due);
debug_without_body!(FrameSpec, message_type, message_id, reply_to, app_type, chunk);
