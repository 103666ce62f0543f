//! An established end-to-end session: sealing and opening data messages (spec §"Sessions").
//!
//! Each direction has its own ChaCha20-Poly1305 key and its own sequence counter. The counter is
//! the envelope's `seq`, starts at 1, and forms the AEAD nonce `00 00 00 00 || u64be(seq)` (also
//! carried, base64url, in `nonce`). The associated data is the envelope without `payload` and
//! `signature` ([`Envelope::associated_data`]), so no routing field can change in flight. A
//! receiver accepts a `seq` once, within a sliding [`ReplayWindow`], and only with a timestamp
//! within the allowed skew. With `sign_all` negotiated, every message also carries an Ed25519
//! signature, verified after the (much cheaper) AEAD tag.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, Payload as AeadPayload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::canonical::MAX_SAFE_INTEGER;
use crate::capabilities::Capabilities;
use crate::envelope::{AAD_CONTEXT, Envelope, NONCE_LEN, PROTOCOL_VERSION, Payload};
use crate::error::{ProtocolError, UsageError};
use crate::handshake::keys::{Hash, KeySchedule};
use crate::identity::{Identity, PublicKey, SIGNATURE_LEN};
use crate::ids::{EntityId, MessageId, SessionId};
use crate::limits::Limits;
use crate::message_type::{MessageClass, MessageType};
use crate::replay::ReplayWindow;
use crate::time::Timestamp;

/// Length of the Poly1305 tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Label of the resumption proof (spec §"Recovery").
pub const RESUMPTION_PROOF_CONTEXT: &[u8] = b"peerlink v1 resume";

/// Which side of the handshake this session was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sent `HANDSHAKE_INIT`.
    Initiator,
    /// Answered it.
    Responder,
}

/// Everything a session is built from (internal).
pub(crate) struct SessionParams<'a> {
    pub role: Role,
    pub local: Arc<Identity>,
    pub peer_id: EntityId,
    pub peer_key: PublicKey,
    pub session_id: SessionId,
    pub capabilities: Capabilities,
    pub keys: &'a KeySchedule,
    pub handshake_hash: Hash,
    pub limits: &'a Limits,
}

/// A message opened by [`Session::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message's type.
    pub message_type: MessageType,
    /// Its id (the same across re-sends).
    pub message_id: MessageId,
    /// Its sequence number in this session.
    pub seq: u64,
    /// The sender's timestamp.
    pub timestamp: Timestamp,
    /// The decrypted content.
    pub plaintext: Vec<u8>,
}

/// An established session with one peer.
pub struct Session {
    role: Role,
    local: Arc<Identity>,
    peer_id: EntityId,
    peer_key: PublicKey,
    id: SessionId,
    capabilities: Capabilities,
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
    last_sent: u64,
    window: ReplayWindow,
    resumption: Zeroizing<[u8; 32]>,
    handshake_hash: Hash,
    max_skew: Duration,
    max_frame_bytes: usize,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("local", self.local.id())
            .field("peer", &self.peer_id)
            .field("capabilities", &self.capabilities)
            .field("last_sent", &self.last_sent)
            .field("highest_received", &self.window.highest())
            .finish_non_exhaustive()
    }
}

fn nonce_for(seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    let (_, counter) = nonce.split_at_mut(4);
    counter.copy_from_slice(&seq.to_be_bytes());
    nonce
}

/// Length of unpadded base64url for `n` bytes.
const fn b64u_len(n: usize) -> usize {
    n.saturating_mul(4).saturating_add(2) / 3
}

