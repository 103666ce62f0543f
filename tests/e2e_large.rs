//! A 4 MiB message crosses a relay in chunks (spec §14), over WebSocket and over HTTP, and
//! arrives whole, once.

mod e2e;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType};
use std::time::Duration;

const SIZE: usize = 4 << 20;

fn large(pref: TransportPreference) -> peerlink_core::node::TransportStats {
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let alice = start_peer(&a, &r, &relay.base_url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &relay.base_url(), &[&a], pref).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        // Not compressible into a pattern a bug could fake: a byte stream from a simple LCG.
        let mut x: u32 = 12345;
        let big: Vec<u8> = (0..SIZE)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let id = alice
            .send_message(b.id(), MessageType::PeerMessage, big.clone(), SendOptions::default())
            .await
            .unwrap();
        alice
            .send_message(
                b.id(),
                MessageType::PeerMessage,
                b"after".to_vec(),
                SendOptions::default(),
            )
            .await
            .unwrap();
        let got = messages(&bob_rx, a.id(), 2).await;
        assert_eq!(got[0].len(), SIZE);
        assert!(got[0] == big, "the large message arrived corrupted");
        assert_eq!(got[1], b"after");
        assert_no_more_messages(&bob_rx, Duration::from_millis(300)).await;
        next_event(&alice_rx, "the large message's delivery", |e| match e {
            Event::Delivered { id: d, .. } if *d == id => Some(()),
            _ => None,
        })
        .await;
        let stats = alice.transport_stats().await.unwrap();
        for h in [alice, bob, relay] {
            h.shutdown().await.unwrap();
        }
        stats
    })
}

#[test]
fn four_mib_over_websocket_in_chunks() {
    let s = large(TransportPreference::WebsocketOnly);
    // 4 MiB in chunks of 256 KiB: at least 16 frames, each under the 1 MiB frame limit.
    assert!(s.ws_messages_sent >= 16, "{s:?}");
    assert!(s.ws_bytes_sent as usize > SIZE, "{s:?}");
    assert_eq!(s.http_messages_sent, 0, "{s:?}");
}

#[test]
fn four_mib_over_http_in_chunks() {
    let s = large(TransportPreference::HttpOnly);
    assert!(s.http_messages_sent >= 16, "{s:?}");
    assert!(s.http_bytes_sent as usize > SIZE, "{s:?}");
    assert_eq!(s.ws_messages_sent, 0, "{s:?}");
}
