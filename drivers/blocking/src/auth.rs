//! Bearer tokens for the nodes this client talks to (spec §23.2), fetched on first use and
//! cached until shortly before they expire.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use peerlink_core::auth::sign_challenge;
use peerlink_core::endpoints::{
    ChallengeBody, MAX_AUTH_BODY, TokenBody, VerifyBody, token_url, verify_url,
};
use peerlink_core::identity::Identity;
use peerlink_core::ids::EntityId;

use crate::clock::unix_millis;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// The node refused (its status is given: 401, 403, …).
    #[error("the node refused authentication with status {0}")]
    Refused(u16),
    /// The node answered something that is not a valid answer.
    #[error("malformed answer from the node")]
    Malformed,
    /// The base URL is not one of a configured node, or the node there claims another id.
    #[error("no configured node at that address")]
    UnknownNode,
    /// The node could not be reached.
    #[error("transport: {0}")]
    Transport(String),
}

/// Tokens per node base URL.
pub struct Tokens {
    identity: Identity,
    /// The node expected at each base URL: challenges are signed for it, never for whatever id
    /// a server claims (which would let a rogue server relay another node's challenge).
    nodes: BTreeMap<String, EntityId>,
    cache: Mutex<BTreeMap<String, (String, u64)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("identity", self.identity.id()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens for `identity`, at the nodes `nodes` (base URL → the node's entity id).
    pub fn new(identity: Identity, nodes: BTreeMap<String, EntityId>) -> Self {
        Self { identity, nodes, cache: Mutex::new(BTreeMap::new()) }
    }

    /// A valid token for the node at `base_url`, from the cache or fetched now.
    pub fn token(&self, agent: &ureq::Agent, base_url: &str) -> Result<String, AuthFailure> {
        let now = unix_millis();
        let renew = u64::try_from(RENEW_BEFORE.as_millis()).unwrap_or(u64::MAX);
        if let Ok(cache) = self.cache.lock()
            && let Some((token, expires)) = cache.get(base_url)
            && now.saturating_add(renew) < *expires
        {
            return Ok(token.clone());
        }
        let grant = self.fetch(agent, base_url)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(base_url.to_owned(), (grant.token.clone(), grant.expires_at));
        }
        Ok(grant.token)
    }

    /// Forgets the token for `base_url` (after the node refused it).
    pub fn invalidate(&self, base_url: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(base_url);
        }
    }

    fn fetch(&self, agent: &ureq::Agent, base_url: &str) -> Result<TokenBody, AuthFailure> {
        let node = self.nodes.get(base_url).ok_or(AuthFailure::UnknownNode)?;
        let id = self.identity.id().as_str();
        let key = self.identity.public_key().to_b64u();
        let challenge: ChallengeBody = read_json(agent.get(&token_url(base_url, id, &key)).call())?;
        if challenge.node_id != node.as_str() {
            return Err(AuthFailure::UnknownNode);
        }
        let signature = sign_challenge(&self.identity, node, &challenge.challenge)
            .map_err(|_| AuthFailure::Malformed)?;
        let body =
            VerifyBody { entity_id: id.to_owned(), challenge: challenge.challenge, signature };
        let body = serde_json::to_vec(&body).map_err(|_| AuthFailure::Malformed)?;
        read_json(
            agent
                .post(&verify_url(base_url))
                .header("content-type", "application/json")
                .send(&body[..]),
        )
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, AuthFailure> {
    let mut response = response.map_err(|e| AuthFailure::Transport(e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(AuthFailure::Refused(status));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_AUTH_BODY as u64)
        .read_to_vec()
        .map_err(|e| AuthFailure::Transport(e.to_string()))?;
    peerlink_core::endpoints::parse_body(&body, MAX_AUTH_BODY).map_err(|_| AuthFailure::Malformed)
}
