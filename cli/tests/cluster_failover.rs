//! Failover in a cluster, with real processes: two `peerlink serve --cluster` nodes sharing one
//! relay identity on a real `redis-server`; alice reaches the cluster at node 1 (node 2 given as
//! its failover URL), bob at node 2. Node 1 is frozen (SIGSTOP) while hundreds of messages are
//! sent both ways through it, so that they are in flight, held in its sockets, when it is killed
//! (SIGKILL): alice moves to node 2 by herself, her sessions resume end to end, and every
//! message arrives exactly once, in order. Alice and bob run in this process (smol).

mod cluster_support;
#[path = "../../tests/redis_server/mod.rs"]
mod redis_server;

use std::process::{Child, Command};
use std::time::Duration;

use cluster_support::{DEADLINE, ServeProcess, log_if_asked, temp_dir};

use peerlink_core::node::{NodeConfig, SendOptions};
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};
use redis_server::RedisServer;
use smol::future::FutureExt as _;

/// A client node's configuration: timers short enough for a test, WebSocket first (the
/// default), reached through the relay `relay` at `url`, failing over to `failover`.
fn client(relay: &TrustedPeer, url: &str, failover: &str, peer: &Identity) -> Config {
    let mut cfg = Config::ephemeral();
    let mut n =
        NodeConfig { preference: TransportPreference::WebsocketFirst, ..NodeConfig::default() };
    n.http_retry.initial = Duration::from_millis(100);
    n.http_retry.max = Duration::from_millis(400);
    n.poll_wait = Duration::from_secs(2);
    n.reconnect.initial = Duration::from_millis(100);
    n.reconnect.max = Duration::from_millis(400);
    n.stream.max_rto = Duration::from_secs(2);
    n.link_rate = RateLimit::per_minute(100_000);
    cfg.node = n;
    cfg.relay = Some(TrustedPeer { url: Some(url.to_owned()), ..relay.clone() });
    cfg.relay_failover_urls = vec![failover.to_owned()];
    cfg.peers = vec![TrustedPeer { entity: peer.id().clone(), key: peer.public_key(), url: None }];
    cfg
}

/// Sends `SIG` (`STOP`, `CONT`, …) to `child` with kill(1).
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {}", child.id());
}

fn identity(name: &str) -> Identity {
    peerlink_smol::keys::generate(EntityId::new(name).unwrap()).unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    f.or(async {
        smol::Timer::after(DEADLINE).await;
        panic!("timed out after {DEADLINE:?} waiting for {what}")
    })
    .await
}

/// What an application received, as its `on_message` handler records it (on the node task).
#[derive(Clone, Default)]
struct Inbox(std::sync::Arc<std::sync::Mutex<Vec<Received>>>);

/// A message received: its sender and payload.
type Received = (EntityId, Vec<u8>);

