//! Each transport preference behaves as spec §16 says, through a relay, with a proxy in front
//! of the relay that can refuse WebSocket upgrades and counts them.

mod e2e;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Event, MessageType};
use std::time::Duration;

struct Net {
    relay: Node,
    alice: Node,
    bob: Node,
    proxy: Proxy,
    bob_rx: peerlink_host::Events,
    alice_rx: peerlink_host::Events,
    b: peerlink_core::Identity,
    a: peerlink_core::Identity,
}

/// Alice (with `pref`) behind a proxy that refuses WebSocket when `ws_blocked`; bob direct.
async fn net(pref: TransportPreference, ws_blocked: bool) -> Net {
    net_recording(pref, ws_blocked, false).await
}

/// [`net`], with a proxy that records what crosses it when `record`.
async fn net_recording(pref: TransportPreference, ws_blocked: bool, record: bool) -> Net {
    let (r, a, b) = (identity("relay"), identity("alice"), identity("bob"));
    let relay = start_relay(&r, &[&a, &b], "127.0.0.1:0".parse().unwrap()).await;
    let proxy = Proxy::start(&relay, record);
    proxy.block_websocket(ws_blocked);
    let alice = start_peer(&a, &r, &proxy.url(), &[&b], pref).await;
    let bob =
        start_peer(&b, &r, &relay.base_url(), &[&a], TransportPreference::WebsocketFirst).await;
    let (alice_rx, bob_rx) = (alice.incoming().await.unwrap(), bob.incoming().await.unwrap());
    Net { relay, alice, bob, proxy, bob_rx, alice_rx, a, b }
}

impl Net {
    async fn send(&self, i: usize, prefer_websocket: Option<bool>) {
        self.alice
            .send_message(
                self.b.id(),
                MessageType::PeerMessage,
                payload("p", i),
                SendOptions { prefer_websocket, ..SendOptions::default() },
            )
            .await
            .unwrap();
    }

    async fn expect(&self, range: std::ops::Range<usize>) {
        let n = range.len();
        let want: Vec<_> = range.map(|i| payload("p", i)).collect();
        assert_eq!(messages(&self.bob_rx, self.a.id(), n).await, want);
    }

    async fn stop(self) {
        for h in [self.alice, self.bob, self.relay] {
            h.shutdown().await.unwrap();
        }
    }
}

#[test]
fn a_new_link_fetches_its_token_on_the_connection_it_upgrades() {
    smol::block_on(async {
        let n = net(TransportPreference::WebsocketOnly, false).await;
        n.send(0, None).await;
        n.expect(0..1).await;
        // GET /auth/token, POST /auth/verify and the upgrade on one connection (spec §23.2).
        assert_eq!(n.proxy.ws_attempts(), 1);
        assert_eq!(n.proxy.connections(), 1, "one TCP connection for token and link");
        n.stop().await;
    });
}

