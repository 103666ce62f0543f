//! §7: the handshake with the node as responder: the happy path, and each step the tester
//! sends (1, 3, 5) tampered, duplicated, reordered or dropped. Steps 2, 4 and 6 are the node's:
//! every case checks them strictly with the core's initiator.

use std::sync::Arc;
use std::time::Duration;

use peerlink_core::encoding::b64u;
use peerlink_core::{
    Envelope, ErrorCode, HandshakeConfig, Identity, Initiator, MessageType, Payload, TrustPolicy,
    TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;

use super::{Case, CaseResult, allowlist, case, ensure, slow};
use crate::ctx::Ctx;
use crate::peer::{self, ANSWER};
use crate::ws::Ws;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-7.1", "§7", "handshake happy path over WebSocket", happy),
        case(
            "C-7.2",
            "§7.3",
            "step 1 with a bad signature: AUTHENTICATION_FAILED",
            init_bad_signature,
        ),
        allowlist(case(
            "C-7.3",
            "§2.3",
            "step 1 from an untrusted key for the id: AUTHENTICATION_FAILED",
            init_untrusted,
        )),
        case("C-7.4", "§7.9", "step 1 330 s old: REPLAY_DETECTED", init_stale),
        case(
            "C-7.5",
            "§7.3",
            "step 1 offering only version 9.9: UNSUPPORTED_VERSION",
            init_version,
        ),
        case(
            "C-7.6",
            "§7.11",
            "step 1 duplicated: REPLAY_DETECTED or a fresh challenge",
            init_duplicate,
        ),
        case(
            "C-7.7",
            "§7.9",
            "step 3 with a bad signature: AUTHENTICATION_FAILED",
            cr_bad_signature,
        ),
        case(
            "C-7.8",
            "§7.5",
            "step 3 with a wrong transcript: AUTHENTICATION_FAILED",
            cr_transcript,
        ),
        case("C-7.9", "§7.5", "step 3 with a wrong challenge: AUTHENTICATION_FAILED", cr_challenge),
        case(
            "C-7.10",
            "§7.6",
            "step 5 with a wrong confirm tag: AUTHENTICATION_FAILED",
            confirm_tag,
        ),
        case(
            "C-7.11",
            "§7.9",
            "step 5 with a bad signature: AUTHENTICATION_FAILED",
            confirm_signature,
        ),
        case("C-7.12", "§7.10", "step 3 duplicated after step 4: INVALID_STATE", cr_duplicate),
        case("C-7.13", "§7.10", "step 5 duplicated after READY: INVALID_STATE", confirm_duplicate),
        case("C-7.14", "§7.9", "step 5 sent in place of step 3: INVALID_STATE", reordered),
        case("C-7.15", "§7.10", "a failed handshake refuses its later steps", final_failure),
        slow(case("C-7.16", "§7.10", "step 3 withheld past the 5 s timeout is refused", dropped)),
    ]
}

fn checker(e: impl std::fmt::Display) -> String {
    format!("checker bug: {e}")
}

/// Replaces a payload member and re-signs with `identity`.
fn tamper(
    env: &Envelope,
    member: &str,
    value: serde_json::Value,
    identity: &Identity,
) -> Result<Envelope, String> {
    let mut env = env.clone();
    let mut v = env.payload.value().clone();
    if let Some(o) = v.as_object_mut() {
        o.insert(member.to_owned(), value);
    }
    env.payload = Payload::new(v).map_err(checker)?;
    env.sign(identity);
    Ok(env)
}

fn break_signature(env: &Envelope) -> Envelope {
    let mut env = env.clone();
    if let Some(b) = env.signature.as_mut().and_then(|s| s.get_mut(0)) {
        *b ^= 0x80;
    }
    env
}

fn random_b64u(rng: &mut ChaCha20Rng) -> serde_json::Value {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    serde_json::Value::String(b64u(&b))
}

/// Steps 1 and 2: the initiator and the node's step 3 to send.
fn to_step3(
    ctx: &Ctx,
    ws: &mut Ws,
    rng: &mut ChaCha20Rng,
) -> Result<(Initiator, Envelope), String> {
    let (mut init, m1) = peer::start(ctx, rng)?;
    peer::send(ws, &m1)?;
    let m2 = peer::recv(ws, ANSWER).map_err(|e| format!("step 2: {e}"))?;
    let m3 = peer::next_msg(peer::step(&mut init, &m2, rng)?)?;
    Ok((init, m3))
}

