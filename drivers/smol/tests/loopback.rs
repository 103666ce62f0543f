//! The driver over real loopback sockets: auth endpoints, a refused upgrade, a message between
//! two nodes over WebSocket and over HTTP, metrics.

use std::time::Duration;

use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};
use smol::io::{AsyncReadExt, AsyncWriteExt};

fn identity(name: &str) -> Identity {
    peerlink_smol::keys::generate(EntityId::new(name).unwrap()).unwrap()
}

fn peer(i: &Identity, url: Option<String>) -> TrustedPeer {
    TrustedPeer { entity: i.id().clone(), key: i.public_key(), url }
}

/// A raw HTTP/1.1 exchange (the test is the client, so it stays independent of the driver's).
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut s = smol::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
    raw(addr, &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n")).await
}

async fn pair(pref: TransportPreference) -> (Handle, Handle, Identity, Identity) {
    let (a, b) = (identity("alice"), identity("bob"));
    let (a_pub, b_pub) = (peer(&a, None), peer(&b, None));
    let mut bob_cfg = Config::ephemeral();
    bob_cfg.node.preference = pref;
    bob_cfg.peers.push(a_pub);
    let bob_copy = Identity::from_secret_bytes(b.id().clone(), &b.secret_bytes());
    let bob = Peerlink::start(bob_cfg, bob_copy).await.unwrap();
    let mut alice_cfg = Config::ephemeral();
    alice_cfg.node.preference = pref;
    alice_cfg.peers.push(TrustedPeer { url: Some(bob.base_url()), ..b_pub });
    let alice_copy = Identity::from_secret_bytes(a.id().clone(), &a.secret_bytes());
    let alice = Peerlink::start(alice_cfg, alice_copy).await.unwrap();
    (alice, bob, a, b)
}

async fn next_message(rx: &peerlink_smol::Events) -> (EntityId, Vec<u8>) {
    let deadline = smol::Timer::after(Duration::from_secs(20));
    let wait = async {
        loop {
            if let Ok(Event::Message { from, payload, .. }) = rx.recv().await {
                return Some((from, payload));
            }
        }
    };
    smol::future::FutureExt::or(wait, async {
        deadline.await;
        None
    })
    .await
    .expect("no message within 20 s")
}

