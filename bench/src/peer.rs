//! peerlink scenarios: peer → relay node → peer, end-to-end encrypted, over WebSocket (with
//! `sign_all` on or off) or over the HTTP fallback; peer → cluster node → Redis → cluster node
//! → peer (two relay nodes sharing one identity and one Redis); and full handshakes per second,
//! with and without the start-up of the client node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_core::node::NodeConfig;
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, TrustPolicy};
use peerlink_host::ClusterSettings;
use peerlink_host::broker::BrokerUrl;
use peerlink_smol::{Config, Handle, Peerlink, Snapshot, TrustedPeer};
use smol::future::FutureExt as _;

use crate::BoxError;
use crate::child::{ChildServer, Server};
use crate::load::{Pipe, Sink};
use crate::redis::RedisServer;
use crate::stats::{Clock, Recorder, cpu_time};

/// Which peerlink path a scenario takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// WebSocket only, with `sign_all` on or off (on every node).
    Ws {
        /// Whether every E2E message is also signed.
        sign_all: bool,
    },
    /// WebSocket only, `sign_all` off, every link kept on the JSON envelope (`binary_links`
    /// off on every node): the encoding every path used before spec §27, beside [`Path::Ws`]'s
    /// binary links.
    WsJson,
    /// HTTP only (POST to the relay, long-poll from it); `sign_all` off.
    Http,
    /// WebSocket only, `sign_all` off, the three nodes on tokio (`peerlink-tokio`, a
    /// multi-threaded runtime of as many threads as smol's executor has) instead of smol.
    WsTokio,
    /// WebSocket only, `sign_all` off, across a cluster: the sender linked to cluster node
    /// `n1`, the receiver to `n2`, both nodes sharing one relay identity and one Redis (started
    /// for the run), so every message and acknowledgement crosses Redis (a `PUBLISH` on the
    /// other node's channel). The nodes run on smol in this process, as the single relay does.
    Cluster,
}

impl Path {
    /// The preference and `sign_all` this path uses.
    fn settings(self) -> (TransportPreference, bool) {
        match self {
            Path::Ws { sign_all } => (TransportPreference::WebsocketOnly, sign_all),
            Path::Http => (TransportPreference::HttpOnly, false),
            Path::WsTokio | Path::Cluster | Path::WsJson => {
                (TransportPreference::WebsocketOnly, false)
            }
        }
    }

    /// Starts a node of this path: on tokio for [`Path::WsTokio`], else on smol.
    async fn start(self, config: Config, identity: Identity) -> Result<Handle, BoxError> {
        let place = if self == Path::WsTokio { NodePlace::HereOnTokio } else { NodePlace::Here };
        start_at(place, config, identity).await
    }
}

/// The tokio runtime of the tokio paths: multi-threaded, as many workers as smol's executor
/// (`SMOL_THREADS`, else the CPUs online). Nodes started from smol tasks run on it: the
/// runtime handle carries their tasks, timers and sockets.
fn tokio_rt() -> Result<peerlink_host::Rt, BoxError> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let threads = std::env::var("SMOL_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .ok()
    });
    match runtime {
        Some(rt) => Ok(Arc::new(peerlink_tokio::TokioRuntime::new(rt.handle().clone()))),
        None => Err("no tokio runtime could be built".into()),
    }
}

/// The node configuration of every bench node: defaults (timers, windows, outbox bounds) except
/// the per-link rate limit, which would otherwise cap a link at 100 frames a minute.
pub fn node_config(pref: TransportPreference, sign_all: bool) -> NodeConfig {
    let mut n = NodeConfig { preference: pref, ..NodeConfig::default() };
    n.capabilities.sign_all = sign_all;
    n.link_rate = RateLimit::per_minute(u32::MAX);
    n
}

fn identity(name: &str) -> Result<Identity, BoxError> {
    Ok(peerlink_smol::keys::generate(EntityId::new(name)?)?)
}

fn trusted(i: &Identity, url: Option<String>) -> TrustedPeer {
    TrustedPeer { entity: i.id().clone(), key: i.public_key(), url }
}

