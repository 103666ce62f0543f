//! What both handshake roles share: configuration, transcript, deadline and identities.

use std::sync::Arc;

use rand_core::CryptoRng;

use super::keys::{Hash, KeySchedule, Transcript};
use super::{Expected, Phase, check_envelope};
use crate::capabilities::Capabilities;
use crate::envelope::{Envelope, Payload};
use crate::error::{ProtocolError, UsageError};
use crate::identity::{Identity, PublicKey};
use crate::ids::{EntityId, SessionId};
use crate::limits::Limits;
use crate::message_type::MessageType;
use crate::session::{Role, Session, SessionParams};
use crate::signed::build_signed;
use crate::time::Timestamp;

/// Validated settings for a handshake: the limits it enforces and the capabilities it offers.
#[derive(Debug, Clone, Default)]
pub struct HandshakeConfig {
    limits: Limits,
    capabilities: Capabilities,
}

impl HandshakeConfig {
    /// Checks `limits` and keeps both.
    pub fn new(limits: Limits, capabilities: Capabilities) -> Result<Self, UsageError> {
        limits.validate()?;
        Ok(Self { limits, capabilities })
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The capabilities this side offers.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
}

/// State common to both roles.
pub(super) struct Shared {
    pub role: Role,
    pub identity: Arc<Identity>,
    pub config: HandshakeConfig,
    pub transcript: Transcript,
    pub deadline: Timestamp,
    pub phase: Phase,
    pub peer_id: Option<EntityId>,
    pub peer_key: Option<PublicKey>,
    pub session_id: Option<SessionId>,
    pub agreed: Option<Capabilities>,
    pub keys: Option<KeySchedule>,
}

impl Shared {
    pub fn new(
        role: Role,
        identity: Arc<Identity>,
        config: HandshakeConfig,
        now: Timestamp,
    ) -> Self {
        let deadline = now.saturating_add(config.limits.handshake_timeout);
        Self {
            role,
            identity,
            config,
            transcript: Transcript::new(),
            deadline,
            phase: Phase::Awaiting(1),
            peer_id: None,
            peer_key: None,
            session_id: None,
            agreed: None,
            keys: None,
        }
    }

    /// Runs one step: refuses input after the end or the deadline, and ends the machine on any
    /// error or on completion.
    pub fn step<T>(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self, u64) -> Result<(T, bool), ProtocolError>,
    ) -> Result<T, ProtocolError> {
        let Phase::Awaiting(step) = self.phase else {
            return Err(ProtocolError::HandshakeEnded);
        };
        if now >= self.deadline {
            self.end();
            return Err(ProtocolError::HandshakeTimeout);
        }
        match f(self, step) {
            Ok((out, done)) => {
                if done {
                    self.end();
                }
                Ok(out)
            }
            Err(e) => {
                self.end();
                Err(e)
            }
        }
    }

    /// Ends the machine and drops every secret it held.
    pub fn end(&mut self) {
        self.phase = Phase::Ended;
        self.keys = None;
    }

    /// Fails with a timeout if `now` is at or past the deadline.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), ProtocolError> {
        if self.phase != Phase::Ended && now >= self.deadline {
            self.end();
            return Err(ProtocolError::HandshakeTimeout);
        }
        Ok(())
    }

    /// The deadline while the handshake is running.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (self.phase != Phase::Ended).then_some(self.deadline)
    }

    /// Checks the shared envelope fields, then the signature with the known peer key.
    pub fn check(
        &self,
        env: &Envelope,
        message_type: MessageType,
        now: Timestamp,
    ) -> Result<(), ProtocolError> {
        let want = Expected {
            message_type,
            local: self.identity.id(),
            peer: self.peer_id.as_ref(),
            session_id: self.session_id.as_ref(),
            version: crate::envelope::PROTOCOL_VERSION,
        };
        check_envelope(env, &want, self.peer_key.as_ref(), now, &self.config.limits)?;
        match &self.peer_key {
            Some(key) => env.verify(key),
            None => Ok(()),
        }
    }

    /// Builds, signs and absorbs this side's next message.
    pub fn send(
        &mut self,
        message_type: MessageType,
        payload: Payload,
        now: Timestamp,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Envelope {
        let seq = message_type.handshake_step().unwrap_or(0);
        let env = build_signed(
            &self.identity,
            message_type,
            seq,
            self.peer_id.clone(),
            self.session_id.clone(),
            payload,
            now,
            rng,
        );
        self.transcript.absorb(&env);
        env
    }

    pub fn keys(&self) -> Result<&KeySchedule, ProtocolError> {
        self.keys.as_ref().ok_or(ProtocolError::HandshakeEnded)
    }

    /// The established session, from everything the handshake learned.
    pub fn session(&self, handshake_hash: Hash) -> Result<Session, ProtocolError> {
        let missing = ProtocolError::HandshakeEnded;
        Ok(Session::new(SessionParams {
            role: self.role,
            local: Arc::clone(&self.identity),
            peer_id: self.peer_id.clone().ok_or(missing.clone())?,
            peer_key: self.peer_key.ok_or(missing.clone())?,
            session_id: self.session_id.clone().ok_or(missing.clone())?,
            capabilities: self.agreed.clone().ok_or(missing.clone())?,
            keys: self.keys()?,
            handshake_hash,
            limits: &self.config.limits,
        }))
    }
}
