//! Mailboxes: envelopes a node holds for entities that are not connected to it (spec §19), and
//! on a durable node their copies in the store (spec §26.4).
//!
//! Every entry has a number, unique within its entity's mailbox and increasing from front to
//! back, which names its store key (`m` ‖ entity ‖ `0x00` ‖ number): a restarted node rebuilds
//! each mailbox in its order. Entries put back at the front (an HTTP answer that never reached
//! its caller) take numbers below the front's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{Node, Output, RequestId, Timer};
use crate::capabilities::Transport;
use crate::durable::{MailboxRecord, StoreOp, encode_with_body, kind, numbered_key};
use crate::error::ErrorCode;
use crate::http_body;
use crate::ids::EntityId;
use crate::time::Timestamp;
use crate::wire::{self, Encoding};

/// Where a node's first mailbox numbers start: far enough from both ends of `u64` that entries
/// put back at the front (numbered downwards) and new ones (upwards) never run out.
const FIRST_NUMBER: u64 = 1 << 40;

/// One held envelope.
#[derive(Debug)]
struct Entry {
    expires: Timestamp,
    number: u64,
    frame: Arc<[u8]>,
}

/// One entity's mailbox, oldest first.
type Mailbox = VecDeque<Entry>;

/// A change to the mailboxes that a durable node writes.
#[derive(Debug)]
enum Change {
    Put(EntityId, u64, Timestamp, Arc<[u8]>),
    Delete(EntityId, u64),
}

/// The bounds of one entity's mailbox and of how many mailboxes there are.
#[derive(Debug, Clone, Copy)]
pub(super) struct BoxLimits {
    pub messages: usize,
    pub bytes: usize,
    pub boxes: usize,
}

/// Envelopes held for entities that are not connected, bounded per entity and in total.
#[derive(Debug)]
pub(super) struct Mailboxes {
    boxes: BTreeMap<EntityId, Mailbox>,
    bytes: usize,
    count: usize,
    next_number: u64,
    /// The changes not yet written, on a durable node.
    journal: Option<Vec<Change>>,
}

impl Default for Mailboxes {
    fn default() -> Self {
        Self {
            boxes: BTreeMap::new(),
            bytes: 0,
            count: 0,
            next_number: FIRST_NUMBER,
            journal: None,
        }
    }
}

impl Mailboxes {
    /// Empty mailboxes; a durable node's record every change, to be written.
    pub fn durable(durable: bool) -> Self {
        Self { journal: durable.then(Vec::new), ..Self::default() }
    }

    fn note(&mut self, change: impl FnOnce() -> Change) {
        if let Some(j) = self.journal.as_mut() {
            j.push(change());
        }
    }

    fn take_changes(&mut self) -> Vec<Change> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn held(b: &Mailbox) -> usize {
        b.iter().map(|e| e.frame.len()).sum()
    }

    /// Appends `frame` to `entity`'s mailbox, within its bounds.
    fn push(
        &mut self,
        entity: &EntityId,
        frame: Arc<[u8]>,
        expires: Timestamp,
        limits: BoxLimits,
    ) -> Result<(), ErrorCode> {
        let number = self.next_number;
        self.insert_back(entity, number, frame, expires, limits)?;
        self.next_number = number.saturating_add(1);
        Ok(())
    }

    fn insert_back(
        &mut self,
        entity: &EntityId,
        number: u64,
        frame: Arc<[u8]>,
        expires: Timestamp,
        limits: BoxLimits,
    ) -> Result<(), ErrorCode> {
        if !self.boxes.contains_key(entity) && self.boxes.len() >= limits.boxes {
            return Err(ErrorCode::MailboxFull);
        }
        let b = self.boxes.entry(entity.clone()).or_default();
        if b.len() >= limits.messages
            || Self::held(b).saturating_add(frame.len()) > limits.bytes
            || b.back().is_some_and(|e| e.number >= number)
        {
            if b.is_empty() {
                self.boxes.remove(entity);
            }
            return Err(ErrorCode::MailboxFull);
        }
        self.bytes = self.bytes.saturating_add(frame.len());
        self.count = self.count.saturating_add(1);
        b.push_back(Entry { expires, number, frame: Arc::clone(&frame) });
        self.note(|| Change::Put(entity.clone(), number, expires, frame));
        Ok(())
    }

