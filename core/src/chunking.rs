//! Chunked transfer of large messages (`CHUNKED_MESSAGE`, spec §"Message types").
//!
//! A sender cuts a message into [`Chunk`]s with [`split`]; the receiver feeds them, in any order
//! and with duplicates, to a per-peer [`Reassembler`]. The reassembler bounds what a hostile peer
//! can make it hold: every chunk states the whole message's `total_len`, which may not exceed
//! [`ReassemblyLimits::max_message_bytes`]; a partial message never holds more than `total_len`
//! bytes (each sequence number counted once); at most [`ReassemblyLimits::max_partials`] partial
//! messages are held at once, each for at most [`ReassemblyLimits::max_age`]. Hence
//! [`Reassembler::held_bytes`] `<= max_partials * max_message_bytes` at all times.
//!
//! A message is complete when the chunk flagged `is_last` sits at position `L`, every position
//! `0..=L` is present and their lengths add up to `total_len`. Any violation discards the whole
//! partial message, so a peer cannot leave garbage behind.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::ErrorCode;
use crate::ids::MessageId;
use crate::time::Timestamp;

/// One chunk of a large message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The id of the logical message this chunk belongs to.
    pub chunk_id: MessageId,
    /// 0-based position of the chunk in the message.
    pub sequence_number: u32,
    /// Whether this is the final chunk of the message.
    pub is_last: bool,
    /// Length of the whole message in bytes; identical in every chunk of a message.
    pub total_len: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// Splits `data` into chunks of at most `chunk_size` bytes; an empty message is one empty chunk
/// with `is_last`. A `chunk_size` of 0 is treated as 1, and the size is raised if needed so that
/// the chunk count fits the `u32` sequence space.
pub fn split(chunk_id: &MessageId, data: &[u8], chunk_size: usize) -> Vec<Chunk> {
    let total_len = u64::try_from(data.len()).unwrap_or(u64::MAX);
    let max_count = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let size = chunk_size.max(data.len().div_ceil(max_count)).max(1);
    let new = |(sequence_number, data): (u32, &[u8])| Chunk {
        chunk_id: chunk_id.clone(),
        sequence_number,
        is_last: false,
        total_len,
        data: data.to_vec(),
    };
    let mut chunks: Vec<Chunk> = (0..=u32::MAX).zip(data.chunks(size)).map(new).collect();
    if chunks.is_empty() {
        chunks.push(new((0, &[])));
    }
    if let Some(last) = chunks.last_mut() {
        last.is_last = true;
    }
    chunks
}

/// What a [`Reassembler`] accepts from one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest `total_len` accepted, in bytes. Default 16 MiB.
    pub max_message_bytes: u64,
    /// Partial messages held at once. Default 4.
    pub max_partials: usize,
    /// Chunks per message: every `sequence_number` must be below this. Default 65 536.
    pub max_chunks: u32,
    /// A partial message is dropped once this much time has passed since its first chunk.
    /// Default 60 s.
    pub max_age: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            max_partials: 4,
            max_chunks: 65_536,
            max_age: Duration::from_secs(60),
        }
    }
}

/// Why [`Reassembler::insert`] refused a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `total_len` exceeds `max_message_bytes`, or the chunks' data would exceed `total_len`.
    #[error("chunked message exceeds the size limit or its stated length")]
    TooLarge,
    /// `sequence_number` is not below `max_chunks`.
    #[error("chunked message has too many chunks")]
    TooManyChunks,
    /// A new message was started while `max_partials` partial messages are held.
    #[error("too many partial chunked messages")]
    TooManyPartials,
    /// The chunk contradicts earlier chunks of its message (`total_len`, `is_last` position, a
    /// duplicate with different content) or the complete message's length is not `total_len`.
    #[error("chunk is inconsistent with its message")]
    Inconsistent,
}

impl ChunkError {
    /// The wire error code to report to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge | Self::TooManyChunks | Self::TooManyPartials => {
                ErrorCode::MessageTooLarge
            }
            Self::Inconsistent => ErrorCode::InvalidMessage,
        }
    }
}

/// A message whose chunks have partly arrived.
#[derive(Clone, Default)]
struct Partial {
    total_len: u64,
    first_seen: Timestamp,
    /// Position of the chunk flagged `is_last`; always a key of `chunks` when set.
    last: Option<u32>,
    chunks: BTreeMap<u32, Vec<u8>>,
    /// Sum of the lengths in `chunks`; never above `total_len`.
    held: u64,
}

