//! §2.3, §9.1, §19 and §21 under the open trust policy: identities the node has never seen, bound
//! to the key they proved at `/auth`, answered on their links and through their mailboxes.
//! These cases run only with `--open-node`; each uses fresh identities, so nothing the tester did
//! before (a link, a session) makes them pass.

use std::sync::Arc;
use std::time::Duration;

use peerlink_core::endpoints::{EVENTS_PATH, MESSAGES_PATH};
use peerlink_core::{
    EntityId, Envelope, ErrorCode, HandshakeConfig, HandshakeOutput, Identity, MessageId,
    MessageType, Responder, TrustPolicy, TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;

use super::http::{envelopes, post};
use super::{Case, CaseResult, case, ensure, open};
use crate::ctx::Ctx;
use crate::http;
use crate::peer::{self, ANSWER};

pub(super) fn cases() -> Vec<Case> {
    vec![
        open(case(
            "C-2.3.1",
            "§2.3",
            "a new entity's PING on its peers and events links is answered with PONG",
            ping_on_links,
        )),
        open(case(
            "C-2.3.2",
            "§9.1",
            "a new entity's PING signed by another key: AUTHENTICATION_FAILED, the link stays",
            ping_other_key,
        )),
        open(case(
            "C-2.3.3",
            "§2.3",
            "a new entity's step 1 with another identity key: AUTHENTICATION_FAILED",
            init_other_key,
        )),
        open(case(
            "C-2.3.4",
            "§21",
            "a new entity: handshake in three POSTs, a message, its ACK by long poll",
            handshake_over_http,
        )),
        open(case(
            "C-2.3.5",
            "§21",
            "a new entity's POST is answered (ERROR and PONG) in its response, not in its held poll",
            answers_in_the_post,
        )),
        open(case(
            "C-19.2",
            "§19",
            "two new HTTP-only entities handshake and exchange a message through the node",
            relayed_over_http,
        )),
    ]
}

/// An identity the node has never seen (a random id under `conform-new-`).
fn fresh(rng: &mut ChaCha20Rng) -> Result<Arc<Identity>, String> {
    let id = format!("conform-new-{:016x}", rng.next_u64());
    let id = EntityId::new(id).map_err(|e| format!("checker bug: {e}"))?;
    Ok(Arc::new(Identity::generate(id, rng)))
}

/// The tester as a new entity.
fn fresh_ctx(ctx: &Ctx, rng: &mut ChaCha20Rng) -> Result<Ctx, String> {
    Ok(ctx.as_identity(fresh(rng)?))
}

/// Another key holder using `ctx`'s entity id.
fn imposter(ctx: &Ctx, rng: &mut ChaCha20Rng) -> Arc<Identity> {
    Arc::new(Identity::generate(ctx.identity.id().clone(), rng))
}

fn ping_on_links(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let new = fresh_ctx(ctx, &mut rng)?;
    let mut ws = peer::open_peers(&new)?;
    peer::ping_pong(&new, &mut ws, &mut rng).map_err(|e| format!("peers link: {e}"))?;
    ws.close();
    let mut ws = peer::open(&new, EVENTS_PATH)?;
    peer::ping_pong(&new, &mut ws, &mut rng).map_err(|e| format!("events link: {e}"))?;
    ws.close();
    Ok(())
}

fn ping_other_key(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let new = fresh_ctx(ctx, &mut rng)?;
    let mut ws = peer::open_peers(&new)?;
    let other = new.as_identity(imposter(&new, &mut rng));
    let p = peer::ping(&other, peer::now(), &mut rng)?;
    peer::send(&mut ws, &p)?;
    peer::expect_error(&new, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    peer::ping_pong(&new, &mut ws, &mut rng).map_err(|e| format!("after the refusal: {e}"))?;
    ws.close();
    Ok(())
}

fn init_other_key(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let new = fresh_ctx(ctx, &mut rng)?;
    let mut ws = peer::open_peers(&new)?;
    let other = new.as_identity(imposter(&new, &mut rng));
    let (_, m1) = peer::start(&other, &mut rng)?;
    peer::send(&mut ws, &m1)?;
    peer::expect_error(&new, &mut ws, ErrorCode::AuthenticationFailed, ANSWER)?;
    // The key it proved still handshakes.
    peer::handshake(&new, &mut ws, &mut rng).map_err(|e| format!("with its own key: {e}"))?;
    ws.close();
    Ok(())
}

fn handshake_over_http(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let new = fresh_ctx(ctx, &mut rng)?;
    super::http::handshake(&new)
}

fn answers_in_the_post(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let new = fresh_ctx(ctx, &mut rng)?;
    let token = new.token()?;
    let p = peer::ping(&new, peer::now(), &mut rng)?;
    let lines = [b"{not json".to_vec(), p.encode()];
    let direct = super::http::post_while_polling(&new, &token, &lines)?;
    let all: Vec<&Envelope> = direct.iter().collect();
    let err = all
        .iter()
        .find(|e| e.message_type == MessageType::Error)
        .ok_or("no ERROR for the bad line in the POST answer")?;
    let b = peer::error_body(&new, err)?;
    ensure!(b.code == ErrorCode::InvalidMessage, "expected ERROR INVALID_MESSAGE, got {}", b.code);
    let pong = all
        .iter()
        .find(|e| e.message_type == MessageType::Pong)
        .ok_or("no PONG in the POST answer")?;
    peer::check_pong(&new, pong, &p)?;
    Ok(())
}

/// One long poll; the envelopes of type `kind` it brings (anything else is a failure).
fn poll_for(ctx: &Ctx, token: &str, kind: MessageType) -> Result<Envelope, String> {
    let agent = http::agent(Duration::from_secs(8));
    let r = http::get(&agent, &ctx.url(&format!("{MESSAGES_PATH}?wait_ms=3000")), Some(token))?;
    let got =
        envelopes(&r).map_err(|e| format!("{} polling for {kind}: {e}", ctx.identity.id()))?;
    let mut found = None;
    for e in got {
        match e.message_type {
            t if t == kind && found.is_none() => found = Some(e),
            MessageType::Error => {
                let b = peer::error_body(ctx, &e)?;
                return Err(format!("{} expected {kind}, got ERROR {}", ctx.identity.id(), b.code));
            }
            other => return Err(format!("{} expected {kind}, got {other}", ctx.identity.id())),
        }
    }
    found.ok_or_else(|| format!("{} got no {kind} within 3 s", ctx.identity.id()))
}

/// POSTs one envelope; its answer must carry no `ERROR`.
fn send_over_http(ctx: &Ctx, token: &str, env: &Envelope) -> CaseResult {
    for e in envelopes(&post(ctx, token, &[env.encode()])?)? {
        if e.message_type == MessageType::Error {
            let b = peer::error_body(ctx, &e)?;
            return Err(format!(
                "{} sent {}: ERROR {}",
                ctx.identity.id(),
                env.message_type,
                b.code
            )
            .into());
        }
    }
    Ok(())
}

fn relayed_over_http(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let (a, b) = (fresh_ctx(ctx, &mut rng)?, fresh_ctx(ctx, &mut rng)?);
    let (ta, tb) = (a.token()?, b.token()?);
    // Both hold a token and have polled once (§21: a client polls its relay): the node admits them.
    for (c, t) in [(&a, &ta), (&b, &tb)] {
        envelopes(&post(c, t, &[])?)?;
    }
    let mut trust_a = TrustStore::new(TrustPolicy::Allowlist);
    trust_a.insert(b.identity.id().clone(), b.identity.public_key());
    let mut trust_b = TrustStore::new(TrustPolicy::Allowlist);
    trust_b.insert(a.identity.id().clone(), a.identity.public_key());
    let config = HandshakeConfig::default();
    let (mut init, m1) = peerlink_core::Initiator::start(
        Arc::clone(&a.identity),
        b.identity.id().clone(),
        &trust_a,
        config.clone(),
        peer::now(),
        &mut rng,
    )
    .map_err(|e| format!("checker bug: {e}"))?;
    send_over_http(&a, &ta, &m1)?;
    let got = poll_for(&b, &tb, MessageType::HandshakeInit)?;
    let (mut resp, m2) =
        Responder::accept(Arc::clone(&b.identity), &trust_b, config, &got, peer::now(), &mut rng)
            .map_err(|e| format!("step 1 as relayed is refused: {e}"))?;
    send_over_http(&b, &tb, &m2)?;
    let got = poll_for(&a, &ta, MessageType::HandshakeInitAck)?;
    let m3 = peer::next_msg(peer::step(&mut init, &got, &mut rng)?)?;
    send_over_http(&a, &ta, &m3)?;
    let got = poll_for(&b, &tb, MessageType::ChallengeResponse)?;
    let step = |r: &mut Responder, e: &Envelope, rng: &mut ChaCha20Rng| {
        r.handle(e, peer::now(), rng)
            .map_err(|err| format!("relayed {} refused: {err}", e.message_type))
    };
    let m4 = peer::next_msg(step(&mut resp, &got, &mut rng)?)?;
    send_over_http(&b, &tb, &m4)?;
    let got = poll_for(&a, &ta, MessageType::SessionEstablished)?;
    let m5 = peer::next_msg(peer::step(&mut init, &got, &mut rng)?)?;
    send_over_http(&a, &ta, &m5)?;
    let got = poll_for(&b, &tb, MessageType::SessionConfirm)?;
    let HandshakeOutput::Complete { send: Some(m6), session: mut session_b } =
        step(&mut resp, &got, &mut rng)?
    else {
        return Err("the responder did not complete with a READY".into());
    };
    send_over_http(&b, &tb, &m6)?;
    let got = poll_for(&a, &ta, MessageType::Ready)?;
    let HandshakeOutput::Complete { session: mut session_a, .. } =
        peer::step(&mut init, &got, &mut rng)?
    else {
        return Err("no session after READY".into());
    };
    // A sealed message from A reaches B, who opens it.
    let body = peer::data(peer::epoch(&mut rng), 1, 1, b"through an open relay");
    let env = session_a
        .seal(MessageType::PeerMessage, MessageId::random(&mut rng), &body, peer::now())
        .map_err(|e| format!("checker bug: {e}"))?;
    send_over_http(&a, &ta, &env)?;
    let got = poll_for(&b, &tb, MessageType::PeerMessage)?;
    let opened =
        session_b.open(&got, peer::now()).map_err(|e| format!("the relayed message: {e}"))?;
    ensure!(opened.plaintext == body, "the relayed message changed on the way");
    Ok(())
}