    /// Puts `frames` (oldest first) back at the front of an entity's mailbox, as far as its
    /// bounds allow (the rest is dropped).
    fn requeue(
        &mut self,
        entity: &EntityId,
        frames: Vec<Arc<[u8]>>,
        expires: Timestamp,
        limits: BoxLimits,
    ) {
        if !self.boxes.contains_key(entity) && self.boxes.len() >= limits.boxes {
            return;
        }
        let mut changes = Vec::new();
        let b = self.boxes.entry(entity.clone()).or_default();
        let mut held = Self::held(b);
        // Newest first, so the oldest ends up in front; past the bounds the rest is dropped.
        for frame in frames.into_iter().rev() {
            if b.len() >= limits.messages || held.saturating_add(frame.len()) > limits.bytes {
                continue;
            }
            let number = match b.front() {
                Some(front) => match front.number.checked_sub(1) {
                    Some(n) => n,
                    None => continue,
                },
                None => {
                    let n = self.next_number;
                    self.next_number = n.saturating_add(1);
                    n
                }
            };
            held = held.saturating_add(frame.len());
            self.bytes = self.bytes.saturating_add(frame.len());
            self.count = self.count.saturating_add(1);
            changes.push(Change::Put(entity.clone(), number, expires, Arc::clone(&frame)));
            b.push_front(Entry { expires, number, frame });
        }
        if b.is_empty() {
            self.boxes.remove(entity);
        }
        for c in changes {
            self.note(|| c);
        }
    }

    /// Removes and returns up to `max_bytes` of an entity's frames, oldest first (at least one).
    fn drain(&mut self, entity: &EntityId, max_bytes: usize) -> Vec<Arc<[u8]>> {
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let Some(b) = self.boxes.get_mut(entity) else { return out };
        let mut size = 0usize;
        while let Some(e) = b.front() {
            // Each frame with its framing: the `\n` of NDJSON, or the length of a binary body
            // (whose frames are shorter than their JSON), so the body stays within `max_bytes`.
            let framed = e.frame.len().saturating_add(http_body::LENGTH_PREFIX_LEN);
            if !out.is_empty() && size.saturating_add(framed) > max_bytes {
                break;
            }
            size = size.saturating_add(framed);
            if let Some(e) = b.pop_front() {
                self.bytes = self.bytes.saturating_sub(e.frame.len());
                self.count = self.count.saturating_sub(1);
                removed.push(e.number);
                out.push(e.frame);
            }
        }
        if b.is_empty() {
            self.boxes.remove(entity);
        }
        for n in removed {
            self.note(|| Change::Delete(entity.clone(), n));
        }
        out
    }

    pub fn has(&self, entity: &EntityId) -> bool {
        self.boxes.get(entity).is_some_and(|b| !b.is_empty())
    }

    fn expire(&mut self, now: Timestamp) {
        let mut removed = Vec::new();
        for (entity, b) in &mut self.boxes {
            while b.front().is_some_and(|e| e.expires <= now) {
                if let Some(e) = b.pop_front() {
                    self.bytes = self.bytes.saturating_sub(e.frame.len());
                    self.count = self.count.saturating_sub(1);
                    removed.push((entity.clone(), e.number));
                }
            }
        }
        self.boxes.retain(|_, b| !b.is_empty());
        for (entity, n) in removed {
            self.note(|| Change::Delete(entity, n));
        }
    }

    fn next_expiry(&self) -> Option<Timestamp> {
        self.boxes.values().filter_map(|b| b.front().map(|e| e.expires)).min()
    }
}

impl Node {
    fn box_limits(&self) -> BoxLimits {
        BoxLimits {
            messages: self.config.mailbox_messages,
            bytes: self.config.mailbox_bytes,
            boxes: self.config.max_mailboxes,
        }
    }

