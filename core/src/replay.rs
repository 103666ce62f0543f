//! Replay protection: a sliding anti-replay window for session sequence numbers and a bounded
//! nonce cache for session-less signed messages.
//!
//! The nonce cache ([`NonceCache`]) is fair between senders: each sender holds at most a quota of
//! entries (by default 1/16 of the capacity), and when a sender exceeds it, that sender's own
//! oldest entry is evicted and that sender's own watermark rises, so its later messages at or
//! below the evicted timestamp are refused as too old. A sender flooding the cache (say with
//! timestamps at the edge of the allowed skew) therefore only locks itself out. The global
//! capacity and its global watermark remain as a last resort, reachable only when more than
//! `capacity / quota` senders are active at once. Either way a forgotten entry is never accepted
//! again while it could still be fresh.
//!
//! Both structures are deterministic (no clocks, no hashing with random seeds) and never panic on
//! peer-supplied numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why [`ReplayWindow::check`] refused a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRejection {
    /// Sequence number 0 is never valid.
    Zero,
    /// The sequence number is at or below `highest - size`: outside the window.
    TooOld,
    /// The sequence number was already committed.
    Duplicate,
}

impl fmt::Display for ReplayRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Zero => "sequence number 0 is not valid",
            Self::TooOld => "sequence number is older than the replay window",
            Self::Duplicate => "sequence number was already received",
        })
    }
}

/// A replay window size that is not a multiple of 64 in `64..=65536`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindowSizeError {
    /// The rejected size, in bits.
    pub requested: u32,
}

impl fmt::Display for ReplayWindowSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid replay window size {}: must be a multiple of 64 in 64..=65536",
            self.requested
        )
    }
}

impl std::error::Error for ReplayWindowSizeError {}

/// Sliding anti-replay window over `u64` sequence numbers.
///
/// With `top` the highest committed sequence number (0 if none), the window covers exactly the
/// sequence numbers in `(top - size, top]`; anything above `top` is acceptable, anything at or
/// below `top - size` is too old. Internally a ring bitmap indexed by `seq % size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    bits: Vec<u64>,
    size: u32,
    top: u64,
}

impl Default for ReplayWindow {
    /// A window of [`ReplayWindow::DEFAULT_SIZE`].
    fn default() -> Self {
        Self { bits: vec![0; (Self::DEFAULT_SIZE / 64) as usize], size: Self::DEFAULT_SIZE, top: 0 }
    }
}

impl ReplayWindow {
    /// Default window size in bits.
    pub const DEFAULT_SIZE: u32 = 2048;

    /// An empty window of `size` bits; `size` must be a multiple of 64 in `64..=65536`.
    pub fn new(size: u32) -> Result<Self, ReplayWindowSizeError> {
        if !(64..=65536).contains(&size) || !size.is_multiple_of(64) {
            return Err(ReplayWindowSizeError { requested: size });
        }
        Ok(Self {
            // Lossless: at most 1024 words.
            bits: vec![0; (size / 64) as usize],
            size,
            top: 0,
        })
    }

    /// The window size in bits.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The highest committed sequence number (0 if none).
    pub fn highest(&self) -> u64 {
        self.top
    }

