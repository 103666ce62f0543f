//! The application's handle: blocking calls that hand commands to the client's thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peerlink_core::identity::{Identity, TrustStore};
use peerlink_core::ids::{EntityId, MessageId};
use peerlink_core::node::{Event, Node, SendError, SendOptions, TransportStats};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::auth::Tokens;
use crate::clock;
use crate::config::ClientConfig;
use crate::driver::{Command, Driver, Inbox, Input, Reply, RequestFailure, Shared};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] peerlink_core::error::UsageError),
    /// TLS could not be set up (the CA file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The operating system refused a thread or its randomness.
    #[error("system: {0}")]
    System(String),
    /// The core refused the message or command.
    #[error(transparent)]
    Send(#[from] SendError),
    /// A request got no answer in time.
    #[error("the request timed out")]
    TimedOut,
    /// The client has stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// A peerlink client for synchronous programs. Every call blocks at most until the client's
/// thread has taken it (queues are bounded: see [`QueueSettings`](crate::QueueSettings)).
/// Dropping the client shuts it down.
pub struct Client {
    id: EntityId,
    inputs: SyncSender<Input>,
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a client for `identity`, trusting the peers in `trust`.
    pub fn start(
        config: ClientConfig,
        identity: Identity,
        trust: TrustStore,
    ) -> Result<Self, ClientError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ClientError::System(e.to_string()))?;
        let id = identity.id().clone();
        let auth_identity = Identity::from_secret_bytes(id.clone(), &identity.secret_bytes());
        let mut node =
            Node::new(config.node.clone(), identity, trust, ChaCha20Rng::from_seed(seed))?;
        let now = clock::now();
        for (peer, addr) in &config.routes {
            node.add_route(peer.clone(), addr.clone());
        }
        if let Some(relay) = &config.relay {
            node.set_default_route(now, relay.clone());
        }
        let ca = config.tls_ca_file.as_deref().map(crate::tls::ca_certificates).transpose()?;
        let tls = crate::tls::client_config(ca.as_deref())?;
        let timeout = config.node.poll_wait.saturating_add(config.http.timeout_margin);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(crate::tls::ureq_config(ca.as_deref()))
            .build()
            .into();
        let (inputs, receiver) = sync_channel(config.queues.inputs.max(1));
        let shared = Arc::new(Shared {
            config,
            agent,
            tokens: Tokens::new(auth_identity),
            http_in_flight: AtomicUsize::new(0),
            tls,
        });
        let inbox = Arc::new(Inbox::default());
        let driver = Driver::new(node, shared, inputs.clone(), Arc::clone(&inbox));
        let thread = std::thread::Builder::new()
            .name("peerlink-client".into())
            .spawn(move || driver.run(&receiver))
            .map_err(|e| ClientError::System(e.to_string()))?;
        Ok(Self { id, inputs, inbox, thread: Some(thread) })
    }

    /// This client's entity id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Sends `payload` to `to` as a `PEER_MESSAGE`; `prefer_websocket` overrides the transport
    /// preference for this message (`None`: the configured preference). Returns the message id
    /// once accepted into the outbox; [`Event::Delivered`] or [`Event::Failed`] follows.
    pub fn send(
        &self,
        to: &EntityId,
        payload: Vec<u8>,
        prefer_websocket: Option<bool>,
    ) -> Result<MessageId, ClientError> {
        let options = SendOptions { prefer_websocket };
        Ok(self.call(|r| Command::Send(to.clone(), payload, options, r))??)
    }

    /// Opens the WebSocket link toward `peer` and starts the handshake now.
    pub fn connect(&self, peer: &EntityId) -> Result<(), ClientError> {
        Ok(self.call(|r| Command::Connect(peer.clone(), r))??)
    }

    /// Closes the WebSocket link toward `peer` and stops reconnecting it; traffic moves to
    /// HTTP where the preference allows.
    pub fn close(&self, peer: &EntityId) -> Result<(), ClientError> {
        self.inputs
            .send(Input::Command(Command::Disconnect(peer.clone())))
            .map_err(|_| ClientError::Stopped)
    }

    /// Sends a `TASK_REQUEST` and waits for its `TASK_RESPONSE`, at most `timeout`.
    pub fn request(
        &self,
        to: &EntityId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let (reply, answer) = sync_channel(1);
        self.inputs
            .send(Input::Command(Command::Request(to.clone(), payload, timeout, reply)))
            .map_err(|_| ClientError::Stopped)?;
        match answer.recv() {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(RequestFailure::Refused(e))) => Err(e.into()),
            Ok(Err(RequestFailure::TimedOut)) => Err(ClientError::TimedOut),
            Err(_) => Err(ClientError::Stopped),
        }
    }

    /// Answers a request received as [`Event::Request`].
    pub fn respond(
        &self,
        to: &EntityId,
        request: &MessageId,
        payload: Vec<u8>,
    ) -> Result<MessageId, ClientError> {
        Ok(self.call(|r| Command::Respond(to.clone(), request.clone(), payload, r))??)
    }

    /// Subscribes to `topic` at the node `hop`; publications arrive as [`Event::Topic`].
    pub fn subscribe(&self, hop: &EntityId, topic: &str) -> Result<(), ClientError> {
        Ok(self.call(|r| Command::Subscribe(hop.clone(), topic.to_owned(), true, r))??)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, hop: &EntityId, topic: &str) -> Result<(), ClientError> {
        Ok(self.call(|r| Command::Subscribe(hop.clone(), topic.to_owned(), false, r))??)
    }

    /// Publishes `data` on `topic` through the node `hop`.
    pub fn publish(
        &self,
        hop: &EntityId,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<(), ClientError> {
        Ok(self.call(|r| Command::Publish(hop.clone(), topic.to_owned(), data, r))??)
    }

    /// The transport counters (messages and bytes per transport, fallbacks, resumes, …).
    pub fn transport_stats(&self) -> Result<TransportStats, ClientError> {
        self.call(Command::Stats)
    }

    /// Whether a session with `peer` is established.
    pub fn has_session(&self, peer: &EntityId) -> Result<bool, ClientError> {
        self.call(|r| Command::HasSession(peer.clone(), r))
    }

    /// The next event, waiting at most `timeout`; `None` if none came (or the client stopped).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now().checked_add(timeout);
        let mut queue = self.inbox.queue.lock().ok()?;
        loop {
            if let Some(event) = queue.pop_front() {
                return Some(event);
            }
            if self.inbox.stopped.load(Ordering::Acquire) {
                return None;
            }
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return None;
            }
            queue = self.inbox.ready.wait_timeout(queue, left).ok()?.0;
        }
    }

    /// Closes every link and stops the client's thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.inputs.send(Input::Command(Command::Shutdown));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, answer) = sync_channel(1);
        self.inputs.send(Input::Command(command(reply))).map_err(|_| ClientError::Stopped)?;
        answer.recv().map_err(|_| ClientError::Stopped)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}
