//! The relay restarts (shut down, then a new node with the same identity on the same port,
//! all state lost): the peers' end-to-end session resumes through it, the session a peer held
//! with the relay itself is re-established by a new handshake (SESSION_NOT_FOUND), and messages
//! sent while it was down are re-sent: nothing lost or duplicated.

mod e2e;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType};
use std::net::SocketAddr;
use std::time::Duration;

async fn restart(
    r: &peerlink_core::Identity,
    clients: &[&peerlink_core::Identity],
    addr: SocketAddr,
) -> Node {
    // The old listener is closed asynchronously after shutdown: retry binding the same port.
    let start = std::time::Instant::now();
    loop {
        match try_start_node(relay_config(clients, addr), copy(r)).await {
            Ok(h) => return h,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "cannot rebind {addr}: {e}");
                smol::Timer::after(Duration::from_millis(50)).await; // poll interval
            }
        }
    }
}

/// How long the peers retry an HTTP request the relay does not answer (spec §16.4), far longer
/// than the relay takes to come back. While the relay is down the peers' traffic goes over HTTP
/// (its WebSocket link is down), and a message whose `POST` is still unanswered after its retries
/// fails: with the suite's short retries (100 + 200 ms) a slow restart would fail messages by
/// design, which is not what this test is about.
const HTTP_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// A peer behind the relay, retrying HTTP for [`HTTP_RETRY_BUDGET`].
async fn start_client(
    me: &peerlink_core::Identity,
    relay: &peerlink_core::Identity,
    relay_url: &str,
    peers: &[&peerlink_core::Identity],
) -> Node {
    let mut cfg = peerlink_smol::Config::ephemeral();
    cfg.node = fast_node(TransportPreference::WebsocketFirst);
    // 100, 200, then 400 ms between attempts.
    let retry = &mut cfg.node.http_retry;
    retry.max_attempts = 3 + (HTTP_RETRY_BUDGET.as_millis() / retry.max.as_millis()) as u32;
    cfg.peers = peers.iter().map(|c| trusted(c, None)).collect();
    cfg.relay = Some(trusted(relay, Some(relay_url.to_owned())));
    start_node(cfg, copy(me)).await
}

#[test]
fn relay_restart_loses_nothing_and_duplicates_nothing() {
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let addr = relay.local_addr();
        let url = relay.base_url();
        let alice = start_client(&a, &r, &url, &[&b]).await;
        let bob = start_client(&b, &r, &url, &[&a]).await;
        let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
        let relay_rx = relay.incoming().await.unwrap();
        let send = |to: peerlink_core::EntityId, tag: &'static str, i: usize| {
            let alice = alice.clone();
            async move {
                alice
                    .send_message(
                        &to,
                        MessageType::PeerMessage,
                        payload(tag, i),
                        SendOptions::default(),
                    )
                    .await
                    .unwrap()
            }
        };

        for i in 0..10 {
            send(b.id().clone(), "m", i).await;
            send(r.id().clone(), "r", i).await;
        }
        assert_eq!(
            messages(&bob_rx, a.id(), 10).await,
            (0..10).map(|i| payload("m", i)).collect::<Vec<_>>()
        );
        assert_eq!(
            messages(&relay_rx, a.id(), 10).await,
            (0..10).map(|i| payload("r", i)).collect::<Vec<_>>()
        );
        let before = alice.transport_stats().await.unwrap();
        let bob_before = bob.transport_stats().await.unwrap();

        // The relay goes away; alice keeps sending (these stay unacknowledged in her outbox).
        relay.shutdown().await.unwrap();
        for i in 10..20 {
            send(b.id().clone(), "m", i).await;
        }
        // A new relay, same identity, same port, no state.
        let relay = restart(&r, &[&a, &b], addr).await;
        let relay_rx = relay.incoming().await.unwrap();
        for i in 20..30 {
            send(b.id().clone(), "m", i).await;
        }
        for i in 10..15 {
            send(r.id().clone(), "r", i).await;
        }
        let got = messages(&bob_rx, a.id(), 20).await;
        assert_eq!(got, (10..30).map(|i| payload("m", i)).collect::<Vec<_>>());
        // The new relay never saw the old session: it answered SESSION_NOT_FOUND and alice ran a
        // new handshake; it gets exactly the messages sent after the restart.
        let got = messages(&relay_rx, a.id(), 5).await;
        assert_eq!(got, (10..15).map(|i| payload("r", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(500)).await;
        assert_no_more_messages(&relay_rx, Duration::ZERO).await;

        let after = alice.transport_stats().await.unwrap();
        let bob_after = bob.transport_stats().await.unwrap();
        assert!(after.handshakes > before.handshakes, "no new handshake with the relay: {after:?}");
        assert!(
            after.resumes + bob_after.resumes > before.resumes + bob_before.resumes,
            "the alice-bob session was not resumed: {after:?} {bob_after:?}"
        );
        // Nothing failed along the way: no failure reported, and none counted (each failure
        // counted is one reported, so the events say which message it was).
        while let Ok(e) = alice_rx.try_recv() {
            assert!(!matches!(e, Event::Failed { .. }), "{e:?}");
        }
        assert_eq!(after.failures, 0, "{after:?}");
        assert!(alice.has_session(b.id()).await.unwrap(), "the alice-bob session was lost");
        assert!(alice.has_session(r.id()).await.unwrap(), "the session with the relay was lost");
        for h in [alice, bob, relay] {
            h.shutdown().await.unwrap();
        }
    });
}
