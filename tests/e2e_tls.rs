//! The blocking client reaches a node serving TLS 1.3 (on the axum driver, the application's
//! server does the TLS, in front of the mounted node): over `wss://` and over `https://`,
//! verified against the test CA (`drivers/smol/tests/data/ca.crt`).

mod e2e;

use std::path::PathBuf;
use std::time::Duration;

use e2e::*;
use peerlink_blocking::Client;
use peerlink_core::Event;
use peerlink_core::transport::TransportPreference;
use peerlink_smol::Config;

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../drivers/smol/tests/data").join(file)
}

#[test]
fn the_blocking_client_speaks_wss_and_https() {
    smol::block_on(async {
        let (a, b) = (identity("alice"), identity("bob"));
        let mut cfg = Config::ephemeral();
        cfg.node = fast_node(TransportPreference::WebsocketFirst);
        cfg.tls.cert_file = Some(data("localhost.crt"));
        cfg.tls.key_file = Some(data("localhost.key"));
        cfg.peers = vec![trusted(&a, None)];
        let bob = start_node(cfg, copy(&b)).await;
        let rx = bob.incoming().await.unwrap();
        assert!(bob.base_url().starts_with("https://"));

        let mut config =
            client_config(TransportPreference::WebsocketFirst, None, &[(&b, Some(bob.base_url()))]);
        config.tls.ca_file = Some(data("ca.crt"));
        let alice = Client::start(config, copy(&a)).unwrap();
        let to = b.id().clone();
        let stats = smol::unblock(move || {
            alice.connect(&to).unwrap();
            alice.send(&to, b"over wss".to_vec(), Some(true)).unwrap();
            alice.send(&to, b"over https".to_vec(), Some(false)).unwrap();
            // Wait until both are acknowledged.
            let mut delivered = 0;
            while delivered < 2 {
                match alice.recv_timeout(Duration::from_secs(30)) {
                    Some(Event::Delivered { .. }) => delivered += 1,
                    Some(Event::Failed { reason, .. }) => panic!("failed: {reason:?}"),
                    Some(_) => {}
                    None => panic!("not delivered within 30 s"),
                }
            }
            alice.transport_stats().unwrap()
        })
        .await;
        let got = messages(&rx, a.id(), 2).await;
        assert_eq!(got, vec![b"over wss".to_vec(), b"over https".to_vec()]);
        assert!(stats.ws_messages_sent > 0, "{stats:?}");
        assert!(stats.http_messages_sent > 0, "{stats:?}");
        bob.shutdown().await.unwrap();
    });
}
