//! # peerlink-smol
//!
//! A peerlink node on [smol]: the runtime-neutral host ([`peerlink_host`]: node task, endpoints,
//! token client, links, TLS, config, keys, metrics) run on smol's global executor through
//! [`SmolRuntime`]. Every protocol decision (delivery, retransmission, fallback, resume,
//! heartbeat, routing, topics, rate limits) is the core's; `drivers/smol/README.md` describes
//! the tasks and their bounds.
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

use peerlink_core::Identity;
pub use peerlink_host::smol_runtime::{SmolRuntime, rt};
pub use peerlink_host::{
    ApiError, Config, DriverLimits, Events, Handle, Snapshot, TlsFiles, TransportResult,
    TrustedPeer, Undelivered, client, config, config_file, keys, metrics, server, tls,
};

/// Starts nodes on smol.
#[derive(Debug)]
pub struct Peerlink;

impl Peerlink {
    /// Binds the listener, then spawns the node task and the server on smol's global executor.
    /// Returns once the port is bound; [`Handle::local_addr`] gives it (use port 0 in tests).
    pub async fn start(config: Config, identity: Identity) -> Result<Handle, ApiError> {
        peerlink_host::Peerlink::start(rt(), config, identity).await
    }
}
