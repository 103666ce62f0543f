//! The initiator: sends steps 1, 3 and 5; receives 2, 4 and 6.

use std::sync::Arc;

use rand_core::CryptoRng;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

use super::keys::{
    KeySchedule, TAG_CONFIRM, TAG_ESTABLISHED, TAG_READY, confirm_tag, verify_confirm_tag,
};
use super::payloads::{ChallengeResponse, Init, InitAck, confirm_payload, parse_confirm};
use super::state::{HandshakeConfig, Shared};
use super::{HandshakeOutput, SUPPORTED_VERSIONS};
use crate::capabilities::Capabilities;
use crate::envelope::Envelope;
use crate::error::{ProtocolError, UsageError};
use crate::identity::{Identity, PublicKey, TrustPolicy, TrustStore};
use crate::ids::EntityId;
use crate::message_type::MessageType;
use crate::session::Role;
use crate::time::Timestamp;

/// The side that opens a handshake.
pub struct Initiator {
    shared: Shared,
    ephemeral: Option<StaticSecret>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("local", self.shared.identity.id())
            .field("peer", &self.shared.peer_id)
            .field("phase", &self.shared.phase)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with `peer` and returns the `HANDSHAKE_INIT` to send.
    ///
    /// The peer's key is taken from `trust` now; if the store does not hold `peer` and its policy
    /// is an allowlist, the handshake is refused before anything is sent.
    pub fn start(
        identity: Arc<Identity>,
        peer: EntityId,
        trust: &TrustStore,
        config: HandshakeConfig,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(Self, Envelope), UsageError> {
        let peer_key = match (trust.get(&peer), trust.policy()) {
            (Some(key), _) => Some(*key),
            (None, TrustPolicy::Open) => None,
            (None, TrustPolicy::Allowlist) => return Err(UsageError::UntrustedPeer(peer)),
        };
        if peer == *identity.id() {
            return Err(UsageError::InvalidId {
                kind: "entity id",
                reason: "cannot handshake with itself",
            });
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut_slice());
        let ephemeral = StaticSecret::from(*secret);
        let mut shared = Shared::new(Role::Initiator, identity, config, now);
        shared.peer_id = Some(peer);
        shared.peer_key = peer_key;
        let payload = Init::payload(
            &shared.identity.public_key(),
            X25519Public::from(&ephemeral).as_bytes(),
            SUPPORTED_VERSIONS,
            shared.config.capabilities(),
        );
        let init = shared.send(MessageType::HandshakeInit, payload, now, rng);
        shared.phase = super::Phase::Awaiting(2);
        Ok((Self { shared, ephemeral: Some(ephemeral) }, init))
    }

    /// Feeds one envelope received from the peer.
    pub fn handle(
        &mut self,
        env: &Envelope,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<HandshakeOutput, ProtocolError> {
        let ephemeral = &mut self.ephemeral;
        self.shared.step(now, |s, step| match step {
            2 => on_init_ack(s, ephemeral, env, now, rng),
            4 => on_established(s, env, now, rng),
            6 => on_ready(s, env, now),
            _ => Err(ProtocolError::HandshakeEnded),
        })
    }

    /// The key the peer's messages must be signed with, once known.
    pub fn peer_key(&self) -> Option<&PublicKey> {
        self.shared.peer_key.as_ref()
    }

    /// The session id the responder assigned (from step 2 on).
    pub fn session_id(&self) -> Option<&crate::ids::SessionId> {
        self.shared.session_id.as_ref()
    }

    /// The deadline, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.shared.poll_timeout()
    }

    /// Tells the machine the time; fails it with a timeout at or after the deadline.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), ProtocolError> {
        self.shared.handle_timeout(now)
    }

    /// The entity being dialled.
    pub fn peer(&self) -> Option<&EntityId> {
        self.shared.peer_id.as_ref()
    }

    /// Whether the machine has completed or failed.
    pub fn is_ended(&self) -> bool {
        self.shared.poll_timeout().is_none()
    }
}

fn on_init_ack(
    s: &mut Shared,
    ephemeral: &mut Option<StaticSecret>,
    env: &Envelope,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<(HandshakeOutput, bool), ProtocolError> {
    s.check(env, MessageType::HandshakeInitAck, now)?;
    let ack = InitAck::parse(&env.payload)?;
    let peer_id = s.peer_id.clone().ok_or(ProtocolError::HandshakeEnded)?;
    match s.peer_key {
        Some(pinned) if pinned != ack.identity_key => {
            return Err(ProtocolError::IdentityKeyMismatch(peer_id));
        }
        Some(_) => {}
        None => {
            env.verify(&ack.identity_key)?;
            s.peer_key = Some(ack.identity_key);
        }
    }
    if !SUPPORTED_VERSIONS.contains(&ack.version.as_str()) || ack.version != env.version {
        return Err(ProtocolError::UnsupportedVersion);
    }
    if ack.transcript != s.transcript.hash() {
        return Err(ProtocolError::TranscriptMismatch);
    }
    let secret = ephemeral.take().ok_or(ProtocolError::HandshakeEnded)?;
    let dh = secret.diffie_hellman(&X25519Public::from(ack.ephemeral_key));
    if !dh.was_contributory() {
        return Err(ProtocolError::WeakKeyExchange);
    }
    s.session_id = env.session_id.clone();
    s.transcript.absorb(env);
    let response = ChallengeResponse { challenge: ack.challenge, transcript: s.transcript.hash() };
    let msg = s.send(MessageType::ChallengeResponse, response.payload(), now, rng);
    s.keys = Some(KeySchedule::derive(dh.as_bytes(), &s.transcript.hash()));
    s.agreed = Some(Capabilities::negotiate(s.config.capabilities(), &ack.capabilities));
    s.phase = super::Phase::Awaiting(4);
    Ok((HandshakeOutput::Send(msg), false))
}

fn on_established(
    s: &mut Shared,
    env: &Envelope,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<(HandshakeOutput, bool), ProtocolError> {
    s.check(env, MessageType::SessionEstablished, now)?;
    let tag = parse_confirm(&env.payload)?;
    if !verify_confirm_tag(&s.keys()?.confirm_r, TAG_ESTABLISHED, &s.transcript.hash(), &tag) {
        return Err(ProtocolError::KeyConfirmationFailed);
    }
    s.transcript.absorb(env);
    let mine = confirm_tag(&s.keys()?.confirm_i, TAG_CONFIRM, &s.transcript.hash());
    let msg = s.send(MessageType::SessionConfirm, confirm_payload(&mine), now, rng);
    s.phase = super::Phase::Awaiting(6);
    Ok((HandshakeOutput::Send(msg), false))
}

fn on_ready(
    s: &mut Shared,
    env: &Envelope,
    now: Timestamp,
) -> Result<(HandshakeOutput, bool), ProtocolError> {
    s.check(env, MessageType::Ready, now)?;
    let tag = parse_confirm(&env.payload)?;
    if !verify_confirm_tag(&s.keys()?.confirm_r, TAG_READY, &s.transcript.hash(), &tag) {
        return Err(ProtocolError::KeyConfirmationFailed);
    }
    s.transcript.absorb(env);
    let session = s.session(s.transcript.hash())?;
    Ok((HandshakeOutput::Complete { send: None, session: Box::new(session) }, true))
}
