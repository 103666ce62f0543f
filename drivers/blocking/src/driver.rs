//! The client's thread: it owns the core [`Node`], feeds it every input with the current time,
//! carries out its outputs, and sleeps until its next deadline. It holds no protocol logic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use peerlink_core::ids::{EntityId, MessageId};
use peerlink_core::node::{
    Event, Input as NodeInput, LinkId, Node, Output, RequestId, SendError, SendOptions,
    TransportStats,
};
use peerlink_core::time::Timestamp;

use crate::auth::Tokens;
use crate::clock;
use crate::config::ClientConfig;
use crate::link::{self, LinkHandle};

/// What every link and HTTP thread shares.
pub struct Shared {
    /// The configuration.
    pub config: ClientConfig,
    /// The HTTP agent (connection pool).
    pub agent: ureq::Agent,
    /// Bearer tokens per node.
    pub tokens: Tokens,
    /// HTTP exchanges in flight.
    pub http_in_flight: AtomicUsize,
    /// TLS for `wss://` links.
    pub tls: Arc<rustls::ClientConfig>,
}

/// A reply channel for one command.
pub type Reply<T> = SyncSender<T>;

/// An application command.
pub enum Command {
    /// `Node::send`.
    Send(EntityId, Vec<u8>, SendOptions, Reply<Result<MessageId, SendError>>),
    /// `Node::connect`.
    Connect(EntityId, Reply<Result<(), SendError>>),
    /// `Node::disconnect`.
    Disconnect(EntityId),
    /// `Node::request`; the answer (or the timeout) goes to the reply channel.
    Request(EntityId, Vec<u8>, Duration, Reply<Result<Vec<u8>, RequestFailure>>),
    /// `Node::respond`.
    Respond(EntityId, MessageId, Vec<u8>, Reply<Result<MessageId, SendError>>),
    /// `Node::subscribe` or `Node::unsubscribe` (when the flag is false).
    Subscribe(EntityId, String, bool, Reply<Result<(), SendError>>),
    /// `Node::publish_via`.
    Publish(EntityId, String, serde_json::Value, Reply<Result<(), SendError>>),
    /// A copy of the transport counters.
    Stats(Reply<TransportStats>),
    /// Whether a session with the peer is established.
    HasSession(EntityId, Reply<bool>),
    /// Close every link and stop.
    Shutdown,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// The core refused it.
    Refused(SendError),
    /// No answer before the deadline.
    TimedOut,
}

/// Everything the client's thread waits for.
pub enum Input {
    /// From the application.
    Command(Command),
    /// A link's thread connected.
    LinkUp(LinkId),
    /// A link's thread could not connect.
    LinkFailed(LinkId),
    /// A link ended.
    LinkClosed(LinkId),
    /// A text message arrived on a link.
    Frame(LinkId, Vec<u8>),
    /// An HTTP exchange was answered.
    HttpDone(RequestId, u16, Vec<u8>),
    /// An HTTP exchange failed without an answer.
    HttpFailed(RequestId),
}

/// Events for the application, with a condition variable to wait on.
#[derive(Default)]
pub struct Inbox {
    /// The events, oldest first.
    pub queue: Mutex<VecDeque<Event>>,
    /// Signalled when an event is added or the client stops.
    pub ready: Condvar,
    /// Set when the client's thread has stopped.
    pub stopped: AtomicBool,
}

/// The longest the thread sleeps with nothing scheduled.
const IDLE: Duration = Duration::from_secs(1);

/// The client's thread.
pub struct Driver {
    node: Node,
    shared: Arc<Shared>,
    inputs: SyncSender<Input>,
    links: BTreeMap<LinkId, LinkHandle>,
    requests: BTreeMap<MessageId, Reply<Result<Vec<u8>, RequestFailure>>>,
    inbox: Arc<Inbox>,
}

impl Driver {
    /// A driver for `node`.
    pub fn new(
        node: Node,
        shared: Arc<Shared>,
        inputs: SyncSender<Input>,
        inbox: Arc<Inbox>,
    ) -> Self {
        Self { node, shared, inputs, links: BTreeMap::new(), requests: BTreeMap::new(), inbox }
    }

    /// Runs until `Shutdown` or until every sender is gone.
    pub fn run(mut self, receiver: &Receiver<Input>) {
        self.drain();
        loop {
            let now = clock::now();
            let wait = self
                .node
                .poll_timeout()
                .map_or(IDLE, |t| t.saturating_duration_since(now).min(IDLE));
            match receiver.recv_timeout(wait) {
                Ok(Input::Command(Command::Shutdown)) | Err(RecvTimeoutError::Disconnected) => {
                    break;
                }
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = clock::now();
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.feed(now, NodeInput::Timeout);
            }
            self.drain();
        }
        for link in self.links.values() {
            link.stop.store(true, Ordering::Relaxed);
        }
        self.inbox.stopped.store(true, Ordering::Release);
        self.inbox.ready.notify_all();
    }

