//! Challenge-response authentication and bearer tokens (seed 003).
//!
//! A node's HTTP server lets an entity prove it holds the identity key its trust store binds to
//! its entity id, and hands it a short-lived token for the WebSocket upgrade
//! (`Authorization: Bearer <jwt>` or `?token=<jwt>`) and for HTTP calls:
//!
//! 1. `GET /auth/token?entity_id=E&pubkey=K`: [`Authority::challenge`] refuses the pair unless
//!    [`TrustStore::authorize`] accepts it, then returns a fresh 32-byte challenge (b64u) that
//!    expires after [`AuthConfig::challenge_lifetime`].
//! 2. The entity signs, with its Ed25519 identity key ([`sign_challenge`]),
//!
//!    ```text
//!    "peerlink v1 auth\n" || node_entity_id || 0x00 || challenge
//!    ```
//!
//!    where `node_entity_id` is the ASCII bytes of the *node's* entity id (never contains 0x00)
//!    and `challenge` is the 32 raw challenge bytes (not their b64u form); see
//!    [`challenge_signing_input`]. Naming the node keeps a response from being usable at any
//!    other node; the context prefix keeps it apart from every other peerlink signature.
//! 3. `POST /auth/verify` with the entity id, the challenge and the signature (both b64u):
//!    [`Authority::verify`] consumes the challenge (it is removed whatever the outcome), checks
//!    the signature with the key authorized in step 1 and returns a token.
//! 4. [`Authority::check_bearer`] validates that token on every upgrade or call and yields the
//!    entity, the key it proved in step 3 and when the token stops being accepted: a [`Bearer`].
//!    Under the open trust policy that key is the one the node verifies the entity's signed
//!    messages with (spec §2.3).
//!
//! ## Tokens
//!
//! Tokens are JWTs (RFC 7519) in compact JWS form signed with the node's own Ed25519 identity key
//! (EdDSA, RFC 8037):
//!
//! ```text
//! b64u(header) "." b64u(claims) "." b64u(Ed25519(node key, b64u(header) "." b64u(claims)))
//! header = {"alg":"EdDSA","typ":"JWT"}
//! claims = {"cnf":{"jwk":{"crv":"Ed25519","kty":"OKP","x":"<b64u key>"}},
//!           "exp":<secs>,"iat":<secs>,"iss":"<node id>","sub":"<entity id>"}
//! ```
//!
//! (one line, no whitespace). `cnf` (RFC 7800 §3.2, the key as an RFC 8037 JWK) is the identity
//! key the entity proved it holds by answering the challenge: the token binds the entity to it
//! (spec §2.3). Both JSON texts are written in exactly these bytes (they are also their RFC 8785
//! canonical form: no whitespace, members sorted). `iat` is the minting time and `exp` the minting time
//! plus [`AuthConfig::token_lifetime`], both in whole seconds since the epoch (JWT NumericDate,
//! rounded down). There is no `jti`: minting draws no randomness, so two tokens minted for the
//! same entity in the same second are identical, which is harmless for a bearer token.
//!
//! Only the node that minted a token checks it, so parsing is strict: at most
//! [`MAX_TOKEN_LEN`] bytes, exactly three canonical b64u parts, JSON without duplicate keys or
//! fractional numbers, `alg` exactly `"EdDSA"`, `typ` absent or `"JWT"`, no `crit`, `iss` this
//! node's id, `sub` an entity id, `iat` and `exp` required, `nbf` optional, all of the right JSON
//! type, and `cnf`, when present, exactly a `jwk` of `kty` `"OKP"`, `crv` `"Ed25519"` and an `x`
//! of 32 bytes. Other claims and header parameters are ignored (RFC 7519 §4), yet covered by the
//! signature. A token never verifies at another node: its signature is by this node's key and
//! its `iss` must name this node.
//!
//! ```
//! use std::sync::Arc;
//! use peerlink_core::auth::{AuthConfig, Authority, sign_challenge};
//! use peerlink_core::{EntityId, Identity, Timestamp, TrustPolicy, TrustStore};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(1);
//! let node = Arc::new(Identity::generate(EntityId::new("relay")?, &mut rng));
//! let alice = Identity::generate(EntityId::new("alice")?, &mut rng);
//! let mut trust = TrustStore::new(TrustPolicy::Allowlist);
//! trust.insert(alice.id().clone(), alice.public_key());
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//!
//! let mut authority = Authority::new(node.clone(), AuthConfig::default());
//! let ch = authority.challenge(alice.id(), &alice.public_key().to_b64u(), &trust, now, &mut rng)?;
//! let sig = sign_challenge(&alice, node.id(), &ch.challenge)?;
//! let jwt = authority.verify(alice.id(), &ch.challenge, &sig, now)?;
//! assert_eq!(authority.check(&jwt, Some(alice.id()), now)?, *alice.id());
//! assert_eq!(authority.check_bearer(&jwt, None, now)?.key(), Some(alice.public_key()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand_core::CryptoRng;
use serde_json::Value;

use crate::canonical::{self, MAX_SAFE_INTEGER, StrictValue};
use crate::encoding::{b64u, decode_b64u, decode_b64u_array};
use crate::error::{ErrorCode, UsageError};
use crate::identity::{Identity, PublicKey, SIGNATURE_LEN, TrustStore};
use crate::ids::EntityId;
use crate::time::{Timestamp, duration_millis};

/// Context prefix of the challenge signing input (see the [module docs](self)).
pub const AUTH_CONTEXT: &[u8] = b"peerlink v1 auth\n";

/// Length of a challenge in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// Longest token [`Authority::check`] parses, in bytes; longer ones are refused unparsed.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The JWT header every token carries, byte for byte.
pub const JWT_HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// The only accepted `alg` (RFC 8037).
const ALG: &str = "EdDSA";

/// Timing of challenges and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    /// How long a token stays valid after it is minted (default 1 h). Tokens carry whole
    /// seconds, so the lifetime is effectively rounded down to a second boundary.
    pub token_lifetime: Duration,
    /// How long a challenge can be answered (default 30 s).
    pub challenge_lifetime: Duration,
    /// The most challenges awaiting an answer (default 10 000). When full, the one expiring
    /// first is dropped to make room. A value of 0 is treated as 1.
    pub max_pending_challenges: usize,
    /// Leeway for the `exp`, `iat` and `nbf` claims, for clocks that disagree (default 300 s).
    pub clock_skew: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(3600),
            challenge_lifetime: Duration::from_secs(30),
            max_pending_challenges: 10_000,
            clock_skew: Duration::from_secs(300),
        }
    }
}

impl AuthConfig {
    /// Checks that both lifetimes are at least one second and at least one challenge may be
    /// pending. An invalid configuration never makes an [`Authority`] panic; it just makes every
    /// challenge or token useless.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.token_lifetime < Duration::from_secs(1) {
            return Err(UsageError::InvalidConfig("token lifetime must be at least 1 s"));
        }
        if self.challenge_lifetime < Duration::from_secs(1) {
            return Err(UsageError::InvalidConfig("challenge lifetime must be at least 1 s"));
        }
        if self.max_pending_challenges == 0 {
            return Err(UsageError::InvalidConfig("max pending challenges must be at least 1"));
        }
        Ok(())
    }
}

