//! Bad input over real sockets, from a raw client (sync tungstenite): each case gets the error
//! code of spec §10/§23 and the connection fate the spec gives it, while the relay keeps
//! carrying a well-behaved peer's traffic the whole time.

mod e2e;

use e2e::*;
use peerlink_core::node::SendOptions;
use peerlink_core::rate_limit::RateLimit;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{Envelope, Identity, MessageType, Payload, signed_message};
use peerlink_smol::Config;
use std::time::Duration;

const GOOD_MESSAGES: usize = 30;

fn ping(from: &Identity) -> Envelope {
    let p = Payload::new(serde_json::json!({})).unwrap();
    signed_message(from, MessageType::Ping, None, None, p, now_ts(), &mut rng()).unwrap()
}

fn text(ws: &mut RawWs, frame: impl Into<String>) {
    ws.send(tungstenite::Message::Text(frame.into().into())).unwrap();
}

fn send_env(ws: &mut RawWs, env: &Envelope) {
    text(ws, String::from_utf8(env.encode()).unwrap());
}

/// The link still answers: a fresh `PING` gets a `PONG`.
fn assert_alive(ws: &mut RawWs, me: &Identity) {
    send_env(ws, &ping(me));
    match next_seen(ws) {
        Seen::Json(v) if v["type"] == "PONG" => {}
        Seen::Json(v) => panic!("expected PONG, got {v}"),
        other => panic!("the link was closed: {other:?}"),
    }
}

fn pong_or_error(ws: &mut RawWs) -> Result<(), String> {
    match next_seen(ws) {
        Seen::Json(v) if v["type"] == "PONG" => Ok(()),
        Seen::Json(v) if v["type"] == "ERROR" => {
            Err(v["payload"]["code"].as_str().unwrap().to_owned())
        }
        other => panic!("unexpected: {other:?}"),
    }
}

struct World {
    relay: Node,
    alice: Node,
    bob: Node,
    r: Identity,
    a: Identity,
    b: Identity,
    m: Identity,
}

async fn world() -> World {
    let (r, a, b, m) = (identity("relay"), identity("alice"), identity("bob"), identity("mallory"));
    let mut cfg = Config::ephemeral();
    cfg.node = fast_node(TransportPreference::WebsocketFirst);
    // The seeds' frame limit per inbound link, many PINGs allowed (so the flood meets the frame
    // limit), and a small send queue so a client that never reads is found quickly.
    cfg.node.link_rate = RateLimit::per_minute(100);
    cfg.node.ping_rate = RateLimit::per_minute(10_000);
    cfg.limits.send_queue_frames = 8;
    cfg.peers = [&a, &b, &m].iter().map(|c| trusted(c, None)).collect();
    let relay = start_node(cfg, copy(&r)).await;
    let pref = TransportPreference::WebsocketOnly;
    let alice = start_peer(&a, &r, &relay.base_url(), &[&b], pref).await;
    let bob = start_peer(&b, &r, &relay.base_url(), &[&a], pref).await;
    World { relay, alice, bob, r, a, b, m }
}

