//! The `peerlink` command: run a node, make keys, send, request, listen, subscribe, publish,
//! check status, and check another node's conformance.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of the system allocator: the node allocates per frame, and glibc's malloc
/// cost about a quarter of the CPU per relayed message (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, PublicKey, TrustPolicy};
use peerlink_host::broker::BrokerUrl;
use peerlink_host::config_file::FileConfig;
use peerlink_host::store::StoreFailure;
use peerlink_host::tls::rustls;
use peerlink_host::{
    ApiError, ClusterSettings, Config, Peerlink, Rt, StorageKind, TrustedPeer, keys, store,
};

/// A peerlink node and its tools.
#[derive(Parser)]
#[command(name = "peerlink", version, about)]
struct Cli {
    /// Data directory with the identity (default: $PEERLINK_HOME or ./.peerlink).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (see drivers/host/peerlink.example.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The executor nodes run on: smol (default) or tokio (a multi-threaded runtime with a
    /// worker per CPU).
    #[arg(long, global = true, value_enum, default_value_t = Driver::Smol)]
    driver: Driver,
    /// Log lines on stderr as text (coloured only on a terminal, never with NO_COLOR set) or
    /// as one JSON object per line, for log collectors. RUST_LOG sets the level [default: info].
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Which executor the nodes of this run use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Driver {
    /// peerlink-smol: smol's global executor.
    Smol,
    /// peerlink-tokio: a multi-threaded tokio runtime.
    Tokio,
}

/// The driver `--driver` chose, set once at start.
static DRIVER: std::sync::OnceLock<Driver> = std::sync::OnceLock::new();

/// The runtime of this run's nodes and client requests (`--driver`).
fn rt() -> Fallible<Rt> {
    match DRIVER.get().copied().unwrap_or(Driver::Smol) {
        Driver::Smol => Ok(peerlink_smol::rt()),
        Driver::Tokio => {
            static TOKIO: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
                std::sync::OnceLock::new();
            let runtime = TOKIO.get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a tokio runtime: {e}"))
            });
            match runtime {
                Ok(r) => Ok(Arc::new(peerlink_tokio::TokioRuntime::new(r.handle().clone()))),
                Err(e) => Err(e.clone().into()),
            }
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log writer: stderr, level from RUST_LOG (default `info`).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init()
        }
    }
}

/// Where `--url` points when neither it, `--relay` nor a `[relay]` in the config file is given.
const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// A relay given on the command line: the node through which peers without a URL of their own
/// are reached (spec §19). It replaces the config file's `[relay]`.
#[derive(clap::Args)]
struct RelayArgs {
    /// Reach peers through the relay at this HTTP base URL (a node running `peerlink serve`).
    /// Its entity id and public key are asked of it (GET /peers/capabilities) unless
    /// --relay-id and --relay-key give them; either way every login to it must return that id.
    #[arg(long, value_name = "URL")]
    relay: Option<String>,
    /// The relay's entity id (checked against what the node at --relay says it is).
    #[arg(long, value_name = "ID", requires = "relay")]
    relay_id: Option<String>,
    /// The relay's public key (b64u), as its `peerlink keygen` printed it.
    #[arg(long, value_name = "KEY", requires = "relay", allow_hyphen_values = true)]
    relay_key: Option<String>,
    /// Another node of the relay's cluster (sharing its identity), tried when the relay's URL
    /// fails twice in a row; repeat it for more (docs/cluster.md).
    #[arg(long, value_name = "URL", requires = "relay")]
    relay_failover: Vec<String>,
}

/// Where another node is and who it is.
#[derive(clap::Args)]
struct Target {
    /// The peer's entity id.
    #[arg(long)]
    to: String,
    /// The HTTP base URL of the peer's own node [default: through the config file's `[relay]` if
    /// it has one, else http://127.0.0.1:7420]. The node there must be the peer: to go through
    /// a relay, use --relay instead.
    #[arg(long, conflicts_with = "relay")]
    url: Option<String>,
    /// The peer's public key (b64u), as `peerlink keygen` printed it.
    #[arg(long, allow_hyphen_values = true)]
    key: String,
    #[command(flatten)]
    relay: RelayArgs,
}

/// The node hosting a topic (spec §20: topics live on the node subscribed at).
#[derive(clap::Args)]
struct TopicHost {
    /// The entity id of the node hosting the topic (not with --relay: the relay hosts it).
    #[arg(long, required_unless_present = "relay", conflicts_with = "relay")]
    to: Option<String>,
    /// That node's HTTP base URL [default: http://127.0.0.1:7420].
    #[arg(long, conflicts_with = "relay")]
    url: Option<String>,
    /// That node's public key (b64u).
    #[arg(
        long,
        required_unless_present = "relay",
        conflicts_with = "relay",
        allow_hyphen_values = true
    )]
    key: Option<String>,
    /// Use the topic at this relay instead: the topic is the relay's, and its id and key are
    /// learned or checked as for `send --relay`.
    #[command(flatten)]
    relay: RelayArgs,
}