    /// Whether `seq` would be accepted; does not modify the window.
    pub fn check(&self, seq: u64) -> Result<(), ReplayRejection> {
        if seq == 0 {
            return Err(ReplayRejection::Zero);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top.saturating_sub(seq) >= u64::from(self.size) {
            return Err(ReplayRejection::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayRejection::Duplicate);
        }
        Ok(())
    }

    /// Marks `seq` as seen. Call only after [`check`](Self::check) passed and the message
    /// authenticated; a `seq` that `check` would reject leaves the window unchanged.
    pub fn commit(&mut self, seq: u64) {
        if self.check(seq).is_err() {
            return;
        }
        if seq > self.top {
            let advance = seq.saturating_sub(self.top);
            if advance >= u64::from(self.size) {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                // The seqs leaving the window share their slots with (top, seq].
                self.clear_slots(self.top.saturating_add(1), seq);
            }
            self.top = seq;
        }
        self.set_bit(seq);
    }

    /// Slot of `seq`: (word index, bit mask).
    fn slot(&self, seq: u64) -> (usize, u64) {
        let pos = seq % u64::from(self.size);
        let word = usize::try_from(pos / 64).unwrap_or(usize::MAX);
        (word, 1u64 << (pos % 64))
    }

    fn bit(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set_bit(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
    }

    /// Clears the slots of `from..=to`, whole words at a time where aligned. Requires
    /// `to - from < size` so no slot is visited twice.
    fn clear_slots(&mut self, from: u64, to: u64) {
        let mut s = from;
        while s <= to {
            let (word, mask) = self.slot(s);
            let step = if s.is_multiple_of(64) && to.saturating_sub(s) >= 63 {
                if let Some(w) = self.bits.get_mut(word) {
                    *w = 0;
                }
                64
            } else {
                if let Some(w) = self.bits.get_mut(word) {
                    *w &= !mask;
                }
                1
            };
            match s.checked_add(step) {
                Some(next) => s = next,
                None => break,
            }
        }
    }
}

/// Why [`NonceCache::check_and_insert`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRejection {
    /// The timestamp is at or below the sender's own watermark or the global one: the cache may
    /// have forgotten such messages.
    TooOld,
    /// This (sender, nonce) pair is already in the cache.
    Duplicate,
}

impl fmt::Display for NonceRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooOld => "message timestamp is below the replay cache watermark",
            Self::Duplicate => "message nonce was already seen from this sender",
        })
    }
}

/// What the cache holds for one sender.
#[derive(Debug, Clone, Default)]
struct SenderState {
    /// Nonce → timestamp of this sender's cached messages.
    nonces: BTreeMap<[u8; 12], u64>,
    /// The same entries ordered by (timestamp, nonce): the first is the next to evict.
    by_time: BTreeSet<(u64, [u8; 12])>,
    /// Highest timestamp of this sender evicted for its quota; this sender's timestamps `<=` it
    /// are refused. Never above any timestamp in `by_time`: later entries must exceed it, and
    /// eviction takes the lowest.
    evicted_max: Option<u64>,
}

/// Bounded replay cache for session-less signed messages, keyed by (sender, nonce).
///
/// Entries expire once `timestamp + max_age < now`. Freshness (clock skew) is the caller's job;
/// it must refuse messages older than `max_age`. Forgetting an unexpired entry is always paid
/// for with a watermark, so a message the cache forgot is refused as
/// [`NonceRejection::TooOld`] rather than accepted twice:
///
/// 1. **Per-sender quota.** A sender holds at most [`sender_quota`](Self::sender_quota) entries.
///    A new entry beyond that evicts *that sender's* oldest-timestamp entry and raises *that
///    sender's* watermark to its timestamp; the sender's later timestamps at or below it are
///    refused. Other senders are unaffected, so one sender flooding far-future timestamps only
///    locks itself out.
/// 2. **Global capacity (last resort).** The cache holds at most [`capacity`](Self::capacity)
///    entries; beyond that the oldest-timestamp entry of any sender is evicted and the global
///    watermark rises to its timestamp, refusing everyone's timestamps at or below it. Since no
///    sender exceeds its quota, this needs more than `capacity / quota` senders with live
///    entries.
///
/// A sender is tracked, watermark included, only while it has entries, so at most `capacity`
/// senders are tracked. Forgetting the watermark then is safe because it never exceeds the
/// sender's remaining entries: when the last one expires, the watermark has expired too (it can
/// no longer matter: `watermark + max_age < now`); when it is evicted for global capacity, the
/// global watermark rises to at least the sender's. Every operation is `O(log n)` amortised.
#[derive(Debug, Clone)]
pub struct NonceCache {
    capacity: usize,
    quota: usize,
    max_age_ms: u64,
    /// Every sender with at least one entry.
    senders: BTreeMap<String, SenderState>,
    /// All entries, ordered by (timestamp, sender, nonce): expiry and global eviction order.
    by_time: BTreeSet<(u64, String, [u8; 12])>,
    /// Highest timestamp ever evicted for global capacity; timestamps `<=` it are refused from
    /// everyone.
    evicted_max: Option<u64>,
}

impl NonceCache {
    /// The default per-sender quota is `capacity / DEFAULT_QUOTA_DIVISOR` (at least 1).
    pub const DEFAULT_QUOTA_DIVISOR: usize = 16;

