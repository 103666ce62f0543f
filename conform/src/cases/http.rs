//! §21 and §23.4: the HTTP message endpoint (NDJSON `POST`, long-poll `GET`).

use std::time::{Duration, Instant};

use peerlink_core::endpoints::MESSAGES_PATH;
use peerlink_core::{Envelope, ErrorCode, HandshakeOutput, MessageType};

use super::{Case, CaseResult, case, ensure, slow};
use crate::ctx::Ctx;
use crate::http::{self, Resp};
use crate::peer;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-21.1", "§23.4", "POST /v1/messages without a token is 401", no_token),
        case(
            "C-21.2",
            "§21",
            "handshake in three POSTs, a message, its ACK by long poll",
            handshake,
        ),
        case(
            "C-21.3",
            "§21",
            "a POST's answers come in its response, not in a poll held before it",
            post_answers_in_its_response,
        ),
        case("C-21.4", "§21", "a newer poll releases the older one empty", newer_poll),
        case(
            "C-21.5",
            "§23.4",
            "a bad line is answered with ERROR INVALID_MESSAGE, the rest processed",
            bad_line,
        ),
        case("C-21.6", "§21", "a body over 8 MiB is 413", too_large),
        case("C-21.8", "§21", "a poll is held no longer than its wait_ms", poll_wait_ms),
        case("C-21.9", "§21", "a malformed wait_ms is 400 INVALID_MESSAGE", bad_wait_ms),
        slow(case(
            "C-21.7",
            "§21",
            "a poll with nothing waiting answers 200 empty within 25 s",
            empty_poll,
        )),
    ]
}

pub(super) fn post(ctx: &Ctx, token: &str, lines: &[Vec<u8>]) -> Result<Resp, String> {
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    http::post(&ctx.agent, &ctx.url(MESSAGES_PATH), Some(token), "application/x-ndjson", &body)
}

/// The envelopes of a 200 NDJSON answer.
pub(super) fn envelopes(r: &Resp) -> Result<Vec<Envelope>, String> {
    if r.status != 200 {
        return Err(format!("expected HTTP 200, got {}: {}", r.status, peer::preview(&r.body)));
    }
    let ct = r.content_type.clone().unwrap_or_default();
    if !ct.starts_with("application/x-ndjson") {
        return Err(format!("Content-Type {ct:?}, expected application/x-ndjson (§23.4)"));
    }
    r.body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            Envelope::decode(l, 64 << 20).map_err(|e| {
                format!("a line of the answer is not an envelope ({e}): {}", peer::preview(l))
            })
        })
        .collect()
}

