//! Mixed networks: every driver's node talks to every other's (each test names its drivers;
//! `PEERLINK_E2E_DRIVER` does not apply). A tokio peer reaches a blocking client through a smol
//! relay, a smol peer reaches a blocking client through a tokio relay, and an axum application
//! serves a relay under `/peerlink` next to its own routes, reached over WebSocket by one peer
//! and over HTTP only by another. Messages cross both ways, exactly once and in order.

mod e2e;

use e2e::*;
use peerlink_blocking::Client;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Identity, MessageType};
use peerlink_smol::Handle;

const EPHEMERAL: &str = "127.0.0.1:0";

/// A blocking client reachable through the relay at `relay_url`, trusting `peers`.
fn blocking_client(
    me: &Identity,
    relay: &Identity,
    relay_url: &str,
    peers: &[&Identity],
) -> Client {
    let peers: Vec<_> = peers.iter().map(|p| (*p, None)).collect();
    let config =
        client_config(TransportPreference::WebsocketFirst, Some((relay, relay_url)), &peers);
    let client = Client::start(config, copy(me)).unwrap();
    client.connect(relay.id()).unwrap();
    client
}

fn send(node: &Handle, to: &Identity, tag: &str, range: std::ops::Range<usize>) {
    for i in range {
        let p = payload(tag, i);
        smol::block_on(node.send_message(
            to.id(),
            MessageType::PeerMessage,
            p,
            SendOptions::default(),
        ))
        .unwrap();
    }
}

fn want(tag: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| payload(tag, i)).collect()
}

/// A node's handle and a blocking client exchange `n` messages each way.
fn both_ways(node: &Handle, node_id: &Identity, client: &Client, client_id: &Identity, n: usize) {
    let rx = smol::block_on(node.incoming()).unwrap();
    send(node, client_id, "node", 0..n);
    for i in 0..n {
        client.send(node_id.id(), payload("client", i), None).unwrap();
    }
    assert_eq!(client_messages(client, node_id.id(), n), want("node", 0..n));
    assert_eq!(smol::block_on(messages(&rx, client_id.id(), n)), want("client", 0..n));
}

#[test]
fn a_tokio_peer_and_a_blocking_client_through_a_smol_relay() {
    let (r, a, c) = (identity("relay"), identity("alice"), identity("carol"));
    let relay =
        smol::block_on(start_relay_on(NodeDriver::Smol, &r, &[&a, &c], EPHEMERAL.parse().unwrap()));
    let pref = TransportPreference::WebsocketFirst;
    let alice =
        smol::block_on(start_peer_on(NodeDriver::Tokio, &a, &r, &relay.base_url(), &[&c], pref));
    let carol = blocking_client(&c, &r, &relay.base_url(), &[&a]);
    both_ways(&alice, &a, &carol, &c, 20);
}

#[test]
fn a_smol_peer_and_a_blocking_client_through_a_tokio_relay() {
    let (r, b, c) = (identity("relay"), identity("bob"), identity("carol"));
    let relay = smol::block_on(start_relay_on(
        NodeDriver::Tokio,
        &r,
        &[&b, &c],
        EPHEMERAL.parse().unwrap(),
    ));
    let pref = TransportPreference::WebsocketFirst;
    let bob =
        smol::block_on(start_peer_on(NodeDriver::Smol, &b, &r, &relay.base_url(), &[&c], pref));
    let carol = blocking_client(&c, &r, &relay.base_url(), &[&b]);
    both_ways(&bob, &b, &carol, &c, 20);
}

#[test]
fn an_axum_application_serves_its_own_routes_next_to_a_mounted_relay() {
    let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
    let relay =
        smol::block_on(start_relay_on(NodeDriver::Axum, &r, &[&a, &b], EPHEMERAL.parse().unwrap()));
    let relay_url = relay.base_url();
    assert!(relay_url.ends_with(AXUM_PREFIX), "{relay_url}");
    assert_eq!(http_get(relay.local_addr(), "/").as_deref(), Some(AXUM_APP_PAGE));

    // Alice on tokio over WebSocket (upgraded through axum), bob on smol over HTTP only.
    let ws = TransportPreference::WebsocketFirst;
    let alice = smol::block_on(start_peer_on(NodeDriver::Tokio, &a, &r, &relay_url, &[&b], ws));
    let http = TransportPreference::HttpOnly;
    let bob = smol::block_on(start_peer_on(NodeDriver::Smol, &b, &r, &relay_url, &[&a], http));
    let (alice_rx, bob_rx) =
        (smol::block_on(alice.incoming()).unwrap(), smol::block_on(bob.incoming()).unwrap());
    send(&alice, &b, "alice", 0..20);
    send(&bob, &a, "bob", 0..20);
    assert_eq!(smol::block_on(messages(&bob_rx, a.id(), 20)), want("alice", 0..20));
    assert_eq!(smol::block_on(messages(&alice_rx, b.id(), 20)), want("bob", 0..20));

    let alice_stats = smol::block_on(alice.transport_stats()).unwrap();
    assert!(alice_stats.ws_messages_sent >= 20, "{alice_stats:?}");
    let bob_stats = smol::block_on(bob.transport_stats()).unwrap();
    assert_eq!(bob_stats.ws_messages_sent, 0, "{bob_stats:?}");
    let snapshot = smol::block_on(relay.snapshot()).unwrap();
    assert_eq!(snapshot.inbound_peer_links, 1, "alice's link, through axum: {snapshot:?}");
    for node in [alice, bob, relay] {
        smol::block_on(node.shutdown()).unwrap();
    }
}