/// Cluster membership given on the command line; it replaces the config file's `[cluster]`
/// URL and name (its other settings stay).
#[derive(clap::Args)]
struct ClusterArgs {
    /// Be one node of the cluster whose Redis broker is at this URL:
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://` (TLS, checked against the
    /// config file's `[tls] ca_file`). A node that cannot reach it at start exits with code 69.
    #[arg(long, value_name = "REDIS_URL")]
    cluster: Option<String>,
    /// This node's name in the cluster, unique among its nodes [default: its entity id].
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// Run N nodes of the cluster in this process, all on the one port (SO_REUSEPORT: the
    /// kernel spreads connections among them), named NAME-1 … NAME-N, each on its own task of
    /// an executor with at least N threads, so that they use N cores (docs/cluster.md).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

impl Default for ClusterArgs {
    /// No cluster: one node.
    fn default() -> Self {
        ClusterArgs { cluster: None, cluster_name: None, workers: 1 }
    }
}

/// Exit code of a node that cannot reach its cluster's broker at start (sysexits'
/// `EX_UNAVAILABLE`).
const EXIT_BROKER_UNAVAILABLE: u8 = 69;

/// Exit code of a store that is corrupt, holds a corrupt entry, or was written by a newer
/// peerlink (sysexits' `EX_DATAERR`).
const EXIT_DATA_ERROR: u8 = 65;

/// Exit code of a store that cannot be read (sysexits' `EX_IOERR`).
const EXIT_IO_ERROR: u8 = 74;

/// Exit code of a store another process has open (sysexits' `EX_TEMPFAIL`).
const EXIT_LOCKED: u8 = 75;

/// Where a node keeps its durable state (`--storage`, overriding `[storage] kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Storage {
    /// In memory: nothing survives a restart.
    Memory,
    /// In a redb file (`store.redb` in the data directory, or `[storage] path`).
    Redb,
}

