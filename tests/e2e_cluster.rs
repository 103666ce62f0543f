//! A cluster of relays on a real `redis-server` (`redis_server/mod.rs` starts one per test):
//! entities linked to different nodes reach each other in both directions, large messages
//! included, over two and three nodes; an entity linked to no node gets what waited for it in
//! its shared mailbox on whichever node it connects to; a publication reaches the subscribers
//! on every node, each once; a Redis restart mid-stream loses and
//! duplicates nothing; a node that cannot reach Redis at start does not start; forged and
//! oversized publications on a node's channel are refused and counted. Nothing in Redis is
//! plaintext. The nodes run on the driver `PEERLINK_E2E_DRIVER` names.

mod e2e;
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_host::ClusterSettings;
use peerlink_host::broker::redis::cmd;
use peerlink_host::broker::{Broker, BrokerUrl};
use redis_server::RedisServer;
use serde_json::json;

/// A cluster node: the relay identity `relay` (every node shares it, so a client trusts one key
/// whichever node it reaches), named `name` in the cluster on `redis`, trusting `clients`.
async fn cluster_node(
    redis: &RedisServer,
    relay: &Identity,
    name: &str,
    clients: &[&Identity],
) -> Node {
    let mut cfg = relay_config(clients, "127.0.0.1:0".parse().unwrap());
    cfg.cluster = Some(cluster_settings(redis, name));
    let node = start_node(cfg, copy(relay)).await;
    // Subscribed to its channels (what is published before that is not for it).
    poll_until("the node to join its cluster", || async {
        node.snapshot().await.ok()?.cluster?.up.then_some(())
    })
    .await;
    node
}

fn cluster_settings(redis: &RedisServer, name: &str) -> ClusterSettings {
    let mut c = ClusterSettings::new(BrokerUrl::parse(&redis.url()).unwrap());
    c.name = Some(EntityId::new(name).unwrap());
    c.timeout = Duration::from_secs(2);
    c.retry_every = Duration::from_millis(200);
    c.refresh_every = Duration::from_secs(2);
    c
}

/// Waits until `node` knows where each of `entities` is linked (its presence map holds them).
async fn wait_for_presence(node: &Node, entities: usize) {
    poll_until("the presence of every entity", || async {
        let snap = node.snapshot().await.ok()?;
        (snap.cluster?.presence >= entities).then_some(())
    })
    .await;
}

/// Every payload published on or stored under the cluster's keys while it lives, as Redis
/// carries them (a pattern subscription on `peerlink:*`).
struct RedisTap {
    seen: Arc<Mutex<Vec<u8>>>,
}

