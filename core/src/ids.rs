//! Identifiers on the wire: entity ids, session ids and message ids.
//!
//! All three are short ASCII strings that are safe in URLs, query strings and HTTP headers.
//! - An **entity id** names a participant: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`. It is bound to an
//!   Ed25519 public key by the [`TrustStore`](crate::identity::TrustStore), not derived from it.
//! - A **session id** is `sess_` followed by 22 base64url characters (16 random bytes), chosen by
//!   the handshake responder.
//! - A **message id** is 1 to 64 bytes of `A-Z a-z 0-9 _ -`; peerlink generates 22 base64url
//!   characters (16 random bytes). It stays the same when a message is re-sent, which is what
//!   receivers deduplicate on.
//! - An **application type** names a kind of application message, with an entity id's syntax.

use std::fmt;

use rand_core::CryptoRng;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoding::b64u;
use crate::error::UsageError;

const MAX_ID_LEN: usize = 64;

fn check_id(kind: &'static str, s: &str, allow_dot: bool) -> Result<(), UsageError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(UsageError::InvalidId { kind, reason: "length must be 1 to 64 bytes" });
    }
    let ok =
        |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (allow_dot && b == b'.');
    if !s.bytes().all(ok) {
        return Err(UsageError::InvalidId { kind, reason: "character outside the allowed set" });
    }
    Ok(())
}

/// The bytes of an id, held inline: ids are at most 64 ASCII bytes, so a copy never allocates
/// (the node copies ids into its maps and envelopes for every frame). Unused bytes are zero and
/// no id contains a zero byte, so comparing the arrays orders ids exactly as their strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Inline {
    bytes: [u8; MAX_ID_LEN],
    len: u8,
}

impl Inline {
    /// Copies `s`, which the caller has checked is 1 to 64 ASCII bytes.
    fn copy(s: &str) -> Self {
        let mut bytes = [0u8; MAX_ID_LEN];
        let len = s.len().min(MAX_ID_LEN);
        for (to, from) in bytes.iter_mut().zip(s.as_bytes()) {
            *to = *from;
        }
        Self { bytes, len: u8::try_from(len).unwrap_or(0) }
    }

    fn as_str(&self) -> &str {
        let used = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Always ASCII: every constructor checked it.
        std::str::from_utf8(used).unwrap_or_default()
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $allow_dot:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Inline);

        impl $name {
            /// Validates `s` against the spec's syntax.
            pub fn new(s: impl AsRef<str>) -> Result<Self, UsageError> {
                let s = s.as_ref();
                check_id($kind, s, $allow_dot)?;
                Ok(Self(Inline::copy(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UsageError;
            fn from_str(s: &str) -> Result<Self, UsageError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Text;
                impl Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($kind)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        $name::new(s).map_err(E::custom)
                    }
                }
                d.deserialize_str(Text)
            }
        }
    };
}

string_id!(
    /// The name of a participant (spec §"Identities").
    EntityId, "entity id", true
);
string_id!(
    /// Names one end-to-end session; chosen by the handshake responder.
    SessionId, "session id", false
);
string_id!(
    /// Names one application message across all its re-sends.
    MessageId, "message id", false
);
string_id!(
    /// An application-defined message type (spec §13.1 `app_type`), e.g. `MODEL_CREATED` or
    /// `training.progress`: the same syntax as an entity id. It travels encrypted, inside the
    /// data frame, so relays never see it; the receiving application dispatches on it.
    AppType, "application type", true
);

impl SessionId {
    /// A fresh session id: `sess_` and 16 random bytes in base64url.
    pub fn random(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(Inline::copy(&format!("sess_{}", b64u(&bytes))))
    }
}

impl MessageId {
    /// A fresh message id: 16 random bytes in base64url.
    pub fn random(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(Inline::copy(&b64u(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn syntax_is_enforced() {
        assert!(EntityId::new("alice.example-01_x").is_ok());
        assert!(EntityId::new("").is_err());
        assert!(EntityId::new("a".repeat(65)).is_err());
        assert!(EntityId::new("a".repeat(64)).is_ok());
        assert!(EntityId::new("a b").is_err());
        assert!(EntityId::new("é").is_err());
        assert!(SessionId::new("sess.1").is_err(), "no dots in session ids");
        assert!(MessageId::new("abc/def").is_err());
        assert!(AppType::new("training.progress").is_ok());
        assert!(AppType::new("MODEL_CREATED").is_ok());
        assert!(AppType::new("no spaces").is_err());
        assert!(AppType::new("").is_err());
        let parsed: Result<EntityId, _> = serde_json::from_str("\"bad id\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn escaped_json_decodes_to_the_same_id() {
        let plain: EntityId = serde_json::from_str("\"alice.b\"").unwrap();
        let escaped: EntityId = serde_json::from_str("\"al\\u0069ce.b\"").unwrap();
        assert_eq!(plain, escaped);
        assert_eq!(escaped.as_str(), "alice.b");
        assert_eq!(serde_json::to_string(&escaped).unwrap(), "\"alice.b\"");
    }

    proptest::proptest! {
        /// Inline storage must behave exactly like the string it holds: same text, same order,
        /// same equality, whatever the lengths.
        #[test]
        fn ids_compare_like_their_strings(a in "[A-Za-z0-9._-]{1,64}", b in "[A-Za-z0-9._-]{1,64}") {
            let (x, y) = (EntityId::new(&a).unwrap(), EntityId::new(&b).unwrap());
            proptest::prop_assert_eq!(x.as_str(), a.as_str());
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert_eq!(x == y, a == b);
            let prefix = &a[..a.len() / 2];
            if !prefix.is_empty() {
                let p = EntityId::new(prefix).unwrap();
                proptest::prop_assert_eq!(p.cmp(&x), prefix.cmp(a.as_str()));
            }
        }
    }

    #[test]
    fn random_ids_are_valid_and_seeded() {
        let mut a = ChaCha20Rng::seed_from_u64(7);
        let mut b = ChaCha20Rng::seed_from_u64(7);
        let s = SessionId::random(&mut a);
        assert_eq!(s, SessionId::random(&mut b));
        assert!(SessionId::new(s.as_str()).is_ok());
        assert_eq!(s.as_str().len(), 27);
        let m = MessageId::random(&mut a);
        assert!(MessageId::new(m.as_str()).is_ok());
        assert_ne!(m, MessageId::random(&mut a));
    }
}
