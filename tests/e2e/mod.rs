//! Shared helpers of the end-to-end tests: nodes on ephemeral loopback ports with short timers,
//! on the driver `PEERLINK_E2E_DRIVER` names, a fault-injecting TCP proxy, a raw WebSocket
//! client, and waiting on events with deadlines.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerlink_core::node::{NodeConfig, TransportStats};
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, Timestamp};
use peerlink_smol::{ApiError, Config, Handle, TrustedPeer};
use smol::channel::Receiver;
use smol::future::FutureExt as _;

/// Every wait in these tests gives up after this long, with a message saying what was awaited.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn identity(name: &str) -> Identity {
    peerlink_smol::keys::generate(EntityId::new(name).unwrap()).unwrap()
}

pub fn copy(i: &Identity) -> Identity {
    Identity::from_secret_bytes(i.id().clone(), &i.secret_bytes())
}

pub fn trusted(i: &Identity, url: Option<String>) -> TrustedPeer {
    TrustedPeer { entity: i.id().clone(), key: i.public_key(), url }
}

pub fn now_ts() -> Timestamp {
    Timestamp::from_unix_millis(
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    )
}

/// A client's configuration: reached through `relay` at `relay_url` (none: direct routes
/// only), trusting `peers` (a peer with a URL is a direct route).
pub fn client_config(
    pref: TransportPreference,
    relay: Option<(&Identity, &str)>,
    peers: &[(&Identity, Option<String>)],
) -> Config {
    let mut cfg = Config::ephemeral();
    cfg.node = fast_node(pref);
    cfg.relay = relay.map(|(r, url)| trusted(r, Some(url.to_owned())));
    cfg.peers = peers.iter().map(|(p, url)| trusted(p, url.clone())).collect();
    cfg
}

/// A core configuration with timers short enough for a test suite.
pub fn fast_node(pref: TransportPreference) -> NodeConfig {
    let mut n = NodeConfig { preference: pref, ..NodeConfig::default() };
    n.reconnect.initial = Duration::from_millis(100);
    n.reconnect.max = Duration::from_millis(400);
    n.websocket_stable_after = Duration::from_millis(300);
    n.poll_wait = Duration::from_secs(2);
    n.http_retry.initial = Duration::from_millis(100);
    n.http_retry.max = Duration::from_millis(400);
    n.stream.max_rto = Duration::from_secs(2);
    n.link_rate = RateLimit::per_minute(10_000);
    n
}

// ---------------------------------------------------------------------------------------------
// Nodes, on the driver under test.

/// Which driver runs the nodes of a test: `PEERLINK_E2E_DRIVER` names it for the whole run
/// ([`driver`]). One suite, every driver: a test that passes on one and fails on another has
/// found a bug in one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDriver {
    /// `peerlink_smol::Peerlink::start` (the default).
    Smol,
    /// `peerlink_tokio::Peerlink::start`, on the suite's shared multi-thread tokio runtime.
    Tokio,
    /// `peerlink_tokio::Peerlink::router`, nested under [`AXUM_PREFIX`] in an axum application
    /// served by `axum::serve` on the shared tokio runtime, next to a route of its own (`/`).
    Axum,
}

/// The variable that chooses the driver, and its values.
pub const DRIVER_VAR: &str = "PEERLINK_E2E_DRIVER";
const DRIVERS: [(&str, NodeDriver); 3] =
    [("smol", NodeDriver::Smol), ("tokio", NodeDriver::Tokio), ("axum", NodeDriver::Axum)];

/// Where the axum application mounts the node: its base URL is `http://ADDR/peerlink`.
pub const AXUM_PREFIX: &str = "/peerlink";

/// What the axum application serves at `/`, its own route next to the node's.
pub const AXUM_APP_PAGE: &str = "the application's own page";

