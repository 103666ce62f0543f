//! A cold first message, as `peerlink send` makes it: a fresh client node with no link, no
//! session and no token sends to a node it dials directly, and is told "delivered" well before
//! any handshake step could have timed out. A previous client of the same entity leaves its long
//! poll held at the node when it stops (spec §21): that poll must not swallow the new client's
//! handshake.

mod e2e;

use e2e::*;
use peerlink_core::node::{NodeConfig, SendOptions};
use peerlink_core::{Event, Identity, MessageType};
use peerlink_smol::Config;
use std::time::{Duration, Instant};

/// Bob as `peerlink listen` runs him: default timers, trusting alice.
async fn start_bob(b: &Identity, a: &Identity) -> Node {
    let mut cfg = Config::ephemeral();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.peers = vec![trusted(a, None)];
    start_node(cfg, copy(b)).await
}

/// One cold send as `peerlink send` makes it: a fresh node with default timers dials `url`,
/// sends, waits for the outcome and stops. Returns how long the message took to be confirmed.
async fn cold_send(a: &Identity, b: &Identity, url: &str, i: usize) -> Duration {
    let mut cfg = Config::ephemeral();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.peers = vec![trusted(b, Some(url.to_owned()))];
    let alice = start_node(cfg, copy(a)).await;
    let rx = alice.incoming().await.unwrap();
    let started = Instant::now();
    let id = alice
        .send_message(b.id(), MessageType::PeerMessage, payload("cold", i), SendOptions::default())
        .await
        .unwrap();
    let outcome = next_event(&rx, "the cold message's outcome", |e| match e {
        Event::Delivered { id: d, .. } if *d == id => Some(Ok(())),
        Event::Failed { id: f, reason, .. } if *f == id => Some(Err(*reason)),
        Event::Error { code, .. } => panic!("send {i}: the cold send met an error: {code:?}"),
        _ => None,
    })
    .await;
    let took = started.elapsed();
    outcome.unwrap_or_else(|r| panic!("send {i} failed: {r:?}"));
    alice.shutdown().await.unwrap();
    took
}

/// Half the handshake timeout: a step answered late by a lost reply would take 5 s or more.
fn well_before_a_handshake_timeout() -> Duration {
    NodeConfig::default().limits.handshake_timeout / 2
}

fn check_all(a: &Identity, b: &Identity, bob: &Node, url: &str, runs: usize) {
    smol::block_on(async {
        let rx = bob.incoming().await.unwrap();
        for i in 0..runs {
            let took = cold_send(a, b, url, i).await;
            assert!(
                took < well_before_a_handshake_timeout(),
                "cold send {i} took {took:?}: a handshake step waited for a timeout"
            );
            assert_eq!(messages(&rx, a.id(), 1).await, vec![payload("cold", i)]);
        }
    });
}

#[test]
fn cold_sends_over_websocket_first_never_wait_for_a_timeout() {
    if skipped("e2e_cold_send::cold_sends_over_websocket_first_never_wait_for_a_timeout") {
        return;
    }
    let (a, b) = (identity("alice"), identity("bob"));
    let bob = smol::block_on(start_bob(&b, &a));
    check_all(&a, &b, &bob, &bob.base_url(), 20);
    smol::block_on(bob.shutdown()).unwrap();
}

#[test]
fn cold_sends_whose_websocket_is_refused_go_over_http_at_once() {
    // WebSocket refused on the way: every handshake step crosses in POST answers, and each
    // client's poll is still held at bob when the next client posts.
    let (a, b) = (identity("alice"), identity("bob"));
    let bob = smol::block_on(start_bob(&b, &a));
    let proxy = Proxy::start(&bob, false);
    proxy.block_websocket(true);
    check_all(&a, &b, &bob, &proxy.url(), 10);
    smol::block_on(bob.shutdown()).unwrap();
}

#[test]
fn what_a_stopped_clients_poll_was_answered_with_reaches_the_next_client() {
    use std::io::{Read, Write};
    let (a, b) = (identity("alice"), identity("bob"));
    let bob = smol::block_on(start_bob(&b, &a));
    let addr = bob.local_addr();
    // A client of alice's holds a long poll at bob, then stops: its socket closes.
    let t = token(&bob.base_url(), &a, b.id());
    let messages = bob.path("/v1/messages");
    let mut old = std::net::TcpStream::connect(addr).unwrap();
    let get = format!(
        "GET {messages}?wait_ms=20000 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    old.write_all(get.as_bytes()).unwrap();
    smol::block_on(poll_until("bob holds the poll", || async {
        (bob.snapshot().await.unwrap().held_http_calls == 1).then_some(())
    }));
    drop(old);
    // The scenario's premise, not a synchronisation: the client stopped half a second ago.
    std::thread::sleep(Duration::from_millis(500));
    // Bob starts a handshake with alice: its first step waits for her at bob.
    let sent = smol::block_on(bob.send_message(
        a.id(),
        MessageType::PeerMessage,
        b"hello".to_vec(),
        SendOptions::default(),
    ));
    sent.unwrap();
    // Alice's next client polls and gets bob's HANDSHAKE_INIT (before, the stopped client's
    // poll took it, and bob's handshake waited out its timeout).
    let mut new = std::net::TcpStream::connect(addr).unwrap();
    new.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = format!(
        "GET {messages}?wait_ms=3000 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    new.write_all(get.as_bytes()).unwrap();
    let mut answer = String::new();
    new.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"type\":\"HANDSHAKE_INIT\""), "{answer}");
    smol::block_on(bob.shutdown()).unwrap();
}
