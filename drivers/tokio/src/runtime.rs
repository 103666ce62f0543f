//! [`TokioRuntime`]: the host's four operations on a tokio runtime. Streams are tokio's, seen
//! as futures-io through `tokio_util::compat`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use peerlink_host::runtime::{BoxFuture, BoxSleep, Listener, Runtime, Stream};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// A tokio runtime, by its handle: tasks and timers go to it from any thread.
#[derive(Debug, Clone)]
pub struct TokioRuntime(tokio::runtime::Handle);

impl TokioRuntime {
    /// The runtime this is called from. Panics outside a tokio runtime, as `tokio::spawn` does.
    pub fn current() -> Self {
        Self(tokio::runtime::Handle::current())
    }

    /// The runtime of `handle`.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self(handle)
    }
}

/// A tokio TCP listener.
struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (tcp, peer) = self.0.accept().await?;
            tcp.set_nodelay(true)?;
            Ok((Box::new(tcp.compat()) as Stream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        drop(self.0.spawn(future));
    }

    fn sleep_until(&self, deadline: Instant) -> BoxSleep {
        // A timer registers with the runtime it is made in.
        let _entered = self.0.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Stream>> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp.compat()) as Stream)
        })
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        // Bound here, in the runtime's context (a tokio socket registers with its reactor).
        let bound = std::net::TcpListener::bind(addr).and_then(|std| {
            std.set_nonblocking(true)?;
            let _entered = self.0.enter();
            tokio::net::TcpListener::from_std(std)
        });
        Box::pin(async move { Ok(Box::new(TokioListener(bound?)) as Box<dyn Listener>) })
    }
}
