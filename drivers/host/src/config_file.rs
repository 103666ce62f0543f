//! The TOML configuration file (`peerlink.example.toml` documents every field). Every field is
//! optional; what is absent keeps the default of [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, PublicKey, TrustPolicy};
use serde::Deserialize;

use crate::broker::BrokerUrl;
use crate::config::{ClusterSettings, Config, Fsync, StorageKind, StorageSettings, TrustedPeer};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The TOML does not parse or has unknown fields.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The file's root.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` to listen on.
    pub listen: Option<SocketAddr>,
    /// Data directory holding the identity.
    pub data_dir: Option<PathBuf>,
    /// Entity id given to an identity created on first run.
    pub entity_id: Option<String>,
    /// Refuse plain listeners off loopback.
    pub require_tls: Option<bool>,
    /// `"allowlist"` (default) or `"open"`.
    pub trust: Option<String>,
    /// Web page origins allowed to open WebSocket links (`"*"`: all).
    pub allowed_origins: Option<Vec<String>>,
    /// TLS files.
    #[serde(default)]
    pub tls: TlsSection,
    /// Transport settings.
    #[serde(default)]
    pub transport: TransportSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Token lifetime.
    #[serde(default)]
    pub auth: AuthSection,
    /// Trusted peers.
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    /// The relay.
    pub relay: Option<PeerSection>,
    /// Run as one node of a cluster (`docs/cluster.md`).
    pub cluster: Option<ClusterSection>,
    /// The durable store (`docs/storage.md`).
    #[serde(default)]
    pub storage: StorageSection,
}

/// `[storage]`: where and how the node keeps its durable state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `"redb"` or `"memory"` (default: memory, but the `peerlink` command picks redb).
    pub kind: Option<String>,
    /// The store file (default: `store.redb` in the data directory).
    pub path: Option<PathBuf>,
    /// `"always"` (default: every commit is flushed to the disk) or `"never"`.
    pub fsync: Option<String>,
    /// Bytes of keys and values the store may hold (default 1 GiB).
    pub max_bytes: Option<u64>,
    /// Entries the store may hold (default 1 000 000).
    pub max_entries: Option<u64>,
    /// Seconds a relay keeps messages for an offline recipient (default 86 400: 24 h).
    pub mailbox_ttl_secs: Option<u64>,
}

impl StorageSection {
    fn to_settings(&self) -> Result<StorageSettings, ConfigError> {
        let kind = match self.kind.as_deref() {
            None | Some("memory") => StorageKind::Memory,
            Some("redb") => StorageKind::Redb,
            Some(other) => {
                return Err(bad(
                    "storage.kind",
                    format!("{other:?} is not \"redb\" or \"memory\""),
                ));
            }
        };
        let mut s = StorageSettings { kind, ..StorageSettings::default() };
        if let Some(path) = &self.path {
            if path.as_os_str().is_empty() {
                return Err(bad("storage.path", "must not be empty"));
            }
            s.path = Some(path.clone());
        }
        s.fsync = match self.fsync.as_deref() {
            None | Some("always") => Fsync::Always,
            Some("never") => Fsync::Never,
            Some(other) => {
                return Err(bad(
                    "storage.fsync",
                    format!("{other:?} is not \"always\" or \"never\""),
                ));
            }
        };
        let positive = |v: u64, what: &str| {
            if v == 0 { Err(bad(what, "must be at least 1")) } else { Ok(v) }
        };
        if let Some(v) = self.max_bytes {
            s.max_bytes = positive(v, "storage.max_bytes")?;
        }
        if let Some(v) = self.max_entries {
            s.max_entries = positive(v, "storage.max_entries")?;
        }
        if let Some(v) = self.mailbox_ttl_secs {
            s.mailbox_ttl = Duration::from_secs(positive(v, "storage.mailbox_ttl_secs")?);
        }
        Ok(s)
    }
}

/// `[cluster]`: this node is one of a cluster sharing a Redis broker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[[user]:password@]host[:port][/db]` or `rediss://…` (required).
    pub redis_url: String,
    /// This node's name in the cluster (default: its entity id).
    pub name: Option<String>,
    /// Prefix of the cluster's Redis keys and channels (default `peerlink`).
    pub prefix: Option<String>,
    /// Bound of connecting and of each request to Redis, milliseconds (default 2000).
    pub timeout_ms: Option<u64>,
    /// Wait between attempts to reach a lost Redis, milliseconds (default 1000).
    pub retry_ms: Option<u64>,
    /// Presence refresh period, seconds (default 10; records expire after three).
    pub refresh_secs: Option<u64>,
    /// Entities the presence map holds at most (default 100 000).
    pub max_presence: Option<usize>,
}

