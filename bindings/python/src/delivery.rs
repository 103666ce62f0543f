//! How sends end: a delivery's [`Outcome`], and the [`Tracker`] that hands each outcome to the
//! `Receipt` waiting for it (or keeps it until that receipt comes).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_channel::{Receiver, Sender};
use peerlink_core::MessageId;
use peerlink_core::stream::FailReason;

/// Outcomes no `Receipt` waits for yet: those of sends whose receipt is registered just after
/// the outcome came (the send call and the outcome race), and those of messages no receipt
/// will ever ask about (broadcasts, responses). The newest this many are kept.
const MAX_EARLY: usize = 1 << 14;

/// How a delivery ended, as the pump saw it.
pub(crate) type Outcome = Result<(Option<&'static str>, Instant), (FailReason, bool)>;

/// Sends waiting for their outcome, and outcomes waiting for their send's receipt.
#[derive(Default)]
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    waiting: HashMap<MessageId, Sender<Outcome>>,
    early: HashMap<MessageId, Outcome>,
    /// `early`'s ids, oldest first (an id taken from `early` since stays here until evicted).
    early_order: VecDeque<MessageId>,
    stopped: bool,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pump saw `id`'s outcome.
    pub(crate) fn settle(&self, id: &MessageId, outcome: Outcome) {
        let mut s = self.lock();
        match s.waiting.remove(id) {
            Some(tx) => {
                let _ = tx.try_send(outcome);
            }
            None => {
                if s.early_order.len() >= MAX_EARLY
                    && let Some(oldest) = s.early_order.pop_front()
                {
                    s.early.remove(&oldest);
                }
                s.early.insert(id.clone(), outcome);
                s.early_order.push_back(id.clone());
            }
        }
    }

    /// A receipt for `id`: its outcome's channel.
    pub(crate) fn register(&self, id: &MessageId) -> Receiver<Outcome> {
        let (tx, rx) = async_channel::bounded(1);
        let mut s = self.lock();
        if let Some(outcome) = s.early.remove(id) {
            let _ = tx.try_send(outcome);
        } else if !s.stopped {
            s.waiting.insert(id.clone(), tx);
        }
        rx
    }

    /// The node stopped: waiting receipts learn it (their channel closes).
    pub(crate) fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        s.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> MessageId {
        MessageId::new(format!("m{n}")).unwrap()
    }

    #[test]
    fn an_outcome_before_its_receipt_is_kept_and_old_unclaimed_ones_are_evicted() {
        let t = Tracker::default();
        let delivered: Outcome = Ok((Some("websocket"), Instant::now()));
        t.settle(&id(0), delivered);
        assert_eq!(t.register(&id(0)).try_recv().ok(), Some(delivered), "the race is won");
        let rx = t.register(&id(1));
        t.settle(&id(1), Err((FailReason::Timeout, true)));
        assert_eq!(rx.try_recv().ok(), Some(Err((FailReason::Timeout, true))));
        for n in 2..MAX_EARLY + 10 {
            t.settle(&id(n), delivered);
        }
        let s = t.lock();
        assert!(s.early.len() <= MAX_EARLY && s.early_order.len() <= MAX_EARLY);
        assert!(!s.early.contains_key(&id(2)) && s.early.contains_key(&id(MAX_EARLY + 9)));
        drop(s);
        let waiting = t.register(&id(MAX_EARLY + 20));
        t.stop();
        assert!(waiting.try_recv().is_err() && waiting.is_closed(), "a stopped node closes waits");
    }
}