#[test]
fn auth_endpoints_and_refused_upgrades() {
    smol::block_on(async {
        let (alice, bob, a, _) = pair(TransportPreference::WebsocketFirst).await;
        let addr = bob.local_addr();
        // Unknown entity: 403 before any challenge.
        let stranger = identity("mallory");
        let (s, _) = get(
            addr,
            &format!("/auth/token?entity_id=mallory&pubkey={}", stranger.public_key().to_b64u()),
            "",
        )
        .await;
        assert_eq!(s, 403);
        // Trusted entity: a challenge, answered, gives a token that opens /peers/discover.
        let (s, body) = get(
            addr,
            &format!("/auth/token?entity_id=alice&pubkey={}", a.public_key().to_b64u()),
            "",
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ch = v["challenge"].as_str().unwrap();
        assert_eq!(v["node_id"], "bob");
        let sig = peerlink_core::auth::sign_challenge(&a, bob.id(), ch).unwrap();
        let body = serde_json::json!({"entity_id": "alice", "challenge": ch, "signature": sig})
            .to_string();
        let req = format!(
            "POST /auth/verify HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (s, body) = raw(addr, &req).await;
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = v["token"].as_str().unwrap().to_owned();
        let (s, _) =
            get(addr, "/peers/discover", &format!("authorization: Bearer {token}\r\n")).await;
        assert_eq!(s, 200);
        // The same challenge cannot be used twice.
        let (s, _) = raw(addr, &req).await;
        assert_eq!(s, 401);

        let ws = "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        // No token, a forged token, a token from another node: 401, never 101.
        let (s, _) = get(addr, "/ws/v1/peers", ws).await;
        assert_eq!(s, 401);
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        let (s, _) = get(addr, &format!("/ws/v1/peers?token={forged}"), ws).await;
        assert_eq!(s, 401);
        let other = peerlink_core::auth::Authority::new(
            std::sync::Arc::new(identity("bob")),
            Default::default(),
        );
        let now = peerlink_core::Timestamp::from_unix_millis(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64,
        );
        let foreign = other.mint(a.id(), now);
        let (s, _) =
            get(addr, "/ws/v1/peers", &format!("{ws}authorization: Bearer {foreign}\r\n")).await;
        assert_eq!(s, 401);
        // The real token upgrades.
        let mut sock = smol::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /ws/v1/peers?token={token} HTTP/1.1\r\nhost: x\r\n{ws}\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        sock.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
        drop(sock);

        let (s, body) = get(addr, "/metrics", "").await;
        assert_eq!(s, 200);
        assert!(body.contains("# TYPE peerlink_messages_sent_total counter"), "{body}");
        assert!(body.contains("peerlink_messages_sent_total{transport=\"websocket\"}"));
        assert!(body.contains("peerlink_mailbox_messages 0"));
        assert!(body.contains("peerlink_peers_forgotten_total 0"), "{body}");
        let (s, _) = get(addr, "/healthz", "").await;
        assert_eq!(s, 200);
        let (s, _) = get(addr, "/nope", "").await;
        assert_eq!(s, 404);
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
    });
}

fn exchange(pref: TransportPreference) -> peerlink_core::node::TransportStats {
    smol::block_on(async {
        let (alice, bob, _, b) = pair(pref).await;
        let rx = bob.incoming().await.unwrap();
        for i in 0..3u8 {
            let id = alice
                .send_message(
                    b.id(),
                    MessageType::PeerMessage,
                    vec![b'm', i],
                    SendOptions::default(),
                )
                .await
                .unwrap();
            let _ = id;
        }
        for i in 0..3u8 {
            let (from, payload) = next_message(&rx).await;
            assert_eq!(from.as_str(), "alice");
            assert_eq!(payload, vec![b'm', i]);
        }
        let stats = alice.transport_stats().await.unwrap();
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        stats
    })
}

#[test]
fn messages_cross_over_websocket() {
    let stats = exchange(TransportPreference::WebsocketOnly);
    assert!(stats.ws_messages_sent > 0);
    assert_eq!(stats.http_messages_sent, 0);
}

#[test]
fn messages_cross_over_http() {
    let stats = exchange(TransportPreference::HttpOnly);
    assert!(stats.http_messages_sent > 0);
    assert_eq!(stats.ws_messages_sent, 0);
}

/// A shut-down node closes the connections kept alive to it. One left open answered every
/// later request `503` (its node task gone), and a client reusing it kept reaching the stopped
/// node even after a new one listened at the same address, until its HTTP retries ran out and
/// its messages failed (the flaky relay-restart test, issue 14).
#[test]
fn shutdown_closes_kept_alive_connections() {
    smol::block_on(async {
        // Idle connections are closed after `handshake_timeout` anyway: far beyond the wait
        // below, so only the shutdown can close this one in time.
        let mut cfg = Config::ephemeral();
        cfg.limits.handshake_timeout = Duration::from_secs(300);
        let node = Peerlink::start(cfg, identity("bob")).await.unwrap();
        let mut s = smol::net::TcpStream::connect(node.local_addr()).await.unwrap();
        // One exchange on a kept-alive connection, read to the end of its body.
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ")?.parse().ok())
                .unwrap_or(usize::MAX);
            body.len() >= len
        };
        while !complete(&got) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
        node.shutdown().await.unwrap();
        // The connection ends (end of stream, or reset), with nothing more sent on it.
        let rest = smol::future::FutureExt::or(
            async {
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
                Some(rest)
            },
            async {
                smol::Timer::after(Duration::from_secs(20)).await;
                None
            },
        )
        .await;
        assert_eq!(rest.as_deref(), Some(&[][..]), "the connection must close within 20 s");
    });
}
