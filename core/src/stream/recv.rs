//! The receiving half of the streams from one peer: in-order, exactly-once delivery per epoch
//! within a bounded receive window and buffer (spec §13).

use std::collections::BTreeMap;

use super::{Ack, DataHeader, Forward, MAX_SELECTIVE, StreamConfig};
use crate::ids::MessageId;
use crate::message_type::MessageType;

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
        if no == state.next {
            // The next frame in order is delivered without passing through the buffer.
            state.next = state.next.saturating_add(1);
            ready.push(frame);
            ready.extend(state.drain_in_order());
            return Received::Deliver(ready);
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

    /// `(epoch, next)` for every epoch: the next frame number each would deliver. What a
    /// durable node stores (frames buffered out of order are not: the sender still holds them).
    pub fn positions(&self) -> Vec<(u64, u64)> {
        self.epochs.iter().map(|(&e, s)| (e, s.next)).collect()
    }

    /// Receiving halves rebuilt from stored [`RecvStreams::positions`], at most `max_epochs`
    /// of them (the highest positions kept).
    pub fn restored(positions: &[(u64, u64)], config: &StreamConfig) -> Self {
        let mut out = Self::default();
        let mut sorted = positions.to_vec();
        sorted.sort_by_key(|&(_, next)| std::cmp::Reverse(next));
        for &(epoch, next) in sorted.iter().take(config.max_epochs.max(1)) {
            out.clock = out.clock.saturating_add(1);
            out.epochs.insert(
                epoch,
                RecvState {
                    next: next.max(1),
                    buffer: BTreeMap::new(),
                    buffered_bytes: 0,
                    last_used: out.clock,
                },
            );
        }
        out
    }

    /// Bytes buffered out of order, over all epochs.
    pub fn buffered_bytes(&self) -> usize {
        self.epochs.values().map(|s| s.buffered_bytes).sum()
    }

    /// Whether any frame is buffered out of order (empty bodies included). Such frames were
    /// acknowledged (selectively) but not delivered yet: forgetting them would lose messages the
    /// sender was told were delivered.
    pub fn holds_frames(&self) -> bool {
        self.epochs.values().any(|s| !s.buffer.is_empty())
    }
}

debug_without_body!(InFrame, message_type, message_id, header);
