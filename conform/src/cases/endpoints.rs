//! §23.1 and §23.5: health, capabilities, metrics, unknown paths and methods.

use peerlink_core::{Capabilities, PublicKey};

use super::{Case, CaseResult, case, ensure};
use crate::ctx::Ctx;
use crate::http;

pub(super) fn cases() -> Vec<Case> {
    vec![
        case("C-23.5.1", "§23.5", "GET /healthz answers 200 {\"status\":\"ok\"}", health),
        case("C-23.5.2", "§23.5", "GET /peers/capabilities describes the node", capabilities),
        case("C-23.5.3", "§23.5", "GET /metrics is Prometheus text with peerlink_ names", metrics),
        case(
            "C-23.5.4",
            "§23.5",
            "capabilities, /auth/token and /peers/discover give one node_id",
            one_node_id,
        ),
        case("C-23.1.1", "§23.1", "an unknown path is 404 INVALID_MESSAGE", not_found),
        case("C-23.1.2", "§23.1", "a known path with another method is 405", wrong_method),
    ]
}

fn health(ctx: &Ctx) -> CaseResult {
    let r = ctx.get("/healthz", None)?;
    ensure!(r.status == 200, "expected HTTP 200, got {}", r.status);
    let v = r.json()?;
    ensure!(v.get("status").and_then(|s| s.as_str()) == Some("ok"), "body is {v}");
    Ok(())
}

fn capabilities(ctx: &Ctx) -> CaseResult {
    let r = ctx.get("/peers/capabilities", None)?;
    ensure!(r.status == 200, "expected HTTP 200, got {}", r.status);
    let v = r.json()?;
    let key = v.get("public_key").and_then(|k| k.as_str()).unwrap_or_default();
    let key = PublicKey::from_b64u(key).map_err(|e| format!("public_key: {e}"))?;
    ensure!(key == ctx.node_key, "public_key changed between two answers");
    let versions = v.get("versions").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    ensure!(
        versions.iter().any(|x| x.as_str() == Some(peerlink_core::PROTOCOL_VERSION)),
        "versions {versions:?} lacks \"{}\"",
        peerlink_core::PROTOCOL_VERSION
    );
    let caps = v.get("capabilities").cloned().unwrap_or_default();
    Capabilities::from_value(&caps).map_err(|e| format!("capabilities (§7.8): {e}"))?;
    Ok(())
}

fn metrics(ctx: &Ctx) -> CaseResult {
    let r = ctx.get("/metrics", None)?;
    ensure!(r.status == 200, "expected HTTP 200, got {}", r.status);
    let ct = r.content_type.clone().unwrap_or_default();
    ensure!(ct.starts_with("text/plain"), "Content-Type is {ct:?}, expected text/plain");
    let text = String::from_utf8_lossy(&r.body);
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    ensure!(!names.is_empty(), "no samples");
    if let Some(bad) = names.iter().find(|n| !n.starts_with("peerlink_")) {
        return Err(format!("metric {bad:?} does not begin with peerlink_").into());
    }
    Ok(())
}

fn not_found(ctx: &Ctx) -> CaseResult {
    let r = ctx.get("/no/such/path", None)?;
    r.expect_refusal(404, "INVALID_MESSAGE")?;
    Ok(())
}

fn wrong_method(ctx: &Ctx) -> CaseResult {
    let r = http::other(&ctx.agent, "DELETE", &ctx.url("/healthz"))?;
    r.expect_refusal(405, "INVALID_MESSAGE")?;
    Ok(())
}

fn one_node_id(ctx: &Ctx) -> CaseResult {
    let named =
        |v: &serde_json::Value| v.get("node_id").and_then(|n| n.as_str()).map(str::to_owned);
    let caps = named(&ctx.get("/peers/capabilities", None)?.json()?);
    let challenge = ctx.challenge()?.node_id;
    let token = ctx.token()?;
    let discover = named(&ctx.get("/peers/discover", Some(&token))?.json()?);
    let me = ctx.node_id.as_str();
    ensure!(caps.as_deref() == Some(me), "capabilities node_id {caps:?}, expected {me}");
    ensure!(challenge == me, "/auth/token node_id {challenge:?}, expected {me}");
    ensure!(discover.as_deref() == Some(me), "/peers/discover node_id {discover:?}, expected {me}");
    Ok(())
}
