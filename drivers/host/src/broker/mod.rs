//! A connection to a Redis broker, the ground a relay cluster will stand on (nodes that share
//! presence, forward envelopes and keep mailboxes through one Redis). This module is only the
//! connection: a request connection ([`Broker`]) and a subscription ([`Subscriber`]), with typed
//! errors ([`BrokerError`]) and a URL that keeps its password out of logs ([`BrokerUrl`]). It
//! knows nothing of clusters.
//!
//! # Driven through the host's [`Runtime`](crate::runtime::Runtime)
//!
//! The `redis` crate is built with its smol support only and never chooses an executor itself:
//! the TCP connection comes from
//! [`Runtime::connect`](crate::runtime::Runtime::connect) (TLS, for `rediss://`, is this crate's own
//! futures-rustls over it, as for links), and the connection's driver task goes to
//! [`Runtime::spawn`](crate::runtime::Runtime::spawn). Its own timeouts are switched off: every wait is bounded with
//! [`within`] on the runtime's timers. So one code path serves smol and tokio alike, as for the
//! rest of the host. (With both of the crate's runtime features on, it would pick one by
//! whether a tokio runtime is current; with none of its timers or spawns used, that question
//! never arises.)
//!
//! # Connections
//!
//! A [`Broker`] multiplexes requests on one connection, its answers in order: a blocking
//! command (`BLPOP`, `XREAD BLOCK`) holds every request behind it, so it wants a connection of
//! its own ([`Broker::connect_again`]), as does a subscription ([`Broker::subscriber`]). A lost
//! connection stays lost: its requests fail with [`BrokerError::ConnectionLost`], and a new one
//! is made with [`Broker::connect_again`] (or [`Broker::connect`]). Nothing reconnects or
//! resubscribes by itself.
//!
//! Connections speak RESP3 (Redis 6 or later), which subscriptions need.

mod error;
mod subscriber;
mod url;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use futures_rustls::pki_types::ServerName;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

pub use self::error::BrokerError;
pub use self::subscriber::{Published, Subscriber};
pub use self::url::BrokerUrl;
use crate::runtime::{Rt, Stream, within};
use crate::tls::rustls;

/// The `redis` crate this module drives: for building requests ([`redis::cmd`], [`redis::pipe`])
/// and converting their answers ([`redis::FromRedisValue`]) without a dependency of one's own.
pub use redis;

/// What it takes to open another connection like this one.
struct Settings {
    rt: Rt,
    url: BrokerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

/// A connection to the broker for requests, shared by its clones (requests from all of them
/// are pipelined on the one connection). Every request is bounded by the connection's timeout
/// (see [`Broker::connect`]) unless given its own ([`Broker::query_within`]).
#[derive(Clone)]
pub struct Broker {
    settings: Arc<Settings>,
    con: MultiplexedConnection,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.settings.url)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the broker at `url` and logs in: TCP through `rt`, TLS with `tls` for
    /// `rediss://` (required then, and unused otherwise), then `HELLO 3` with the URL's
    /// credentials and `SELECT` of its database. All of it must be done within `timeout`, which
    /// also bounds each request made on the connection.
    pub async fn connect(
        rt: &Rt,
        url: &BrokerUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Broker, BrokerError> {
        let settings = Arc::new(Settings { rt: rt.clone(), url: url.clone(), tls, timeout });
        let con = open(&settings, None).await?;
        Ok(Broker { settings, con })
    }

    /// A new connection with the same URL, TLS configuration and timeout: for blocking
    /// commands, which hold the connection they are sent on, or to replace a lost connection.
    pub async fn connect_again(&self) -> Result<Broker, BrokerError> {
        let con = open(&self.settings, None).await?;
        Ok(Broker { settings: self.settings.clone(), con })
    }

    /// A subscription on a connection of its own, its messages queued up to `capacity`
    /// (at least 1), each at most `max_payload` bytes, so the queue holds at most
    /// `capacity × max_payload` bytes; see [`Subscriber`] for what happens beyond that.
    pub async fn subscriber(
        &self,
        capacity: usize,
        max_payload: usize,
    ) -> Result<Subscriber, BrokerError> {
        Subscriber::open(self.settings.clone(), capacity, max_payload).await
    }

    /// The broker's URL (its `Display` hides the password).
    pub fn url(&self) -> &BrokerUrl {
        &self.settings.url
    }

    /// Runs `cmd` (built with [`redis::cmd`]), its answer converted to `T`, bounded by the
    /// connection's timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        self.query_within(cmd, self.settings.timeout).await
    }

    /// Runs `cmd`, bounded by `limit` rather than the connection's timeout: for a blocking
    /// command, whose limit must exceed its own block time.
    pub async fn query_within<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<T, BrokerError> {
        let mut con = self.con.clone();
        self.bounded(limit, cmd.query_async(&mut con)).await
    }

    /// Runs the commands of `pipe` (built with [`redis::pipe`]; `.atomic()` makes it a
    /// `MULTI`/`EXEC` transaction) in one round trip, bounded by the connection's timeout.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        let mut con = self.con.clone();
        self.bounded(self.settings.timeout, pipe.query_async(&mut con)).await
    }

    /// A request's answer, or the error it makes, within `limit`.
    async fn bounded<T>(
        &self,
        limit: Duration,
        request: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let answer = within(&*self.settings.rt, limit, request).await;
        let answer = answer.ok_or(BrokerError::Timeout { during: "a request", limit })?;
        answer.map_err(|e| BrokerError::request(&self.settings.url.addr(), e))
    }
}

/// A logged-in connection, its driver spawned on the runtime; `push` receives what the broker
/// pushes (subscriptions' messages, and the connection's loss). Bounded by the timeout.
async fn open(
    settings: &Settings,
    push: Option<subscriber::PushSender>,
) -> Result<MultiplexedConnection, BrokerError> {
    let limit = settings.timeout;
    within(&*settings.rt, limit, open_unbounded(settings, push))
        .await
        .unwrap_or(Err(BrokerError::Timeout { during: "connecting", limit }))
}

async fn open_unbounded(
    settings: &Settings,
    push: Option<subscriber::PushSender>,
) -> Result<MultiplexedConnection, BrokerError> {
    let url = &settings.url;
    let addr = url.addr();
    let tcp = settings
        .rt
        .connect(url.host().to_owned(), url.port())
        .await
        .map_err(|source| BrokerError::Connect { addr: addr.clone(), source })?;
    let stream: Stream = if url.is_tls() {
        let tls_error = |reason: String| BrokerError::Tls { addr: addr.clone(), reason };
        let config = settings.tls.clone().ok_or_else(|| {
            tls_error("rediss:// needs a TLS client configuration (a CA file)".into())
        })?;
        let name = ServerName::try_from(url.host().to_owned())
            .map_err(|e| tls_error(format!("the host is not a TLS server name: {e}")))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await;
        Box::new(tls.map_err(|e| tls_error(e.to_string()))?)
    } else {
        tcp
    };
    // The crate's own timeouts off: they would run on its executor's timers, and bound a
    // blocking command's wait as much as a lost answer. `within` bounds both instead.
    let mut config =
        AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(None);
    if let Some(push) = push {
        config = config.set_push_sender(push);
    }
    let (con, driver) =
        MultiplexedConnection::new_with_config(&url.connection_info(), stream.compat(), config)
            .await
            .map_err(|e| BrokerError::handshake(addr, e))?;
    settings.rt.spawn(Box::pin(driver));
    Ok(con)
}
