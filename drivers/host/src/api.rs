//! Starting a node: [`Peerlink::start`] runs a node in-process on a runtime, with its own
//! listener, and [`Peerlink::mount`] without one, for an application's HTTP server to serve
//! through [`NodeService`]. Both return the node's [`Handle`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use async_channel::Receiver;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use peerlink_core::auth::Authority;
use peerlink_core::node::ClusterConfig;
use peerlink_core::{Identity, Node, NodeAddr};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::broker::Broker;
use crate::client::ClientCtx;
use crate::clock::Clock;
use crate::cluster::{ClusterTask, MailboxBounds};
use crate::config::{Config, StorageKind};
use crate::error::{ApiError, ListenError};
use crate::handle::Handle;
use crate::metrics::ClusterCounters;
use crate::routes::{Exclusive, RequestBody, RouteCtx, answer};
use crate::runtime::Rt;
use crate::server::{check_plain, serve};
use crate::state::{ClusterLink, Core};

/// Starts nodes.
#[derive(Debug)]
pub struct Peerlink;

/// A generator seeded from the operating system's randomness.
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
        let bind_error = |e| ListenError::Bind(config.listen, e);
        let listener = if config.reuse_port {
            let shared = crate::runtime::reuse_port_listener(config.listen).map_err(bind_error)?;
            rt.adopt(shared).map_err(bind_error)?
        } else {
            rt.listen(config.listen).await.map_err(bind_error)?
        };
        let addr = listener.local_addr().map_err(|e| ListenError::Bind(config.listen, e))?;

        let tls = tls_server.is_some();
        let tls_client = Self::tls_client(&config)?;
        let broker = Self::broker(&rt, &config, &tls_client).await?;
        let (handle, route_ctx, stop_rx) =
            Self::node(&rt, config, identity, addr, tls, tls_client, broker)?;
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
        let tls_client = Self::tls_client(&config)?;
        let broker = Self::broker(&rt, &config, &tls_client).await?;
        let (handle, ctx, _stop) =
            Self::node(&rt, config, identity, addr, false, tls_client, broker)?;
        Ok((handle, NodeService { ctx }))
    }

    /// The TLS configuration for reaching other nodes (and a `rediss://` broker).
    fn tls_client(
        config: &Config,
    ) -> Result<Option<Arc<crate::tls::rustls::ClientConfig>>, ApiError> {
        Ok(match &config.tls.ca_file {
            Some(ca) => Some(crate::tls::client_config(ca).map_err(ListenError::from)?),
            None => None,
        })
    }

    /// A cluster node's first connection to its broker: a node that cannot reach it does not
    /// start (it reconnects by itself once running).
    async fn broker(
        rt: &Rt,
        config: &Config,
        tls: &Option<Arc<crate::tls::rustls::ClientConfig>>,
    ) -> Result<Option<Broker>, ApiError> {
        let Some(settings) = &config.cluster else { return Ok(None) };
        let broker = crate::cluster::connect(rt, settings, tls.clone()).await?;
        Ok(Some(broker))
    }

    /// The node task, spawned (with its broker's task on a cluster node), and what serving its
    /// endpoints needs.
    fn node(
        rt: &Rt,
        config: Config,
        identity: Identity,
        addr: SocketAddr,
        tls: bool,
        tls_client: Option<Arc<crate::tls::rustls::ClientConfig>>,
        broker: Option<Broker>,
    ) -> Result<(Handle, Arc<RouteCtx>, Receiver<()>), ApiError> {
        let id = identity.id().clone();
        let shared = Arc::new(identity.duplicate());
        let public_key = identity.public_key();
        let capabilities = config.node.capabilities.to_value();
        let max_frame = config.node.limits.max_frame_bytes;
        let max_body = config.node.max_http_body_bytes;
        let binary_links = config.node.binary_links;

        // The event stream's bound is the node's too: past it, data frames wait at their senders.
        let mut node_config = config.node.clone();
        node_config.max_events = node_config.max_events.min(config.limits.event_queue.max(1));
        node_config.offload_work = config.offload_work;
        if let Some(c) = &config.cluster {
            node_config.cluster = Some(ClusterConfig {
                max_presence: c.max_presence,
                refresh_every: c.refresh_every,
                name: c.name.clone(),
            });
        }
        let durable = config.storage.kind == StorageKind::Redb;
        if durable {
            node_config.durable = true;
            // Messages wait for an offline recipient as long as the storage settings say, and a
            // peer's receive positions outlive that (spec §26.4).
            node_config.stream.send_timeout = config.storage.mailbox_ttl;
            node_config.peer_idle_timeout = node_config
                .peer_idle_timeout
                .max(config.storage.mailbox_ttl.saturating_add(MIN_IDLE_MARGIN));
        }
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
            let hop = relay.entity.clone();
            node.set_default_route(clock.now(), relay);
            if !config.relay_failover_urls.is_empty() {
                let urls = config.relay_failover_urls.clone();
                node.set_failover_urls(&hop, urls).map_err(ApiError::Send)?;
            }
        }

        // After the routes: subscriptions restored at a next hop are renewed at once.
        let store = if durable { Some(open_store(&config, &mut node, &clock)?) } else { None };
        let (inputs, rx) = async_channel::bounded(config.limits.input_queue.max(1));
        let cluster = match (broker, &config.cluster) {
            (Some(broker), Some(settings)) => {
                let counters = Arc::new(ClusterCounters::default());
                let (actions, actions_rx) = async_channel::bounded(settings.request_queue.max(1));
                let task = ClusterTask {
                    rt: Arc::clone(rt),
                    settings: settings.clone(),
                    name: node.cluster_name().cloned().unwrap_or_else(|| id.clone()),
                    tls: tls_client.clone(),
                    mailbox: MailboxBounds {
                        messages: config.node.mailbox_messages,
                        bytes: config.node.mailbox_bytes,
                        ttl: config.node.limits.max_clock_skew,
                    },
                    max_frame,
                    counters: Arc::clone(&counters),
                    inputs: inputs.clone(),
                    actions: actions_rx,
                };
                rt.spawn(Box::pin(crate::cluster::run(task, broker)));
                Some(ClusterLink { actions, counters })
            }
            _ => None,
        };
        let cluster_counters = cluster.as_ref().map(|c| Arc::clone(&c.counters));
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
            up: BTreeSet::new(),
            closing: BTreeSet::new(),
            cluster,
            store,
            store_stats: Default::default(),
            store_failed: None,
            deferred: Vec::new(),
            taken: None,
            in_flight: None,
            group: Default::default(),
        };
        let route_ctx = Arc::new(RouteCtx {
            inputs: inputs.clone(),
            checker: Authority::new(shared, config.auth),
            clock,
            limits: config.limits.clone(),
            max_frame_bytes: max_frame,
            max_http_body_bytes: max_body,
            binary_links,
            public_key,
            capabilities,
            origins: crate::origin::OriginPolicy::new(&config.allowed_origins),
            rt: Arc::clone(rt),
            cluster: cluster_counters,
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

/// How much longer than the message lifetime a durable node remembers an idle peer.
const MIN_IDLE_MARGIN: std::time::Duration = std::time::Duration::from_secs(600);

/// Opens a durable node's store, rebuilds the node from what it holds, and starts its writer.
fn open_store(
    config: &Config,
    node: &mut Node,
    clock: &Clock,
) -> Result<crate::store::StoreWriter, ApiError> {
    let mut store = crate::store::open(&config.storage, std::path::Path::new("."))?;
    let entries = store.load()?;
    let count = entries.len();
    let summary = node.restore(clock.now(), entries).map_err(ApiError::Restore)?;
    tracing::info!(
        entries = count,
        peers = summary.peers,
        messages = summary.messages,
        expired = summary.expired,
        chunks = summary.chunks,
        subscriptions = summary.subscriptions,
        mailboxed = summary.mailboxed,
        mailbox_dropped = summary.mailbox_dropped,
        "store opened"
    );
    let path = config.storage.file_in(std::path::Path::new("."));
    crate::store::StoreWriter::spawn(store)
        .map_err(|source| ApiError::Store(crate::store::StoreFailure::Io { path, source }))
}