/// The driver `PEERLINK_E2E_DRIVER` names (`smol`, the default, `tokio` or `axum`). Any other
/// value panics: a typo must not quietly run the suite on smol again.
pub fn driver() -> NodeDriver {
    static DRIVER: OnceLock<NodeDriver> = OnceLock::new();
    *DRIVER.get_or_init(|| {
        let Some(value) = std::env::var_os(DRIVER_VAR) else { return NodeDriver::Smol };
        let value = value.to_string_lossy();
        let found = DRIVERS.iter().find(|(name, _)| *name == value).map(|(_, d)| *d);
        found.unwrap_or_else(|| {
            let names: Vec<_> = DRIVERS.iter().map(|(name, _)| *name).collect();
            panic!("{DRIVER_VAR}={value:?} is not a driver; use one of: {}", names.join(", "))
        })
    })
}

/// Tests that do not run on a driver, each with the reason: `(binary::test, driver, reason)`.
/// A test calls [`skipped`] first. Keep it short: a test skipped here is a behaviour left
/// unchecked on that driver, and every entry is a bug to fix or a limit of the test itself.
pub const SKIPS: &[(&str, NodeDriver, &str)] = &[];

/// Whether `test` (`binary::test`) is listed in [`SKIPS`] for the driver under test; if so it
/// says so on stderr, past the test harness's capture so that a skip is never silent, and the
/// test returns at once.
pub fn skipped(test: &str) -> bool {
    let d = driver();
    let Some((_, _, reason)) = SKIPS.iter().find(|(t, on, _)| *t == test && *on == d) else {
        return false;
    };
    let line = format!("SKIPPED {test} on the {d:?} driver: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    true
}

/// The tokio runtime every tokio and axum node of the test binary runs on (multi-thread, like an
/// application's): nodes are started from `smol::block_on` and their handles used from anywhere.
pub fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("e2e-tokio")
            .build()
            .expect("the tests' tokio runtime")
    })
}

/// A running node of any driver: its [`Handle`] (through `Deref`), the URL peers reach it at and,
/// for an axum-mounted node, the application server around it.
#[derive(Clone, Debug)]
pub struct Node {
    handle: Handle,
    driver: NodeDriver,
    base_url: String,
    server: Option<Arc<AxumServer>>,
}

/// The axum application serving a mounted node: stopped by closing `stop`; `done` closes once
/// `axum::serve` has returned (its listener closed, its connections ended).
#[derive(Debug)]
struct AxumServer {
    stop: smol::channel::Sender<()>,
    done: Receiver<()>,
    /// Whether it serves TLS (`https`/`wss`).
    tls: bool,
}

impl std::ops::Deref for Node {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Node {
    /// The node's [`Handle`].
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The driver it runs on.
    pub fn driver(&self) -> NodeDriver {
        self.driver
    }

    /// The base URL peers reach it at: `Handle::base_url`, with the application's path for an
    /// axum-mounted node.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The path under which its endpoints are served: empty, or the axum application's prefix.
    pub fn prefix(&self) -> &'static str {
        if self.server.is_some() { AXUM_PREFIX } else { "" }
    }

    /// The request path of the endpoint `endpoint` (`/v1/messages`, `/ws/v1/peers`, ...).
    pub fn path(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.prefix())
    }

    /// `Handle::shutdown`, then, for an axum-mounted node, the application server's graceful
    /// shutdown, awaited (the node's router does not stop the application's server): its port
    /// is free and its connections closed when this returns.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        let stopped = self.handle.shutdown().await;
        if let Some(server) = &self.server {
            server.stop.close();
            within("the axum application's server to stop", async {
                let _ = server.done.recv().await;
            })
            .await;
        }
        stopped
    }
}

/// A node of the driver under test ([`driver`]); panics if it cannot start.
pub async fn start_node(config: Config, identity: Identity) -> Node {
    start_node_on(driver(), config, identity).await
}

/// A node of `driver`; panics if it cannot start.
pub async fn start_node_on(driver: NodeDriver, config: Config, identity: Identity) -> Node {
    let listen = config.listen;
    try_start_node_on(driver, config, identity)
        .await
        .unwrap_or_else(|e| panic!("a {driver:?} node on {listen}: {e}"))
}

