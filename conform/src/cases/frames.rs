//! Frames on a link: §4 decoding, §23.3 frame rules (binary, size), §9 signed messages,
//! §17 heartbeats, §18 the rate limit, §19 the sender binding.

use std::time::Duration;

use peerlink_core::{EntityId, ErrorCode, Identity, MessageType, Timestamp};
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};

use super::{Case, CaseResult, case, ensure};
use crate::ctx::Ctx;
use crate::peer::{self, ANSWER};

/// The default frame limit (§11).
const LIMIT: usize = 1_048_576;
/// Skew beyond the default 300 s (§11), with margin for clocks that differ a little.
const STALE: Duration = Duration::from_secs(330);

/// The invalid frames of the spec's vectors (§22).
const INVALID_VECTORS: &str = include_str!("../../../spec/vectors/invalid.json");

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-4.2.1", "§4.2", "invalid JSON is ERROR INVALID_MESSAGE; the link stays", bad_json),
        case("C-4.2.2", "§4.2", "every frame of vectors/invalid.json gets its code", vectors),
        case("C-4.2.3", "§4.2", "a frame of exactly 1 MiB is accepted", exact_limit),
        case(
            "C-23.3.5",
            "§23.3",
            "a binary message on a JSON link: ERROR INVALID_MESSAGE, the link stays (or 1003)",
            binary,
        ),
        case(
            "C-23.3.6",
            "§23.3",
            "a frame over 1 MiB closes with 1009 (or MESSAGE_TOO_LARGE)",
            oversize_frame,
        ),
        case(
            "C-23.3.7",
            "§23.3",
            "a fragmented message over 1 MiB closes with 1009",
            oversize_message,
        ),
        case(
            "C-19.1",
            "§19",
            "an envelope sent as another entity: AUTHENTICATION_FAILED, close 1008",
            impersonation,
        ),
        case(
            "C-9.1.1",
            "§9.1",
            "PING (to the node or null) is answered with a signed PONG naming it",
            ping,
        ),
        case("C-9.1.2", "§9.1", "a PING 330 s old is REPLAY_DETECTED", stale_ping),
        case("C-9.1.3", "§9.1", "a PING 330 s in the future is REPLAY_DETECTED", future_ping),
        case("C-9.1.4", "§9.1", "a replayed PING (same nonce) is REPLAY_DETECTED", replayed_ping),
        case(
            "C-9.1.5",
            "§9.1",
            "a PING with a bad signature is AUTHENTICATION_FAILED",
            badly_signed_ping,
        ),
        case("C-9.1.6", "§9.1", "a PING with seq 1 is INVALID_MESSAGE", ping_seq),
        case("C-17.1", "§17", "a third PING within a minute is RATE_LIMIT_EXCEEDED", ping_limit),
        case("C-18.1", "§18", "past 100 frames a minute: RATE_LIMIT_EXCEEDED", flood),
    ]
}

fn bad_json(ctx: &Ctx) -> CaseResult {
    let mut ws = peer::open_peers(ctx)?;
    ws.send_text(b"{\"message_id\": ")?;
    peer::expect_error(ctx, &mut ws, ErrorCode::InvalidMessage, ANSWER)?;
    let mut rng = peer::rng();
    peer::ping_pong(ctx, &mut ws, &mut rng).map_err(|e| format!("after the refusal: {e}"))?;
    ws.close();
    Ok(())
}

fn vectors(ctx: &Ctx) -> CaseResult {
    let v: serde_json::Value =
        serde_json::from_str(INVALID_VECTORS).map_err(|e| format!("checker bug: {e}"))?;
    let cases = v.get("cases").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    ensure!(!cases.is_empty(), "checker bug: no vectors");
    let mut ws = peer::open_peers(ctx)?;
    for c in &cases {
        let limit = c.get("max_frame_bytes").and_then(serde_json::Value::as_u64);
        let frame = c.get("frame").and_then(|f| f.as_str()).unwrap_or_default();
        let code = c.get("code").and_then(|f| f.as_str()).unwrap_or_default();
        let what = c.get("description").and_then(|f| f.as_str()).unwrap_or_default();
        // Other limits are not this node's; an ERROR is never answered (§10).
        if limit != Some(LIMIT as u64) || frame.contains("\"type\":\"ERROR\"") {
            continue;
        }
        let code: ErrorCode = code.parse().map_err(|_| format!("checker bug: code {code}"))?;
        ws.send_text(frame.as_bytes())?;
        peer::expect_error(ctx, &mut ws, code, ANSWER).map_err(|e| format!("{what}: {e}"))?;
    }
    ws.close();
    Ok(())
}