impl Partial {
    /// Adds a chunk; `Ok(true)` if the message is now complete.
    fn accept(&mut self, c: Chunk) -> Result<bool, ChunkError> {
        let Chunk { sequence_number: seq, is_last, total_len, data, .. } = c;
        if total_len != self.total_len {
            return Err(ChunkError::Inconsistent);
        }
        if let Some(existing) = self.chunks.get(&seq) {
            let identical = *existing == data && is_last == (self.last == Some(seq));
            return if identical { Ok(false) } else { Err(ChunkError::Inconsistent) };
        }
        match self.last {
            // `last` is held and `seq` is not, so a new `is_last` is a second last position.
            Some(last) if seq > last || is_last => return Err(ChunkError::Inconsistent),
            None if is_last && self.chunks.last_key_value().is_some_and(|(&k, _)| k > seq) => {
                return Err(ChunkError::Inconsistent);
            }
            _ => {}
        }
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.held = self
            .held
            .checked_add(len)
            .filter(|&held| held <= self.total_len)
            .ok_or(ChunkError::TooLarge)?;
        self.chunks.insert(seq, data);
        if is_last {
            self.last = Some(seq);
        }
        let Some(last) = self.last else { return Ok(false) };
        let count = u64::try_from(self.chunks.len()).unwrap_or(u64::MAX);
        if count != u64::from(last).saturating_add(1) {
            return Ok(false);
        }
        if self.held == self.total_len { Ok(true) } else { Err(ChunkError::Inconsistent) }
    }
}

/// Reassembles chunks arriving in any order, with duplicates, for one peer.
///
/// Deduplicating completed messages is the caller's job: a chunk of a message that was already
/// returned starts a new partial message.
#[derive(Clone)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    partials: BTreeMap<MessageId, Partial>,
}

impl fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Message contents stay out of logs.
        f.debug_struct("Reassembler")
            .field("limits", &self.limits)
            .field("partials", &self.partials.keys().collect::<Vec<_>>())
            .field("held_bytes", &self.held_bytes())
            .finish()
    }
}

impl Reassembler {
    /// An empty reassembler enforcing `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self { limits, partials: BTreeMap::new() }
    }

    /// Adds a chunk received at `now`, after dropping expired partial messages.
    ///
    /// `Ok(Some(message))` when this chunk completes its message (the partial is then removed);
    /// `Ok(None)` if more chunks are needed or the chunk is an identical duplicate. On `Err` the
    /// whole partial message for the chunk's id is discarded, except for
    /// [`ChunkError::TooManyPartials`], which touches nothing held. A message consisting of a
    /// single complete chunk is returned without needing a free partial slot.
    pub fn insert(&mut self, chunk: Chunk, now: Timestamp) -> Result<Option<Vec<u8>>, ChunkError> {
        self.expire(now);
        let id = chunk.chunk_id.clone();
        let result = self.add(chunk, now);
        // A completed message is removed too. (`TooManyPartials` only arises for an id not held.)
        if !matches!(result, Ok(None)) {
            self.partials.remove(&id);
        }
        result
    }

    fn add(&mut self, chunk: Chunk, now: Timestamp) -> Result<Option<Vec<u8>>, ChunkError> {
        let (seq, total_len) = (chunk.sequence_number, chunk.total_len);
        let len = u64::try_from(chunk.data.len()).unwrap_or(u64::MAX);
        if total_len > self.limits.max_message_bytes || len > total_len {
            return Err(ChunkError::TooLarge);
        }
        if seq >= self.limits.max_chunks {
            return Err(ChunkError::TooManyChunks);
        }
        if !self.partials.contains_key(&chunk.chunk_id) {
            if seq == 0 && chunk.is_last {
                // A whole message in one chunk needs no partial slot.
                return (len == total_len)
                    .then_some(Some(chunk.data))
                    .ok_or(ChunkError::Inconsistent);
            }
            if self.partials.len() >= self.limits.max_partials {
                return Err(ChunkError::TooManyPartials);
            }
        }
        let new = || Partial { total_len, first_seen: now, ..Partial::default() };
        let partial = self.partials.entry(chunk.chunk_id.clone()).or_insert_with(new);
        if !partial.accept(chunk)? {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut partial.chunks).into_values().collect::<Vec<_>>().concat()))
    }

    /// Drops partial messages whose first chunk arrived `max_age` or more before `now`; returns
    /// their ids in ascending order.
    pub fn expire(&mut self, now: Timestamp) -> Vec<MessageId> {
        let max_age = self.limits.max_age;
        let mut expired = Vec::new();
        self.partials.retain(|id, p| {
            let keep = now < p.first_seen.saturating_add(max_age);
            if !keep {
                expired.push(id.clone());
            }
            keep
        });
        expired
    }

    /// When the next partial message expires (the earliest `now` at which [`Self::expire`]
    /// drops it), if any is held.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.partials.values().map(|p| p.first_seen.saturating_add(self.limits.max_age)).min()
    }

    /// Bytes currently held in partial messages (sum of data lengths).
    pub fn held_bytes(&self) -> u64 {
        self.partials.values().fold(0, |sum, p| sum.saturating_add(p.held))
    }

    /// Number of partial messages currently held.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }

    /// Drops the partial message `id`, if held (its sender gave up on it); returns whether it was.
    pub fn discard(&mut self, id: &MessageId) -> bool {
        self.partials.remove(id).is_some()
    }
}