impl RedisTap {
    async fn start(redis: &RedisServer) -> RedisTap {
        let rt = peerlink_smol::rt();
        let url = BrokerUrl::parse(&redis.url()).unwrap();
        let broker = Broker::connect(&rt, &url, None, Duration::from_secs(5)).await.unwrap();
        let sub = broker.subscriber(100_000, 4 << 20).await.unwrap();
        sub.psubscribe("peerlink:*").await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        smol::spawn(async move {
            let messages = sub.messages();
            while let Ok(p) = messages.recv().await {
                into.lock().unwrap().extend_from_slice(&p.payload);
            }
        })
        .detach();
        RedisTap { seen }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.seen.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn send_opts() -> SendOptions {
    SendOptions::default()
}

#[test]
fn entities_on_two_nodes_reach_each_other_both_ways_with_large_messages() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let tap = RedisTap::start(&redis).await;
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let n1 = cluster_node(&redis, &r, "n1", &[&a, &b]).await;
        let n2 = cluster_node(&redis, &r, "n2", &[&a, &b]).await;
        let pref = TransportPreference::WebsocketOnly;
        let alice = start_peer(&a, &r, &n1.base_url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &n2.base_url(), &[&a], pref).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        alice.init_websocket_connection(r.id()).await.unwrap();
        bob.init_websocket_connection(r.id()).await.unwrap();
        wait_for_presence(&n1, 2).await;
        wait_for_presence(&n2, 2).await;

        const N: usize = 30;
        let secret = |from: &str, i| payload(&format!("TOP-SECRET-{from}-plaintext"), i);
        let big: Vec<u8> = (0..700_000u32).map(|i| b"CHUNKED-SECRET-"[i as usize % 15]).collect();
        for i in 0..N {
            let t = MessageType::PeerMessage;
            alice.send_message(b.id(), t, secret("a", i), send_opts()).await.unwrap();
            bob.send_message(a.id(), t, secret("b", i), send_opts()).await.unwrap();
        }
        let confirmed = within("the large message's delivery", async {
            alice.send_confirmed(b.id(), big.clone(), send_opts()).await
        })
        .await
        .expect("the large message is delivered across nodes");
        assert_eq!(&confirmed.to, b.id());
        let mut expected: Vec<Vec<u8>> = (0..N).map(|i| secret("a", i)).collect();
        expected.push(big.clone());
        assert_eq!(messages(&bob_rx, a.id(), N + 1).await, expected);
        let at_alice = messages(&alice_rx, b.id(), N).await;
        assert_eq!(at_alice, (0..N).map(|i| secret("b", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(300)).await;
        assert_no_more_messages(&alice_rx, Duration::ZERO).await;

        // The frames crossed Redis (each node forwarded to the other), sealed.
        for node in [&n1, &n2] {
            let c = node.snapshot().await.unwrap().cluster.unwrap();
            assert!(c.up, "{c:?}");
            assert!(c.forwarded > 0 && c.frames_received > 0, "{c:?}");
            assert_eq!(c.refused, 0, "{c:?}");
        }
        assert!(tap.len() > big.len() / 2, "the large message crossed Redis: {}", tap.len());
        for plain in [&b"TOP-SECRET"[..], b"CHUNKED-SECRET"] {
            assert!(
                !tap.contains(plain),
                "plaintext {:?} in Redis",
                String::from_utf8_lossy(plain)
            );
        }

        // Each node lists both entities, the other's with the node it is linked to.
        let discovered = discover(&n1, &a);
        assert!(
            discovered.contains(r#"{"entity_id":"alice","transport":"websocket"}"#),
            "{discovered}"
        );
        assert!(
            discovered.contains(r#""entity_id":"bob","transport":"websocket","node":"n2""#),
            "{discovered}"
        );
        let health = http_get(n1.local_addr(), &n1.path("/healthz")).unwrap();
        assert!(health.contains(r#""cluster":"up""#), "{health}");
        for n in [&alice, &bob, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

/// `GET /peers/discover` at `node`, logged in as `me`.
fn discover(node: &Node, me: &Identity) -> String {
    let token = token(&node.base_url(), me, node.id());
    let addr = node.local_addr();
    let path = node.path("/peers/discover");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

#[test]
fn three_nodes_carry_a_ring_of_messages() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let everyone = [&a, &b, &c];
        let mut nodes = Vec::new();
        for name in ["n1", "n2", "n3"] {
            nodes.push(cluster_node(&redis, &r, name, &everyone).await);
        }
        let pref = TransportPreference::WebsocketOnly;
        let mut peers = Vec::new();
        for (i, me) in everyone.iter().enumerate() {
            let others: Vec<&Identity> =
                everyone.iter().copied().filter(|p| p.id() != me.id()).collect();
            let peer = start_peer(me, &r, &nodes[i].base_url(), &others, pref).await;
            peer.init_websocket_connection(r.id()).await.unwrap();
            peers.push(peer);
        }
        for n in &nodes {
            wait_for_presence(n, 3).await;
        }
        let rx: Vec<_> = {
            let mut v = Vec::new();
            for p in &peers {
                v.push(p.incoming().await.unwrap());
            }
            v
        };
        const N: usize = 20;
        // alice → bob → carol → alice, each on its own node.
        for i in 0..N {
            for from in 0..3 {
                let to = everyone[(from + 1) % 3].id();
                let tag = format!("ring-{from}");
                let t = MessageType::PeerMessage;
                peers[from].send_message(to, t, payload(&tag, i), send_opts()).await.unwrap();
            }
        }
        for to in 0..3 {
            let from = (to + 2) % 3;
            let got = messages(&rx[to], everyone[from].id(), N).await;
            let want: Vec<_> = (0..N).map(|i| payload(&format!("ring-{from}"), i)).collect();
            assert_eq!(got, want, "at {}", everyone[to].id());
        }
        for r in &rx {
            assert_no_more_messages(r, Duration::from_millis(200)).await;
        }
        for n in peers.iter().chain(nodes.iter()) {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn an_entity_linked_nowhere_drains_its_shared_mailbox_on_another_node() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let n1 = cluster_node(&redis, &r, "n1", &[&a, &b]).await;
        let n2 = cluster_node(&redis, &r, "n2", &[&a, &b]).await;
        let pref = TransportPreference::WebsocketOnly;
        let alice = start_peer(&a, &r, &n1.base_url(), &[&b], pref).await;
        alice.init_websocket_connection(r.id()).await.unwrap();
        wait_for_presence(&n1, 1).await;
        // Bob is linked to no node: alice's handshake and messages wait in his shared mailbox.
        const N: usize = 10;
        for i in 0..N {
            let t = MessageType::PeerMessage;
            alice.send_message(b.id(), t, payload("held", i), send_opts()).await.unwrap();
        }
        poll_until("frames parked in bob's shared mailbox", || async {
            let c = n1.snapshot().await.ok()?.cluster?;
            (c.parked > 0).then_some(())
        })
        .await;
        // Bob comes online at the other node: what waited arrives there, once, in order.
        let bob = start_peer(&b, &r, &n2.base_url(), &[&a], pref).await;
        let bob_rx = bob.incoming().await.unwrap();
        bob.init_websocket_connection(r.id()).await.unwrap();
        let got = messages(&bob_rx, a.id(), N).await;
        assert_eq!(got, (0..N).map(|i| payload("held", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(300)).await;
        let c = n2.snapshot().await.unwrap().cluster.unwrap();
        assert!(c.drained > 0, "{c:?}");
        for n in [&alice, &bob, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_redis_restart_mid_stream_loses_and_duplicates_nothing() {
    smol::block_on(async {
        let mut redis = RedisServer::start_plain();
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let n1 = cluster_node(&redis, &r, "n1", &[&a, &b]).await;
        let n2 = cluster_node(&redis, &r, "n2", &[&a, &b]).await;
        let pref = TransportPreference::WebsocketOnly;
        let alice = start_peer(&a, &r, &n1.base_url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &n2.base_url(), &[&a], pref).await;
        let bob_rx = bob.incoming().await.unwrap();
        alice.init_websocket_connection(r.id()).await.unwrap();
        bob.init_websocket_connection(r.id()).await.unwrap();
        wait_for_presence(&n1, 2).await;

        const N: usize = 200;
        for i in 0..N / 2 {
            let t = MessageType::PeerMessage;
            alice.send_message(b.id(), t, payload("stream", i), send_opts()).await.unwrap();
        }
        // Redis goes away (losing everything: no persistence) with messages in flight.
        redis.stop();
        poll_until("both nodes to see Redis gone", || async {
            for n in [&n1, &n2] {
                if n.snapshot().await.ok()?.cluster?.up {
                    return None;
                }
            }
            Some(())
        })
        .await;
        let health = http_get(n1.local_addr(), &n1.path("/healthz")).unwrap();
        assert!(health.contains(r#""status":"degraded""#), "{health}");
        for i in N / 2..N {
            let t = MessageType::PeerMessage;
            alice.send_message(b.id(), t, payload("stream", i), send_opts()).await.unwrap();
        }
        redis.start();
        let got = messages(&bob_rx, a.id(), N).await;
        assert_eq!(got, (0..N).map(|i| payload("stream", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(500)).await;
        for n in [&n1, &n2] {
            let c = n.snapshot().await.unwrap().cluster.unwrap();
            assert!(c.up && c.connects >= 2, "rejoined by itself: {c:?}");
        }
        for n in [&alice, &bob, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_node_that_cannot_reach_redis_does_not_start() {
    smol::block_on(async {
        let mut redis = RedisServer::start_plain();
        let settings = cluster_settings(&redis, "n1");
        redis.stop();
        let r = identity("relay");
        let mut cfg = relay_config(&[], "127.0.0.1:0".parse().unwrap());
        cfg.cluster = Some(settings);
        let err = try_start_node(cfg, copy(&r)).await.expect_err("no Redis, no node");
        assert!(err.contains("cluster: cannot connect to the broker"), "{err}");
    });
}

#[test]
fn forged_and_oversized_publications_are_refused_and_counted() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let n1 = cluster_node(&redis, &r, "n1", &[&a, &b]).await;
        let n2 = cluster_node(&redis, &r, "n2", &[&a, &b]).await;
        let rt = peerlink_smol::rt();
        let url = BrokerUrl::parse(&redis.url()).unwrap();
        let rogue = Broker::connect(&rt, &url, None, Duration::from_secs(5)).await.unwrap();
        let junk: [&[u8]; 5] = [
            b"no line feed",
            b"bob\nnot an envelope",
            b"b o b\n{}",
            &[0xff; 64],
            &vec![b'x'; (1 << 20) + 4096],
        ];
        for payload in junk {
            let _: i64 =
                rogue.query(cmd("PUBLISH").arg("peerlink:node:n2").arg(payload)).await.unwrap();
        }
        let _: i64 = rogue
            .query(cmd("PUBLISH").arg("peerlink:presence").arg(&br#"{"entity":"x y"}"#[..]))
            .await
            .unwrap();
        poll_until("the junk to be refused", || async {
            let c = n2.snapshot().await.ok()?.cluster?;
            (c.refused >= 5 && c.publications_dropped >= 1).then_some(c)
        })
        .await;
        // The node still carries real traffic.
        let pref = TransportPreference::WebsocketOnly;
        let alice = start_peer(&a, &r, &n1.base_url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &n2.base_url(), &[&a], pref).await;
        let bob_rx = bob.incoming().await.unwrap();
        bob.init_websocket_connection(r.id()).await.unwrap();
        let t = MessageType::PeerMessage;
        alice.send_message(b.id(), t, b"still here".to_vec(), send_opts()).await.unwrap();
        assert_eq!(messages(&bob_rx, a.id(), 1).await, vec![b"still here".to_vec()]);
        let metrics = http_get(n2.local_addr(), &n2.path("/metrics")).unwrap();
        assert!(metrics.contains("peerlink_cluster_refused_total"), "{metrics}");
        for n in [&alice, &bob, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

/// The topic publications received on `rx` so far: (publisher, `n`).
fn publications(rx: &peerlink_host::Events) -> Vec<(String, i64)> {
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::Topic { topic, from, data } = e {
            assert_eq!(topic, "news");
            got.push((from.to_string(), data["n"].as_i64().unwrap_or(-1)));
        }
    }
    got
}

#[test]
fn a_publication_reaches_the_subscribers_on_every_node_once() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let everyone = [&a, &b, &c];
        let n1 = cluster_node(&redis, &r, "n1", &everyone).await;
        let n2 = cluster_node(&redis, &r, "n2", &everyone).await;
        let pref = TransportPreference::WebsocketFirst;
        let others = |me: &Identity| -> Vec<&Identity> {
            everyone.iter().copied().filter(|p| p.id() != me.id()).collect()
        };
        // Alice subscribes at n1, bob at n2; carol publishes at n2, alice at n1.
        let alice = start_peer(&a, &r, &n1.base_url(), &others(&a), pref).await;
        let bob = start_peer(&b, &r, &n2.base_url(), &others(&b), pref).await;
        let carol = start_peer(&c, &r, &n2.base_url(), &others(&c), pref).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        alice.subscribe(r.id(), "news").await.unwrap();
        bob.subscribe(r.id(), "news").await.unwrap();
        // Subscriptions travel to the nodes, and the nodes' to Redis, asynchronously: publish
        // until both subscribers have heard one (n = 0), then the numbered ones.
        let (mut at_alice, mut at_bob) = (Vec::new(), Vec::new());
        within("both subscribers to hear a first publication", async {
            while at_alice.is_empty() || at_bob.is_empty() {
                carol.publish_via(r.id(), "news", json!({"n": 0})).await.unwrap();
                smol::Timer::after(Duration::from_millis(50)).await;
                at_alice.extend(publications(&alice_rx));
                at_bob.extend(publications(&bob_rx));
            }
        })
        .await;
        const N: i64 = 20;
        for n in 1..=N {
            carol.publish_via(r.id(), "news", json!({"n": n})).await.unwrap();
            alice.publish_via(r.id(), "news", json!({"n": 100 + n})).await.unwrap();
        }
        let last = |got: &Vec<(String, i64)>, who: &str| {
            got.iter().filter(|(f, _)| f == who).map(|(_, n)| *n).max()
        };
        within("every publication at both subscribers", async {
            while last(&at_alice, "carol") != Some(N)
                || last(&at_bob, "carol") != Some(N)
                || last(&at_bob, "alice") != Some(100 + N)
            {
                smol::Timer::after(Duration::from_millis(20)).await;
                at_alice.extend(publications(&alice_rx));
                at_bob.extend(publications(&bob_rx));
            }
        })
        .await;
        smol::Timer::after(Duration::from_millis(300)).await;
        at_alice.extend(publications(&alice_rx));
        at_bob.extend(publications(&bob_rx));
        // Each numbered publication exactly once, in order, at each subscriber (a publisher
        // that subscribed does not get its own back).
        let numbered = |got: &Vec<(String, i64)>, who: &str| -> Vec<i64> {
            got.iter().filter(|(f, n)| f == who && *n > 0).map(|(_, n)| *n).collect()
        };
        let from_carol: Vec<i64> = (1..=N).collect();
        let from_alice: Vec<i64> = (101..=100 + N).collect();
        assert_eq!(numbered(&at_alice, "carol"), from_carol, "carol's at alice (other node)");
        assert_eq!(numbered(&at_bob, "carol"), from_carol, "carol's at bob (her node)");
        assert_eq!(numbered(&at_bob, "alice"), from_alice, "alice's at bob (other node)");
        assert!(numbered(&at_alice, "alice").is_empty(), "alice's own came back to her");
        for n in [&alice, &bob, &carol, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

/// The ACL rule `docs/cluster.md` gives for a cluster's Redis user: the commands a node uses
/// (those its scripts call included), on its prefix's keys and channels only.
const ACL_RULE: &str = "peerlink on >s3cret resetkeys ~peerlink:* resetchannels &peerlink:* \
    -@all +@connection +get +set +del +mget +scan +publish +subscribe +unsubscribe +eval \
    +llen +rpush +incrby +pexpire +lrange";

#[test]
fn a_cluster_runs_as_the_documented_acl_user_and_nothing_more() {
    smol::block_on(async {
        let mut args = vec!["--user", "default", "off", "--user"];
        args.extend(ACL_RULE.split_whitespace());
        let redis = RedisServer::start_with(&args);
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let node = |name: &str| {
            let mut cfg = relay_config(&[&a, &b], "127.0.0.1:0".parse().unwrap());
            let mut settings = cluster_settings(&redis, name);
            settings.redis_url = BrokerUrl::parse(&redis.url_as("peerlink", "s3cret")).unwrap();
            cfg.cluster = Some(settings);
            cfg
        };
        let n1 = start_node(node("n1"), copy(&r)).await;
        let n2 = start_node(node("n2"), copy(&r)).await;
        for n in [&n1, &n2] {
            poll_until("the node to join its cluster", || async {
                n.snapshot().await.ok()?.cluster?.up.then_some(())
            })
            .await;
        }
        let pref = TransportPreference::WebsocketFirst;
        // Bob is offline first: his shared mailbox (the scripts) is used, then drained.
        let alice = start_peer(&a, &r, &n1.base_url(), &[&b], pref).await;
        alice.init_websocket_connection(r.id()).await.unwrap();
        wait_for_presence(&n1, 1).await;
        let t = MessageType::PeerMessage;
        alice.send_message(b.id(), t, b"parked".to_vec(), send_opts()).await.unwrap();
        // Parked before bob appears (else it would be forwarded to him, and the scripts untried).
        poll_until("alice's handshake parked for bob", || async {
            (n1.snapshot().await.ok()?.cluster?.parked > 0).then_some(())
        })
        .await;
        let bob = start_peer(&b, &r, &n2.base_url(), &[&a], pref).await;
        let bob_rx = bob.incoming().await.unwrap();
        bob.init_websocket_connection(r.id()).await.unwrap();
        assert_eq!(messages(&bob_rx, a.id(), 1).await, vec![b"parked".to_vec()]);
        alice.send_message(b.id(), t, b"forwarded".to_vec(), send_opts()).await.unwrap();
        assert_eq!(messages(&bob_rx, a.id(), 1).await, vec![b"forwarded".to_vec()]);
        let (c1, c2) = (n1.snapshot().await.unwrap(), n2.snapshot().await.unwrap());
        let (c1, c2) = (c1.cluster.unwrap(), c2.cluster.unwrap());
        for c in [&c1, &c2] {
            assert_eq!(c.requests_dropped, 0, "the broker refused a request: {c:?}");
        }
        assert!(c1.parked > 0 && c1.forwarded > 0, "{c1:?}");
        assert!(c2.drained > 0, "{c2:?}");
        for n in [&alice, &bob, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_node_cut_from_redis_serves_its_own_entities_and_rejoins_by_itself() {
    smol::block_on(async {
        let redis = RedisServer::start_plain();
        let redis_addr: std::net::SocketAddr =
            format!("127.0.0.1:{}", redis.port()).parse().unwrap();
        // Node 2 reaches Redis through a proxy that can cut it off.
        let cut = Proxy::to(redis_addr, "", false);
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let everyone = [&a, &b, &c];
        let n1 = cluster_node(&redis, &r, "n1", &everyone).await;
        let mut cfg = relay_config(&everyone, "127.0.0.1:0".parse().unwrap());
        let mut settings = cluster_settings(&redis, "n2");
        settings.redis_url = BrokerUrl::parse(&format!("redis://{}", cut.addr())).unwrap();
        cfg.cluster = Some(settings);
        let n2 = start_node(cfg, copy(&r)).await;
        let pref = TransportPreference::WebsocketFirst;
        let others = |me: &Identity| -> Vec<&Identity> {
            everyone.iter().copied().filter(|p| p.id() != me.id()).collect()
        };
        let alice = start_peer(&a, &r, &n1.base_url(), &others(&a), pref).await;
        let bob = start_peer(&b, &r, &n2.base_url(), &others(&b), pref).await;
        let carol = start_peer(&c, &r, &n2.base_url(), &others(&c), pref).await;
        let rx: Vec<_> = vec![
            alice.incoming().await.unwrap(),
            bob.incoming().await.unwrap(),
            carol.incoming().await.unwrap(),
        ];
        for p in [&alice, &bob, &carol] {
            p.init_websocket_connection(r.id()).await.unwrap();
        }
        wait_for_presence(&n1, 3).await;
        wait_for_presence(&n2, 3).await;
        let t = MessageType::PeerMessage;
        alice.send_message(b.id(), t, payload("before", 0), send_opts()).await.unwrap();
        assert_eq!(messages(&rx[1], a.id(), 1).await, vec![payload("before", 0)]);

        // Node 2 loses Redis (its connections cut, new ones refused).
        cut.refuse_all(true);
        cut.kill_all();
        poll_until("node 2 to see Redis gone", || async {
            (!n2.snapshot().await.ok()?.cluster?.up).then_some(())
        })
        .await;
        let health = http_get(n2.local_addr(), &n2.path("/healthz")).unwrap();
        assert!(health.contains(r#""status":"degraded""#), "{health}");
        let health = http_get(n1.local_addr(), &n1.path("/healthz")).unwrap();
        assert!(health.contains(r#""cluster":"up""#), "node 1 is fine: {health}");
        // Its own entities still reach each other at once.
        bob.send_message(c.id(), t, payload("local", 0), send_opts()).await.unwrap();
        assert_eq!(messages(&rx[2], b.id(), 1).await, vec![payload("local", 0)]);
        // Messages across the cut wait, both ways.
        const N: usize = 20;
        for i in 0..N {
            alice.send_message(b.id(), t, payload("a-b", i), send_opts()).await.unwrap();
            bob.send_message(a.id(), t, payload("b-a", i), send_opts()).await.unwrap();
        }
        // Redis is reachable again: node 2 rejoins by itself and everything arrives, once.
        cut.refuse_all(false);
        let got_bob = messages(&rx[1], a.id(), N).await;
        assert_eq!(got_bob, (0..N).map(|i| payload("a-b", i)).collect::<Vec<_>>());
        let got_alice = messages(&rx[0], b.id(), N).await;
        assert_eq!(got_alice, (0..N).map(|i| payload("b-a", i)).collect::<Vec<_>>());
        for r in &rx {
            assert_no_more_messages(r, Duration::from_millis(300)).await;
        }
        let c2 = n2.snapshot().await.unwrap().cluster.unwrap();
        assert!(c2.up && c2.connects >= 2, "{c2:?}");
        for n in [&alice, &bob, &carol, &n1, &n2] {
            n.shutdown().await.unwrap();
        }
    });
}
