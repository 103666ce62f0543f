//! Resident memory per idle connection, measured on a server in a child process (this binary
//! re-run with `--child node` or `--child echo`, `crate::child`): its `VmRSS` before and after the parent opens
//! N connections to it, divided by N. The parent's own (client-side) memory is not counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use peerlink_core::EntityId;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;

use crate::BoxError;
use crate::child::{ChildServer, Server};
use crate::stats::raise_nofile;

/// Resident memory of one count of idle connections.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Footprint {
    /// Connections open.
    pub connections: usize,
    /// Server RSS with no connection, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with them, KiB.
    pub rss_after_kib: u64,
    /// Links the node reports (`None` for the echo server).
    pub links_seen: Option<u64>,
}

impl Footprint {
    /// KiB per connection.
    pub fn kib_per_conn(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }
}

/// A raw HTTP/1.1 exchange with `connection: close`: status and body.
async fn http(addr: SocketAddr, request: String) -> Result<(u16, String), BoxError> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Gets a bearer token from the node at `addr` for a fresh identity `name` (spec §23.2).
async fn token(addr: SocketAddr, name: &str) -> Result<String, BoxError> {
    let me = peerlink_smol::keys::generate(EntityId::new(name)?)?;
    let get = format!(
        "GET /auth/token?entity_id={name}&pubkey={} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        me.public_key().to_b64u()
    );
    let (status, body) = http(addr, get).await?;
    if status != 200 {
        return Err(format!("/auth/token answered {status}: {body}").into());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let ch = v["challenge"].as_str().ok_or("no challenge")?;
    let node = EntityId::new(v["node_id"].as_str().ok_or("no node_id")?)?;
    let sig = peerlink_core::auth::sign_challenge(&me, &node, ch)?;
    let body =
        serde_json::json!({"entity_id": name, "challenge": ch, "signature": sig}).to_string();
    let post = format!(
        "POST /auth/verify HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http(addr, post).await?;
    if status != 200 {
        return Err(format!("/auth/verify answered {status}: {body}").into());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["token"].as_str().ok_or("no token")?.to_owned())
}

/// One idle connection: for the node, an authenticated `/ws/v1/peers` upgrade.
async fn open(
    server: Server,
    addr: SocketAddr,
    i: usize,
) -> Result<WebSocketStream<TcpStream>, BoxError> {
    match server {
        Server::Echo => crate::baseline::connect(addr).await,
        Server::Node => {
            let token = token(addr, &format!("idle-{i}")).await?;
            let mut req = format!("ws://{addr}/ws/v1/peers").into_client_request()?;
            req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
            let tcp = TcpStream::connect(addr).await?;
            let cfg = Some(crate::baseline::ws_config());
            let (ws, _) = async_tungstenite::client_async_with_config(req, tcp, cfg).await?;
            Ok(ws)
        }
    }
}

/// Inbound peer links the node at `addr` reports on `/metrics`.
pub async fn links(addr: SocketAddr) -> Option<u64> {
    let get = "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned();
    let (_, body) = http(addr, get).await.ok()?;
    body.lines()
        .find(|l| l.starts_with("peerlink_links{endpoint=\"peers\",direction=\"inbound\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// Opens `counts` (ascending) idle connections to a fresh `server` child, measuring its RSS at
/// each count. The connections are opened `concurrency` at a time.
pub async fn footprints(
    server: Server,
    counts: &[usize],
    concurrency: usize,
) -> Result<Vec<Footprint>, BoxError> {
    raise_nofile()?;
    let max = counts.iter().copied().max().unwrap_or(0);
    let child = ChildServer::spawn(server, max)?;
    let addr = child.addr;
    // Warm the server's paths once (allocator arenas, lazy statics), then measure.
    let warm = open(server, addr, usize::MAX - 1).await?;
    drop(warm);
    smol::Timer::after(Duration::from_millis(300)).await;
    let before = child.rss()?;
    let held = Arc::new(smol::lock::Mutex::new(Vec::new()));
    let mut out = Vec::new();
    let mut opened = 0usize;
    for &n in counts {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(opened));
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (next, held) = (Arc::clone(&next), Arc::clone(&held));
                smol::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            return Ok::<_, BoxError>(());
                        }
                        let ws = open(server, addr, i).await?;
                        held.lock().await.push(ws);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await?;
        }
        opened = n;
        smol::Timer::after(Duration::from_millis(500)).await;
        let links_seen = match server {
            Server::Node => links(addr).await,
            Server::Echo => None,
        };
        out.push(Footprint {
            connections: n,
            rss_before_kib: before,
            rss_after_kib: child.rss()?,
            links_seen,
        });
    }
    drop(child);
    held.lock().await.clear();
    Ok(out)
}