#[cfg(test)]
mod discard_tests {
    use super::*;

    #[test]
    fn discard_frees_the_partial() {
        let id = MessageId::new("m").unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let chunks = split(&id, b"abcdef", 2);
        let t = Timestamp::from_unix_millis(0);
        assert_eq!(r.insert(chunks[0].clone(), t), Ok(None));
        assert_eq!(r.partials(), 1);
        assert!(r.discard(&id));
        assert!(!r.discard(&id));
        assert_eq!((r.partials(), r.held_bytes()), (0, 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

    fn at(ms: u64) -> Timestamp {
        T0.saturating_add(Duration::from_millis(ms))
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    fn chunk(i: &str, seq: u32, is_last: bool, total_len: u64, data: &[u8]) -> Chunk {
        Chunk { chunk_id: id(i), sequence_number: seq, is_last, total_len, data: data.to_vec() }
    }

    /// 10-byte messages, 2 partials, 5 chunks, 10 s.
    fn small() -> ReassemblyLimits {
        let max_age = Duration::from_secs(10);
        ReassemblyLimits { max_message_bytes: 10, max_partials: 2, max_chunks: 5, max_age }
    }

    #[test]
    fn split_shapes_and_small_messages() {
        let empty = split(&id("m"), b"", 4);
        assert_eq!(empty, vec![chunk("m", 0, true, 0, b"")]);
        assert_eq!(Reassembler::new(small()).insert(empty[0].clone(), T0), Ok(Some(vec![])));
        let ones = split(&id("m"), b"abc", 1);
        assert_eq!(ones, split(&id("m"), b"abc", 0));
        let expected = [(0, false, b"a"), (1, false, b"b"), (2, true, b"c")];
        assert_eq!(ones, expected.map(|(s, l, d)| chunk("m", s, l, 3, d)));
        let mut r = Reassembler::new(small());
        assert_eq!(r.insert(ones[2].clone(), T0), Ok(None));
        assert_eq!(r.insert(ones[0].clone(), T0), Ok(None));
        assert_eq!(r.insert(ones[1].clone(), T0), Ok(Some(b"abc".to_vec())));
        assert_eq!((r.partials(), r.held_bytes()), (0, 0));
    }

    #[test]
    fn identical_duplicates_are_ignored() {
        let mut r = Reassembler::new(small());
        assert_eq!(r.insert(chunk("m", 1, true, 4, b"cd"), T0), Ok(None));
        assert_eq!(r.insert(chunk("m", 1, true, 4, b"cd"), T0), Ok(None));
        assert_eq!((r.partials(), r.held_bytes()), (1, 2));
        assert_eq!(r.insert(chunk("m", 0, false, 4, b"ab"), T0), Ok(Some(b"abcd".to_vec())));
    }

    #[test]
    fn error_codes() {
        use ChunkError::*;
        let codes = [TooLarge, TooManyChunks, TooManyPartials, Inconsistent].map(|e| e.code());
        let (large, invalid) = (ErrorCode::MessageTooLarge, ErrorCode::InvalidMessage);
        assert_eq!(codes, [large, large, large, invalid]);
    }

    #[test]
    fn violations_are_refused_and_discard_the_partial() {
        use ChunkError::*;
        let cases = [
            (chunk("m", 1, false, 11, b"x"), TooLarge),
            (chunk("m", 1, false, 6, b"abcdefg"), TooLarge), // data above total_len
            (chunk("m", 1, false, 6, b"abcde"), TooLarge),   // 2 + 5 held > 6
            (chunk("m", 5, false, 6, b"x"), TooManyChunks),
            (chunk("m", 1, false, 7, b"x"), Inconsistent), // total_len changed
            (chunk("m", 0, false, 6, b"xy"), Inconsistent), // duplicate, other data
            (chunk("m", 0, true, 6, b"ab"), Inconsistent), // duplicate, other is_last
            (chunk("m", 1, true, 6, b"c"), Inconsistent),  // complete with 3 bytes, not 6
        ];
        for (bad, expected) in cases {
            let mut r = Reassembler::new(small());
            assert_eq!(r.insert(chunk("m", 0, false, 6, b"ab"), T0), Ok(None));
            assert_eq!(r.insert(bad.clone(), T0), Err(expected), "{bad:?}");
            assert_eq!((r.partials(), r.held_bytes()), (0, 0), "{bad:?}");
            // the partial is gone: chunk 0 and a last chunk 1 now make a fresh message
            assert_eq!(r.insert(chunk("m", 0, false, 6, b"ab"), T0), Ok(None));
            assert_eq!(r.insert(chunk("m", 1, true, 6, b"cdef"), T0), Ok(Some(b"abcdef".to_vec())));
        }
        // after the last, a second last position, a last below a held position
        for [first, second] in
            [[(2, true), (3, false)], [(2, true), (0, true)], [(4, false), (3, true)]]
        {
            let mut r = Reassembler::new(small());
            assert_eq!(r.insert(chunk("m", first.0, first.1, 6, b"a"), T0), Ok(None));
            assert_eq!(r.insert(chunk("m", second.0, second.1, 6, b"b"), T0), Err(Inconsistent));
            assert_eq!((r.partials(), r.held_bytes()), (0, 0));
        }
        let mut r = Reassembler::new(small());
        assert_eq!(r.insert(chunk("m", 0, true, 3, b"ab"), T0), Err(Inconsistent));
        assert_eq!(r.insert(chunk("m", 0, true, 1, b"ab"), T0), Err(TooLarge));
        assert_eq!(r.insert(chunk("m", 0, true, 2, b"ab"), T0), Ok(Some(b"ab".to_vec())));
        // the limits themselves are accepted
        assert_eq!(r.insert(chunk("m", 4, true, 10, &[1; 10]), T0), Ok(None));
    }

    #[test]
    fn too_many_partials_keeps_what_is_held() {
        let mut r = Reassembler::new(small());
        assert_eq!(r.insert(chunk("a", 0, false, 2, b"a"), T0), Ok(None));
        assert_eq!(r.insert(chunk("b", 0, false, 2, b"b"), T0), Ok(None));
        assert_eq!(r.insert(chunk("c", 0, false, 2, b"c"), T0), Err(ChunkError::TooManyPartials));
        assert_eq!((r.partials(), r.held_bytes()), (2, 2));
        // a complete single-chunk message needs no slot
        assert_eq!(r.insert(chunk("c", 0, true, 1, b"c"), T0), Ok(Some(b"c".to_vec())));
        assert_eq!(r.insert(chunk("a", 1, true, 2, b"A"), T0), Ok(Some(b"aA".to_vec())));
        assert_eq!(r.insert(chunk("c", 0, false, 2, b"c"), T0), Ok(None));
    }

    #[test]
    fn expiry() {
        let mut r = Reassembler::new(small());
        assert_eq!(r.next_expiry(), None);
        assert_eq!(r.insert(chunk("b", 1, false, 4, b"b"), at(3_000)), Ok(None));
        assert_eq!(r.insert(chunk("a", 0, false, 4, b"a"), at(5_000)), Ok(None));
        // a later chunk does not extend the deadline
        assert_eq!(r.insert(chunk("b", 0, false, 4, b"b"), at(12_999)), Ok(None));
        assert_eq!(r.next_expiry(), Some(at(13_000)));
        assert!(r.expire(at(12_999)).is_empty());
        assert_eq!(r.expire(at(13_000)), vec![id("b")]);
        assert_eq!((r.partials(), r.held_bytes(), r.next_expiry()), (1, 1, Some(at(15_000))));
        // lazily inside insert: chunk 0 of "a" is gone, so chunk 1 starts a new partial
        assert_eq!(r.insert(chunk("a", 1, true, 4, b"aaa"), at(15_000)), Ok(None));
        assert_eq!((r.partials(), r.held_bytes(), r.next_expiry()), (1, 3, Some(at(25_000))));
    }

    /// A message, a chunk size, and chunk indices: each once plus duplicates, shuffled.
    fn delivery() -> impl Strategy<Value = (Vec<u8>, usize, Vec<usize>)> {
        let message = (prop::collection::vec(any::<u8>(), 0..300), 1usize..40);
        message.prop_flat_map(|(data, size)| {
            let n = data.len().div_ceil(size).max(1);
            let order = prop::collection::vec(0..n, 0..2 * n)
                .prop_flat_map(move |dups| Just((0..n).chain(dups).collect()).prop_shuffle());
            (Just(data), Just(size), order)
        })
    }

    /// Adversarial chunks for ids "a".."c": random fields, or a chunk of a valid 5-byte message
    /// (so that multi-chunk completions happen); each with a time step in ms.
    fn adversarial() -> impl Strategy<Value = (Chunk, u64)> {
        let names = ["a", "b", "c"];
        let data = prop::collection::vec(0u8..2, 0..4);
        let random = (0..3usize, 0u32..6, any::<bool>(), 0u64..12, data)
            .prop_map(move |(n, seq, last, len, d)| chunk(names[n], seq, last, len, &d));
        let valid = (0..3usize, 0..3usize)
            .prop_map(move |(n, i)| split(&id(names[n]), &[7, 7, n as u8, 8, 8], 2)[i].clone());
        (prop_oneof![random, valid], 0u64..2_000)
    }

    proptest! {
        #[test]
        fn any_order_with_duplicates_reassembles_once((data, size, order) in delivery()) {
            let chunks = split(&id("msg"), &data, size);
            let mut r = Reassembler::new(ReassemblyLimits::default());
            let mut seen = std::collections::BTreeSet::new();
            for i in order {
                seen.insert(i);
                let out = r.insert(chunks[i].clone(), T0).unwrap();
                if seen.len() == chunks.len() {
                    prop_assert_eq!(out, Some(data.clone()));
                    break; // later duplicates would start a new message: the caller dedups
                }
                prop_assert_eq!(out, None);
            }
            prop_assert_eq!((r.partials(), r.held_bytes()), (0, 0));
        }

        #[test]
        fn adversarial_chunks_respect_bounds(ops in prop::collection::vec(adversarial(), 1..200)) {
            let limits = small();
            let mut r = Reassembler::new(limits.clone());
            // the model: per id, the time of its first chunk and the chunks accepted since
            let mut model = BTreeMap::<MessageId, (Timestamp, BTreeMap<u32, Vec<u8>>)>::new();
            let mut now = T0;
            for (c, step) in ops {
                now = now.saturating_add(Duration::from_millis(step));
                model.retain(|_, (first, _)| now < first.saturating_add(limits.max_age));
                let (key, seq, total_len, data) =
                    (c.chunk_id.clone(), c.sequence_number, c.total_len, c.data.clone());
                match r.insert(c, now) {
                    Ok(None) => {
                        let parts = &mut model.entry(key).or_insert((now, BTreeMap::new())).1;
                        prop_assert!(parts.insert(seq, data.clone()).is_none_or(|d| d == data));
                    }
                    Ok(Some(msg)) => {
                        prop_assert_eq!(msg.len() as u64, total_len);
                        let mut parts = model.remove(&key).map(|p| p.1).unwrap_or_default();
                        prop_assert!(parts.insert(seq, data).is_none());
                        let positions: Vec<u32> = parts.keys().copied().collect();
                        prop_assert_eq!(positions, (0..parts.len() as u32).collect::<Vec<_>>());
                        prop_assert_eq!(msg, parts.into_values().flatten().collect::<Vec<_>>());
                    }
                    Err(ChunkError::TooManyPartials) => {
                        prop_assert!(!model.contains_key(&key));
                        prop_assert_eq!(model.len(), limits.max_partials);
                    }
                    Err(_) => { model.remove(&key); }
                }
                let held: usize = model.values().flat_map(|p| p.1.values()).map(Vec::len).sum();
                prop_assert_eq!((r.held_bytes(), r.partials()), (held as u64, model.len()));
                prop_assert!(r.partials() <= limits.max_partials);
                prop_assert!(r.held_bytes() <= limits.max_message_bytes * 2);
                let deadline = model.values().map(|p| p.0.saturating_add(limits.max_age)).min();
                prop_assert_eq!(r.next_expiry(), deadline);
            }
        }
    }
}
