//! Carrying out the node's outputs, and on a durable node the group commit (spec §26.2):
//! writes are made durable in groups, one transaction each, and every output queued after a
//! write waits for the commit of that write's group, except the events that hand received
//! content to the application, which go at once (`Output::waits_for_writes`).
//!
//! Commits are **pipelined**: while one group is being committed by the store's thread, the
//! node task goes on taking inputs, and their writes gather into the next group, handed to the
//! store as soon as the one in flight is done. A task that waited for each commit before taking
//! its next input left the disk and the CPU idle in turn. What waits:
//!
//! - the outputs queued after a group's first write wait for that group's commit;
//! - the outputs queued while a group is in flight, before the next group's first write, wait
//!   for the group in flight (they may depend on it: a frame re-sent by a timer);
//! - answers to the application's calls ([`Core::deferred`]) wait for every write queued
//!   before them.
//!
//! So everything is carried out in the order the node queued it, writes aside.

use futures_lite::Stream as _;
use peerlink_core::node::Output;

use crate::state::{Core, Group, HeldReply, InFlight};
use crate::store::{CommitStats, StoreFailure};

/// Most writes (and, apart, outputs) a group gathers while another is in flight; past that the
/// node task takes no input until the group in flight is committed (timers still run).
const GROUP_BOUND: usize = 16_384;

impl Core {
    /// Carries out every output the node has, the writes among them as the module says. A
    /// refused commit stops the node (see [`Core::store_refused`]).
    pub(crate) async fn drain(&mut self) {
        if self.store_failed.is_some() {
            // Stopping: nothing that may depend on a refused write is carried out.
            return;
        }
        loop {
            let mut any = false;
            while let Some(out) = self.node.poll_output() {
                tracing::trace!(output = %out.describe(), "node output");
                any = true;
                let waits = !self.group.writes.is_empty() || self.in_flight.is_some();
                match out {
                    Output::Persist(op) => self.group.writes.push(op),
                    out if !waits || !out.waits_for_writes() => self.carry_any(out).await,
                    out if !self.group.writes.is_empty() => self.group.held.push(out),
                    out => self.group.early.push(out),
                }
            }
            if !any {
                break;
            }
            self.start_commit().await;
            if self.store_failed.is_some() {
                return;
            }
            if self.store.is_some() {
                self.settle_if_taken();
            }
        }
        let replies = std::mem::take(&mut self.deferred);
        if !self.group.writes.is_empty() {
            self.group.replies.extend(replies);
        } else if self.in_flight.is_some() {
            self.group.early_replies.extend(replies);
        } else {
            for reply in replies {
                reply();
            }
        }
    }

    /// A durable node: if the application has taken every event handed to it, the receive
    /// positions held back until it had are written (spec §26.2), in the node's next round;
    /// else the application's end of the queue is asked to say when it has ([`Events`]).
    ///
    /// [`Events`]: crate::Events
    pub(crate) fn settle_if_taken(&mut self) {
        let queued = || self.events.as_ref().map_or(0, |tx| tx.len());
        let mut backlog = queued();
        if backlog > 0
            && let Some((signal, _)) = &self.taken
        {
            signal.want();
            // Taken meanwhile, before the wish was seen: no word would come.
            backlog = queued();
        }
        self.node.set_app_backlog(backlog);
        if backlog == 0 {
            let now = self.clock.now();
            self.node.events_taken(now);
        }
    }

    /// Polls the word of the application's end of the event queue that it emptied it.
    pub(crate) fn poll_taken(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some((_, woken)) = self.taken.as_mut() else { return std::task::Poll::Pending };
        // Never ends: the signal held here keeps its sender alive. A new `incoming()` replaces
        // both ends.
        woken.as_mut().poll_next(cx).map(|_| ())
    }

    /// Answers an application's call (or a `/metrics` request) once the writes queued before
    /// it are committed, on a durable node; at once on another. So what the answer says is on
    /// disk: what `send` accepted, the mailboxes the metrics count.
    pub(crate) fn answer_after_writes(&mut self, answer: HeldReply) {
        if self.store.is_some() {
            self.deferred.push(answer);
        } else {
            answer();
        }
    }

    /// Carries out one output, an event included.
    async fn carry_any(&mut self, out: Output) {
        match out {
            Output::Event(e) => self.event(e).await,
            out => self.carry(out),
        }
    }

    /// Hands the gathered group to the store, unless one is in flight already.
    async fn start_commit(&mut self) {
        if self.in_flight.is_some() || self.group.writes.is_empty() {
            return;
        }
        let Some(store) = &self.store else { return };
        let group = std::mem::take(&mut self.group);
        debug_assert!(group.early.is_empty() && group.early_replies.is_empty());
        match store.submit(group.writes).await {
            Ok(answer) => {
                self.in_flight = Some(InFlight {
                    answer: Box::pin(answer),
                    held: group.held,
                    replies: group.replies,
                });
            }
            Err(e) => self.store_refused(&e),
        }
    }

    /// Polls the group in flight: its answer once it is committed (or refused).
    pub(crate) fn poll_commit(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<CommitStats, StoreFailure>> {
        let Some(f) = self.in_flight.as_mut() else { return std::task::Poll::Pending };
        f.answer.as_mut().poll_next(cx).map(|r| r.unwrap_or(Err(StoreFailure::Stopped)))
    }

    /// Whether the next group is as large as it may grow while one is in flight.
    pub(crate) fn group_full(&self) -> bool {
        self.in_flight.is_some()
            && (self.group.writes.len() >= GROUP_BOUND
                || self.group.held.len().saturating_add(self.group.early.len()) >= GROUP_BOUND)
    }

    /// The group in flight was committed (or refused): what waited for it is carried out, the
    /// next group handed over, and what that gave the node to do drained.
    pub(crate) async fn committed(&mut self, result: Result<CommitStats, StoreFailure>) {
        let Some(done) = self.in_flight.take() else { return };
        match result {
            Ok(stats) => self.store_stats.add(&stats),
            Err(e) => {
                self.store_refused(&e);
                return;
            }
        }
        let early = std::mem::take(&mut self.group.early);
        let early_replies = std::mem::take(&mut self.group.early_replies);
        for out in done.held.into_iter().chain(early) {
            self.carry_any(out).await;
        }
        for reply in done.replies.into_iter().chain(early_replies) {
            reply();
        }
        self.start_commit().await;
        // Carrying these out may give the node more to do (a lost HTTP answer). (A refused
        // hand-over of the next group makes `drain` do nothing.)
        self.drain().await;
    }

    /// Waits until every write gathered so far is committed and what waited for it carried out
    /// (before a shutdown or the end of the task).
    pub(crate) async fn flush_commits(&mut self) {
        while self.in_flight.is_some() && self.store_failed.is_none() {
            let result = std::future::poll_fn(|cx| self.poll_commit(cx)).await;
            self.committed(result).await;
        }
    }

    /// A commit was refused: the node stops so that nothing it accepted is lost. Nothing that
    /// waited for a write is carried out; the callers waiting for an answer hear `Stopped`.
    fn store_refused(&mut self, e: &StoreFailure) {
        tracing::error!(
            error = %e,
            "the store refused a write: the node stops so that nothing it accepted is lost; \
             the calls of this batch were not accepted"
        );
        self.store_failed = Some(e.to_string());
        self.deferred.clear();
        self.in_flight = None;
        self.group = Group::default();
    }
}