/// `peerlink store …`.
#[derive(Subcommand)]
enum StoreCommand {
    /// Check a store file without running a node, and print what it holds: its size, format,
    /// integrity, entries and bytes by kind, and whether a node can restore from them. Exit
    /// codes: 0 sound, 65 corrupt (or a corrupt entry, or written by a newer peerlink), 74
    /// unreadable, 75 locked (a node has it open).
    Check {
        /// The store file [default: `[storage] path`, else store.redb in the data directory].
        path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Create the identity (if there is none) and print its entity id and public key.
    Keygen {
        /// Entity id for a new identity.
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a node (the default command): listen on 127.0.0.1:7420, log what arrives.
    Serve {
        /// Listen address (overrides the config file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Accept any entity that proves its key (trust policy "open").
        #[arg(long)]
        open: bool,
        /// Be reachable through a relay (and reach peers without a URL through it).
        #[command(flatten)]
        relay: RelayArgs,
        /// Be one node of a cluster (docs/cluster.md).
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Where the node keeps its durable state [default: `[storage] kind`, else redb].
        #[arg(long, value_enum)]
        storage: Option<Storage>,
    },
    /// Run a node and print every message that arrives, one per line.
    ///
    /// With --relay, the node keeps a link or a long-poll open to the relay, so peers reach it
    /// there (`peerlink send --relay URL --to ID --key KEY`) without knowing its own address.
    Listen {
        /// Listen address (overrides the config file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Accept any entity that proves its key.
        #[arg(long)]
        open: bool,
        /// Be reachable through a relay (and reach peers without a URL through it).
        #[command(flatten)]
        relay: RelayArgs,
        /// Where the node keeps its durable state [default: `[storage] kind`, else redb].
        #[arg(long, value_enum)]
        storage: Option<Storage>,
    },
    /// Send one message to a peer and wait until it is delivered.
    Send {
        #[command(flatten)]
        target: Target,
        /// The message text (or --stdin).
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        message: Option<String>,
        /// Use HTTP only: every frame, the handshake included, goes in HTTP requests and no
        /// WebSocket link is opened (transport preference HTTP_ONLY, spec §16).
        #[arg(long)]
        http: bool,
        /// Send each line of standard input as a message: `accepted N ID` is printed once the
        /// node has accepted it (stored, with --storage redb), then the command waits until
        /// every message it holds, those a store kept from an earlier run included, is
        /// delivered or has failed, and prints `done: D delivered, F failed`.
        #[arg(long)]
        stdin: bool,
        /// Where the node keeps what it accepted [default: `[storage] kind`, else memory]:
        /// with redb, a run that dies is resumed by the next one in the same data directory.
        #[arg(long, value_enum)]
        storage: Option<Storage>,
    },
    /// Send a task request to a peer and print its answer (`peerlink listen` and `serve`
    /// answer with an echo).
    Request {
        #[command(flatten)]
        target: Target,
        /// The request's text.
        message: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Subscribe to a topic on a node and print what is published, one `TOPIC FROM DATA` line
    /// each, after a `subscribed TOPIC at NODE` line once the subscription is on the link.
    ///
    /// Publications from anyone but the topic's node are checked against the publisher's key:
    /// list publishers as `[[peers]]` in the config file (--config), or theirs are refused.
    Subscribe {
        #[command(flatten)]
        host: TopicHost,
        /// The topic.
        topic: String,
    },
    /// Publish one message on a topic hosted by a node (spec §20), to its subscribers there.
    ///
    /// Connects to the node, waits until the link is up, hands the publication to it, and
    /// shuts down (BYE). A publication is not acknowledged: "published" means it was handed to
    /// the link, not that any subscriber got it.
    Publish {
        #[command(flatten)]
        host: TopicHost,
        /// The topic.
        topic: String,
        /// The data: JSON text (`{"n":1}`, `42`, `"text"`); anything that is not JSON is
        /// published as a JSON string.
        #[arg(allow_negative_numbers = true)]
        data: String,
        /// Seconds to wait for the link to the topic's node.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Check a node against the spec: numbered cases, one line each (spec §24).
    ///
    /// The node must trust the tester's identity: create it with
    /// `PEERLINK_HOME=tester peerlink keygen --id conform-tester`, then add its entity id and
    /// public key as a `[[peers]]` entry of the node's config (or run the node with `--open` and
    /// pass `--open-node`). Exits non-zero if any case fails.
    Conform {
        /// The node's HTTP base URL, e.g. http://127.0.0.1:7420.
        url: String,
        /// The node's entity id (default: learned from GET /peers/capabilities).
        #[arg(long)]
        node_id: Option<String>,
        /// The tester's identity: a data directory (or its identity.json) as `keygen` writes it
        /// (default: the data directory, $PEERLINK_HOME or ./.peerlink).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also run the slow cases (they wait for the node's timers: up to 30 s each).
        #[arg(long)]
        slow: bool,
        /// Run only the cases whose id starts with one of these comma-separated prefixes, e.g.
        /// C-7. or C-21.,C-2.3.
        #[arg(long)]
        only: Option<String>,
        /// The node runs the open trust policy without an entry for the tester: skip the cases
        /// that need it to refuse unknown identities, and run those that use identities it has
        /// never seen.
        #[arg(long)]
        open_node: bool,
        /// List the cases and exit.
        #[arg(long)]
        list: bool,
    },
    /// Inspect a node's durable store (docs/storage.md).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Print a node's health and metrics.
    Status {
        /// The node's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:7420")]
        url: String,
    },
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// The node hosting a topic (spec §20: `--to`/`--key`/`--url`, or `--relay`), and the
/// configuration of a client node that reaches it.
async fn topic_host(host: &TopicHost, file: &FileConfig) -> Fallible<(Config, TrustedPeer)> {
    let (config, peer) = match (&host.to, &host.key) {
        (Some(to), Some(key)) => {
            // A topic lives on the node subscribed at (spec §20): that node is a hop
            // of its own, reached at its URL, never through a relay.
            let to = entity("--to", to)?;
            let key = public_key("--key", key)?;
            let config = file.to_config()?;
            let url = direct_url(host.url.as_deref(), &to, &config).await?;
            (config, TrustedPeer { entity: to, key, url: Some(url) })
        }
        _ => {
            // clap requires --to and --key unless --relay is given.
            let mut config = file.to_config()?;
            let relay = relay_peer(&host.relay, &config)
                .await?
                .ok_or("give --to and --key of the node hosting the topic, or --relay")?;
            config.relay = Some(relay.clone());
            config.relay_failover_urls = failover_urls(&host.relay)?;
            (config, relay)
        }
    };
    Ok((config, peer))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Serve { cluster, .. }) = &cli.command
        && cluster.workers > 1
        && std::env::var_os("SMOL_THREADS").is_none()
    {
        // SAFETY: no other thread exists yet (nothing has started smol's executor, nor logging).
        // Each worker is one task: the executor needs a thread per worker to use that many cores.
        unsafe { std::env::set_var("SMOL_THREADS", cluster.workers.to_string()) };
    }
    init_logs(cli.log_format);
    let _ = DRIVER.set(cli.driver);
    match smol::block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(failure) = e.downcast_ref::<StoreFailure>() {
                return ExitCode::from(store_exit_code(failure));
            }
            if let Some(CliError::CorruptEntry { .. }) = e.downcast_ref::<CliError>() {
                return ExitCode::from(EXIT_DATA_ERROR);
            }
            match e.downcast_ref::<ApiError>() {
                Some(ApiError::Cluster(_)) => ExitCode::from(EXIT_BROKER_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `--cluster` and `--cluster-name` onto the configuration.
fn cluster_settings(args: &ClusterArgs, config: &mut Config) -> Fallible<()> {
    if let Some(url) = &args.cluster {
        let url = BrokerUrl::parse(url)?;
        match &mut config.cluster {
            Some(c) => c.redis_url = url,
            None => config.cluster = Some(ClusterSettings::new(url)),
        }
    }
    if let Some(name) = &args.cluster_name {
        let Some(c) = &mut config.cluster else {
            return Err("--cluster-name needs --cluster or a [cluster] section".into());
        };
        c.name = Some(entity("--cluster-name", name)?);
    }
    Ok(())
}

/// The store a node of `serve` or `listen` uses: `--storage`, else the config file's
/// `[storage] kind`, else redb (the command keeps its state across restarts by default; a node
/// embedded with `Config::default()` keeps it in memory).
fn storage_kind(flag: Option<Storage>, file: &FileConfig) -> StorageKind {
    match flag {
        Some(Storage::Memory) => StorageKind::Memory,
        Some(Storage::Redb) => StorageKind::Redb,
        None => match file.storage.kind.as_deref() {
            Some("memory") => StorageKind::Memory,
            _ => StorageKind::Redb,
        },
    }
}

/// The exit code of a store failure: 65 for data that cannot be used, 75 for a store in use,
/// 74 for the rest.
fn store_exit_code(failure: &StoreFailure) -> u8 {
    match failure {
        StoreFailure::Corrupt { .. } | StoreFailure::NewerVersion { .. } => EXIT_DATA_ERROR,
        StoreFailure::Locked { .. } => EXIT_LOCKED,
        _ => EXIT_IO_ERROR,
    }
}

fn file_config(cli: &Cli) -> Fallible<FileConfig> {
    Ok(match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    })
}

fn data_dir(cli: &Cli, file: &FileConfig) -> PathBuf {
    cli.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(keys::default_data_dir)
}

fn identity(cli: &Cli, file: &FileConfig, id: Option<String>) -> Fallible<peerlink_core::Identity> {
    let dir = data_dir(cli, file);
    let id = id.or_else(|| file.entity_id.clone()).map(EntityId::new).transpose()?;
    let (identity, created) = keys::load_or_create(&dir, id)?;
    if created {
        tracing::info!(dir = %dir.display(), entity = %identity.id(), "created a new identity");
    }
    Ok(identity)
}

/// Why a command line was refused. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// `--to`, `--relay-id` or an id a node returned is not an entity id.
    #[error("{what} {value:?} is not an entity id: {reason}")]
    BadId { what: &'static str, value: String, reason: String },
    /// `--key` or `--relay-key` is not a public key.
    #[error(
        "{what} is not a public key ({reason}): give the public_key line `peerlink keygen` printed"
    )]
    BadKey { what: &'static str, reason: String },
    /// `--url` or `--relay` is not an `http(s)://host:port` URL.
    #[error("{what} {url:?} is not a node's base URL: give one like http://127.0.0.1:7420")]
    BadUrl { what: &'static str, url: String },
    /// The relay could not say who it is, and `--relay-id`/`--relay-key` were not both given.
    #[error(
        "cannot ask the node at {url} who it is (GET /peers/capabilities: {reason}): check that a \
         node runs there (`peerlink serve`), or give --relay-id and --relay-key"
    )]
    RelayUnknown { url: String, reason: String },
    /// The node at `--relay` is another entity than `--relay-id` names.
    #[error("the node at {url} is {found}, not {given}: check --relay and --relay-id")]
    RelayIdMismatch { url: String, found: String, given: String },
    /// The node at `--relay` has another key than `--relay-key`.
    #[error("the node at {url} has public key {found}, not {given}: check --relay and --relay-key")]
    RelayKeyMismatch { url: String, found: String, given: String },
    /// No WebSocket link to the topic's node came up in time.
    #[error(
        "no link to {node} at {url} after {secs} s: check that its node runs there and lets this \
         identity in (`peerlink serve --open`, or a [[peers]] entry for it), or give more \
         --timeout-secs{last_error}"
    )]
    NoLink { node: String, url: String, secs: u64, last_error: String },
    /// The node at `--url` is not the peer `--to` names.
    #[error(
        "the node at {url} is {found}, not {to}: give --url of {to}'s own node, or, to reach {to} \
         through {found} as a relay, use --relay {url} instead of --url"
    )]
    NotThePeer { url: String, found: String, to: String },
    /// `peerlink store check` found an entry a node cannot restore from.
    #[error(
        "the store at {path} holds an entry a node cannot restore from (above): move the file \
         away to start over with an empty store (what it held is lost)"
    )]
    CorruptEntry { path: String },
}

