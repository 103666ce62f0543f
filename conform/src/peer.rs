//! The tester's side of the protocol: tokens, links, signed messages, the handshake, data
//! frames and acknowledgements, each checked strictly against what the node sends.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerlink_core::binary_envelope;
use peerlink_core::endpoints::PEERS_PATH;
use peerlink_core::stream::{Ack, ChunkHeader, DataHeader, StreamControl, encode_data};
use peerlink_core::wire::{self, Encoding};
use peerlink_core::{
    Envelope, ErrorBody, ErrorCode, HandshakeConfig, HandshakeOutput, Initiator, MessageId,
    MessageType, Payload, Session, SessionId, Timestamp, TrustPolicy, TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::ctx::Ctx;
use crate::ws::{self, Auth, Incoming, Ws};

/// Largest frame the checker decodes from the node.
const MAX_DECODE: usize = 64 << 20;
/// How long a case waits for an answer it expects.
pub(crate) const ANSWER: Duration = Duration::from_secs(3);

/// At most 160 characters of peer bytes, for reasons.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(160).collect();
    if text.chars().count() > 160 {
        s.push('…');
    }
    s
}

/// The wall clock.
pub(crate) fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp::from_unix_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A fresh RNG seeded by the OS.
pub(crate) fn rng() -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // Not a security boundary: the checker's keys are test keys. Fall back to the clock.
        seed[..8].copy_from_slice(&now().as_unix_millis().to_le_bytes());
    }
    ChaCha20Rng::from_seed(seed)
}

/// A new authenticated link to `path` (token in the header).
pub(crate) fn open(ctx: &Ctx, path: &str) -> Result<Ws, String> {
    let token = ctx.token()?;
    ws::connect(&ctx.ws_url(path), Auth::Header(&token)).map_err(|e| e.to_string())
}

/// A new authenticated peers link.
pub(crate) fn open_peers(ctx: &Ctx) -> Result<Ws, String> {
    open(ctx, PEERS_PATH)
}

/// A new authenticated peers link offering the binary envelope (§27.1); see [`Ws::binary`]
/// for whether the node selected it.
pub(crate) fn open_peers_offering_binary(ctx: &Ctx) -> Result<Ws, String> {
    let token = ctx.token()?;
    let url = ctx.ws_url(PEERS_PATH);
    ws::connect_offering(&url, Auth::Header(&token), Some(wire::BINARY_SUBPROTOCOL))
        .map_err(|e| e.to_string())
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(c) => format!("the node closed the connection ({c} {reason})"),
        None => "the node closed the connection (no close code)".into(),
    }
}

/// The next envelope from the node (heartbeat `PING`s skipped).
pub(crate) fn recv(ws: &mut Ws, timeout: Duration) -> Result<Envelope, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ws.next(deadline) {
            None => return Err(format!("nothing from the node within {timeout:?}")),
            Some(Incoming::Text(t)) => {
                if Encoding::of(&t) == Encoding::Binary {
                    return Err("the node sent a binary envelope in a text message (§27.2)".into());
                }
                let env = Envelope::decode(&t, MAX_DECODE).map_err(|e| {
                    format!("the node sent a frame that is not an envelope ({e}): {}", preview(&t))
                })?;
                if env.message_type != MessageType::Ping {
                    return Ok(env);
                }
            }
            Some(Incoming::Binary(b)) => {
                if !ws.binary {
                    return Err("the node sent a binary message on a JSON link (§27.2)".into());
                }
                if Encoding::of(&b) != Encoding::Binary {
                    return Err(format!(
                        "the node sent a binary message that is not a binary envelope: {}",
                        preview(&b)
                    ));
                }
                let env = binary_envelope::decode(&b, MAX_DECODE).map_err(|e| {
                    format!("the node sent a binary envelope that does not decode ({e})")
                })?;
                if env.message_type != MessageType::Ping {
                    return Ok(env);
                }
            }
            Some(Incoming::Closed(code, reason)) => return Err(describe_close(code, &reason)),
            Some(Incoming::Eof) => return Err("the connection ended without a close frame".into()),
        }
    }
}

/// Checks that an `ERROR` is well formed and signed by the node; returns its body.
pub(crate) fn error_body(ctx: &Ctx, env: &Envelope) -> Result<ErrorBody, String> {
    if env.sender_id != ctx.node_id {
        return Err(format!("ERROR from {} instead of the node {}", env.sender_id, ctx.node_id));
    }
    env.verify(&ctx.node_key).map_err(|e| format!("ERROR not signed by the node's key: {e}"))?;
    if env.seq != 0 {
        return Err(format!("ERROR with seq {} (must be 0, §9.1)", env.seq));
    }
    ErrorBody::parse(&env.payload).map_err(|e| format!("ERROR payload malformed (§9.2): {e}"))
}