/// Steps 1 to 4: the initiator, step 3 as sent, and step 5 to send.
fn to_step5(
    ctx: &Ctx,
    ws: &mut Ws,
    rng: &mut ChaCha20Rng,
) -> Result<(Initiator, Envelope, Envelope), String> {
    let (mut init, m3) = to_step3(ctx, ws, rng)?;
    peer::send(ws, &m3)?;
    let m4 = peer::recv(ws, ANSWER).map_err(|e| format!("step 4: {e}"))?;
    let m5 = peer::next_msg(peer::step(&mut init, &m4, rng)?)?;
    Ok((init, m3, m5))
}

/// Sends `env` on a fresh link and expects `code`.
fn refused(ctx: &Ctx, ws: &mut Ws, env: &Envelope, code: ErrorCode) -> CaseResult {
    peer::send(ws, env)?;
    peer::expect_error(ctx, ws, code, ANSWER)?;
    Ok(())
}

fn happy(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let session = peer::handshake(ctx, &mut ws, &mut rng)?;
    ensure!(session.peer() == &ctx.node_id, "session with {}", session.peer());
    ensure!(session.id().as_str().len() <= 64, "session id too long");
    ws.close();
    Ok(())
}

fn init_bad_signature(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m1) = peer::start(ctx, &mut rng)?;
    refused(ctx, &mut ws, &break_signature(&m1), ErrorCode::AuthenticationFailed)
}

fn init_untrusted(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let imposter = Arc::new(Identity::generate(ctx.identity.id().clone(), &mut rng));
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(ctx.node_id.clone(), ctx.node_key);
    let (_, m1) = Initiator::start(
        imposter,
        ctx.node_id.clone(),
        &trust,
        HandshakeConfig::default(),
        peer::now(),
        &mut rng,
    )
    .map_err(checker)?;
    let mut ws = peer::open_peers(ctx)?;
    refused(ctx, &mut ws, &m1, ErrorCode::AuthenticationFailed)
}

fn init_stale(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, mut m1) = peer::start(ctx, &mut rng)?;
    m1.timestamp = peer::now().saturating_sub(Duration::from_secs(330));
    m1.sign(&ctx.identity);
    refused(ctx, &mut ws, &m1, ErrorCode::ReplayDetected)
}

fn init_version(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m1) = peer::start(ctx, &mut rng)?;
    let m1 = tamper(&m1, "versions", serde_json::json!(["9.9"]), &ctx.identity)?;
    refused(ctx, &mut ws, &m1, ErrorCode::UnsupportedVersion)
}

fn init_duplicate(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (mut init, m1) = peer::start(ctx, &mut rng)?;
    peer::send(&mut ws, &m1)?;
    let m2 = peer::recv(&mut ws, ANSWER).map_err(|e| format!("step 2: {e}"))?;
    peer::send(&mut ws, &m1)?;
    let again = peer::recv(&mut ws, ANSWER).map_err(|e| format!("after the duplicate: {e}"))?;
    match again.message_type {
        MessageType::Error => {
            let b = peer::error_body(ctx, &again)?;
            ensure!(b.code == ErrorCode::ReplayDetected, "duplicate step 1: ERROR {}", b.code);
            // The handshake in progress is unaffected: it completes.
            let m3 = peer::next_msg(peer::step(&mut init, &m2, &mut rng)?)?;
            peer::send(&mut ws, &m3)?;
            let m4 = peer::recv(&mut ws, ANSWER).map_err(|e| format!("step 4: {e}"))?;
            peer::next_msg(peer::step(&mut init, &m4, &mut rng)?)
                .map_err(|e| format!("after the refused duplicate: {e}"))?;
        }
        MessageType::HandshakeInitAck => {
            let c = |e: &Envelope| e.payload.value().get("challenge").cloned();
            ensure!(c(&again) != c(&m2), "a replayed step 1 got the same challenge (§7.11)");
            ensure!(again.session_id != m2.session_id, "a replayed step 1 got the same session");
        }
        other => {
            return Err(format!(
                "duplicate step 1: expected ERROR or HANDSHAKE_INIT_ACK, got {other}"
            )
            .into());
        }
    }
    ws.close();
    Ok(())
}

