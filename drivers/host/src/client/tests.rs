use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

use peerlink_core::endpoints;
use peerlink_core::node::{HttpMethod, NodeAddr};
use peerlink_core::wire::{self, Encoding};

use super::token::token;
use super::*;

/// A minimal node on std sockets: answers `GET /auth/token`, `POST /auth/verify` and
/// `POST /v1/messages` (with `Connection: close` and a close after each answer when `close`
/// is set), and takes `PING` on whatever connection the client upgrades. Counts connections.
fn fake_node(close: bool) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
    fake_node_quitting(close, usize::MAX)
}

/// [`fake_node`] whose connections end, without a word, after `answers` answers each.
fn fake_node_quitting(
    close: bool,
    answers: usize,
) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
    fake_node_named("node", close, answers)
}

/// [`fake_node_quitting`] whose `/auth/token` names it `node_id`. Its `/auth/verify` answers
/// 401 unless the signature is the client's ([`ctx`]) over `node_id` and the challenge.
fn fake_node_named(
    node_id: &'static str,
    close: bool,
    answers: usize,
) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let conns = Arc::new(AtomicUsize::new(0));
    let (pinged, ping_rx) = std::sync::mpsc::channel();
    let counter = Arc::clone(&conns);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let pinged = pinged.clone();
            std::thread::spawn(move || serve(stream, n, node_id, close, answers, pinged));
        }
    });
    (base, conns, ping_rx)
}

