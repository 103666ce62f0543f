//! The host's Redis broker connection (`peerlink_host::broker`) against a real `redis-server`
//! (`redis_server/mod.rs` starts it), each case on the smol runtime and on the tokio runtime: requests,
//! publications reaching a subscriber (and the bound of its queue), refused credentials, a
//! closed port, silence, TLS, and a server killed under pending requests and started again.
//! Every wait is bounded by a deadline that only a failure reaches.

mod redis_server;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_host::broker::redis::cmd;
use peerlink_host::broker::{Broker, BrokerError, BrokerUrl, Published};
use peerlink_host::runtime::{self, Rt, spawn_with_output, within};
use redis_server::{Port, RedisServer};

/// The broker connections' own timeout (connecting, and each request).
const TIMEOUT: Duration = Duration::from_secs(10);
/// What a test waits at most for anything; only a failure reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

fn on_smol<F: Future<Output = ()>>(test: impl FnOnce(Rt) -> F) {
    smol::block_on(test(peerlink_smol::rt()));
}

fn on_tokio<F: Future<Output = ()>>(test: impl FnOnce(Rt) -> F) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let rt: Rt = Arc::new(peerlink_tokio::TokioRuntime::new(runtime.handle().clone()));
    runtime.block_on(test(rt));
}

/// `scenario` as two tests, `scenario::on_smol` and `scenario::on_tokio`.
macro_rules! on_both_runtimes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn on_smol() {
                super::on_smol(super::$scenario);
            }
            #[test]
            fn on_tokio() {
                super::on_tokio(super::$scenario);
            }
        }
    )*};
}

on_both_runtimes!(
    requests,
    publications_reach_a_subscriber,
    a_full_subscriber_queue_drops_and_counts,
    refused_credentials,
    a_closed_port_is_a_connect_error,
    silence_is_a_timeout,
    rediss_with_the_test_ca,
    a_killed_server_fails_requests_and_subscriptions_and_a_restart_serves_again,
);

/// `future`'s output, or a failure naming `what` after [`DEADLINE`].
async fn bounded<T>(rt: &Rt, what: &str, future: impl Future<Output = T>) -> T {
    within(&**rt, DEADLINE, future)
        .await
        .unwrap_or_else(|| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
async fn poll_until<F: Future<Output = bool>>(rt: &Rt, what: &str, mut check: impl FnMut() -> F) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        runtime::sleep(&**rt, Duration::from_millis(5)).await;
    }
}

fn url(s: &str) -> BrokerUrl {
    s.parse().unwrap()
}

async fn connect(rt: &Rt, to: &str) -> Result<Broker, BrokerError> {
    Broker::connect(rt, &url(to), None, TIMEOUT).await
}

async fn ping(broker: &Broker) -> Result<String, BrokerError> {
    broker.query(&cmd("PING")).await
}

async fn requests(rt: Rt) {
    let server = RedisServer::start_plain();
    let broker = connect(&rt, &server.url()).await.unwrap();
    let () = broker
        .query(cmd("SET").arg("presence:alice").arg("node-1").arg("EX").arg(30))
        .await
        .unwrap();
    let () = broker
        .query(cmd("SET").arg("presence:bob").arg(b"\x00\xffnode-2").arg("EX").arg(30))
        .await
        .unwrap();
    let alice: Option<String> = broker.query(cmd("GET").arg("presence:alice")).await.unwrap();
    assert_eq!(alice.as_deref(), Some("node-1"));
    let ttl: i64 = broker.query(cmd("TTL").arg("presence:alice")).await.unwrap();
    assert!((1..=30).contains(&ttl), "TTL {ttl}");
    let all: Vec<Option<Vec<u8>>> = broker
        .query(cmd("MGET").arg(&["presence:alice", "presence:nobody", "presence:bob"]))
        .await
        .unwrap();
    assert_eq!(all, vec![Some(b"node-1".to_vec()), None, Some(b"\x00\xffnode-2".to_vec())]);
    // A transaction in one round trip.
    let pipe = peerlink_host::broker::redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("count")
        .cmd("EXPIRE")
        .arg("count")
        .arg(30)
        .ignore()
        .clone();
    let (count,): (i64,) = broker.pipeline(&pipe).await.unwrap();
    assert_eq!(count, 1);
    // An error answer is the request's, not the connection's.
    let e = broker.query::<i64>(cmd("INCR").arg("presence:alice")).await.unwrap_err();
    assert!(matches!(e, BrokerError::Refused(_)), "{e:?}");
    let e = broker.query::<i64>(cmd("GET").arg("presence:alice")).await.unwrap_err();
    assert!(matches!(e, BrokerError::Protocol(_)), "{e:?}");
    assert_eq!(ping(&broker).await.unwrap(), "PONG");
    // The URL's database is selected, on every connection made from it.
    let db1 = connect(&rt, &format!("{}/1", server.url())).await.unwrap();
    let none: Option<String> = db1.query(cmd("GET").arg("presence:alice")).await.unwrap();
    assert_eq!(none, None);
    let again: Option<String> =
        db1.connect_again().await.unwrap().query(cmd("GET").arg("presence:alice")).await.unwrap();
    assert_eq!(again, None);
}

