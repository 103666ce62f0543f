//! # peerlink-smol
//!
//! A peerlink node on [smol]: the WebSocket and HTTP server and client around the sans-IO
//! [`peerlink_core::node::Node`]. This crate owns sockets, timers and tasks; every protocol
//! decision (delivery, retransmission, fallback, resume, heartbeat, routing, topics, rate limits)
//! is the core's. `drivers/smol/README.md` describes the tasks and their bounds.
//!
//! ```no_run
//! use peerlink_core::{EntityId, Identity};
//! use peerlink_smol::{Config, Peerlink};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let identity = peerlink_smol::keys::generate(EntityId::new("alice")?)?;
//!     let node = Peerlink::start(Config::ephemeral(), identity).await?;
//!     println!("listening on {}", node.local_addr());
//!     node.shutdown().await?;
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

mod api;
pub mod client;
pub mod config;
pub mod config_file;
mod driver;
pub mod keys;
mod link;
pub mod metrics;
mod routes;
pub mod rt;
pub mod server;
pub mod tls;

pub use api::{ApiError, Handle, Peerlink, Snapshot};
pub use config::{Config, DriverLimits, TlsFiles, TrustedPeer};