impl ClusterSection {
    fn to_settings(&self) -> Result<ClusterSettings, ConfigError> {
        let url = BrokerUrl::parse(&self.redis_url).map_err(|e| bad("cluster.redis_url", e))?;
        let mut c = ClusterSettings::new(url);
        if let Some(name) = &self.name {
            c.name = Some(EntityId::new(name.clone()).map_err(|e| bad("cluster.name", e))?);
        }
        if let Some(prefix) = &self.prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 64
                && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return Err(bad("cluster.prefix", "1 to 64 of A-Z a-z 0-9 _ - ."));
            }
            c.prefix = prefix.clone();
        }
        let positive = |v: u64, what: &str| {
            if v == 0 { Err(bad(what, "must be at least 1")) } else { Ok(v) }
        };
        if let Some(v) = self.timeout_ms {
            c.timeout = Duration::from_millis(positive(v, "cluster.timeout_ms")?);
        }
        if let Some(v) = self.retry_ms {
            c.retry_every = Duration::from_millis(positive(v, "cluster.retry_ms")?);
        }
        if let Some(v) = self.refresh_secs {
            c.refresh_every = Duration::from_secs(positive(v, "cluster.refresh_secs")?);
        }
        if let Some(v) = self.max_presence {
            c.max_presence = v;
        }
        Ok(c)
    }
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain PEM.
    pub cert_file: Option<PathBuf>,
    /// Private key PEM.
    pub key_file: Option<PathBuf>,
    /// CA PEM for dialling TLS peers.
    pub ca_file: Option<PathBuf>,
}

/// `[transport]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    /// `WEBSOCKET_ONLY`, `WEBSOCKET_FIRST`, `HTTP_FIRST` or `HTTP_ONLY`.
    pub preference: Option<TransportPreference>,
    /// `[transport.websocket]`.
    #[serde(default)]
    pub websocket: WebsocketSection,
    /// `[transport.http]`.
    #[serde(default)]
    pub http: HttpSection,
}

/// `[transport.websocket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebsocketSection {
    /// Largest frame/message, bytes.
    pub max_frame_bytes: Option<usize>,
    /// Offer and accept the binary envelope on links and in HTTP bodies (spec §27, §27.7;
    /// default true).
    pub binary: Option<bool>,
    /// tungstenite read buffer, bytes.
    pub read_buffer_bytes: Option<usize>,
    /// Frames queued per link before it counts as a slow reader.
    pub send_queue_frames: Option<usize>,
    /// Seconds of silence before a `PING`.
    pub ping_interval_secs: Option<u64>,
    /// Further seconds before a silent link is closed.
    pub pong_grace_secs: Option<u64>,
    /// Seconds a link must stay up before traffic returns to it.
    pub stable_after_secs: Option<u64>,
}

/// `[transport.http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Long-poll hold, seconds.
    pub poll_wait_secs: Option<u64>,
    /// Largest body, bytes: at least `max_frame_bytes` + 4.
    pub max_body_bytes: Option<usize>,
    /// Outbound request timeout, seconds.
    pub timeout_secs: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// TCP connections at once.
    pub max_connections: Option<usize>,
    /// WebSocket links at once.
    pub max_links: Option<usize>,
    /// TLS handshake / request header / upgrade time, seconds.
    pub handshake_timeout_secs: Option<u64>,
    /// Frames per minute per inbound link or HTTP caller.
    pub frames_per_minute: Option<u32>,
    /// Events queued for the application.
    pub event_queue: Option<usize>,
    /// Inputs queued for the node task.
    pub input_queue: Option<usize>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Token lifetime, seconds.
    pub token_lifetime_secs: Option<u64>,
}

/// `[[peers]]` and `[relay]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Entity id.
    pub entity_id: String,
    /// Ed25519 public key, b64u.
    pub public_key: String,
    /// HTTP base URL, when reached directly.
    pub url: Option<String>,
    /// `[relay]` only: more base URLs the relay is served at (the other nodes of its cluster),
    /// tried in turn when the current one fails.
    pub failover_urls: Option<Vec<String>>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{what}: {e}"))
}

