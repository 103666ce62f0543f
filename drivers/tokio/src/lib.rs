//! # peerlink-tokio
//!
//! A peerlink node on [tokio]: the runtime-neutral host ([`peerlink_host`]) run on a tokio
//! runtime through [`TokioRuntime`]. Two ways in:
//!
//! - **Standalone**: [`Peerlink::start`] listens on `config.listen`, as the smol node does.
//! - **Mounted**: [`Peerlink::router`] gives an [`axum::Router`] serving the node's endpoints,
//!   which an existing axum application nests under a path of its own listener, sharing its
//!   port and TLS. Peers then use `http(s)://host:port/PATH` as the node's base URL.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use peerlink_core::EntityId;
//! use peerlink_tokio::{Config, Peerlink};
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = peerlink_tokio::keys::generate(EntityId::new("app-node")?)?;
//! let (node, peerlink) = Peerlink::router(Config::ephemeral(), identity).await?;
//! let app = Router::new()
//!     .route("/", get(|| async { "the application's own page" }))
//!     .nest("/peerlink", peerlink);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! println!("peers reach {} at http://127.0.0.1:8080/peerlink", node.id());
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

mod runtime;

use std::convert::Infallible;
use std::sync::Arc;

use peerlink_core::Identity;
pub use peerlink_host::{
    ApiError, Config, DriverLimits, Events, Handle, NodeService, Snapshot, TlsFiles,
    TransportResult, TrustedPeer, Undelivered, client, config, config_file, keys, metrics, tls,
};
pub use runtime::TokioRuntime;

/// Starts nodes on tokio.
#[derive(Debug)]
pub struct Peerlink;

impl Peerlink {
    /// A node listening on `config.listen`, on the current tokio runtime. Returns once the port
    /// is bound; [`Handle::local_addr`] gives it (use port 0 in tests).
    pub async fn start(config: Config, identity: Identity) -> Result<Handle, ApiError> {
        peerlink_host::Peerlink::start(rt(), config, identity).await
    }

    /// A node without a listener of its own, on the current tokio runtime, and the
    /// [`axum::Router`] that serves its endpoints: nest it under a path of the application
    /// (`Router::new().nest("/peerlink", router)`). `config.listen` and its TLS files are not
    /// used: the application's listener serves the node. WebSocket upgrades need a server that
    /// keeps them, as `axum::serve` does.
    pub async fn router(
        config: Config,
        identity: Identity,
    ) -> Result<(Handle, axum::Router), ApiError> {
        let (handle, service) = peerlink_host::Peerlink::mount(rt(), config, identity).await?;
        let endpoints = tower::service_fn(move |req: axum::extract::Request| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(service.call(req).await.map(axum::body::Body::new)) }
        });
        Ok((handle, axum::Router::new().route_service("/{*endpoint}", endpoints)))
    }
}

/// The current tokio runtime as the host's runtime. Panics outside a tokio runtime.
pub fn rt() -> peerlink_host::Rt {
    Arc::new(TokioRuntime::current())
}
