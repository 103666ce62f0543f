//! The service API: [`Peerlink::start`] runs a node in-process and returns a cloneable
//! [`Handle`] (seed 000's client API) that maps every call onto the core's `Node` methods on
//! the node task.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use peerlink_core::auth::Authority;
use peerlink_core::node::{SendOptions, TransportStats};
use peerlink_core::stream::FailReason;
use peerlink_core::{
    AppType, EntityId, Event, Identity, MessageId, MessageType, Node, NodeAddr, SendError,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::client::ClientCtx;
use crate::config::Config;
use crate::delivery::{HandlerKey, TransportResult, Undelivered, Waiter};
use crate::driver::{Clock, Core, Input};
use crate::routes::{Exclusive, RequestBody, RouteCtx, answer};
use crate::runtime::Rt;
use crate::server::{ListenError, check_plain, serve};

/// Counters and gauges of a running node (what `/metrics` renders).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The core's transport counters over all peers.
    pub stats: TransportStats,
    /// Inbound `/ws/v1/peers` links.
    pub inbound_peer_links: usize,
    /// Inbound `/ws/v1/events` links.
    pub inbound_event_links: usize,
    /// Links this node opened.
    pub outbound_links: usize,
    /// Peers with an established session.
    pub sessions: usize,
    /// Envelopes in mailboxes.
    pub mailbox_messages: usize,
    /// Bytes in mailboxes.
    pub mailbox_bytes: usize,
    /// HTTP calls held (long-polls).
    pub held_http_calls: usize,
    /// `Event::Error`s seen, by error code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Links disconnected because their send queue was full.
    pub slow_readers_disconnected: u64,
    /// Informational events dropped because `incoming()` was not drained.
    pub events_dropped: u64,
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The node refused the message.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The message type cannot be sent with `send_message`.
    #[error("message type {0} cannot be sent by the application")]
    UnsupportedType(MessageType),
    /// The request got no answer in time.
    #[error("request timed out")]
    Timeout,
    /// The request will not be delivered.
    #[error("request failed: {0:?}")]
    Failed(FailReason),
    /// A confirmed send ended without delivery ([`Handle::send_confirmed`]).
    #[error("not delivered: {:?} (may have been delivered: {})", .0.reason, .0.maybe_delivered)]
    Undelivered(Undelivered),
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
    /// A topic name or publish payload was refused.
    #[error(transparent)]
    Usage(#[from] peerlink_core::UsageError),
    /// Listening failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Starts nodes.
#[derive(Debug)]
pub struct Peerlink;

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct Handle {
    inputs: Sender<Input>,
    addr: SocketAddr,
    id: EntityId,
    stop: Sender<()>,
    event_queue: usize,
    /// Whether the listener serves TLS (`https`/`wss`).
    tls: bool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).field("addr", &self.addr).finish()
    }
}

fn seeded() -> Result<ChaCha20Rng, ApiError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        ApiError::Listen(ListenError::Bind(
            ([0, 0, 0, 0], 0).into(),
            std::io::Error::other(e.to_string()),
        ))
    })?;
    Ok(ChaCha20Rng::from_seed(seed))
}