impl PeerSection {
    fn to_peer(&self) -> Result<TrustedPeer, ConfigError> {
        Ok(TrustedPeer {
            entity: EntityId::new(self.entity_id.clone()).map_err(|e| bad("entity_id", e))?,
            key: PublicKey::from_b64u(&self.public_key).map_err(|e| bad("public_key", e))?,
            url: self.url.clone(),
        })
    }
}

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
        Self::parse(&text)
    }

    /// The driver configuration, defaults filled in; checked by the core's `validate`.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let secs = Duration::from_secs;
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(r) = self.require_tls {
            c.require_tls = r;
        }
        c.trust_policy = match self.trust.as_deref() {
            None | Some("allowlist") => TrustPolicy::Allowlist,
            Some("open") => TrustPolicy::Open,
            Some(other) => return Err(bad("trust", format!("unknown policy {other:?}"))),
        };
        if let Some(origins) = &self.allowed_origins {
            c.allowed_origins = origins.clone();
        }
        c.tls.cert_file = self.tls.cert_file.clone();
        c.tls.key_file = self.tls.key_file.clone();
        c.tls.ca_file = self.tls.ca_file.clone();
        let t = &self.transport;
        if let Some(p) = t.preference {
            c.node.preference = p;
        }
        let ws = &t.websocket;
        if let Some(v) = ws.max_frame_bytes {
            c.node.limits.max_frame_bytes = v;
        }
        if let Some(v) = ws.binary {
            c.node.binary_links = v;
        }
        if let Some(v) = ws.read_buffer_bytes {
            c.limits.ws_read_buffer_bytes = v;
        }
        if let Some(v) = ws.send_queue_frames {
            c.limits.send_queue_frames = v;
        }
        if let Some(v) = ws.ping_interval_secs {
            c.node.ping_interval = secs(v);
        }
        if let Some(v) = ws.pong_grace_secs {
            c.node.pong_grace = secs(v);
        }
        if let Some(v) = ws.stable_after_secs {
            c.node.websocket_stable_after = secs(v);
        }
        if let Some(v) = t.http.poll_wait_secs {
            c.node.poll_wait = secs(v);
        }
        if let Some(v) = t.http.max_body_bytes {
            c.node.max_http_body_bytes = v;
        }
        if let Some(v) = t.http.timeout_secs {
            c.limits.http_timeout = secs(v);
        }
        let l = &self.limits;
        if let Some(v) = l.max_connections {
            c.limits.max_connections = v;
        }
        if let Some(v) = l.max_links {
            c.node.max_links = v;
        }
        if let Some(v) = l.handshake_timeout_secs {
            c.limits.handshake_timeout = secs(v);
        }
        if let Some(v) = l.frames_per_minute {
            c.node.link_rate = RateLimit::per_minute(v);
        }
        if let Some(v) = l.event_queue {
            c.limits.event_queue = v;
        }
        if let Some(v) = l.input_queue {
            c.limits.input_queue = v;
        }
        if let Some(v) = self.auth.token_lifetime_secs {
            c.auth.token_lifetime = secs(v);
        }
        for p in &self.peers {
            c.peers.push(p.to_peer()?);
        }
        if let Some(r) = &self.relay {
            c.relay = Some(r.to_peer()?);
            c.relay_failover_urls = r.failover_urls.clone().unwrap_or_default();
        }
        if self.peers.iter().any(|p| p.failover_urls.is_some()) {
            return Err(bad("peers.failover_urls", "only [relay] has failover URLs"));
        }
        if let Some(cluster) = &self.cluster {
            c.cluster = Some(cluster.to_settings()?);
        }
        c.storage = self.storage.to_settings()?;
        c.node.validate().map_err(|e| bad("node", e))?;
        c.auth.validate().map_err(|e| bad("auth", e))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = FileConfig::parse("").unwrap().to_config().unwrap();
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.node.preference, TransportPreference::WebsocketFirst);
        assert_eq!(c.node.limits.max_frame_bytes, 1 << 20);
        assert_eq!(c.limits.ws_read_buffer_bytes, 4096);
    }

    #[test]
    fn a_cluster_section_makes_a_cluster_node() {
        let text = r#"
            [cluster]
            redis_url = "redis://peerlink:s3cret@10.0.0.5:6380/2"
            name = "node-1"
            prefix = "prod"
            timeout_ms = 500
            refresh_secs = 5
        "#;
        let c = FileConfig::parse(text).unwrap().to_config().unwrap().cluster.unwrap();
        assert_eq!((c.redis_url.host(), c.redis_url.port()), ("10.0.0.5", 6380));
        assert!(!c.redis_url.to_string().contains("s3cret"), "{}", c.redis_url);
        assert_eq!(c.name.as_ref().map(EntityId::as_str), Some("node-1"));
        assert_eq!(c.prefix, "prod");
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.refresh_every, Duration::from_secs(5));
        assert_eq!(c.retry_every, Duration::from_secs(1), "absent fields keep their defaults");
        assert!(FileConfig::parse("").unwrap().to_config().unwrap().cluster.is_none());
        for bad in [
            "[cluster]\nname = \"n\"",
            "[cluster]\nredis_url = \"http://x\"",
            "[cluster]\nredis_url = \"redis://x\"\nname = \"a b\"",
            "[cluster]\nredis_url = \"redis://x\"\nprefix = \"a:b\"",
            "[cluster]\nredis_url = \"redis://x\"\ntimeout_ms = 0",
            "[cluster]\nredis_url = \"redis://x\"\nport = 1",
        ] {
            let parsed = FileConfig::parse(bad).and_then(|f| f.to_config());
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn a_storage_section_sets_the_store() {
        let text = r#"
            [storage]
            kind = "redb"
            path = "/var/lib/peerlink/node.redb"
            fsync = "never"
            max_bytes = 1048576
            max_entries = 500
            mailbox_ttl_secs = 3600
        "#;
        let s = FileConfig::parse(text).unwrap().to_config().unwrap().storage;
        assert_eq!(s.kind, StorageKind::Redb);
        assert_eq!(s.path.as_deref(), Some(Path::new("/var/lib/peerlink/node.redb")));
        assert_eq!(s.fsync, Fsync::Never);
        assert_eq!((s.max_bytes, s.max_entries), (1 << 20, 500));
        assert_eq!(s.mailbox_ttl, Duration::from_secs(3600));
        let none = FileConfig::parse("").unwrap().to_config().unwrap().storage;
        assert_eq!(none, StorageSettings::default(), "memory unless told otherwise");
        assert_eq!(none.file_in(Path::new("home")), Path::new("home").join("store.redb"));
        let some = FileConfig::parse("[storage]\nkind = \"redb\"").unwrap().to_config().unwrap();
        assert_eq!(some.storage.fsync, Fsync::Always, "absent fields keep their defaults");
        for bad in [
            "[storage]\nkind = \"sled\"",
            "[storage]\nfsync = \"sometimes\"",
            "[storage]\nmax_bytes = 0",
            "[storage]\nmax_entries = 0",
            "[storage]\nmailbox_ttl_secs = 0",
            "[storage]\npath = \"\"",
            "[storage]\nmax_bytes = -1",
            "[storage]\nfile = \"x\"",
        ] {
            let parsed = FileConfig::parse(bad).and_then(|f| f.to_config());
            assert!(parsed.is_err(), "{bad}");
        }
        let err = FileConfig::parse("[storage]\nkind = \"sled\"").unwrap().to_config();
        assert!(err.unwrap_err().to_string().contains("storage.kind"));
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../peerlink.example.toml");
        let c = FileConfig::parse(text).unwrap().to_config().unwrap();
        assert_eq!(c.node.preference, TransportPreference::WebsocketFirst);
        assert_eq!(c.peers.len(), 1);
        assert!(c.relay.is_none());
    }

    #[test]
    fn fields_map_onto_the_config() {
        let text = r#"
            listen = "127.0.0.1:9000"
            allowed_origins = ["https://app.example", "http://localhost:3000"]
            [transport]
            preference = "HTTP_ONLY"
            [transport.websocket]
            send_queue_frames = 8
            [limits]
            frames_per_minute = 5
        "#;
        let c = FileConfig::parse(text).unwrap().to_config().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.node.preference, TransportPreference::HttpOnly);
        assert_eq!(c.limits.send_queue_frames, 8);
        assert_eq!(c.node.link_rate, RateLimit::per_minute(5));
        assert_eq!(c.allowed_origins, ["https://app.example", "http://localhost:3000"]);
        let none = FileConfig::parse("").unwrap().to_config().unwrap();
        assert!(none.allowed_origins.is_empty(), "no page by default");
        assert!(none.node.binary_links, "binary links by default (spec §27)");
        let json_only = FileConfig::parse("[transport.websocket]\nbinary = false").unwrap();
        assert!(!json_only.to_config().unwrap().node.binary_links);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(FileConfig::parse("lisen = \"x\"").is_err());
        assert!(FileConfig::parse("[transport]\npreference = \"SOMETIMES\"").is_err());
        let bad_key = "[[peers]]\nentity_id = \"a\"\npublic_key = \"nope\"";
        assert!(FileConfig::parse(bad_key).unwrap().to_config().is_err());
        let tiny = "[transport.websocket]\nmax_frame_bytes = 10";
        assert!(FileConfig::parse(tiny).unwrap().to_config().is_err());
    }
}
