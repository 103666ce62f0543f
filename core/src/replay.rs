//! Replay protection: a sliding anti-replay window for session sequence numbers and a bounded
//! nonce cache for session-less signed messages.
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
    /// The timestamp is below the low watermark: the cache may have forgotten such messages.
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

/// Bounded replay cache for session-less signed messages, keyed by (sender, nonce).
///
/// Entries expire once `timestamp + max_age < now`. When full, the entry with the oldest
/// timestamp is evicted and the low watermark rises above it, so a message the cache forgot is
/// refused as [`NonceRejection::TooOld`] rather than accepted twice. Freshness (clock skew) is
/// the caller's job; it must refuse messages older than `max_age`.
#[derive(Debug, Clone)]
pub struct NonceCache {
    capacity: usize,
    max_age_ms: u64,
    entries: BTreeMap<(String, [u8; 12]), u64>,
    by_time: BTreeSet<(u64, String, [u8; 12])>,
    /// Highest timestamp ever evicted for capacity; timestamps `<=` it are refused.
    evicted_max: Option<u64>,
}

impl NonceCache {
    /// An empty cache holding at most `capacity` entries (0 is treated as 1) and forgetting
    /// entries older than `max_age_ms`.
    pub fn new(capacity: usize, max_age_ms: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            max_age_ms,
            entries: BTreeMap::new(),
            by_time: BTreeSet::new(),
            evicted_max: None,
        }
    }

    /// Expires old entries, then accepts and records (`sender`, `nonce`) unless its timestamp is
    /// below the low watermark or the pair is already cached.
    pub fn check_and_insert(
        &mut self,
        sender: &str,
        nonce: [u8; 12],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), NonceRejection> {
        while let Some((ts, _, _)) = self.by_time.first() {
            if ts.saturating_add(self.max_age_ms) >= now_ms {
                break;
            }
            if let Some((_, s, n)) = self.by_time.pop_first() {
                self.entries.remove(&(s, n));
            }
        }
        if self.evicted_max.is_some_and(|e| timestamp_ms <= e) {
            return Err(NonceRejection::TooOld);
        }
        let key = (sender.to_owned(), nonce);
        if self.entries.contains_key(&key) {
            return Err(NonceRejection::Duplicate);
        }
        self.by_time.insert((timestamp_ms, key.0.clone(), nonce));
        self.entries.insert(key, timestamp_ms);
        while self.entries.len() > self.capacity {
            let Some((ts, s, n)) = self.by_time.pop_first() else {
                break;
            };
            self.entries.remove(&(s, n));
            self.evicted_max = Some(self.evicted_max.map_or(ts, |e| e.max(ts)));
        }
        Ok(())
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Timestamps below this are refused as too old (0 until something is evicted). Saturates at
    /// `u64::MAX`; if an entry with timestamp `u64::MAX` was evicted, `u64::MAX` is refused too.
    pub fn low_watermark(&self) -> u64 {
        self.evicted_max.map_or(0, |e| e.saturating_add(1))
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
                    Err(NonceRejection::TooOld) => prop_assert!(*ts < c.low_watermark()),
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
}
