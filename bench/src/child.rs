//! A server in a child process: this binary re-run with `--child node` or `--child echo`. The
//! parent measures what the child alone uses (its resident memory, its CPU time), which a
//! server sharing the parent's process could not show apart from the clients.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use peerlink_core::identity::PublicKey;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, TrustPolicy};
use peerlink_smol::{Config, Peerlink, TrustedPeer};

use crate::BoxError;
use crate::stats::{raise_nofile, rss_kib};

/// Which server a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// A peerlink node (open trust, default limits raised just past the largest count).
    Node,
    /// The baseline echo server.
    Echo,
}

impl Server {
    /// The `--child` argument that runs it.
    pub fn arg(self) -> &'static str {
        match self {
            Server::Node => "node",
            Server::Echo => "echo",
        }
    }

    /// The server a `--child` argument names.
    pub fn from_arg(arg: &str) -> Result<Self, BoxError> {
        match arg {
            "node" => Ok(Server::Node),
            "echo" => Ok(Server::Echo),
            other => Err(format!("unknown child {other}").into()),
        }
    }
}

/// The child side: serve until stdin closes. Prints `ADDR <addr>` first, followed for the node
/// by its entity id and public key, which its clients must trust.
pub fn child(server: Server, max: usize) -> Result<(), BoxError> {
    raise_nofile()?;
    smol::block_on(async {
        match server {
            Server::Echo => {
                let addr = crate::baseline::echo_server().await?;
                serve_until_eof(format!("ADDR {addr}")).await
            }
            Server::Node => {
                let mut cfg = Config::ephemeral();
                cfg.node = crate::peer::node_config(TransportPreference::WebsocketOnly, true);
                cfg.trust_policy = TrustPolicy::Open;
                let room = max.saturating_add(256);
                cfg.node.max_links = room;
                cfg.node.max_peers = room;
                cfg.limits.max_connections = room;
                cfg.auth.max_pending_challenges = room;
                // No PING while the parent holds its idle connections.
                cfg.node.ping_interval = Duration::from_secs(3600);
                let me = peerlink_smol::keys::generate(EntityId::new("childnode")?)?;
                let key = me.public_key().to_b64u();
                let node = Peerlink::start(cfg, me).await?;
                let line = format!("ADDR {} {} {key}", node.local_addr(), node.id());
                serve_until_eof(line).await?;
                drop(node);
                Ok(())
            }
        }
    })
}

async fn serve_until_eof(first_line: String) -> Result<(), BoxError> {
    println!("{first_line}");
    smol::unblock(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    Ok(())
}

/// A child server process; killed when dropped.
pub struct ChildServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The node's id and key, with its base URL (`None` for the echo server).
    pub node: Option<TrustedPeer>,
}

impl ChildServer {
    /// Starts `server`, sized for up to `max` connections (and, for the node, peers).
    pub fn spawn(server: Server, max: usize) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        // Diagnostics: `PEERLINK_BENCH_CHILD_WRAP="valgrind --tool=dhat"` runs the child under
        // that command, and lets it exit on its own so the tool can write its report.
        let wrap: Vec<String> = std::env::var("PEERLINK_BENCH_CHILD_WRAP")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut cmd = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(["--child", server.arg(), "--child-max", &max.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or("no child stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ADDR") {
            return Err(format!("the child printed no address: {line:?}").into());
        }
        let addr: SocketAddr = words.next().ok_or("no address")?.parse()?;
        let node = match (words.next(), words.next()) {
            (Some(id), Some(key)) => Some(TrustedPeer {
                entity: EntityId::new(id)?,
                key: PublicKey::from_b64u(key)?,
                url: Some(format!("http://{addr}")),
            }),
            _ => None,
        };
        Ok(Self { child, addr, node })
    }

    /// Its resident memory, KiB.
    pub fn rss(&self) -> Result<u64, BoxError> {
        Ok(rss_kib(Some(self.child.id()))?)
    }

    /// The CPU time it has used so far, user and system, every thread.
    pub fn cpu_time(&self) -> Result<Duration, BoxError> {
        crate::stats::process_cpu_time(self.child.id())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if std::env::var_os("PEERLINK_BENCH_CHILD_WRAP").is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