/// The nodes of a relayed scenario: the sender, the receiver and the relay (or the two
/// cluster nodes, and their Redis).
#[derive(Debug)]
pub struct Trio {
    /// The relay, or the cluster's nodes (the sender's first, the receiver's second).
    pub relays: Vec<Handle>,
    /// The sender.
    pub a: Handle,
    /// The receiver.
    pub b: Handle,
    /// The cluster's Redis, stopped once the nodes are shut down.
    pub redis: Option<RedisServer>,
}

impl Trio {
    /// Shuts the nodes down, then stops the cluster's Redis (if any).
    pub async fn shutdown(self) {
        for h in [self.a, self.b].into_iter().chain(self.relays) {
            let _ = h.shutdown().await;
        }
        drop(self.redis);
    }

    /// Frames the cluster's nodes have handed to one another through Redis so far (0 when there
    /// is no cluster).
    pub async fn broker_frames(&self) -> u64 {
        let mut n = 0;
        for r in &self.relays {
            if let Ok(Snapshot { cluster: Some(c), .. }) = r.snapshot().await {
                n += c.forwarded;
            }
        }
        n
    }

    /// Frames the sender has sent so far (messages, chunks, re-sends, acknowledgements).
    pub async fn frames_sent(&self) -> u64 {
        self.a
            .transport_stats()
            .await
            .map(|s| s.ws_messages_sent + s.http_messages_sent)
            .unwrap_or(0)
    }
}

