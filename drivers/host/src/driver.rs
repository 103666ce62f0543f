//! The node task: the one task that owns the [`Node`](peerlink_core::Node). Everything else
//! talks to it through one bounded input queue; it feeds each input to the node with the current
//! time, drains `poll_output()` and carries out every output, then sleeps until the next input or
//! `poll_timeout()`. What it owns ([`Core`]) and what it is told ([`Input`]) are in
//! [`crate::state`]; this module is what it does with them.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use async_channel::{Receiver, TrySendError};
use futures_lite::Stream as _;
use peerlink_core::node::{
    ClusterAction, Handled, Input as NodeInput, LinkId, LinkKind, NodeAddr, Output,
};
use peerlink_core::{ErrorCode, Event, Timestamp};

use crate::client;
use crate::client::HttpAnswer;
use crate::delivery::HandlerKey;
use crate::error::ApiError;
use crate::link::CLOSE_BOUND;
use crate::link_queue::link_channels;
use crate::metrics::ClusterCounters;
use crate::runtime::BoxSleep;
use crate::state::{ClusterNews, Core, Input, Reply};

impl Core {
    /// Feeds the node one of its own inputs now.
    fn feed(&mut self, now: Timestamp, input: NodeInput<'_>) -> Result<Handled, ErrorCode> {
        tracing::trace!(input = %input.describe(), "node input");
        self.node.handle_input(now, input)
    }

    /// Handles one input; `Some` (where to confirm) for a shutdown.
    fn handle(&mut self, input: Input) -> Option<Reply<()>> {
        let now = self.clock.now();
        // Events the application has not taken yet count against the node's `max_events`:
        // a slow reader makes the node refuse data frames (their senders re-send later).
        self.node.set_app_backlog(self.events.as_ref().map_or(0, |tx| tx.len()));
        if let Some(what) = input.describe() {
            tracing::trace!(input = %what, "node input");
        }
        match input {
            Input::Accept { kind, who, encoding, handle, reply } => {
                let r = match self.feed(now, NodeInput::AcceptLink { kind, who, encoding }) {
                    Ok(Handled::Link(link)) => {
                        self.links.insert(link, (kind, handle));
                        Ok(link)
                    }
                    Ok(_) => Err(ErrorCode::InternalError),
                    Err(code) => Err(code),
                };
                let _ = reply.try_send(r);
            }
            Input::Frame { link, data, binary } => {
                let frame = &data;
                let input = if binary {
                    NodeInput::BinaryFrame { link, frame }
                } else {
                    NodeInput::Frame { link, frame }
                };
                let _ = self.feed(now, input);
            }
            Input::Closed { link } => {
                self.closing.remove(&link);
                self.forget_link(link);
                let _ = self.feed(now, NodeInput::LinkClosed(link));
            }
            Input::LinkUp { link, encoding } => {
                if self.outbound.contains(&link) {
                    self.up.insert(link);
                }
                let _ = self.feed(now, NodeInput::LinkUp { link, encoding });
            }
            Input::LinkFailed { link } => {
                self.forget_link(link);
                let _ = self.feed(now, NodeInput::LinkFailed(link));
            }
            Input::Http { who, call, reply } => {
                let caller = who.entity.clone();
                if let Ok(Handled::Call(request)) =
                    self.feed(now, NodeInput::HttpCall { who, call })
                {
                    self.pending_http.insert(request, (caller, reply));
                }
            }
            Input::HttpResult { request, result: Some(HttpAnswer { status, body, encoding }) } => {
                let response = NodeInput::HttpResponse { request, status, body: &body, encoding };
                let _ = self.feed(now, response);
            }
            Input::HttpResult { request, result: None } => {
                let _ = self.feed(now, NodeInput::HttpFailed(request));
            }
            Input::Challenge { entity, pubkey, reply } => {
                let r = self.authority.challenge(
                    &entity,
                    &pubkey,
                    self.node.trust(),
                    now,
                    &mut self.rng,
                );
                let _ = reply.try_send(r);
            }
            Input::Verify { entity, challenge, reply } => {
                let _ = reply.try_send(self.authority.take_answer(&entity, &challenge, now));
            }
            Input::Call(call) => call(self, now),
            Input::Cluster(news) => self.cluster_news(now, news),
            Input::WorkDone(done) => self.node.complete_work(now, done),
            Input::Shutdown { reply } => {
                self.shutdown(now);
                return Some(reply);
            }
        }
        None
    }