/// A node of the driver under test, or why it did not start (its port taken, say).
pub async fn try_start_node(config: Config, identity: Identity) -> Result<Node, String> {
    try_start_node_on(driver(), config, identity).await
}

/// A node of `driver`, or why it did not start.
pub async fn try_start_node_on(
    driver: NodeDriver,
    config: Config,
    identity: Identity,
) -> Result<Node, String> {
    log_if_asked();
    let (handle, server) = match driver {
        NodeDriver::Smol => {
            let node = peerlink_smol::Peerlink::start(config, identity).await;
            (node.map_err(|e| e.to_string())?, None)
        }
        NodeDriver::Tokio => {
            // Started on the runtime, as an application's `#[tokio::main]` would; its join
            // handle is awaited from any executor.
            let task = tokio_runtime().spawn(peerlink_tokio::Peerlink::start(config, identity));
            let node = task.await.map_err(|e| e.to_string())?;
            (node.map_err(|e| e.to_string())?, None)
        }
        NodeDriver::Axum => {
            let (node, server) = tokio_runtime()
                .spawn(serve_axum(config, identity))
                .await
                .map_err(|e| e.to_string())??;
            (node, Some(Arc::new(server)))
        }
    };
    let base_url = match &server {
        None => handle.base_url(),
        Some(s) => {
            let scheme = if s.tls { "https" } else { "http" };
            format!("{scheme}://{}{AXUM_PREFIX}", handle.local_addr())
        }
    };
    Ok(Node { handle, driver, base_url, server })
}

/// With `RUST_LOG` set (`RUST_LOG=peerlink_host=trace`), the nodes' logs go to the failing
/// test's output: what a node did differently on one driver.
fn log_if_asked() {
    static LOG: OnceLock<()> = OnceLock::new();
    LOG.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_thread_names(true)
                .with_test_writer()
                .try_init();
        }
    });
}

/// An axum application on `config.listen` that serves its own page at `/` and the node under
/// [`AXUM_PREFIX`], over TLS when `config.tls` has a certificate (the application's server does
/// TLS: the node's router never sees it). Runs on the current tokio runtime.
async fn serve_axum(
    mut config: Config,
    identity: Identity,
) -> Result<(Handle, AxumServer), String> {
    use axum::serve::ListenerExt as _;
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            Some(peerlink_tokio::tls::server_config(cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // The node reports the address the application listens on (`Handle::local_addr`).
    config.listen = listener.local_addr().map_err(|e| e.to_string())?;
    let serves_tls = tls.is_some();
    let (handle, router) =
        peerlink_tokio::Peerlink::router(config, identity).await.map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { AXUM_APP_PAGE }))
        .nest(AXUM_PREFIX, router);
    let (stop, stop_rx) = smol::channel::bounded::<()>(1);
    let (done_tx, done) = smol::channel::bounded::<()>(1);
    let stopped = async move {
        let _ = stop_rx.recv().await;
    };
    // TCP_NODELAY on every connection, as axum's documentation advises (and as both drivers'
    // own listeners do).
    let nodelay = |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    };
    match tls {
        None => {
            let listener = listener.tap_io(nodelay);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                drop(done_tx);
            });
        }
        Some(tls) => {
            let listener =
                TlsListener { tcp: listener, tls: futures_rustls::TlsAcceptor::from(tls) };
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                drop(done_tx);
            });
        }
    }
    Ok((handle, AxumServer { stop, done, tls: serves_tls }))
}

/// A TLS listener for `axum::serve`: the handshake (futures-rustls, over tokio's socket through
/// `tokio_util::compat`) is done in `accept`, one at a time, each within 5 s.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: futures_rustls::TlsAcceptor,
}

type TlsIo = tokio_util::compat::Compat<
    futures_rustls::server::TlsStream<tokio_util::compat::Compat<tokio::net::TcpStream>>,
>;

