//! The node task: the one task that owns the [`Node`]. Everything else talks to it through one
//! bounded input queue; it feeds each input to the node with the current time, drains
//! `poll_output()` and carries out every output, then sleeps until the next input or
//! `poll_timeout()`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender, TrySendError};
use async_tungstenite::tungstenite::Bytes;
use futures_lite::Stream as _;
use peerlink_core::auth::{AuthError, Authority, Bearer, Challenge, ChallengeAnswer};
use peerlink_core::node::{
    Handled, HttpCall, Input as NodeInput, LinkId, LinkKind, NodeAddr, Output, RequestId,
};
use peerlink_core::{EntityId, ErrorCode, Event, MessageId, MessageType, Node, Timestamp};
use rand_chacha::ChaCha20Rng;

use crate::runtime::BoxSleep;

use crate::api::{ApiError, Snapshot};
use crate::client::{self, ClientCtx};
use crate::link::{LinkHandle, link_channels};

/// A one-shot reply channel (a bounded channel of one).
pub(crate) type Reply<T> = Sender<T>;

/// Where the answer to an inbound HTTP call goes: its status and body.
pub(crate) type HttpReply = Reply<(u16, Vec<u8>)>;

/// A command run on the node task with the node and the current time.
pub(crate) type Call = Box<dyn FnOnce(&mut Core, Timestamp) + Send>;

/// What the node task is told.
pub(crate) enum Input {
    /// An authenticated inbound WebSocket wants to become a link.
    Accept {
        kind: LinkKind,
        /// The token's holder: the entity and the key it proved (spec §2.3).
        who: Bearer,
        handle: LinkHandle,
        reply: Reply<Result<LinkId, ErrorCode>>,
    },
    /// A text frame arrived on a link (the bytes tungstenite read it into, not a copy).
    Frame { link: LinkId, data: Bytes },
    /// A link's task ended.
    Closed { link: LinkId },
    /// An outbound link connected.
    LinkUp { link: LinkId },
    /// An outbound link could not be opened.
    LinkFailed { link: LinkId },
    /// An authenticated HTTP call to `/v1/messages`, bound to the token's holder (spec §2.3).
    Http { who: Bearer, call: HttpCall, reply: Reply<(u16, Vec<u8>)> },
    /// The outcome of an HTTP request the node asked for (`None`: no answer).
    HttpResult { request: RequestId, result: Option<(u16, Vec<u8>)> },
    /// `GET /auth/token`.
    Challenge { entity: EntityId, pubkey: String, reply: Reply<Result<Challenge, AuthError>> },
    /// `POST /auth/verify`: the pending challenge, taken out; the connection's task checks the
    /// answer's signature and mints the token, off the node task.
    Verify { entity: EntityId, challenge: String, reply: Reply<Result<ChallengeAnswer, AuthError>> },
    /// An API command.
    Call(Call),
    /// Graceful shutdown: `BYE` and close every link, answer held HTTP calls, stop.
    Shutdown { reply: Reply<()> },
}

impl Input {
    /// What this input is, with its ids and sizes but no content, for trace logs (`None` for
    /// the node's own inputs, which describe themselves).
    fn describe(&self) -> Option<String> {
        Some(match self {
            Input::Challenge { entity, .. } => format!("challenge for {entity}"),
            Input::Verify { entity, .. } => format!("verify for {entity}"),
            Input::Call(_) => "API call".to_owned(),
            Input::Shutdown { .. } => "shutdown".to_owned(),
            _ => return None,
        })
    }
}

/// Milliseconds since the Unix epoch for the core: the later of the wall clock and a monotonic
/// clock anchored at the wall clock when the node started, and never less than a reading already
/// given (`peerlink_core::time`): deadlines never go backwards. The wall clock counts where the
/// monotonic one stops: a machine's suspension (Linux's monotonic clock does not advance while
/// suspended). Without it, a node waking from a 12-minute sleep would stamp its envelopes
/// 12 minutes late (refused by its peers as stale) and let a message outlive its send timeout
/// by as much, which spec §15.5 relies on not happening.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    start: Instant,
    start_ms: u64,
    /// The latest reading given, shared by every copy.
    last: Arc<AtomicU64>,
}

