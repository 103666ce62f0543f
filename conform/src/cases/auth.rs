//! §23.2 and §23.3: challenges, tokens (JWT edge cases) and refused upgrades.

use std::sync::Arc;

use peerlink_core::auth::{Authority, JWT_HEADER};
use peerlink_core::encoding::b64u;
use peerlink_core::endpoints::{EVENTS_PATH, PEERS_PATH};
use peerlink_core::{EntityId, Identity};

use super::{Case, CaseResult, allowlist, case, ensure};
use crate::ctx::Ctx;
use crate::peer;
use crate::ws::{self, Auth, ConnectError};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-23.2.1", "§23.2", "challenge, signed answer, token opens /peers/discover", happy),
        case("C-23.2.2", "§23.2", "/peers/discover without a token is 401", no_token),
        allowlist(case("C-23.2.3", "§23.2", "an entity the node does not hold is 403", unknown)),
        allowlist(case("C-23.2.4", "§2.3", "the tester's id with another key is 403", wrong_key)),
        case("C-23.2.5", "§23.2", "a badly signed challenge answer is 401", bad_signature),
        case("C-23.2.6", "§23.2", "a challenge answered twice is 401 the second time", reuse),
        case("C-23.2.7", "§23.2", "a wrong answer consumes the challenge", consumed),
        case("C-23.2.8", "§23.2", "/auth/verify with an unknown member is 400", unknown_member),
        case("C-23.2.9", "§23.1", "/auth/token without parameters is 400", missing_params),
        case("C-23.2.10", "§23.2", "a malformed token is 401", jwt_malformed),
        case("C-23.2.11", "§23.2", "a token with alg \"none\" is 401", jwt_none),
        case("C-23.2.12", "§23.2", "a truncated token is 401", jwt_truncated),
        case(
            "C-23.2.13",
            "§23.2",
            "a token naming the node but signed by another key is 401",
            jwt_forged,
        ),
        case("C-23.2.14", "§23.2", "a token minted by another node is 401", jwt_other_node),
        case("C-23.2.15", "§23.2", "a bad header token wins over a good ?token=", header_wins),
        case(
            "C-23.2.16",
            "§23.2",
            "the token is an EdDSA JWT of canonical JSON naming node, tester and key",
            token_form,
        ),
        case("C-23.3.1", "§23.3", "upgrade without a token is 401, never 101", upgrade_no_token),
        case("C-23.3.2", "§23.3", "upgrade with a forged token is 401", upgrade_forged),
        case("C-23.3.3", "§23.3", "upgrade with another node's token is 401", upgrade_foreign),
        case(
            "C-23.3.4",
            "§23.3",
            "upgrade with ?token= is accepted (peers and events)",
            upgrade_query,
        ),
        case(
            "C-23.3.8",
            "§23.2",
            "upgrade with a forged header and a good ?token= is 401",
            upgrade_both,
        ),
    ]
}

fn happy(ctx: &Ctx) -> CaseResult {
    let ch = ctx.challenge()?;
    ensure!(ch.node_id == ctx.node_id.as_str(), "challenge names node {:?}", ch.node_id);
    let now = peer::now().as_unix_millis();
    ensure!(ch.expires_at > now, "challenge expires_at {} is not in the future", ch.expires_at);
    let sig = ctx.sign(&ch.challenge)?;
    let r = ctx.verify(&ch.challenge, &sig)?;
    ensure!(r.status == 200, "POST /auth/verify: HTTP {}", r.status);
    let v = r.json()?;
    let token = v.get("token").and_then(|t| t.as_str()).unwrap_or_default().to_owned();
    ensure!(token.split('.').count() == 3, "token is not a JWT");
    let exp = v.get("expires_at").and_then(serde_json::Value::as_u64).unwrap_or(0);
    ensure!(exp > now, "token expires_at {exp} is not in the future");
    let r = ctx.get("/peers/discover", Some(&token))?;
    ensure!(r.status == 200, "GET /peers/discover with the token: HTTP {}", r.status);
    let v = r.json()?;
    ensure!(v.get("node_id").and_then(|n| n.as_str()) == Some(ctx.node_id.as_str()), "{v}");
    ensure!(v.get("peers").is_some_and(|p| p.is_array()), "no peers array: {v}");
    Ok(())
}

