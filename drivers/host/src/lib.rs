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

// The modules in layers, each using only its own layer and those above it: no `crate::` path
// (doc links included) makes a cycle between two modules.

// The executor, and what needs no node task: TLS, keys, configuration, the clock, errors,
// delivery results and handlers, the metrics' snapshot, the Redis broker's connection, and the
// durable store (with its writer thread).
pub mod broker;
mod clock;
pub mod config;
pub mod config_file;
mod delivery;
mod error;
mod events;
pub mod keys;
pub mod metrics;
pub mod origin;
pub mod rt;
pub mod runtime;
#[cfg(any(test, feature = "smol"))]
pub mod smol_runtime;
pub mod store;
pub mod tls;

// A link's plumbing: its bounded send queue, and its socket that writes a batch at once.
mod corked;
mod link_queue;

// Reaching other nodes: the token client, connections and HTTP requests.
pub mod client;

// What the node task owns and what it is told.
mod state;

// The tasks that talk to the node task: links (inbound and outbound), the endpoints and their
// listener, the application's handle, and a cluster node's broker task.
pub mod cluster;
mod handle;
mod link;
mod outbound;
mod routes;
pub mod server;

// The node task.
mod commits;
mod driver;

// Starting a node.
mod api;

pub use api::{NodeService, Peerlink};
pub use config::{
    ClusterSettings, Config, DriverLimits, Fsync, StorageKind, StorageSettings, TlsFiles,
    TrustedPeer,
};
pub use delivery::{TransportResult, Undelivered};
pub use error::ApiError;
pub use events::Events;
pub use handle::Handle;
pub use metrics::Snapshot;
pub use routes::RequestBody;
pub use runtime::{Listener, Rt, Runtime};
