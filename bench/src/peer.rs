//! peerlink scenarios: peer → relay node → peer, end-to-end encrypted, over WebSocket (with
//! `sign_all` on or off) or over the HTTP fallback; and full handshakes per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_core::node::NodeConfig;
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, TrustPolicy};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};
use smol::future::FutureExt as _;

use crate::BoxError;
use crate::load::{Pipe, Sink};
use crate::stats::{Clock, Recorder};

/// Which peerlink path a scenario takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// WebSocket only, with `sign_all` on or off (on every node).
    Ws {
        /// Whether every E2E message is also signed.
        sign_all: bool,
    },
    /// HTTP only (POST to the relay, long-poll from it); `sign_all` off.
    Http,
}

impl Path {
    /// The preference and `sign_all` this path uses.
    fn settings(self) -> (TransportPreference, bool) {
        match self {
            Path::Ws { sign_all } => (TransportPreference::WebsocketOnly, sign_all),
            Path::Http => (TransportPreference::HttpOnly, false),
        }
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

fn copy(i: &Identity) -> Identity {
    Identity::from_secret_bytes(i.id().clone(), &i.secret_bytes())
}

fn trusted(i: &Identity, url: Option<String>) -> TrustedPeer {
    TrustedPeer { entity: i.id().clone(), key: i.public_key(), url }
}

/// The three nodes of a relayed scenario.
#[derive(Debug)]
pub struct Trio {
    /// The relay.
    pub relay: Handle,
    /// The sender.
    pub a: Handle,
    /// The receiver.
    pub b: Handle,
}

impl Trio {
    /// Shuts the three nodes down.
    pub async fn shutdown(self) {
        for h in [self.a, self.b, self.relay] {
            let _ = h.shutdown().await;
        }
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

/// Starts a relay and two peers on `path` and returns a pipe from `a` to `b`.
pub async fn pipe(path: Path, window: usize, clock: Clock) -> Result<(Pipe, Trio), BoxError> {
    let (pref, sign_all) = path.settings();
    let (r, a, b) = (identity("relay")?, identity("alice")?, identity("bob")?);
    let mut cfg = Config::ephemeral();
    cfg.node = node_config(TransportPreference::WebsocketFirst, sign_all);
    cfg.peers = vec![trusted(&a, None), trusted(&b, None)];
    let relay = Peerlink::start(cfg, copy(&r)).await?;
    let peer = |me: &Identity, other: &Identity| {
        let mut cfg = Config::ephemeral();
        cfg.node = node_config(pref, sign_all);
        cfg.peers = vec![trusted(other, None)];
        cfg.relay = Some(trusted(&r, Some(relay.base_url())));
        (cfg, copy(me))
    };
    let (ca, ia) = peer(&a, &b);
    let ha = Peerlink::start(ca, ia).await?;
    let (cb, ib) = peer(&b, &a);
    let hb = Peerlink::start(cb, ib).await?;

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
    let sink =
        Sink::Peer { handle: ha.clone(), to: b.id().clone(), release, refused: Default::default() };
    Ok((Pipe { sink, slots, recorder, clock }, Trio { relay, a: ha, b: hb }))
}

/// Full handshakes per second against one node: each one is a fresh client node with a new
/// identity that gets a token (challenge, signature, verify), upgrades a WebSocket and runs the
/// E2E handshake until `SessionEstablished`; `concurrency` at a time, for `secs`.
pub async fn handshakes_per_s(secs: f64, concurrency: usize) -> Result<f64, BoxError> {
    let s = identity("server")?;
    let mut cfg = Config::ephemeral();
    cfg.node = node_config(TransportPreference::WebsocketOnly, true);
    cfg.trust_policy = TrustPolicy::Open;
    let server = Peerlink::start(cfg, copy(&s)).await?;
    let (url, sid, skey) = (server.base_url(), s.id().clone(), s.public_key());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (url, sid) = (url.clone(), sid.clone());
            smol::spawn(async move {
                let mut n = 0u64;
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let me = identity(&format!("hs-{w}-{i}"))?;
                    let mut cfg = Config::ephemeral();
                    cfg.node = node_config(TransportPreference::WebsocketOnly, true);
                    let server =
                        TrustedPeer { entity: sid.clone(), key: skey, url: Some(url.clone()) };
                    cfg.peers = vec![server];
                    let client = Peerlink::start(cfg, me).await?;
                    let events = client.incoming().await?;
                    client.init_websocket_connection(&sid).await?;
                    let established = async {
                        while let Ok(e) = events.recv().await {
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
                    let _ = client.shutdown().await;
                    if !established {
                        return Err::<u64, BoxError>("a handshake did not finish in 10 s".into());
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = server.shutdown().await;
    Ok(rate)
}