    /// Graceful shutdown: the node says `BYE` on every link and closes it, and answers held
    /// polls. The drain that follows carries that out (each link writes what it has queued,
    /// then closes); HTTP calls still unanswered when the task ends get 503.
    fn shutdown(&mut self, now: Timestamp) {
        self.stopping = true;
        self.node.shutdown(now);
    }

    /// Carries out one output other than an event or a write.
    pub(crate) fn carry(&mut self, out: Output) {
        match out {
            Output::Transmit { link, frame } => self.transmit(link, frame),
            Output::OpenLink { link, url, kind, node, offer_binary } => {
                self.open_link(link, url, kind, node, offer_binary)
            }
            Output::CloseLink { link, reason } => {
                if let Some((_, h)) = self.links.get(&link) {
                    let _ = h.kill.try_send(reason);
                    // A link that is up writes what is queued on it, then closes: a
                    // shutdown waits for that (a link still connecting writes nothing).
                    let up = !self.outbound.contains(&link) || self.up.contains(&link);
                    if self.stopping && up {
                        self.closing.insert(link);
                    }
                }
                self.forget_link(link);
            }
            Output::HttpRequest {
                request,
                method,
                url,
                node,
                body,
                body_encoding,
                accept_binary,
            } => {
                if self.stopping {
                    return;
                }
                let ctx = Arc::clone(&self.client);
                let inputs = self.inputs.clone();
                let poll_wait = self.node.config().poll_wait;
                let req = client::NodeRequest { method, url, body, body_encoding, accept_binary };
                self.client.rt.spawn(Box::pin(async move {
                    let result = client::node_request(&ctx, &node, req, poll_wait).await;
                    let _ = inputs.send(Input::HttpResult { request, result }).await;
                }));
            }
            Output::HttpRespond { request, status, body, encoding } => {
                if let Some((caller, reply)) = self.pending_http.remove(&request)
                    && let Err(TrySendError::Closed(answer)) =
                        reply.try_send(HttpAnswer { status, body, encoding })
                {
                    // The caller's connection is gone (a stopped client's long poll): what
                    // the answer carried goes back to its mailbox (spec §21).
                    tracing::debug!(%caller, ?request, "HTTP caller gone; answer kept");
                    let now = self.clock.now();
                    let HttpAnswer { body, encoding, .. } = answer;
                    let lost = NodeInput::HttpAnswerLost { to: caller, body: &body, encoding };
                    let _ = self.feed(now, lost);
                }
            }
            Output::Cluster(action) => self.cluster_action(action),
            Output::Work(work) => {
                // On another of the runtime's tasks (threads): the node task goes on meanwhile.
                let inputs = self.inputs.clone();
                self.client.rt.spawn(Box::pin(async move {
                    let id = work.id();
                    let run = std::panic::AssertUnwindSafe(|| work.run());
                    // Work that panics is handed back undone: the node does it in place
                    // rather than leave its sender waiting.
                    let done = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                        tracing::error!(?id, "public-key work panicked; done on the node task");
                        peerlink_core::node::WorkDone::undone(id)
                    });
                    let _ = inputs.send(Input::WorkDone(done)).await;
                }));
            }
            Output::Event(_) | Output::Persist(_) => {}
        }
    }

    /// Feeds the node what the cluster's broker said.
    fn cluster_news(&mut self, now: Timestamp, news: ClusterNews) {
        let _ = match news {
            ClusterNews::Up => self.feed(now, NodeInput::ClusterUp),
            ClusterNews::Down => self.feed(now, NodeInput::ClusterDown),
            ClusterNews::Presence { entity, node } => {
                self.feed(now, NodeInput::ClusterPresence { entity, node })
            }
            ClusterNews::Frame { to, frame } => {
                self.feed(now, NodeInput::ClusterFrame { to, frame: &frame })
            }
            ClusterNews::Mail { entity } => self.feed(now, NodeInput::ClusterMail { entity }),
            ClusterNews::Publication { topic, origin, frame } => self
                .feed(now, NodeInput::ClusterPublication { topic: &topic, origin, frame: &frame }),
        };
    }

    /// Hands what the node asks of the broker to the broker's task. Its queue is bounded: a
    /// request that finds it full is dropped and counted (the end-to-end layer re-sends a
    /// dropped frame; presence is announced again at the next refresh).
    fn cluster_action(&mut self, action: ClusterAction) {
        let Some(cluster) = &self.cluster else {
            tracing::error!(?action, "cluster output on a node without a broker");
            return;
        };
        if let Err(e) = cluster.actions.try_send(action) {
            tracing::debug!(action = ?e.into_inner(), "cluster request dropped: queue full");
            ClusterCounters::add(&cluster.counters.requests_dropped, 1);
        }
    }

    fn transmit(&mut self, link: LinkId, frame: Arc<[u8]>) {
        let Some((_, h)) = self.links.get(&link) else { return };
        match h.frames.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::info!(?link, "send queue full: disconnecting the slow reader");
                self.slow_readers = self.slow_readers.saturating_add(1);
                let _ = h.kill.try_send(Some(ErrorCode::RateLimitExceeded));
                self.forget_link(link);
                let now = self.clock.now();
                let _ = self.feed(now, NodeInput::LinkClosed(link));
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn open_link(
        &mut self,
        link: LinkId,
        url: String,
        kind: LinkKind,
        node: NodeAddr,
        offer_binary: bool,
    ) {
        if self.stopping {
            let now = self.clock.now();
            let _ = self.feed(now, NodeInput::LinkFailed(link));
            return;
        }
        let (handle, queues) = link_channels(self.client.limits.send_queue_frames);
        self.links.insert(link, (kind, handle));
        self.outbound.insert(link);
        let ctx = Arc::clone(&self.client);
        let inputs = self.inputs.clone();
        self.client.rt.spawn(Box::pin(crate::outbound::run_outbound(
            ctx,
            link,
            crate::outbound::Target { url, node, offer_binary },
            queues,
            inputs,
        )));
    }

    pub(crate) async fn event(&mut self, e: Event) {
        match &e {
            Event::Error { code, .. } => {
                let n = self.errors_by_code.entry(*code).or_insert(0);
                *n = n.saturating_add(1);
            }
            Event::Response { request, payload, .. } => {
                if let Some(reply) = self.waiting.remove(request) {
                    let _ = reply.try_send(Ok(payload.clone()));
                    return;
                }
            }
            Event::RequestTimedOut { request, .. } => {
                if let Some(reply) = self.waiting.remove(request) {
                    let _ = reply.try_send(Err(ApiError::Timeout));
                    return;
                }
            }
            Event::Failed { id, reason, .. } => {
                if let Some(reply) = self.waiting.remove(id) {
                    let _ = reply.try_send(Err(ApiError::Failed(*reason)));
                }
            }
            _ => {}
        }
        if let Event::Delivered { id, .. } | Event::Failed { id, .. } = &e
            && let Some(waiter) = self.delivering.remove(id)
            && waiter.answer(&e)
        {
            return;
        }
        let handler = HandlerKey::of(&e).into_iter().flatten().find_map(|k| self.handlers.get(&k));
        if let Some(h) = handler {
            h(&e);
            return;
        }
        tracing::debug!(event = ?e, "event");
        let Some(tx) = &self.events else { return };
        // Content and failures are never dropped (the node task waits for the application:
        // backpressure): `TransportStats::failures` counts exactly the `Failed` events handed on.
        let kept = matches!(
            e,
            Event::Message { .. }
                | Event::Request { .. }
                | Event::Response { .. }
                | Event::Failed { .. }
        );
        match tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) if kept => {
                if tx.send(e).await.is_err() {
                    self.events = None;
                }
            }
            Err(TrySendError::Full(_)) => {
                self.events_dropped = self.events_dropped.saturating_add(1)
            }
            Err(TrySendError::Closed(_)) => self.events = None,
        }
    }

    fn forget_link(&mut self, link: LinkId) {
        self.links.remove(&link);
        self.outbound.remove(&link);
        self.up.remove(&link);
    }
}

