//! The application's [`Handle`] on a running node (seed 000's client API): every call is run on
//! the node task against the core's `Node`, and answered from there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::Sender;
use peerlink_core::node::{SendOptions, TransportStats};
use peerlink_core::{AppType, EntityId, Event, MessageId, MessageType, NodeAddr, SendError};

use crate::delivery::{HandlerKey, TransportResult, Waiter};
use crate::error::ApiError;
use crate::events::{Events, TakenSignal};
use crate::metrics::Snapshot;
use crate::state::{Core, Input};

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct Handle {
    /// The node task's input queue.
    pub(crate) inputs: Sender<Input>,
    /// The listener's address (the configured one when mounted).
    pub(crate) addr: SocketAddr,
    /// The node's entity id.
    pub(crate) id: EntityId,
    /// Stops the listener.
    pub(crate) stop: Sender<()>,
    /// The bound of the [`incoming`](Self::incoming) stream.
    pub(crate) event_queue: usize,
    /// Whether the listener serves TLS (`https`/`wss`).
    pub(crate) tls: bool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).field("addr", &self.addr).finish()
    }
}

impl Handle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's entity id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// `http://<local_addr>`, or `https://…` when the listener serves TLS: the base URL other
    /// nodes reach this one at.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Runs `f` on the node task and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core, peerlink_core::Timestamp) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = async_channel::bounded(1);
        let call: crate::state::Call = Box::new(move |core, now| {
            let result = f(core, now);
            // On a durable node the answer waits for the commit of what the call wrote.
            core.answer_after_writes(Box::new(move || {
                let _ = tx.try_send(result);
            }));
        });
        self.inputs.send(Input::Call(call)).await.map_err(|_| ApiError::Stopped)?;
        rx.recv().await.map_err(|_| ApiError::Stopped)
    }

    /// Sends `payload` to `target` (seed 000's `send_message`). `message_type` is
    /// `PEER_MESSAGE` or `STATUS` (use [`request`](Self::request) for tasks and
    /// [`broadcast`](Self::broadcast) for broadcasts); `options.prefer_websocket` picks the
    /// transport for this message. Returns the id; `Event::Delivered` or `Event::Failed` follows
    /// on [`incoming`](Self::incoming).
    pub async fn send_message(
        &self,
        target: &EntityId,
        message_type: MessageType,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<MessageId, ApiError> {
        let target = target.clone();
        let r = match message_type {
            MessageType::PeerMessage => {
                self.call(move |c, now| c.node.send(now, &target, payload, options)).await?
            }
            MessageType::Status => {
                self.call(move |c, now| c.node.send_status(now, &target, payload, options)).await?
            }
            other => return Err(ApiError::UnsupportedType(other)),
        };
        Ok(r?)
    }

    /// Sends `payload` to `target` as a `PEER_MESSAGE` and waits until it is delivered, that is
    /// handed to the recipient's application (seed 000's `TransportResult`): the result says
    /// which transport carried it and how long it took. Fails with [`ApiError::Undelivered`]
    /// when the node gives up (at the latest after the send timeout, 60 s by default), saying
    /// whether it may still arrive. The `Delivered` event of a confirmed send is not put on
    /// [`incoming`](Self::incoming); its `Failed` is, as every failure is.
    pub async fn send_confirmed(
        &self,
        target: &EntityId,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<TransportResult, ApiError> {
        let target = target.clone();
        let (reply, rx) = async_channel::bounded(1);
        let since = std::time::Instant::now();
        self.call(move |c, now| {
            let id = c.node.send(now, &target, payload, options)?;
            c.delivering.insert(id, Waiter { since, reply });
            Ok::<_, SendError>(())
        })
        .await??;
        rx.recv().await.map_err(|_| ApiError::Stopped)?.map_err(ApiError::Undelivered)
    }

    /// Whether a WebSocket link carries frames for `peer` now (its own link to this node, or an
    /// open link to the next hop toward it): seed 000's `is_websocket_connected`. `false` while
    /// the link is connecting or traffic to the peer goes over HTTP.
    pub async fn is_websocket_connected(&self, peer: &EntityId) -> Result<bool, ApiError> {
        let peer = peer.clone();
        self.call(move |c, _| c.node.websocket_connected(&peer)).await
    }

    /// Messages to `peer` accepted and not yet delivered or failed (on a durable node, those it
    /// restored from its store included).
    pub async fn outbox_len(&self, peer: &EntityId) -> Result<usize, ApiError> {
        let peer = peer.clone();
        self.call(move |c, _| c.node.outbox_len(&peer)).await
    }

    /// Sends a `BROADCAST` to every peer with a session; returns the ids accepted.
    pub async fn broadcast(
        &self,
        payload: Vec<u8>,
    ) -> Result<Vec<(EntityId, MessageId)>, ApiError> {
        self.broadcast_with(payload, SendOptions::default()).await
    }

    /// [`broadcast`](Self::broadcast) with options for every copy, e.g.
    /// `SendOptions::typed(app_type)` for an application-defined type.
    pub async fn broadcast_with(
        &self,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<Vec<(EntityId, MessageId)>, ApiError> {
        self.call(move |c, now| c.node.broadcast_with(now, &payload, options).0).await
    }

    /// Sends a `TASK_REQUEST` and waits for the `TASK_RESPONSE` payload (or a timeout).
    pub async fn request(
        &self,
        target: &EntityId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let target = target.clone();
        let (tx, rx) = async_channel::bounded(1);
        self.call(move |c, now| {
            let id = c.node.request(now, &target, payload, timeout)?;
            c.waiting.insert(id, tx);
            Ok::<_, SendError>(())
        })
        .await??;
        rx.recv().await.map_err(|_| ApiError::Stopped)?
    }

    /// Answers a request received as `Event::Request`.
    pub async fn respond(
        &self,
        peer: &EntityId,
        request: &MessageId,
        payload: Vec<u8>,
    ) -> Result<MessageId, ApiError> {
        let (peer, request) = (peer.clone(), request.clone());
        Ok(self.call(move |c, now| c.node.respond(now, &peer, &request, payload)).await??)
    }

    /// Opens the WebSocket toward `peer` now and starts the handshake.
    pub async fn init_websocket_connection(&self, peer: &EntityId) -> Result<(), ApiError> {
        let peer = peer.clone();
        Ok(self.call(move |c, now| c.node.connect(now, &peer)).await??)
    }

    /// Closes the WebSocket toward `peer` and stops reconnecting (traffic may use HTTP).
    pub async fn close_websocket_connection(&self, peer: &EntityId) -> Result<(), ApiError> {
        let peer = peer.clone();
        self.call(move |c, now| c.node.disconnect(now, &peer)).await
    }

    /// Transport counters over all peers (seed 000's `TransportStats`).
    pub async fn transport_stats(&self) -> Result<TransportStats, ApiError> {
        self.call(|c, _| c.node.stats().clone()).await
    }

    /// Transport counters for one peer.
    pub async fn peer_stats(&self, peer: &EntityId) -> Result<Option<TransportStats>, ApiError> {
        let peer = peer.clone();
        self.call(move |c, _| c.node.peer_stats(&peer).cloned()).await
    }

    /// Everything `/metrics` shows.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        self.call(|c, _| c.snapshot()).await
    }

    /// Whether a session with `peer` is established.
    pub async fn has_session(&self, peer: &EntityId) -> Result<bool, ApiError> {
        let peer = peer.clone();
        self.call(move |c, _| c.node.has_session(&peer)).await
    }

    /// Trusts `entity` with `key` and, with a URL, routes to it directly.
    pub async fn add_peer(&self, peer: crate::config::TrustedPeer) -> Result<(), ApiError> {
        self.call(move |c, _| {
            c.node.trust_entity(peer.entity.clone(), peer.key);
            if let Some(url) = peer.url {
                c.node.add_route(
                    peer.entity.clone(),
                    NodeAddr { entity: peer.entity, base_url: url },
                );
            }
        })
        .await
    }

    /// The stream of events (messages, requests, deliveries, failures, topic messages, …): a
    /// bounded channel of [`DriverLimits::event_queue`](crate::DriverLimits). Until this is
    /// called, events are logged and dropped; a second call replaces the first stream. Messages
    /// and failures (`Event::Failed`) are never dropped: while the stream is full the node
    /// refuses new data frames (their senders re-send them later), and the few events already
    /// under way wait for the application. A durable node acknowledges a message only once the
    /// application has taken it from this stream ([`Events`] tells the node when it is empty).
    pub async fn incoming(&self) -> Result<Events, ApiError> {
        let (tx, rx) = async_channel::bounded(self.event_queue.max(1));
        let (signal, woken) = TakenSignal::new();
        let theirs = Arc::clone(&signal);
        self.call(move |c, _| {
            c.events = Some(tx);
            c.taken = Some((theirs, Box::pin(woken)));
        })
        .await?;
        Ok(Events::new(rx, signal))
    }

    /// Calls `handler` (on the node task: it must not block) for every `Event::Message` of
    /// `message_type`, or every `Event::Request` for `TASK_REQUEST`, instead of putting it on
    /// [`incoming`](Self::incoming). A message with an application type that has a handler of
    /// its own ([`on_app_type`](Self::on_app_type)) goes to that one instead. A second call for
    /// the same type replaces the handler.
    pub async fn on_message(
        &self,
        message_type: MessageType,
        handler: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<(), ApiError> {
        self.register(HandlerKey::Type(message_type), Arc::new(handler)).await
    }

    /// Calls `handler` (on the node task: it must not block) for every `Event::Message` whose
    /// application-defined type is `app_type` (sent with `SendOptions::typed`), instead of
    /// putting it on [`incoming`](Self::incoming): the seed's `register_event_handler` for an
    /// application's own message types. A second call for the same type replaces the handler.
    pub async fn on_app_type(
        &self,
        app_type: AppType,
        handler: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<(), ApiError> {
        self.register(HandlerKey::App(app_type), Arc::new(handler)).await
    }

    async fn register(&self, key: HandlerKey, h: crate::delivery::Handler) -> Result<(), ApiError> {
        self.call(move |c, _| {
            c.handlers.insert(key, h);
        })
        .await
    }

    /// Subscribes to `topic` on the next hop `node`; messages arrive as `Event::Topic`.
    pub async fn subscribe(&self, node: &EntityId, topic: &str) -> Result<(), ApiError> {
        let (node, topic) = (node.clone(), topic.to_owned());
        Ok(self.call(move |c, now| c.node.subscribe(now, &node, &topic)).await??)
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, node: &EntityId, topic: &str) -> Result<(), ApiError> {
        let (node, topic) = (node.clone(), topic.to_owned());
        Ok(self.call(move |c, now| c.node.unsubscribe(now, &node, &topic)).await??)
    }

    /// Publishes on `topic` to this node's own subscribers; returns how many links it reached.
    pub async fn publish(&self, topic: &str, data: serde_json::Value) -> Result<usize, ApiError> {
        let topic = topic.to_owned();
        Ok(self.call(move |c, now| c.node.publish(now, &topic, data)).await??)
    }

    /// Publishes on `topic` through the next hop `node`.
    pub async fn publish_via(
        &self,
        node: &EntityId,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<(), ApiError> {
        let (node, topic) = (node.clone(), topic.to_owned());
        Ok(self.call(move |c, now| c.node.publish_via(now, &node, &topic, data)).await??)
    }

    /// Graceful shutdown: stops accepting, sends `BYE` on every link and closes it, answers
    /// held HTTP calls, and stops the node task.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        let _ = self.stop.try_send(());
        let (tx, rx) = async_channel::bounded(1);
        self.inputs.send(Input::Shutdown { reply: tx }).await.map_err(|_| ApiError::Stopped)?;
        rx.recv().await.map_err(|_| ApiError::Stopped)
    }
}
