//! What a node's start and its `Handle`'s calls report when they fail:
//! [`ApiError`], and [`ListenError`] for a listener that cannot start.

use std::net::SocketAddr;

use peerlink_core::stream::FailReason;
use peerlink_core::{MessageType, SendError};

use crate::delivery::Undelivered;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The node refused the message.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The message type cannot be sent with `send_message`.
    #[error("message type {0} cannot be sent by the application")]
    UnsupportedType(MessageType),
    /// The request got no answer in time.
    #[error("request timed out")]
    Timeout,
    /// The request will not be delivered.
    #[error("request failed: {0:?}")]
    Failed(FailReason),
    /// A confirmed send ended without delivery (`Handle::send_confirmed`).
    #[error("not delivered: {:?} (may have been delivered: {})", .0.reason, .0.maybe_delivered)]
    Undelivered(Undelivered),
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
    /// A topic name or publish payload was refused.
    #[error(transparent)]
    Usage(#[from] peerlink_core::UsageError),
    /// Listening failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A cluster node could not reach its broker at start (`Config::cluster`).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::broker::BrokerError),
    /// A durable node's store cannot be opened or read (`Config::storage`, `docs/storage.md`).
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreFailure),
    /// What a durable node's store holds cannot be used (`peerlink store check` says more).
    #[error("store: {0}")]
    Restore(peerlink_core::node::RestoreError),
}

/// Why the listener refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `require_tls` is set, no certificate is configured, and the address is not loopback.
    #[error(
        "refusing plain ws/http on non-loopback {0}: require_tls is set and no TLS files are configured"
    )]
    PlainNotLoopback(SocketAddr),
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}