    /// An empty cache holding at most `capacity` entries (0 is treated as 1) and forgetting
    /// entries older than `max_age_ms`, with the default per-sender quota of
    /// `max(1, capacity / 16)` entries.
    pub fn new(capacity: usize, max_age_ms: u64) -> Self {
        let capacity = capacity.max(1);
        Self::with_sender_quota(capacity, max_age_ms, capacity / Self::DEFAULT_QUOTA_DIVISOR)
    }

    /// An empty cache holding at most `capacity` entries (0 is treated as 1), at most `quota`
    /// of them per sender (clamped to `1..=capacity`), and forgetting entries older than
    /// `max_age_ms`.
    pub fn with_sender_quota(capacity: usize, max_age_ms: u64, quota: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            quota: quota.clamp(1, capacity),
            max_age_ms,
            senders: BTreeMap::new(),
            by_time: BTreeSet::new(),
            evicted_max: None,
        }
    }

    /// Expires old entries (and the watermarks of senders left without entries), then accepts and records (`sender`, `nonce`)
    /// unless its timestamp is at or below the sender's watermark or the global one
    /// ([`NonceRejection::TooOld`]) or the pair is already cached
    /// ([`NonceRejection::Duplicate`]). Recording may evict this sender's oldest entry (quota) or,
    /// as a last resort, the oldest entry overall (capacity); see the type docs.
    pub fn check_and_insert(
        &mut self,
        sender: &str,
        nonce: [u8; 12],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), NonceRejection> {
        self.expire(now_ms);
        let state = self.senders.get(sender);
        let sender_mark = state.and_then(|s| s.evicted_max);
        if [self.evicted_max, sender_mark].into_iter().flatten().any(|e| timestamp_ms <= e) {
            return Err(NonceRejection::TooOld);
        }
        if state.is_some_and(|s| s.nonces.contains_key(&nonce)) {
            return Err(NonceRejection::Duplicate);
        }
        self.insert(sender, nonce, timestamp_ms);
        Ok(())
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Maximum number of entries per sender.
    pub fn sender_quota(&self) -> usize {
        self.quota
    }

    /// Number of entries cached for `sender`.
    pub fn sender_len(&self, sender: &str) -> usize {
        self.senders.get(sender).map_or(0, |s| s.nonces.len())
    }

    /// Number of senders tracked, i.e. with at least one entry; at most
    /// [`capacity`](Self::capacity).
    pub fn tracked_senders(&self) -> usize {
        self.senders.len()
    }

    /// Timestamps below this are refused as too old from every sender (0 until something is
    /// evicted for global capacity). Saturates at `u64::MAX`; if an entry with timestamp
    /// `u64::MAX` was evicted, `u64::MAX` is refused too.
    pub fn low_watermark(&self) -> u64 {
        self.evicted_max.map_or(0, |e| e.saturating_add(1))
    }

    /// Timestamps below this are refused as too old from `sender` because of its own evictions
    /// (0 if none; the global [`low_watermark`](Self::low_watermark) applies as well). Dropped,
    /// back to 0, once the sender has no entries left; see the type docs for why that is safe.
    pub fn sender_low_watermark(&self, sender: &str) -> u64 {
        self.senders.get(sender).and_then(|s| s.evicted_max).map_or(0, |e| e.saturating_add(1))
    }

    /// Drops expired entries, and senders left without entries.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(ts, _, _)) = self.by_time.first() {
            if ts.saturating_add(self.max_age_ms) >= now_ms {
                break;
            }
            if let Some((_, s, n)) = self.by_time.pop_first() {
                self.detach(&s, n);
            }
        }
    }

    /// Removes (`sender`, `nonce`) from its sender's state (the caller removed it from
    /// `by_time`), forgetting the sender and its watermark if it has no entries left.
    fn detach(&mut self, sender: &str, nonce: [u8; 12]) {
        let Some(state) = self.senders.get_mut(sender) else {
            return;
        };
        if let Some(ts) = state.nonces.remove(&nonce) {
            state.by_time.remove(&(ts, nonce));
        }
        if state.nonces.is_empty() {
            self.senders.remove(sender);
        }
    }

    /// Records an entry that passed the checks, then restores the per-sender quota and the
    /// global capacity.
    fn insert(&mut self, sender: &str, nonce: [u8; 12], ts: u64) {
        let state = self.senders.entry(sender.to_owned()).or_default();
        state.nonces.insert(nonce, ts);
        state.by_time.insert((ts, nonce));
        self.by_time.insert((ts, sender.to_owned(), nonce));

        // 1. Per-sender quota: the sender pays for its own flood, with its own watermark.
        if state.nonces.len() > self.quota
            && let Some((old_ts, old_nonce)) = state.by_time.pop_first()
        {
            state.nonces.remove(&old_nonce);
            state.evicted_max = Some(state.evicted_max.map_or(old_ts, |e| e.max(old_ts)));
            self.by_time.remove(&(old_ts, sender.to_owned(), old_nonce));
        }

        // 2. Global capacity, the last resort: with every sender within its quota, only
        //    reachable when more than capacity / quota senders hold entries.
        while self.by_time.len() > self.capacity {
            let Some((old_ts, s, n)) = self.by_time.pop_first() else {
                break;
            };
            self.detach(&s, n);
            self.evicted_max = Some(self.evicted_max.map_or(old_ts, |e| e.max(old_ts)));
        }
    }

    /// Checks the internal invariants; panics (test only) if one is broken.
    #[cfg(test)]
    fn assert_invariants(&self) {
        let mut total = 0usize;
        for (sender, state) in &self.senders {
            assert!(!state.nonces.is_empty(), "{sender} tracked without entries");
            assert_eq!(state.nonces.len(), state.by_time.len(), "{sender}");
            assert!(state.nonces.len() <= self.quota, "{sender} over quota");
            for (&n, &ts) in &state.nonces {
                assert!(state.by_time.contains(&(ts, n)));
                assert!(self.by_time.contains(&(ts, sender.clone(), n)));
                // What makes forgetting an entry-less sender's watermark safe.
                assert!(state.evicted_max.is_none_or(|e| e <= ts), "{sender} entry below mark");
            }
            total += state.nonces.len();
        }
        assert_eq!(total, self.by_time.len());
        assert!(self.by_time.len() <= self.capacity);
        assert!((1..=self.capacity).contains(&self.quota));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accept(w: &mut ReplayWindow, seq: u64) {
        assert_eq!(w.check(seq), Ok(()), "seq {seq}");
        w.commit(seq);
    }

    #[test]
    fn sizes() {
        for bad in [0, 1, 63, 65, 100, 65536 + 64, u32::MAX] {
            assert_eq!(ReplayWindow::new(bad), Err(ReplayWindowSizeError { requested: bad }));
        }
        for good in [64, 128, 2048, 65536] {
            assert_eq!(ReplayWindow::new(good).map(|w| w.size()), Ok(good));
        }
        assert!(ReplayWindow::new(ReplayWindow::DEFAULT_SIZE).is_ok());
    }

    #[test]
    fn zero_and_duplicates() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(0), Err(ReplayRejection::Zero));
        accept(&mut w, 1);
        assert_eq!(w.check(1), Err(ReplayRejection::Duplicate));
        accept(&mut w, 3);
        accept(&mut w, 2);
        assert_eq!(w.check(2), Err(ReplayRejection::Duplicate));
        assert_eq!(w.highest(), 3);
    }

    #[test]
    fn exact_boundary() {
        for size in [64u32, 65536] {
            let mut w = ReplayWindow::new(size).unwrap();
            let top = 1_000_000u64;
            accept(&mut w, top);
            let size = u64::from(size);
            assert_eq!(w.check(top - size), Err(ReplayRejection::TooOld));
            accept(&mut w, top - size + 1);
            assert_eq!(w.check(top - size + 1), Err(ReplayRejection::Duplicate));
            // Advancing by one pushes top - size + 1 out of the window.
            accept(&mut w, top + 1);
            assert_eq!(w.check(top - size + 1), Err(ReplayRejection::TooOld));
            assert_eq!(w.check(top - size + 2), Ok(()));
        }
    }

    #[test]
    fn slots_are_cleared_when_reused() {
        let mut w = ReplayWindow::new(128).unwrap();
        for s in 1..=128 {
            accept(&mut w, s);
        }
        // Jump by less than the window: the slots of 1..=100 now belong to 129..=228.
        accept(&mut w, 228);
        for s in 129..228 {
            assert_eq!(w.check(s), Ok(()), "seq {s}");
        }
        for s in 101..=128 {
            assert_eq!(w.check(s), Err(ReplayRejection::Duplicate), "seq {s}");
        }
        assert_eq!(w.check(100), Err(ReplayRejection::TooOld));
    }

    #[test]
    fn large_jump_and_max() {
        let mut w = ReplayWindow::new(64).unwrap();
        for s in 1..=64 {
            accept(&mut w, s);
        }
        accept(&mut w, 64 + 64 + 5);
        for s in 70..(64 + 64 + 5) {
            assert_eq!(w.check(s), Ok(()), "seq {s}");
        }
        accept(&mut w, u64::MAX - 1);
        assert_eq!(w.check(133), Err(ReplayRejection::TooOld));
        accept(&mut w, u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayRejection::Duplicate));
        assert_eq!(w.check(u64::MAX - 1), Err(ReplayRejection::Duplicate));
        assert_eq!(w.check(u64::MAX - 2), Ok(()));
        assert_eq!(w.check(u64::MAX - 64), Err(ReplayRejection::TooOld));
        assert_eq!(w.highest(), u64::MAX);
    }

    #[test]
    fn commit_of_rejected_seq_is_harmless() {
        let mut w = ReplayWindow::new(64).unwrap();
        accept(&mut w, 1000);
        accept(&mut w, 990);
        let before = w.clone();
        for s in [0, 1, 936, 990, 1000] {
            assert!(w.check(s).is_err());
            w.commit(s);
            assert_eq!(w, before);
        }
    }

    #[derive(Debug, Clone)]
    enum Seq {
        Small(u64),
        NearTop(i64),
        Any(u64),
        NearMax(u64),
    }

    fn seq_strategy() -> impl Strategy<Value = (Seq, bool)> {
        let seq = prop_oneof![
            2 => (0u64..300).prop_map(Seq::Small),
            6 => (-1100i64..=70).prop_map(Seq::NearTop),
            1 => (0u64..3000).prop_map(Seq::Any),
            1 => any::<u64>().prop_map(Seq::Any),
            2 => (0u64..1100).prop_map(Seq::NearMax),
        ];
        (seq, any::<bool>())
    }

    proptest! {
        #[test]
        fn window_matches_model(
            k in 1u32..=16,
            ops in proptest::collection::vec(seq_strategy(), 1..300),
        ) {
            let size = k * 64;
            let mut w = ReplayWindow::new(size).unwrap();
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for (op, force) in ops {
                let s = match op {
                    Seq::Small(v) | Seq::Any(v) => v,
                    Seq::NearTop(d) => top.saturating_add_signed(d),
                    Seq::NearMax(d) => u64::MAX - d,
                };
                let expected = if s == 0 {
                    Err(ReplayRejection::Zero)
                } else if s <= top && top - s >= u64::from(size) {
                    Err(ReplayRejection::TooOld)
                } else if seen.contains(&s) {
                    Err(ReplayRejection::Duplicate)
                } else {
                    Ok(())
                };
                prop_assert_eq!(w.check(s), expected, "seq {} top {}", s, top);
                if expected.is_ok() {
                    w.commit(s);
                    seen.insert(s);
                    top = top.max(s);
                } else if force {
                    let before = w.clone();
                    w.commit(s);
                    prop_assert_eq!(&w, &before);
                }
                prop_assert_eq!(w.highest(), top);
            }
        }
    }

    #[test]
    fn nonce_cache_basics() {
        let mut c = NonceCache::new(0, 100);
        assert_eq!(c.capacity(), 1);
        assert!(c.is_empty());
        assert_eq!(c.check_and_insert("a", [1; 12], 50, 50), Ok(()));
        assert_eq!(c.check_and_insert("a", [1; 12], 50, 60), Err(NonceRejection::Duplicate));
        // Different sender, same nonce: distinct key. Evicts ("a", [1; 12]) at ts 50.
        assert_eq!(c.check_and_insert("b", [1; 12], 60, 60), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.low_watermark(), 51);
        assert_eq!(c.check_and_insert("a", [1; 12], 50, 60), Err(NonceRejection::TooOld));
        // Expiry: 60 + 100 < 161.
        assert_eq!(c.check_and_insert("c", [2; 12], 161, 161), Ok(()));
        assert_eq!(c.check_and_insert("b", [1; 12], 60, 161), Ok(()));
    }

    #[test]
    fn nonce_cache_max_timestamp_eviction() {
        let mut c = NonceCache::new(1, u64::MAX);
        assert_eq!(c.check_and_insert("a", [0; 12], u64::MAX, 0), Ok(()));
        assert_eq!(c.check_and_insert("b", [0; 12], u64::MAX, 0), Ok(()));
        assert_eq!(c.low_watermark(), u64::MAX);
        // Whichever was evicted must not be accepted again.
        assert!(c.check_and_insert("a", [0; 12], u64::MAX, 0).is_err());
        assert!(c.check_and_insert("b", [0; 12], u64::MAX, 0).is_err());
    }

    /// (sender index, nonce byte, timestamp).
    type Msg = (u8, u8, u64);

    /// Messages, and ops as (message index, now advance).
    fn nonce_inputs() -> impl Strategy<Value = (Vec<Msg>, Vec<(usize, u64)>)> {
        (
            proptest::collection::vec((0u8..3, 0u8..6, 0u64..3000), 1..40),
            proptest::collection::vec((any::<usize>(), 0u64..80), 1..200),
        )
    }

    proptest! {
        #[test]
        fn nonce_cache_unbounded_is_set_with_expiry(
            (msgs, ops) in nonce_inputs(),
            max_age in 0u64..1000,
        ) {
            let mut c = NonceCache::new(10_000, max_age);
            let mut model: BTreeMap<(String, [u8; 12]), u64> = BTreeMap::new();
            let mut now = 0u64;
            for (i, adv) in ops {
                now += adv;
                let Some(&(s, n, ts)) = msgs.get(i % msgs.len()) else { continue };
                let key = (format!("s{s}"), [n; 12]);
                model.retain(|_, t| t.saturating_add(max_age) >= now);
                let expected = if model.contains_key(&key) {
                    Err(NonceRejection::Duplicate)
                } else {
                    model.insert(key.clone(), ts);
                    Ok(())
                };
                prop_assert_eq!(c.check_and_insert(&key.0, key.1, ts, now), expected);
                prop_assert_eq!(c.len(), model.len());
                prop_assert_eq!(c.low_watermark(), 0);
            }
        }

        #[test]
        fn nonce_cache_bounded_never_accepts_replay(
            (msgs, ops) in nonce_inputs(),
            capacity in 0usize..6,
            max_age in 0u64..3000,
        ) {
            // Each (sender, nonce) pair is one signed message: its timestamp is fixed.
            let mut by_pair: BTreeMap<(String, [u8; 12]), u64> = BTreeMap::new();
            for &(s, n, ts) in &msgs {
                by_pair.entry((format!("s{s}"), [n; 12])).or_insert(ts);
            }
            let pairs: Vec<_> = by_pair.into_iter().collect();
            let mut c = NonceCache::new(capacity, max_age);
            let mut accepted: BTreeMap<(String, [u8; 12]), u64> = BTreeMap::new();
            let mut now = 0u64;
            let mut max_accepted_ts = 0u64;
            for (i, adv) in ops {
                now += adv;
                let Some(((sender, nonce), ts)) = pairs.get(i % pairs.len()) else { continue };
                let key = (sender.clone(), *nonce);
                let result = c.check_and_insert(sender, *nonce, *ts, now);
                let prev = accepted.get(&key).copied();
                match result {
                    Ok(()) => {
                        max_accepted_ts = max_accepted_ts.max(*ts);
                        if let Some(t0) = prev {
                            prop_assert!(t0.saturating_add(max_age) < now, "replay of {:?} at {}", key, now);
                        }
                        accepted.insert(key, *ts);
                    }
                    Err(NonceRejection::TooOld) => prop_assert!(
                        *ts < c.low_watermark().max(c.sender_low_watermark(sender))
                    ),
                    Err(NonceRejection::Duplicate) => {
                        let t0 = prev.unwrap_or_default();
                        prop_assert!(prev.is_some() && t0.saturating_add(max_age) >= now);
                    }
                }
                prop_assert!(c.len() <= c.capacity());
                prop_assert_eq!(c.capacity(), capacity.max(1));
                // The watermark only rises past timestamps that were accepted and then evicted.
                prop_assert!(c.low_watermark() <= max_accepted_ts + 1);
            }
        }
    }

    /// A 12-byte nonce holding `i`.
    fn nonce_of(i: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn nonce_cache_default_quota() {
        for (capacity, quota) in [(0, 1), (1, 1), (15, 1), (16, 1), (32, 2), (65_536, 4096)] {
            assert_eq!(NonceCache::new(capacity, 1).sender_quota(), quota, "{capacity}");
        }
        for (capacity, quota, clamped) in [(8, 0, 1), (8, 3, 3), (8, 9, 8), (0, 5, 1)] {
            let c = NonceCache::with_sender_quota(capacity, 1, quota);
            assert_eq!(c.sender_quota(), clamped, "{capacity} {quota}");
        }
    }

    /// The security review's attack: one sender floods the cache with signed messages timestamped
    /// at the edge of the allowed skew. It must lock out only itself.
    #[test]
    fn nonce_cache_flooding_sender_only_locks_itself_out() {
        let skew = 300_000u64;
        let now = 1_700_000_000_000u64;
        let mut c = NonceCache::new(64, 2 * skew);
        let quota = c.sender_quota();
        assert_eq!(quota, 4);
        let flood = 64 + 10;
        // Increasing far-future timestamps, all within the skew.
        let ts = |i: u64| now + skew - flood + i;
        for i in 0..flood {
            assert_eq!(c.check_and_insert("mallory", nonce_of(i), ts(i), now), Ok(()), "{i}");
        }
        assert_eq!(c.sender_len("mallory"), quota);
        assert_eq!(c.len(), quota);
        assert_eq!(c.low_watermark(), 0);
        let kept = flood - 4;
        assert_eq!(c.sender_low_watermark("mallory"), ts(kept - 1) + 1);

        // Everyone else's fresh messages are still accepted, and replays of them refused.
        assert_eq!(c.sender_low_watermark("bob"), 0);
        assert_eq!(c.check_and_insert("bob", [7; 12], now, now), Ok(()));
        assert_eq!(
            c.check_and_insert("bob", [7; 12], now, now + 1),
            Err(NonceRejection::Duplicate)
        );
        for s in 0..10u64 {
            for j in 0..4 {
                let sender = format!("peer-{s}");
                assert_eq!(c.check_and_insert(&sender, nonce_of(j), now - skew + j, now), Ok(()));
            }
        }
        assert_eq!(c.low_watermark(), 0);
        assert_eq!(c.len(), 4 + 1 + 40);

        // Mallory's evicted messages are refused as too old, the kept ones as duplicates, for
        // as long as they could be fresh.
        for later in [now + 1, now + 2 * skew] {
            for i in 0..flood {
                let expected =
                    if i < kept { NonceRejection::TooOld } else { NonceRejection::Duplicate };
                assert_eq!(c.check_and_insert("mallory", nonce_of(i), ts(i), later), Err(expected));
            }
        }
        // Mallory's own fresh messages below its watermark are refused, later ones accepted.
        assert_eq!(
            c.check_and_insert("mallory", [0xff; 12], now, now + 1),
            Err(NonceRejection::TooOld)
        );
        assert_eq!(c.check_and_insert("mallory", [0xff; 12], ts(flood), now + 1), Ok(()));
        assert_eq!(c.sender_len("mallory"), quota);
    }

    #[test]
    fn nonce_cache_forgets_sender_watermarks_with_their_entries() {
        let mut c = NonceCache::with_sender_quota(4, 100, 2);
        for (i, ts) in [10, 11, 12].into_iter().enumerate() {
            assert_eq!(c.check_and_insert("a", [i as u8; 12], ts, 12), Ok(()));
        }
        assert_eq!(c.sender_low_watermark("a"), 11);
        assert_eq!(c.check_and_insert("a", [0; 12], 10, 12), Err(NonceRejection::TooOld));
        // "a" keeps its watermark while it holds entries (11 and 12 live until 112).
        assert_eq!(c.check_and_insert("b", [0; 12], 50, 111), Ok(()));
        assert_eq!((c.tracked_senders(), c.sender_low_watermark("a")), (2, 11));
        // At 113 its entries have expired, and so has its watermark: forgotten.
        assert_eq!(c.check_and_insert("b", [1; 12], 51, 113), Ok(()));
        assert_eq!((c.tracked_senders(), c.sender_low_watermark("a")), (1, 0));
        // Losing its entries to global capacity instead moves the watermark into the global one.
        let mut c = NonceCache::with_sender_quota(4, 1000, 2);
        for (i, ts) in [10, 11, 12].into_iter().enumerate() {
            assert_eq!(c.check_and_insert("a", [i as u8; 12], ts, 12), Ok(()));
        }
        for (s, ts) in [("b", 20), ("b", 21), ("c", 30), ("c", 31)] {
            assert_eq!(c.check_and_insert(s, [ts as u8; 12], ts, 31), Ok(()));
        }
        assert_eq!((c.tracked_senders(), c.sender_low_watermark("a")), (2, 0));
        assert_eq!(c.low_watermark(), 13);
        for (i, ts) in [10, 11, 12].into_iter().enumerate() {
            assert_eq!(c.check_and_insert("a", [i as u8; 12], ts, 40), Err(NonceRejection::TooOld));
        }
    }

    /// (sender index, nonce byte, timestamp), and ops as (message index, now advance).
    type FairInputs = (Vec<Msg>, Vec<(usize, u64)>);

    fn fair_inputs() -> impl Strategy<Value = FairInputs> {
        (
            proptest::collection::vec((0u8..6, 0u8..8, 0u64..3000), 1..60),
            proptest::collection::vec((any::<usize>(), 0u64..80), 1..250),
        )
    }

    proptest! {
        /// Several senders interleaved, checked against a model of everything accepted so far.
        #[test]
        fn nonce_cache_fair_against_model(
            (msgs, ops) in fair_inputs(),
            capacity in 0usize..14,
            quota in proptest::option::of(0usize..6),
            max_age in 0u64..3000,
        ) {
            // Each (sender, nonce) pair is one signed message: its timestamp is fixed, and a
            // replay repeats it.
            let mut by_pair: BTreeMap<(String, [u8; 12]), u64> = BTreeMap::new();
            for &(s, n, ts) in &msgs {
                by_pair.entry((format!("s{s}"), [n; 12])).or_insert(ts);
            }
            let pairs: Vec<_> = by_pair.into_iter().collect();
            let mut c = match quota {
                Some(q) => NonceCache::with_sender_quota(capacity, max_age, q),
                None => NonceCache::new(capacity, max_age),
            };
            let cap = capacity.max(1);
            let q = quota.map_or((cap / 16).max(1), |q| q.clamp(1, cap));
            prop_assert_eq!((c.capacity(), c.sender_quota()), (cap, q));

            // The model: when each pair was last accepted, the highest timestamp accepted from
            // each sender, and how many senders ever had a message accepted.
            let mut accepted: BTreeMap<(String, [u8; 12]), u64> = BTreeMap::new();
            let mut max_ts: BTreeMap<String, u64> = BTreeMap::new();
            let mut now = 0u64;
            for (i, adv) in ops {
                now += adv;
                let Some(((sender, nonce), ts)) = pairs.get(i % pairs.len()) else { continue };
                let key = (sender.clone(), *nonce);
                let prev = accepted.get(&key).copied();
                let live = prev.is_some_and(|t0| t0.saturating_add(max_age) >= now);
                match c.check_and_insert(sender, *nonce, *ts, now) {
                    Ok(()) => {
                        // Never the same pair twice unless the first had expired.
                        prop_assert!(!live, "replay of {:?} at {}", key, now);
                        accepted.insert(key, *ts);
                        let m = max_ts.entry(sender.clone()).or_default();
                        *m = (*m).max(*ts);
                    }
                    Err(NonceRejection::Duplicate) => prop_assert!(live),
                    // Too old only at or below the sender's watermark or the global one.
                    Err(NonceRejection::TooOld) => prop_assert!(
                        *ts < c.low_watermark().max(c.sender_low_watermark(sender)),
                        "{:?} ts {} marks {} {}",
                        key, ts, c.low_watermark(), c.sender_low_watermark(sender)
                    ),
                }
                // Bounds.
                prop_assert!(c.len() <= cap);
                prop_assert!(c.tracked_senders() <= cap);
                for s in 0..6 {
                    let s = format!("s{s}");
                    prop_assert!(c.sender_len(&s) <= q, "{} holds {}", s, c.sender_len(&s));
                    // A sender's watermark only rises past its own accepted timestamps.
                    let own = max_ts.get(&s).map_or(0, |m| m + 1);
                    prop_assert!(c.sender_low_watermark(&s) <= own);
                }
                let all = max_ts.values().max().map_or(0, |m| m + 1);
                prop_assert!(c.low_watermark() <= all);
                // The global watermark is a last resort: it stays 0 while the senders ever
                // accepted cannot exceed the capacity within their quotas.
                if max_ts.len() <= cap / q {
                    prop_assert_eq!(c.low_watermark(), 0);
                }
                c.assert_invariants();
            }
        }
    }
}