/// Waits for an `ERROR` carrying `code`; anything else first is a failure.
pub(crate) fn expect_error(
    ctx: &Ctx,
    ws: &mut Ws,
    code: ErrorCode,
    timeout: Duration,
) -> Result<ErrorBody, String> {
    let env = recv(ws, timeout).map_err(|e| format!("expected ERROR {code}: {e}"))?;
    if env.message_type != MessageType::Error {
        return Err(format!("expected ERROR {code}, got {}", env.message_type));
    }
    let body = error_body(ctx, &env)?;
    if body.code != code {
        return Err(format!("expected ERROR {code}, got ERROR {}", body.code));
    }
    Ok(body)
}

/// Waits for an `ERROR` with one of `codes`.
pub(crate) fn expect_error_in(
    ctx: &Ctx,
    ws: &mut Ws,
    codes: &[ErrorCode],
    timeout: Duration,
) -> Result<ErrorCode, String> {
    let env = recv(ws, timeout).map_err(|e| format!("expected ERROR {codes:?}: {e}"))?;
    if env.message_type != MessageType::Error {
        return Err(format!("expected ERROR {codes:?}, got {}", env.message_type));
    }
    let body = error_body(ctx, &env)?;
    if !codes.contains(&body.code) {
        return Err(format!("expected ERROR {codes:?}, got ERROR {}", body.code));
    }
    Ok(body.code)
}

/// Nothing (but heartbeats) arrives for `wait`.
pub(crate) fn expect_silence(ws: &mut Ws, wait: Duration) -> Result<(), String> {
    match recv(ws, wait) {
        Ok(env) => Err(format!("expected nothing, got {}", env.message_type)),
        Err(e) if e.starts_with("nothing from the node") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits for the node to close the connection; returns the close code.
pub(crate) fn expect_close(ws: &mut Ws, timeout: Duration) -> Result<Option<u16>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ws.next(deadline) {
            None => return Err(format!("the connection was still open after {timeout:?}")),
            Some(Incoming::Closed(code, _)) => return Ok(code),
            Some(Incoming::Eof) => return Ok(None),
            Some(_) => {}
        }
    }
}

/// A signed session-less message from the tester.
pub(crate) fn signed(
    ctx: &Ctx,
    kind: MessageType,
    session: Option<SessionId>,
    payload: serde_json::Value,
    at: Timestamp,
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    signed_to(ctx, kind, Some(ctx.node_id.clone()), session, payload, at, rng)
}

/// A signed session-less message with any `recipient_id` (topics use null).
pub(crate) fn signed_to(
    ctx: &Ctx,
    kind: MessageType,
    recipient: Option<peerlink_core::EntityId>,
    session: Option<SessionId>,
    payload: serde_json::Value,
    at: Timestamp,
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    let payload = Payload::new(payload).map_err(|e| format!("checker bug: {e}"))?;
    peerlink_core::signed_message(&ctx.identity, kind, recipient, session, payload, at, rng)
        .map_err(|e| format!("checker bug: {e}"))
}

/// A `PING` to the node.
pub(crate) fn ping(ctx: &Ctx, at: Timestamp, rng: &mut ChaCha20Rng) -> Result<Envelope, String> {
    signed(ctx, MessageType::Ping, None, serde_json::json!({}), at, rng)
}

/// Sends an envelope: binary on a link that agreed on it (§27.2), else JSON text.
pub(crate) fn send(ws: &mut Ws, env: &Envelope) -> Result<(), String> {
    if ws.binary {
        ws.send_binary(binary_envelope::encode(env))
    } else {
        ws.send_text(&env.encode())
    }
}

/// Sends a `PING` and expects the node's `PONG` naming it: proof the link is alive and
/// everything sent before it was processed.
pub(crate) fn ping_pong(ctx: &Ctx, ws: &mut Ws, rng: &mut ChaCha20Rng) -> Result<(), String> {
    let p = ping(ctx, now(), rng)?;
    send(ws, &p)?;
    let env = recv(ws, ANSWER).map_err(|e| format!("expected PONG: {e}"))?;
    check_pong(ctx, &env, &p)
}

pub(crate) fn check_pong(ctx: &Ctx, env: &Envelope, ping: &Envelope) -> Result<(), String> {
    if env.message_type != MessageType::Pong {
        let extra = error_body(ctx, env).map(|b| format!(" {}", b.code)).unwrap_or_default();
        return Err(format!("expected PONG, got {}{extra}", env.message_type));
    }
    env.verify(&ctx.node_key).map_err(|e| format!("PONG not signed by the node: {e}"))?;
    if env.sender_id != ctx.node_id {
        return Err(format!("PONG sender_id is {}, not the node's id (§23.5)", env.sender_id));
    }
    if env.recipient_id.as_ref().is_some_and(|r| r != ctx.identity.id()) {
        return Err(format!(
            "PONG recipient_id is {:?}: null or the pinger (§17)",
            env.recipient_id
        ));
    }
    let answers = env.payload.value().get("in_reply_to").and_then(|v| v.as_str());
    if answers != Some(ping.message_id.as_str()) {
        return Err(format!("PONG in_reply_to is {answers:?}, expected the PING's id"));
    }
    Ok(())
}