    /// Writes the mailbox changes made since last time (a durable node) and sets the expiry
    /// timer.
    fn mailboxes_changed(&mut self) {
        for change in self.mailboxes.take_changes() {
            let op = match change {
                Change::Put(entity, number, expires, frame) => StoreOp::Put {
                    key: numbered_key(kind::MAILBOX, &entity, number),
                    value: encode_with_body(
                        &MailboxRecord { expires: expires.as_unix_millis() },
                        &frame,
                    ),
                },
                Change::Delete(entity, number) => {
                    StoreOp::Delete { key: numbered_key(kind::MAILBOX, &entity, number) }
                }
            };
            self.emit(Output::Persist(op));
        }
        self.schedule(Timer::Mailboxes, self.mailboxes.next_expiry());
    }

    /// Keeps `frame` in `to`'s mailbox on this node (spec §19's bounds), releasing a poll `to`
    /// holds.
    pub(super) fn mailbox_push(
        &mut self,
        now: Timestamp,
        to: &EntityId,
        frame: Arc<[u8]>,
    ) -> Result<Transport, ErrorCode> {
        // Mailboxes, their store and the HTTP answers they feed hold JSON (spec §27.3).
        let frame = self.json_frame(frame)?;
        let expires = now.saturating_add(self.config.limits.max_clock_skew);
        let len = frame.len();
        if self.mailboxes.bytes().saturating_add(len) > self.config.max_mailbox_total_bytes {
            return Err(ErrorCode::MailboxFull);
        }
        let limits = self.box_limits();
        self.mailboxes.push(to, frame, expires, limits)?;
        // The write comes before the poll's answer or anything else that follows.
        self.mailboxes_changed();
        self.stats.sent(Transport::Http, len);
        // The caller of the `POST` being processed gets its answers in that `POST`'s response,
        // never in a poll held earlier: that poll may be a dead client's (spec §21).
        if self.posting.as_ref() != Some(to) {
            self.release_poll(to);
        }
        Ok(Transport::Http)
    }

    pub(super) fn drain_mailbox_to_link(
        &mut self,
        _now: Timestamp,
        entity: &EntityId,
        link: super::LinkId,
    ) {
        let frames = self.mailboxes.drain(entity, usize::MAX);
        for frame in frames {
            self.transmit(link, frame);
        }
        // The deletions come after the frames: a crash between the two hands them again (a
        // duplicate the recipient discards) rather than dropping them (spec §26.2).
        self.mailboxes_changed();
    }

    /// Answers the long poll `entity` holds, if any, with what waits for it.
    pub(super) fn release_poll(&mut self, entity: &EntityId) {
        if let Some((request, _, encoding)) = self.polls.remove(entity) {
            self.timers.cancel(&Timer::Poll(entity.clone()));
            self.answer_poll(request, entity, encoding);
        }
    }

    /// Answers an HTTP call of `entity` with what waits for it, in a body of `encoding` (the
    /// call's [`wire::answer_encoding`]).
    pub(super) fn answer_poll(
        &mut self,
        request: RequestId,
        entity: &EntityId,
        encoding: Encoding,
    ) {
        let frames = self.mailboxes.drain(entity, self.config.max_http_body_bytes);
        let (body, encoding) = self.answer_body(&frames, encoding);
        self.emit(Output::HttpRespond { request, status: 200, body, encoding });
        self.mailboxes_changed();
    }

    /// A body of `frames` (JSON, as mailboxes hold them) in `encoding`. Should one of them have
    /// no binary form within the frame limit, the whole body is NDJSON instead: a client that
    /// accepts binary reads both, and nothing is lost.
    fn answer_body(&self, frames: &[Arc<[u8]>], encoding: Encoding) -> (Vec<u8>, Encoding) {
        if encoding == Encoding::Binary {
            let max = self.config.limits.max_frame_bytes;
            let binary: Result<Vec<Arc<[u8]>>, _> = frames
                .iter()
                .map(|f| wire::translate(Arc::clone(f), Encoding::Binary, max))
                .collect();
            if let Ok(binary) = binary {
                return (http_body::encode(binary.iter().map(|f| &**f), encoding), encoding);
            }
        }
        (http_body::encode(frames.iter().map(|f| &**f), Encoding::Json), Encoding::Json)
    }