impl Peerlink {
    /// Binds the listener, then spawns the node task and the server on `rt`. Returns once the
    /// port is bound; [`Handle::local_addr`] gives it (use port 0 in tests). Drivers wrap this
    /// with their runtime (`peerlink_smol::Peerlink::start`).
    pub async fn start(rt: Rt, config: Config, identity: Identity) -> Result<Handle, ApiError> {
        let tls_server = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(c), Some(k)) => Some(crate::tls::server_config(c, k).map_err(ListenError::from)?),
            _ => {
                check_plain(config.listen, config.require_tls)?;
                None
            }
        };
        let listener =
            rt.listen(config.listen).await.map_err(|e| ListenError::Bind(config.listen, e))?;
        let addr = listener.local_addr().map_err(|e| ListenError::Bind(config.listen, e))?;

        let tls = tls_server.is_some();
        let (handle, route_ctx, stop_rx) = Self::node(&rt, config, identity, addr, tls)?;
        let acceptor = tls_server.map(futures_rustls::TlsAcceptor::from);
        rt.spawn(Box::pin(serve(listener, acceptor, route_ctx, stop_rx)));
        tracing::info!(%addr, entity = %handle.id, "node listening");
        Ok(handle)
    }

    /// Spawns the node task on `rt` without a listener, and returns the [`NodeService`] that
    /// answers its endpoints, for an application's own HTTP server to serve under a path of its
    /// choice (`peerlink_tokio::Peerlink::router`). `config.listen` is what
    /// [`Handle::local_addr`] reports; the TLS files for serving are not used (the
    /// application's server does TLS), the CA file for reaching other nodes is.
    pub async fn mount(
        rt: Rt,
        config: Config,
        identity: Identity,
    ) -> Result<(Handle, NodeService), ApiError> {
        let addr = config.listen;
        let (handle, ctx, _stop) = Self::node(&rt, config, identity, addr, false)?;
        Ok((handle, NodeService { ctx }))
    }

    /// The node task, spawned, and what serving its endpoints needs.
    fn node(
        rt: &Rt,
        config: Config,
        identity: Identity,
        addr: SocketAddr,
        tls: bool,
    ) -> Result<(Handle, Arc<RouteCtx>, Receiver<()>), ApiError> {
        let tls_client = match &config.tls.ca_file {
            Some(ca) => Some(crate::tls::client_config(ca).map_err(ListenError::from)?),
            None => None,
        };
        let id = identity.id().clone();
        let shared = Arc::new(identity.duplicate());
        let public_key = identity.public_key();
        let capabilities = config.node.capabilities.to_value();
        let max_frame = config.node.limits.max_frame_bytes;
        let max_body = config.node.max_http_body_bytes;

        // The event stream's bound is the node's too: past it, data frames wait at their senders.
        let mut node_config = config.node.clone();
        node_config.max_events = node_config.max_events.min(config.limits.event_queue.max(1));
        let mut node = Node::new(node_config, identity, config.trust_store(), seeded()?)
            .map_err(ApiError::Usage)?;
        let clock = Clock::new();
        for route in config.routes() {
            node.add_route(route.entity.clone(), route);
        }
        if let Some(relay) = &config.relay
            && let Some(url) = &relay.url
        {
            let relay = NodeAddr { entity: relay.entity.clone(), base_url: url.clone() };
            node.set_default_route(clock.now(), relay);
        }

        let (inputs, rx) = async_channel::bounded(config.limits.input_queue.max(1));
        let client = Arc::new(ClientCtx::new(
            Arc::clone(rt),
            Arc::clone(&shared),
            tls_client,
            config.limits.clone(),
            max_frame,
            max_body,
        ));
        let core = Core {
            node,
            authority: Authority::new(Arc::clone(&shared), config.auth),
            rng: seeded()?,
            clock: clock.clone(),
            links: BTreeMap::new(),
            outbound: Default::default(),
            pending_http: BTreeMap::new(),
            waiting: BTreeMap::new(),
            delivering: BTreeMap::new(),
            events: None,
            handlers: BTreeMap::new(),
            client,
            inputs: inputs.clone(),
            errors_by_code: BTreeMap::new(),
            slow_readers: 0,
            events_dropped: 0,
            stopping: false,
        };
        let route_ctx = Arc::new(RouteCtx {
            inputs: inputs.clone(),
            checker: Authority::new(shared, config.auth),
            clock,
            limits: config.limits.clone(),
            max_frame_bytes: max_frame,
            max_http_body_bytes: max_body,
            public_key,
            capabilities,
            origins: crate::origin::OriginPolicy::new(&config.allowed_origins),
            rt: Arc::clone(rt),
        });
        let (stop, stop_rx) = async_channel::bounded(1);
        rt.spawn(Box::pin(crate::driver::run(core, rx)));
        let event_queue = config.limits.event_queue;
        let handle = Handle { inputs, addr, id, stop, event_queue, tls };
        Ok((handle, route_ctx, stop_rx))
    }
}

/// A node's endpoints (spec §23) as a function from request to response, for an application's
/// own HTTP server ([`Peerlink::mount`]). Cheap to clone.
#[derive(Clone)]
pub struct NodeService {
    ctx: Arc<RouteCtx>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService").field("node", self.ctx.checker.node_id()).finish()
    }
}

impl NodeService {
    /// Answers one request. Its path is the endpoint's (`/v1/messages`, `/ws/v1/peers`, …):
    /// strip the application's prefix first, as axum's `nest` does. A WebSocket upgrade needs
    /// the request's hyper upgrade extension, which servers with upgrades enabled keep.
    pub async fn call<B: RequestBody + Unpin>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        answer(&self.ctx, req.map(Exclusive::new)).await
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
        let call: crate::driver::Call = Box::new(move |core, now| {
            let _ = tx.try_send(f(core, now));
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
    /// under way wait for the application.
    pub async fn incoming(&self) -> Result<Receiver<Event>, ApiError> {
        let (tx, rx) = async_channel::bounded(self.event_queue.max(1));
        self.call(move |c, _| c.events = Some(tx)).await?;
        Ok(rx)
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
