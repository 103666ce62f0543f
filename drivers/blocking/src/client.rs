//! [`Client`]: the host's [`Handle`] behind calls that block.

use std::time::Duration;

use peerlink_core::node::{SendOptions, TransportStats};
use peerlink_core::{AppType, EntityId, Event, Identity, MessageId, MessageType};
use peerlink_host::{ApiError, Config, Events, Handle, Snapshot, TransportResult};

/// A peerlink client for synchronous programs. Every call blocks until the node has taken it
/// (its input queue is bounded: [`DriverLimits::input_queue`](crate::DriverLimits)); a
/// [`request`](Self::request) blocks until its answer or its timeout. Dropping the client shuts
/// it down.
pub struct Client {
    handle: Handle,
    events: Events,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", self.handle.id()).finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a client for `identity`: its node task on smol's background threads, reaching
    /// the relay and peers of `config`. Links open when traffic needs them, or at
    /// [`connect`](Self::connect).
    pub fn start(config: Config, identity: Identity) -> Result<Self, ApiError> {
        let rt = peerlink_host::smol_runtime::rt();
        smol::block_on(async {
            // The node's endpoints are not served: a client is reached over the links it opens.
            let (handle, _endpoints) = peerlink_host::Peerlink::mount(rt, config, identity).await?;
            let events = handle.incoming().await?;
            Ok(Self { handle, events })
        })
    }

    /// This client's entity id.
    pub fn id(&self) -> &EntityId {
        self.handle.id()
    }

    /// The async handle of the same node, for code that runs inside an executor.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends `payload` to `to` as a `PEER_MESSAGE`; `prefer_websocket` overrides the transport
    /// preference for this message (`None`: the configured preference). Returns the message id
    /// once accepted into the outbox; [`Event::Delivered`] or [`Event::Failed`] follows.
    pub fn send(
        &self,
        to: &EntityId,
        payload: Vec<u8>,
        prefer_websocket: Option<bool>,
    ) -> Result<MessageId, ApiError> {
        self.send_message(
            to,
            MessageType::PeerMessage,
            payload,
            SendOptions { prefer_websocket, ..SendOptions::default() },
        )
    }

    /// Sends a `PEER_MESSAGE` or `STATUS` (seed 000's `send_message`); see
    /// [`Handle::send_message`].
    pub fn send_message(
        &self,
        to: &EntityId,
        message_type: MessageType,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, ApiError> {
        smol::block_on(self.handle.send_message(to, message_type, payload, options))
    }

    /// Sends a `PEER_MESSAGE` and blocks until it is delivered (handed to the recipient's
    /// application) or given up; see [`Handle::send_confirmed`]. The result says which
    /// transport carried it.
    pub fn send_confirmed(
        &self,
        to: &EntityId,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<TransportResult, ApiError> {
        smol::block_on(self.handle.send_confirmed(to, payload, options))
    }

    /// Sends a `BROADCAST` to every peer with a session; returns the ids accepted.
    pub fn broadcast(&self, payload: Vec<u8>) -> Result<Vec<(EntityId, MessageId)>, ApiError> {
        smol::block_on(self.handle.broadcast(payload))
    }

    /// [`broadcast`](Self::broadcast) with options for every copy (an application type).
    pub fn broadcast_with(
        &self,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<Vec<(EntityId, MessageId)>, ApiError> {
        smol::block_on(self.handle.broadcast_with(payload, options))
    }

    /// Opens the WebSocket link toward `peer` (its relay, or the peer's own node) and starts
    /// the handshake now.
    pub fn connect(&self, peer: &EntityId) -> Result<(), ApiError> {
        smol::block_on(self.handle.init_websocket_connection(peer))
    }

    /// Closes the WebSocket link toward `peer` and stops reconnecting it; traffic moves to
    /// HTTP where the preference allows.
    pub fn close(&self, peer: &EntityId) -> Result<(), ApiError> {
        smol::block_on(self.handle.close_websocket_connection(peer))
    }

    /// Whether a WebSocket link carries frames for `peer` now (seed 000's
    /// `is_websocket_connected`).
    pub fn is_websocket_connected(&self, peer: &EntityId) -> Result<bool, ApiError> {
        smol::block_on(self.handle.is_websocket_connected(peer))
    }

    /// Sends a `TASK_REQUEST` and waits for its `TASK_RESPONSE`, at most `timeout`
    /// ([`ApiError::Timeout`] past it).
    pub fn request(
        &self,
        to: &EntityId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        smol::block_on(self.handle.request(to, payload, timeout))
    }

    /// Answers a request received as [`Event::Request`].
    pub fn respond(
        &self,
        to: &EntityId,
        request: &MessageId,
        payload: Vec<u8>,
    ) -> Result<MessageId, ApiError> {
        smol::block_on(self.handle.respond(to, request, payload))
    }

    /// Subscribes to `topic` at the node `hop`; publications arrive as [`Event::Topic`].
    pub fn subscribe(&self, hop: &EntityId, topic: &str) -> Result<(), ApiError> {
        smol::block_on(self.handle.subscribe(hop, topic))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, hop: &EntityId, topic: &str) -> Result<(), ApiError> {
        smol::block_on(self.handle.unsubscribe(hop, topic))
    }

    /// Publishes `data` on `topic` through the node `hop`.
    pub fn publish(
        &self,
        hop: &EntityId,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<(), ApiError> {
        smol::block_on(self.handle.publish_via(hop, topic, data))
    }

    /// Calls `handler` for every [`Event::Message`] of `message_type` (every
    /// [`Event::Request`] for `TASK_REQUEST`) instead of queueing it for
    /// [`recv_timeout`](Self::recv_timeout). It runs on the node's thread: it must return
    /// quickly (hand the event to a channel of your own for slow work).
    pub fn on_message(
        &self,
        message_type: MessageType,
        handler: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<(), ApiError> {
        smol::block_on(self.handle.on_message(message_type, handler))
    }

    /// Calls `handler` for every [`Event::Message`] with the application-defined type
    /// `app_type`, instead of queueing it; it runs on the node's thread, like
    /// [`on_message`](Self::on_message)'s.
    pub fn on_app_type(
        &self,
        app_type: AppType,
        handler: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<(), ApiError> {
        smol::block_on(self.handle.on_app_type(app_type, handler))
    }

    /// The transport counters over all peers (seed 000's `TransportStats`).
    pub fn transport_stats(&self) -> Result<TransportStats, ApiError> {
        smol::block_on(self.handle.transport_stats())
    }

    /// The transport counters for `peer`, `None` before any traffic with it.
    pub fn peer_stats(&self, peer: &EntityId) -> Result<Option<TransportStats>, ApiError> {
        smol::block_on(self.handle.peer_stats(peer))
    }

    /// Links, sessions, queues and error counts, as a node's `/metrics` shows them.
    pub fn snapshot(&self) -> Result<Snapshot, ApiError> {
        smol::block_on(self.handle.snapshot())
    }

    /// Whether a session with `peer` is established.
    pub fn has_session(&self, peer: &EntityId) -> Result<bool, ApiError> {
        smol::block_on(self.handle.has_session(peer))
    }

    /// The next event, waiting at most `timeout`; `None` if none came, or the client stopped.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        smol::block_on(smol::future::or(async { self.events.recv().await.ok() }, async {
            smol::Timer::after(timeout).await;
            None
        }))
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Closes every link (sending `BYE`) and stops the node.
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // `Stopped` only means the node has stopped already.
        let _ = smol::block_on(self.handle.shutdown());
    }
}