impl axum::serve::Listener for TlsListener {
    type Io = TlsIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsIo, SocketAddr) {
        use tokio_util::compat::{FuturesAsyncReadCompatExt as _, TokioAsyncReadCompatExt as _};
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let handshake = self.tls.accept(tcp.compat());
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls.compat(), peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A relay trusting `clients`, on `listen` (port 0: ephemeral), on the driver under test.
pub async fn start_relay(relay: &Identity, clients: &[&Identity], listen: SocketAddr) -> Node {
    start_relay_on(driver(), relay, clients, listen).await
}

/// [`start_relay`] on `driver`.
pub async fn start_relay_on(
    driver: NodeDriver,
    relay: &Identity,
    clients: &[&Identity],
    listen: SocketAddr,
) -> Node {
    start_node_on(driver, relay_config(clients, listen), copy(relay)).await
}

/// A relay's configuration: trusting `clients`, on `listen`.
pub fn relay_config(clients: &[&Identity], listen: SocketAddr) -> Config {
    let mut cfg = Config::ephemeral();
    cfg.listen = listen;
    cfg.node = fast_node(TransportPreference::WebsocketFirst);
    cfg.peers = clients.iter().map(|c| trusted(c, None)).collect();
    cfg
}

/// A peer reachable through the relay at `relay_url`, trusting `peers` (routed via the relay),
/// on the driver under test.
pub async fn start_peer(
    me: &Identity,
    relay: &Identity,
    relay_url: &str,
    peers: &[&Identity],
    pref: TransportPreference,
) -> Node {
    start_peer_on(driver(), me, relay, relay_url, peers, pref).await
}

/// [`start_peer`] on `driver`.
pub async fn start_peer_on(
    driver: NodeDriver,
    me: &Identity,
    relay: &Identity,
    relay_url: &str,
    peers: &[&Identity],
    pref: TransportPreference,
) -> Node {
    let peers: Vec<_> = peers.iter().map(|p| (*p, None)).collect();
    let cfg = client_config(pref, Some((relay, relay_url)), &peers);
    start_node_on(driver, cfg, copy(me)).await
}

/// Awaits `f` with the suite's deadline; panics with `what` when it passes.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    f.or(async {
        smol::Timer::after(DEADLINE).await;
        panic!("timed out after {DEADLINE:?} waiting for {what}")
    })
    .await
}

/// The next event matching `pick`, skipping others.
pub async fn next_event<T>(
    rx: &peerlink_host::Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let e = rx.recv().await.expect("event stream closed");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
}

/// Receives `n` messages from `from` and returns their payloads, in arrival order. Events
/// other than messages are skipped; a message from anyone else fails the test.
pub async fn messages(rx: &peerlink_host::Events, from: &EntityId, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        let what = format!("message {} of {n} from {from}", out.len() + 1);
        let p = next_event(rx, &what, |e| match e {
            Event::Message { from: f, payload, .. } => {
                assert_eq!(f, from, "message from an unexpected sender");
                Some(payload.clone())
            }
            Event::Failed { to, id, reason, .. } => {
                panic!("message {id:?} to {to} failed: {reason:?}")
            }
            _ => None,
        })
        .await;
        out.push(p);
    }
    out
}

/// Asserts that no message arrives on `rx` within `quiet` (a check for duplicates after all
/// expected messages arrived; not a synchronisation).
pub async fn assert_no_more_messages(rx: &peerlink_host::Events, quiet: Duration) {
    let extra = async {
        loop {
            if let Ok(Event::Message { payload, .. }) = rx.recv().await {
                return Some(payload);
            }
        }
    }
    .or(async {
        smol::Timer::after(quiet).await;
        None
    })
    .await;
    assert!(extra.is_none(), "duplicate or unexpected message: {:?}", extra.map(|p| p.len()));
}

pub fn payload(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i:04}").into_bytes()
}

/// Polls `f` until it returns `Some`, or panics after the deadline.
pub async fn poll_until<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

