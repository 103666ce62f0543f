//! The one thing a driver provides: an executor, as four operations (in the spirit of quinn's
//! `Runtime` trait). Everything else (the node loop, endpoints, the token client, links, TLS,
//! config, keys, metrics) is this crate's, written once for every executor.
//!
//! Streams are futures-io (`AsyncRead` + `AsyncWrite`): smol's are already; tokio's are wrapped
//! with `tokio_util::compat`. TLS (futures-rustls), hyper (through the `rt` module) and
//! async-tungstenite all run over them.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};

/// A boxed future that can move between threads.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed timer future (`Sync` too, as hyper's timers require).
pub type BoxSleep = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A byte stream: a TCP connection, as the runtime gives it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type Stream = Box<dyn Io>;

/// A listening TCP socket.
pub trait Listener: Send + Sync + 'static {
    /// The next connection and its peer's address, with `TCP_NODELAY` set.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>>;
    /// The address it listens on (the port chosen, for port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// An executor, as the host needs it. Implement it to run peerlink on another executor
/// (`docs/drivers.md`); `peerlink-smol` and `peerlink-tokio` are such implementations.
pub trait Runtime: fmt::Debug + Send + Sync + 'static {
    /// Runs `future` to completion in the background (detached).
    fn spawn(&self, future: BoxFuture<'static, ()>);
    /// A future that completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> BoxSleep;
    /// A TCP connection to `host:port` (a name is resolved), with `TCP_NODELAY` set.
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Stream>>;
    /// A listener bound to `addr`.
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// A listener made of `listener`, already bound and listening (non-blocking): how a node
    /// shares its port with other nodes (`Config::reuse_port`). A runtime that cannot adopt a
    /// socket keeps this default, and such nodes fail to start with its error.
    fn adopt(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        drop(listener);
        Err(io::Error::new(io::ErrorKind::Unsupported, "this runtime cannot adopt a listener"))
    }
}

/// A TCP socket bound to `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), listening and
/// non-blocking: several processes or nodes may bind the same port this way, and the kernel
/// spreads new connections among them (Linux, and the BSDs).
pub fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The runtime a node runs on, shared by its tasks.
pub type Rt = Arc<dyn Runtime>;

/// A future that completes after `d` (a far deadline if `now + d` overflows).
pub fn sleep(rt: &dyn Runtime, d: Duration) -> BoxSleep {
    let now = Instant::now();
    rt.sleep_until(now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)))
}

/// `future`'s output, or `None` once `d` has passed.
pub async fn within<T>(
    rt: &dyn Runtime,
    d: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    use futures_lite::FutureExt as _;
    async { Some(future.await) }
        .or(async {
            sleep(rt, d).await;
            None
        })
        .await
}

/// Spawns `future` and hands its output to the returned receiver (closed if the task was
/// dropped unfinished).
pub fn spawn_with_output<T: Send + 'static>(
    rt: &dyn Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> async_channel::Receiver<T> {
    let (tx, rx) = async_channel::bounded(1);
    rt.spawn(Box::pin(async move {
        let _ = tx.try_send(future.await);
    }));
    rx
}