/// What woke the node task. One lives on the stack per wake-up: boxing the input would cost an
/// allocation each time.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// An input.
    Input(Input),
    /// Every sender of the input queue is gone.
    End,
    /// The node's timer.
    Timer,
    /// The application emptied its event queue.
    Taken,
    /// The group of writes in flight was committed (or refused).
    Committed(Result<crate::store::CommitStats, crate::store::StoreFailure>),
}

/// At most this many inputs are handled before the node's outputs are carried out.
const INPUT_BATCH: usize = 64;

/// Runs the node task until shutdown or until every input sender is gone.
///
/// It takes the inputs already queued in batches of up to [`INPUT_BATCH`], then runs the
/// timers that are due and carries out the outputs once per batch. Each input is still handled
/// with its own current time, in queue order, and a shutdown ends the batch it is in.
pub(crate) async fn run(mut core: Core, inputs: Receiver<Input>) {
    // Outputs of the set-up (a poll to the relay) go out before the first input.
    core.drain().await;
    // Polled as a stream: the receiver keeps its listener across turns.
    let mut inputs = pin!(inputs);
    // One timer, made anew only when the node's deadline moves (each one registers with the
    // runtime's timer wheel or reactor).
    let rt = Arc::clone(&core.client.rt);
    let mut timer: Option<BoxSleep> = None;
    let mut armed: Option<Timestamp> = None;
    loop {
        let deadline = core.node.poll_timeout();
        if deadline != armed {
            timer = deadline.map(|t| rt.sleep_until(core.clock.instant_of(t)));
            armed = deadline;
        }
        let full = core.group_full();
        let next = poll_fn(|cx| {
            if let Poll::Ready(result) = core.poll_commit(cx) {
                return Poll::Ready(Step::Committed(result));
            }
            if core.poll_taken(cx).is_ready() {
                return Poll::Ready(Step::Taken);
            }
            // A full next group takes no more input until the one in flight is committed.
            if !full && let Poll::Ready(input) = inputs.as_mut().poll_next(cx) {
                return Poll::Ready(input.map_or(Step::End, Step::Input));
            }
            if let Some(t) = timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                timer = None;
                // Fired: the next turn arms it again for the node's next deadline.
                armed = None;
                return Poll::Ready(Step::Timer);
            }
            Poll::Pending
        })
        .await;
        let done = match next {
            Step::Committed(result) => {
                core.committed(result).await;
                if core.store_failed.is_some() {
                    break;
                }
                continue;
            }
            Step::Taken => {
                core.settle_if_taken();
                core.drain().await;
                if core.store_failed.is_some() {
                    break;
                }
                continue;
            }
            Step::Input(input) => handle_batch(input, &inputs, |input| core.handle(input)),
            Step::End => {
                core.flush_commits().await;
                break;
            }
            Step::Timer => None,
        };
        if done.is_none() {
            // Also when inputs never stop coming: the timers run at least once per batch.
            let now = core.clock.now();
            if core.node.poll_timeout().is_some_and(|t| t <= now) {
                core.node.set_app_backlog(core.events.as_ref().map_or(0, |tx| tx.len()));
                let _ = core.feed(now, NodeInput::Timeout);
            }
        }
        core.drain().await;
        if core.store_failed.is_some() {
            break;
        }
        if let Some(reply) = done {
            // What the shutdown queued (a `BYE` on every link) may wait for a commit.
            core.flush_commits().await;
            wait_for_closing(&mut core, inputs.as_mut(), &*rt).await;
            // A caller of `shutdown` may start the node again at once: its store is released.
            close_store(&mut core).await;
            let _ = reply.try_send(());
            break;
        }
    }
    // The store first: a caller that hears the node stopped finds its file released.
    close_store(&mut core).await;
    refuse_queued(&*inputs);
}