/// Why an authentication step or a token was refused.
///
/// The detail is for local logs; a peer learns only [`code`](Self::code) and
/// [`http_status`](Self::http_status).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The trust store refused the (entity id, public key) pair: the entity is unknown under the
    /// allowlist policy, or the store binds it to another key. Both look the same from outside,
    /// so the answer does not reveal who is in the store.
    #[error("entity or key not trusted")]
    UntrustedEntity,
    /// The public key is not b64u of a valid 32-byte Ed25519 key.
    #[error("malformed public key")]
    BadKey,
    /// The challenge is malformed, was never issued, was already used or evicted, or was issued
    /// to another entity.
    #[error("unknown challenge")]
    UnknownChallenge,
    /// The challenge was issued but its lifetime has passed.
    #[error("challenge expired")]
    ExpiredChallenge,
    /// The challenge response is malformed or does not verify with the entity's key.
    #[error("bad challenge signature")]
    BadSignature,
    /// The token is not a well-formed JWT of the expected shape.
    #[error("malformed token: {0}")]
    MalformedToken(&'static str),
    /// The token's signature does not verify with this node's key.
    #[error("bad token signature")]
    BadTokenSignature,
    /// The token's `alg` is missing or is not exactly `EdDSA`.
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// The token was issued by another node.
    #[error("token issued by another node")]
    WrongIssuer,
    /// The token is for another entity than the one expected.
    #[error("token is for another entity")]
    WrongSubject,
    /// The token's `exp` has passed (beyond the clock skew).
    #[error("token expired")]
    Expired,
    /// The token's `iat` or `nbf` is in the future (beyond the clock skew).
    #[error("token not yet valid")]
    NotYetValid,
}

impl AuthError {
    /// The wire error code: `INVALID_MESSAGE` for a malformed public key, `AUTHENTICATION_FAILED`
    /// for everything else (spec §10: a failed upgrade JWT is `AUTHENTICATION_FAILED`).
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::BadKey => ErrorCode::InvalidMessage,
            _ => ErrorCode::AuthenticationFailed,
        }
    }

    /// The HTTP status a server answers with: 400 for a malformed public key, 403 for an
    /// untrusted entity, 401 for every challenge and token failure (including a malformed token:
    /// RFC 6750 §3.1 `invalid_token`), telling the client to authenticate again.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::BadKey => 400,
            AuthError::UntrustedEntity => 403,
            _ => 401,
        }
    }
}

/// A challenge to answer, as `GET /auth/token` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// b64u of the 32 challenge bytes.
    pub challenge: String,
    /// The first instant at which the challenge is no longer accepted.
    pub expires_at: Timestamp,
}

/// A challenge taken out by [`Authority::take_answer`], whose answer's signature
/// [`Authority::finish`] checks. Not `Clone`: one answer mints at most one token.
#[derive(Debug)]
pub struct ChallengeAnswer {
    entity: EntityId,
    key: PublicKey,
    challenge: [u8; CHALLENGE_LEN],
    now: Timestamp,
}

/// What a valid token says about whoever presents it (spec §2.3, §23.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerKey {
    /// The identity key the entity proved it holds at `POST /auth/verify` (the token's `cnf`).
    pub key: PublicKey,
    /// The first instant the token is no longer accepted: its `exp` plus the clock skew.
    pub expires: Timestamp,
}

/// The holder of a valid token: the entity it names and, for a token minted by
/// [`Authority::verify`] or [`Authority::finish`], the key the entity proved. A node binds an
/// inbound link, or an HTTP call, to it (spec §2.3, §19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// The entity (`sub`).
    pub entity: EntityId,
    /// The key proven and the token's end; `None` for a token minted without a key
    /// ([`Authority::mint`]), or for an entity authenticated out of band.
    pub proof: Option<BearerKey>,
}

impl Bearer {
    /// A bearer that proved `key` with a token accepted until `expires`.
    pub fn with_key(entity: EntityId, key: PublicKey, expires: Timestamp) -> Self {
        Self { entity, proof: Some(BearerKey { key, expires }) }
    }

    /// The key proven, if any.
    pub fn key(&self) -> Option<PublicKey> {
        self.proof.map(|p| p.key)
    }
}

impl From<EntityId> for Bearer {
    /// An entity authenticated without a key (its key, if any, is the trust store's).
    fn from(entity: EntityId) -> Self {
        Self { entity, proof: None }
    }
}

/// A challenge awaiting its answer.
struct Pending {
    entity: EntityId,
    key: PublicKey,
    expires: Timestamp,
}

/// The node side: issues challenges, verifies responses, mints and checks tokens.
pub struct Authority {
    config: AuthConfig,
    identity: Arc<Identity>,
    node_key: PublicKey,
    pending: BTreeMap<[u8; CHALLENGE_LEN], Pending>,
    /// The same challenges ordered by expiry, for eviction and [`Authority::expire`].
    by_expiry: BTreeSet<(Timestamp, [u8; CHALLENGE_LEN])>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("node", self.identity.id())
            .field("config", &self.config)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// An authority for the node `identity`, whose key signs the tokens.
    pub fn new(identity: Arc<Identity>, config: AuthConfig) -> Self {
        let node_key = identity.public_key();
        Self { config, identity, node_key, pending: BTreeMap::new(), by_expiry: BTreeSet::new() }
    }

