//! # peerlink-host
//!
//! Everything a peerlink node needs around the sans-IO [`peerlink_core::node::Node`], written
//! once for every executor: the node task and its loop ([`Peerlink::start`]), the endpoints of
//! spec §23 (hyper), the token client and outbound links (async-tungstenite), TLS (rustls),
//! configuration and its TOML file, key storage, Prometheus metrics and the application
//! [`Handle`]. An executor plugs in through the four-method [`runtime::Runtime`] trait;
//! `peerlink-smol` is such a plug (`docs/drivers.md` shows how to write another).
//!
//! Streams are futures-io, channels are `async-channel`, combinators are `futures-lite`: none
//! of them names an executor.

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

mod api;
pub mod client;
pub mod config;
pub mod config_file;
mod corked;
mod driver;
pub mod keys;
mod link;
mod link_queue;
pub mod metrics;
pub mod origin;
mod outbound;
mod routes;
pub mod rt;
pub mod runtime;
pub mod server;
#[cfg(any(test, feature = "smol"))]
pub mod smol_runtime;
pub mod tls;

pub use api::{ApiError, Handle, NodeService, Peerlink, Snapshot};
pub use config::{Config, DriverLimits, TlsFiles, TrustedPeer};
pub use routes::RequestBody;
pub use runtime::{Listener, Rt, Runtime};