pub fn stats_delta(after: &TransportStats, before: &TransportStats) -> (u64, u64) {
    (
        after.ws_messages_sent - before.ws_messages_sent,
        after.http_messages_sent - before.http_messages_sent,
    )
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting proxy.

#[derive(Default)]
struct ProxyState {
    conns: Mutex<Vec<TcpStream>>,
    block_ws: AtomicBool,
    refuse_all: AtomicBool,
    ws_attempts: AtomicU64,
    ws_refused: AtomicU64,
    connections: AtomicU64,
    /// Everything that crossed, both ways, when recording.
    recording: Option<Mutex<Vec<u8>>>,
}

/// A TCP proxy on an ephemeral loopback port in front of a node (std threads). It can kill
/// every proxied connection, refuse WebSocket upgrades (it cuts a connection on which a
/// `GET /ws/` request starts, under the node's path prefix) while HTTP passes, and record every
/// byte that crossed.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    /// The node's path prefix (an axum-mounted node's).
    prefix: &'static str,
    /// The start of a WebSocket upgrade's request line: `GET {prefix}/ws/`.
    upgrade: Arc<Vec<u8>>,
    state: Arc<ProxyState>,
}

impl Proxy {
    /// A proxy in front of `node` (its plain-TCP listener).
    pub fn start(node: &Node, record: bool) -> Proxy {
        Proxy::to(node.local_addr(), node.prefix(), record)
    }