/// The exact length of a sealed frame, known before encrypting: the associated data's JSON with
/// the `payload` and `signature` members inserted, both base64url strings (never escaped) or null.
fn frame_len(aad_len: usize, ciphertext_len: usize, signed: bool) -> usize {
    let signature = if signed { b64u_len(SIGNATURE_LEN) + 2 } else { "null".len() };
    aad_len
        .saturating_sub(AAD_CONTEXT.len())
        .saturating_add(r#","payload":"""#.len())
        .saturating_add(b64u_len(ciphertext_len))
        .saturating_add(r#","signature":"#.len())
        .saturating_add(signature)
}

impl Session {
    pub(crate) fn new(p: SessionParams<'_>) -> Self {
        let (send_key, recv_key) = match p.role {
            Role::Initiator => (&p.keys.i2r, &p.keys.r2i),
            Role::Responder => (&p.keys.r2i, &p.keys.i2r),
        };
        // `HandshakeConfig` validated the size; the default is only a formality.
        let window = ReplayWindow::new(p.limits.replay_window).unwrap_or_default();
        // Never send more than either side accepts (spec §8.2).
        let agreed = usize::try_from(p.capabilities.max_frame_bytes).unwrap_or(usize::MAX);
        let max_frame_bytes = p.limits.max_frame_bytes.min(agreed);
        Self {
            role: p.role,
            local: p.local,
            peer_id: p.peer_id,
            peer_key: p.peer_key,
            id: p.session_id,
            capabilities: p.capabilities,
            send: ChaCha20Poly1305::new(&(**send_key).into()),
            recv: ChaCha20Poly1305::new(&(**recv_key).into()),
            last_sent: 0,
            window,
            resumption: p.keys.resumption.clone(),
            handshake_hash: p.handshake_hash,
            max_skew: p.limits.max_clock_skew,
            max_frame_bytes,
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// This side's role in the handshake.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's entity id.
    pub fn peer(&self) -> &EntityId {
        &self.peer_id
    }

    /// The peer's identity key.
    pub fn peer_key(&self) -> &PublicKey {
        &self.peer_key
    }

    /// The capabilities both sides agreed on.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// TH6, the hash of the whole handshake; equal on both sides of a session.
    pub fn handshake_hash(&self) -> &Hash {
        &self.handshake_hash
    }

    /// The sequence number of the last message sealed (0 before the first).
    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent
    }

    /// The highest sequence number opened so far.
    pub fn highest_received_seq(&self) -> u64 {
        self.window.highest()
    }

    /// Encrypts `plaintext` into a new session message of a [`MessageClass::Session`] type.
    /// `message_id` is kept across re-sends; each call uses the next sequence number.
    pub fn seal(
        &mut self,
        message_type: MessageType,
        message_id: MessageId,
        plaintext: &[u8],
        now: Timestamp,
    ) -> Result<Envelope, UsageError> {
        if message_type.class() != MessageClass::Session {
            return Err(UsageError::WrongMessageType(message_type));
        }
        let seq = self.last_sent.checked_add(1).filter(|s| *s <= MAX_SAFE_INTEGER);
        let seq = seq.ok_or(UsageError::SequenceExhausted)?;
        let nonce = nonce_for(seq);
        let mut env = Envelope {
            message_id,
            message_type,
            version: PROTOCOL_VERSION.to_owned(),
            timestamp: now,
            seq,
            session_id: Some(self.id.clone()),
            sender_id: self.local.id().clone(),
            recipient_id: Some(self.peer_id.clone()),
            payload: Payload::string(String::new()),
            nonce,
            signature: None,
            verified: crate::envelope::Verified::NO,
        };
        let aad = env.associated_data();
        let len = frame_len(
            aad.len(),
            plaintext.len().saturating_add(TAG_LEN),
            self.capabilities.sign_all,
        );
        if len > self.max_frame_bytes {
            return Err(UsageError::TooLarge { len, max: self.max_frame_bytes });
        }
        let ciphertext = self
            .send
            .encrypt(&nonce.into(), AeadPayload { msg: plaintext, aad: &aad })
            .map_err(|_| UsageError::TooLarge { len, max: self.max_frame_bytes })?;
        env.payload = Payload::ciphertext(ciphertext);
        if self.capabilities.sign_all {
            env.sign(&self.local);
        }
        self.last_sent = seq;
        Ok(env)
    }

    /// Authenticates, replay-checks and decrypts a session message from the peer.
    pub fn open(&mut self, env: &Envelope, now: Timestamp) -> Result<Opened, ProtocolError> {
        if env.message_type.class() != MessageClass::Session {
            return Err(ProtocolError::UnexpectedMessage {
                expected: "a session message",
                got: env.message_type,
            });
        }
        if env.session_id.as_ref() != Some(&self.id) {
            return Err(ProtocolError::WrongSession);
        }
        if env.sender_id != self.peer_id || env.recipient_id.as_ref() != Some(self.local.id()) {
            return Err(ProtocolError::Misaddressed);
        }
        if env.nonce != nonce_for(env.seq) {
            return Err(ProtocolError::InvalidField {
                field: "nonce",
                reason: "must be 0x00000000 || u64be(seq)",
            });
        }
        env.check_timestamp(now, self.max_skew)?;
        self.window.check(env.seq).map_err(ProtocolError::Replay)?;
        let ciphertext = env.payload.ciphertext_bytes()?;
        let aad = env.associated_data();
        let plaintext = self
            .recv
            .decrypt(&env.nonce.into(), AeadPayload { msg: &ciphertext, aad: &aad })
            .map_err(|_| ProtocolError::DecryptionFailed)?;
        if self.capabilities.sign_all || env.signature.is_some() {
            env.verify(&self.peer_key)?;
        }
        self.window.commit(env.seq);
        Ok(Opened {
            message_type: env.message_type,
            message_id: env.message_id.clone(),
            seq: env.seq,
            timestamp: env.timestamp,
            plaintext,
        })
    }

    /// HMAC-SHA256(resumption secret, [`RESUMPTION_PROOF_CONTEXT`] || `context`): proves
    /// possession of the session's resumption secret without revealing it.
    pub fn resumption_proof(&self, context: &[u8]) -> [u8; 32] {
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(self.resumption.as_slice());
        let mut mac = Hmac::<Sha256>::new(&(*block).into());
        mac.update(RESUMPTION_PROOF_CONTEXT);
        mac.update(context);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests;
