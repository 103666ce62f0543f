//! A blocking peerlink client: the sans-IO core ([`peerlink_core::node::Node`]) driven over
//! `tungstenite` (WebSocket) and `ureq` (HTTP fallback) on std threads, for synchronous
//! programs. No async runtime.
//!
//! ## Threads and bounds
//!
//! - One **client thread** owns the node. It takes inputs from one bounded queue
//!   ([`QueueSettings::inputs`]): application commands, frames from links, HTTP answers. It
//!   carries out the node's outputs and sleeps until the node's next deadline.
//! - One thread per **WebSocket link**: it authenticates (spec §23.2), upgrades, then alternates
//!   between writing its bounded send queue ([`WebSocketSettings::send_queue`]) and reading
//!   for at most [`WebSocketSettings::read_poll`]. A full send queue or a server that stops
//!   reading for [`WebSocketSettings::connect_timeout`] closes the link; the core then
//!   reconnects with backoff and moves traffic to HTTP if the preference allows.
//! - One thread per **HTTP exchange** (a long poll blocks), at most
//!   [`HttpSettings::max_in_flight`] at once.
//! - Events wait for the application in an inbox that counts against the core's `max_events`
//!   ([`Node::set_app_backlog`](peerlink_core::node::Node::set_app_backlog)): an application
//!   that stops reading makes its peers re-send later instead of growing memory.
//!
//! `https://` and `wss://` nodes are reached over TLS 1.3, verified against
//! [`ClientConfig::tls_ca_file`] or the Mozilla roots.
//!
//! Reconnects, resumption, fallback to HTTP and the return to WebSocket, exactly-once delivery:
//! all of it is the core's; this crate only moves bytes and time.
//!
//! ```no_run
//! use std::time::Duration;
//! use peerlink_blocking::{Client, ClientConfig};
//! use peerlink_core::identity::{Identity, TrustPolicy, TrustStore};
//! use peerlink_core::ids::EntityId;
//! use peerlink_core::node::NodeAddr;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = Identity::from_secret_bytes(EntityId::new("alice")?, &[7; 32]);
//! let relay = NodeAddr { entity: EntityId::new("relay")?, base_url: "http://127.0.0.1:7447".into() };
//! let config = ClientConfig { relay: Some(relay), ..ClientConfig::default() };
//! let client = Client::start(config, me, TrustStore::new(TrustPolicy::Open))?;
//! client.send(&EntityId::new("bob")?, b"hello".to_vec(), None)?;
//! while let Some(event) = client.recv_timeout(Duration::from_secs(5)) {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod auth;
mod client;
mod clock;
mod config;
mod driver;
mod http;
mod link;
mod tls;

pub use auth::AuthFailure;
pub use client::{Client, ClientError};
pub use config::{ClientConfig, HttpSettings, QueueSettings, WebSocketSettings};
pub use tls::TlsError;
