//! # peerlink-core
//!
//! The sans-IO core of peerlink, a secure peer-to-peer messaging protocol: the wire format,
//! Ed25519 identities and the trust store, the 6-step handshake and the encrypted sessions it
//! yields. Nothing here performs I/O, reads a clock or draws OS randomness: the current time is an
//! argument ([`Timestamp`]), randomness comes from an injected [`rand_core::CryptoRng`], and all
//! collections are ordered, so one seed replays a run byte for byte.
//!
//! The normative description is `spec/protocol.md` in the repository; each module names the
//! section it implements.
//!
//! ## The node, and the loop that drives it
//!
//! A [`Node`] is one entity's whole protocol state: sessions with many peers, the reliable
//! stream to each, its WebSocket links and HTTP exchanges, relaying, mailboxes and topics. A
//! driver (smol, threads, tokio, or a simulator) owns the sockets and the clock and runs three
//! steps, forever:
//!
//! 1. **Feed** one [`Input`] with the current time to [`Node::handle_input`]: a link accepted,
//!    up, failed or closed, a frame, an HTTP call or answer, or [`Input::Timeout`]. Application
//!    commands are methods that answer at once ([`Node::send`], [`Node::request`],
//!    [`Node::subscribe`], …).
//! 2. **Drain** [`Node::poll_output`] and carry out each [`Output`]: write a frame, open a link
//!    to the finished URL it names, close one, make or answer an HTTP request, or hand an
//!    [`Event`] to the application.
//! 3. **Sleep** until [`Node::poll_timeout`] or the next input, whichever comes first.
//!
//! `core/examples/node_loop.rs` is that loop over an in-memory network, runnable with
//! `cargo run -p peerlink-core --example node_loop`. In short:
//!
//! ```
//! use peerlink_core::{EntityId, Identity, Input, Node, NodeConfig, Output, Timestamp};
//! use peerlink_core::{TrustPolicy, TrustStore, node::NodeAddr, wire::Encoding};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let me = Identity::from_secret_bytes(EntityId::new("alice")?, &[1; 32]);
//! let trust = TrustStore::new(TrustPolicy::Open);
//! let mut node = Node::new(NodeConfig::default(), me, trust, ChaCha20Rng::seed_from_u64(1))?;
//! let relay = NodeAddr { entity: EntityId::new("relay")?, base_url: "http://relay:7447".into() };
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//! node.set_default_route(now, relay);
//! node.send(now, &EntityId::new("bob")?, b"hi".to_vec(), Default::default())?;
//! // Drain: the node asks for a link to the relay, at the URL it names.
//! let mut opened = None;
//! while let Some(out) = node.poll_output() {
//!     if let Output::OpenLink { link, url, .. } = out {
//!         opened = Some((link, url));
//!     }
//! }
//! let (link, url) = opened.ok_or("no link asked for")?;
//! assert_eq!(url, "ws://relay:7447/ws/v1/peers");
//! // Feed: the driver connected it (or reports `Input::LinkFailed`).
//! node.handle_input(now, Input::LinkUp { link, encoding: Encoding::Json })?;
//! // Sleep until the next deadline, then feed `Input::Timeout`.
//! assert!(node.poll_timeout().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Shape
//! - [`node`]: the [`Node`], its [`Input`]s and [`Output`]s.
//! - [`envelope`]: the JSON envelope, its canonical bytes, signing and size-checked decoding.
//! - [`identity`] and [`ids`]: who is who, and the allowlist binding entity ids to keys.
//! - [`handshake`]: [`Initiator`] and [`Responder`], fed envelopes, producing envelopes and
//!   finally a [`Session`].
//! - [`session`]: sealing and opening data messages with replay protection.
//! - [`signed`]: signed session-less messages (`PING`, `ERROR`, …) and their replay cache.
//! - [`error`]: wire error codes; [`ProtocolError`] (the peer misbehaved) apart from
//!   [`UsageError`] (the embedder misused the API).
//!
//! ## A handshake, end to end
//! ```
//! use std::sync::Arc;
//! use peerlink_core::{EntityId, HandshakeConfig, HandshakeOutput, Identity, Initiator,
//!     Responder, Timestamp, TrustPolicy, TrustStore, MessageType, MessageId};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(1);
//! let alice = Arc::new(Identity::generate(EntityId::new("alice")?, &mut rng));
//! let bob = Arc::new(Identity::generate(EntityId::new("bob")?, &mut rng));
//! let mut trust = TrustStore::new(TrustPolicy::Allowlist);
//! trust.insert(alice.id().clone(), alice.public_key());
//! trust.insert(bob.id().clone(), bob.public_key());
//! let now = Timestamp::from_unix_millis(1_700_000_000_000);
//!
//! let (mut init, m1) = Initiator::start(alice, bob.id().clone(), &trust,
//!     HandshakeConfig::default(), now, &mut rng)?;
//! let (mut resp, m2) = Responder::accept(bob, &trust, HandshakeConfig::default(), &m1, now, &mut rng)?;
//! let HandshakeOutput::Send(m3) = init.handle(&m2, now, &mut rng)? else { unreachable!() };
//! let HandshakeOutput::Send(m4) = resp.handle(&m3, now, &mut rng)? else { unreachable!() };
//! let HandshakeOutput::Send(m5) = init.handle(&m4, now, &mut rng)? else { unreachable!() };
//! let HandshakeOutput::Complete { send: Some(m6), session: mut bob_session } =
//!     resp.handle(&m5, now, &mut rng)? else { unreachable!() };
//! let HandshakeOutput::Complete { session: mut alice_session, .. } =
//!     init.handle(&m6, now, &mut rng)? else { unreachable!() };
//!
//! let sealed = alice_session.seal(MessageType::PeerMessage, MessageId::random(&mut rng), b"hi", now)?;
//! assert_eq!(bob_session.open(&sealed, now)?.plaintext, b"hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

pub mod auth;
pub mod backoff;
/// A binary encoding of the envelope: the same members as the JSON wire form (issue 19).
pub mod binary_envelope;
pub mod canonical;
pub mod capabilities;
pub mod chunking;
pub mod durable;
pub mod encoding;
pub mod endpoints;
pub mod envelope;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod http_body;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod message_type;
pub mod node;
pub mod rate_limit;
pub mod replay;
pub mod session;
pub mod signed;
pub mod stream;
pub mod time;
pub mod timers;
pub mod transport;
pub mod wire;

pub use capabilities::{Capabilities, Transport};
pub use envelope::{Envelope, PROTOCOL_VERSION, Payload};
pub use error::{Disposition, ErrorCode, ProtocolError, UsageError};
pub use handshake::{HandshakeConfig, HandshakeOutput, Initiator, Responder};
pub use identity::{Identity, PublicKey, TrustPolicy, TrustStore};
pub use ids::{AppType, EntityId, MessageId, SessionId};
pub use limits::Limits;
pub use message_type::{MessageClass, MessageType};
pub use node::{Event, Handled, Input, Node, NodeAddr, NodeConfig, Output, SendError, SendOptions};
pub use session::{Opened, Role, Session};
pub use signed::{ErrorBody, SignedMessageGuard, error_message, signed_message};
pub use time::Timestamp;