    /// The node's entity id: the `iss` of its tokens.
    pub fn node_id(&self) -> &EntityId {
        self.identity.id()
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// `GET /auth/token`: `entity` claims the key `pubkey_b64u` (b64u of 32 bytes).
    ///
    /// Refused with [`AuthError::BadKey`] if the key does not parse and with
    /// [`AuthError::UntrustedEntity`] unless [`TrustStore::authorize`] accepts the pair.
    /// Otherwise returns a fresh 32-byte challenge (b64u) valid until
    /// `now + challenge_lifetime` (exclusive). If [`AuthConfig::max_pending_challenges`] are
    /// already pending, expired ones are dropped first, then the ones expiring first.
    pub fn challenge(
        &mut self,
        entity: &EntityId,
        pubkey_b64u: &str,
        trust: &TrustStore,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<Challenge, AuthError> {
        let presented = PublicKey::from_b64u(pubkey_b64u).map_err(|_| AuthError::BadKey)?;
        let key = trust.authorize(entity, &presented).map_err(|_| AuthError::UntrustedEntity)?;
        let mut bytes = [0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut bytes);
        let expires = now.saturating_add(self.config.challenge_lifetime);

        let max = self.config.max_pending_challenges.max(1);
        if self.pending.len() >= max {
            self.expire(now);
        }
        while self.pending.len() >= max {
            let Some((_, oldest)) = self.by_expiry.pop_first() else { break };
            self.pending.remove(&oldest);
        }
        if let Some(old) =
            self.pending.insert(bytes, Pending { entity: entity.clone(), key, expires })
        {
            self.by_expiry.remove(&(old.expires, bytes));
        }
        self.by_expiry.insert((expires, bytes));
        Ok(Challenge { challenge: b64u(&bytes), expires_at: expires })
    }

    /// `POST /auth/verify`: `entity` answers `challenge_b64u` with `signature_b64u`, its Ed25519
    /// signature over `AUTH_CONTEXT || node entity id || 0x00 || challenge bytes`
    /// ([`challenge_signing_input`]).
    ///
    /// A challenge is used at most once: it is removed whether the answer succeeds or fails.
    /// Refused with [`AuthError::UnknownChallenge`] if the challenge is malformed, was not issued
    /// (or already used, expired and purged, or evicted) or was issued to another entity; with
    /// [`AuthError::ExpiredChallenge`] once `now >= expires_at`; with [`AuthError::BadSignature`]
    /// if the signature is malformed or does not verify with the key authorized when the
    /// challenge was issued. On success returns a token from [`mint`](Self::mint).
    ///
    /// The same as [`take_answer`](Self::take_answer) then [`finish`](Self::finish), which a
    /// driver may run apart: the first needs the pending challenges, the second only the
    /// node's identity and costs a verification and a signature.
    pub fn verify(
        &mut self,
        entity: &EntityId,
        challenge_b64u: &str,
        signature_b64u: &str,
        now: Timestamp,
    ) -> Result<String, AuthError> {
        let answer = self.take_answer(entity, challenge_b64u, now)?;
        self.finish(answer, signature_b64u)
    }

    /// The first half of [`verify`](Self::verify): takes the pending challenge out (it is used at
    /// most once) and checks that it was issued to `entity` and has not expired. The answer's
    /// signature is checked by [`finish`](Self::finish).
    pub fn take_answer(
        &mut self,
        entity: &EntityId,
        challenge_b64u: &str,
        now: Timestamp,
    ) -> Result<ChallengeAnswer, AuthError> {
        let bytes = decode_b64u_array::<CHALLENGE_LEN>("challenge", challenge_b64u)
            .map_err(|_| AuthError::UnknownChallenge)?;
        let pending = self.pending.remove(&bytes).ok_or(AuthError::UnknownChallenge)?;
        self.by_expiry.remove(&(pending.expires, bytes));
        if pending.entity != *entity {
            return Err(AuthError::UnknownChallenge);
        }
        if now >= pending.expires {
            return Err(AuthError::ExpiredChallenge);
        }
        Ok(ChallengeAnswer { entity: pending.entity, key: pending.key, challenge: bytes, now })
    }

    /// The second half of [`verify`](Self::verify): checks `signature_b64u` over the challenge
    /// with the key authorized when it was issued, and mints the token. Needs no pending state,
    /// so any [`Authority`] of the same node identity can run it (off the node's own task).
    pub fn finish(
        &self,
        answer: ChallengeAnswer,
        signature_b64u: &str,
    ) -> Result<String, AuthError> {
        let signature = decode_b64u_array::<SIGNATURE_LEN>("signature", signature_b64u)
            .map_err(|_| AuthError::BadSignature)?;
        let input = challenge_signing_input(self.identity.id(), &answer.challenge);
        answer.key.verify(&input, &signature).map_err(|_| AuthError::BadSignature)?;
        Ok(self.mint_bound(&answer.entity, &answer.key, answer.now))
    }

    /// Mints a token for `entity` directly, without a key, valid from `now` for
    /// [`AuthConfig::token_lifetime`] (for tests, and for a node authenticating its own clients
    /// out of band). Its bearer has no proven key: under the open policy a node cannot verify
    /// its signed messages (spec §2.3); [`mint_bound`](Self::mint_bound) names the key.
    pub fn mint(&self, entity: &EntityId, now: Timestamp) -> String {
        self.mint_token(entity, None, now)
    }

    /// Mints the token [`verify`](Self::verify) returns for `entity` once it proved `key`:
    /// valid from `now` for [`AuthConfig::token_lifetime`], with `key` as its `cnf` claim.
    pub fn mint_bound(&self, entity: &EntityId, key: &PublicKey, now: Timestamp) -> String {
        self.mint_token(entity, Some(key), now)
    }

    fn mint_token(&self, entity: &EntityId, key: Option<&PublicKey>, now: Timestamp) -> String {
        let iat = secs(now);
        let exp = secs(now.saturating_add(self.config.token_lifetime));
        let mut claims = Vec::with_capacity(200);
        claims.push(b'{');
        if let Some(key) = key {
            claims.extend_from_slice(br#""cnf":{"jwk":{"crv":"Ed25519","kty":"OKP","x":"#);
            canonical::write_string(&mut claims, &key.to_b64u());
            claims.extend_from_slice(b"}},");
        }
        claims.extend_from_slice(b"\"exp\":");
        canonical::write_u64(&mut claims, exp);
        claims.extend_from_slice(b",\"iat\":");
        canonical::write_u64(&mut claims, iat);
        claims.extend_from_slice(b",\"iss\":");
        canonical::write_string(&mut claims, self.identity.id().as_str());
        claims.extend_from_slice(b",\"sub\":");
        canonical::write_string(&mut claims, entity.as_str());
        claims.push(b'}');
        let mut token = format!("{}.{}", b64u(JWT_HEADER.as_bytes()), b64u(&claims));
        let signature = self.identity.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64u(&signature));
        token
    }

    /// Checks a token presented at a WebSocket upgrade or an HTTP call and returns its subject.
    ///
    /// In order: at most [`MAX_TOKEN_LEN`] bytes, exactly three b64u parts, a JSON header whose
    /// `alg` is exactly `"EdDSA"` ([`AuthError::WrongAlgorithm`] otherwise, `"none"` included),
    /// `typ` absent or `"JWT"` and no `crit`; an Ed25519 signature by this node's key over
    /// `part0 "." part1` ([`AuthError::BadTokenSignature`]); JSON claims with `iss` equal to this
    /// node's id ([`AuthError::WrongIssuer`]), `sub` an entity id, integer `exp` with
    /// `exp > now - clock_skew` ([`AuthError::Expired`]), integer `iat` and optional integer
    /// `nbf` both `<= now + clock_skew` ([`AuthError::NotYetValid`]); finally, if `expected` is
    /// given, `sub == expected` ([`AuthError::WrongSubject`]). Any other defect is
    /// [`AuthError::MalformedToken`].
    pub fn check(
        &self,
        token: &str,
        expected: Option<&EntityId>,
        now: Timestamp,
    ) -> Result<EntityId, AuthError> {
        self.check_bearer(token, expected, now).map(|b| b.entity)
    }

    /// [`check`](Self::check), returning the key the token binds its subject to (its `cnf`
    /// claim: a `jwk` with `kty` `"OKP"`, `crv` `"Ed25519"` and `x` the b64u of 32 bytes, else
    /// [`AuthError::MalformedToken`]) and the instant the token stops being accepted.
    pub fn check_bearer(
        &self,
        token: &str,
        expected: Option<&EntityId>,
        now: Timestamp,
    ) -> Result<Bearer, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::MalformedToken("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(claims_part), Some(signature_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken("not three dot-separated parts"));
        };

        let header = parse_object(header_part, "header")?;
        if header.get("alg").and_then(Value::as_str) != Some(ALG) {
            return Err(AuthError::WrongAlgorithm);
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if t == "JWT" => {}
            Some(_) => return Err(AuthError::MalformedToken("typ is not JWT")),
        }
        if header.contains_key("crit") {
            return Err(AuthError::MalformedToken("crit header not supported"));
        }

        let claims_bytes = decode_b64u("claims", claims_part)
            .map_err(|_| AuthError::MalformedToken("claims are not b64u"))?;
        let signature = decode_b64u_array::<SIGNATURE_LEN>("signature", signature_part)
            .map_err(|_| AuthError::MalformedToken("signature is not b64u of 64 bytes"))?;
        // Both parts are canonical b64u (the decoder is strict), so the signed text is exactly
        // what was minted. `token.len() > signing_len` because the signature part follows.
        let signing_len = header_part.len().saturating_add(1).saturating_add(claims_part.len());
        let signing_input = token.get(..signing_len).unwrap_or_default();
        self.node_key
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::BadTokenSignature)?;

        let claims = parse_json_object(&claims_bytes, "claims")?;
        let iss = string_claim(&claims, "iss")?;
        if iss != self.identity.id().as_str() {
            return Err(AuthError::WrongIssuer);
        }
        let sub = EntityId::new(string_claim(&claims, "sub")?)
            .map_err(|_| AuthError::MalformedToken("sub is not an entity id"))?;
        let exp = int_claim(&claims, "exp")?.ok_or(AuthError::MalformedToken("exp missing"))?;
        let iat = int_claim(&claims, "iat")?.ok_or(AuthError::MalformedToken("iat missing"))?;
        let nbf = int_claim(&claims, "nbf")?;
        let key = cnf_claim(&claims)?;

        let skew = duration_millis(self.config.clock_skew);
        let now_ms = now.as_unix_millis();
        if exp.saturating_mul(1000) <= now_ms.saturating_sub(skew) {
            return Err(AuthError::Expired);
        }
        let latest_start = now_ms.saturating_add(skew);
        if iat.saturating_mul(1000) > latest_start
            || nbf.is_some_and(|n| n.saturating_mul(1000) > latest_start)
        {
            return Err(AuthError::NotYetValid);
        }
        if expected.is_some_and(|e| *e != sub) {
            return Err(AuthError::WrongSubject);
        }
        let expires = Timestamp::from_unix_millis(exp.saturating_mul(1000).saturating_add(skew));
        Ok(Bearer { entity: sub, proof: key.map(|key| BearerKey { key, expires }) })
    }