#[test]
fn bad_input_gets_its_error_and_the_node_keeps_serving() {
    let w = smol::block_on(world());
    let addr = w.relay.local_addr();
    let (peers, events) = (w.relay.path("/ws/v1/peers"), w.relay.path("/ws/v1/events"));
    let bob_rx = smol::block_on(w.bob.incoming()).unwrap();
    // A well-behaved peer talks through the relay during every case below.
    let good = {
        let (alice, to) = (w.alice.clone(), w.b.id().clone());
        std::thread::spawn(move || {
            smol::block_on(async {
                for i in 0..GOOD_MESSAGES {
                    let p = payload("good", i);
                    alice
                        .send_message(&to, MessageType::PeerMessage, p, SendOptions::default())
                        .await
                        .unwrap();
                    smol::Timer::after(Duration::from_millis(20)).await; // pacing, not sync
                }
            })
        })
    };
    let token = token(&w.relay.base_url(), &w.m, w.r.id());

    // Tokens: missing, garbage, forged, expired, minted by another node: 401 before upgrade.
    let authority = |who: &Identity| {
        peerlink_core::auth::Authority::new(std::sync::Arc::new(copy(who)), Default::default())
    };
    let expired =
        authority(&w.r).mint(w.m.id(), now_ts().saturating_sub(Duration::from_secs(3 * 3600)));
    let foreign = authority(&identity("relay")).mint(w.m.id(), now_ts());
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for (what, t) in [
        ("none", ""),
        ("garbage", "not.a.jwt"),
        ("forged", &forged),
        ("expired", &expired),
        ("foreign", &foreign),
    ] {
        let status = ws_connect(addr, &peers, t).map(|_| 101).unwrap_or_else(|s| s);
        assert_eq!(status, 401, "{what} token");
    }

    // Garbage text, invalid JSON, JSON that is no envelope: ERROR INVALID_MESSAGE, link stays.
    let mut ws = ws_connect(addr, &peers, &token).unwrap();
    for frame in ["hello, not json", "{\"message_type\": \"PING\",", "{\"foo\": 1}", "[]"] {
        text(&mut ws, frame);
        assert_eq!(next_error(&mut ws), "INVALID_MESSAGE", "{frame:?}");
    }
    assert_alive(&mut ws, &w.m);

    // A replayed signed message: REPLAY_DETECTED, link stays.
    let p = ping(&w.m);
    send_env(&mut ws, &p);
    assert_eq!(pong_or_error(&mut ws), Ok(()));
    send_env(&mut ws, &p);
    assert_eq!(pong_or_error(&mut ws), Err("REPLAY_DETECTED".into()));
    assert_alive(&mut ws, &w.m);

    // A wrong signature on a signed message: AUTHENTICATION_FAILED, and it is not acted on (no
    // PONG). The core keeps the link (as for a wrong resume proof, §15.3); §10's table reads
    // "closes the link" for this code: see the suite's report.
    let mut bad = ping(&w.m);
    let mut sig = bad.signature.unwrap();
    sig[0] ^= 1;
    bad.signature = Some(sig);
    send_env(&mut ws, &bad);
    assert_eq!(pong_or_error(&mut ws), Err("AUTHENTICATION_FAILED".into()));
    assert_alive(&mut ws, &w.m);
    drop(ws);

    // A link sending as another entity (§19): AUTHENTICATION_FAILED and closed.
    let mut ws = ws_connect(addr, &peers, &token).unwrap();
    send_env(&mut ws, &ping(&w.a));
    assert_eq!(next_error(&mut ws), "AUTHENTICATION_FAILED");
    assert!(matches!(until_closed(&mut ws), Seen::Closed(1008, _) | Seen::Gone));

    // Binary messages on a link that did not offer the binary envelope (spec §27.2): junk, and
    // a well-formed binary envelope, are each INVALID_MESSAGE, and the link stays.
    let mut ws = ws_connect(addr, &peers, &token).unwrap();
    ws.send(tungstenite::Message::Binary(vec![0u8, 1, 2, 3].into())).unwrap();
    assert_eq!(next_error(&mut ws), "INVALID_MESSAGE");
    let binary = peerlink_core::binary_envelope::encode(&ping(&w.m));
    ws.send(tungstenite::Message::Binary(binary.into())).unwrap();
    assert_eq!(next_error(&mut ws), "INVALID_MESSAGE");
    assert_alive(&mut ws, &w.m);
    drop(ws);

    // An oversize frame (over 1 MiB): closed with 1009. The node refuses it from its header, so
    // it may reset the connection while the rest is still being written, and the reset can
    // overtake the close frame: then the write fails and the connection is simply gone.
    let mut ws = ws_connect(addr, &peers, &token).unwrap();
    let sent = ws.send(tungstenite::Message::Text("x".repeat((1 << 20) + 1024).into()));
    match until_closed(&mut ws) {
        Seen::Closed(code, _) => assert_eq!(code, 1009),
        Seen::Gone if sent.is_err() => {}
        other => panic!("oversize frame: {other:?} (send: {sent:?})"),
    }

    // A flood past the frame rate limit (100 a minute): RATE_LIMIT_EXCEEDED.
    // One PING at a time, so each answer is read before the next (the node may close a link
    // that keeps flooding).
    let mut ws = ws_connect(addr, &peers, &token).unwrap();
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..150 {
        send_env(&mut ws, &ping(&w.m));
        match next_seen(&mut ws) {
            Seen::Json(v) if v["type"] == "PONG" => pongs += 1,
            Seen::Json(v) if v["payload"]["code"] == "RATE_LIMIT_EXCEEDED" => {
                limited += 1;
                break;
            }
            other => panic!("flood: {other:?} after {pongs} PONGs"),
        }
    }
    assert!(limited >= 1, "no RATE_LIMIT_EXCEEDED after {pongs} PONGs");
    assert!(pongs <= 100, "{pongs} PINGs accepted past the limit of 100");
    drop(ws);

    // A client that never reads: it subscribes, then the relay publishes more than its send
    // queue and the socket buffers hold; it is disconnected and nothing grows without end.
    let mut lazy = ws_connect(addr, &events, &token).unwrap();
    let sub = signed_message(
        &w.m,
        MessageType::Subscribe,
        None,
        None,
        Payload::new(serde_json::json!({"topic": "firehose"})).unwrap(),
        now_ts(),
        &mut rng(),
    )
    .unwrap();
    send_env(&mut lazy, &sub);
    smol::block_on(async {
        poll_until("the subscription", || {
            let relay = w.relay.clone();
            async move {
                (relay.publish("firehose", serde_json::json!("hi")).await.unwrap() >= 1)
                    .then_some(())
            }
        })
        .await;
        let blob = "z".repeat(64 * 1024);
        let start = std::time::Instant::now();
        loop {
            let s = w.relay.snapshot().await.unwrap();
            if s.slow_readers_disconnected >= 1 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "the slow reader was never disconnected: {s:?}");
            w.relay.publish("firehose", serde_json::json!(blob)).await.unwrap();
        }
    });
    // Its socket is closed: reading drains what was buffered, then ends.
    lazy.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(until_closed(&mut lazy), Seen::Closed(..) | Seen::Gone));

    // Meanwhile the well-behaved peer was served: every message, once, in order.
    good.join().unwrap();
    smol::block_on(async {
        let got = messages(&bob_rx, w.a.id(), GOOD_MESSAGES).await;
        assert_eq!(got, (0..GOOD_MESSAGES).map(|i| payload("good", i)).collect::<Vec<_>>());
        assert_no_more_messages(&bob_rx, Duration::from_millis(300)).await;
        let s = w.relay.snapshot().await.unwrap();
        // Every refusal above was counted: 4 malformed, a replay, a bad signature, an
        // impersonation, the rate limit.
        assert!(s.stats.rejected >= 8, "{s:?}");
        assert_eq!(s.slow_readers_disconnected, 1, "{s:?}");
        for h in [&w.alice, &w.bob, &w.relay] {
            h.shutdown().await.unwrap();
        }
    });
}