/// How long a cluster may take to come up and learn where its entities are linked (a failure
/// bound, not a pause).
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` every 5 ms until it is true; fails after [`CLUSTER_DEADLINE`], saying `what`.
async fn wait_for<F, Fut>(what: &str, mut f: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + CLUSTER_DEADLINE;
    while !f().await {
        if Instant::now() > until {
            return Err(format!("{what}: not within {CLUSTER_DEADLINE:?}").into());
        }
        smol::Timer::after(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Starts the relay of `path` trusting `a` and `b`: one node, or for [`Path::Cluster`] a Redis
/// and two cluster nodes (`n1`, `n2`) sharing the relay identity `r`, each up on the broker.
async fn relays(
    path: Path,
    r: &Identity,
    a: &Identity,
    b: &Identity,
) -> Result<(Vec<Handle>, Option<RedisServer>), BoxError> {
    let (_, sign_all) = path.settings();
    let config = || {
        let mut cfg = Config::ephemeral();
        cfg.node = node_config(TransportPreference::WebsocketFirst, sign_all);
        cfg.node.binary_links = path != Path::WsJson;
        cfg.peers = vec![trusted(a, None), trusted(b, None)];
        cfg
    };
    if path != Path::Cluster {
        return Ok((vec![path.start(config(), r.duplicate()).await?], None));
    }
    let redis = RedisServer::start()?;
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let mut cfg = config();
        let mut cluster = ClusterSettings::new(BrokerUrl::parse(&redis.url())?);
        cluster.name = Some(EntityId::new(name)?);
        cfg.cluster = Some(cluster);
        let node = path.start(cfg, r.duplicate()).await?;
        wait_for("a cluster node to reach Redis", || async {
            node.snapshot().await.ok().and_then(|s| s.cluster).is_some_and(|c| c.up)
        })
        .await?;
        nodes.push(node);
    }
    Ok((nodes, Some(redis)))
}

/// Starts a relay (or a cluster of two) and two peers on `path` and returns a pipe from `a` to
/// `b`. On [`Path::Cluster`] `a` is linked to the first node and `b` to the second, and the
/// pipe is returned once both nodes know where both are linked.
pub async fn pipe(path: Path, window: usize, clock: Clock) -> Result<(Pipe, Trio), BoxError> {
    let (pref, sign_all) = path.settings();
    let (r, a, b) = (identity("relay")?, identity("alice")?, identity("bob")?);
    let (relays, redis) = relays(path, &r, &a, &b).await?;
    let other = |me: &Identity| if me.id() == a.id() { &b } else { &a };
    let peer = |me: &Identity, via: &Handle| {
        let mut cfg = Config::ephemeral();
        cfg.node = node_config(pref, sign_all);
        cfg.node.binary_links = path != Path::WsJson;
        cfg.peers = vec![trusted(other(me), None)];
        cfg.relay = Some(trusted(&r, Some(via.base_url())));
        (cfg, me.duplicate())
    };
    let (first, last) = (&relays[0], &relays[relays.len() - 1]);
    let (ca, ia) = peer(&a, first);
    let ha = path.start(ca, ia).await?;
    let (cb, ib) = peer(&b, last);
    let hb = path.start(cb, ib).await?;

    let recorder = Arc::new(Recorder::new(clock));
    let (slots, taken) = smol::channel::bounded(window.max(1));
    let a_events = ha.incoming().await?;
    let release = taken.clone();
    smol::spawn(async move {
        while let Ok(e) = a_events.recv().await {
            if matches!(e, Event::Delivered { .. } | Event::Failed { .. }) {
                let _ = taken.try_recv();
            }
        }
    })
    .detach();
    let b_events = hb.incoming().await?;
    let rec = Arc::clone(&recorder);
    smol::spawn(async move {
        while let Ok(e) = b_events.recv().await {
            if let Event::Message { payload, .. } = e {
                rec.arrive(&payload);
            }
        }
    })
    .detach();
    if path == Path::Cluster {
        // Both linked, and each node's presence map holding both: only then does a message
        // for bob leave n1 on n2's channel rather than for the shared mailbox.
        ha.init_websocket_connection(r.id()).await?;
        hb.init_websocket_connection(r.id()).await?;
        for node in &relays {
            wait_for("the cluster's presence of alice and bob", || async {
                node.snapshot().await.ok().and_then(|s| s.cluster).is_some_and(|c| c.presence >= 2)
            })
            .await?;
        }
    }
    let sink = Sink::Peer {
        handle: ha.clone(),
        to: Arc::new(b.id().clone()),
        release,
        refused: Default::default(),
    };
    let other_cpu = redis.as_ref().map(RedisServer::pid);
    let pipe = Pipe { sink, slots, recorder, clock, other_cpu };
    Ok((pipe, Trio { relays, a: ha, b: hb, redis }))
}

/// What a run of full handshakes measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Handshakes {
    /// Handshakes completed per second of the timed window.
    pub per_s: f64,
    /// CPU time of the client and server sides together per handshake (both processes when the
    /// node runs in a child), µs.
    pub cpu_us: f64,
    /// Handshakes completed.
    pub count: u64,
    /// CPU time of the node alone per handshake, µs, when it ran in a process of its own.
    pub node_cpu_us: Option<f64>,
}

impl Handshakes {
    fn new(count: u64, wall: Duration, cpu: Duration, node_cpu: Option<Duration>) -> Self {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
        Self {
            per_s: count as f64 / wall.as_secs_f64().max(1e-9),
            cpu_us: per(cpu),
            count,
            node_cpu_us: node_cpu.map(per),
        }
    }
}

/// Where the node of the handshake measurements runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePlace {
    /// In this process, on the executor the client nodes share (smol).
    Here,
    /// In this process, the node and its client nodes on tokio (`peerlink-tokio`).
    HereOnTokio,
    /// As `Here`, every node doing its public-key work on its own task (`Config::offload_work`
    /// off): the comparison for the work handed out (spec §7.12).
    HereSerial,
    /// In a child process of its own, so that its CPU time is measured apart from the clients'.
    Child,
}

/// The node every handshake is run against: open trust, and room for every entity a run may
/// bring (each handshake is a new one, and the node keeps a peer's state for
/// `peer_idle_timeout`, 10 minutes, after its link is gone).
enum HandshakeNode {
    Here(Handle),
    Child(Box<ChildServer>),
}

impl HandshakeNode {
    /// Starts the node; also returns what its clients need to know of it.
    async fn start(place: NodePlace) -> Result<(Self, TrustedPeer), BoxError> {
        match place {
            NodePlace::Here | NodePlace::HereOnTokio | NodePlace::HereSerial => {
                let s = identity("server")?;
                let mut cfg = Config::ephemeral();
                cfg.node = node_config(TransportPreference::WebsocketOnly, true);
                cfg.offload_work = place != NodePlace::HereSerial;
                cfg.node.max_peers = 1 << 20;
                cfg.trust_policy = TrustPolicy::Open;
                let server = start_at(place, cfg, s.duplicate()).await?;
                let url = Some(server.base_url());
                Ok((HandshakeNode::Here(server), trusted(&s, url)))
            }
            NodePlace::Child => {
                let child = ChildServer::spawn(Server::Node, 1 << 20)?;
                let to = child.node.clone().ok_or("the child node printed no key")?;
                Ok((HandshakeNode::Child(Box::new(child)), to))
            }
        }
    }

    /// The CPU time the node has used so far, when it runs in a process of its own.
    fn cpu_time(&self) -> Option<Duration> {
        match self {
            HandshakeNode::Here(_) => None,
            HandshakeNode::Child(c) => c.cpu_time().ok(),
        }
    }

    /// Waits (at most 5 s) until the node holds no inbound link and no long-poll.
    async fn settle(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let idle = match self {
                HandshakeNode::Here(server) => match server.snapshot().await {
                    Ok(s) => s.inbound_peer_links == 0 && s.held_http_calls == 0,
                    Err(_) => return,
                },
                HandshakeNode::Child(c) => crate::memory::links(c.addr).await == Some(0),
            };
            if idle {
                return;
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        if let HandshakeNode::Here(server) = self {
            let _ = server.shutdown().await;
        }
    }
}

/// Starts a node on tokio for [`NodePlace::HereOnTokio`], else on smol.
async fn start_at(
    place: NodePlace,
    config: Config,
    identity: Identity,
) -> Result<Handle, BoxError> {
    Ok(match place {
        NodePlace::HereOnTokio => {
            peerlink_host::Peerlink::start(tokio_rt()?, config, identity).await?
        }
        NodePlace::Here | NodePlace::HereSerial | NodePlace::Child => {
            Peerlink::start(config, identity).await?
        }
    })
}

/// A client node with a new identity that knows the server (its key and URL), and its events;
/// on tokio when the server is.
async fn client_node(
    name: &str,
    server: &TrustedPeer,
    place: NodePlace,
) -> Result<Client, BoxError> {
    let mut cfg = Config::ephemeral();
    cfg.node = node_config(TransportPreference::WebsocketOnly, true);
    cfg.offload_work = place != NodePlace::HereSerial;
    cfg.peers = vec![server.clone()];
    let handle = start_at(place, cfg, identity(name)?).await?;
    let events = handle.incoming().await?;
    Ok(Client { handle, events })
}

/// A running client node and its event stream.
struct Client {
    handle: Handle,
    events: peerlink_host::Events,
}

impl Client {
    /// One full handshake with `server`: the node gets a token (challenge, signature, verify),
    /// upgrades a WebSocket and runs the E2E handshake; done at `SessionEstablished`.
    async fn handshake(&self, server: &EntityId) -> Result<(), BoxError> {
        self.handle.init_websocket_connection(server).await?;
        let established = async {
            while let Ok(e) = self.events.recv().await {
                if matches!(e, Event::SessionEstablished { .. }) {
                    return true;
                }
            }
            false
        }
        .or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
            false
        })
        .await;
        if !established {
            return Err("a handshake did not finish in 10 s".into());
        }
        Ok(())
    }
}

/// Full handshakes per second against one node, **including client start-up**: each one starts
/// a new client node with a new identity (`Peerlink::start`: identity, listener, tasks), runs
/// [`Client::handshake`] and shuts the node down; `concurrency` at a time, for `secs`.
pub async fn handshakes_with_startup(
    secs: f64,
    concurrency: usize,
) -> Result<Handshakes, BoxError> {
    let (server, to) = HandshakeNode::start(NodePlace::Here).await?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (started, cpu0) = (Instant::now(), cpu_time());
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let to = to.clone();
            smol::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let client = client_node(&format!("hs-{w}-{n}"), &to, NodePlace::Here).await?;
                    let r = client.handshake(&to.entity).await;
                    let _ = client.handle.shutdown().await;
                    r?;
                    n += 1;
                }
                Ok::<u64, BoxError>(n)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    let rate = Handshakes::new(total, started.elapsed(), cpu_time().saturating_sub(cpu0), None);
    server.stop().await;
    Ok(rate)
}

/// Client nodes started per batch of [`handshakes`], per worker (at most 1024 in all).
const BATCH_PER_WORKER: usize = 64;

/// Full handshakes per second against one node, client start-up excluded: batches of client
/// nodes (each a new identity the server has never seen) are started before the timed window
/// and shut down after it; inside it each node runs one [`Client::handshake`] (a new token, a
/// new upgrade, a new E2E handshake), `concurrency` at a time, until `secs` of timed windows
/// have passed. Between batches the server drops the closed links before the next window opens.
/// With the node in a child process (`place`), its own CPU time over the timed windows is
/// measured too; the closing of the previous batch's links may fall into a window, so that
/// figure includes the node's share of a client leaving.
pub async fn handshakes(
    secs: f64,
    concurrency: usize,
    place: NodePlace,
) -> Result<Handshakes, BoxError> {
    crate::stats::raise_nofile()?;
    let (server, to) = HandshakeNode::start(place).await?;
    let budget = Duration::from_secs_f64(secs);
    let (mut timed, mut cpu, mut total) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut node_cpu = server.cpu_time().map(|_| Duration::ZERO);
    let batch = concurrency.max(1).saturating_mul(BATCH_PER_WORKER).min(1024);
    let mut batch_no = 0usize;
    while timed < budget {
        let mut clients = Vec::with_capacity(batch);
        for i in 0..batch {
            clients.push(client_node(&format!("hw-{batch_no}-{i}"), &to, place).await?);
        }
        batch_no += 1;
        let (queue, take) = smol::channel::unbounded();
        for c in clients {
            let _ = queue.try_send(c);
        }
        drop(queue);
        let end = Instant::now() + (budget - timed);
        let (t0, cpu0, node0) = (Instant::now(), cpu_time(), server.cpu_time());
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (take, sid) = (take.clone(), to.entity.clone());
                smol::spawn(async move {
                    let (mut n, mut done) = (0u64, Vec::new());
                    while Instant::now() < end {
                        let Ok(c) = take.try_recv() else { break };
                        let r = c.handshake(&sid).await;
                        done.push(c);
                        r?;
                        n += 1;
                    }
                    Ok::<_, BoxError>((n, done))
                })
            })
            .collect();
        let mut used = Vec::new();
        let mut failed = None;
        for w in workers {
            match w.await {
                Ok((n, done)) => {
                    total += n;
                    used.extend(done);
                }
                Err(e) => failed = Some(e),
            }
        }
        timed += t0.elapsed();
        cpu += cpu_time().saturating_sub(cpu0);
        if let Some(sum) = &mut node_cpu {
            // A window whose node CPU could not be read would make the figure per handshake
            // too low: better none at all.
            let (Some(before), Some(after)) = (node0, server.cpu_time()) else {
                return Err("the child node's CPU time could not be read".into());
            };
            *sum += after.saturating_sub(before);
        }
        used.extend(std::iter::from_fn(|| take.try_recv().ok()));
        let stops: Vec<_> = used
            .into_iter()
            .map(|c| smol::spawn(async move { c.handle.shutdown().await }))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        server.settle().await;
    }
    server.stop().await;
    let both = cpu.saturating_add(node_cpu.unwrap_or_default());
    Ok(Handshakes::new(total, timed, both, node_cpu))
}