    /// Feeds the node one of its own inputs (this client accepts no links and serves no HTTP,
    /// so none of them gives anything back).
    fn feed(&mut self, now: Timestamp, input: NodeInput<'_>) {
        let _ = self.node.handle_input(now, input);
    }

    fn handle(&mut self, input: Input) {
        let now = clock::now();
        match input {
            Input::LinkUp(link) => self.feed(now, NodeInput::LinkUp(link)),
            Input::LinkFailed(link) => {
                self.links.remove(&link);
                self.feed(now, NodeInput::LinkFailed(link));
            }
            Input::LinkClosed(link) => {
                self.links.remove(&link);
                self.feed(now, NodeInput::LinkClosed(link));
            }
            Input::Frame(link, frame) => self.feed(now, NodeInput::Frame { link, frame: &frame }),
            Input::HttpDone(request, status, body) => {
                self.feed(now, NodeInput::HttpResponse { request, status, body: &body });
            }
            Input::HttpFailed(request) => self.feed(now, NodeInput::HttpFailed(request)),
            Input::Command(command) => self.command(now, command),
        }
    }

    fn command(&mut self, now: Timestamp, command: Command) {
        let node = &mut self.node;
        // A caller that stopped waiting is not an error: replies are best effort.
        match command {
            Command::Send(to, payload, options, reply) => {
                let _ = reply.try_send(node.send(now, &to, payload, options));
            }
            Command::Connect(peer, reply) => {
                let _ = reply.try_send(node.connect(now, &peer));
            }
            Command::Disconnect(peer) => node.disconnect(now, &peer),
            Command::Request(peer, payload, timeout, reply) => {
                match node.request(now, &peer, payload, timeout) {
                    Ok(id) => {
                        self.requests.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(RequestFailure::Refused(e)));
                    }
                }
            }
            Command::Respond(peer, id, payload, reply) => {
                let _ = reply.try_send(node.respond(now, &peer, &id, payload));
            }
            Command::Subscribe(hop, topic, on, reply) => {
                let r = if on {
                    node.subscribe(now, &hop, &topic)
                } else {
                    node.unsubscribe(now, &hop, &topic)
                };
                let _ = reply.try_send(r);
            }
            Command::Publish(hop, topic, data, reply) => {
                let _ = reply.try_send(node.publish_via(now, &hop, &topic, data));
            }
            Command::Stats(reply) => {
                let _ = reply.try_send(node.stats().clone());
            }
            Command::HasSession(peer, reply) => {
                let _ = reply.try_send(node.has_session(&peer));
            }
            Command::Shutdown => {}
        }
    }

    /// Carries out every output the node has.
    fn drain(&mut self) {
        let mut events = Vec::new();
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Transmit { link, frame } => self.transmit(link, frame),
                Output::OpenLink { link, url, node, .. } => {
                    let inputs = self.inputs.clone();
                    match link::spawn(link, url, node, Arc::clone(&self.shared), inputs) {
                        Some(handle) => {
                            self.links.insert(link, handle);
                        }
                        None => self.feed(clock::now(), NodeInput::LinkFailed(link)),
                    }
                }
                Output::CloseLink { link, .. } => {
                    if let Some(handle) = self.links.remove(&link) {
                        handle.stop.store(true, Ordering::Relaxed);
                    }
                }
                Output::HttpRequest { request, method, url, node, body } => {
                    let inputs = self.inputs.clone();
                    if !crate::http::spawn(request, method, url, node, body, &self.shared, inputs) {
                        self.feed(clock::now(), NodeInput::HttpFailed(request));
                    }
                }
                // This client serves no HTTP.
                Output::HttpRespond { .. } => {}
                Output::Event(event) => {
                    if let Some(event) = self.answer_request(event) {
                        events.push(event);
                    }
                }
            }
        }
        let held = match self.inbox.queue.lock() {
            Ok(mut queue) => {
                queue.extend(events);
                queue.len()
            }
            Err(_) => 0,
        };
        self.inbox.ready.notify_all();
        self.node.set_app_backlog(held);
    }

    /// Routes the answer to a blocking `request` to its caller; other events go on.
    fn answer_request(&mut self, event: Event) -> Option<Event> {
        match event {
            Event::Response { request, payload, .. } if self.requests.contains_key(&request) => {
                if let Some(reply) = self.requests.remove(&request) {
                    let _ = reply.try_send(Ok(payload));
                }
                None
            }
            Event::RequestTimedOut { request, .. } if self.requests.contains_key(&request) => {
                if let Some(reply) = self.requests.remove(&request) {
                    let _ = reply.try_send(Err(RequestFailure::TimedOut));
                }
                None
            }
            other => Some(other),
        }
    }

    /// Queues a frame on its link; a link whose queue is full is closed (a slow reader).
    fn transmit(&mut self, link: LinkId, frame: Arc<[u8]>) {
        let Some(handle) = self.links.get(&link) else { return };
        match handle.frames.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                handle.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}