fn serve(
    stream: std::net::TcpStream,
    n: usize,
    node_id: &str,
    close: bool,
    answers: usize,
    pinged: std::sync::mpsc::Sender<usize>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    for _ in 0..answers {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.starts_with("PING") {
            let _ = pinged.send(n);
            return;
        }
        let mut length = 0usize;
        let mut accept = String::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if let Some(v) = h.strip_prefix("accept:") {
                accept = v.trim().to_owned();
            }
        }
        // A message endpoint answers in the body encoding the request accepts (spec §27.7).
        let mut content_type = "application/json";
        if line.starts_with("POST /v1/messages") && wire::accepts_binary(Some(&accept)) {
            content_type = wire::BINARY_MEDIA_TYPE;
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let later = crate::clock::unix_millis() + 60_000;
        let mut status = "200 OK";
        let json = if line.starts_with("GET /auth/token") {
            let challenge = peerlink_core::encoding::b64u(&CHALLENGE);
            format!(r#"{{"node_id":"{node_id}","challenge":"{challenge}","expires_at":{later}}}"#)
        } else if line.starts_with("POST /auth/verify") {
            if !signed_for(node_id, &body) {
                status = "401 Unauthorized";
            }
            format!(r#"{{"token":"tok","expires_at":{later}}}"#)
        } else if line.starts_with("GET /peers/capabilities") {
            format!(
                r#"{{"node_id":"{node_id}","public_key":"k","versions":["1.2"],"capabilities":{{}}}}"#
            )
        } else if line.starts_with("POST /v1/messages") {
            String::new()
        } else {
            return;
        };
        let connection = if close { "Connection: close\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{connection}\r\n",
            json.len()
        );
        out.write_all(head.as_bytes()).unwrap();
        out.write_all(json.as_bytes()).unwrap();
        if close {
            return;
        }
    }
}

/// The challenge every fake node issues.
const CHALLENGE: [u8; 32] = [7; 32];

/// The client of these tests.
fn me() -> Identity {
    Identity::from_secret_bytes(EntityId::new("me").unwrap(), &[3; 32])
}

fn ctx() -> ClientCtx {
    ClientCtx::new(
        crate::smol_runtime::rt(),
        Arc::new(me()),
        None,
        DriverLimits::default(),
        1 << 20,
        1 << 20,
    )
}

/// Whether a `POST /auth/verify` body carries [`me`]'s signature over `node_id` and
/// [`CHALLENGE`] (spec §23.2).
fn signed_for(node_id: &str, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<endpoints::VerifyBody>(body) else { return false };
    let Ok(sig) = peerlink_core::encoding::decode_b64u_array::<64>("signature", &v.signature)
    else {
        return false;
    };
    let input =
        peerlink_core::auth::challenge_signing_input(&EntityId::new(node_id).unwrap(), &CHALLENGE);
    me().public_key().verify(&input, &sig).is_ok()
}

async fn token_then_ping(base: &str) -> String {
    let ctx = ctx();
    let uri: Uri = format!("{base}/ws/v1/peers").parse().unwrap();
    let node = EntityId::new("node").unwrap();
    let (token, stream) = token_and_stream(&ctx, &uri, base, &node).await.unwrap();
    let mut stream = stream;
    smol::io::AsyncWriteExt::write_all(&mut stream, b"PING\r\n").await.unwrap();
    smol::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
    token
}

#[test]
fn the_token_and_the_upgrade_share_one_keep_alive_connection() {
    let (base, conns, pinged) = fake_node(false);
    let token = smol::block_on(token_then_ping(&base));
    assert_eq!(token, "tok");
    let on = pinged.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((on, conns.load(Ordering::SeqCst)), (1, 1), "one connection for everything");
}

#[test]
fn a_node_that_closes_after_each_answer_gets_fresh_connections() {
    let (base, conns, pinged) = fake_node(true);
    let token = smol::block_on(token_then_ping(&base));
    assert_eq!(token, "tok");
    let on = pinged.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((on, conns.load(Ordering::SeqCst)), (3, 3), "token, verify, upgrade");
}

#[test]
fn login_signs_the_node_id_returned_when_it_is_the_hop_meant() {
    // The fake node's verify answers 401 unless the signature names "relay": the id it
    // returned, which is also the hop this client meant (a relay, not the peer behind it).
    let (base, _, _) = fake_node_named("relay", false, usize::MAX);
    let relay = EntityId::new("relay").unwrap();
    let token = smol::block_on(token(&ctx(), &base, &relay)).unwrap();
    assert_eq!(token, "tok");
}

#[test]
fn login_refuses_a_node_that_is_not_the_hop_meant_and_signs_nothing() {
    // Connection: close after each answer, so a POST /auth/verify would need a second
    // connection: there must be none.
    let (base, conns, _) = fake_node_named("relay", true, usize::MAX);
    let bob = EntityId::new("bob").unwrap();
    let ctx = ctx();
    let err = smol::block_on(token(&ctx, &base, &bob)).unwrap_err();
    match &err {
        ClientError::WrongNode { url, found, expected } => {
            assert_eq!((url.as_str(), found.as_str(), expected.as_str()), (&*base, "relay", "bob"));
        }
        other => panic!("expected WrongNode, got {other:?}"),
    }
    assert_eq!(err.to_string(), format!("the node at {base} is relay, not bob"));
    assert_eq!(conns.load(Ordering::SeqCst), 1, "GET /auth/token only: no verify");
    assert!(ctx.cached(&base).is_none());
}

#[test]
fn a_link_to_a_node_that_is_not_the_hop_meant_is_refused_before_signing() {
    let (base, conns, _) = fake_node_named("relay", true, usize::MAX);
    let uri: Uri = format!("{base}/ws/v1/peers").parse().unwrap();
    let bob = EntityId::new("bob").unwrap();
    let r = smol::block_on(token_and_stream(&ctx(), &uri, &base, &bob));
    assert!(matches!(r, Err(ClientError::WrongNode { .. })), "{:?}", r.map(|(t, _)| t));
    assert_eq!(conns.load(Ordering::SeqCst), 1, "no verify, no upgrade");
}

#[test]
fn capabilities_tell_who_the_node_is_without_logging_in() {
    let (base, _, _) = fake_node_named("relay", false, usize::MAX);
    let caps =
        smol::block_on(capabilities(crate::smol_runtime::rt(), &format!("{base}/"), None)).unwrap();
    assert_eq!((caps.node_id.as_str(), caps.public_key.as_str()), ("relay", "k"));
}

/// Posts `n` times to the fake node at `base`, `pause` apart; every answer must be 200.
fn post(ctx: &ClientCtx, base: &str, n: usize, pause: Duration) {
    post_accepting(ctx, base, n, pause, false);
}

/// [`post`], offering binary answers or not; returns the encoding of the last answer.
fn post_accepting(
    ctx: &ClientCtx,
    base: &str,
    n: usize,
    pause: Duration,
    accept_binary: bool,
) -> Option<Encoding> {
    let node = NodeAddr { entity: EntityId::new("node").unwrap(), base_url: base.to_owned() };
    let url = format!("{base}/v1/messages");
    smol::block_on(async {
        let mut last = None;
        for _ in 0..n {
            let req = NodeRequest {
                method: HttpMethod::Post,
                url: url.clone(),
                body: b"x".to_vec(),
                body_encoding: Encoding::Json,
                accept_binary,
            };
            let r = node_request(ctx, &node, req, pause).await;
            assert_eq!(r.as_ref().map(|a| a.status), Some(200));
            last = r.map(|a| a.encoding);
            smol::Timer::after(pause).await;
        }
        last
    })
}

#[test]
fn a_post_offers_binary_answers_and_reports_the_encoding_of_the_answer() {
    let (base, _, _) = fake_node(false);
    let ctx = ctx();
    assert_eq!(post_accepting(&ctx, &base, 1, Duration::ZERO, true), Some(Encoding::Binary));
    assert_eq!(post_accepting(&ctx, &base, 1, Duration::ZERO, false), Some(Encoding::Json));
}

#[test]
fn posts_reuse_the_connection_that_fetched_the_token() {
    let (base, conns, _) = fake_node(false);
    post(&ctx(), &base, 3, Duration::ZERO);
    assert_eq!(conns.load(Ordering::SeqCst), 1, "token, verify and three posts on one");
}

#[test]
fn a_node_that_closes_after_each_answer_gets_a_connection_per_post() {
    let (base, conns, _) = fake_node(true);
    post(&ctx(), &base, 3, Duration::ZERO);
    assert_eq!(conns.load(Ordering::SeqCst), 5, "token, verify, then one per post");
}

#[test]
fn a_kept_connection_the_node_ended_costs_no_request() {
    // Token, verify and one post on the first connection, which then ends: the next post
    // finds it closed (or fails on it and is made again) and succeeds on a fresh one.
    let (base, conns, _) = fake_node_quitting(false, 3);
    post(&ctx(), &base, 2, Duration::ZERO);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_idle_past_its_reuse_time_is_replaced() {
    let (base, conns, _) = fake_node(false);
    let mut ctx = ctx();
    ctx.limits.http_idle_reuse = Duration::from_millis(30);
    post(&ctx, &base, 3, Duration::from_millis(60));
    assert_eq!(conns.load(Ordering::SeqCst), 3, "each post finds the last one too old");
}

#[test]
fn idle_connections_kept_per_node_are_bounded() {
    let (base, _, _) = fake_node(false);
    let mut ctx = ctx();
    ctx.limits.max_idle_http_per_node = 2;
    let uri: Uri = base.parse().unwrap();
    smol::block_on(async {
        for _ in 0..4 {
            let conn = KeepAlive::connect(&ctx, &uri).await.unwrap();
            ctx.keep_idle(&base, conn);
        }
    });
    let kept = ctx.idle.lock().unwrap().get(&base).map_or(0, Vec::len);
    assert_eq!(kept, 2);
}