impl Inbox {
    async fn attach(node: &Handle) -> Inbox {
        let inbox = Inbox::default();
        let into = inbox.clone();
        node.on_message(MessageType::PeerMessage, move |e| {
            if let Event::Message { from, payload, .. } = e {
                into.0.lock().unwrap().push((from.clone(), payload.clone()));
            }
        })
        .await
        .unwrap();
        inbox
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Waits for `n` messages, then checks that nothing more comes for a while; all of them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        within(&format!("{n} messages"), async {
            while self.len() < n {
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        })
        .await;
        smol::Timer::after(Duration::from_millis(500)).await;
        self.0.lock().unwrap().clone()
    }
}

/// Fails the test on any `Failed` event on `rx` (the events the handlers do not take).
fn no_failures(rx: &peerlink_host::Events) {
    while let Ok(e) = rx.try_recv() {
        assert!(!matches!(e, Event::Failed { .. }), "{e:?}");
    }
}

/// Polls `GET /metrics` at `url` until the node's presence map holds `n` entities.
async fn wait_for_presence(url: &str, n: u64) {
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    within("the presence of both entities", async {
        loop {
            let metrics = smol::unblock({
                let addr = addr.clone();
                move || get_metrics(&addr)
            })
            .await;
            let presence = metrics.lines().find_map(|l| {
                l.strip_prefix("peerlink_cluster_presence ")?.trim().parse::<u64>().ok()
            });
            if presence.is_some_and(|p| p >= n) {
                return;
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if s.write_all(req.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

fn payload(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i:05}").into_bytes()
}

async fn send_all(from: &Handle, to: &EntityId, tag: &str, range: std::ops::Range<usize>) {
    for i in range {
        let opts = SendOptions::default();
        from.send_message(to, MessageType::PeerMessage, payload(tag, i), opts).await.unwrap();
    }
}

#[test]
fn a_node_killed_mid_stream_loses_and_duplicates_nothing_after_failover() {
    log_if_asked();
    let redis = RedisServer::start_plain();
    // One relay identity for both nodes: clients trust one key whichever node they reach.
    let home1 = temp_dir("n1");
    let keygen = Command::new(env!("CARGO_BIN_EXE_peerlink"))
        .args(["keygen", "--id", "relay"])
        .env("PEERLINK_HOME", &home1)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let out = String::from_utf8_lossy(&keygen.stdout).into_owned();
    let key = out.lines().find_map(|l| l.strip_prefix("public_key")).unwrap().trim().to_owned();
    let home2 = temp_dir("n2");
    for entry in std::fs::read_dir(&home1).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), home2.join(entry.file_name())).unwrap();
        }
    }
    let mut n1 = ServeProcess::start(&home1, &redis.url(), "n1", &[]);
    let n2 = ServeProcess::start(&home2, &redis.url(), "n2", &[]);
    let relay = TrustedPeer {
        entity: EntityId::new("relay").unwrap(),
        key: peerlink_core::PublicKey::from_b64u(&key).unwrap(),
        url: None,
    };

    smol::block_on(async {
        let (a, b) = (identity("alice"), identity("bob"));
        let alice_cfg = client(&relay, n1.url(), n2.url(), &b);
        let bob_cfg = client(&relay, n2.url(), n1.url(), &a);
        let alice = Peerlink::start(alice_cfg, a.duplicate()).await.unwrap();
        let bob = Peerlink::start(bob_cfg, b.duplicate()).await.unwrap();
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        let (alice_inbox, bob_inbox) = (Inbox::attach(&alice).await, Inbox::attach(&bob).await);
        alice.init_websocket_connection(&relay.entity).await.unwrap();
        bob.init_websocket_connection(&relay.entity).await.unwrap();
        // Each node knows where both are linked before anything is sent (under the open trust
        // policy an entity a node has not heard of is an unknown recipient).
        for node in [&n1, &n2] {
            wait_for_presence(node.url(), 2).await;
        }

        const N: usize = 400;
        // A first part both ways, confirmed end to end: the sessions are up across nodes.
        send_all(&alice, b.id(), "a", 0..10).await;
        send_all(&bob, a.id(), "b", 0..10).await;
        let confirmed = alice.send_confirmed(b.id(), payload("a", 10), SendOptions::default());
        within("a confirmed send across nodes", confirmed).await.unwrap();
        // Then hundreds in flight both ways, and node 1 (alice's) dies without a word.
        // Node 1 (alice's) freezes (SIGSTOP): what is sent now through it is in flight, held
        // in its sockets; then it dies without a word (SIGKILL) and all of that is lost with it.
        signal(&n1.child, "STOP");
        send_all(&alice, b.id(), "a", 11..N / 2).await;
        send_all(&bob, a.id(), "b", 10..N / 2).await;
        smol::Timer::after(Duration::from_millis(200)).await;
        let in_flight = (N / 2 - bob_inbox.len(), N / 2 - alice_inbox.len());
        n1.child.kill().unwrap();
        let _ = n1.child.wait();
        send_all(&alice, b.id(), "a", N / 2..N).await;
        send_all(&bob, a.id(), "b", N / 2..N).await;

        let at_bob = bob_inbox.wait_for(N).await;
        let want: Vec<_> = (0..N).map(|i| (a.id().clone(), payload("a", i))).collect();
        assert!(at_bob == want, "at bob: {} messages, not the {N} sent in order", at_bob.len());
        let at_alice = alice_inbox.wait_for(N).await;
        let want: Vec<_> = (0..N).map(|i| (b.id().clone(), payload("b", i))).collect();
        assert!(at_alice == want, "at alice: {} messages, not {N} in order", at_alice.len());
        no_failures(&alice_rx);
        no_failures(&bob_rx);
        eprintln!("in flight when node 1 died: {} to bob, {} to alice", in_flight.0, in_flight.1);
        assert!(
            in_flight.0 >= 100 && in_flight.1 >= 100,
            "too little was in flight: {in_flight:?}"
        );
        let stats = alice.transport_stats().await.unwrap();
        assert!(stats.failovers >= 1, "alice moved to node 2: {stats:?}");
        assert_eq!(stats.failures, 0, "{stats:?}");
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
    });
    assert!(!n2.panicked(), "node 2 panicked");
    drop(n2);
    for home in [home1, home2] {
        let _ = std::fs::remove_dir_all(home);
    }
}