async fn publications_reach_a_subscriber(rt: Rt) {
    let server = RedisServer::start_plain();
    let broker = connect(&rt, &server.url()).await.unwrap();
    let sub = broker.subscriber(16, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("topic:news").await.unwrap();
    sub.psubscribe("node:*").await.unwrap();
    // Each subscription is confirmed by the server before its call returns: one receiver each.
    let n: usize = broker.query(cmd("PUBLISH").arg("topic:news").arg(b"hello")).await.unwrap();
    assert_eq!(n, 1);
    let n: usize = broker.query(cmd("PUBLISH").arg("node:7").arg(b"\x00fwd\xff")).await.unwrap();
    assert_eq!(n, 1);
    let messages = sub.messages();
    let first = bounded(&rt, "the first publication", messages.recv()).await.unwrap();
    let second = bounded(&rt, "the second publication", messages.recv()).await.unwrap();
    assert_eq!(first, Published { channel: "topic:news".into(), payload: b"hello".to_vec() });
    assert_eq!(second, Published { channel: "node:7".into(), payload: b"\x00fwd\xff".to_vec() });
    assert_eq!(sub.dropped(), 0);
    assert!(!sub.is_lost());
    sub.unsubscribe("topic:news").await.unwrap();
    sub.punsubscribe("node:*").await.unwrap();
    let n: usize = broker.query(cmd("PUBLISH").arg("topic:news").arg(b"unheard")).await.unwrap();
    assert_eq!(n, 0);
}

/// The largest publication the tests' subscribers take.
const MAX_PAYLOAD: usize = 1024;

async fn a_full_subscriber_queue_drops_and_counts(rt: Rt) {
    let server = RedisServer::start_plain();
    let broker = connect(&rt, &server.url()).await.unwrap();
    let sub = broker.subscriber(1, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("burst").await.unwrap();
    for i in 1..=3 {
        let n: usize = broker.query(cmd("PUBLISH").arg("burst").arg(i)).await.unwrap();
        assert_eq!(n, 1);
    }
    // Nothing is read yet: the first fills the queue, the next two are dropped and counted.
    poll_until(&rt, "two dropped publications", || async { sub.dropped() == 2 }).await;
    let messages = sub.messages();
    assert_eq!(messages.try_recv().unwrap().payload, b"1");
    assert!(messages.try_recv().is_err());
    assert!(!sub.is_lost());
    // A publication over the payload bound is dropped and counted, however empty the queue.
    let big = vec![b'x'; MAX_PAYLOAD + 1];
    let n: usize = broker.query(cmd("PUBLISH").arg("burst").arg(&big[..])).await.unwrap();
    assert_eq!(n, 1);
    let fits = vec![b'y'; MAX_PAYLOAD];
    let n: usize = broker.query(cmd("PUBLISH").arg("burst").arg(&fits[..])).await.unwrap();
    assert_eq!(n, 1);
    // Publications reach the subscriber in order: once the second is queued, the first was seen.
    let next = bounded(&rt, "the publication that fits", messages.recv()).await.unwrap();
    assert_eq!(next.payload, fits);
    assert_eq!(sub.oversized(), 1);
    assert_eq!(sub.dropped(), 2);
}

async fn refused_credentials(rt: Rt) {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "relay",
        "on",
        ">r3lay",
        "~*",
        "&*",
        "+@all",
    ]);
    for (to, what) in [
        (server.url_as("", "wrong"), "a wrong password of the default user"),
        (server.url_as("relay", "wrong"), "a wrong password of an ACL user"),
        (server.url_as("nobody", "r3lay"), "an unknown user"),
        (server.url(), "no password"),
    ] {
        match connect(&rt, &to).await {
            Err(e @ BrokerError::AuthRefused { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&format!("127.0.0.1:{}", server.port())), "{text}");
                assert!(!text.contains("wrong") && !text.contains("r3lay"), "{text}");
            }
            other => panic!("{what}: expected AuthRefused, got {other:?}"),
        }
    }
    let relay = connect(&rt, &server.url_as("relay", "r3lay")).await.unwrap();
    assert_eq!(ping(&relay).await.unwrap(), "PONG");
    let default = connect(&rt, &server.url_as("", "s3cret")).await.unwrap();
    assert_eq!(ping(&default).await.unwrap(), "PONG");
    let sub = relay.subscriber(1, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("as-relay").await.unwrap();
}

