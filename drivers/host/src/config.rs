//! The driver's configuration: the core's [`NodeConfig`] plus what only a driver has (sockets,
//! queues, TLS, timeouts). `config_file` reads it from TOML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use peerlink_core::auth::AuthConfig;
use peerlink_core::node::NodeConfig;
use peerlink_core::{EntityId, NodeAddr, PublicKey, TrustPolicy, TrustStore};

use crate::broker::BrokerUrl;

/// The port `peerlink serve` listens on by default.
pub const DEFAULT_PORT: u16 = 7420;

/// Bounds the driver itself enforces, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLimits {
    /// TCP connections served at once; past it new connections are closed at once. Default 10 000.
    pub max_connections: usize,
    /// Time for the TLS handshake, for each request's headers (so an idle keep-alive HTTP
    /// connection is closed after it too), and for a WebSocket upgrade. Default 5 s. Idle
    /// WebSocket links are the core's business: `PING` after `ping_interval`, closed after
    /// `pong_grace` more.
    pub handshake_timeout: Duration,
    /// Frames queued for writing per WebSocket link; a link whose queue is full is a slow reader
    /// and is disconnected. Default 256.
    pub send_queue_frames: usize,
    /// tungstenite's read buffer per WebSocket, in bytes. Default 4 KiB (the default of 128 KiB
    /// costs about 130 KiB per idle connection).
    pub ws_read_buffer_bytes: usize,
    /// Inputs waiting for the node task (frames, HTTP calls, API commands); senders wait when it
    /// is full. Default 1024.
    pub input_queue: usize,
    /// Events queued for the application's `Handle::incoming` stream. Default
    /// 1024. It is also the node's `max_events` when smaller: an application that does not take
    /// its events makes the node refuse data frames, and their senders re-send them later
    /// (backpressure reaches the peers, memory does not grow, nothing is lost).
    pub event_queue: usize,
    /// Timeout of one outbound HTTP request, not counting long-polls (which get the node's
    /// `poll_wait` plus this). Default 10 s.
    pub http_timeout: Duration,
    /// Largest auth request or response body, in bytes. Default 16 KiB.
    pub max_auth_body_bytes: usize,
    /// Cached bearer tokens for other nodes. Default 1024. Also bounds the nodes with idle HTTP
    /// connections kept for reuse.
    pub max_cached_tokens: usize,
    /// Idle keep-alive HTTP connections kept per node for the next post or long-poll to it.
    /// Default 16 (the core's HTTP requests in flight per next hop).
    pub max_idle_http_per_node: usize,
    /// How long an idle kept HTTP connection may be reused: older ones are closed instead, well
    /// before the other node's own idle timeout could close one under a request. Default 2 s
    /// (peerlink closes idle connections after `handshake_timeout`, 5 s).
    pub http_idle_reuse: Duration,
}

impl Default for DriverLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(5),
            send_queue_frames: 256,
            ws_read_buffer_bytes: 4096,
            input_queue: 1024,
            event_queue: 1024,
            http_timeout: Duration::from_secs(10),
            max_auth_body_bytes: 16 * 1024,
            max_cached_tokens: 1024,
            max_idle_http_per_node: 16,
            http_idle_reuse: Duration::from_secs(2),
        }
    }
}

/// TLS files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM) served by the listener.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of the certificate.
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted when dialling `https://`/`wss://` peers.
    pub ca_file: Option<PathBuf>,
}

/// A peer this node knows: its key, and optionally where it is reached directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPeer {
    /// Its entity id.
    pub entity: EntityId,
    /// Its Ed25519 public key.
    pub key: PublicKey,
    /// Its HTTP base URL, when it runs a node of its own that this node dials directly.
    pub url: Option<String>,
}

/// Everything `Peerlink::start` needs besides the identity.
#[derive(Debug, Clone)]
pub struct Config {
    /// The core's configuration.
    pub node: NodeConfig,
    /// Challenge and token lifetimes.
    pub auth: AuthConfig,
    /// The listen address; port 0 picks a free port. Default `127.0.0.1:7420`.
    pub listen: SocketAddr,
    /// Refuse to listen without TLS on a non-loopback address. Default true.
    pub require_tls: bool,
    /// Bind the listener with `SO_REUSEPORT`, so that several nodes (the workers of one
    /// machine, each a node of one cluster: `peerlink serve --workers N`) share its port and
    /// the kernel spreads connections among them. Default false.
    pub reuse_port: bool,
    /// TLS files.
    pub tls: TlsFiles,
    /// Driver bounds.
    pub limits: DriverLimits,
    /// Run the node's public-key work (answering a `HANDSHAKE_INIT`, checking signatures) on the
    /// runtime's other tasks, in parallel, instead of on the node task (spec §7.12,
    /// `docs/drivers.md`). Sets the node's `NodeConfig::offload_work`, whatever `node` says.
    /// Default true.
    pub offload_work: bool,
    /// Allowlist (default) or open trust.
    pub trust_policy: TrustPolicy,
    /// Trusted peers; those with a URL get a direct route.
    pub peers: Vec<TrustedPeer>,
    /// The relay every peer without a route of its own is reached through.
    pub relay: Option<TrustedPeer>,
    /// More base URLs the relay is served at: the other nodes of its cluster, sharing its
    /// identity (`docs/cluster.md`). When the relay's current URL fails twice in a row, the
    /// node moves to the next, in turn, and resumes its sessions there. Default: none.
    pub relay_failover_urls: Vec<String>,
    /// Web page origins (`https://app.example`, or `"*"`) allowed to open WebSocket links; an
    /// upgrade from a page whose origin is not listed is refused with 403. Clients that send
    /// no `Origin` (every non-browser client) are judged by their token alone. Default: none.
    pub allowed_origins: Vec<String>,
    /// Run as one node of a cluster sharing a Redis broker (`docs/cluster.md`). Default: none,
    /// the node runs alone.
    pub cluster: Option<ClusterSettings>,
    /// Where and how the node keeps its durable state (`docs/storage.md`). Default: in memory
    /// (nothing survives a restart); the `peerlink` command picks redb unless told otherwise.
    pub storage: StorageSettings,
}