/// Milliseconds since the Unix epoch on the wall clock (0 before it).
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Clock {
    pub fn new() -> Self {
        let start_ms = unix_millis();
        Self { start: Instant::now(), start_ms, last: Arc::new(AtomicU64::new(start_ms)) }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let monotonic = self.start_ms.saturating_add(elapsed);
        peerlink_core::time::clock_reading(monotonic, unix_millis(), &self.last)
    }

    /// The instant of a node deadline, measured from now (far future if unrepresentable).
    pub fn instant_of(&self, t: Timestamp) -> Instant {
        let now = Instant::now();
        let after =
            Duration::from_millis(t.as_unix_millis().saturating_sub(self.now().as_unix_millis()));
        now.checked_add(after).unwrap_or_else(|| now + Duration::from_secs(3600))
    }
}

/// A handler the application registered for one message type; called on the node task, so it
/// must not block (spawn for real work).
pub(crate) type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// Everything the node task owns.
pub(crate) struct Core {
    pub node: Node,
    pub authority: Authority,
    pub rng: ChaCha20Rng,
    pub clock: Clock,
    pub links: BTreeMap<LinkId, (LinkKind, LinkHandle)>,
    pub outbound: BTreeSet<LinkId>,
    /// HTTP calls the node has yet to answer: the caller and where its answer goes.
    pub pending_http: BTreeMap<RequestId, (EntityId, HttpReply)>,
    pub waiting: BTreeMap<MessageId, Reply<Result<Vec<u8>, ApiError>>>,
    pub events: Option<Sender<Event>>,
    pub handlers: BTreeMap<MessageType, Handler>,
    pub client: Arc<ClientCtx>,
    pub inputs: Sender<Input>,
    pub errors_by_code: BTreeMap<ErrorCode, u64>,
    pub slow_readers: u64,
    pub events_dropped: u64,
    pub stopping: bool,
}

impl Core {
    /// Feeds the node one of its own inputs now.
    fn feed(&mut self, now: Timestamp, input: NodeInput<'_>) -> Result<Handled, ErrorCode> {
        tracing::trace!(input = %input.describe(), "node input");
        self.node.handle_input(now, input)
    }