    /// Number of challenges awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops every challenge expired at `now` (`expires_at <= now`).
    pub fn expire(&mut self, now: Timestamp) {
        while let Some(&(expires, bytes)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.pending.remove(&bytes);
        }
    }
}

/// The bytes an entity signs to answer `challenge` from `node`:
/// `AUTH_CONTEXT || node.as_str() || 0x00 || challenge`.
pub fn challenge_signing_input(node: &EntityId, challenge: &[u8; CHALLENGE_LEN]) -> Vec<u8> {
    let node = node.as_str().as_bytes();
    let mut input = Vec::with_capacity(AUTH_CONTEXT.len() + node.len() + 1 + CHALLENGE_LEN);
    input.extend_from_slice(AUTH_CONTEXT);
    input.extend_from_slice(node);
    input.push(0);
    input.extend_from_slice(challenge);
    input
}

/// The client side: the signature (b64u) to send to `POST /auth/verify` in answer to
/// `challenge_b64u` from `node`. Fails with [`AuthError::UnknownChallenge`] if the challenge is
/// not b64u of 32 bytes.
pub fn sign_challenge(
    identity: &Identity,
    node: &EntityId,
    challenge_b64u: &str,
) -> Result<String, AuthError> {
    let bytes = decode_b64u_array::<CHALLENGE_LEN>("challenge", challenge_b64u)
        .map_err(|_| AuthError::UnknownChallenge)?;
    Ok(b64u(&identity.sign(&challenge_signing_input(node, &bytes))))
}

/// The token in an `Authorization` header value of the `Bearer` scheme (RFC 6750 §2.1; the
/// scheme name is case-insensitive), or `None` for any other scheme or an empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start_matches(' ');
    (!token.is_empty() && !token.contains(' ')).then_some(token)
}

/// Whole seconds of a timestamp (rounded down), capped so JSON can carry them.
fn secs(t: Timestamp) -> u64 {
    (t.as_unix_millis() / 1000).min(MAX_SAFE_INTEGER)
}

/// Decodes a b64u part and parses it as a strict JSON object.
fn parse_object(
    part: &str,
    what: &'static str,
) -> Result<serde_json::Map<String, Value>, AuthError> {
    let bytes =
        decode_b64u(what, part).map_err(|_| AuthError::MalformedToken("part is not b64u"))?;
    parse_json_object(&bytes, what)
}

/// Parses strict JSON (no duplicate keys, no fractions) that must be an object.
fn parse_json_object(
    bytes: &[u8],
    what: &'static str,
) -> Result<serde_json::Map<String, Value>, AuthError> {
    let malformed = || {
        AuthError::MalformedToken(if what == "header" {
            "header is not a strict JSON object"
        } else {
            "claims are not a strict JSON object"
        })
    };
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(map))) => Ok(map),
        _ => Err(malformed()),
    }
}

/// A required string claim.
fn string_claim<'a>(
    claims: &'a serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, AuthError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(AuthError::MalformedToken("string claim of the wrong type")),
        None => Err(AuthError::MalformedToken("required string claim missing")),
    }
}

/// An optional NumericDate claim: a non-negative integer of seconds.
fn int_claim(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or(AuthError::MalformedToken("time claim is not a non-negative integer")),
    }
}

