//! §27: the binary envelope on a link that agreed on it. A node that does not select the
//! subprotocol passes C-27.1 and skips the rest: binary framing is optional. C-27.5 posts a binary
//! body (§27.7); a node that answers it 415 skips it.

use peerlink_core::encoding::hex;
use peerlink_core::endpoints::MESSAGES_PATH;
use peerlink_core::wire::{self, Encoding};
use peerlink_core::{ErrorCode, MessageType, binary_envelope, http_body};

use super::{Case, CaseResult, Verdict, case, ensure};
use crate::ctx::Ctx;
use crate::http;
use crate::peer::{self, ANSWER};
use crate::ws::Ws;

/// The default frame limit (§11).
const LIMIT: u64 = 1_048_576;

/// The binary vectors of the spec (§22).
const BINARY_VECTORS: &str = include_str!("../../../spec/vectors/binary.json");

pub(super) fn cases() -> Vec<Case> {
    vec![
        case(
            "C-27.1",
            "§27.1",
            "offering peerlink.binary.v1: 101 selects it or no subprotocol; PING answered",
            negotiation,
        ),
        case(
            "C-27.2",
            "§27.2",
            "on a binary link a JSON text PING is answered too",
            text_on_binary,
        ),
        case("C-27.3", "§27.6", "every frame of vectors/binary.json gets its code", vectors),
        case(
            "C-27.4",
            "§27.5",
            "handshake and a data message in binary frames; the ACK opens",
            session,
        ),
        case(
            "C-27.5",
            "§27.7",
            "a binary POST body accepting binary: PONG in the body its Content-Type names, or 415",
            http_body,
        ),
    ]
}

/// A binary link, or a skip for a node that keeps to JSON.
fn binary_link(ctx: &Ctx) -> Result<Ws, Verdict> {
    let ws = peer::open_peers_offering_binary(ctx)?;
    if !ws.binary {
        ws.close();
        return Err(Verdict::Skip("the node did not select peerlink.binary.v1 (§27.1)".into()));
    }
    Ok(ws)
}

fn negotiation(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    // Selected or not, the link works in the encoding it agreed on (`peer::send` picks it).
    let mut ws = peer::open_peers_offering_binary(ctx)?;
    peer::ping_pong(ctx, &mut ws, &mut rng)?;
    ws.close();
    Ok(())
}

fn text_on_binary(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = binary_link(ctx)?;
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    ws.send_text(&p.encode())?;
    let env = peer::recv(&mut ws, ANSWER).map_err(|e| format!("expected PONG: {e}"))?;
    peer::check_pong(ctx, &env, &p)?;
    ws.close();
    Ok(())
}

fn vectors(ctx: &Ctx) -> CaseResult {
    let v: serde_json::Value =
        serde_json::from_str(BINARY_VECTORS).map_err(|e| format!("checker bug: {e}"))?;
    let cases = v.get("invalid").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    ensure!(!cases.is_empty(), "checker bug: no vectors");
    let mut ws = binary_link(ctx)?;
    let mut rng = peer::rng();
    for c in &cases {
        let limit = c.get("max_frame_bytes").and_then(serde_json::Value::as_u64);
        let text = c.get("binary").and_then(|f| f.as_str()).unwrap_or_default();
        let code = c.get("code").and_then(|f| f.as_str()).unwrap_or_default();
        let what = c.get("description").and_then(|f| f.as_str()).unwrap_or_default();
        // Other limits are not this node's.
        if limit != Some(LIMIT) {
            continue;
        }
        let frame = unhex(text).ok_or_else(|| format!("checker bug: hex of {what}"))?;
        let code: ErrorCode = code.parse().map_err(|_| format!("checker bug: code {code}"))?;
        ws.send_binary(frame)?;
        peer::expect_error(ctx, &mut ws, code, ANSWER).map_err(|e| format!("{what}: {e}"))?;
    }
    // The link stays: every refusal was an ERROR, not a close.
    peer::ping_pong(ctx, &mut ws, &mut rng).map_err(|e| format!("after the refusals: {e}"))?;
    ws.close();
    Ok(())
}

fn session(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let mut ws = binary_link(ctx)?;
    let mut s = peer::handshake(ctx, &mut ws, &mut rng)?;
    let epoch = peer::epoch(&mut rng);
    let body = vec![0xa5; 20_000];
    peer::seal_send(
        &mut ws,
        &mut s,
        MessageType::PeerMessage,
        &peer::data(epoch, 1, 1, &body),
        &mut rng,
    )?;
    let ack = peer::expect_ack(ctx, &mut ws, &mut s, epoch, |a| a.cumulative >= 1)?;
    ensure!(ack.cumulative == 1, "ACK cumulative {} after one frame", ack.cumulative);
    ws.close();
    Ok(())
}

fn http_body(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    super::http::quiet(ctx, &token)?;
    let mut rng = peer::rng();
    let p = peer::ping(ctx, peer::now(), &mut rng)?;
    let body = http_body::encode([&binary_envelope::encode(&p)[..]], Encoding::Binary);
    let r = http::post_accepting(
        &ctx.agent,
        &ctx.url(MESSAGES_PATH),
        Some(&token),
        wire::BINARY_MEDIA_TYPE,
        Some(wire::accept_header(true)),
        &body,
    )?;
    if r.status == 415 {
        return Err(Verdict::Skip("the node keeps HTTP bodies to NDJSON (415, §27.7)".into()));
    }
    ensure!(
        r.status == 200,
        "expected HTTP 200 or 415, got {}: {}",
        r.status,
        peer::preview(&r.body)
    );
    // A node that speaks binary bodies may still answer NDJSON; the Content-Type says which.
    let encoding = wire::body_encoding(r.content_type.as_deref());
    let mut envelopes = Vec::new();
    for frame in http_body::frames(&r.body, encoding, LIMIT as usize) {
        let frame = frame.map_err(|e| format!("the {encoding:?} answer does not frame: {e}"))?;
        ensure!(Encoding::of(frame) == encoding, "an envelope of the other encoding in the answer");
        let env = wire::decode(frame, LIMIT as usize)
            .map_err(|e| format!("an envelope of the answer does not decode: {e}"))?;
        envelopes.push(env);
    }
    let read_as_ndjson = encoding == Encoding::Json
        && envelopes.iter().all(|e| {
            e.message_type == MessageType::Error
                && peerlink_core::signed::ErrorBody::parse(&e.payload)
                    .is_ok_and(|b| b.code == ErrorCode::InvalidMessage)
        })
        && !envelopes.is_empty();
    if read_as_ndjson {
        // A node from before §27.7 reads the body as NDJSON lines and refuses them: it does not
        // speak binary bodies, which §27.7 allows.
        return Err(Verdict::Skip(
            "the node read the binary body as NDJSON (INVALID_MESSAGE): no binary bodies".into(),
        ));
    }
    let pong = envelopes
        .iter()
        .find(|e| e.message_type == MessageType::Pong)
        .ok_or("the binary PING got no PONG")?;
    peer::check_pong(ctx, pong, &p)?;
    Ok(())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let out: Option<Vec<u8>> = bytes
        .chunks(2)
        .map(|p| std::str::from_utf8(p).ok().and_then(|t| u8::from_str_radix(t, 16).ok()))
        .collect();
    out.filter(|o| hex(o) == s)
}
