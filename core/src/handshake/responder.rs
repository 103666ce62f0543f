//! The responder: receives steps 1, 3 and 5; sends 2, 4 and 6.

use std::sync::Arc;

use rand_core::CryptoRng;
use x25519_dalek::{PublicKey as X25519Public, SharedSecret, StaticSecret};

use super::keys::{
    KeySchedule, TAG_CONFIRM, TAG_ESTABLISHED, TAG_READY, confirm_tag, verify_confirm_tag,
};
use super::payloads::{ChallengeResponse, Init, InitAck, confirm_payload, parse_confirm};
use super::state::{HandshakeConfig, Shared};
use super::{HandshakeOutput, Phase, SUPPORTED_VERSIONS};
use crate::capabilities::Capabilities;
use crate::envelope::Envelope;
use crate::error::ProtocolError;
use crate::identity::{Identity, PublicKey, TrustStore};
use crate::ids::{EntityId, SessionId};
use crate::message_type::MessageType;
use crate::session::Role;
use crate::time::Timestamp;

/// The side that answers a `HANDSHAKE_INIT`.
pub struct Responder {
    shared: Shared,
    challenge: [u8; 32],
    dh: Option<SharedSecret>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("local", self.shared.identity.id())
            .field("peer", &self.shared.peer_id)
            .field("session_id", &self.shared.session_id)
            .field("phase", &self.shared.phase)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Answers a received `HANDSHAKE_INIT`: checks the initiator against `trust`, and returns the
    /// machine with the `HANDSHAKE_INIT_ACK` to send. The deadline counts from `now`.
    pub fn accept(
        identity: Arc<Identity>,
        trust: &TrustStore,
        config: HandshakeConfig,
        init: &Envelope,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(Self, Envelope), ProtocolError> {
        let (shared, offer) = Self::read_init(identity, config, init, now)?;
        let key = trust.authorize(&init.sender_id, &offer.identity_key)?;
        Self::answer(shared, &offer, key, init, now, rng)
    }

    /// The key a `HANDSHAKE_INIT` must be signed with: the one it presents, if `trust` lets its
    /// sender use it. The cheap part of [`Responder::accept`], which a node does on its own task
    /// before it hands the rest out ([`crate::node::Work`]).
    pub fn authorize(trust: &TrustStore, init: &Envelope) -> Result<PublicKey, ProtocolError> {
        if init.message_type != MessageType::HandshakeInit {
            return Err(ProtocolError::UnexpectedMessage {
                expected: "HANDSHAKE_INIT",
                got: init.message_type,
            });
        }
        let offer = Init::parse(&init.payload)?;
        trust.authorize(&init.sender_id, &offer.identity_key)
    }

    /// [`Responder::accept`] once [`Responder::authorize`] gave `key`: the public-key work (the
    /// signature check, the ephemeral key pair, the Diffie-Hellman and the answer's signature),
    /// and nothing that needs the trust store.
    pub fn accept_authorized(
        identity: Arc<Identity>,
        key: PublicKey,
        config: HandshakeConfig,
        init: &Envelope,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(Self, Envelope), ProtocolError> {
        let (shared, offer) = Self::read_init(identity, config, init, now)?;
        Self::answer(shared, &offer, key, init, now, rng)
    }

    /// The checks of §7.9 on a `HANDSHAKE_INIT` (no key is known yet, so no signature), and its
    /// offer.
    fn read_init(
        identity: Arc<Identity>,
        config: HandshakeConfig,
        init: &Envelope,
        now: Timestamp,
    ) -> Result<(Shared, Init), ProtocolError> {
        let shared = Shared::new(Role::Responder, identity, config, now);
        shared.check(init, MessageType::HandshakeInit, now)?;
        let offer = Init::parse(&init.payload)?;
        Ok((shared, offer))
    }

    /// The rest of an accept, in the order the spec gives: the signature, the version, the
    /// key exchange, the answer.
    fn answer(
        mut shared: Shared,
        offer: &Init,
        key: PublicKey,
        init: &Envelope,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<(Self, Envelope), ProtocolError> {
        init.verify(&key)?;
        let version = offer
            .versions
            .iter()
            .find(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .ok_or(ProtocolError::UnsupportedVersion)?
            .clone();
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut_slice());
        let ephemeral = StaticSecret::from(*secret);
        let dh = ephemeral.diffie_hellman(&X25519Public::from(offer.ephemeral_key));
        if !dh.was_contributory() {
            return Err(ProtocolError::WeakKeyExchange);
        }
        let mut challenge = [0u8; 32];
        rng.fill_bytes(&mut challenge);
        shared.peer_id = Some(init.sender_id.clone());
        shared.peer_key = Some(key);
        shared.session_id = Some(SessionId::random(rng));
        shared.agreed =
            Some(Capabilities::negotiate(&offer.capabilities, shared.config.capabilities()));
        shared.transcript.absorb(init);
        let ack = InitAck {
            identity_key: shared.identity.public_key(),
            ephemeral_key: X25519Public::from(&ephemeral).to_bytes(),
            version,
            challenge,
            capabilities: shared.config.capabilities().clone(),
            transcript: shared.transcript.hash(),
        };
        let msg = shared.send(MessageType::HandshakeInitAck, ack.payload(), now, rng);
        shared.phase = Phase::Awaiting(3);
        Ok((Self { shared, challenge, dh: Some(dh) }, msg))
    }

    /// Feeds one envelope received from the initiator.
    pub fn handle(
        &mut self,
        env: &Envelope,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<HandshakeOutput, ProtocolError> {
        let challenge = self.challenge;
        let dh = &mut self.dh;
        self.shared.step(now, |s, step| match step {
            3 => on_challenge_response(s, challenge, dh, env, now, rng),
            5 => on_confirm(s, env, now, rng),
            _ => Err(ProtocolError::HandshakeEnded),
        })
    }

    /// The deadline, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.shared.poll_timeout()
    }

    /// Tells the machine the time; fails it with a timeout at or after the deadline.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), ProtocolError> {
        self.shared.handle_timeout(now)
    }

    /// The initiator's entity id.
    pub fn peer(&self) -> Option<&EntityId> {
        self.shared.peer_id.as_ref()
    }

    /// The key the peer's messages must be signed with, once known.
    pub fn peer_key(&self) -> Option<&PublicKey> {
        self.shared.peer_key.as_ref()
    }

    /// The session id this responder assigned.
    pub fn session_id(&self) -> Option<&SessionId> {
        self.shared.session_id.as_ref()
    }

    /// Whether the machine has completed or failed.
    pub fn is_ended(&self) -> bool {
        self.shared.poll_timeout().is_none()
    }
}

fn on_challenge_response(
    s: &mut Shared,
    challenge: [u8; 32],
    dh: &mut Option<SharedSecret>,
    env: &Envelope,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<(HandshakeOutput, bool), ProtocolError> {
    s.check(env, MessageType::ChallengeResponse, now)?;
    let response = ChallengeResponse::parse(&env.payload)?;
    if response.challenge != challenge || response.transcript != s.transcript.hash() {
        return Err(ProtocolError::TranscriptMismatch);
    }
    let dh = dh.take().ok_or(ProtocolError::HandshakeEnded)?;
    s.transcript.absorb(env);
    s.keys = Some(KeySchedule::derive(dh.as_bytes(), &s.transcript.hash()));
    let tag = confirm_tag(&s.keys()?.confirm_r, TAG_ESTABLISHED, &s.transcript.hash());
    let msg = s.send(MessageType::SessionEstablished, confirm_payload(&tag), now, rng);
    s.phase = Phase::Awaiting(5);
    Ok((HandshakeOutput::Send(msg), false))
}

fn on_confirm(
    s: &mut Shared,
    env: &Envelope,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<(HandshakeOutput, bool), ProtocolError> {
    s.check(env, MessageType::SessionConfirm, now)?;
    let tag = parse_confirm(&env.payload)?;
    if !verify_confirm_tag(&s.keys()?.confirm_i, TAG_CONFIRM, &s.transcript.hash(), &tag) {
        return Err(ProtocolError::KeyConfirmationFailed);
    }
    s.transcript.absorb(env);
    let ready = confirm_tag(&s.keys()?.confirm_r, TAG_READY, &s.transcript.hash());
    let msg = s.send(MessageType::Ready, confirm_payload(&ready), now, rng);
    let session = s.session(s.transcript.hash())?;
    Ok((HandshakeOutput::Complete { send: Some(msg), session: Box::new(session) }, true))
}
