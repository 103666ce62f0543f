//! The application API of seed 000 end to end, on every driver (`PEERLINK_E2E_DRIVER`):
//! `is_websocket_connected`, per-peer stats, handlers registered per message type, `STATUS`
//! messages and `BROADCAST`s, through a relay.

mod e2e;

use std::sync::{Arc, Mutex};

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, Identity, MessageType};

#[test]
fn the_application_api() {
    let (r, a, b, c) = (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
    let relay = smol::block_on(start_relay(&r, &[&a, &b, &c], "127.0.0.1:0".parse().unwrap()));
    // Each peer trusts the others.
    let ids = [&a, &b, &c];
    let nodes: Vec<Node> = ids
        .iter()
        .map(|me| {
            let others: Vec<_> = ids.iter().filter(|o| o.id() != me.id()).copied().collect();
            let pref = TransportPreference::WebsocketFirst;
            smol::block_on(start_peer(me, &r, &relay.base_url(), &others, pref))
        })
        .collect();
    let (alice, bob, carol) = (&nodes[0], &nodes[1], &nodes[2]);
    let (bob_rx, carol_rx) =
        (smol::block_on(bob.incoming()).unwrap(), smol::block_on(carol.incoming()).unwrap());

    // Nothing sent yet: no link to bob, no stats for him.
    assert!(!smol::block_on(alice.is_websocket_connected(b.id())).unwrap());
    assert_eq!(smol::block_on(alice.peer_stats(b.id())).unwrap(), None);

    // A STATUS handler at bob takes STATUS messages; they never reach incoming().
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    smol::block_on(bob.on_message(MessageType::Status, move |e| {
        if let Event::Message { from, kind, payload, .. } = e {
            seen.lock().unwrap().push((from.clone(), *kind, payload.clone()));
        }
    }))
    .unwrap();
    let send = |n: &Node, to: &Identity, t: MessageType, p: &[u8]| {
        smol::block_on(n.send_message(to.id(), t, p.to_vec(), SendOptions::default())).unwrap()
    };
    send(alice, &b, MessageType::Status, b"busy");
    send(alice, &b, MessageType::PeerMessage, b"hello bob");
    send(alice, &c, MessageType::PeerMessage, b"hello carol");
    assert_eq!(smol::block_on(messages(&bob_rx, a.id(), 1)), vec![b"hello bob".to_vec()]);
    assert_eq!(smol::block_on(messages(&carol_rx, a.id(), 1)), vec![b"hello carol".to_vec()]);
    // In the sender's order: the STATUS went first, so it was handled before the message.
    assert_eq!(
        statuses.lock().unwrap().clone(),
        vec![(a.id().clone(), MessageType::Status, b"busy".to_vec())]
    );

    // Alice's link to the relay carries her frames to bob: connected; per-peer counters count.
    assert!(smol::block_on(alice.is_websocket_connected(b.id())).unwrap());
    // (The handshake's first step may have gone over HTTP while the link was opening, §16.2.)
    let to_bob = smol::block_on(alice.peer_stats(b.id())).unwrap().expect("stats for bob");
    assert!(to_bob.ws_messages_sent >= 2, "{to_bob:?}");
    let alice_rx = smol::block_on(alice.incoming()).unwrap();
    send(bob, &a, MessageType::PeerMessage, b"hello alice");
    assert_eq!(smol::block_on(messages(&alice_rx, b.id(), 1)), vec![b"hello alice".to_vec()]);
    let from_bob = smol::block_on(alice.peer_stats(b.id())).unwrap().expect("stats for bob");
    assert!(from_bob.ws_messages_received >= 1, "bob's message, counted: {from_bob:?}");
    let total = smol::block_on(alice.transport_stats()).unwrap();
    assert!(total.ws_messages_sent > to_bob.ws_messages_sent, "carol's too: {total:?}");

    // A BROADCAST goes to every peer alice has a session with, once, marked as one.
    let sent = smol::block_on(alice.broadcast(b"to all".to_vec())).unwrap();
    let mut to: Vec<_> = sent.iter().map(|(peer, _)| peer.clone()).collect();
    to.sort();
    assert_eq!(to, vec![b.id().clone(), c.id().clone()]);
    for rx in [&bob_rx, &carol_rx] {
        let (kind, payload) = smol::block_on(next_event(rx, "the broadcast", |e| match e {
            Event::Message { from, kind, payload, .. } if from == a.id() => {
                Some((*kind, payload.clone()))
            }
            _ => None,
        }));
        assert_eq!((kind, payload), (MessageType::Broadcast, b"to all".to_vec()));
    }

    // Alice closes her link: not connected (her traffic may go over HTTP meanwhile).
    smol::block_on(alice.close_websocket_connection(r.id())).unwrap();
    smol::block_on(poll_until("alice's link closed", || async {
        (!alice.is_websocket_connected(b.id()).await.unwrap()).then_some(())
    }));
    for n in nodes.iter().chain([&relay]) {
        smol::block_on(n.shutdown()).unwrap();
    }
}