    fn handle(&mut self, input: Input) -> Option<Reply<()>> {
        let now = self.clock.now();
        // Events the application has not taken yet count against the node's `max_events`:
        // a slow reader makes the node refuse data frames (their senders re-send later).
        self.node.set_app_backlog(self.events.as_ref().map_or(0, |tx| tx.len()));
        if let Some(what) = input.describe() {
            tracing::trace!(input = %what, "node input");
        }
        match input {
            Input::Accept { kind, who, handle, reply } => {
                let r = match self.feed(now, NodeInput::AcceptLink { kind, who }) {
                    Ok(Handled::Link(link)) => {
                        self.links.insert(link, (kind, handle));
                        Ok(link)
                    }
                    Ok(_) => Err(ErrorCode::InternalError),
                    Err(code) => Err(code),
                };
                let _ = reply.try_send(r);
            }
            Input::Frame { link, data } => {
                let _ = self.feed(now, NodeInput::Frame { link, frame: &data });
            }
            Input::Closed { link } => {
                self.forget_link(link);
                let _ = self.feed(now, NodeInput::LinkClosed(link));
            }
            Input::LinkUp { link } => {
                let _ = self.feed(now, NodeInput::LinkUp(link));
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
            Input::HttpResult { request, result: Some((status, body)) } => {
                let _ = self.feed(now, NodeInput::HttpResponse { request, status, body: &body });
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

    /// Carries out every output the node has.
    async fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            tracing::trace!(output = %out.describe(), "node output");
            match out {
                Output::Transmit { link, frame } => self.transmit(link, frame),
                Output::OpenLink { link, url, kind, node } => self.open_link(link, url, kind, node),
                Output::CloseLink { link, reason } => {
                    if let Some((_, h)) = self.links.get(&link) {
                        let _ = h.kill.try_send(reason);
                    }
                    self.forget_link(link);
                }
                Output::HttpRequest { request, method, url, node, body } => {
                    if self.stopping {
                        continue;
                    }
                    let ctx = Arc::clone(&self.client);
                    let inputs = self.inputs.clone();
                    let poll_wait = self.node.config().poll_wait;
                    self.client.rt.spawn(Box::pin(async move {
                        let result =
                            client::node_request(&ctx, &node, method, &url, body, poll_wait).await;
                        let _ = inputs.send(Input::HttpResult { request, result }).await;
                    }));
                }
                Output::HttpRespond { request, status, body } => {
                    if let Some((caller, reply)) = self.pending_http.remove(&request)
                        && let Err(TrySendError::Closed((_, body))) = reply.try_send((status, body))
                    {
                        // The caller's connection is gone (a stopped client's long poll): what
                        // the answer carried goes back to its mailbox (spec §21).
                        tracing::debug!(%caller, ?request, "HTTP caller gone; answer kept");
                        let now = self.clock.now();
                        let _ =
                            self.feed(now, NodeInput::HttpAnswerLost { to: caller, body: &body });
                    }
                }
                Output::Event(e) => self.event(e).await,
            }
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

    fn open_link(&mut self, link: LinkId, url: String, kind: LinkKind, node: NodeAddr) {
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
        self.client.rt.spawn(Box::pin(client::run_outbound(ctx, link, url, node, queues, inputs)));
    }

    async fn event(&mut self, e: Event) {
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
        let kind = match &e {
            Event::Message { kind, .. } => Some(*kind),
            Event::Request { .. } => Some(MessageType::TaskRequest),
            _ => None,
        };
        if let Some(h) = kind.and_then(|k| self.handlers.get(&k)) {
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
    }

    /// Entities connected on `/ws/v1/peers` right now, in entity-id order.
    pub fn connected_peers(&self) -> Vec<String> {
        self.node.connected_entities().map(|e| e.as_str().to_owned()).collect()
    }

    /// Counters and gauges for `/metrics` and the API.
    pub fn snapshot(&self) -> Snapshot {
        let count = |kind: LinkKind| {
            self.links
                .iter()
                .filter(|(id, (k, _))| *k == kind && !self.outbound.contains(id))
                .count()
        };
        Snapshot {
            stats: self.node.stats().clone(),
            inbound_peer_links: count(LinkKind::Peers),
            inbound_event_links: count(LinkKind::Events),
            outbound_links: self.outbound.len(),
            sessions: self.node.session_count(),
            mailbox_messages: self.node.mailbox_len(),
            mailbox_bytes: self.node.mailbox_bytes(),
            held_http_calls: self.pending_http.len(),
            errors_by_code: self
                .errors_by_code
                .iter()
                .map(|(c, n)| (c.as_str().to_owned(), *n))
                .collect(),
            slow_readers_disconnected: self.slow_readers,
            events_dropped: self.events_dropped,
        }
    }
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
        let next = poll_fn(|cx| {
            if let Poll::Ready(input) = inputs.as_mut().poll_next(cx) {
                return Poll::Ready(Some(input));
            }
            if let Some(t) = timer.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                timer = None;
                // Fired: the next turn arms it again for the node's next deadline.
                armed = None;
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let done = match next {
            Some(Some(input)) => handle_batch(input, &inputs, |input| core.handle(input)),
            Some(None) => break,
            None => None,
        };
        if done.is_none() {
            // Also when inputs never stop coming: the timers run at least once per batch.
            let now = core.clock.now();
            if core.node.poll_timeout().is_some_and(|t| t <= now) {
                let _ = core.feed(now, NodeInput::Timeout);
            }
        }
        core.drain().await;
        if let Some(reply) = done {
            let _ = reply.try_send(());
            break;
        }
    }
    refuse_queued(&*inputs);
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
    fn a_deadline_maps_to_an_instant_measured_from_now() {
        let clock = Clock::new();
        let before = Instant::now();
        let at = clock.instant_of(clock.now().saturating_add(Duration::from_secs(5)));
        let after = Instant::now();
        assert!(
            at >= before + Duration::from_millis(4_900) && at <= after + Duration::from_secs(5)
        );
        assert!(
            clock.instant_of(Timestamp::from_unix_millis(0)) <= Instant::now(),
            "a past one: now"
        );
    }

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
        let (tx, rx) = async_channel::unbounded::<Sender<()>>();
        let (reply, answer) = async_channel::bounded(1);
        tx.try_send(reply).unwrap();
        refuse_queued(&rx);
        // The caller's answer channel is closed: it sees the node stopped at once.
        assert!(answer.is_closed());
        let (later, _) = async_channel::bounded(1);
        assert!(tx.try_send(later).is_err(), "the closed queue takes nothing more");
    }
}