fn entity(what: &'static str, value: &str) -> Result<EntityId, CliError> {
    EntityId::new(value).map_err(|e| CliError::BadId {
        what,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

fn public_key(what: &'static str, value: &str) -> Result<PublicKey, CliError> {
    PublicKey::from_b64u(value).map_err(|e| CliError::BadKey { what, reason: e.to_string() })
}

/// The TLS client configuration for `https://` nodes, when the configuration has a CA file.
fn client_tls(config: &Config) -> Fallible<Option<Arc<rustls::ClientConfig>>> {
    Ok(match &config.tls.ca_file {
        Some(ca) => Some(peerlink_host::tls::client_config(ca)?),
        None => None,
    })
}

/// The relay `args` names, if any: its id and key from `GET /peers/capabilities` where the
/// command line leaves them out, and checked against it where it gives only one of them. The
/// id is then pinned: the node's every login there must return it (spec §23.2).
/// `--relay-failover` URLs, checked and without a trailing slash.
fn failover_urls(args: &RelayArgs) -> Fallible<Vec<String>> {
    let mut urls = Vec::new();
    for url in &args.relay_failover {
        if peerlink_host::client::base_of(url).is_none() {
            return Err(CliError::BadUrl { what: "--relay-failover", url: url.clone() }.into());
        }
        urls.push(url.trim_end_matches('/').to_owned());
    }
    Ok(urls)
}

async fn relay_peer(args: &RelayArgs, config: &Config) -> Fallible<Option<TrustedPeer>> {
    let Some(url) = &args.relay else { return Ok(None) };
    if peerlink_host::client::base_of(url).is_none() {
        return Err(CliError::BadUrl { what: "--relay", url: url.clone() }.into());
    }
    let given_id = args.relay_id.as_deref().map(|i| entity("--relay-id", i)).transpose()?;
    let given_key = args.relay_key.as_deref().map(|k| public_key("--relay-key", k)).transpose()?;
    let url = url.trim_end_matches('/').to_owned();
    let (entity, key) = match (given_id, given_key) {
        (Some(id), Some(key)) => (id, key),
        (given_id, given_key) => {
            let caps = peerlink_host::client::capabilities(rt()?, &url, client_tls(config)?)
                .await
                .map_err(|e| CliError::RelayUnknown { url: url.clone(), reason: e.to_string() })?;
            let found = entity("the relay's node_id", &caps.node_id)?;
            let key = public_key("the relay's public_key", &caps.public_key)?;
            if let Some(given) = given_id.filter(|g| *g != found) {
                let (found, given) = (found.to_string(), given.to_string());
                return Err(CliError::RelayIdMismatch { url, found, given }.into());
            }
            if let Some(given) = given_key.filter(|g| *g != key) {
                let (found, given) = (key.to_b64u(), given.to_b64u());
                return Err(CliError::RelayKeyMismatch { url, found, given }.into());
            }
            (found, key)
        }
    };
    tracing::info!(relay = %entity, %url, "reaching peers through the relay");
    Ok(Some(TrustedPeer { entity, key, url: Some(url) }))
}

/// Checks, before anything is signed or sent, that the node at `url` is `to`: the mistake of
/// giving a relay's URL as the peer's gets an answer saying what to do. A node that cannot be
/// asked is left to the login, which refuses another node too (spec §23.2).
async fn check_peer_node(url: &str, to: &EntityId, config: &Config) -> Fallible<()> {
    match peerlink_host::client::capabilities(rt()?, url, client_tls(config)?).await {
        Ok(caps) if caps.node_id != to.as_str() => Err(CliError::NotThePeer {
            url: url.to_owned(),
            found: caps.node_id,
            to: to.to_string(),
        }
        .into()),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(%url, error = %e, "could not ask the node who it is");
            Ok(())
        }
    }
}

/// A short-lived node on an ephemeral loopback port that knows `peer` (with a URL: reached
/// directly; without: through `config`'s relay), and its events. `http_only` sets the transport
/// preference `HTTP_ONLY`.
/// `peerlink send --stdin`: each line of standard input is a message to `to`; then waits until
/// nothing is left in the node's outbox for `to` (what an earlier run's store held included),
/// counting the deliveries and failures reported meanwhile.
async fn send_lines(
    node: &peerlink_host::Handle,
    events: peerlink_host::Events,
    to: &EntityId,
    options: SendOptions,
) -> Fallible<()> {
    use std::io::{BufRead as _, Write as _};
    let (tx, lines) = smol::channel::bounded::<String>(64);
    // Standard input is read on a thread of its own: reading it blocks.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send_blocking(line).is_err() {
                break;
            }
        }
    });
    let (mut delivered, mut failed) = (0u64, 0u64);
    let mut count = |e: Event| match e {
        Event::Delivered { .. } => delivered += 1,
        Event::Failed { .. } => failed += 1,
        _ => {}
    };
    let mut n = 0u64;
    while let Ok(line) = lines.recv().await {
        let id = node
            .send_message(
                to,
                peerlink_core::MessageType::PeerMessage,
                line.into_bytes(),
                options.clone(),
            )
            .await?;
        n += 1;
        let mut out = std::io::stdout().lock();
        writeln!(out, "accepted {n} {id}")?;
        out.flush()?;
        while let Ok(e) = events.try_recv() {
            count(e);
        }
    }
    while node.outbox_len(to).await? > 0 {
        if let Ok(Ok(e)) = smol::future::or(async { Ok(events.recv().await) }, async {
            smol::Timer::after(Duration::from_millis(200)).await;
            Err(())
        })
        .await
        {
            count(e);
        }
    }
    while let Ok(e) = events.try_recv() {
        count(e);
    }
    println!("done: {delivered} delivered, {failed} failed");
    Ok(())
}

