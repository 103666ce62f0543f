//! The blocking client (`peerlink_blocking::Client`) against the smol relay: messages both ways
//! with a smol peer, then the cut-WebSocket → HTTP → WebSocket-again case, exactly once and in
//! order throughout.

mod e2e;

use e2e::*;
use peerlink_blocking::{Client, ClientConfig};
use peerlink_core::node::{NodeAddr, SendOptions};
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType, TrustPolicy, TrustStore};
use std::time::{Duration, Instant};

#[test]
fn blocking_client_with_a_smol_peer_through_a_cut_websocket() {
    let (r, c, b) = (identity("relay"), identity("carol"), identity("bob"));
    let relay = smol::block_on(start_relay(&r, &[&c, &b], "127.0.0.1:0".parse().unwrap()));
    let proxy = Proxy::start(relay.local_addr(), false);
    let bob = smol::block_on(start_peer(
        &b,
        &r,
        &relay.base_url(),
        &[&c],
        TransportPreference::WebsocketFirst,
    ));
    let bob_rx = smol::block_on(bob.incoming()).unwrap();

    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(r.id().clone(), r.public_key());
    trust.insert(b.id().clone(), b.public_key());
    let config = ClientConfig {
        node: fast_node(TransportPreference::WebsocketFirst),
        relay: Some(NodeAddr { entity: r.id().clone(), base_url: proxy.url() }),
        ..ClientConfig::default()
    };
    let carol = Client::start(config, copy(&c), trust).unwrap();
    let bob_send = |i: usize| {
        smol::block_on(bob.send_message(
            c.id(),
            MessageType::PeerMessage,
            payload("b", i),
            SendOptions::default(),
        ))
        .unwrap();
    };
    let bob_gets = |range: std::ops::Range<usize>| {
        let want: Vec<_> = range.clone().map(|i| payload("c", i)).collect();
        assert_eq!(smol::block_on(messages(&bob_rx, c.id(), range.len())), want);
    };

    // Both ways over WebSocket.
    carol.connect(r.id()).unwrap();
    for i in 0..5 {
        carol.send(b.id(), payload("c", i), None).unwrap();
        bob_send(i);
    }
    bob_gets(0..5);
    assert_eq!(
        client_messages(&carol, b.id(), 5),
        (0..5).map(|i| payload("b", i)).collect::<Vec<_>>()
    );
    let s1 = carol.transport_stats().unwrap();
    assert!(s1.ws_messages_sent >= 5, "{s1:?}");
    assert_eq!(s1.http_messages_sent, 0, "{s1:?}");

    // The WebSocket is cut and refused: both directions continue over HTTP.
    for i in 5..10 {
        carol.send(b.id(), payload("c", i), None).unwrap();
    }
    proxy.block_websocket(true);
    proxy.kill_all();
    for i in 10..20 {
        carol.send(b.id(), payload("c", i), None).unwrap();
    }
    for i in 5..10 {
        bob_send(i);
    }
    bob_gets(5..20);
    assert_eq!(
        client_messages(&carol, b.id(), 5),
        (5..10).map(|i| payload("b", i)).collect::<Vec<_>>()
    );
    let s2 = carol.transport_stats().unwrap();
    assert!(s2.http_messages_sent > 0, "{s2:?}");
    assert!(s2.fallbacks >= 1, "{s2:?}");

    // WebSocket allowed again: probe until a message goes over it, then it carries the rest.
    proxy.block_websocket(false);
    let start = Instant::now();
    let mut i = 20;
    loop {
        assert!(start.elapsed() < DEADLINE, "traffic never returned to WebSocket");
        let before = carol.transport_stats().unwrap();
        carol.send(b.id(), payload("c", i), None).unwrap();
        bob_gets(i..i + 1);
        i += 1;
        let (ws, http) = stats_delta(&carol.transport_stats().unwrap(), &before);
        if ws > 0 && http == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval
    }
    let s3 = carol.transport_stats().unwrap();
    for j in i..i + 10 {
        carol.send(b.id(), payload("c", j), None).unwrap();
    }
    for j in 10..15 {
        bob_send(j);
    }
    bob_gets(i..i + 10);
    assert_eq!(
        client_messages(&carol, b.id(), 5),
        (10..15).map(|j| payload("b", j)).collect::<Vec<_>>()
    );
    let s4 = carol.transport_stats().unwrap();
    let (ws, http) = stats_delta(&s4, &s3);
    assert!(ws >= 10, "{s3:?} -> {s4:?}");
    assert_eq!(http, 0, "{s3:?} -> {s4:?}");
    assert_eq!(s4.failures, 0, "{s4:?}");
    // No duplicates either way.
    smol::block_on(assert_no_more_messages(&bob_rx, Duration::from_millis(300)));
    while let Some(e) = carol.recv_timeout(Duration::ZERO) {
        assert!(!matches!(e, Event::Message { .. } | Event::Failed { .. }), "{e:?}");
    }
    carol.shutdown();
    smol::block_on(async {
        bob.shutdown().await.unwrap();
        relay.shutdown().await.unwrap();
    });
}