/// The optional `cnf` claim (RFC 7800 §3.2): `{"jwk":{"crv":"Ed25519","kty":"OKP","x":K}}`.
fn cnf_claim(claims: &serde_json::Map<String, Value>) -> Result<Option<PublicKey>, AuthError> {
    let Some(cnf) = claims.get("cnf") else { return Ok(None) };
    let bad = || AuthError::MalformedToken("cnf is not an Ed25519 jwk");
    let jwk = cnf.get("jwk").and_then(Value::as_object).ok_or_else(bad)?;
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    if member("kty") != Some("OKP") || member("crv") != Some("Ed25519") {
        return Err(bad());
    }
    let x = member("x").ok_or_else(bad)?;
    PublicKey::from_b64u(x).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustPolicy;
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const T0: u64 = 1_700_000_000_000;

    /// A decoder that, unlike the protocol's, ignores unused trailing bits.
    const URL_SAFE_NO_PAD_LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(T0)
    }

    fn id(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    fn ident(name: &str, seed: u64) -> Identity {
        Identity::generate(id(name), &mut ChaCha20Rng::seed_from_u64(seed))
    }

    struct Fixture {
        rng: ChaCha20Rng,
        node: Arc<Identity>,
        alice: Identity,
        bob: Identity,
        trust: TrustStore,
        auth: Authority,
    }

    fn fixture() -> Fixture {
        let node = Arc::new(ident("relay", 1));
        let alice = ident("alice", 2);
        let bob = ident("bob", 3);
        let mut trust = TrustStore::new(TrustPolicy::Allowlist);
        trust.insert(alice.id().clone(), alice.public_key());
        trust.insert(bob.id().clone(), bob.public_key());
        let auth = Authority::new(node.clone(), AuthConfig::default());
        Fixture { rng: ChaCha20Rng::seed_from_u64(99), node, alice, bob, trust, auth }
    }

    impl Fixture {
        fn challenge_for(&mut self, who: &Identity, at: Timestamp) -> Challenge {
            self.auth
                .challenge(who.id(), &who.public_key().to_b64u(), &self.trust, at, &mut self.rng)
                .unwrap()
        }

        fn token(&self) -> String {
            self.auth.mint(self.alice.id(), now())
        }
    }

    /// A token with the given header and claims texts, signed by `key`.
    fn forge(header: &str, claims: &str, key: &Identity) -> String {
        let input = format!("{}.{}", b64u(header.as_bytes()), b64u(claims.as_bytes()));
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", b64u(&sig))
    }

    fn claims(iss: &str, sub: &str, iat: u64, exp: u64) -> String {
        format!(r#"{{"exp":{exp},"iat":{iat},"iss":"{iss}","sub":"{sub}"}}"#)
    }

    fn good_claims() -> String {
        claims("relay", "alice", T0 / 1000, T0 / 1000 + 3600)
    }

    #[test]
    fn full_flow() {
        let mut f = fixture();
        let ch = f.challenge_for(&copy(&f.alice), now());
        assert_eq!(ch.expires_at, now().saturating_add(Duration::from_secs(30)));
        assert_eq!(decode_b64u("c", &ch.challenge).unwrap().len(), 32);
        assert_eq!(f.auth.pending(), 1);
        let sig = sign_challenge(&f.alice, f.node.id(), &ch.challenge).unwrap();
        let later = now().saturating_add(Duration::from_secs(29));
        let jwt = f.auth.verify(f.alice.id(), &ch.challenge, &sig, later).unwrap();
        assert_eq!(f.auth.pending(), 0);
        assert_eq!(f.auth.check(&jwt, Some(f.alice.id()), later), Ok(f.alice.id().clone()));
        assert_eq!(f.auth.check(&jwt, None, later), Ok(f.alice.id().clone()));
        assert_eq!(jwt, f.auth.mint_bound(f.alice.id(), &f.alice.public_key(), later));
        // The token binds alice to the key she proved, until exp + the clock skew (spec §2.3).
        let bearer = f.auth.check_bearer(&jwt, None, later).unwrap();
        let exp_ms = (later.as_unix_millis() / 1000 + 3600) * 1000;
        assert_eq!(
            bearer,
            Bearer::with_key(
                f.alice.id().clone(),
                f.alice.public_key(),
                Timestamp::from_unix_millis(exp_ms + 300_000)
            )
        );
        // The last instant it is accepted, and the first it is not.
        let last = Timestamp::from_unix_millis(exp_ms + 300_000 - 1);
        assert!(f.auth.check(&jwt, None, last).is_ok());
        assert_eq!(
            f.auth.check(&jwt, None, bearer.proof.unwrap().expires),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn the_cnf_claim_names_the_proven_key_and_is_parsed_strictly() {
        let f = fixture();
        let jwt = f.auth.mint_bound(f.alice.id(), &f.alice.public_key(), now());
        let claims = decode_b64u("c", jwt.split('.').nth(1).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(claims).unwrap(),
            format!(
                r#"{{"cnf":{{"jwk":{{"crv":"Ed25519","kty":"OKP","x":"{}"}}}},"exp":1700003600,"iat":1700000000,"iss":"relay","sub":"alice"}}"#,
                f.alice.public_key().to_b64u()
            )
        );
        // A token without cnf names no key.
        assert_eq!(f.auth.check_bearer(&f.token(), None, now()).unwrap().key(), None);
        let x = f.alice.public_key().to_b64u();
        let bad_cnf = [
            r#""cnf":null"#.to_owned(),
            r#""cnf":{}"#.to_owned(),
            r#""cnf":{"jwk":"k"}"#.to_owned(),
            format!(r#""cnf":{{"jwk":{{"crv":"X25519","kty":"OKP","x":"{x}"}}}}"#),
            format!(r#""cnf":{{"jwk":{{"crv":"Ed25519","kty":"EC","x":"{x}"}}}}"#),
            r#""cnf":{"jwk":{"crv":"Ed25519","kty":"OKP"}}"#.to_owned(),
            r#""cnf":{"jwk":{"crv":"Ed25519","kty":"OKP","x":"AAAA"}}"#.to_owned(),
            r#""cnf":{"jwk":{"crv":"Ed25519","kty":"OKP","x":7}}"#.to_owned(),
        ];
        for cnf in bad_cnf {
            let claims = format!(
                r#"{{{cnf},"exp":{},"iat":{},"iss":"relay","sub":"alice"}}"#,
                T0 / 1000 + 3600,
                T0 / 1000
            );
            let token = forge(JWT_HEADER, &claims, &f.node);
            assert!(
                matches!(
                    f.auth.check_bearer(&token, None, now()),
                    Err(AuthError::MalformedToken(_))
                ),
                "{cnf}"
            );
        }
    }

    #[test]
    fn an_answer_taken_by_the_node_is_finished_by_another_authority_of_the_same_node() {
        let mut f = fixture();
        let ch = f.challenge_for(&copy(&f.alice), now());
        let sig = sign_challenge(&f.alice, f.node.id(), &ch.challenge).unwrap();
        let answer = f.auth.take_answer(f.alice.id(), &ch.challenge, now()).unwrap();
        assert_eq!(f.auth.pending(), 0, "taken out: used at most once");
        assert!(matches!(
            f.auth.take_answer(f.alice.id(), &ch.challenge, now()),
            Err(AuthError::UnknownChallenge)
        ));
        // The connection's task holds its own Authority for the same identity.
        let checker = Authority::new(f.node.clone(), AuthConfig::default());
        let jwt = checker.finish(answer, &sig).unwrap();
        assert_eq!(
            jwt,
            f.auth.mint_bound(f.alice.id(), &f.alice.public_key(), now()),
            "the same token verify would give"
        );
        assert_eq!(f.auth.check(&jwt, Some(f.alice.id()), now()), Ok(f.alice.id().clone()));

        // A wrong signature fails at the second half, and the challenge is gone all the same.
        let ch = f.challenge_for(&copy(&f.alice), now());
        let bob_sig = sign_challenge(&f.bob, f.node.id(), &ch.challenge).unwrap();
        let answer = f.auth.take_answer(f.alice.id(), &ch.challenge, now()).unwrap();
        assert_eq!(checker.finish(answer, &bob_sig), Err(AuthError::BadSignature));
        assert_eq!(f.auth.pending(), 0);
    }

    #[test]
    fn byte_formats() {
        let f = fixture();
        let jwt = f.token();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9");
        assert_eq!(decode_b64u("h", parts[0]).unwrap(), br#"{"alg":"EdDSA","typ":"JWT"}"#);
        assert_eq!(
            String::from_utf8(decode_b64u("c", parts[1]).unwrap()).unwrap(),
            r#"{"exp":1700003600,"iat":1700000000,"iss":"relay","sub":"alice"}"#
        );
        let sig = decode_b64u_array::<64>("s", parts[2]).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(f.node.public_key().verify(input.as_bytes(), &sig).is_ok());

        let challenge = [7u8; 32];
        let mut expected = b"peerlink v1 auth\nrelay\x00".to_vec();
        expected.extend_from_slice(&challenge);
        assert_eq!(challenge_signing_input(&id("relay"), &challenge), expected);
        let sig = sign_challenge(&f.alice, &id("relay"), &b64u(&challenge)).unwrap();
        let sig = decode_b64u_array::<64>("s", &sig).unwrap();
        assert!(f.alice.public_key().verify(&expected, &sig).is_ok());
        // Sub-second parts of the clock are dropped.
        let t = Timestamp::from_unix_millis(T0 + 999);
        assert_eq!(f.auth.mint(f.alice.id(), t), jwt);
    }

    #[test]
    fn untrusted_entities_and_bad_keys_get_no_challenge() {
        let mut f = fixture();
        let carol = ident("carol", 4);
        let mallory_as_alice = ident("alice", 5);
        let err = |f: &mut Fixture, who: &EntityId, key: &str| {
            f.auth.challenge(who, key, &f.trust, now(), &mut f.rng).unwrap_err()
        };
        let carol_key = carol.public_key().to_b64u();
        assert_eq!(err(&mut f, carol.id(), &carol_key), AuthError::UntrustedEntity);
        let wrong_key = mallory_as_alice.public_key().to_b64u();
        assert_eq!(err(&mut f, &id("alice"), &wrong_key), AuthError::UntrustedEntity);
        // Bob's real key claimed for alice: known key, wrong entity.
        let bob_key = f.bob.public_key().to_b64u();
        assert_eq!(err(&mut f, &id("alice"), &bob_key), AuthError::UntrustedEntity);
        assert_eq!(err(&mut f, &id("alice"), "not-a-key"), AuthError::BadKey);
        assert_eq!(err(&mut f, &id("alice"), "AAAA"), AuthError::BadKey);
        assert_eq!(f.auth.pending(), 0);
        assert_eq!(AuthError::UntrustedEntity.http_status(), 403);
        assert_eq!(AuthError::UntrustedEntity.code(), ErrorCode::AuthenticationFailed);
        assert_eq!(AuthError::BadKey.http_status(), 400);
        assert_eq!(AuthError::BadKey.code(), ErrorCode::InvalidMessage);

        // The open policy accepts unknown entities, never a wrong key for a known one.
        let mut open = TrustStore::new(TrustPolicy::Open);
        open.insert(f.alice.id().clone(), f.alice.public_key());
        assert!(f.auth.challenge(carol.id(), &carol_key, &open, now(), &mut f.rng).is_ok());
        assert_eq!(
            f.auth.challenge(&id("alice"), &wrong_key, &open, now(), &mut f.rng),
            Err(AuthError::UntrustedEntity)
        );
    }

    #[test]
    fn challenges_are_single_use() {
        let mut f = fixture();
        let alice = copy(&f.alice);
        let ch = f.challenge_for(&alice, now());
        let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        assert!(f.auth.verify(alice.id(), &ch.challenge, &sig, now()).is_ok());
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, now()),
            Err(AuthError::UnknownChallenge)
        );

        // A failed answer consumes the challenge too.
        let ch = f.challenge_for(&alice, now());
        let bad = sign_challenge(&f.bob, f.node.id(), &ch.challenge).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &bad, now()),
            Err(AuthError::BadSignature)
        );
        let good = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &good, now()),
            Err(AuthError::UnknownChallenge)
        );
        assert_eq!(f.auth.pending(), 0);
    }

    #[test]
    fn unknown_and_misdirected_challenges() {
        let mut f = fixture();
        let alice = copy(&f.alice);
        let bob = copy(&f.bob);
        let never = b64u(&[9u8; 32]);
        let sig = sign_challenge(&alice, f.node.id(), &never).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &never, &sig, now()),
            Err(AuthError::UnknownChallenge)
        );
        for malformed in ["", "AAAA", "!!!!", &b64u(&[1u8; 31]), &format!("{never}=")] {
            assert_eq!(
                f.auth.verify(alice.id(), malformed, &sig, now()),
                Err(AuthError::UnknownChallenge)
            );
        }
        assert_eq!(sign_challenge(&alice, f.node.id(), "AAAA"), Err(AuthError::UnknownChallenge));

        // Bob answering (with his own key) the challenge issued to alice.
        let ch = f.challenge_for(&alice, now());
        let bob_sig = sign_challenge(&bob, f.node.id(), &ch.challenge).unwrap();
        assert_eq!(
            f.auth.verify(bob.id(), &ch.challenge, &bob_sig, now()),
            Err(AuthError::UnknownChallenge)
        );
        assert_eq!(AuthError::UnknownChallenge.http_status(), 401);
    }

    #[test]
    fn expired_challenges_are_refused() {
        let mut f = fixture();
        let alice = copy(&f.alice);
        let ch = f.challenge_for(&alice, now());
        let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, ch.expires_at),
            Err(AuthError::ExpiredChallenge)
        );
        assert_eq!(f.auth.pending(), 0, "consumed even though it expired");

        // One millisecond before expiry is still fine.
        let ch = f.challenge_for(&alice, now());
        let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        let just_before = Timestamp::from_unix_millis(ch.expires_at.as_unix_millis() - 1);
        assert!(f.auth.verify(alice.id(), &ch.challenge, &sig, just_before).is_ok());

        // expire() purges; then the challenge is simply unknown.
        let ch = f.challenge_for(&alice, now());
        let _keep = f.challenge_for(&alice, now().saturating_add(Duration::from_secs(10)));
        f.auth.expire(Timestamp::from_unix_millis(ch.expires_at.as_unix_millis() - 1));
        assert_eq!(f.auth.pending(), 2);
        f.auth.expire(ch.expires_at);
        assert_eq!(f.auth.pending(), 1);
        let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, now()),
            Err(AuthError::UnknownChallenge)
        );
    }

    #[test]
    fn bad_signatures_are_refused() {
        let mut f = fixture();
        let alice = copy(&f.alice);
        let other_node = id("other-relay");
        let good_for_other = |f: &mut Fixture| {
            let ch = f.challenge_for(&alice, now());
            let sig = sign_challenge(&alice, &other_node, &ch.challenge).unwrap();
            (ch, sig)
        };
        // Signed for another node: the node id is part of the signed bytes.
        let (ch, sig) = good_for_other(&mut f);
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, now()),
            Err(AuthError::BadSignature)
        );
        // Signed over another challenge.
        let ch = f.challenge_for(&alice, now());
        let sig = sign_challenge(&alice, f.node.id(), &b64u(&[0u8; 32])).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, now()),
            Err(AuthError::BadSignature)
        );
        // Malformed signatures.
        for sig in ["", "AAAA", &b64u(&[0u8; 64]), &b64u(&[1u8; 63])] {
            let ch = f.challenge_for(&alice, now());
            assert_eq!(
                f.auth.verify(alice.id(), &ch.challenge, sig, now()),
                Err(AuthError::BadSignature)
            );
        }
        // Context prefix matters: a raw signature over the challenge bytes is refused.
        let ch = f.challenge_for(&alice, now());
        let raw = decode_b64u("c", &ch.challenge).unwrap();
        let sig = b64u(&alice.sign(&raw));
        assert_eq!(
            f.auth.verify(alice.id(), &ch.challenge, &sig, now()),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn pending_challenges_are_bounded() {
        let mut f = fixture();
        let config = AuthConfig { max_pending_challenges: 3, ..AuthConfig::default() };
        f.auth = Authority::new(f.node.clone(), config);
        let alice = copy(&f.alice);
        let mut issued = Vec::new();
        for i in 0..10u64 {
            let t = now().saturating_add(Duration::from_millis(i));
            issued.push(f.challenge_for(&alice, t));
            assert!(f.auth.pending() <= 3);
        }
        assert_eq!(f.auth.pending(), 3);
        let t = now().saturating_add(Duration::from_millis(10));
        // The ones expiring first were evicted; the last three remain.
        for (i, ch) in issued.iter().enumerate() {
            let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
            let got = f.auth.verify(alice.id(), &ch.challenge, &sig, t);
            if i < 7 {
                assert_eq!(got, Err(AuthError::UnknownChallenge), "{i}");
            } else {
                assert!(got.is_ok(), "{i}: {got:?}");
            }
        }

        // A challenge issued at an earlier time (clock went back) expires first and goes first.
        let late = f.challenge_for(&alice, now().saturating_add(Duration::from_secs(5)));
        let early = f.challenge_for(&alice, now());
        let _a = f.challenge_for(&alice, now().saturating_add(Duration::from_secs(5)));
        let _b = f.challenge_for(&alice, now().saturating_add(Duration::from_secs(5)));
        assert_eq!(f.auth.pending(), 3);
        let t = now().saturating_add(Duration::from_secs(6));
        let sig = sign_challenge(&alice, f.node.id(), &early.challenge).unwrap();
        assert_eq!(
            f.auth.verify(alice.id(), &early.challenge, &sig, t),
            Err(AuthError::UnknownChallenge)
        );
        let sig = sign_challenge(&alice, f.node.id(), &late.challenge).unwrap();
        assert!(f.auth.verify(alice.id(), &late.challenge, &sig, t).is_ok());

        // Zero is treated as one, never a panic.
        let config = AuthConfig { max_pending_challenges: 0, ..AuthConfig::default() };
        assert!(config.validate().is_err());
        f.auth = Authority::new(f.node.clone(), config);
        let ch = f.challenge_for(&alice, now());
        assert_eq!(f.auth.pending(), 1);
        let sig = sign_challenge(&alice, f.node.id(), &ch.challenge).unwrap();
        assert!(f.auth.verify(alice.id(), &ch.challenge, &sig, now()).is_ok());
    }

    #[test]
    fn config_validation() {
        assert_eq!(AuthConfig::default().validate(), Ok(()));
        let d = AuthConfig::default();
        assert_eq!(d.token_lifetime, Duration::from_secs(3600));
        assert_eq!(d.challenge_lifetime, Duration::from_secs(30));
        assert_eq!(d.max_pending_challenges, 10_000);
        assert_eq!(d.clock_skew, Duration::from_secs(300));
        assert!(AuthConfig { token_lifetime: Duration::ZERO, ..d }.validate().is_err());
        assert!(
            AuthConfig { challenge_lifetime: Duration::from_millis(999), ..d }.validate().is_err()
        );
    }

    #[test]
    fn tokens_from_other_nodes_never_verify() {
        let f = fixture();
        let other = Authority::new(Arc::new(ident("other", 7)), AuthConfig::default());
        let foreign = other.mint(f.alice.id(), now());
        assert_eq!(f.auth.check(&foreign, None, now()), Err(AuthError::BadTokenSignature));
        // The same key under another node id: the signature verifies, the issuer does not match.
        let twin_identity = Identity::from_secret_bytes(id("twin"), &f.node.secret_bytes());
        let twin = Authority::new(Arc::new(twin_identity), AuthConfig::default());
        let token = twin.mint(f.alice.id(), now());
        assert_eq!(f.auth.check(&token, None, now()), Err(AuthError::WrongIssuer));
        assert_eq!(twin.check(&f.token(), None, now()), Err(AuthError::WrongIssuer));
        assert_eq!(twin.check(&token, None, now()), Ok(f.alice.id().clone()));
        // A forged iss with this node's key and a missing iss.
        let forged =
            forge(JWT_HEADER, &claims("relay2", "alice", T0 / 1000, T0 / 1000 + 60), &f.node);
        assert_eq!(f.auth.check(&forged, None, now()), Err(AuthError::WrongIssuer));
        let no_iss =
            forge(JWT_HEADER, r#"{"exp":1700003600,"iat":1700000000,"sub":"alice"}"#, &f.node);
        assert!(matches!(f.auth.check(&no_iss, None, now()), Err(AuthError::MalformedToken(_))));
    }

    #[test]
    fn expiry_and_not_before_with_skew() {
        let f = fixture();
        let token = f.token();
        let exp_ms = T0 + 3_600_000;
        let skew = 300_000;
        let at = Timestamp::from_unix_millis;
        assert!(f.auth.check(&token, None, at(exp_ms + skew - 1)).is_ok());
        assert_eq!(f.auth.check(&token, None, at(exp_ms + skew)), Err(AuthError::Expired));
        assert_eq!(f.auth.check(&token, None, at(u64::MAX)), Err(AuthError::Expired));
        assert!(f.auth.check(&token, None, at(T0 - skew)).is_ok());
        assert_eq!(f.auth.check(&token, None, at(T0 - skew - 1)), Err(AuthError::NotYetValid));
        assert_eq!(f.auth.check(&token, None, at(0)), Err(AuthError::NotYetValid));
        // nbf, when present, counts too.
        let c = format!(
            r#"{{"exp":{},"iat":{},"iss":"relay","nbf":{},"sub":"alice"}}"#,
            T0 / 1000 + 3600,
            T0 / 1000,
            T0 / 1000 + 1000
        );
        let nbf = forge(JWT_HEADER, &c, &f.node);
        assert_eq!(f.auth.check(&nbf, None, now()), Err(AuthError::NotYetValid));
        assert!(f.auth.check(&nbf, None, at(T0 + 1_000_000 - skew)).is_ok());
        // A zero skew is exact.
        let strict = Authority::new(
            f.node.clone(),
            AuthConfig { clock_skew: Duration::ZERO, ..AuthConfig::default() },
        );
        assert_eq!(strict.check(&token, None, at(exp_ms)), Err(AuthError::Expired));
        assert!(strict.check(&token, None, at(exp_ms - 1)).is_ok());
        assert_eq!(strict.check(&token, None, at(T0 - 1)), Err(AuthError::NotYetValid));
        assert_eq!(AuthError::Expired.http_status(), 401);
    }

    #[test]
    fn only_eddsa_is_accepted() {
        let f = fixture();
        let c = good_claims();
        assert!(f.auth.check(&forge(JWT_HEADER, &c, &f.node), None, now()).is_ok());
        assert!(f.auth.check(&forge(r#"{"alg":"EdDSA"}"#, &c, &f.node), None, now()).is_ok());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"eddsa"}"#,
            r#"{"alg":"Ed25519"}"#,
            r#"{"alg":"EdDSA "}"#,
            r#"{"alg":null}"#,
            r#"{"alg":["EdDSA"]}"#,
            r#"{"typ":"JWT"}"#,
            r#"{}"#,
        ] {
            // Even with a valid signature by the node key, the algorithm decides.
            let token = forge(header, &c, &f.node);
            assert_eq!(
                f.auth.check(&token, None, now()),
                Err(AuthError::WrongAlgorithm),
                "{header}"
            );
        }
        // The classic "alg":"none" token with an empty signature.
        let none = format!("{}.{}.", b64u(br#"{"alg":"none","typ":"JWT"}"#), b64u(c.as_bytes()));
        assert_eq!(f.auth.check(&none, None, now()), Err(AuthError::WrongAlgorithm));
        for header in [
            r#"{"alg":"EdDSA","typ":"jwt"}"#,
            r#"{"alg":"EdDSA","typ":1}"#,
            r#"{"alg":"EdDSA","crit":["b64"],"b64":false}"#,
            r#"{"alg":"EdDSA","alg":"EdDSA"}"#,
            r#"["EdDSA"]"#,
            r#"{"alg":"EdDSA"} x"#,
        ] {
            let token = forge(header, &c, &f.node);
            assert!(
                matches!(f.auth.check(&token, None, now()), Err(AuthError::MalformedToken(_))),
                "{header}"
            );
        }
    }

    #[test]
    fn malformed_claims_are_refused() {
        let f = fixture();
        let (iat, exp) = (T0 / 1000, T0 / 1000 + 3600);
        for c in [
            format!(r#"{{"exp":"{exp}","iat":{iat},"iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iat":"{iat}","iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":{exp}.5,"iat":{iat},"iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":-1,"iat":{iat},"iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay","nbf":true,"sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay","sub":"al ice"}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay","sub":7}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay"}}"#),
            format!(r#"{{"iat":{iat},"iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iss":"relay","sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":["relay"],"sub":"alice"}}"#),
            format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay","sub":"alice","sub":"bob"}}"#),
            format!(r#"{{"exp":99999999999999999,"iat":{iat},"iss":"relay","sub":"alice"}}"#),
            "[]".to_owned(),
            "\"alice\"".to_owned(),
            "not json".to_owned(),
        ] {
            let token = forge(JWT_HEADER, &c, &f.node);
            let got = f.auth.check(&token, None, now());
            assert!(matches!(got, Err(AuthError::MalformedToken(_))), "{c}: {got:?}");
        }
        // Unknown claims are ignored (RFC 7519 §4), but signed.
        let extra = format!(r#"{{"exp":{exp},"iat":{iat},"iss":"relay","jti":"x","sub":"alice"}}"#);
        assert!(f.auth.check(&forge(JWT_HEADER, &extra, &f.node), None, now()).is_ok());
        assert_eq!(AuthError::MalformedToken("x").http_status(), 401);
        assert_eq!(AuthError::MalformedToken("x").code(), ErrorCode::AuthenticationFailed);
    }

    #[test]
    fn tampering_is_detected() {
        let f = fixture();
        let token = f.token();
        let parts: Vec<&str> = token.split('.').collect();
        let (h, c, s) = (parts[0], parts[1], parts[2]);

        let header2 = b64u(br#"{"alg":"EdDSA","typ":"JWT","kid":"x"}"#);
        let t = format!("{header2}.{c}.{s}");
        assert_eq!(f.auth.check(&t, None, now()), Err(AuthError::BadTokenSignature));

        let claims2 = b64u(claims("relay", "bob", T0 / 1000, T0 / 1000 + 3600).as_bytes());
        let t = format!("{h}.{claims2}.{s}");
        assert_eq!(f.auth.check(&t, None, now()), Err(AuthError::BadTokenSignature));
        let longer = b64u(claims("relay", "alice", T0 / 1000, T0 / 1000 + 999_999).as_bytes());
        let t = format!("{h}.{longer}.{s}");
        assert_eq!(f.auth.check(&t, None, now()), Err(AuthError::BadTokenSignature));

        let mut sig = decode_b64u("s", s).unwrap();
        sig[10] ^= 1;
        let t = format!("{h}.{c}.{}", b64u(&sig));
        assert_eq!(f.auth.check(&t, None, now()), Err(AuthError::BadTokenSignature));

        // Flipping only the unused trailing bits of a part keeps its bytes but is not canonical.
        let flip_last = |part: &str| {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let last = part.as_bytes()[part.len() - 1];
            let v = ALPHABET.iter().position(|&b| b == last).unwrap();
            format!("{}{}", &part[..part.len() - 1], char::from(ALPHABET[v ^ 1]))
        };
        assert_eq!(s.len() % 4, 2, "64 bytes leave 4 unused bits");
        let loose = flip_last(s);
        assert_eq!(URL_SAFE_NO_PAD_LENIENT.decode(&loose).unwrap(), decode_b64u("s", s).unwrap());
        let t = format!("{h}.{c}.{loose}");
        assert!(matches!(f.auth.check(&t, None, now()), Err(AuthError::MalformedToken(_))));
        if c.len() % 4 != 0 {
            let t = format!("{h}.{}.{s}", flip_last(c));
            assert!(f.auth.check(&t, None, now()).is_err());
        }

        // Signature by the subject instead of the node.
        let t = forge(JWT_HEADER, &good_claims(), &f.alice);
        assert_eq!(f.auth.check(&t, None, now()), Err(AuthError::BadTokenSignature));

        for bad in [
            format!("{h}.{c}"),
            format!("{h}.{c}.{s}."),
            format!("{h}.{c}.{s}.{s}"),
            format!("{h}.{c}.{s}="),
            format!("{h}=.{c}.{s}"),
            format!("{h}.{c}.{}", b64u(&[0u8; 63])),
            format!(" {h}.{c}.{s}"),
            format!("{h}.{c}.{s}\n"),
            String::new(),
            "..".to_owned(),
        ] {
            let got = f.auth.check(&bad, None, now());
            assert!(matches!(got, Err(AuthError::MalformedToken(_))), "{bad:?}: {got:?}");
        }
        assert_eq!(AuthError::BadTokenSignature.http_status(), 401);
    }

    #[test]
    fn expected_subject_is_enforced() {
        let f = fixture();
        let token = f.token();
        assert_eq!(f.auth.check(&token, Some(f.bob.id()), now()), Err(AuthError::WrongSubject));
        assert_eq!(f.auth.check(&token, Some(f.alice.id()), now()), Ok(f.alice.id().clone()));
        let bob_token = f.auth.mint(f.bob.id(), now());
        assert_eq!(
            f.auth.check(&bob_token, Some(f.alice.id()), now()),
            Err(AuthError::WrongSubject)
        );
    }

    #[test]
    fn oversize_tokens_are_refused_unparsed() {
        let f = fixture();
        let long_id = "a".repeat(64);
        // A valid token padded with an ignored, signed claim up to exactly the limit.
        let fill = |n: usize| {
            let c = format!(
                r#"{{"exp":{},"iat":{},"iss":"relay","pad":"{}","sub":"{long_id}"}}"#,
                T0 / 1000 + 3600,
                T0 / 1000,
                "x".repeat(n)
            );
            forge(JWT_HEADER, &c, &f.node)
        };
        let mut n = 0;
        while fill(n + 1).len() <= MAX_TOKEN_LEN {
            n += 1;
        }
        // b64u grows in steps, so find the largest token not over the limit and one over it.
        let fits = fill(n);
        assert!(fits.len() <= MAX_TOKEN_LEN && fits.len() > MAX_TOKEN_LEN - 4);
        assert_eq!(f.auth.check(&fits, None, now()), Ok(id(&long_id)));
        let over = fill(n + 1);
        assert!(over.len() > MAX_TOKEN_LEN);
        assert_eq!(
            f.auth.check(&over, None, now()),
            Err(AuthError::MalformedToken("token too long"))
        );
    }

    #[test]
    fn debug_hides_challenges_and_secrets() {
        let mut f = fixture();
        let alice = copy(&f.alice);
        let ch = f.challenge_for(&alice, now());
        let shown = format!("{:?}", f.auth);
        assert!(!shown.contains(&ch.challenge), "{shown}");
        assert!(!shown.contains(&b64u(f.node.secret_bytes().as_slice())), "{shown}");
        assert!(shown.contains("pending: 1"), "{shown}");
        assert!(shown.contains("relay"), "{shown}");
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    /// A copy of an identity, so tests can hold one while borrowing the fixture mutably.
    fn copy(identity: &Identity) -> Identity {
        Identity::from_secret_bytes(identity.id().clone(), &identity.secret_bytes())
    }

    /// The decoded bytes of a token's three parts, if it has three valid b64u parts.
    fn decoded_parts(token: &str) -> Option<Vec<Vec<u8>>> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return None;
        }
        parts.iter().map(|p| decode_b64u("p", p).ok()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_never_verify(s in any::<String>(), dotted in "[A-Za-z0-9_.=-]{0,200}") {
            let f = fixture();
            prop_assert!(f.auth.check(&s, None, now()).is_err());
            prop_assert!(f.auth.check(&dotted, None, now()).is_err());
            let token = f.token();
            let appended = format!("{token}{s}");
            prop_assert!(s.is_empty() || f.auth.check(&appended, None, now()).is_err());
        }

        #[test]
        fn single_character_mutations_never_verify(
            index in any::<prop::sample::Index>(),
            replacement in prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é"
                    .chars().collect::<Vec<char>>()),
            op in 0..3u8,
        ) {
            let f = fixture();
            let token = f.token();
            let mut chars: Vec<char> = token.chars().collect();
            let i = index.index(chars.len());
            match op {
                0 => chars[i] = replacement,
                1 => { chars.remove(i); }
                _ => chars.insert(i, replacement),
            }
            let mutated: String = chars.into_iter().collect();
            prop_assume!(mutated != token);
            let got = f.auth.check(&mutated, None, now());
            if got.is_ok() {
                // Only acceptable if the mutation decodes to the very same bytes (the strict
                // b64u decoder makes even that impossible, see `tampering_is_detected`).
                let same = decoded_parts(&mutated).is_some()
                    && decoded_parts(&mutated) == decoded_parts(&token);
                prop_assert!(same, "mutation {:?} verified", mutated);
            }
        }
    }
}
