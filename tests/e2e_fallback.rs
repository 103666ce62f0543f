//! The WebSocket between a peer and its relay is cut mid-stream (and refused for a while):
//! traffic continues over HTTP with nothing lost or duplicated, and returns to WebSocket once
//! it is back, as the per-transport counters show.

mod e2e;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType, Transport};
use std::time::Duration;

#[test]
fn cut_websocket_falls_back_to_http_then_returns() {
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let proxy = Proxy::start(&relay, false);
        let pref = TransportPreference::WebsocketFirst;
        let alice = start_peer(&a, &r, &proxy.url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &relay.base_url(), &[&a], pref).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        let send = |i: usize| {
            let alice = alice.clone();
            let to = b.id().clone();
            async move {
                alice
                    .send_message(
                        &to,
                        MessageType::PeerMessage,
                        payload("m", i),
                        SendOptions::default(),
                    )
                    .await
                    .unwrap()
            }
        };

        // Phase 1: WebSocket.
        alice.init_websocket_connection(r.id()).await.unwrap();
        for i in 0..10 {
            send(i).await;
        }
        assert_eq!(
            messages(&bob_rx, a.id(), 10).await,
            (0..10).map(|i| payload("m", i)).collect::<Vec<_>>()
        );
        let s1 = alice.transport_stats().await.unwrap();
        assert!(s1.ws_messages_sent >= 10, "{s1:?}");
        assert_eq!(s1.http_messages_sent, 0, "{s1:?}");

        // Phase 2: messages in flight, then the WebSocket is cut and refused.
        for i in 10..20 {
            send(i).await;
        }
        proxy.block_websocket(true);
        proxy.kill_all();
        for i in 20..40 {
            send(i).await;
        }
        let got = messages(&bob_rx, a.id(), 30).await;
        assert_eq!(got, (10..40).map(|i| payload("m", i)).collect::<Vec<_>>());
        let s2 = alice.transport_stats().await.unwrap();
        assert!(s2.http_messages_sent > 0, "no traffic over HTTP after the cut: {s2:?}");
        assert!(s2.fallbacks >= 1, "{s2:?}");
        // The client keeps trying to reopen the WebSocket (with backoff) while it is refused.
        poll_until("a refused WebSocket reconnect", || {
            let n = proxy.ws_refused();
            async move { (n >= 2).then_some(()) }
        })
        .await;

        // Phase 3: the WebSocket is allowed again; traffic switches back to it.
        proxy.block_websocket(false);
        // Probe with one message at a time until one goes over WebSocket (the link must be
        // reopened, after backoff, and stay up for `websocket_stable_after`).
        let start = std::time::Instant::now();
        let mut i = 40;
        loop {
            assert!(start.elapsed() < DEADLINE, "traffic never returned to WebSocket");
            let before = alice.transport_stats().await.unwrap();
            send(i).await;
            assert_eq!(messages(&bob_rx, a.id(), 1).await, vec![payload("m", i)]);
            i += 1;
            let (ws, http) = stats_delta(&alice.transport_stats().await.unwrap(), &before);
            if ws > 0 && http == 0 {
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await; // poll interval
        }
        // The switch was reported to the application.
        next_event(&alice_rx, "TransportSwitched to WebSocket", |e| match e {
            Event::TransportSwitched { node, to: Transport::WebSocket, .. } if node == r.id() => {
                Some(())
            }
            _ => None,
        })
        .await;
        let s3 = alice.transport_stats().await.unwrap();
        for j in i..i + 20 {
            send(j).await;
        }
        let got = messages(&bob_rx, a.id(), 20).await;
        assert_eq!(got, (i..i + 20).map(|j| payload("m", j)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(500)).await;
        let s4 = alice.transport_stats().await.unwrap();
        let (ws, http) = stats_delta(&s4, &s3);
        assert!(ws >= 20, "phase 3 did not use WebSocket: {s3:?} -> {s4:?}");
        assert_eq!(http, 0, "phase 3 still used HTTP: {s3:?} -> {s4:?}");
        assert_eq!(s4.failures, 0, "{s4:?}");
        for h in [alice, bob, relay] {
            h.shutdown().await.unwrap();
        }
    });
}