    /// The answer to an HTTP call from `to` never reached it: its client had gone (a stopped
    /// process whose long poll was still held, spec §21). The envelopes the answer carried go
    /// back to the front of `to`'s mailbox, within its bounds (what does not fit, and anything
    /// that is not an envelope line, is dropped: senders re-send data, §13.3), and then to its
    /// link or a poll it holds now. `body` is the answer's body and `encoding` its encoding, as
    /// this node emitted them; binary envelopes go back in JSON, as mailboxes hold them.
    pub fn http_answer_lost(
        &mut self,
        now: Timestamp,
        to: &EntityId,
        body: &[u8],
        encoding: Encoding,
    ) {
        let max_frame = self.config.limits.max_frame_bytes;
        let mut untranslatable = 0u64;
        let frames: Vec<Arc<[u8]>> = http_body::frames(body, encoding, max_frame)
            .filter_map(Result::ok)
            .filter(|f| f.len() <= max_frame)
            .filter_map(|f| {
                let json = wire::to_json(Arc::from(f), max_frame).ok();
                untranslatable += u64::from(json.is_none());
                json
            })
            .collect();
        // A binary frame whose JSON form is over the limit cannot go back: counted, as a
        // translation refused elsewhere is (its sender re-sends it, §13.3).
        self.stats.rejected = self.stats.rejected.saturating_add(untranslatable);
        if frames.is_empty() {
            return;
        }
        let total = self.config.max_mailbox_total_bytes.saturating_sub(self.mailboxes.bytes());
        let size: usize = frames.iter().map(|f| f.len()).sum();
        if size > total {
            return;
        }
        let expires = now.saturating_add(self.config.limits.max_clock_skew);
        let limits = self.box_limits();
        self.mailboxes.requeue(to, frames, expires, limits);
        self.mailboxes_changed();
        if let Some(link) = self.bound.get(to).copied() {
            self.drain_mailbox_to_link(now, to, link);
        } else if self.mailboxes.has(to) {
            self.release_poll(to);
        }
    }

    pub(super) fn on_mailbox_timer(&mut self, now: Timestamp) {
        self.mailboxes.expire(now);
        self.mailboxes_changed();
    }

    /// Puts back one stored mailbox entry (a durable node's restore), in its place: entries
    /// come in key order, so oldest first. Returns whether it was kept: one that expired while
    /// the node was down, or that this node's bounds no longer admit, is deleted instead.
    pub(super) fn restore_mailbox_entry(
        &mut self,
        now: Timestamp,
        entity: &EntityId,
        number: u64,
        record: MailboxRecord,
        frame: Vec<u8>,
    ) -> bool {
        // Hostile input: never later than a new entry's would be, so a forged far future cannot
        // hold an entry (and those behind it) for ever; and one envelope, no line break (the
        // answer to a poll is one envelope per line).
        let latest = now.saturating_add(self.config.limits.max_clock_skew);
        let expires = Timestamp::from_unix_millis(record.expires).min(latest);
        let fits = frame.len() <= self.config.limits.max_frame_bytes
            && !frame.contains(&b'\n')
            && self.mailboxes.bytes().saturating_add(frame.len())
                <= self.config.max_mailbox_total_bytes;
        let limits = self.box_limits();
        let kept = expires > now
            && fits
            && self
                .mailboxes
                .insert_back(entity, number, Arc::from(frame), expires, limits)
                .is_ok();
        if kept {
            // Already stored: nothing to write again.
            self.mailboxes.take_changes();
            self.mailboxes.next_number = self.mailboxes.next_number.max(number.saturating_add(1));
        } else {
            self.emit(Output::Persist(StoreOp::Delete {
                key: numbered_key(kind::MAILBOX, entity, number),
            }));
        }
        kept
    }