/// Waits until the tester holds no peers link (answers would go there, §19), then empties its
/// mailbox.
pub(super) fn quiet(ctx: &Ctx, token: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = ctx.get("/peers/discover", Some(token))?;
        let v = r.json()?;
        let me = ctx.identity.id().as_str();
        let linked = v.get("peers").and_then(|p| p.as_array()).is_some_and(|p| {
            p.iter().any(|e| e.get("entity_id").and_then(|x| x.as_str()) == Some(me))
        });
        if !linked {
            break;
        }
        if Instant::now() > deadline {
            return Err("the node still lists a peers link of the tester after 3 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    post(ctx, token, &[])?;
    Ok(())
}

/// The first envelope of `kind` in the answer (other leftovers are ignored).
fn find(r: &Resp, kind: MessageType) -> Result<Envelope, String> {
    let all = envelopes(r)?;
    if let Some(e) = all.iter().find(|e| e.message_type == kind) {
        return Ok(e.clone());
    }
    let seen: Vec<String> = all.iter().map(|e| e.message_type.to_string()).collect();
    Err(format!("expected {kind} in the answer, got {seen:?}"))
}

fn no_token(ctx: &Ctx) -> CaseResult {
    http::post(&ctx.agent, &ctx.url(MESSAGES_PATH), None, "application/x-ndjson", b"")?
        .expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

pub(super) fn handshake(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let mut rng = peer::rng();
    let (mut init, m1) = peer::start(ctx, &mut rng)?;
    let m2 = find(&post(ctx, &token, &[m1.encode()])?, MessageType::HandshakeInitAck)?;
    let m3 = peer::next_msg(peer::step(&mut init, &m2, &mut rng)?)?;
    let m4 = find(&post(ctx, &token, &[m3.encode()])?, MessageType::SessionEstablished)?;
    let m5 = peer::next_msg(peer::step(&mut init, &m4, &mut rng)?)?;
    let m6 = find(&post(ctx, &token, &[m5.encode()])?, MessageType::Ready)?;
    let HandshakeOutput::Complete { mut session, .. } = peer::step(&mut init, &m6, &mut rng)?
    else {
        return Err("no session after READY".into());
    };
    let epoch = peer::epoch(&mut rng);
    let env = session
        .seal(
            MessageType::PeerMessage,
            peerlink_core::MessageId::random(&mut rng),
            &peer::data(epoch, 1, 1, b"over http"),
            peer::now(),
        )
        .map_err(|e| format!("checker bug: {e}"))?;
    let mut got = envelopes(&post(ctx, &token, &[env.encode()])?)?;
    let poller = http::agent(Duration::from_secs(8));
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        for e in got.drain(..) {
            match e.message_type {
                MessageType::Ack => {
                    let opened = session
                        .open(&e, peer::now())
                        .map_err(|e| format!("the ACK does not open: {e}"))?;
                    let c = peerlink_core::stream::StreamControl::decode(&opened.plaintext)
                        .map_err(|e| format!("ACK plaintext: {e}"))?;
                    if c.ack.is_some_and(|a| a.epoch == epoch && a.cumulative >= 1) {
                        return Ok(());
                    }
                }
                MessageType::Error => {
                    let b = peer::error_body(ctx, &e)?;
                    return Err(format!("expected an ACK, got ERROR {}", b.code).into());
                }
                _ => {}
            }
        }
        ensure!(Instant::now() < deadline, "no ACK within 8 s");
        let r =
            http::get(&poller, &ctx.url(&format!("{MESSAGES_PATH}?wait_ms=5000")), Some(&token))?;
        got = envelopes(&r).map_err(|e| format!("long poll: {e}"))?;
    }
}

pub(super) fn spawn_poll(ctx: &Ctx, token: &str) -> std::thread::JoinHandle<Result<Resp, String>> {
    let url = ctx.url(&format!("{MESSAGES_PATH}?wait_ms=8000"));
    let token = token.to_owned();
    std::thread::spawn(move || http::get(&http::agent(Duration::from_secs(10)), &url, Some(&token)))
}

pub(super) fn join(h: std::thread::JoinHandle<Result<Resp, String>>) -> Result<Resp, String> {
    h.join().map_err(|_| "poll thread panicked".to_owned())?
}

/// POSTs `lines` while the tester holds a long poll, and returns the POST's answer. The
/// answers MUST come in that answer and MUST NOT release the held poll (§21: it may be a
/// stopped client's); the poll is then released, empty, by a newer one (left to the node's
/// poll wait, its thread detached).
pub(super) fn post_while_polling(
    ctx: &Ctx,
    token: &str,
    lines: &[Vec<u8>],
) -> Result<Vec<Envelope>, String> {
    let poll = spawn_poll(ctx, token);
    std::thread::sleep(Duration::from_millis(300));
    let direct = envelopes(&post(ctx, token, lines)?)?;
    std::thread::sleep(Duration::from_millis(300));
    if poll.is_finished() {
        return Err("the POST's answers released the poll held before it (§21)".into());
    }
    let _newer = spawn_poll(ctx, token);
    let older = join(poll)?;
    if older.status != 200 || !older.body.iter().all(u8::is_ascii_whitespace) {
        let body = peer::preview(&older.body);
        return Err(format!(
            "the held poll, released by a newer one: HTTP {} {body}",
            older.status
        ));
    }
    Ok(direct)
}

fn post_answers_in_its_response(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let mut rng = peer::rng();
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    let direct = post_while_polling(ctx, &token, &[p.encode()])?;
    let pong = direct.iter().find(|e| e.message_type == MessageType::Pong);
    peer::check_pong(ctx, pong.ok_or("no PONG in the POST answer")?, &p)?;
    Ok(())
}

fn newer_poll(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let older = spawn_poll(ctx, &token);
    std::thread::sleep(Duration::from_millis(300));
    let newer = spawn_poll(ctx, &token);
    let t0 = Instant::now();
    let r = join(older)?;
    ensure!(t0.elapsed() < Duration::from_secs(3), "the older poll was held {:?}", t0.elapsed());
    ensure!(
        r.status == 200 && r.body.iter().all(u8::is_ascii_whitespace),
        "older poll: HTTP {} {}",
        r.status,
        peer::preview(&r.body)
    );
    // The newer one is still held (the node answers it after its poll wait).
    std::thread::sleep(Duration::from_millis(300));
    ensure!(!newer.is_finished(), "the newer poll was answered with nothing waiting");
    Ok(())
}

fn bad_line(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let mut rng = peer::rng();
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    let r = post(ctx, &token, &[b"{not json".to_vec(), p.encode()])?;
    let got = envelopes(&r)?;
    let err = got
        .iter()
        .find(|e| e.message_type == MessageType::Error)
        .ok_or("no ERROR in the answer")?;
    let b = peer::error_body(ctx, err)?;
    ensure!(b.code == ErrorCode::InvalidMessage, "expected ERROR INVALID_MESSAGE, got {}", b.code);
    let pong = got
        .iter()
        .find(|e| e.message_type == MessageType::Pong)
        .ok_or("the valid line got no PONG")?;
    peer::check_pong(ctx, pong, &p)?;
    Ok(())
}

fn too_large(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    let body = vec![b' '; 8 * 1024 * 1024 + 1];
    let r = http::post(
        &ctx.agent,
        &ctx.url(MESSAGES_PATH),
        Some(&token),
        "application/x-ndjson",
        &body,
    )?;
    r.expect_refusal(413, "MESSAGE_TOO_LARGE")?;
    Ok(())
}

fn empty_poll(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let agent = http::agent(Duration::from_secs(32));
    let t0 = Instant::now();
    let r = http::get(&agent, &ctx.url(MESSAGES_PATH), Some(&token))?;
    ensure!(r.status == 200, "HTTP {}", r.status);
    ensure!(r.body.iter().all(u8::is_ascii_whitespace), "body {}", peer::preview(&r.body));
    ensure!(t0.elapsed() <= Duration::from_secs(30), "answered after {:?}", t0.elapsed());
    Ok(())
}

fn poll_wait_ms(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    quiet(ctx, &token)?;
    let agent = http::agent(Duration::from_secs(10));
    for wait in [0u64, 1000] {
        let t0 = Instant::now();
        let url = ctx.url(&format!("{MESSAGES_PATH}?wait_ms={wait}"));
        let r = http::get(&agent, &url, Some(&token))?;
        let took = t0.elapsed();
        ensure!(r.status == 200, "wait_ms={wait}: HTTP {}", r.status);
        ensure!(r.body.iter().all(u8::is_ascii_whitespace), "body {}", peer::preview(&r.body));
        // Generous: the bound is the wait plus a loaded machine's delay, far below 25 s.
        let bound = Duration::from_millis(wait + 3000);
        ensure!(took <= bound, "wait_ms={wait} was held {took:?}");
    }
    Ok(())
}

fn bad_wait_ms(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    for bad in ["abc", "-1", "1.5", "12345678901"] {
        let url = ctx.url(&format!("{MESSAGES_PATH}?wait_ms={bad}"));
        let r = http::get(&http::agent(Duration::from_secs(10)), &url, Some(&token))?;
        r.expect_refusal(400, "INVALID_MESSAGE").map_err(|e| format!("wait_ms={bad}: {e}"))?;
    }
    Ok(())
}
