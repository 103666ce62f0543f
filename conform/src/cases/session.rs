//! §8 sessions, §13 delivery and §15.3 resume, after a handshake with the node.

use std::time::Duration;

use peerlink_core::encoding::{b64u, decode_b64u};
use peerlink_core::{Envelope, ErrorCode, MessageId, MessageType, Payload, Session, SessionId};
use rand_chacha::ChaCha20Rng;

use super::{Case, CaseResult, Verdict, case, ensure};
use crate::ctx::Ctx;
use crate::peer::{self, ANSWER};
use crate::ws::Ws;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case(
            "C-13.1",
            "§13",
            "an encrypted PEER_MESSAGE is acknowledged by a sealed ACK",
            message_ack,
        ),
        case(
            "C-13.1.1",
            "§13.1",
            "a PEER_MESSAGE with an app_type is acknowledged in a session that agreed on app_types",
            typed_message_ack,
        ),
        case(
            "C-13.1.2",
            "§13.1",
            "an app_type outside the entity-id syntax is INVALID_MESSAGE",
            bad_app_type,
        ),
        case(
            "C-13.2",
            "§13.2",
            "an ACK whose ack lacks selective is INVALID_MESSAGE",
            ack_without_selective,
        ),
        case("C-8.1", "§8.4", "a replayed session message is REPLAY_DETECTED", replayed),
        case("C-8.2", "§8.3", "a session message 330 s old is REPLAY_DETECTED", stale),
        case(
            "C-8.3",
            "§8.3",
            "a session message with altered ciphertext is AUTHENTICATION_FAILED",
            altered,
        ),
        case(
            "C-8.4",
            "§8.3",
            "a session message for an unknown session is SESSION_NOT_FOUND",
            unknown_session,
        ),
        case(
            "C-8.5",
            "§8.3",
            "a session nonce that is not 0^4 || u64be(seq) is INVALID_MESSAGE",
            bad_nonce,
        ),
        case(
            "C-15.3.1",
            "§15.3",
            "SESSION_RESUME with a forged proof is AUTHENTICATION_FAILED",
            resume_forged,
        ),
        case(
            "C-15.3.2",
            "§15.3",
            "SESSION_RESUME with a valid proof on a new link is SESSION_RESUMED",
            resume_valid,
        ),
        case(
            "C-15.3.3",
            "§15.3",
            "SESSION_RESUME for an unknown session is SESSION_NOT_FOUND",
            resume_unknown,
        ),
    ]
}

fn checker(e: impl std::fmt::Display) -> String {
    format!("checker bug: {e}")
}

/// A link with an established session.
pub(super) fn established(ctx: &Ctx, rng: &mut ChaCha20Rng) -> Result<(Ws, Session), String> {
    let mut ws = peer::open_peers(ctx)?;
    let session = peer::handshake(ctx, &mut ws, rng).map_err(|e| format!("handshake: {e}"))?;
    Ok((ws, session))
}

/// Sends one message (frame `no` of `epoch`) and waits for its acknowledgement.
fn message(
    ctx: &Ctx,
    ws: &mut Ws,
    s: &mut Session,
    epoch: u64,
    no: u64,
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    let env = peer::seal_send(
        ws,
        s,
        MessageType::PeerMessage,
        &peer::data(epoch, no, 1, b"conform"),
        rng,
    )?;
    peer::expect_ack(ctx, ws, s, epoch, |a| a.cumulative >= no)?;
    Ok(env)
}

fn message_ack(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let env = peer::seal_send(
        &mut ws,
        &mut s,
        MessageType::PeerMessage,
        &peer::data(epoch, 1, 1, b"hello"),
        &mut rng,
    )?;
    let ack = peer::expect_ack(ctx, &mut ws, &mut s, epoch, |a| a.cumulative >= 1)?;
    ensure!(ack.cumulative == 1, "ACK cumulative {} after one frame", ack.cumulative);
    let _ = env;
    ws.close();
    Ok(())
}

fn typed_message_ack(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    if !s.capabilities().app_types {
        ws.close();
        return Err(Verdict::Skip("the node does not offer app_types (§7.8)".into()));
    }
    let epoch = peer::epoch(&mut rng);
    let plaintext =
        format!("{{\"epoch\":{epoch},\"no\":1,\"base\":1,\"app_type\":\"MODEL_CREATED\"}}\nx");
    peer::seal_send(&mut ws, &mut s, MessageType::PeerMessage, plaintext.as_bytes(), &mut rng)?;
    let ack = peer::expect_ack(ctx, &mut ws, &mut s, epoch, |a| a.cumulative >= 1)?;
    ensure!(ack.cumulative == 1, "ACK cumulative {} after one typed frame", ack.cumulative);
    ws.close();
    Ok(())
}

fn bad_app_type(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let plaintext = format!("{{\"epoch\":{epoch},\"no\":1,\"base\":1,\"app_type\":\"a b\"}}\nx");
    peer::seal_send(&mut ws, &mut s, MessageType::PeerMessage, plaintext.as_bytes(), &mut rng)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::InvalidMessage, ANSWER)?;
    ws.close();
    Ok(())
}

