//! Two peers exchange messages through a relay node over WebSocket, end-to-end encrypted: each
//! message arrives exactly once and in order, the relay never delivers one to its own
//! application, and the plaintext never crosses the wire between a peer and the relay.

mod e2e;

use base64::Engine as _;
use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType};
use std::time::Duration;

#[test]
fn two_peers_through_a_relay_over_websocket_end_to_end_encrypted() {
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let relay_events = relay.incoming().await.unwrap();
        // Alice reaches the relay through a recording proxy: everything she exchanges with it.
        let tap = Proxy::start(&relay, true);
        let pref = TransportPreference::WebsocketOnly;
        let alice = start_peer(&a, &r, &tap.url(), &[&b], pref).await;
        let bob = start_peer(&b, &r, &relay.base_url(), &[&a], pref).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());

        const N: usize = 20;
        let secret = |from: &str, i| payload(&format!("TOP-SECRET-{from}-plaintext"), i);
        for i in 0..N {
            let opts = SendOptions::default();
            alice
                .send_message(b.id(), MessageType::PeerMessage, secret("a", i), opts)
                .await
                .unwrap();
            let opts = SendOptions::default();
            bob.send_message(a.id(), MessageType::PeerMessage, secret("b", i), opts).await.unwrap();
        }
        let at_bob = messages(&bob_rx, a.id(), N).await;
        let at_alice = messages(&alice_rx, b.id(), N).await;
        assert_eq!(at_bob, (0..N).map(|i| secret("a", i)).collect::<Vec<_>>());
        assert_eq!(at_alice, (0..N).map(|i| secret("b", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(300)).await;
        assert_no_more_messages(&alice_rx, Duration::ZERO).await;

        // Both directions went over WebSocket only, through the relay (no direct route exists).
        for h in [&alice, &bob] {
            let s = h.transport_stats().await.unwrap();
            assert!(s.ws_messages_sent >= N as u64, "{s:?}");
            assert_eq!(s.http_messages_sent, 0, "{s:?}");
            assert_eq!(s.failures, 0, "{s:?}");
        }
        assert!(relay.snapshot().await.unwrap().stats.ws_messages_sent >= 2 * N as u64);
        assert!(alice.has_session(b.id()).await.unwrap());

        // The relay's application saw no message of theirs.
        while let Ok(e) = relay_events.try_recv() {
            assert!(!matches!(e, Event::Message { .. }), "relay delivered {e:?} to itself");
        }
        // No plaintext on the wire between alice and the relay, neither raw nor base64url.
        let wire = tap.recorded();
        assert!(wire.len() > N * 50, "the tap recorded {} bytes", wire.len());
        for i in 0..N {
            for p in [secret("a", i), secret("b", i)] {
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&p);
                let std64 = base64::engine::general_purpose::STANDARD.encode(&p);
                for needle in [&p[..], b"TOP-SECRET", b64.as_bytes(), std64.as_bytes()] {
                    assert!(
                        !wire.windows(needle.len()).any(|w| w == needle),
                        "plaintext crossed the wire: {}",
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
        for h in [alice, bob, relay] {
            h.shutdown().await.unwrap();
        }
    });
}