fn exact_limit(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    let mut frame = p.encode();
    ensure!(frame.len() < LIMIT, "checker bug");
    frame.resize(LIMIT, b' ');
    ws.send_text(&frame)?;
    let env = peer::recv(&mut ws, ANSWER).map_err(|e| format!("expected PONG: {e}"))?;
    peer::check_pong(ctx, &env, &p)?;
    ws.close();
    Ok(())
}

fn binary(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    // A well-formed binary envelope (§27.5), and a JSON envelope, each in a binary message, on a
    // link that did not agree on binary messages.
    let binary = peer::ping(ctx, peer::now(), &mut rng)?;
    let json = peer::ping(ctx, peer::now(), &mut rng)?;
    let messages = [peerlink_core::binary_envelope::encode(&binary), json.encode()];
    for (what, message) in ["a binary envelope", "a JSON envelope"].into_iter().zip(messages) {
        ws.send_binary(message)?;
        match peer::recv(&mut ws, ANSWER) {
            Ok(env) if env.message_type == MessageType::Error => {
                let b = peer::error_body(ctx, &env)?;
                ensure!(
                    b.code == ErrorCode::InvalidMessage,
                    "{what}: expected INVALID_MESSAGE, got {}",
                    b.code
                );
            }
            Ok(env) => {
                return Err(format!(
                    "{what}: expected ERROR INVALID_MESSAGE, got {}",
                    env.message_type
                )
                .into());
            }
            // A node without §27 may close with 1003 (§23.3).
            Err(e) if e.contains("(1003 ") => return Ok(()),
            Err(e) => {
                return Err(
                    format!("{what}: expected ERROR INVALID_MESSAGE or close 1003: {e}").into()
                );
            }
        }
    }
    peer::ping_pong(ctx, &mut ws, &mut rng).map_err(|e| format!("after the refusals: {e}"))?;
    ws.close();
    Ok(())
}

fn expect_too_large(ctx: &Ctx, ws: &mut crate::ws::Ws) -> CaseResult {
    match peer::recv(ws, ANSWER) {
        Ok(env) if env.message_type == MessageType::Error => {
            let b = peer::error_body(ctx, &env)?;
            ensure!(
                b.code == ErrorCode::MessageTooLarge,
                "expected MESSAGE_TOO_LARGE, got {}",
                b.code
            );
            Ok(())
        }
        Ok(env) => {
            Err(format!("expected close 1009 or MESSAGE_TOO_LARGE, got {}", env.message_type)
                .into())
        }
        Err(e) if e.contains("(1009 ") => Ok(()),
        Err(e) => Err(format!("expected close 1009 or MESSAGE_TOO_LARGE: {e}").into()),
    }
}

/// Whether a write failed because the node reset the connection: a node that refuses an
/// oversize frame from its header and closes may reset the rest of the transfer, and the reset
/// can overtake its close frame (TCP discards it).
fn reset_while_sending(e: &str) -> bool {
    ["os error 104", "os error 32", "reset by peer", "Broken pipe"].iter().any(|m| e.contains(m))
}

/// Sends the parts of an oversize frame or message; the node must refuse it: close 1009 or
/// `MESSAGE_TOO_LARGE`, or reset the connection while it is still being written.
fn refused_oversize(ctx: &Ctx, ws: &mut crate::ws::Ws, parts: Vec<Message>) -> CaseResult {
    for part in parts {
        if let Err(e) = ws.send_message(part) {
            ensure!(reset_while_sending(&e), "{e}");
            // Its close frame may still be readable; a reset is the node's refusal as well.
            let _ = expect_too_large(ctx, ws);
            return Ok(());
        }
    }
    expect_too_large(ctx, ws)
}

fn oversize_frame(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let mut frame = peer::ping(ctx, peer::now(), &mut rng)?.encode();
    frame.resize(LIMIT + 1, b' ');
    let text = String::from_utf8(frame).map_err(|_| "checker bug: non-UTF-8 text")?;
    refused_oversize(ctx, &mut ws, vec![Message::text(text)])
}

fn oversize_message(ctx: &Ctx) -> CaseResult {
    let mut ws = peer::open_peers(ctx)?;
    let part = vec![b' '; LIMIT / 2 + 16];
    let parts = vec![
        Message::Frame(Frame::message(part.clone(), OpCode::Data(OpData::Text), false)),
        Message::Frame(Frame::message(part, OpCode::Data(OpData::Continue), false)),
        Message::Frame(Frame::message(b"{}".to_vec(), OpCode::Data(OpData::Continue), true)),
    ];
    refused_oversize(ctx, &mut ws, parts)
}

