//! The blocking client (`peerlink_blocking::Client`) against the smol relay: messages both ways
//! with a smol peer, then the cut-WebSocket → HTTP → WebSocket-again case, exactly once and in
//! order throughout. The blocking client is the driver under test: the relay and the peer are
//! smol nodes whatever `PEERLINK_E2E_DRIVER` says (e2e_drivers mixes the blocking client with
//! the other drivers).

mod e2e;

use e2e::*;
use peerlink_blocking::Client;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn blocking_client_with_a_smol_peer_through_a_cut_websocket() {
    let (r, c, b) = (identity("relay"), identity("carol"), identity("bob"));
    let relay = smol::block_on(start_relay_on(
        NodeDriver::Smol,
        &r,
        &[&c, &b],
        "127.0.0.1:0".parse().unwrap(),
    ));
    let proxy = Proxy::start(&relay, false);
    let bob = smol::block_on(start_peer_on(
        NodeDriver::Smol,
        &b,
        &r,
        &relay.base_url(),
        &[&c],
        TransportPreference::WebsocketFirst,
    ));
    let bob_rx = smol::block_on(bob.incoming()).unwrap();

    let config =
        client_config(TransportPreference::WebsocketFirst, Some((&r, &proxy.url())), &[(&b, None)]);
    let carol = Client::start(config, copy(&c)).unwrap();
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

/// The application API on the blocking client: `is_websocket_connected`, per-peer stats, a
/// `STATUS` handler, `BROADCAST`; then an application that stops reading: its peer's messages
/// wait at the sender (the node refuses data frames past the event queue) and all arrive, once
/// and in order, when it reads again.
#[test]
fn the_blocking_application_api_and_a_slow_reader() {
    let (r, c, b) = (identity("relay"), identity("carol"), identity("bob"));
    let relay = smol::block_on(start_relay_on(
        NodeDriver::Smol,
        &r,
        &[&c, &b],
        "127.0.0.1:0".parse().unwrap(),
    ));
    let pref = TransportPreference::WebsocketFirst;
    let bob =
        smol::block_on(start_peer_on(NodeDriver::Smol, &b, &r, &relay.base_url(), &[&c], pref));
    let bob_rx = smol::block_on(bob.incoming()).unwrap();
    let mut config = client_config(pref, Some((&r, &relay.base_url())), &[(&b, None)]);
    config.limits.event_queue = 8;
    let carol = Client::start(config, copy(&c)).unwrap();

    assert!(!carol.is_websocket_connected(b.id()).unwrap(), "no link before any traffic");
    assert_eq!(carol.peer_stats(b.id()).unwrap(), None);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    carol
        .on_message(MessageType::Status, move |e| {
            if let Event::Message { from, payload, .. } = e {
                seen.lock().unwrap().push((from.clone(), payload.clone()));
            }
        })
        .unwrap();
    carol.connect(r.id()).unwrap();
    carol.send(b.id(), b"hello bob".to_vec(), None).unwrap();
    assert_eq!(smol::block_on(messages(&bob_rx, c.id(), 1)), vec![b"hello bob".to_vec()]);
    assert!(carol.is_websocket_connected(b.id()).unwrap());
    let to_bob = carol.peer_stats(b.id()).unwrap().expect("stats for bob");
    assert!(to_bob.ws_messages_sent >= 1, "{to_bob:?}");

    // STATUS goes to the handler, the message after it to recv_timeout.
    let send = |t: MessageType, p: Vec<u8>| {
        smol::block_on(bob.send_message(c.id(), t, p, SendOptions::default())).unwrap();
    };
    send(MessageType::Status, b"busy".to_vec());
    send(MessageType::PeerMessage, b"hello carol".to_vec());
    assert_eq!(client_messages(&carol, b.id(), 1), vec![b"hello carol".to_vec()]);
    assert_eq!(statuses.lock().unwrap().clone(), vec![(b.id().clone(), b"busy".to_vec())]);

    let sent = carol.broadcast(b"to all".to_vec()).unwrap();
    // Every peer with a session: bob, and the relay (carol opened a session with it).
    let mut to: Vec<_> = sent.iter().map(|(p, _)| p.clone()).collect();
    to.sort();
    assert_eq!(to, vec![b.id().clone(), r.id().clone()]);
    let kind = smol::block_on(next_event(&bob_rx, "the broadcast", |e| match e {
        Event::Message { from, kind, payload, .. } if from == c.id() && payload == b"to all" => {
            Some(*kind)
        }
        _ => None,
    }));
    assert_eq!(kind, MessageType::Broadcast);

    // Carol stops reading: 200 messages, 25 times her event queue. They are not lost while she
    // does not read, and not duplicated by the re-sends that backpressure causes.
    let before = carol.transport_stats().unwrap();
    for i in 0..200 {
        send(MessageType::PeerMessage, payload("slow", i));
    }
    std::thread::sleep(Duration::from_millis(500)); // carol does not read meanwhile
    // Her full queue does not stall her node: it refuses bob's frames and still answers.
    let during = smol::block_on(within("carol's node, her queue full", carol.handle().snapshot()));
    assert_eq!(during.unwrap().sessions, 2, "bob and the relay");
    assert_eq!(
        client_messages(&carol, b.id(), 200),
        (0..200).map(|i| payload("slow", i)).collect::<Vec<_>>()
    );
    // Frames refused while her queue was full came again: more than 200 arrived.
    let after = carol.transport_stats().unwrap();
    let arrived = after.ws_messages_received - before.ws_messages_received;
    assert!(arrived > 200, "no frame was refused and re-sent: {before:?} -> {after:?}");
    while let Some(e) = carol.try_recv() {
        assert!(!matches!(e, Event::Message { .. } | Event::Failed { .. }), "{e:?}");
    }
    carol.shutdown();
    smol::block_on(async {
        bob.shutdown().await.unwrap();
        relay.shutdown().await.unwrap();
    });
}