fn no_token(ctx: &Ctx) -> CaseResult {
    ctx.get("/peers/discover", None)?.expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn unknown(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let name = format!("conform-stranger-{}", peer::epoch(&mut rng));
    let id = EntityId::new(name).map_err(|e| format!("checker bug: {e}"))?;
    let s = Identity::generate(id, &mut rng);
    ctx.challenge_for(&s)?.expect_refusal(403, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn wrong_key(ctx: &Ctx) -> CaseResult {
    let mut rng = peer::rng();
    let imposter = Identity::generate(ctx.identity.id().clone(), &mut rng);
    ctx.challenge_for(&imposter)?.expect_refusal(403, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn bad_signature(ctx: &Ctx) -> CaseResult {
    let ch = ctx.challenge()?;
    let sig = b64u(&ctx.identity.sign(b"not the challenge"));
    ctx.verify(&ch.challenge, &sig)?.expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn reuse(ctx: &Ctx) -> CaseResult {
    let ch = ctx.challenge()?;
    let sig = ctx.sign(&ch.challenge)?;
    let r = ctx.verify(&ch.challenge, &sig)?;
    ensure!(r.status == 200, "first answer: HTTP {}", r.status);
    ctx.verify(&ch.challenge, &sig)?.expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn consumed(ctx: &Ctx) -> CaseResult {
    let ch = ctx.challenge()?;
    let bad = b64u(&ctx.identity.sign(b"wrong"));
    let r = ctx.verify(&ch.challenge, &bad)?;
    ensure!(r.status == 401, "wrong answer: expected 401, got HTTP {}", r.status);
    let sig = ctx.sign(&ch.challenge)?;
    ctx.verify(&ch.challenge, &sig)?.expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn unknown_member(ctx: &Ctx) -> CaseResult {
    let ch = ctx.challenge()?;
    let sig = ctx.sign(&ch.challenge)?;
    let body = serde_json::json!({
        "entity_id": ctx.identity.id().as_str(),
        "challenge": ch.challenge,
        "signature": sig,
        "extra": 1,
    });
    ctx.post_json("/auth/verify", &body)?.expect_refusal(400, "INVALID_MESSAGE")?;
    Ok(())
}

fn missing_params(ctx: &Ctx) -> CaseResult {
    ctx.get("/auth/token", None)?.expect_refusal(400, "INVALID_MESSAGE")?;
    Ok(())
}

fn refused_token(ctx: &Ctx, token: &str) -> CaseResult {
    ctx.get("/peers/discover", Some(token))?.expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn claims(ctx: &Ctx, iss: &str) -> String {
    let now = peer::now().as_unix_millis() / 1000;
    let c = serde_json::json!({
        "exp": now + 3600,
        "iat": now,
        "iss": iss,
        "sub": ctx.identity.id().as_str(),
    });
    b64u(c.to_string().as_bytes())
}

/// One b64u segment of a token, as JSON that MUST be in canonical form (§3.2).
fn canonical_segment(part: &str, what: &'static str) -> Result<serde_json::Value, String> {
    let bytes = peerlink_core::encoding::decode_b64u(what, part)
        .map_err(|e| format!("the token's {what} is not b64u: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the token's {what}: {e}"))?;
    let canonical = peerlink_core::canonical::to_vec(&v).map_err(|e| format!("{what}: {e}"))?;
    if canonical != bytes {
        let text = peer::preview(&bytes);
        return Err(format!("the token's {what} is not canonical JSON: {text}"));
    }
    Ok(v)
}

fn token_form(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("a JWT has three parts, this one {}", parts.len()).into());
    };
    let h = canonical_segment(header, "header")?;
    let h_bytes = peerlink_core::canonical::to_vec(&h).unwrap_or_default();
    ensure!(h_bytes == JWT_HEADER.as_bytes(), "header {h}, expected {JWT_HEADER}");
    let c = canonical_segment(claims, "claims")?;
    let text = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let int = |k: &str| c.get(k).and_then(serde_json::Value::as_u64);
    ensure!(text("iss").as_deref() == Some(ctx.node_id.as_str()), "iss is {:?}", text("iss"));
    let me = ctx.identity.id().as_str();
    ensure!(text("sub").as_deref() == Some(me), "sub is {:?}", text("sub"));
    let (iat, exp) = (int("iat").unwrap_or(0), int("exp").unwrap_or(0));
    ensure!(iat > 0 && exp > iat, "iat {iat} and exp {exp}: whole seconds, exp after iat");
    let x = c.pointer("/cnf/jwk/x").and_then(|v| v.as_str());
    let key = ctx.identity.public_key().to_b64u();
    ensure!(x == Some(key.as_str()), "cnf.jwk.x is {x:?}, expected the tester's key");
    let sig = peerlink_core::encoding::decode_b64u_array::<64>("signature", signature)
        .map_err(|e| format!("the token's signature is not b64u of 64 bytes: {e}"))?;
    let signed = format!("{header}.{claims}");
    ctx.node_key
        .verify(signed.as_bytes(), &sig)
        .map_err(|e| format!("the token is not signed by the node's key: {e}"))?;
    Ok(())
}

fn jwt_malformed(ctx: &Ctx) -> CaseResult {
    refused_token(ctx, "not-a-jwt")
}

fn jwt_none(ctx: &Ctx) -> CaseResult {
    let header = b64u(br#"{"alg":"none","typ":"JWT"}"#);
    refused_token(ctx, &format!("{header}.{}.", claims(ctx, ctx.node_id.as_str())))
}

fn jwt_truncated(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    let cut = token.len().saturating_sub(10);
    refused_token(ctx, token.get(..cut).unwrap_or_default())
}

/// A JWT with the node as issuer, signed by the tester (not the node).
fn forged(ctx: &Ctx) -> String {
    let signing = format!("{}.{}", b64u(JWT_HEADER.as_bytes()), claims(ctx, ctx.node_id.as_str()));
    let sig = b64u(&ctx.identity.sign(signing.as_bytes()));
    format!("{signing}.{sig}")
}

/// A well-formed JWT minted by another node (the tester acting as one).
fn foreign(ctx: &Ctx) -> String {
    let other = Authority::new(Arc::clone(&ctx.identity), Default::default());
    other.mint(ctx.identity.id(), peer::now())
}

fn jwt_forged(ctx: &Ctx) -> CaseResult {
    refused_token(ctx, &forged(ctx))
}

fn jwt_other_node(ctx: &Ctx) -> CaseResult {
    refused_token(ctx, &foreign(ctx))
}

fn header_wins(ctx: &Ctx) -> CaseResult {
    let good = ctx.token()?;
    let url = ctx.url(&format!("/peers/discover?token={good}"));
    crate::http::get(&ctx.agent, &url, Some(&forged(ctx)))?
        .expect_refusal(401, "AUTHENTICATION_FAILED")?;
    Ok(())
}

fn refused_upgrade(ctx: &Ctx, auth: Auth<'_>) -> CaseResult {
    match ws::connect(&ctx.ws_url(PEERS_PATH), auth) {
        Ok(w) => {
            w.close();
            Err("the connection was upgraded (101); expected HTTP 401".into())
        }
        Err(ConnectError::Refused { status: 401, body }) => {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| format!("401 body is not JSON: {}", peer::preview(&body)))?;
            let code = v.get("error").and_then(|e| e.as_str());
            ensure!(code == Some("AUTHENTICATION_FAILED"), "401 body error is {code:?}");
            Ok(())
        }
        Err(e) => Err(format!("expected HTTP 401: {e}").into()),
    }
}

fn upgrade_no_token(ctx: &Ctx) -> CaseResult {
    refused_upgrade(ctx, Auth::None)
}

fn upgrade_forged(ctx: &Ctx) -> CaseResult {
    let token = ctx.token()?;
    // Flip the last signature character's value (keeping it canonical b64u: 'A' <-> 'Q' both
    // leave the trailing bits zero).
    let mut t = token.clone();
    let last = t.pop().unwrap_or('A');
    t.push(if last == 'A' { 'Q' } else { 'A' });
    refused_upgrade(ctx, Auth::Header(&t))?;
    refused_upgrade(ctx, Auth::Header(&forged(ctx)))
}

fn upgrade_foreign(ctx: &Ctx) -> CaseResult {
    refused_upgrade(ctx, Auth::Header(&foreign(ctx)))
}

fn upgrade_query(ctx: &Ctx) -> CaseResult {
    for path in [PEERS_PATH, EVENTS_PATH] {
        let token = ctx.token()?;
        let mut w = ws::connect(&ctx.ws_url(path), Auth::Query(&token))
            .map_err(|e| format!("{path} with ?token=: {e}"))?;
        let mut rng = peer::rng();
        peer::ping_pong(ctx, &mut w, &mut rng).map_err(|e| format!("{path}: {e}"))?;
        w.close();
    }
    Ok(())
}

fn upgrade_both(ctx: &Ctx) -> CaseResult {
    let good = ctx.token()?;
    refused_upgrade(ctx, Auth::Both { header: &forged(ctx), query: &good })
}