fn impersonation(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let other = EntityId::new("conform-someone-else").map_err(|e| format!("checker bug: {e}"))?;
    let other = Identity::generate(other, &mut rng);
    let payload = peerlink_core::Payload::new(serde_json::json!({}))
        .map_err(|e| format!("checker bug: {e}"))?;
    let env = peerlink_core::signed_message(
        &other,
        MessageType::Ping,
        Some(ctx.node_id.clone()),
        None,
        payload,
        peer::now(),
        &mut rng,
    )
    .map_err(|e| format!("checker bug: {e}"))?;
    let mut ws = peer::open_peers(ctx)?;
    peer::send(&mut ws, &env)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    let code = peer::expect_close(&mut ws, ANSWER)?;
    ensure!(code == Some(1008), "expected close code 1008, got {code:?}");
    Ok(())
}

fn ping(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    peer::ping_pong(ctx, &mut ws, &mut rng)?;
    // A PING for the next hop with no recipient is answered alike (§17).
    let p = peer::signed_to(
        ctx,
        MessageType::Ping,
        None,
        None,
        serde_json::json!({}),
        peer::now(),
        &mut rng,
    )?;
    peer::send(&mut ws, &p)?;
    let env = peer::recv(&mut ws, ANSWER).map_err(|e| format!("expected PONG: {e}"))?;
    peer::check_pong(ctx, &env, &p).map_err(|e| format!("PING with recipient_id null: {e}"))?;
    ws.close();
    Ok(())
}

fn ping_at(ctx: &Ctx, at: Timestamp, code: ErrorCode) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let p = peer::ping(ctx, at, &mut rng)?;
    peer::send(&mut ws, &p)?;
    peer::expect_error(ctx, &mut ws, code, ANSWER)?;
    ws.close();
    Ok(())
}

fn stale_ping(ctx: &Ctx) -> CaseResult {
    ping_at(ctx, peer::now().saturating_sub(STALE), ErrorCode::ReplayDetected)
}

fn future_ping(ctx: &Ctx) -> CaseResult {
    ping_at(ctx, peer::now().saturating_add(STALE), ErrorCode::ReplayDetected)
}

fn replayed_ping(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    peer::send(&mut ws, &p)?;
    let env = peer::recv(&mut ws, ANSWER)?;
    peer::check_pong(ctx, &env, &p)?;
    peer::send(&mut ws, &p)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::ReplayDetected, ANSWER)?;
    ws.close();
    Ok(())
}

fn badly_signed_ping(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let mut p = peer::ping(ctx, peer::now(), &mut rng)?;
    if let Some(sig) = p.signature.as_mut()
        && let Some(b) = sig.get_mut(5)
    {
        *b ^= 0x01;
    }
    peer::send(&mut ws, &p)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    ws.close();
    Ok(())
}

fn ping_seq(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    let mut p = peer::ping(ctx, peer::now(), &mut rng)?;
    p.seq = 1;
    p.sign(&ctx.identity);
    peer::send(&mut ws, &p)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::InvalidMessage, ANSWER)?;
    ws.close();
    Ok(())
}

fn ping_limit(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    peer::ping_pong(ctx, &mut ws, &mut rng).map_err(|e| format!("first PING: {e}"))?;
    peer::ping_pong(ctx, &mut ws, &mut rng).map_err(|e| format!("second PING: {e}"))?;
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    peer::send(&mut ws, &p)?;
    peer::expect_error(ctx, &mut ws, ErrorCode::RateLimitExceeded, ANSWER)
        .map_err(|e| format!("third PING: {e}"))?;
    ws.close();
    Ok(())
}

fn flood(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = peer::open_peers(ctx)?;
    // PONGs are accepted silently, so the first answer is the rate limit's.
    for _ in 0..130 {
        let id = peerlink_core::MessageId::random(&mut rng);
        let pong = peer::signed(
            ctx,
            MessageType::Pong,
            None,
            serde_json::json!({"in_reply_to": id.as_str()}),
            peer::now(),
            &mut rng,
        )?;
        peer::send(&mut ws, &pong)?;
    }
    peer::expect_error(ctx, &mut ws, ErrorCode::RateLimitExceeded, ANSWER)?;
    ws.close();
    Ok(())
}
