//! The `peerlink` command: run a node, make keys, send, listen, subscribe, check status, and
//! check another node's conformance.

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
use peerlink_core::{EntityId, Event, MessageType, PublicKey, TrustPolicy};
use peerlink_smol::config_file::FileConfig;
use peerlink_smol::{Config, Peerlink, TrustedPeer, keys};
use smol::future::FutureExt as _;

/// A peerlink node and its tools.
#[derive(Parser)]
#[command(name = "peerlink", version, about)]
struct Cli {
    /// Data directory with the identity (default: $PEERLINK_HOME or ./.peerlink).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (see drivers/smol/peerlink.example.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where another node is and who it is.
#[derive(clap::Args)]
struct Target {
    /// The peer's entity id.
    #[arg(long)]
    to: String,
    /// The peer node's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:7420")]
    url: String,
    /// The peer's public key (b64u), as `peerlink keygen` printed it.
    #[arg(long)]
    key: String,
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
    },
    /// Run a node and print every message that arrives, one per line.
    Listen {
        /// Listen address (overrides the config file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Accept any entity that proves its key.
        #[arg(long)]
        open: bool,
    },
    /// Send one message to a peer and wait until it is delivered.
    Send {
        #[command(flatten)]
        target: Target,
        /// The message text.
        message: String,
        /// Send over HTTP instead of WebSocket.
        #[arg(long)]
        http: bool,
    },
    /// Subscribe to a topic on a node and print what is published.
    Subscribe {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
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
    /// Print a node's health and metrics.
    Status {
        /// The node's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:7420")]
        url: String,
    },
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match smol::block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
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

/// A short-lived node on an ephemeral loopback port that knows `target`, and its events.
async fn client_node(
    cli: &Cli,
    file: &FileConfig,
    target: &Target,
) -> Fallible<(peerlink_smol::Handle, smol::channel::Receiver<Event>)> {
    let identity = identity(cli, file, None)?;
    let mut config = file.to_config()?;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.peers.push(target_peer(target)?);
    let node = Peerlink::start(config, identity).await?;
    let events = node.incoming().await?;
    Ok((node, events))
}

fn target_peer(t: &Target) -> Fallible<TrustedPeer> {
    Ok(TrustedPeer {
        entity: EntityId::new(t.to.clone())?,
        key: PublicKey::from_b64u(&t.key)?,
        url: Some(t.url.clone()),
    })
}

async fn run(cli: Cli) -> Fallible<()> {
    let file = file_config(&cli)?;
    let command = cli.command.as_ref().map_or(("serve", None, false), |c| match c {
        Command::Serve { listen, open } => ("serve", *listen, *open),
        Command::Listen { listen, open } => ("listen", *listen, *open),
        _ => ("other", None, false),
    });
    match &cli.command {
        Some(Command::Keygen { id }) => {
            let identity = identity(&cli, &file, id.clone())?;
            println!("entity_id  {}", identity.id());
            println!("public_key {}", identity.public_key().to_b64u());
            Ok(())
        }
        None | Some(Command::Serve { .. }) | Some(Command::Listen { .. }) => {
            let (name, listen, open) = command;
            let mut config = file.to_config()?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if open {
                config.trust_policy = TrustPolicy::Open;
            }
            serve(&cli, &file, config, name == "listen").await
        }
        Some(Command::Send { target, message, http }) => {
            let (node, events) = client_node(&cli, &file, target).await?;
            let options = SendOptions { prefer_websocket: Some(!http) };
            let to = EntityId::new(target.to.clone())?;
            let id = node
                .send_message(&to, MessageType::PeerMessage, message.as_bytes().to_vec(), options)
                .await?;
            let outcome = loop {
                match events.recv().await? {
                    Event::Delivered { id: d, .. } if d == id => break Ok(()),
                    Event::Failed { id: f, reason, .. } if f == id => {
                        break Err(format!("not delivered: {reason:?}"));
                    }
                    _ => {}
                }
            };
            let stats = node.transport_stats().await?;
            node.shutdown().await?;
            outcome?;
            println!(
                "delivered {id} to {to} (websocket frames {}, http frames {})",
                stats.ws_messages_sent, stats.http_messages_sent
            );
            Ok(())
        }
        Some(Command::Subscribe { target, topic }) => {
            let (node, events) = client_node(&cli, &file, target).await?;
            let hop = EntityId::new(target.to.clone())?;
            node.subscribe(&hop, topic).await?;
            while let Ok(e) = events.recv().await {
                if let Event::Topic { topic, from, data } = e {
                    println!("{topic} {from} {data}");
                }
            }
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
        Some(Command::Status { url }) => {
            let base = url.trim_end_matches('/');
            let (s, body) =
                peerlink_smol::client::get_public(&format!("{base}/healthz"), 4096).await?;
            println!("healthz: {s} {}", String::from_utf8_lossy(&body).trim());
            let (s, body) =
                peerlink_smol::client::get_public(&format!("{base}/metrics"), 1 << 20).await?;
            if s != 200 {
                return Err(format!("metrics: HTTP {s}").into());
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
    }
}

async fn serve(cli: &Cli, file: &FileConfig, config: Config, print: bool) -> Fallible<()> {
    let identity = identity(cli, file, None)?;
    let public_key = identity.public_key().to_b64u();
    let node = Peerlink::start(config, identity).await?;
    let events = node.incoming().await?;
    println!("entity_id  {}", node.id());
    println!("public_key {public_key}");
    println!("url        {}", node.base_url());
    // Ctrl-C or SIGTERM: a graceful shutdown (BYE to peers, drain, stop).
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        tracing::warn!(error = %e, "no signal handler: Ctrl-C will not shut down gracefully");
    }
    loop {
        let next = async { events.recv().await.ok() }
            .or(async {
                let _ = stop_rx.recv().await;
                None
            })
            .await;
        let Some(e) = next else { break };
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
    tracing::info!("shutting down");
    node.shutdown().await?;
    smol::Timer::after(Duration::from_millis(10)).await;
    Ok(())
}