async fn client_node(
    cli: &Cli,
    file: &FileConfig,
    mut config: Config,
    peer: TrustedPeer,
    http_only: bool,
) -> Fallible<(peerlink_host::Handle, peerlink_host::Events)> {
    let identity = identity(cli, file, None)?;
    config.listen = ([127, 0, 0, 1], 0).into();
    if http_only {
        config.node.preference = TransportPreference::HttpOnly;
    }
    config.peers.push(peer);
    let node = Peerlink::start(rt()?, config, identity).await?;
    let events = node.incoming().await?;
    Ok((node, events))
}

/// The configuration for reaching the node `to` at `url`, or through `relay`: the file's, with
/// the relay the command line gives. Without `--url` and `--relay`, the config file's `[relay]`
/// is used if it has one, else the default URL. Returns the peer's URL when it is reached
/// directly (checked to be `to`).
async fn reach(
    file: &FileConfig,
    to: &EntityId,
    url: Option<&str>,
    relay: &RelayArgs,
) -> Fallible<(Config, Option<String>)> {
    let mut config = file.to_config()?;
    if let Some(r) = relay_peer(relay, &config).await? {
        config.relay = Some(r);
        config.relay_failover_urls = failover_urls(relay)?;
        return Ok((config, None));
    }
    if url.is_none() && config.relay.is_some() {
        return Ok((config, None));
    }
    let url = direct_url(url, to, &config).await?;
    Ok((config, Some(url)))
}

/// `--url` (or the default), checked to be a base URL and, if the node there answers, to be
/// the node `to`.
async fn direct_url(url: Option<&str>, to: &EntityId, config: &Config) -> Fallible<String> {
    let url = url.unwrap_or(DEFAULT_URL).trim_end_matches('/').to_owned();
    if peerlink_host::client::base_of(&url).is_none() {
        return Err(CliError::BadUrl { what: "--url", url }.into());
    }
    check_peer_node(&url, to, config).await?;
    Ok(url)
}

/// What `peerlink publish` publishes: `text` parsed as JSON, or, if it is not JSON, `text` as a
/// JSON string.
fn publication_data(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// How often a wait for a link asks the node whether it is up.
const LINK_POLL: Duration = Duration::from_millis(20);

/// Waits until a WebSocket link to the next hop `hop` is up, at most `timeout` (`None`: as long
/// as it takes, while the node keeps reconnecting). Whether it came up in time. The node has no
/// event for a link coming up, so it is asked every [`LINK_POLL`].
async fn wait_for_link(
    node: &peerlink_host::Handle,
    hop: &EntityId,
    timeout: Option<Duration>,
) -> Fallible<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if node.is_websocket_connected(hop).await? {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
        smol::Timer::after(LINK_POLL).await;
    }
}

