//! Ed25519 identities and the trust store that binds entity ids to public keys.
//!
//! An [`Identity`] is what a node is: an [`EntityId`] plus an Ed25519 signing key. The key is
//! zeroized when the identity is dropped and never appears in `Debug` output. A [`PublicKey`] is
//! what others know of it. The [`TrustStore`] is the allowlist of seed 003: the set of entities a
//! node will talk to and the key each must prove possession of.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::encoding::{b64u, decode_b64u_array};
use crate::error::ProtocolError;
use crate::ids::EntityId;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A local participant: an entity id and its Ed25519 signing key.
pub struct Identity {
    id: EntityId,
    key: SigningKey,
}

impl Identity {
    /// A new identity with a key drawn from `rng`.
    pub fn generate(id: EntityId, rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self { id, key: SigningKey::generate(rng) }
    }

    /// An identity from a 32-byte Ed25519 secret key (RFC 8032 seed).
    pub fn from_secret_bytes(id: EntityId, secret: &[u8; 32]) -> Self {
        Self { id, key: SigningKey::from_bytes(secret) }
    }

    /// A second handle on the same identity (for a driver that needs one per task), without
    /// deriving the public key again as [`from_secret_bytes`](Self::from_secret_bytes) does
    /// (a scalar multiplication). Both copies zeroize their key when dropped.
    pub fn duplicate(&self) -> Self {
        Self { id: self.id.clone(), key: self.key.clone() }
    }

    /// The 32-byte secret key, for storing the identity; zeroized when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The entity id.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// The public key others verify this identity's signatures with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Signs `message` (RFC 8032 Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes; fails if they are not a valid compressed Edwards point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, ProtocolError> {
        VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| ProtocolError::InvalidField {
            field: "identity_key",
            reason: "not an Ed25519 public key",
        })
    }

    /// Parses the base64url form used on the wire and in configuration.
    pub fn from_b64u(s: &str) -> Result<Self, ProtocolError> {
        Self::from_bytes(&decode_b64u_array::<32>("identity_key", s)?)
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The base64url form used on the wire and in configuration.
    pub fn to_b64u(&self) -> String {
        b64u(self.0.as_bytes())
    }

    /// Verifies an Ed25519 signature with the strict rules of spec §"Signatures": non-canonical
    /// `S`, small-order keys and small-order `R` are rejected.
    pub fn verify(
        &self,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), ProtocolError> {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).map_err(|_| ProtocolError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_b64u())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64u())
    }
}

/// Who may connect when an entity is not in the trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustPolicy {
    /// Only entities in the store are accepted (the default, and the seeds' allowlist).
    #[default]
    Allowlist,
    /// Unknown entities are accepted with the key they present. Known entities must still present
    /// the key the store holds for them. Use only where any holder of a key may take any unused id.
    Open,
}

/// The allowlist: entity id → the public key that entity must prove it holds.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    policy: TrustPolicy,
    keys: BTreeMap<EntityId, PublicKey>,
}

impl TrustStore {
    /// An empty store with the given policy.
    pub fn new(policy: TrustPolicy) -> Self {
        Self { policy, keys: BTreeMap::new() }
    }

    /// Adds or replaces the key for `id`; returns the key it replaced.
    pub fn insert(&mut self, id: EntityId, key: PublicKey) -> Option<PublicKey> {
        self.keys.insert(id, key)
    }

    /// Removes `id`; returns its key if it was present.
    pub fn remove(&mut self, id: &EntityId) -> Option<PublicKey> {
        self.keys.remove(id)
    }

    /// The key stored for `id`.
    pub fn get(&self, id: &EntityId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    /// The store's policy for unknown entities.
    pub fn policy(&self) -> TrustPolicy {
        self.policy
    }

    /// Number of entities in the store.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store holds no entity.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Decides whether `id`, presenting `presented`, may authenticate; returns the key to verify
    /// its signatures with. A known id with another key is always refused, whatever the policy.
    pub fn authorize(
        &self,
        id: &EntityId,
        presented: &PublicKey,
    ) -> Result<PublicKey, ProtocolError> {
        match (self.keys.get(id), self.policy) {
            (Some(known), _) if known == presented => Ok(*known),
            (Some(_), _) => Err(ProtocolError::IdentityKeyMismatch(id.clone())),
            (None, TrustPolicy::Open) => Ok(*presented),
            (None, TrustPolicy::Allowlist) => Err(ProtocolError::UntrustedIdentity(id.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn ident(name: &str, seed: u64) -> Identity {
        Identity::generate(EntityId::new(name).unwrap(), &mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let id = ident("alice", 1);
        let secret = b64u(id.secret_bytes().as_slice());
        let shown = format!("{id:?} {:?}", id.public_key());
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains(&id.public_key().to_b64u()));
        let restored = Identity::from_secret_bytes(id.id().clone(), &id.secret_bytes());
        assert_eq!(restored.public_key(), id.public_key());
    }

    #[test]
    fn a_duplicate_is_the_same_identity() {
        let id = ident("alice", 1);
        let twin = id.duplicate();
        assert_eq!(twin.id(), id.id());
        assert_eq!(twin.public_key(), id.public_key());
        assert_eq!(*twin.secret_bytes(), *id.secret_bytes());
        assert_eq!(twin.sign(b"hello"), id.sign(b"hello"));
    }

    #[test]
    fn signatures_verify_strictly() {
        let id = ident("alice", 1);
        let sig = id.sign(b"hello");
        assert!(id.public_key().verify(b"hello", &sig).is_ok());
        assert_eq!(id.public_key().verify(b"hellO", &sig), Err(ProtocolError::BadSignature));
        let other = ident("bob", 2);
        assert_eq!(other.public_key().verify(b"hello", &sig), Err(ProtocolError::BadSignature));
        assert!(PublicKey::from_b64u(&id.public_key().to_b64u()).is_ok());
        assert!(PublicKey::from_b64u("AAAA").is_err());
    }

    #[test]
    fn trust_store_policies() {
        let alice = ident("alice", 1);
        let mallory = ident("alice", 3);
        let bob = ident("bob", 2);
        let mut store = TrustStore::new(TrustPolicy::Allowlist);
        store.insert(alice.id().clone(), alice.public_key());
        assert_eq!(store.authorize(alice.id(), &alice.public_key()), Ok(alice.public_key()));
        assert_eq!(
            store.authorize(alice.id(), &mallory.public_key()),
            Err(ProtocolError::IdentityKeyMismatch(alice.id().clone()))
        );
        assert_eq!(
            store.authorize(bob.id(), &bob.public_key()),
            Err(ProtocolError::UntrustedIdentity(bob.id().clone()))
        );
        let mut open = TrustStore::new(TrustPolicy::Open);
        open.insert(alice.id().clone(), alice.public_key());
        assert_eq!(open.authorize(bob.id(), &bob.public_key()), Ok(bob.public_key()));
        assert!(open.authorize(alice.id(), &mallory.public_key()).is_err());
    }
}
