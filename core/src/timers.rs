//! A deterministic timer queue: at most one deadline per key, fired earliest first.
//!
//! The state machine never sleeps; it records deadlines here, tells its driver
//! [`next`](TimerQueue::next) (when to call back), and on each call drains
//! [`pop_due`](TimerQueue::pop_due). Deadlines that are equal fire in the order they were set,
//! so a run is reproducible from its inputs alone.
//!
//! ```
//! use peerlink_core::Timestamp;
//! use peerlink_core::timers::TimerQueue;
//!
//! let t = Timestamp::from_unix_millis;
//! let mut timers = TimerQueue::new();
//! timers.set("handshake", t(5_000));
//! timers.set("ping", t(3_000));
//! timers.set("ping", t(9_000)); // replaces the earlier deadline
//! assert_eq!(timers.next(), Some(t(5_000)));
//! assert_eq!(timers.pop_due(t(4_999)), None);
//! assert_eq!(timers.pop_due(t(10_000)), Some("handshake"));
//! assert_eq!(timers.pop_due(t(10_000)), Some("ping"));
//! assert!(timers.is_empty());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::time::Timestamp;

/// Deadlines keyed by `K`, each key holding at most one, ordered by time and then by when they
/// were set.
#[derive(Debug, Clone)]
pub struct TimerQueue<K: Ord + Clone> {
    /// `(deadline, set order, key)`, earliest first.
    queue: BTreeSet<(Timestamp, u64, K)>,
    /// Each key's entry in `queue`.
    by_key: BTreeMap<K, (Timestamp, u64)>,
    /// The set order the next [`set`](Self::set) gets (saturating; 2^64 sets are out of reach,
    /// and past it equal deadlines would merely fire in key order).
    counter: u64,
}

impl<K: Ord + Clone> Default for TimerQueue<K> {
    fn default() -> Self {
        Self { queue: BTreeSet::new(), by_key: BTreeMap::new(), counter: 0 }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to fire at `at`, replacing any deadline it had. Among equal deadlines, the
    /// one set (or last re-set) earliest fires first.
    pub fn set(&mut self, key: K, at: Timestamp) {
        let order = self.counter;
        self.counter = self.counter.saturating_add(1);
        if let Some((old_at, old_order)) = self.by_key.insert(key.clone(), (at, order)) {
            self.queue.remove(&(old_at, old_order, key.clone()));
        }
        self.queue.insert((at, order, key));
    }

    /// Removes `key`'s deadline; returns whether it had one.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.by_key.remove_entry(key) {
            Some((key, (at, order))) => {
                self.queue.remove(&(at, order, key));
                true
            }
            None => false,
        }
    }

    /// `key`'s deadline, if it has one.
    pub fn deadline(&self, key: &K) -> Option<Timestamp> {
        self.by_key.get(key).map(|&(at, _)| at)
    }

    /// The earliest deadline of all keys, if any.
    pub fn next(&self) -> Option<Timestamp> {
        self.queue.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns the key with the earliest deadline if that deadline is `<= now`
    /// (equal deadlines in the order they were set). Call it until it returns `None` to fire
    /// everything due.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<K> {
        if self.next()? > now {
            return None;
        }
        let (_, _, key) = self.queue.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    /// The number of keys with a deadline.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn empty_queue() {
        let mut q: TimerQueue<u8> = TimerQueue::default();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        assert_eq!(q.next(), None);
        assert_eq!(q.pop_due(ts(u64::MAX)), None);
        assert!(!q.cancel(&1));
        assert_eq!(q.deadline(&1), None);
    }

    #[test]
    fn ties_fire_in_set_order_and_reset_moves_to_back() {
        let mut q = TimerQueue::new();
        q.set('c', ts(10));
        q.set('a', ts(10));
        q.set('b', ts(10));
        q.set('c', ts(10)); // re-set: now the latest of the three
        assert_eq!(q.len(), 3);
        assert_eq!(q.deadline(&'c'), Some(ts(10)));
        assert_eq!(q.pop_due(ts(9)), None);
        assert_eq!(q.pop_due(ts(10)), Some('a'));
        assert_eq!(q.pop_due(ts(10)), Some('b'));
        assert_eq!(q.pop_due(ts(10)), Some('c'));
        assert_eq!(q.pop_due(ts(10)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn replace_and_cancel() {
        let mut q = TimerQueue::new();
        q.set(1u32, ts(100));
        q.set(2, ts(50));
        q.set(1, ts(10));
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(ts(10)));
        assert!(q.cancel(&1));
        assert!(!q.cancel(&1));
        assert_eq!(q.next(), Some(ts(50)));
        assert_eq!(q.pop_due(ts(1000)), Some(2));
        assert_eq!(q.next(), None);
    }

    #[test]
    fn saturated_counter_still_works() {
        let mut q = TimerQueue::new();
        q.counter = u64::MAX - 1;
        q.set(3u8, ts(1));
        q.set(2, ts(1));
        q.set(1, ts(1));
        q.set(2, ts(0));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_due(ts(1)), Some(2));
        assert_eq!(q.pop_due(ts(1)), Some(3));
        assert_eq!(q.pop_due(ts(1)), Some(1));
        assert!(q.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u64),
        Cancel(u8),
        PopDue(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys and few distinct times, so replacements and ties are common.
        prop_oneof![
            4 => (0u8..8, 0u64..20).prop_map(|(k, t)| Op::Set(k, t)),
            1 => (0u8..8).prop_map(Op::Cancel),
            3 => (0u64..25).prop_map(Op::PopDue),
        ]
    }

    /// The model: `(key, deadline)` in the order they were (last) set.
    fn model_pop(model: &mut Vec<(u8, u64)>, now: u64) -> Option<u8> {
        let mut best: Option<(usize, u64)> = None;
        for (i, &(_, at)) in model.iter().enumerate() {
            if at <= now && best.is_none_or(|(_, b)| at < b) {
                best = Some((i, at));
            }
        }
        best.map(|(i, _)| model.remove(i).0)
    }

    proptest! {
        #[test]
        fn agrees_with_naive_model(ops in prop::collection::vec(op(), 0..200)) {
            let mut q = TimerQueue::new();
            let mut model: Vec<(u8, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Set(k, t) => {
                        q.set(k, ts(t));
                        model.retain(|&(mk, _)| mk != k);
                        model.push((k, t));
                    }
                    Op::Cancel(k) => {
                        let had = model.iter().any(|&(mk, _)| mk == k);
                        model.retain(|&(mk, _)| mk != k);
                        prop_assert_eq!(q.cancel(&k), had);
                    }
                    Op::PopDue(now) => {
                        prop_assert_eq!(q.pop_due(ts(now)), model_pop(&mut model, now));
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.is_empty(), model.is_empty());
                prop_assert_eq!(q.next(), model.iter().map(|&(_, t)| ts(t)).min());
                prop_assert_eq!(q.queue.len(), q.by_key.len());
                for k in 0u8..8 {
                    let expected = model.iter().find(|&&(mk, _)| mk == k).map(|&(_, t)| ts(t));
                    prop_assert_eq!(q.deadline(&k), expected);
                }
            }
            // Draining everything yields the model's order too.
            while let Some(k) = q.pop_due(ts(u64::MAX)) {
                prop_assert_eq!(Some(k), model_pop(&mut model, u64::MAX));
            }
            prop_assert!(model.is_empty());
        }
    }
}