async fn run(cli: Cli) -> Fallible<()> {
    let file = file_config(&cli)?;
    let no_relay =
        RelayArgs { relay: None, relay_id: None, relay_key: None, relay_failover: Vec::new() };
    let no_cluster = ClusterArgs::default();
    let command =
        cli.command.as_ref().map_or(("serve", None, false, &no_relay, &no_cluster, None), |c| {
            match c {
                Command::Serve { listen, open, relay, cluster, storage } => {
                    ("serve", *listen, *open, relay, cluster, *storage)
                }
                Command::Listen { listen, open, relay, storage } => {
                    ("listen", *listen, *open, relay, &no_cluster, *storage)
                }
                _ => ("other", None, false, &no_relay, &no_cluster, None),
            }
        });
    match &cli.command {
        Some(Command::Keygen { id }) => {
            let identity = identity(&cli, &file, id.clone())?;
            println!("entity_id  {}", identity.id());
            println!("public_key {}", identity.public_key().to_b64u());
            Ok(())
        }
        None | Some(Command::Serve { .. }) | Some(Command::Listen { .. }) => {
            let (name, listen, open, relay, cluster, storage) = command;
            let mut config = file.to_config()?;
            cluster_settings(cluster, &mut config)?;
            config.storage.kind = storage_kind(storage, &file);
            if let Some(l) = listen {
                config.listen = l;
            }
            if open {
                config.trust_policy = TrustPolicy::Open;
            }
            if let Some(r) = relay_peer(relay, &config).await? {
                config.relay = Some(r);
                config.relay_failover_urls = failover_urls(relay)?;
            }
            if cluster.workers > 1 && config.cluster.is_none() {
                return Err(
                    "--workers needs --cluster (or a [cluster] section): each worker is a \
                            node of the cluster"
                        .into(),
                );
            }
            serve(&cli, &file, config, name == "listen", cluster.workers).await
        }
        Some(Command::Send { target, message, http, stdin, storage }) => {
            let to = entity("--to", &target.to)?;
            let key = public_key("--key", &target.key)?;
            let (mut config, url) = reach(&file, &to, target.url.as_deref(), &target.relay).await?;
            config.storage.kind = match storage {
                Some(Storage::Redb) => StorageKind::Redb,
                Some(Storage::Memory) => StorageKind::Memory,
                None => config.storage.kind,
            };
            if config.storage.kind == StorageKind::Redb {
                config.storage.path = Some(config.storage.file_in(&data_dir(&cli, &file)));
            }
            let peer = TrustedPeer { entity: to.clone(), key, url };
            let (node, events) = client_node(&cli, &file, config, peer, *http).await?;
            // HTTP_ONLY is never overridden per message (spec §16.1).
            let options =
                SendOptions { prefer_websocket: (!http).then_some(true), ..SendOptions::default() };
            if *stdin {
                let outcome = send_lines(&node, events, &to, options).await;
                node.shutdown().await?;
                return outcome;
            }
            // No events are read: the result comes from `send_confirmed`, and a closed stream
            // never holds the node task up.
            drop(events);
            // Waits until bob's application has it (or the node gives up), and learns which
            // transport carried it.
            let message = message.clone().unwrap_or_default();
            let outcome = node.send_confirmed(&to, message.into_bytes(), options).await;
            let stats = node.transport_stats().await?;
            node.shutdown().await?;
            let sent = outcome?;
            let via = sent.transport.map_or("an unknown transport", |t| t.as_str());
            println!(
                "delivered {} to {to} over {via} in {} ms (websocket frames {}, http frames {})",
                sent.id,
                sent.elapsed.as_millis(),
                stats.ws_messages_sent,
                stats.http_messages_sent
            );
            Ok(())
        }
        Some(Command::Request { target, message, timeout_secs }) => {
            let to = entity("--to", &target.to)?;
            let key = public_key("--key", &target.key)?;
            let (config, url) = reach(&file, &to, target.url.as_deref(), &target.relay).await?;
            let peer = TrustedPeer { entity: to.clone(), key, url };
            let (node, _events) = client_node(&cli, &file, config, peer, false).await?;
            let timeout = Duration::from_secs(*timeout_secs);
            let answer = node.request(&to, message.as_bytes().to_vec(), timeout).await;
            node.shutdown().await?;
            println!("{}", String::from_utf8_lossy(&answer?));
            Ok(())
        }
        Some(Command::Subscribe { host, topic }) => {
            let (config, peer) = topic_host(host, &file).await?;
            let hop = peer.entity.clone();
            let (node, events) = client_node(&cli, &file, config, peer, false).await?;
            node.subscribe(&hop, topic).await?;
            // The SUBSCRIBE goes on the link as it comes up (and again on every reconnect):
            // no deadline, the node keeps reconnecting.
            wait_for_link(&node, &hop, None).await?;
            println!("subscribed {topic} at {hop}");
            while let Ok(e) = events.recv().await {
                if let Event::Topic { topic, from, data } = e {
                    println!("{topic} {from} {data}");
                }
            }
            Ok(())
        }
        Some(Command::Publish { host, topic, data, timeout_secs }) => {
            let data = publication_data(data);
            let (config, peer) = topic_host(host, &file).await?;
            let hop = peer.entity.clone();
            let url = peer.url.clone().unwrap_or_default();
            let (node, events) = client_node(&cli, &file, config, peer, false).await?;
            let timeout = Duration::from_secs(*timeout_secs);
            let outcome = async {
                node.init_websocket_connection(&hop).await?;
                if !wait_for_link(&node, &hop, Some(timeout)).await? {
                    let last_error = std::iter::from_fn(|| events.try_recv().ok())
                        .filter_map(|e| match e {
                            Event::Error { peer, code }
                                if peer.as_ref().is_none_or(|p| *p == hop) =>
                            {
                                Some(code)
                            }
                            _ => None,
                        })
                        .last()
                        .map_or_else(String::new, |code| format!(" (last error: {code})"));
                    let (node, secs) = (hop.to_string(), *timeout_secs);
                    return Err(CliError::NoLink { node, url, secs, last_error }.into());
                }
                // Fire-and-forget (spec §20): queued on the link that is up, ahead of the BYE the
                // shutdown below queues. The link's task writes both before its close frame
                // (drivers/host/src/link.rs), but `Handle::shutdown` returns once they are
                // queued, not written: a process that exits at once can still lose them.
                node.publish_via(&hop, topic, data).await?;
                Fallible::Ok(())
            }
            .await;
            node.shutdown().await?;
            outcome?;
            println!("published on {topic} at {hop}");
            Ok(())
        }
        Some(Command::Conform { url, node_id, identity, json, slow, only, open_node, list }) => {
            if *list {
                for c in peerlink_conform::catalogue() {
                    let flag = match (c.slow, c.allowlist, c.open) {
                        (true, _, _) => " (slow)",
                        (_, true, _) => " (allowlist)",
                        (_, _, true) => " (open)",
                        _ => "",
                    };
                    println!("{} {} {}{flag}", c.id, c.spec_section, c.title);
                }
                return Ok(());
            }
            let dir = match identity {
                Some(p) if p.is_file() => p.parent().map(PathBuf::from).unwrap_or_default(),
                Some(p) => p.clone(),
                None => data_dir(&cli, &file),
            };
            let tester = keys::load(&dir).map_err(|e| {
                format!(
                    "tester identity: {e} (create one with `peerlink --data-dir {} keygen --id \
                     conform-tester` and add it to the node's trusted peers)",
                    dir.display()
                )
            })?;
            let mut target = peerlink_conform::Target::new(url.clone(), Arc::new(tester));
            target.node_id = node_id.clone().map(EntityId::new).transpose()?;
            let options = peerlink_conform::Options {
                slow: *slow,
                only: only.clone(),
                open_node: *open_node,
                ..Default::default()
            };
            let report = peerlink_conform::run(&target, &options);
            for line in report.lines() {
                println!("{line}");
            }
            if let Some(path) = json {
                std::fs::write(path, report.to_json() + "\n")
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if report.is_success() {
                Ok(())
            } else {
                Err(format!("{} of {} cases failed", report.failed(), report.cases.len()).into())
            }
        }
        Some(Command::Store { command: StoreCommand::Check { path } }) => {
            let path = match path {
                Some(p) => p.clone(),
                None => file.to_config()?.storage.file_in(&data_dir(&cli, &file)),
            };
            let report = store::check(&path)?;
            println!("{report}");
            if report.is_ok() {
                Ok(())
            } else {
                Err(CliError::CorruptEntry { path: path.display().to_string() }.into())
            }
        }
        Some(Command::Status { url }) => {
            let base = url.trim_end_matches('/');
            let (s, body) =
                peerlink_host::client::get_public(rt()?, &format!("{base}/healthz"), 4096).await?;
            println!("healthz: {s} {}", String::from_utf8_lossy(&body).trim());
            let (s, body) =
                peerlink_host::client::get_public(rt()?, &format!("{base}/metrics"), 1 << 20)
                    .await?;
            if s != 200 {
                return Err(format!("metrics: HTTP {s}").into());
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
    }
}

/// A node's events until it stops: messages printed (`print`) or logged, requests answered
/// with an echo.
async fn answer_events(node: peerlink_host::Handle, events: peerlink_host::Events, print: bool) {
    while let Ok(e) = events.recv().await {
        match e {
            Event::Message { from, payload, .. } => {
                if print {
                    println!("{from}\t{}", String::from_utf8_lossy(&payload));
                } else {
                    // Contents stay out of logs; `peerlink listen` prints them.
                    tracing::info!(%from, bytes = payload.len(), "message");
                }
            }
            Event::Request { from, id, payload } => {
                tracing::info!(%from, bytes = payload.len(), "request (answered with an echo)");
                let _ = node.respond(&from, &id, payload).await;
            }
            other => tracing::debug!(event = ?other, "event"),
        }
    }
}

/// Runs `workers` nodes (one, or the workers of `--workers`) until Ctrl-C or SIGTERM, printing
/// (`print`) or logging what arrives and answering requests with an echo.
async fn serve(
    cli: &Cli,
    file: &FileConfig,
    config: Config,
    print: bool,
    workers: u16,
) -> Fallible<()> {
    let identity = identity(cli, file, None)?;
    let public_key = identity.public_key().to_b64u();
    let config_relay = config
        .relay
        .as_ref()
        .map(|r| format!("{} at {}", r.entity, r.url.as_deref().unwrap_or("(no URL)")));
    let base_name =
        config.cluster.as_ref().map(|c| c.name.clone().unwrap_or_else(|| identity.id().clone()));
    let mut nodes: Vec<peerlink_host::Handle> = Vec::new();
    let store_file = config.storage.file_in(&data_dir(cli, file));
    for i in 1..=workers.max(1) {
        let mut config = config.clone();
        config.storage.path = Some(store_file.clone());
        if workers > 1 {
            config.reuse_port = true;
            // Each worker is a node of its own, with a store of its own: store-1.redb, …
            config.storage.path = Some(worker_store(&store_file, i));
            if let (Some(c), Some(base)) = (&mut config.cluster, &base_name) {
                c.name = Some(entity("--cluster-name", &format!("{base}-{i}"))?);
            }
            // The others bind the port the first one got (with port 0, the kernel's choice).
            if let Some(first) = nodes.first() {
                config.listen = first.local_addr();
            }
        }
        nodes.push(Peerlink::start(rt()?, config, identity.duplicate()).await?);
    }
    let Some(first) = nodes.first() else { return Err("no node to run (--workers 0)".into()) };
    println!("entity_id  {}", first.id());
    println!("public_key {public_key}");
    println!("url        {}", first.base_url());
    if let Some(relay) = &config_relay {
        println!("relay      {relay}");
    }
    if let (Some(c), Some(base)) = (&config.cluster, &base_name) {
        match workers {
            1 => println!("cluster    {base} via {}", c.redis_url),
            n => println!("cluster    {base}-1 … {base}-{n} via {} (one port)", c.redis_url),
        }
    }
    // Ctrl-C or SIGTERM: a graceful shutdown (BYE to peers, drain, stop).
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        tracing::warn!(error = %e, "no signal handler: Ctrl-C will not shut down gracefully");
    }
    let mut loops = Vec::new();
    for node in &nodes {
        let (node, events) = (node.clone(), node.incoming().await?);
        loops.push(smol::spawn(answer_events(node, events, print)));
    }
    let _ = stop_rx.recv().await;
    tracing::info!("shutting down");
    for node in &nodes {
        node.shutdown().await?;
    }
    for l in loops {
        l.await;
    }
    Ok(())
}
/// The store file of worker `i` of `--workers`: `NAME-i.EXT` beside `file`.
fn worker_store(file: &std::path::Path, i: u16) -> PathBuf {
    let stem = file.file_stem().map_or_else(|| "store".into(), |s| s.to_string_lossy());
    let name = match file.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("peerlink").chain(args.iter().copied()))
    }

    #[test]
    fn keys_may_begin_with_a_hyphen() {
        // b64u uses '-': one key in 64 begins with it.
        let cli = parse(&["send", "--to", "bob", "--key", "-fAb", "hi"]).unwrap();
        let Some(Command::Send { target, .. }) = cli.command else { panic!("not send") };
        assert_eq!(target.key, "-fAb");
        let cli = parse(&["listen", "--relay", "http://r", "--relay-key", "-x"]).unwrap();
        let Some(Command::Listen { relay, .. }) = cli.command else { panic!("not listen") };
        assert_eq!(relay.relay_key.as_deref(), Some("-x"));
    }

    #[test]
    fn relay_options_go_together_and_exclude_url() {
        let send = ["send", "--to", "bob", "--key", "k", "hi"];
        let with = |extra: &[&str]| parse(&[&send[..], extra].concat());
        assert!(with(&["--relay", "http://r"]).is_ok());
        assert!(with(&["--relay", "http://r", "--url", "http://u"]).is_err(), "one or the other");
        assert!(with(&["--relay-id", "relay"]).is_err(), "--relay-id needs --relay");
        assert!(parse(&["subscribe", "--relay", "http://r", "news"]).is_ok());
        assert!(parse(&["subscribe", "news"]).is_err(), "--to and --key, or --relay");
        assert!(parse(&["subscribe", "--relay", "http://r", "--to", "x", "news"]).is_err());
    }

    #[test]
    fn publish_takes_its_topic_host_as_subscribe_does() {
        let cli = parse(&["publish", "--relay", "http://r", "news", "-5"]).unwrap();
        let Some(Command::Publish { host, topic, data, timeout_secs }) = cli.command else {
            panic!("not publish")
        };
        assert_eq!((host.relay.relay.as_deref(), topic.as_str()), (Some("http://r"), "news"));
        assert_eq!((data.as_str(), timeout_secs), ("-5", 10), "a negative number is data");
        let direct = ["publish", "--to", "bob", "--key", "-k", "--url", "http://u", "news", "{}"];
        assert!(parse(&direct).is_ok());
        assert!(parse(&["publish", "news", "{}"]).is_err(), "--to and --key, or --relay");
        assert!(parse(&["publish", "--relay", "http://r", "--url", "http://u", "t", "1"]).is_err());
        assert!(parse(&["publish", "--relay", "http://r", "news"]).is_err(), "no data");
    }

    #[test]
    fn the_command_keeps_its_state_in_redb_unless_told_otherwise() {
        let none = FileConfig::default();
        assert_eq!(storage_kind(None, &none), StorageKind::Redb);
        assert_eq!(storage_kind(Some(Storage::Memory), &none), StorageKind::Memory);
        let memory = FileConfig::parse("[storage]\nkind = \"memory\"").unwrap();
        assert_eq!(storage_kind(None, &memory), StorageKind::Memory);
        assert_eq!(storage_kind(Some(Storage::Redb), &memory), StorageKind::Redb);
        let cli = parse(&["serve", "--storage", "memory"]).unwrap();
        let Some(Command::Serve { storage, .. }) = cli.command else { panic!("not serve") };
        assert_eq!(storage, Some(Storage::Memory));
        assert!(parse(&["listen", "--storage", "sled"]).is_err());
        let cli = parse(&["store", "check", "x.redb"]).unwrap();
        let Some(Command::Store { command: StoreCommand::Check { path } }) = cli.command else {
            panic!("not store check")
        };
        assert_eq!(path, Some(PathBuf::from("x.redb")));
        let file = std::path::Path::new("home/store.redb");
        assert_eq!(worker_store(file, 2), std::path::Path::new("home/store-2.redb"));
    }

    #[test]
    fn publication_data_is_json_or_else_a_json_string() {
        use serde_json::json;
        assert_eq!(publication_data(r#"{"n": 1}"#), json!({"n": 1}));
        assert_eq!(publication_data("42"), json!(42));
        assert_eq!(publication_data("true"), json!(true));
        assert_eq!(publication_data(r#""quoted""#), json!("quoted"));
        assert_eq!(publication_data("hello world"), json!("hello world"));
        assert_eq!(publication_data("{not json"), json!("{not json"));
        assert_eq!(publication_data(""), json!(""));
    }
}