fn ack_without_selective(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let plaintext = format!(r#"{{"ack":{{"epoch":{epoch},"cumulative":0}}}}"#);
    peer::seal_send(&mut ws, &mut s, MessageType::Ack, plaintext.as_bytes(), &mut rng)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::InvalidMessage, ANSWER)?;
    ws.close();
    Ok(())
}

fn replayed(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let env = message(ctx, &mut ws, &mut s, epoch, 1, &mut rng)?;
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::ReplayDetected, ANSWER)?;
    ws.close();
    Ok(())
}

fn stale(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let old = peer::now().saturating_sub(Duration::from_secs(330));
    let env = s
        .seal(
            MessageType::PeerMessage,
            MessageId::random(&mut rng),
            &peer::data(epoch, 1, 1, b"old"),
            old,
        )
        .map_err(checker)?;
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::ReplayDetected, ANSWER)?;
    ws.close();
    Ok(())
}

fn sealed(s: &mut Session, rng: &mut ChaCha20Rng) -> Result<Envelope, String> {
    let epoch = peer::epoch(rng);
    s.seal(
        MessageType::PeerMessage,
        MessageId::random(rng),
        &peer::data(epoch, 1, 1, b"x"),
        peer::now(),
    )
    .map_err(checker)
}

fn altered(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let mut env = sealed(&mut s, &mut rng)?;
    let text = env.payload.value().as_str().unwrap_or_default();
    let mut ct = decode_b64u("payload", text).map_err(checker)?;
    if let Some(b) = ct.get_mut(0) {
        *b ^= 0x01;
    }
    env.payload = Payload::string(b64u(&ct));
    env.sign(&ctx.identity);
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    ws.close();
    Ok(())
}

fn unknown_session(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let mut env = sealed(&mut s, &mut rng)?;
    env.session_id = Some(SessionId::random(&mut rng));
    env.sign(&ctx.identity);
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::SessionNotFound, ANSWER)?;
    ws.close();
    Ok(())
}

fn bad_nonce(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let mut env = sealed(&mut s, &mut rng)?;
    if let Some(b) = env.nonce.get_mut(0) {
        *b = 0xff;
    }
    env.sign(&ctx.identity);
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::InvalidMessage, ANSWER)?;
    ws.close();
    Ok(())
}

/// A `SESSION_RESUME` for `session_id` whose proof is `proof(nonce)`.
fn resume(
    ctx: &Ctx,
    session_id: SessionId,
    proof: impl Fn(&[u8]) -> [u8; 32],
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    let mut env = peer::signed(
        ctx,
        MessageType::SessionResume,
        Some(session_id),
        serde_json::json!({}),
        peer::now(),
        rng,
    )?;
    let p = proof(&[b"request".as_slice(), &env.nonce].concat());
    env.payload = Payload::new(serde_json::json!({"proof": b64u(&p)})).map_err(checker)?;
    env.sign(&ctx.identity);
    Ok(env)
}

fn resume_forged(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (ws, s) = established(ctx, &mut rng)?;
    ws.close();
    let mut ws = peer::open_peers(ctx)?;
    let env = resume(ctx, s.id().clone(), |_| [7u8; 32], &mut rng)?;
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    ws.close();
    Ok(())
}

fn resume_valid(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (mut ws, mut s) = established(ctx, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    message(ctx, &mut ws, &mut s, epoch, 1, &mut rng)
        .map_err(|e| format!("before the resume: {e}"))?;
    ws.close();
    let mut ws = peer::open_peers(ctx)?;
    let env = resume(ctx, s.id().clone(), |c| s.resumption_proof(c), &mut rng)?;
    peer::send(&mut ws, &env)?;
    let got = peer::recv(&mut ws, ANSWER).map_err(|e| format!("expected SESSION_RESUMED: {e}"))?;
    if got.message_type == MessageType::Error {
        let b = peer::error_body(ctx, &got)?;
        return Err(format!("expected SESSION_RESUMED, got ERROR {}", b.code).into());
    }
    ensure!(
        got.message_type == MessageType::SessionResumed,
        "expected SESSION_RESUMED, got {}",
        got.message_type
    );
    got.verify(&ctx.node_key)
        .map_err(|e| format!("SESSION_RESUMED not signed by the node: {e}"))?;
    ensure!(got.session_id.as_ref() == Some(s.id()), "SESSION_RESUMED names another session");
    ensure!(
        got.recipient_id.as_ref() == Some(ctx.identity.id()),
        "SESSION_RESUMED not addressed to the tester"
    );
    let answers = got.payload.value().get("in_reply_to").and_then(|v| v.as_str());
    ensure!(answers == Some(env.message_id.as_str()), "in_reply_to is {answers:?}");
    let proof = got.payload.value().get("proof").and_then(|v| v.as_str()).unwrap_or_default();
    let want = s.resumption_proof(&[b"response".as_slice(), &env.nonce].concat());
    ensure!(proof == b64u(&want), "the node's resume proof is wrong");
    // The session goes on over the new link.
    message(ctx, &mut ws, &mut s, epoch, 2, &mut rng)
        .map_err(|e| format!("after the resume: {e}"))?;
    ws.close();
    Ok(())
}

fn resume_unknown(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let env = resume(ctx, SessionId::random(&mut rng), |_| [1u8; 32], &mut rng)?;
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::SessionNotFound, ANSWER)?;
    ws.close();
    Ok(())
}