/// A handshake initiator toward the node, and its `HANDSHAKE_INIT`.
pub(crate) fn start(ctx: &Ctx, rng: &mut ChaCha20Rng) -> Result<(Initiator, Envelope), String> {
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(ctx.node_id.clone(), ctx.node_key);
    let identity = std::sync::Arc::clone(&ctx.identity);
    Initiator::start(identity, ctx.node_id.clone(), &trust, HandshakeConfig::default(), now(), rng)
        .map_err(|e| format!("checker cannot start a handshake: {e}"))
}

/// Feeds the node's handshake message to the initiator; the next message to send.
pub(crate) fn step(
    init: &mut Initiator,
    got: &Envelope,
    rng: &mut ChaCha20Rng,
) -> Result<HandshakeOutput, String> {
    if got.message_type == MessageType::Error {
        let code = ErrorBody::parse(&got.payload).map(|b| b.code.to_string()).unwrap_or_default();
        return Err(format!("the node answered the handshake with ERROR {code}"));
    }
    let t = got.message_type;
    init.handle(got, now(), rng).map_err(|e| format!("the node's {t} is refused: {e}"))
}

/// Expects `Send`.
pub(crate) fn next_msg(out: HandshakeOutput) -> Result<Envelope, String> {
    match out {
        HandshakeOutput::Send(e) => Ok(e),
        HandshakeOutput::Complete { .. } => Err("handshake completed too early".into()),
    }
}

/// Runs steps 1–6 on `ws`; the established session.
pub(crate) fn handshake(ctx: &Ctx, ws: &mut Ws, rng: &mut ChaCha20Rng) -> Result<Session, String> {
    let (mut init, m1) = start(ctx, rng)?;
    send(ws, &m1)?;
    let m2 = recv(ws, ANSWER).map_err(|e| format!("step 2: {e}"))?;
    let m3 = next_msg(step(&mut init, &m2, rng)?)?;
    send(ws, &m3)?;
    let m4 = recv(ws, ANSWER).map_err(|e| format!("step 4: {e}"))?;
    let m5 = next_msg(step(&mut init, &m4, rng)?)?;
    send(ws, &m5)?;
    let m6 = recv(ws, ANSWER).map_err(|e| format!("step 6: {e}"))?;
    match step(&mut init, &m6, rng)? {
        HandshakeOutput::Complete { session, .. } => Ok(*session),
        HandshakeOutput::Send(e) => Err(format!("handshake wants to send {}", e.message_type)),
    }
}

/// A data frame's plaintext.
pub(crate) fn data(epoch: u64, no: u64, base: u64, body: &[u8]) -> Vec<u8> {
    let h = DataHeader { epoch, no, base, reply_to: None, app_type: None, chunk: None };
    encode_data(&h, body)
}

/// A chunk frame's plaintext.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk(
    epoch: u64,
    no: u64,
    base: u64,
    id: &MessageId,
    seq: u32,
    last: bool,
    total: u64,
    body: &[u8],
) -> Vec<u8> {
    let chunk =
        ChunkHeader { id: id.clone(), seq, last, total, message_type: MessageType::PeerMessage };
    let h = DataHeader { epoch, no, base, reply_to: None, app_type: None, chunk: Some(chunk) };
    encode_data(&h, body)
}

/// Seals and sends one session message.
pub(crate) fn seal_send(
    ws: &mut Ws,
    session: &mut Session,
    kind: MessageType,
    plaintext: &[u8],
    rng: &mut ChaCha20Rng,
) -> Result<Envelope, String> {
    let env = session
        .seal(kind, MessageId::random(rng), plaintext, now())
        .map_err(|e| format!("checker cannot seal: {e}"))?;
    send(ws, &env)?;
    Ok(env)
}

/// A random stream epoch.
pub(crate) fn epoch(rng: &mut ChaCha20Rng) -> u64 {
    use rand_core::Rng;
    (rng.next_u64() >> 12).max(1)
}

/// Waits for an `ACK` of `epoch` satisfying `want`; an `ERROR` first is a failure.
pub(crate) fn expect_ack(
    ctx: &Ctx,
    ws: &mut Ws,
    session: &mut Session,
    epoch: u64,
    want: impl Fn(&Ack) -> bool,
) -> Result<Ack, String> {
    let deadline = Instant::now() + ANSWER;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let env = recv(ws, left).map_err(|e| match &last {
            Some(a) => format!("expected an ACK; last ACK was {a:?}; then {e}"),
            None => format!("expected an ACK: {e}"),
        })?;
        match env.message_type {
            MessageType::Ack => {}
            MessageType::Error => {
                let b = error_body(ctx, &env)?;
                return Err(format!("expected an ACK, got ERROR {}", b.code));
            }
            other => return Err(format!("expected an ACK, got {other}")),
        }
        let opened =
            session.open(&env, now()).map_err(|e| format!("the node's ACK does not open: {e}"))?;
        let control = StreamControl::decode(&opened.plaintext)
            .map_err(|e| format!("the node's ACK plaintext is malformed (§13.2): {e}"))?;
        if let Some(ack) = control.ack
            && ack.epoch == epoch
        {
            if want(&ack) {
                return Ok(ack);
            }
            last = Some(ack);
        }
    }
}
