//! `peerlink serve --cluster URL`: a node that cannot reach Redis at start exits with code 69
//! and says why; with `--workers 2`, two nodes of the cluster in one process, on one port
//! (SO_REUSEPORT). Twenty clients connect to that port; the kernel spreads their links over both
//! workers (Redis's presence records name both), and messages between clients on different
//! workers arrive, each once.

mod cluster_support;
#[path = "../../tests/redis_server/mod.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_support::{DEADLINE, ServeProcess, log_if_asked, temp_dir};

use peerlink_core::node::{NodeConfig, SendOptions};
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_host::broker::redis::cmd;
use peerlink_host::broker::{Broker, BrokerUrl};
use peerlink_smol::{Config, Peerlink, TrustedPeer};
use redis_server::RedisServer;
use smol::future::FutureExt as _;

const CLIENTS: usize = 20;

#[test]
fn two_workers_share_one_port_and_carry_messages_between_them() {
    log_if_asked();
    let redis = RedisServer::start_plain();
    let home = temp_dir("workers");
    let server = ServeProcess::start(&home, &redis.url(), "w", &["--workers", "2"]);
    let fields = &server.fields;
    assert!(fields["cluster"].starts_with("w-1 … w-2 via"), "{fields:?}");
    let url = fields["url"].clone();
    let relay = TrustedPeer {
        entity: EntityId::new(&fields["entity_id"]).unwrap(),
        key: peerlink_core::PublicKey::from_b64u(&fields["public_key"]).unwrap(),
        url: Some(url),
    };

    smol::block_on(async {
        let ids: Vec<Identity> = (0..CLIENTS)
            .map(|i| {
                peerlink_smol::keys::generate(EntityId::new(format!("c{i}")).unwrap()).unwrap()
            })
            .collect();
        let mut clients = Vec::new();
        for me in &ids {
            let mut cfg = Config::ephemeral();
            let mut n = NodeConfig {
                preference: TransportPreference::WebsocketFirst,
                ..NodeConfig::default()
            };
            n.stream.max_rto = Duration::from_secs(2);
            n.link_rate = RateLimit::per_minute(100_000);
            cfg.node = n;
            cfg.relay = Some(relay.clone());
            cfg.peers = ids
                .iter()
                .filter(|p| p.id() != me.id())
                .map(|p| TrustedPeer { entity: p.id().clone(), key: p.public_key(), url: None })
                .collect();
            let node = Peerlink::start(cfg, me.duplicate()).await.unwrap();
            node.init_websocket_connection(&relay.entity).await.unwrap();
            let events = node.incoming().await.unwrap();
            clients.push((node, events));
        }
        // Every client's presence is in Redis, naming the worker its link landed on.
        let rt = peerlink_smol::rt();
        let broker = Broker::connect(&rt, &BrokerUrl::parse(&redis.url()).unwrap(), None, DEADLINE)
            .await
            .unwrap();
        let start = Instant::now();
        let workers = loop {
            let mut workers = BTreeSet::new();
            for me in &ids {
                let key = format!("peerlink:presence:{}", me.id());
                let node: Option<String> = broker.query(cmd("GET").arg(&key)).await.unwrap();
                workers.extend(node);
            }
            if workers.len() == 2 || start.elapsed() > DEADLINE {
                break workers;
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        };
        let expected: BTreeSet<String> = ["w-1".to_owned(), "w-2".to_owned()].into();
        assert_eq!(workers, expected, "{CLIENTS} links spread over both workers");
        eprintln!("links spread after {:?}", start.elapsed());
        // Each client sends to the next: pairs on different workers cross Redis.
        for (i, (node, _)) in clients.iter().enumerate() {
            let to = ids[(i + 1) % CLIENTS].id();
            let text = format!("from c{i}").into_bytes();
            node.send_message(to, MessageType::PeerMessage, text, SendOptions::default())
                .await
                .unwrap();
        }
        for (i, (_, events)) in clients.iter().enumerate() {
            let from = ids[(i + CLIENTS - 1) % CLIENTS].id();
            let got = async {
                loop {
                    match events.recv().await.unwrap() {
                        Event::Message { from: f, payload, .. } => break (f, payload),
                        Event::Failed { .. } => panic!("a message failed"),
                        _ => {}
                    }
                }
            }
            .or(async {
                smol::Timer::after(DEADLINE).await;
                panic!("c{i} got nothing")
            })
            .await;
            assert_eq!(&got.0, from);
        }
        eprintln!("messages after {:?}", start.elapsed());
        for (node, _) in &clients {
            node.shutdown().await.unwrap();
        }
        eprintln!("shut down after {:?}", start.elapsed());
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_node_that_cannot_reach_redis_exits_with_code_69_and_says_why() {
    let mut redis = RedisServer::start_plain();
    let url = redis.url();
    redis.stop();
    let home = temp_dir("unreachable");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peerlink"))
        .args(["serve", "--open", "--listen", "127.0.0.1:0", "--cluster", &url])
        .env("PEERLINK_HOME", &home)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("cluster: cannot connect to the broker"), "{stderr}");
    let _ = std::fs::remove_dir_all(&home);
}
