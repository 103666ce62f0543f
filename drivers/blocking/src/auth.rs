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
use peerlink_core::node::NodeAddr;

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
    /// The node at `url` answered `GET /auth/token` with another id than the node configured
    /// there (spec §23.2): nothing was signed.
    #[error("the node at {url} is {found}, not {expected}")]
    WrongNode {
        /// The node's base URL.
        url: String,
        /// The id the node returned.
        found: Box<EntityId>,
        /// The id configured for that URL.
        expected: Box<EntityId>,
    },
    /// The node could not be reached.
    #[error("transport: {0}")]
    Transport(String),
}

/// Tokens per node base URL. A challenge is signed only if the node at a URL returns the id
/// the core names for it ([`NodeAddr::entity`]), never for whatever id a server claims, which
/// would let a rogue server relay another node's challenge (spec §23.2).
pub struct Tokens {
    identity: Identity,
    cache: Mutex<BTreeMap<String, (String, u64)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("identity", self.identity.id()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens for `identity`.
    pub fn new(identity: Identity) -> Self {
        Self { identity, cache: Mutex::new(BTreeMap::new()) }
    }

    /// Whether a token for the node at `base_url` is cached.
    pub fn has(&self, base_url: &str) -> bool {
        self.cache.lock().is_ok_and(|c| c.contains_key(base_url.trim_end_matches('/')))
    }

    /// A valid token for `node`, from the cache or fetched now.
    pub fn token(&self, agent: &ureq::Agent, node: &NodeAddr) -> Result<String, AuthFailure> {
        let base_url = node.base_url.trim_end_matches('/');
        let now = unix_millis();
        let renew = u64::try_from(RENEW_BEFORE.as_millis()).unwrap_or(u64::MAX);
        if let Ok(cache) = self.cache.lock()
            && let Some((token, expires)) = cache.get(base_url)
            && now.saturating_add(renew) < *expires
        {
            return Ok(token.clone());
        }
        let grant = self.fetch(agent, base_url, &node.entity)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(base_url.to_owned(), (grant.token.clone(), grant.expires_at));
        }
        Ok(grant.token)
    }

    /// Forgets the token for `base_url` (after the node refused it).
    pub fn invalidate(&self, base_url: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(base_url.trim_end_matches('/'));
        }
    }

    fn fetch(
        &self,
        agent: &ureq::Agent,
        base_url: &str,
        node: &EntityId,
    ) -> Result<TokenBody, AuthFailure> {
        let id = self.identity.id().as_str();
        let key = self.identity.public_key().to_b64u();
        let challenge: ChallengeBody = read_json(agent.get(&token_url(base_url, id, &key)).call())?;
        // The pin: sign the id the node returned, once it is checked to be the one configured.
        let found = EntityId::new(challenge.node_id.clone()).map_err(|_| AuthFailure::Malformed)?;
        if found != *node {
            return Err(AuthFailure::WrongNode {
                url: base_url.to_owned(),
                found: Box::new(found),
                expected: Box::new(node.clone()),
            });
        }
        let signature = sign_challenge(&self.identity, &found, &challenge.challenge)
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use peerlink_core::auth::challenge_signing_input;
    use peerlink_core::encoding::{b64u, decode_b64u_array};

    use super::*;

    const CHALLENGE: [u8; 32] = [7; 32];

    fn me() -> Identity {
        Identity::from_secret_bytes(EntityId::new("me").unwrap(), &[3; 32])
    }

    /// A node calling itself `node_id` that answers `GET /auth/token` and `POST /auth/verify`
    /// (401 unless [`me`] signed `node_id` and [`CHALLENGE`]), one request per connection.
    /// Returns its base URL and a count of the verify requests it received.
    fn fake_node(node_id: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let verifies = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&verifies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let later = unix_millis() + 60_000;
                let (status, json) = if line.starts_with("GET /auth/token") {
                    let challenge = b64u(&CHALLENGE);
                    let json = format!(
                        r#"{{"node_id":"{node_id}","challenge":"{challenge}","expires_at":{later}}}"#
                    );
                    ("200 OK", json)
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let v: VerifyBody = serde_json::from_slice(&body).unwrap();
                    let sig = decode_b64u_array::<64>("signature", &v.signature).unwrap();
                    let input =
                        challenge_signing_input(&EntityId::new(node_id).unwrap(), &CHALLENGE);
                    let ok = me().public_key().verify(&input, &sig).is_ok();
                    let status = if ok { "200 OK" } else { "401 Unauthorized" };
                    (status, format!(r#"{{"token":"tok","expires_at":{later}}}"#))
                };
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    json.len()
                );
                out.write_all(head.as_bytes()).unwrap();
                out.write_all(json.as_bytes()).unwrap();
            }
        });
        (base, verifies)
    }

    fn at(base: &str, node: &str) -> NodeAddr {
        NodeAddr { entity: EntityId::new(node).unwrap(), base_url: base.to_owned() }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).build().into()
    }

    #[test]
    fn login_signs_the_node_id_returned_when_it_is_the_node_configured() {
        let (base, verifies) = fake_node("relay");
        let token = Tokens::new(me()).token(&agent(), &at(&base, "relay")).unwrap();
        assert_eq!(token, "tok", "the node accepted a signature over its own id");
        assert_eq!(verifies.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn login_refuses_a_node_that_is_not_the_one_configured_and_signs_nothing() {
        let (base, verifies) = fake_node("relay");
        let err = Tokens::new(me()).token(&agent(), &at(&base, "bob")).unwrap_err();
        match &err {
            AuthFailure::WrongNode { url, found, expected } => {
                assert_eq!(
                    (url.as_str(), found.as_str(), expected.as_str()),
                    (&*base, "relay", "bob")
                );
            }
            other => panic!("expected WrongNode, got {other:?}"),
        }
        assert_eq!(err.to_string(), format!("the node at {base} is relay, not bob"));
        assert_eq!(verifies.load(Ordering::SeqCst), 0, "nothing signed, nothing sent");
    }
}
