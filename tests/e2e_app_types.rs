//! Confirmed sends (seed 000's `TransportResult`: which transport carried a message) and
//! application-defined message types (spec §13.1 `app_type`) with their handlers, through a
//! relay, end to end.

mod e2e;

use std::sync::{Arc, Mutex};

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::stream::FailReason;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{AppType, EntityId, Event, MessageType, Transport};
use peerlink_smol::{ApiError, Handle, Undelivered};

fn app(name: &str) -> AppType {
    AppType::new(name).unwrap()
}

/// What a handler saw: `(app_type, payload)` per message, in arrival order.
type Seen = Arc<Mutex<Vec<(Option<AppType>, Vec<u8>)>>>;

fn recorder() -> (Seen, impl Fn(&Event) + Send + Sync + 'static) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let f = move |e: &Event| {
        if let Event::Message { app_type, payload, .. } = e {
            s.lock().unwrap().push((app_type.clone(), payload.clone()));
        }
    };
    (seen, f)
}

async fn wait_connected(node: &Handle, peer: &EntityId) {
    poll_until("the WebSocket link", || async {
        node.is_websocket_connected(peer).await.unwrap().then_some(())
    })
    .await;
}

#[test]
fn confirmed_sends_report_the_transport_that_carried_them() {
    smol::block_on(async {
        let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
        let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
        let url = relay.base_url();
        let pref = TransportPreference::WebsocketFirst;
        let alice = start_peer(&a, &r, &url, &[&b], pref).await;
        let bob = start_peer(&b, &r, &url, &[&a], pref).await;
        let bob_rx = bob.incoming().await.unwrap();
        bob.init_websocket_connection(a.id()).await.unwrap();
        alice.init_websocket_connection(b.id()).await.unwrap();
        wait_connected(&alice, b.id()).await;

        let ws = within(
            "a confirmed send",
            alice.send_confirmed(b.id(), b"one".to_vec(), SendOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!((ws.to.clone(), ws.transport), (b.id().clone(), Some(Transport::WebSocket)));
        // This message prefers HTTP (seed 000's `prefer_websocket=False`), and says it went so.
        let http_first = SendOptions { prefer_websocket: Some(false), ..SendOptions::default() };
        let http =
            within("an HTTP-first send", alice.send_confirmed(b.id(), b"two".to_vec(), http_first))
                .await
                .unwrap();
        assert_eq!(http.transport, Some(Transport::Http));
        assert_ne!(ws.id, http.id);
        // Delivered means handed to bob's application: both are there, in order, once.
        assert_eq!(messages(&bob_rx, a.id(), 2).await, vec![b"one".to_vec(), b"two".to_vec()]);
        // A confirmed send's `Delivered` is its result, not an event as well.
        let alice_rx = alice.incoming().await.unwrap();
        alice.send_confirmed(b.id(), b"three".to_vec(), SendOptions::default()).await.unwrap();
        assert!(
            !std::iter::from_fn(|| alice_rx.try_recv().ok())
                .any(|e| matches!(e, Event::Delivered { .. }))
        );
        for n in [&alice, &bob, &relay] {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn application_types_reach_their_handlers_and_a_peer_without_them_refuses_typed_sends() {
    smol::block_on(async {
        let (r, a, b, c) =
            (identity("relay"), identity("alice"), identity("bob"), identity("carol"));
        let relay = start_relay(&r, &[&a, &b, &c], "127.0.0.1:0".parse().unwrap()).await;
        let url = relay.base_url();
        let pref = TransportPreference::WebsocketFirst;
        let alice = start_peer(&a, &r, &url, &[&b, &c], pref).await;
        let bob = start_peer(&b, &r, &url, &[&a], pref).await;
        // Carol's node predates application types: it does not offer the capability.
        let mut legacy = client_config(pref, Some((&r, url.as_str())), &[(&a, None)]);
        legacy.node.capabilities.app_types = false;
        let carol = start_node(legacy, copy(&c)).await;
        let bob_rx = bob.incoming().await.unwrap();
        let carol_rx = carol.incoming().await.unwrap();

        // Bob: one handler for MODEL_CREATED, one for every other PEER_MESSAGE.
        let (created, on_created) = recorder();
        let (others, on_other) = recorder();
        bob.on_app_type(app("MODEL_CREATED"), on_created).await.unwrap();
        bob.on_message(MessageType::PeerMessage, on_other).await.unwrap();
        let typed = |t: &str| SendOptions::typed(app(t));
        let send = |p: &'static [u8], o: SendOptions| alice.send_confirmed(b.id(), p.to_vec(), o);
        within("typed sends", async {
            send(b"m1", typed("MODEL_CREATED")).await.unwrap();
            send(b"t1", typed("training.progress")).await.unwrap();
            send(b"plain", SendOptions::default()).await.unwrap();
            // Large enough to be chunked (256 KiB chunks): the type survives reassembly.
            alice.send_confirmed(b.id(), vec![7; 600_000], typed("MODEL_CREATED")).await.unwrap();
        })
        .await;
        // Confirmed means bob's application had them: the handlers ran before the results.
        assert_eq!(
            created.lock().unwrap().clone(),
            vec![
                (Some(app("MODEL_CREATED")), b"m1".to_vec()),
                (Some(app("MODEL_CREATED")), vec![7; 600_000])
            ]
        );
        assert_eq!(
            others.lock().unwrap().clone(),
            vec![(Some(app("training.progress")), b"t1".to_vec()), (None, b"plain".to_vec())]
        );

        // A typed message never reaches carol untyped: it fails, certainly undelivered.
        let refused = within(
            "a refused typed send",
            alice.send_confirmed(c.id(), b"x".to_vec(), typed("NEWS")),
        )
        .await;
        match refused {
            Err(ApiError::Undelivered(Undelivered { reason, maybe_delivered })) => {
                assert_eq!((reason, maybe_delivered), (FailReason::Rejected, false))
            }
            other => panic!("expected Undelivered, got {other:?}"),
        }
        within(
            "an untyped send to carol",
            alice.send_confirmed(c.id(), b"y".to_vec(), SendOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(messages(&carol_rx, a.id(), 1).await, vec![b"y".to_vec()]);

        // A typed broadcast: bob gets it typed (no BROADCAST handler: on incoming); carol's
        // copy fails alone.
        let sent = alice.broadcast_with(b"all".to_vec(), typed("NEWS")).await.unwrap();
        assert_eq!(sent.len(), 2);
        let news = next_event(&bob_rx, "the typed broadcast", |e| match e {
            Event::Message { kind: MessageType::Broadcast, app_type, payload, .. } => {
                Some((app_type.clone(), payload.clone()))
            }
            _ => None,
        })
        .await;
        assert_eq!(news, (Some(app("NEWS")), b"all".to_vec()));
        for n in [&alice, &bob, &carol, &relay] {
            n.shutdown().await.unwrap();
        }
    });
}

#[test]
fn the_blocking_client_sends_confirmed_and_typed() {
    let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
    let relay = smol::block_on(start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()));
    let url = relay.base_url();
    let pref = TransportPreference::WebsocketFirst;
    let bob = smol::block_on(start_peer(&b, &r, &url, &[&a], pref));
    let (seen, handler) = recorder();
    smol::block_on(bob.on_app_type(app("PING_APP"), handler)).unwrap();
    let cfg = client_config(pref, Some((&r, url.as_str())), &[(&b, None)]);
    let alice = peerlink_blocking::Client::start(cfg, copy(&a)).unwrap();
    let result = alice.send_confirmed(b.id(), b"hi".to_vec(), SendOptions::typed(app("PING_APP")));
    let result = result.unwrap();
    assert_eq!(result.to, b.id().clone());
    assert!(result.transport.is_some());
    assert_eq!(seen.lock().unwrap().clone(), vec![(Some(app("PING_APP")), b"hi".to_vec())]);
    alice.shutdown();
    smol::block_on(bob.shutdown()).unwrap();
    smol::block_on(relay.shutdown()).unwrap();
}
