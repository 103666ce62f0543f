//! Typed payloads of the six handshake messages (spec §"Handshake messages").

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capabilities::Capabilities;
use crate::encoding::{b64u, decode_b64u_array};
use crate::envelope::Payload;
use crate::error::ProtocolError;
use crate::identity::PublicKey;

/// Most versions an initiator may offer.
const MAX_VERSIONS: usize = 8;

fn parse<T: DeserializeOwned>(payload: &Payload) -> Result<T, ProtocolError> {
    T::deserialize(payload.value()).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

fn to_payload<T: Serialize>(t: &T) -> Payload {
    // Handshake payloads hold only strings, booleans, integers within 2^53 - 1, arrays and
    // objects: serializing them cannot fail and the result is always canonicalizable.
    Payload::trusted(serde_json::to_value(t).unwrap_or_default())
}

/// Step 1, `HANDSHAKE_INIT`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitPayload {
    /// Initiator's Ed25519 public key.
    pub identity_key: String,
    /// Initiator's X25519 ephemeral public key.
    pub ephemeral_key: String,
    /// Versions the initiator speaks, most preferred first.
    pub versions: Vec<String>,
    /// Initiator's capability offer.
    pub capabilities: Value,
}

/// Step 2, `HANDSHAKE_INIT_ACK`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitAckPayload {
    /// Responder's Ed25519 public key.
    pub identity_key: String,
    /// Responder's X25519 ephemeral public key.
    pub ephemeral_key: String,
    /// The version chosen from the initiator's list.
    pub version: String,
    /// 32 fresh random bytes the initiator must sign.
    pub challenge: String,
    /// Responder's capability offer.
    pub capabilities: Value,
    /// TH1: binds this message to step 1.
    pub transcript: String,
}

/// Step 3, `CHALLENGE_RESPONSE`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponsePayload {
    /// The responder's challenge, echoed.
    pub challenge: String,
    /// TH2: what the envelope signature (the signed challenge) commits to.
    pub transcript: String,
}

/// Steps 4, 5 and 6: a key-confirmation tag.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmPayload {
    /// HMAC-SHA256 confirmation tag.
    pub confirm: String,
}

/// Step 1, parsed and checked.
pub struct Init {
    pub identity_key: PublicKey,
    pub ephemeral_key: [u8; 32],
    pub versions: Vec<String>,
    pub capabilities: Capabilities,
}

impl Init {
    pub fn payload(
        identity: &PublicKey,
        ephemeral: &[u8; 32],
        versions: &[&str],
        caps: &Capabilities,
    ) -> Payload {
        to_payload(&InitPayload {
            identity_key: identity.to_b64u(),
            ephemeral_key: b64u(ephemeral),
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            capabilities: caps.to_value(),
        })
    }

    pub fn parse(payload: &Payload) -> Result<Self, ProtocolError> {
        let p: InitPayload = parse(payload)?;
        if p.versions.is_empty() || p.versions.len() > MAX_VERSIONS {
            return Err(ProtocolError::InvalidField {
                field: "versions",
                reason: "must list 1 to 8 versions",
            });
        }
        Ok(Self {
            identity_key: PublicKey::from_b64u(&p.identity_key)?,
            ephemeral_key: decode_b64u_array("ephemeral_key", &p.ephemeral_key)?,
            versions: p.versions,
            capabilities: Capabilities::from_value(&p.capabilities)?,
        })
    }
}

/// Step 2, parsed and checked.
pub struct InitAck {
    pub identity_key: PublicKey,
    pub ephemeral_key: [u8; 32],
    pub version: String,
    pub challenge: [u8; 32],
    pub capabilities: Capabilities,
    pub transcript: [u8; 32],
}

impl InitAck {
    pub fn payload(&self) -> Payload {
        to_payload(&InitAckPayload {
            identity_key: self.identity_key.to_b64u(),
            ephemeral_key: b64u(&self.ephemeral_key),
            version: self.version.clone(),
            challenge: b64u(&self.challenge),
            capabilities: self.capabilities.to_value(),
            transcript: b64u(&self.transcript),
        })
    }

    pub fn parse(payload: &Payload) -> Result<Self, ProtocolError> {
        let p: InitAckPayload = parse(payload)?;
        Ok(Self {
            identity_key: PublicKey::from_b64u(&p.identity_key)?,
            ephemeral_key: decode_b64u_array("ephemeral_key", &p.ephemeral_key)?,
            version: p.version,
            challenge: decode_b64u_array("challenge", &p.challenge)?,
            capabilities: Capabilities::from_value(&p.capabilities)?,
            transcript: decode_b64u_array("transcript", &p.transcript)?,
        })
    }
}

/// Step 3, parsed.
pub struct ChallengeResponse {
    pub challenge: [u8; 32],
    pub transcript: [u8; 32],
}

impl ChallengeResponse {
    pub fn payload(&self) -> Payload {
        to_payload(&ChallengeResponsePayload {
            challenge: b64u(&self.challenge),
            transcript: b64u(&self.transcript),
        })
    }

    pub fn parse(payload: &Payload) -> Result<Self, ProtocolError> {
        let p: ChallengeResponsePayload = parse(payload)?;
        Ok(Self {
            challenge: decode_b64u_array("challenge", &p.challenge)?,
            transcript: decode_b64u_array("transcript", &p.transcript)?,
        })
    }
}

/// Steps 4 to 6: the confirmation tag.
pub fn confirm_payload(tag: &[u8; 32]) -> Payload {
    to_payload(&ConfirmPayload { confirm: b64u(tag) })
}

/// Parses steps 4 to 6.
pub fn parse_confirm(payload: &Payload) -> Result<[u8; 32], ProtocolError> {
    let p: ConfirmPayload = parse(payload)?;
    decode_b64u_array("confirm", &p.confirm)
}