async fn a_closed_port_is_a_connect_error(rt: Rt) {
    let port = Port::reserve();
    let start = Instant::now();
    let e = connect(&rt, &format!("redis://127.0.0.1:{}", port.number())).await.unwrap_err();
    assert!(start.elapsed() < TIMEOUT, "took {:?}", start.elapsed());
    match &e {
        BrokerError::Connect { addr, source } => {
            assert_eq!(addr, &format!("127.0.0.1:{}", port.number()));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(e.to_string().starts_with("cannot connect to the broker at 127.0.0.1:"), "{e}");
}

async fn silence_is_a_timeout(rt: Rt) {
    // A listener that never accepts: the kernel completes the TCP handshake, nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = url(&format!("redis://127.0.0.1:{}", silent.local_addr().unwrap().port()));
    let limit = Duration::from_millis(300);
    let start = Instant::now();
    let e = bounded(&rt, "the connect timeout", Broker::connect(&rt, &to, None, limit))
        .await
        .unwrap_err();
    assert!(start.elapsed() >= limit, "{:?}", start.elapsed());
    assert!(matches!(e, BrokerError::Timeout { during: "connecting", .. }), "{e:?}");

    // A request outlasting its limit times out; the connection goes on, its answers in order.
    let server = RedisServer::start_plain();
    let broker = connect(&rt, &server.url()).await.unwrap();
    let blpop = cmd("BLPOP").arg("empty").arg(1).clone();
    let e = broker.query_within::<Option<Vec<String>>>(&blpop, limit).await.unwrap_err();
    assert!(matches!(e, BrokerError::Timeout { during: "a request", .. }), "{e:?}");
    assert_eq!(ping(&broker).await.unwrap(), "PONG");
}

async fn rediss_with_the_test_ca(rt: Rt) {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../drivers/smol/tests/data");
    let server = RedisServer::start_tls(
        &data.join("localhost.crt"),
        &data.join("localhost.key"),
        &data.join("ca.crt"),
    );
    let tls = peerlink_host::tls::client_config(&data.join("ca.crt")).unwrap();
    let to = url(&server.url());
    let broker = Broker::connect(&rt, &to, Some(tls), TIMEOUT).await.unwrap();
    let () = broker.query(cmd("SET").arg("over").arg("tls")).await.unwrap();
    let got: String = broker.query(cmd("GET").arg("over")).await.unwrap();
    assert_eq!(got, "tls");
    let sub = broker.subscriber(1, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("secure").await.unwrap();
    let e = Broker::connect(&rt, &to, None, TIMEOUT).await.unwrap_err();
    assert!(matches!(&e, BrokerError::Tls { reason, .. } if reason.contains("CA file")), "{e:?}");
    // Plain Redis spoken to a TLS port: the handshake fails, as a TLS error or a lost
    // connection, never as a hang.
    let plain = url(&format!("redis://127.0.0.1:{}", server.port()));
    let e = Broker::connect(&rt, &plain, None, TIMEOUT).await.unwrap_err();
    assert!(matches!(e, BrokerError::ConnectionLost(_) | BrokerError::Protocol(_)), "{e:?}");
}

async fn a_killed_server_fails_requests_and_subscriptions_and_a_restart_serves_again(rt: Rt) {
    let mut server = RedisServer::start_plain();
    let broker = connect(&rt, &server.url()).await.unwrap();
    let sub = broker.subscriber(4, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("before").await.unwrap();
    // A request the server holds: BLPOP without a timeout, on a connection of its own.
    let blocked = broker.connect_again().await.unwrap();
    let pending = spawn_with_output(&*rt, async move {
        blocked
            .query_within::<Option<Vec<String>>>(cmd("BLPOP").arg("never").arg(0), DEADLINE)
            .await
    });
    poll_until(&rt, "the BLPOP to block at the server", || async {
        let info: String = broker.query(cmd("INFO").arg("clients")).await.unwrap();
        info.contains("blocked_clients:1")
    })
    .await;

    server.stop();
    let e = bounded(&rt, "the pending request to fail", pending.recv()).await.unwrap().unwrap_err();
    assert!(matches!(e, BrokerError::ConnectionLost(_)), "{e:?}");
    bounded(&rt, "the subscriber to see the loss", sub.lost()).await;
    assert!(sub.is_lost());
    assert!(bounded(&rt, "the message channel to close", sub.messages().recv()).await.is_err());
    let e = bounded(&rt, "a request after the kill", ping(&broker)).await.unwrap_err();
    assert!(matches!(e, BrokerError::ConnectionLost(_)), "{e:?}");
    let e = broker.connect_again().await.unwrap_err();
    assert!(matches!(e, BrokerError::Connect { .. }), "{e:?}");

    server.start();
    let again = broker.connect_again().await.unwrap();
    assert_eq!(ping(&again).await.unwrap(), "PONG");
    let fresh = connect(&rt, &server.url()).await.unwrap();
    assert_eq!(ping(&fresh).await.unwrap(), "PONG");
    let sub = again.subscriber(4, MAX_PAYLOAD).await.unwrap();
    sub.subscribe("after").await.unwrap();
    let n: usize = fresh.query(cmd("PUBLISH").arg("after").arg(b"back")).await.unwrap();
    assert_eq!(n, 1);
    let got = bounded(&rt, "a publication after the restart", sub.messages().recv()).await;
    assert_eq!(got.unwrap().payload, b"back");
    // The old connection stays lost: a restart does not revive it.
    assert!(matches!(ping(&broker).await, Err(BrokerError::ConnectionLost(_))));
}