/// Browsers send `Origin` on an upgrade and let any page open a link, token in the query
/// included: only listed origins get one (spec §23.3); clients without `Origin` are judged by
/// their token alone.
#[test]
fn websocket_upgrades_from_unlisted_web_origins_are_refused() {
    let (r, a) = (identity("relay"), identity("alice"));
    let start = |origins: &[&str]| {
        let mut cfg = Config::ephemeral();
        cfg.peers = vec![trusted(&a, None)];
        cfg.allowed_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        smol::block_on(start_node(cfg, copy(&r)))
    };
    let listed = start(&["https://app.example"]);
    let addr = listed.local_addr();
    let (peers, events) = (listed.path("/ws/v1/peers"), listed.path("/ws/v1/events"));
    let tok = token(&listed.base_url(), &a, r.id());
    let up =
        |headers: &[(&'static str, &str)]| ws_connect_with(addr, &peers, &tok, headers).map(|_| ());
    assert_eq!(up(&[]), Ok(()), "no Origin: not a browser");
    assert_eq!(up(&[("origin", "https://app.example")]), Ok(()));
    assert_eq!(up(&[("origin", "https://APP.example/")]), Ok(()), "compared as an origin");
    assert_eq!(up(&[("origin", "https://evil.example")]), Err(403));
    assert_eq!(up(&[("origin", "http://app.example")]), Err(403), "another scheme");
    assert_eq!(
        up(&[("origin", "https://app.example"), ("origin", "https://evil.example")]),
        Err(403),
        "a repeated Origin"
    );
    let events = ws_connect_with(addr, &events, &tok, &[("origin", "https://x.example")]);
    assert_eq!(events.map(|_| ()), Err(403), "the events endpoint too");

    let default = start(&[]);
    let (addr, peers) = (default.local_addr(), default.path("/ws/v1/peers"));
    let tok = token(&default.base_url(), &a, r.id());
    let page = ws_connect_with(addr, &peers, &tok, &[("origin", "https://app.example")]);
    assert_eq!(page.map(|_| ()), Err(403), "no page may open a link by default");
    assert!(ws_connect(addr, &peers, &tok).is_ok());

    let any = start(&["*"]);
    let (addr, peers) = (any.local_addr(), any.path("/ws/v1/peers"));
    let tok = token(&any.base_url(), &a, r.id());
    let page = ws_connect_with(addr, &peers, &tok, &[("origin", "https://app.example")]);
    assert!(page.is_ok(), "\"*\" allows every page");
    for node in [listed, default, any] {
        smol::block_on(node.shutdown()).unwrap();
    }
}