/// Which store keeps a node's durable state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// A map in memory: nothing survives a restart (the default of [`Config::default`]).
    #[default]
    Memory,
    /// A redb file (`store.redb` in the data directory unless [`StorageSettings::path`] says
    /// otherwise): what was committed survives a restart, as [`Fsync`] says.
    Redb,
}

/// When a commit to a file store is flushed to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Every commit is flushed (fsync) before it counts as done: it survives a process crash and
    /// a power loss. The default.
    #[default]
    Always,
    /// Commits are never flushed while the node runs, only when the store is closed cleanly: a
    /// process crash or a power loss loses every commit since the store was opened or last
    /// closed (`docs/storage.md`). For tests and throw-away relays.
    Never,
}

/// The durable store's settings (`[storage]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Memory (default) or a redb file.
    pub kind: StorageKind,
    /// The store file. Default: `store.redb` in the data directory.
    pub path: Option<PathBuf>,
    /// When commits are flushed to the disk. Default [`Fsync::Always`].
    pub fsync: Fsync,
    /// Bytes of keys and values the store may hold; a commit that would pass it is refused.
    /// Default 1 GiB.
    pub max_bytes: u64,
    /// Entries the store may hold; a commit that would pass it is refused. Default 1 000 000.
    pub max_entries: u64,
    /// How long a relay keeps messages for an offline recipient. Default 24 h.
    pub mailbox_ttl: Duration,
}

/// The store file's name in the data directory when [`StorageSettings::path`] is not given.
pub const DEFAULT_STORE_FILE: &str = "store.redb";

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            kind: StorageKind::Memory,
            path: None,
            fsync: Fsync::Always,
            max_bytes: 1 << 30,
            max_entries: 1_000_000,
            mailbox_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl StorageSettings {
    /// The store file: [`path`](Self::path), else `store.redb` in `data_dir`.
    pub fn file_in(&self, data_dir: &std::path::Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| data_dir.join(DEFAULT_STORE_FILE))
    }
}

/// Settings of a node that is one of a cluster sharing a Redis broker (`docs/cluster.md`,
/// spec §25). The node's relay limits (mailbox bounds, frame size) apply to the shared
/// structures too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The broker: `redis://[[user]:password@]host[:port][/db]`, or `rediss://` (TLS, checked
    /// against `[tls] ca_file`).
    pub redis_url: BrokerUrl,
    /// This node's name in the cluster, unique among its nodes. Default: its entity id (nodes
    /// that share one relay identity must each be given a name).
    pub name: Option<EntityId>,
    /// Prefix of every key and channel the cluster uses, so that several clusters can share
    /// one Redis. Default `peerlink`.
    pub prefix: String,
    /// Bound of connecting and of each request to the broker. Default 2 s.
    pub timeout: Duration,
    /// Wait between attempts to reach a lost broker. Default 1 s.
    pub retry_every: Duration,
    /// How often presence records are refreshed (they expire after three times this).
    /// Default 10 s.
    pub refresh_every: Duration,
    /// Entities the presence map holds at most. Default 100 000.
    pub max_presence: usize,
    /// Requests to the broker queued by the node; past it they are dropped and counted (the
    /// end-to-end layer re-sends what they carried). Default 4096.
    pub request_queue: usize,
    /// Publications from the broker queued for the node; past it they are dropped and counted.
    /// Default 4096.
    pub publication_queue: usize,
}

impl ClusterSettings {
    /// The defaults, with the broker at `redis_url`.
    pub fn new(redis_url: BrokerUrl) -> Self {
        Self {
            redis_url,
            name: None,
            prefix: "peerlink".to_owned(),
            timeout: Duration::from_secs(2),
            retry_every: Duration::from_secs(1),
            refresh_every: Duration::from_secs(10),
            max_presence: 100_000,
            request_queue: 4096,
            publication_queue: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            auth: AuthConfig::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            require_tls: true,
            reuse_port: false,
            tls: TlsFiles::default(),
            limits: DriverLimits::default(),
            offload_work: true,
            trust_policy: TrustPolicy::Allowlist,
            peers: Vec::new(),
            relay: None,
            relay_failover_urls: Vec::new(),
            allowed_origins: Vec::new(),
            cluster: None,
            storage: StorageSettings::default(),
        }
    }
}

impl Config {
    /// A configuration listening on `127.0.0.1:0` (an ephemeral port), for tests and embedding.
    pub fn ephemeral() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Self::default() }
    }

    /// The trust store these settings describe (the relay included).
    pub fn trust_store(&self) -> TrustStore {
        let mut trust = TrustStore::new(self.trust_policy);
        for p in self.peers.iter().chain(self.relay.iter()) {
            trust.insert(p.entity.clone(), p.key);
        }
        trust
    }

    /// The direct routes: every trusted peer with a URL.
    pub fn routes(&self) -> Vec<NodeAddr> {
        self.peers
            .iter()
            .filter_map(|p| {
                p.url.as_ref().map(|u| NodeAddr { entity: p.entity.clone(), base_url: u.clone() })
            })
            .collect()
    }
}
