//! What every case shares: where the node is, who it is, who the tester is.

use std::sync::Arc;
use std::time::Duration;

use peerlink_core::endpoints::{CAPABILITIES_PATH, ChallengeBody, TokenBody};
use peerlink_core::{EntityId, Identity, PublicKey};

use crate::Target;
use crate::http::{self, Resp};

/// The node under test, learned once.
pub(crate) struct Ctx {
    /// `http://host:port[/prefix]`, without a trailing slash.
    pub base: String,
    pub node_id: EntityId,
    pub node_key: PublicKey,
    pub identity: Arc<Identity>,
    pub agent: ureq::Agent,
}

impl Ctx {
    pub fn connect(target: &Target) -> Result<Self, String> {
        let base = target.base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!(
                "{base}: only http:// targets are supported (the checker speaks plain ws)"
            ));
        }
        let agent = http::agent(Duration::from_secs(10));
        let r = http::get(&agent, &format!("{base}{CAPABILITIES_PATH}"), None)?;
        if r.status != 200 {
            return Err(format!("GET {CAPABILITIES_PATH}: HTTP {}", r.status));
        }
        let v = r.json()?;
        let node_id = v.get("node_id").and_then(|v| v.as_str()).unwrap_or_default();
        let node_id = EntityId::new(node_id)
            .map_err(|e| format!("{CAPABILITIES_PATH}: node_id invalid: {e}"))?;
        if let Some(want) = &target.node_id
            && *want != node_id
        {
            return Err(format!("the node says it is {node_id}, expected {want}"));
        }
        let key = v.get("public_key").and_then(|v| v.as_str()).unwrap_or_default();
        let node_key = PublicKey::from_b64u(key)
            .map_err(|e| format!("{CAPABILITIES_PATH}: public_key invalid: {e}"))?;
        Ok(Self { base, node_id, node_key, identity: Arc::clone(&target.identity), agent })
    }

    /// The same node, with `identity` as the tester (a fresh one, for an open node).
    pub fn as_identity(&self, identity: Arc<Identity>) -> Self {
        Self {
            base: self.base.clone(),
            node_id: self.node_id.clone(),
            node_key: self.node_key,
            identity,
            agent: self.agent.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws://host:port[/prefix]` + path.
    pub fn ws_url(&self, path: &str) -> String {
        let rest = self.base.strip_prefix("http://").unwrap_or(&self.base);
        format!("ws://{rest}{path}")
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Result<Resp, String> {
        http::get(&self.agent, &self.url(path), token)
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Resp, String> {
        http::post(
            &self.agent,
            &self.url(path),
            None,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// `GET /auth/token` for `identity`.
    pub fn challenge_for(&self, identity: &Identity) -> Result<Resp, String> {
        let url = peerlink_core::endpoints::token_url(
            &self.base,
            identity.id().as_str(),
            &identity.public_key().to_b64u(),
        );
        http::get(&self.agent, &url, None)
    }

    /// A fresh challenge for the tester, parsed.
    pub fn challenge(&self) -> Result<ChallengeBody, String> {
        let r = self.challenge_for(&self.identity)?;
        if r.status != 200 {
            return Err(format!(
                "GET /auth/token for the tester: HTTP {} (does the node trust the tester?): {}",
                r.status,
                crate::peer::preview(&r.body)
            ));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| format!("GET /auth/token: body is not a challenge ({e})"))
    }

    /// The tester's signature over `challenge`.
    pub fn sign(&self, challenge: &str) -> Result<String, String> {
        peerlink_core::auth::sign_challenge(&self.identity, &self.node_id, challenge)
            .map_err(|e| format!("challenge from the node is not b64u of 32 bytes: {e}"))
    }

    pub fn verify(&self, challenge: &str, signature: &str) -> Result<Resp, String> {
        let body = serde_json::json!({
            "entity_id": self.identity.id().as_str(),
            "challenge": challenge,
            "signature": signature,
        });
        self.post_json(peerlink_core::endpoints::AUTH_VERIFY_PATH, &body)
    }

    /// A fresh bearer token for the tester.
    pub fn token(&self) -> Result<String, String> {
        let ch = self.challenge()?;
        let sig = self.sign(&ch.challenge)?;
        let r = self.verify(&ch.challenge, &sig)?;
        if r.status != 200 {
            return Err(format!(
                "POST /auth/verify: HTTP {}: {}",
                r.status,
                crate::peer::preview(&r.body)
            ));
        }
        let t: TokenBody = serde_json::from_slice(&r.body)
            .map_err(|e| format!("POST /auth/verify: body is not a token ({e})"))?;
        Ok(t.token)
    }
}