#[test]
fn websocket_only_fails_messages_instead_of_using_http() {
    smol::block_on(async {
        let n = net(TransportPreference::WebsocketOnly, true).await;
        n.send(0, None).await;
        // The message fails (it is never carried over HTTP).
        next_event(&n.alice_rx, "the message to fail", |e| match e {
            Event::Failed { .. } => Some(()),
            Event::Delivered { .. } => panic!("delivered without WebSocket"),
            _ => None,
        })
        .await;
        let s = n.alice.transport_stats().await.unwrap();
        assert_eq!(s.http_messages_sent, 0, "{s:?}");
        assert!(s.failures >= 1, "{s:?}");
        assert!(n.proxy.ws_refused() >= 1, "no WebSocket was even attempted");
        assert!(n.bob_rx.try_recv().map_or(true, |e| !matches!(e, Event::Message { .. })));
        // With WebSocket back, the same preference delivers.
        n.proxy.block_websocket(false);
        // The link may be backing off (then a WEBSOCKET_ONLY send fails at once): retry until
        // one is delivered.
        let mut delivered = None;
        let start = std::time::Instant::now();
        for i in 1.. {
            assert!(start.elapsed() < DEADLINE, "never delivered once WebSocket was back");
            n.send(i, None).await;
            let ok = next_event(&n.alice_rx, "an outcome", |e| match e {
                Event::Failed { .. } => Some(false),
                Event::Delivered { .. } => Some(true),
                _ => None,
            })
            .await;
            if ok {
                delivered = Some(i);
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await; // poll interval
        }
        let i = delivered.expect("never delivered once WebSocket was back");
        n.expect(i..i + 1).await;
        let s = n.alice.transport_stats().await.unwrap();
        assert_eq!(s.http_messages_sent, 0, "{s:?}");
        n.stop().await;
    });
}

#[test]
fn http_only_never_opens_a_websocket() {
    smol::block_on(async {
        let n = net(TransportPreference::HttpOnly, false).await;
        for i in 0..5 {
            n.send(i, None).await;
        }
        // `prefer_websocket` cannot override an *_ONLY preference.
        n.send(5, Some(true)).await;
        n.expect(0..6).await;
        let s = n.alice.transport_stats().await.unwrap();
        assert!(s.http_messages_sent >= 6, "{s:?}");
        assert_eq!(s.ws_messages_sent, 0, "{s:?}");
        assert_eq!(n.proxy.ws_attempts(), 0, "HTTP_ONLY tried a WebSocket");
        n.stop().await;
    });
}

#[test]
fn http_bodies_between_peerlink_nodes_are_binary() {
    smol::block_on(async {
        // Alice posts and polls the relay through a proxy that records the bytes (spec §27.7).
        let n = net_recording(TransportPreference::HttpOnly, false, true).await;
        for i in 0..4 {
            n.send(i, None).await;
        }
        n.expect(0..4).await;
        let wire = String::from_utf8_lossy(&n.proxy.recorded()).to_ascii_lowercase();
        let binary = "content-type: application/vnd.peerlink.binary.v1";
        let accept = "accept: application/vnd.peerlink.binary.v1, application/x-ndjson";
        assert!(wire.contains(accept), "Alice offers binary bodies");
        // The relay answers in binary, and Alice posts binary once an answer was: a request's
        // head is one write, so it is one piece of the recording.
        let post = format!("post {}", n.relay.path("/v1/messages")).to_ascii_lowercase();
        let heads: Vec<&str> = wire
            .split(post.as_str())
            .skip(1)
            .map(|r| r.split("\r\n\r\n").next().unwrap_or(""))
            .collect();
        assert!(heads.iter().any(|h| h.contains(binary)), "no binary post in {}", heads.len());
        let answers = wire.split("http/1.1 200").skip(1);
        let binary_answers =
            answers.filter(|r| r.split("\r\n\r\n").next().unwrap_or("").contains(binary));
        assert!(binary_answers.count() > 0, "no binary answer");
        n.stop().await;
    });
}

#[test]
fn http_first_uses_http_while_it_works_and_prefer_websocket_overrides() {
    smol::block_on(async {
        let n = net(TransportPreference::HttpFirst, false).await;
        for i in 0..5 {
            n.send(i, None).await;
        }
        n.expect(0..5).await;
        let s = n.alice.transport_stats().await.unwrap();
        assert!(s.http_messages_sent >= 5, "{s:?}");
        assert_eq!(s.ws_messages_sent, 0, "{s:?}");
        assert_eq!(n.proxy.ws_attempts(), 0, "HTTP_FIRST opened a WebSocket it did not need");
        // A message with prefer_websocket = true is WEBSOCKET_FIRST: the first one finds the
        // link down (HTTP, and the link opens: §16.2); once the link is up they use it.
        let start = std::time::Instant::now();
        let mut i = 5;
        loop {
            assert!(start.elapsed() < DEADLINE, "prefer_websocket never used the WebSocket");
            let before = n.alice.transport_stats().await.unwrap();
            n.send(i, Some(true)).await;
            n.expect(i..i + 1).await;
            i += 1;
            let (ws, _) = stats_delta(&n.alice.transport_stats().await.unwrap(), &before);
            if ws > 0 {
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await; // poll interval
        }
        assert!(n.proxy.ws_attempts() >= 1);
        // Without the override, the next message is back on HTTP.
        let before = n.alice.transport_stats().await.unwrap();
        n.send(i, None).await;
        n.expect(i..i + 1).await;
        let (ws, http) = stats_delta(&n.alice.transport_stats().await.unwrap(), &before);
        assert!(http >= 1 && ws == 0, "HTTP_FIRST message: ws {ws}, http {http}");
        n.stop().await;
    });
}

#[test]
fn websocket_first_uses_websocket_and_falls_back_when_refused() {
    smol::block_on(async {
        // WebSocket available: all data over WebSocket.
        let n = net(TransportPreference::WebsocketFirst, false).await;
        // Opened ahead: frames wait while it connects (a first frame finding no link at all
        // would go over HTTP while the link opens, §16.2).
        n.alice.init_websocket_connection(n.relay.id()).await.unwrap();
        for i in 0..5 {
            n.send(i, None).await;
        }
        n.expect(0..5).await;
        let s = n.alice.transport_stats().await.unwrap();
        assert!(s.ws_messages_sent >= 5, "{s:?}");
        assert_eq!(s.http_messages_sent, 0, "{s:?}");
        // prefer_websocket = false is HTTP_FIRST for that message.
        n.send(5, Some(false)).await;
        n.expect(5..6).await;
        let s2 = n.alice.transport_stats().await.unwrap();
        assert!(s2.http_messages_sent >= 1, "{s2:?}");
        n.stop().await;

        // WebSocket refused: the messages fall back to HTTP and are delivered.
        let n = net(TransportPreference::WebsocketFirst, true).await;
        for i in 0..5 {
            n.send(i, None).await;
        }
        n.expect(0..5).await;
        let s = n.alice.transport_stats().await.unwrap();
        assert!(s.http_messages_sent >= 5, "{s:?}");
        assert_eq!(s.ws_messages_sent, 0, "{s:?}");
        assert_eq!(s.failures, 0, "{s:?}");
        assert!(n.proxy.ws_refused() >= 1);
        n.stop().await;
    });
}
