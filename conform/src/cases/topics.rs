//! §20: topics on `/ws/v1/events`.

use std::time::Duration;

use peerlink_core::endpoints::EVENTS_PATH;
use peerlink_core::{Envelope, ErrorCode, MessageType};
use rand_chacha::ChaCha20Rng;

use super::{Case, CaseResult, case, ensure};
use crate::ctx::Ctx;
use crate::peer::{self, ANSWER};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case(
            "C-20.1",
            "§20",
            "PUBLISH reaches another subscribed link as sent, not the publisher",
            publish,
        ),
        case("C-20.2", "§20", "after UNSUBSCRIBE nothing more is delivered", unsubscribe),
        case("C-20.3", "§20", "SUBSCRIBE to a malformed topic is INVALID_MESSAGE", bad_topic),
        case(
            "C-20.4",
            "§20",
            "SUBSCRIBE over HTTP is INVALID_MESSAGE (only links subscribe)",
            http_subscribe,
        ),
    ]
}

fn topic(rng: &mut ChaCha20Rng) -> String {
    format!("conform/t-{}", peer::epoch(rng))
}

fn msg(
    ctx: &Ctx,
    kind: MessageType,
    payload: serde_json::Value,
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    peer::signed_to(ctx, kind, None, None, payload, peer::now(), rng)
}

fn publish(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let t = topic(&mut rng);
    let mut sub = peer::open(ctx, EVENTS_PATH)?;
    let mut publ = peer::open(ctx, EVENTS_PATH)?;
    peer::send(
        &mut sub,
        &msg(ctx, MessageType::Subscribe, serde_json::json!({"topic": t}), &mut rng)?,
    )?;
    // The PONG proves the SUBSCRIBE before it was processed.
    peer::ping_pong(ctx, &mut sub, &mut rng).map_err(|e| format!("after SUBSCRIBE: {e}"))?;
    let p = msg(
        ctx,
        MessageType::Publish,
        serde_json::json!({"topic": t, "data": {"n": 1}}),
        &mut rng,
    )?;
    peer::send(&mut publ, &p)?;
    let got = peer::recv(&mut sub, ANSWER)
        .map_err(|e| format!("subscriber: expected the PUBLISH: {e}"))?;
    ensure!(
        got.message_type == MessageType::Publish,
        "subscriber got {} instead of PUBLISH",
        got.message_type
    );
    ensure!(
        got.encode() == p.encode(),
        "the PUBLISH was altered in transit (§20: sent as received)"
    );
    got.verify(&ctx.identity.public_key()).map_err(|e| format!("publisher's signature: {e}"))?;
    peer::expect_silence(&mut publ, Duration::from_millis(200))
        .map_err(|e| format!("publisher: {e}"))?;
    sub.close();
    publ.close();
    Ok(())
}

fn unsubscribe(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let t = topic(&mut rng);
    let mut sub = peer::open(ctx, EVENTS_PATH)?;
    let mut publ = peer::open(ctx, EVENTS_PATH)?;
    peer::send(
        &mut sub,
        &msg(ctx, MessageType::Subscribe, serde_json::json!({"topic": t}), &mut rng)?,
    )?;
    peer::send(
        &mut sub,
        &msg(ctx, MessageType::Unsubscribe, serde_json::json!({"topic": t}), &mut rng)?,
    )?;
    peer::ping_pong(ctx, &mut sub, &mut rng).map_err(|e| format!("after UNSUBSCRIBE: {e}"))?;
    let p = msg(ctx, MessageType::Publish, serde_json::json!({"topic": t, "data": 2}), &mut rng)?;
    peer::send(&mut publ, &p)?;
    peer::expect_silence(&mut sub, Duration::from_millis(300))
        .map_err(|e| format!("unsubscribed link: {e}"))?;
    sub.close();
    publ.close();
    Ok(())
}

fn bad_topic(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut sub = peer::open(ctx, EVENTS_PATH)?;
    peer::send(
        &mut sub,
        &msg(ctx, MessageType::Subscribe, serde_json::json!({"topic": "no spaces!"}), &mut rng)?,
    )?;
    peer::expect_error(ctx, &mut sub, ErrorCode::InvalidMessage, ANSWER)?;
    sub.close();
    Ok(())
}

fn http_subscribe(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    super::http::quiet(ctx, &token)?;
    let mut rng = peer::rng();
    let s =
        msg(ctx, MessageType::Subscribe, serde_json::json!({"topic": topic(&mut rng)}), &mut rng)?;
    let got = super::http::envelopes(&super::http::post(ctx, &token, &[s.encode()])?)?;
    let err = got
        .iter()
        .find(|e| e.message_type == MessageType::Error)
        .ok_or("no ERROR in the answer")?;
    let b = peer::error_body(ctx, err)?;
    ensure!(b.code == ErrorCode::InvalidMessage, "expected INVALID_MESSAGE, got {}", b.code);
    Ok(())
}