    /// Sets the expiry timer to the mailboxes' earliest entry (once a restore has put them
    /// back).
    pub(super) fn schedule_mailbox_expiry(&mut self) {
        self.schedule(Timer::Mailboxes, self.mailboxes.next_expiry());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8, usize),
        Drain(u8, usize),
        Requeue(u8, u8),
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 1usize..300).prop_map(|(e, n)| Op::Push(e, n)),
            2 => (0u8..3, 0usize..700).prop_map(|(e, n)| Op::Drain(e, n)),
            1 => (0u8..3, 1u8..5).prop_map(|(e, n)| Op::Requeue(e, n)),
            1 => (0u64..40).prop_map(Op::Expire),
        ]
    }

    fn entity(e: u8) -> EntityId {
        EntityId::new(format!("e{e}")).unwrap()
    }

    type Contents = Vec<(EntityId, Vec<(Timestamp, Vec<u8>)>)>;

    /// What the mailboxes hold, entity by entity, oldest first.
    fn contents(m: &Mailboxes) -> Contents {
        m.boxes
            .iter()
            .map(|(e, b)| (e.clone(), b.iter().map(|x| (x.expires, x.frame.to_vec())).collect()))
            .collect()
    }

    proptest! {
        /// Whatever the operations, the store written from the journal rebuilds the same
        /// mailboxes, in the same order, and the bounds and counters hold.
        #[test]
        fn the_store_rebuilds_the_same_mailboxes(ops in prop::collection::vec(op(), 1..80)) {
            let limits = BoxLimits { messages: 6, bytes: 1000, boxes: 2 };
            let mut m = Mailboxes::durable(true);
            let mut store: BTreeMap<(EntityId, u64), (Timestamp, Vec<u8>)> = BTreeMap::new();
            let mut now = Timestamp::from_unix_millis(1_000_000);
            let mut tag = 0u8;
            for op in ops {
                match op {
                    Op::Push(e, n) => {
                        tag = tag.wrapping_add(1);
                        let expires = now.saturating_add(Duration::from_secs(30));
                        let _ = m.push(&entity(e), Arc::from(vec![tag; n]), expires, limits);
                    }
                    Op::Drain(e, n) => {
                        let had = m.has(&entity(e));
                        let out = m.drain(&entity(e), n);
                        prop_assert_eq!(had, !out.is_empty(), "a drain takes at least one");
                    }
                    Op::Requeue(e, n) => {
                        let frames = (0..n).map(|i| Arc::from(vec![200u8.wrapping_add(i); 50])).collect();
                        let expires = now.saturating_add(Duration::from_secs(30));
                        m.requeue(&entity(e), frames, expires, limits);
                    }
                    Op::Expire(s) => {
                        now = now.saturating_add(Duration::from_secs(s));
                        m.expire(now);
                    }
                }
                for change in m.take_changes() {
                    match change {
                        Change::Put(e, n, t, f) => {
                            prop_assert!(store.insert((e, n), (t, f.to_vec())).is_none(), "a number reused");
                        }
                        Change::Delete(e, n) => {
                            prop_assert!(store.remove(&(e, n)).is_some(), "a delete of nothing");
                        }
                    }
                }
                prop_assert!(m.boxes.len() <= limits.boxes);
                let mut count = 0;
                let mut bytes = 0;
                for b in m.boxes.values() {
                    prop_assert!(!b.is_empty() && b.len() <= limits.messages);
                    prop_assert!(Mailboxes::held(b) <= limits.bytes);
                    count += b.len();
                    bytes += Mailboxes::held(b);
                }
                prop_assert_eq!((m.count, m.bytes), (count, bytes));
                // Rebuild from the store, in key order, as a restore does.
                let mut rebuilt = Mailboxes::durable(true);
                for ((e, n), (t, f)) in &store {
                    prop_assert!(rebuilt.insert_back(e, *n, Arc::from(f.clone()), *t, limits).is_ok());
                }
                prop_assert_eq!(contents(&rebuilt), contents(&m));
            }
        }
    }
}
