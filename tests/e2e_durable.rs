//! Durable nodes on a real store (redb, in a temporary directory), on the driver under test:
//! what `send` accepted survives the node's end and is delivered, once and in order, by the
//! node started again from the same store; a store that cannot be used stops the start with an
//! error that says what to do. The `kill -9` tests of real processes are in
//! `cli/tests/durable_kill.rs`.

mod e2e;

use std::path::PathBuf;
use std::time::Duration;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_host::{StorageKind, StorageSettings};
use peerlink_smol::Config;

/// A fresh directory under the system's temporary directory, removed by the test when it passes.
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "peerlink-e2e-durable-{what}-{}-{}",
        std::process::id(),
        now_ts().as_unix_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn durable(dir: &std::path::Path) -> StorageSettings {
    StorageSettings {
        kind: StorageKind::Redb,
        path: Some(dir.join("store.redb")),
        ..StorageSettings::default()
    }
}

/// Alice, durable, reaching Bob through the relay at `url`.
fn alice_config(relay: &Identity, url: &str, bob: &Identity, dir: &std::path::Path) -> Config {
    let mut cfg =
        client_config(TransportPreference::WebsocketFirst, Some((relay, url)), &[(bob, None)]);
    cfg.storage = durable(dir);
    cfg
}

async fn send_n(node: &Node, to: &EntityId, tag: &str, n: usize) {
    for i in 0..n {
        let options = SendOptions::default();
        node.send_message(to, MessageType::PeerMessage, payload(tag, i), options).await.unwrap();
    }
}

fn stored_frames(dir: &std::path::Path) -> u64 {
    let report = peerlink_host::store::check(&dir.join("store.redb")).unwrap();
    report.kinds.get(&b'f').map_or(0, |k| k.entries)
}

#[test]
fn what_a_stopped_sender_accepted_is_delivered_by_the_next_start() {
    if skipped("e2e_durable::what_a_stopped_sender_accepted_is_delivered_by_the_next_start") {
        return;
    }
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let url = relay.base_url();
        let dir = temp_dir("sender");
        // Bob is not running: nothing Alice accepts can be delivered yet.
        let alice = start_node(alice_config(&r, &url, &b, &dir), copy(&a)).await;
        send_n(&alice, b.id(), "m", 300).await;
        alice.shutdown().await.unwrap();
        assert_eq!(stored_frames(&dir), 300, "every accepted message is on disk");
        // Bob is durable too (his own store).
        let bob_dir = temp_dir("receiver");
        let mut bob_cfg =
            client_config(TransportPreference::WebsocketFirst, Some((&r, &url)), &[(&a, None)]);
        bob_cfg.storage = durable(&bob_dir);
        let bob = start_node(bob_cfg, copy(&b)).await;
        let bob_rx = bob.incoming().await.unwrap();
        let alice = start_node(alice_config(&r, &url, &b, &dir), copy(&a)).await;
        let alice_rx = alice.incoming().await.unwrap();
        let got = messages(&bob_rx, a.id(), 300).await;
        let want: Vec<Vec<u8>> = (0..300).map(|i| payload("m", i)).collect();
        assert_eq!(got, want, "all 300, once, in order");
        // Each is reported delivered once, by the node that restored it.
        let mut delivered = std::collections::BTreeSet::new();
        while delivered.len() < 300 {
            let id = next_event(&alice_rx, "deliveries", |e| match e {
                Event::Delivered { id, .. } => Some(id.clone()),
                _ => None,
            })
            .await;
            assert!(delivered.insert(id), "a delivery reported twice");
        }
        assert_no_more_messages(&bob_rx, Duration::from_millis(500)).await;
        let store = alice.snapshot().await.unwrap().store.expect("a durable node's store");
        assert!(store.commits > 0 && store.fsyncs > 0, "{store:?}");
        alice.shutdown().await.unwrap();
        assert_eq!(stored_frames(&dir), 0);
        bob.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&bob_dir);
    });
}

#[test]
fn a_store_that_cannot_be_used_stops_the_start_with_what_to_do() {
    if skipped("e2e_durable::a_store_that_cannot_be_used_stops_the_start_with_what_to_do") {
        return;
    }
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let dir = temp_dir("bad");
        std::fs::write(dir.join("store.redb"), b"this is not a redb file, not at all").unwrap();
        let cfg = alice_config(&r, "http://127.0.0.1:9", &b, &dir);
        let err = try_start_node(cfg.clone(), copy(&a)).await.err().unwrap();
        assert!(err.contains("corrupt") && err.contains("move it away"), "{err}");
        // Locked: a second node on the same store while the first runs.
        std::fs::remove_file(dir.join("store.redb")).unwrap();
        let first = start_node(cfg.clone(), copy(&a)).await;
        let err = try_start_node(cfg, copy(&a)).await.err().unwrap();
        assert!(err.contains("locked"), "{err}");
        first.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_store_that_refuses_a_write_stops_the_node_and_keeps_what_it_had_accepted() {
    if skipped(
        "e2e_durable::a_store_that_refuses_a_write_stops_the_node_and_keeps_what_it_had_accepted",
    ) {
        return;
    }
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let dir = temp_dir("full");
        let mut cfg = alice_config(&r, "http://127.0.0.1:9", &b, &dir);
        // Room for the stream record and two frames: the third message's write is refused.
        cfg.storage.max_entries = 3;
        let alice = start_node(cfg, copy(&a)).await;
        send_n(&alice, b.id(), "m", 2).await;
        let refused = alice
            .send_message(b.id(), MessageType::PeerMessage, payload("m", 2), SendOptions::default())
            .await;
        assert!(refused.is_err(), "a message the store refused is not accepted: {refused:?}");
        // The node has stopped: it takes nothing more.
        let after = alice.transport_stats().await;
        assert!(after.is_err(), "{after:?}");
        // What it accepted before is on disk, and a node restores from it.
        let report = peerlink_host::store::check(&dir.join("store.redb")).unwrap();
        assert_eq!(report.kinds.get(&b'f').map(|k| k.entries), Some(2));
        assert!(report.is_ok(), "{report}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