/// Waits for the store's writer to finish and releases its file.
async fn close_store(core: &mut Core) {
    if let Some(store) = core.store.take()
        && let Err(e) = store.close().await
    {
        tracing::error!(error = %e, "closing the store failed");
    }
}

/// Closes the node task's queue and drops what is still in it. An input carries the sender its
/// answer goes back on (an HTTP call, an upgrade, a token challenge, an API call); left in the
/// queue, kept alive by every sender of the queue (the handle, the endpoints, the links), it
/// would never be answered nor dropped, and its caller would wait for ever: a request that came
/// in just before a shutdown held its connection open, and an application's server waiting for
/// its connections to end never stopped. Dropped, each caller sees the node stopped (503,
/// [`ApiError::Stopped`]); once closed, the queue takes nothing more.
fn refuse_queued<T>(queue: &Receiver<T>) {
    queue.close();
    while queue.try_recv().is_ok() {}
}

/// After a shutdown: waits until the links it closed have written what it queued on them (its
/// `BYE` after everything before it) and ended, at most [`CLOSE_BOUND`], so that the caller of
/// `Handle::shutdown` may exit its process at once without losing those frames. Other inputs
/// are dropped: the node has stopped (their callers hear `Stopped`).
async fn wait_for_closing(
    core: &mut Core,
    mut inputs: std::pin::Pin<&mut Receiver<Input>>,
    rt: &dyn crate::runtime::Runtime,
) {
    let mut bound = rt.sleep_until(std::time::Instant::now() + CLOSE_BOUND);
    while !core.closing.is_empty() {
        let next = poll_fn(|cx| {
            if let Poll::Ready(input) = inputs.as_mut().poll_next(cx) {
                return Poll::Ready(input);
            }
            bound.as_mut().poll(cx).map(|_| None)
        })
        .await;
        match next {
            Some(Input::Closed { link } | Input::LinkFailed { link }) => {
                core.closing.remove(&link);
            }
            Some(_) => {}
            None => break,
        }
    }
}

