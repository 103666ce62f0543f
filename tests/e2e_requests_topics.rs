//! Task delegation and topics over real sockets: `request` is answered by the peer's
//! `TASK_RESPONSE` (smol and blocking clients), an unanswered request times out, and a
//! publication through the relay reaches every subscriber once.

mod e2e;

use std::time::Duration;

use e2e::*;
use peerlink_blocking::Client;
use peerlink_core::Event;
use peerlink_core::transport::TransportPreference;
use serde_json::json;

#[test]
fn requests_are_answered_and_unanswered_ones_time_out() {
    smol::block_on(async {
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let relay = start_relay(&r, &[&a, &b, &c], "127.0.0.1:0".parse().unwrap()).await;
        let pref = TransportPreference::WebsocketFirst;
        let alice = start_peer(&a, &r, &relay.base_url(), &[&b, &c], pref).await;
        let bob = start_peer(&b, &r, &relay.base_url(), &[&a, &c], pref).await;
        // Bob answers every request with its payload reversed.
        let bob_rx = bob.incoming().await.unwrap();
        let responder = bob.clone();
        let serve = smol::spawn(async move {
            while let Ok(e) = bob_rx.recv().await {
                if let Event::Request { from, id, payload } = e {
                    let answer: Vec<u8> = payload.iter().rev().copied().collect();
                    let _ = responder.respond(&from, &id, answer).await;
                }
            }
        });
        for i in 0..5u8 {
            let answer =
                within("a response", alice.request(b.id(), vec![1, 2, i], Duration::from_secs(10)))
                    .await
                    .unwrap();
            assert_eq!(answer, vec![i, 2, 1]);
        }

        // A blocking client asks bob too.
        let config = client_config(pref, Some((&r, &relay.base_url())), &[(&a, None), (&b, None)]);
        let carol = Client::start(config, copy(&c)).unwrap();
        let answer = smol::unblock(move || {
            let answer = carol.request(b.id(), b"abc".to_vec(), Duration::from_secs(10));
            // Nobody answers for alice (no responder runs there): the request times out.
            let unanswered = carol.request(a.id(), b"x".to_vec(), Duration::from_millis(500));
            (answer, unanswered)
        })
        .await;
        assert_eq!(answer.0.unwrap(), b"cba".to_vec());
        assert!(matches!(answer.1, Err(peerlink_blocking::ApiError::Timeout)), "{:?}", answer.1);
        drop(serve);
        for h in [&alice, &bob, &relay] {
            h.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_publication_reaches_every_subscriber_once() {
    smol::block_on(async {
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let relay = start_relay(&r, &[&a, &b, &c], "127.0.0.1:0".parse().unwrap()).await;
        let pref = TransportPreference::WebsocketFirst;
        let peers: Vec<_> = [&a, &b, &c].into_iter().collect();
        let mut handles = Vec::new();
        for me in &peers {
            let others: Vec<_> = peers.iter().filter(|p| p.id() != me.id()).copied().collect();
            handles.push(start_peer(me, &r, &relay.base_url(), &others, pref).await);
        }
        let (alice, bob, carol) = (&handles[0], &handles[1], &handles[2]);
        let (bob_rx, carol_rx) = (bob.incoming().await.unwrap(), carol.incoming().await.unwrap());
        bob.subscribe(r.id(), "news").await.unwrap();
        carol.subscribe(r.id(), "news").await.unwrap();
        // Subscriptions travel to the relay asynchronously: publish until both have one.
        let topic = |rx: &peerlink_host::Events| {
            let mut got = Vec::new();
            while let Ok(e) = rx.try_recv() {
                if let Event::Topic { topic, data, .. } = e {
                    got.push((topic, data));
                }
            }
            got
        };
        let (mut at_bob, mut at_carol) = (Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while at_bob.is_empty() || at_carol.is_empty() {
            assert!(std::time::Instant::now() < deadline, "subscribers got nothing in 30 s");
            n += 1;
            alice.publish_via(r.id(), "news", json!({"n": n})).await.unwrap();
            smol::Timer::after(Duration::from_millis(50)).await;
            at_bob.extend(topic(&bob_rx));
            at_carol.extend(topic(&carol_rx));
        }
        // Let the last publications land, then collect everything.
        smol::Timer::after(Duration::from_millis(300)).await;
        at_bob.extend(topic(&bob_rx));
        at_carol.extend(topic(&carol_rx));
        // Each publication arrived at most once, in order, on the topic it was sent to.
        for got in [&at_bob, &at_carol] {
            let ns: Vec<i64> = got.iter().filter_map(|(_, d)| d["n"].as_i64()).collect();
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "duplicated or reordered: {ns:?}");
            assert!(got.iter().all(|(t, _)| t == "news"));
        }
        for h in handles.iter().chain([&relay]) {
            h.shutdown().await.unwrap();
        }
    });
}
