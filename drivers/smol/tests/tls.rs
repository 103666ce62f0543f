//! TLS 1.3 over loopback: messages cross over `wss://` and `https://` to a node serving a
//! certificate, a plain client gets nothing from it, and `require_tls` refuses a plain listener
//! on a non-loopback address.
//!
//! `tests/data/localhost.{crt,key}` is a test certificate for `localhost` and `127.0.0.1`, signed
//! by the test CA `tests/data/ca.crt` (whose key was discarded); they are used nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use peerlink_core::node::SendOptions;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, MessageType};
use peerlink_smol::{ApiError, Config, Peerlink, TrustedPeer};
use smol::io::{AsyncReadExt, AsyncWriteExt};

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file)
}

fn identity(name: &str) -> Identity {
    peerlink_smol::keys::generate(EntityId::new(name).unwrap()).unwrap()
}

fn copy(i: &Identity) -> Identity {
    Identity::from_secret_bytes(i.id().clone(), &i.secret_bytes())
}

async fn delivered(rx: &peerlink_smol::Events, want: &[u8]) {
    let wait = async {
        loop {
            if let Ok(Event::Message { payload, .. }) = rx.recv().await
                && payload == want
            {
                return true;
            }
        }
    };
    let timeout = async {
        smol::Timer::after(Duration::from_secs(20)).await;
        false
    };
    assert!(smol::future::FutureExt::or(wait, timeout).await, "not delivered within 20 s");
}

fn over(preference: TransportPreference) -> peerlink_core::node::TransportStats {
    smol::block_on(async {
        let (a, b) = (identity("alice"), identity("bob"));
        let mut bob_cfg = Config::ephemeral();
        bob_cfg.tls.cert_file = Some(data("localhost.crt"));
        bob_cfg.tls.key_file = Some(data("localhost.key"));
        bob_cfg.peers.push(TrustedPeer { entity: a.id().clone(), key: a.public_key(), url: None });
        let bob = Peerlink::start(bob_cfg, copy(&b)).await.unwrap();
        assert!(bob.base_url().starts_with("https://"), "{}", bob.base_url());
        let mut alice_cfg = Config::ephemeral();
        alice_cfg.node.preference = preference;
        alice_cfg.tls.ca_file = Some(data("ca.crt"));
        alice_cfg.peers.push(TrustedPeer {
            entity: b.id().clone(),
            key: b.public_key(),
            url: Some(bob.base_url()),
        });
        let alice = Peerlink::start(alice_cfg, copy(&a)).await.unwrap();
        let rx = bob.incoming().await.unwrap();
        alice
            .send_message(
                b.id(),
                MessageType::PeerMessage,
                b"secret".to_vec(),
                SendOptions::default(),
            )
            .await
            .unwrap();
        delivered(&rx, b"secret").await;
        // A client speaking plain HTTP to the TLS port gets no HTTP answer.
        let mut plain = smol::net::TcpStream::connect(bob.local_addr()).await.unwrap();
        let _ = plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut out = Vec::new();
        let read = async { plain.read_to_end(&mut out).await.ok() };
        let cap = async {
            smol::Timer::after(Duration::from_secs(5)).await;
            None
        };
        let _ = smol::future::FutureExt::or(read, cap).await;
        assert!(!out.starts_with(b"HTTP/1.1 200"), "plain HTTP answered on a TLS listener");
        let stats = alice.transport_stats().await.unwrap();
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        stats
    })
}

#[test]
fn messages_cross_over_wss() {
    let stats = over(TransportPreference::WebsocketOnly);
    assert!(stats.ws_messages_sent > 0);
    assert_eq!(stats.http_messages_sent, 0);
}

#[test]
fn messages_cross_over_https() {
    let stats = over(TransportPreference::HttpOnly);
    assert!(stats.http_messages_sent > 0);
    assert_eq!(stats.ws_messages_sent, 0);
}

#[test]
fn require_tls_refuses_a_plain_listener_off_loopback() {
    smol::block_on(async {
        let mut config = Config::ephemeral();
        config.listen = ([0, 0, 0, 0], 0).into();
        config.require_tls = true;
        let refused = Peerlink::start(config.clone(), identity("carol")).await;
        assert!(matches!(refused, Err(ApiError::Listen(_))), "{refused:?}");
        // Loopback stays allowed, and so does an explicit opt-out.
        config.require_tls = false;
        let node = Peerlink::start(config, identity("carol")).await.unwrap();
        node.shutdown().await.unwrap();
    });
}
