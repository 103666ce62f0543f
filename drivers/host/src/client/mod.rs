//! The client side: authenticating to other nodes and the HTTP requests the node asks for.
//!
//! - `token`: the token client: a challenge signed for the node meant (spec §23.2), the
//!   cached JWT, renewed before it expires and forgotten on a 401.
//! - `pool`: connections to other nodes (TCP, TLS) and the keep-alive HTTP connections kept
//!   idle for the next request to the same node.
//! - `request`: the HTTP requests the node asks for (posts, long-polls) and the public `GET`s
//!   of `peerlink status` and [`capabilities`].
//!
//! Outbound WebSocket links are set up by `outbound`, with a token and a connection from here.
//!
//! HTTP uses hyper's client over the [`rt`](crate::rt) adapter: no extra HTTP stack, the same
//! parser as the server, and async all the way (no thread per request as `ureq` in
//! `smol::unblock` would need while a long-poll is held). A token is fetched on one keep-alive
//! connection (both requests), and an outbound link then upgrades that same connection. The
//! node's other requests (posts, long-polls) reuse idle keep-alive connections to the same node
//! (at most `max_idle_http_per_node` kept, each for at most `http_idle_reuse`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;
use futures_rustls::rustls;
use hyper::Uri;
use peerlink_core::{EntityId, Identity};

use crate::config::DriverLimits;
use crate::runtime::{Rt, Runtime, sleep};

mod pool;
mod request;
#[cfg(test)]
mod tests;
mod token;

use pool::KeepAlive;
pub(crate) use request::{NodeRequest, node_request};
pub use request::{capabilities, get_public};
pub(crate) use token::token_and_stream;

/// An HTTP answer: the status, the body, and the body's encoding (its `Content-Type`, spec
/// §27.7).
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    pub encoding: peerlink_core::wire::Encoding,
}

/// Why a request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host[:port]/…` or `ws(s)://…`.
    #[error("bad URL")]
    BadUrl,
    /// `https`/`wss` without a configured CA file.
    #[error("TLS needed but no CA file is configured")]
    NoTls,
    /// Connecting, TLS or I/O failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The node answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer was not what the endpoint documents (or too large).
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// The WebSocket handshake failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The node at `url` answered `GET /auth/token` with another id than the hop this client
    /// meant to reach (spec §23.2): nothing was signed. A wrong `--url`, or a relay's URL given
    /// where the peer's own node was meant.
    #[error("the node at {url} is {found}, not {expected}")]
    WrongNode {
        /// The node's base URL.
        url: String,
        /// The id the node returned.
        found: Box<EntityId>,
        /// The id of the hop this client meant to reach (configured or pinned).
        expected: Box<EntityId>,
    },
}

/// What client tasks share: the identity (to sign challenges), TLS, the token cache, bounds.
pub(crate) struct ClientCtx {
    /// The executor.
    pub rt: Rt,
    pub identity: Arc<Identity>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub limits: DriverLimits,
    pub max_frame_bytes: usize,
    pub max_http_body_bytes: usize,
    /// Bearer tokens by node base URL, with when to stop using them.
    tokens: Mutex<BTreeMap<String, (String, Instant)>>,
    /// Idle keep-alive connections by node base URL, with when each became idle.
    idle: Mutex<BTreeMap<String, Vec<(KeepAlive, Instant)>>>,
}

impl ClientCtx {
    /// A context with no token cached and no connection kept yet.
    pub fn new(
        rt: Rt,
        identity: Arc<Identity>,
        tls: Option<Arc<rustls::ClientConfig>>,
        limits: DriverLimits,
        max_frame_bytes: usize,
        max_http_body_bytes: usize,
    ) -> Self {
        Self {
            rt,
            identity,
            tls,
            limits,
            max_frame_bytes,
            max_http_body_bytes,
            tokens: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(BTreeMap::new()),
        }
    }
}

/// `scheme://authority` of a URL, with `ws`→`http` and `wss`→`https`: the key naming a node.
pub fn base_of(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let scheme = match uri.scheme_str()? {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return None,
    };
    Some(format!("{scheme}://{}", uri.authority()?.as_str().to_ascii_lowercase()))
}

/// `f`'s result, or [`ClientError::Timeout`] once `d` has passed.
pub(crate) async fn timeout<T>(
    rt: &dyn Runtime,
    d: Duration,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    f.or(async {
        sleep(rt, d).await;
        Err(ClientError::Timeout)
    })
    .await
}