/// Handles `first` and then the inputs already queued behind it, at most [`INPUT_BATCH`] in all,
/// and stops early at the first `handle` that returns `Some` (a shutdown): what comes after it
/// stays queued. Returns that `Some`.
fn handle_batch<T, R>(
    first: T,
    queue: &Receiver<T>,
    mut handle: impl FnMut(T) -> Option<R>,
) -> Option<R> {
    let mut done = handle(first);
    let mut handled = 1;
    while done.is_none() && handled < INPUT_BATCH {
        let Ok(next) = queue.try_recv() else { break };
        done = handle(next);
        handled += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_cap() {
        let (tx, rx) = async_channel::unbounded();
        for i in 1..100 {
            tx.try_send(i).unwrap();
        }
        let mut seen = Vec::new();
        let done: Option<()> = handle_batch(0, &rx, |i| {
            seen.push(i);
            None
        });
        assert!(done.is_none());
        assert_eq!(seen, (0..INPUT_BATCH).collect::<Vec<_>>());
        assert_eq!(rx.try_recv().ok(), Some(INPUT_BATCH), "the rest waits, in order");

        let mut seen = Vec::new();
        let done: Option<()> = handle_batch(7, &rx, |i| {
            seen.push(i);
            None
        });
        assert!(done.is_none());
        assert_eq!(seen.len(), 100 - INPUT_BATCH, "an empty queue ends the batch");
    }

    #[test]
    fn a_shutdown_ends_its_batch_and_leaves_the_rest_queued() {
        let (tx, rx) = async_channel::unbounded();
        for i in 1..10 {
            tx.try_send(i).unwrap();
        }
        let mut seen = Vec::new();
        let done = handle_batch(0, &rx, |i| {
            seen.push(i);
            (i == 3).then_some("stop")
        });
        assert_eq!(done, Some("stop"));
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(rx.try_recv().ok(), Some(4));
    }

    #[test]
    fn what_is_queued_behind_a_shutdown_is_refused_not_left_waiting() {
        let (tx, rx) = async_channel::unbounded::<async_channel::Sender<()>>();
        let (reply, answer) = async_channel::bounded(1);
        tx.try_send(reply).unwrap();
        refuse_queued(&rx);
        // The caller's answer channel is closed: it sees the node stopped at once.
        assert!(answer.is_closed());
        let (later, _) = async_channel::bounded(1);
        assert!(tx.try_send(later).is_err(), "the closed queue takes nothing more");
    }
}