fn cr_bad_signature(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    refused(ctx, &mut ws, &break_signature(&m3), ErrorCode::AuthenticationFailed)
}

fn cr_transcript(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    let bad = tamper(&m3, "transcript", random_b64u(&mut rng), &ctx.identity)?;
    refused(ctx, &mut ws, &bad, ErrorCode::AuthenticationFailed)
}

fn cr_challenge(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    let bad = tamper(&m3, "challenge", random_b64u(&mut rng), &ctx.identity)?;
    refused(ctx, &mut ws, &bad, ErrorCode::AuthenticationFailed)
}

fn confirm_tag(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, _, m5) = to_step5(ctx, &mut ws, &mut rng)?;
    let bad = tamper(&m5, "confirm", random_b64u(&mut rng), &ctx.identity)?;
    refused(ctx, &mut ws, &bad, ErrorCode::AuthenticationFailed)
}

fn confirm_signature(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, _, m5) = to_step5(ctx, &mut ws, &mut rng)?;
    refused(ctx, &mut ws, &break_signature(&m5), ErrorCode::AuthenticationFailed)
}

fn cr_duplicate(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3, _) = to_step5(ctx, &mut ws, &mut rng)?;
    refused(ctx, &mut ws, &m3, ErrorCode::InvalidState)
}

fn confirm_duplicate(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (mut init, _, m5) = to_step5(ctx, &mut ws, &mut rng)?;
    peer::send(&mut ws, &m5)?;
    let m6 = peer::recv(&mut ws, ANSWER).map_err(|e| format!("step 6: {e}"))?;
    let done = peer::step(&mut init, &m6, &mut rng)?;
    ensure!(
        matches!(done, peerlink_core::HandshakeOutput::Complete { .. }),
        "no session after READY"
    );
    refused(ctx, &mut ws, &m5, ErrorCode::InvalidState)
}

fn reordered(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    // A SESSION_CONFIRM (step 5) where step 3 is due: well formed, signed, wrong state.
    let mut m5 = m3.clone();
    m5.message_type = MessageType::SessionConfirm;
    m5.seq = 5;
    let mut m5 = tamper(&m5, "confirm", random_b64u(&mut rng), &ctx.identity)?;
    if let Some(o) = m5.payload.value().as_object() {
        let only_confirm: serde_json::Map<_, _> = o
            .iter()
            .filter(|(k, _)| *k == "confirm")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m5.payload = Payload::new(serde_json::Value::Object(only_confirm)).map_err(checker)?;
        m5.sign(&ctx.identity);
    }
    refused(ctx, &mut ws, &m5, ErrorCode::InvalidState)
}

fn final_failure(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    let bad = tamper(&m3, "transcript", random_b64u(&mut rng), &ctx.identity)?;
    refused(ctx, &mut ws, &bad, ErrorCode::AuthenticationFailed)?;
    // The genuine step 3 now belongs to a failed handshake.
    peer::send(&mut ws, &m3)?;
    let code = peer::expect_error_in(
        ctx,
        &mut ws,
        &[ErrorCode::InvalidState, ErrorCode::SessionNotFound],
        ANSWER,
    )?;
    let _ = code;
    ws.close();
    Ok(())
}

fn dropped(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let (_, m3) = to_step3(ctx, &mut ws, &mut rng)?;
    // The node may announce the timeout (§7.10 SHOULD); either way it refuses step 3 after it.
    std::thread::sleep(Duration::from_millis(5_600));
    peer::send(&mut ws, &m3)?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let env = peer::recv(&mut ws, ANSWER)
            .map_err(|e| format!("expected a refusal of the late step 3: {e}"))?;
        ensure!(
            env.message_type == MessageType::Error,
            "late step 3 answered with {}",
            env.message_type
        );
        let b = peer::error_body(ctx, &env)?;
        seen.push(b.code);
        if b.code == ErrorCode::InvalidState || b.in_reply_to.as_ref() == Some(&m3.message_id) {
            break;
        }
    }
    let ok = seen.iter().any(|c| {
        matches!(c, ErrorCode::Timeout | ErrorCode::InvalidState | ErrorCode::SessionNotFound)
    });
    ensure!(ok, "late step 3: expected TIMEOUT or INVALID_STATE, got {seen:?}");
    ws.close();
    Ok(())
}