    /// A proxy in front of any TCP server at `target` (a Redis, say); `prefix` is the path
    /// under which WebSocket upgrades are recognised (empty for a server that has none).
    pub fn to(target: SocketAddr, prefix: &'static str, record: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            recording: record.then(|| Mutex::new(Vec::new())),
            ..ProxyState::default()
        });
        let upgrade = Arc::new(format!("GET {prefix}/ws/").into_bytes());
        let proxy = Proxy { addr, target, prefix, upgrade, state };
        let p = proxy.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let p = p.clone();
                std::thread::spawn(move || p.serve(conn));
            }
        });
        proxy
    }

    /// The node's base URL through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuse (drop at once) new WebSocket upgrades while `on`.
    pub fn block_websocket(&self, on: bool) {
        self.state.block_ws.store(on, Ordering::SeqCst);
    }

    /// Drop every new connection while `on`.
    pub fn refuse_all(&self, on: bool) {
        self.state.refuse_all.store(on, Ordering::SeqCst);
    }

    /// Cuts every connection proxied so far.
    pub fn kill_all(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// WebSocket upgrades attempted through the proxy (refused ones included).
    pub fn ws_attempts(&self) -> u64 {
        self.state.ws_attempts.load(Ordering::SeqCst)
    }

    /// TCP connections accepted through the proxy.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn ws_refused(&self) -> u64 {
        self.state.ws_refused.load(Ordering::SeqCst)
    }

    pub fn recorded(&self) -> Vec<u8> {
        self.state.recording.as_ref().map(|r| r.lock().unwrap().clone()).unwrap_or_default()
    }

    fn serve(&self, conn: TcpStream) {
        self.state.connections.fetch_add(1, Ordering::SeqCst);
        if self.state.refuse_all.load(Ordering::SeqCst) {
            return;
        }
        let Ok(up) = TcpStream::connect(self.target) else { return };
        let _ = up.set_nodelay(true);
        let _ = conn.set_nodelay(true);
        {
            let mut conns = self.state.conns.lock().unwrap();
            conns.push(conn.try_clone().unwrap());
            conns.push(up.try_clone().unwrap());
        }
        let (c2, u2) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
        let p = self.clone();
        std::thread::spawn(move || p.pump(c2, u2, true));
        self.pump(up, conn, false);
    }

    /// Whether `chunk` from the client starts a WebSocket upgrade that must be refused (counted
    /// either way). The upgrade may be the first request or follow others on the connection
    /// (peerlink fetches its token on the connection it then upgrades, spec §23.2).
    fn refuses(&self, chunk: &[u8]) -> bool {
        let needle = &self.upgrade[..];
        let upgrades = chunk.windows(needle.len()).filter(|w| *w == needle).count() as u64;
        if upgrades == 0 {
            return false;
        }
        self.state.ws_attempts.fetch_add(upgrades, Ordering::SeqCst);
        if self.state.block_ws.load(Ordering::SeqCst) {
            self.state.ws_refused.fetch_add(upgrades, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn pump(&self, mut from: TcpStream, mut to: TcpStream, from_client: bool) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if from_client && self.refuses(&buf[..n]) {
                        break;
                    }
                    if let Some(r) = &self.state.recording {
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client: the auth endpoints over ureq, then a sync tungstenite WebSocket.

pub type RawWs = tungstenite::WebSocket<TcpStream>;

/// Gets a token for `me` from the node at `base_url` (spec §23.2).
pub fn token(base_url: &str, me: &Identity, node: &EntityId) -> String {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!(
        "{base_url}/auth/token?entity_id={}&pubkey={}",
        me.id().as_str(),
        me.public_key().to_b64u()
    );
    let mut r = agent.get(&url).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let ch = v["challenge"].as_str().unwrap().to_owned();
    let sig = peerlink_core::auth::sign_challenge(me, node, &ch).unwrap();
    let body =
        serde_json::json!({"entity_id": me.id().as_str(), "challenge": ch, "signature": sig});
    let mut r = agent
        .post(&format!("{base_url}/auth/verify"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Tries a WebSocket upgrade on `path` (with the node's prefix: [`Node::path`]) with `token` as
/// a bearer header; the HTTP status of a refusal, or the socket.
pub fn ws_connect(addr: SocketAddr, path: &str, token: &str) -> Result<RawWs, u16> {
    ws_connect_with(addr, path, token, &[])
}

/// [`ws_connect`] with more request headers (each appended, so a name may repeat).
pub fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    token: &str,
    headers: &[(&'static str, &str)],
) -> Result<RawWs, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (name, value) in headers {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

/// What a raw client saw next.
#[derive(Debug)]
pub enum Seen {
    /// A text frame parsed as JSON.
    Json(serde_json::Value),
    /// A close frame: code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

pub fn next_seen(ws: &mut RawWs) -> Seen {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                return Seen::Json(serde_json::from_str(t.as_str()).expect("node sent bad JSON"));
            }
            Ok(tungstenite::Message::Close(f)) => {
                return f.map_or(Seen::Closed(1005, String::new()), |f| {
                    Seen::Closed(u16::from(f.code), f.reason.to_string())
                });
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the node sent nothing for 10 s")
            }
            Err(_) => return Seen::Gone,
        }
    }
}

/// The next `ERROR` code the node sent (skipping other frames); panics on a close.
pub fn next_error(ws: &mut RawWs) -> String {
    loop {
        match next_seen(ws) {
            Seen::Json(v) if v["type"] == "ERROR" => {
                return v["payload"]["code"].as_str().unwrap().to_owned();
            }
            Seen::Json(_) => {}
            other => panic!("expected an ERROR, the link ended: {other:?}"),
        }
    }
}

/// Reads until the node closes; the close code and reason (`Gone`: no close frame).
pub fn until_closed(ws: &mut RawWs) -> Seen {
    loop {
        match next_seen(ws) {
            Seen::Json(_) => {}
            other => return other,
        }
    }
}

pub fn rng() -> rand_chacha::ChaCha20Rng {
    use rand_core::SeedableRng;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    rand_chacha::ChaCha20Rng::from_seed(seed)
}

/// `GET path` at `addr` over plain HTTP/1.1 without a token: the body, if the status is 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// `n` messages from `from` at the blocking client, in arrival order.
pub fn client_messages(c: &peerlink_blocking::Client, from: &EntityId, n: usize) -> Vec<Vec<u8>> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match c.recv_timeout(left) {
            Some(Event::Message { from: f, payload, .. }) => {
                assert_eq!(&f, from);
                out.push(payload);
            }
            Some(Event::Failed { id, reason, .. }) => panic!("{id:?} failed: {reason:?}"),
            Some(_) => {}
            None => panic!("only {} of {n} messages from {from} within {DEADLINE:?}", out.len()),
        }
    }
    out
}
