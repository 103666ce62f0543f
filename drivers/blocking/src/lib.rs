//! # peerlink-blocking
//!
//! A peerlink client for synchronous programs: every call blocks until the node has taken it,
//! and no `async` reaches your code. Underneath it is the same node as every other driver's,
//! the runtime-neutral host ([`peerlink_host`]) on smol's global executor, whose threads run in
//! the background (one by default; `SMOL_THREADS` sets more), as `reqwest::blocking` runs
//! tokio. So the blocking client has the same token client, links, TLS, limits, reconnects,
//! resumption, fallback to HTTP and exactly-once delivery as the smol and tokio nodes, from the
//! same code.
//!
//! A client serves nothing: it is reached through its relay (or the nodes it links to), over
//! the WebSocket it opens and the HTTP long polls it makes. Its [`Config`] is the nodes' one
//! (`listen`, `auth`, the serving TLS files and `allowed_origins` are not used; `tls.ca_file`
//! is, for `https://` and `wss://` nodes).
//!
//! Events wait in a bounded queue ([`DriverLimits::event_queue`]) and count against the
//! core's `max_events`: an application that stops reading makes its peers re-send later instead
//! of growing memory.
//!
//! Do not call a blocking method from inside an async task (it would block that executor's
//! thread); use [`Client::handle`] there, the async [`Handle`] of the same node.
//!
//! ```no_run
//! use std::time::Duration;
//! use peerlink_blocking::{Client, Config, TrustedPeer};
//! use peerlink_core::{EntityId, Identity};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = Identity::from_secret_bytes(EntityId::new("alice")?, &[7; 32]);
//! let relay = Identity::from_secret_bytes(EntityId::new("relay")?, &[8; 32]);
//! let mut config = Config::default();
//! config.relay = Some(TrustedPeer {
//!     entity: relay.id().clone(),
//!     key: relay.public_key(),
//!     url: Some("http://127.0.0.1:7447".into()),
//! });
//! let client = Client::start(config, me)?;
//! client.send(&EntityId::new("bob")?, b"hello".to_vec(), None)?;
//! while let Some(event) = client.recv_timeout(Duration::from_secs(5)) {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

mod client;

pub use client::Client;
pub use peerlink_host::{
    ApiError, Config, DriverLimits, Handle, Snapshot, TlsFiles, TransportResult, TrustedPeer,
    Undelivered,
};
