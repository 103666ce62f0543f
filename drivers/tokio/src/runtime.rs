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

/// A tokio TCP listener, with its runtime: an accepted socket is made in the runtime's context,
/// whichever executor polls the accept.
struct TokioListener(tokio::net::TcpListener, tokio::runtime::Handle);

impl Listener for TokioListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (tcp, peer) = std::future::poll_fn(|cx| {
                let _entered = self.1.enter();
                self.0.poll_accept(cx)
            })
            .await?;
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
        // On the runtime, so that the future may be polled by any executor (a tokio socket is
        // made in its runtime's context); the join handle is a plain future.
        let task = self.0.spawn(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, io::Error>(tcp)
        });
        Box::pin(async move {
            let tcp = task.await.map_err(io::Error::other)??;
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
        let handle = self.0.clone();
        Box::pin(async move { Ok(Box::new(TokioListener(bound?, handle)) as Box<dyn Listener>) })
    }

    fn adopt(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        listener.set_nonblocking(true)?;
        let _entered = self.0.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(Box::new(TokioListener(listener, self.0.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation works from another executor's thread (here a plain `block_on`), as the
    /// `peerlink` command and the benchmark use it: nothing is made outside the runtime.
    #[test]
    fn every_operation_works_outside_the_runtime_context() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let rt = TokioRuntime::new(runtime.handle().clone());
        futures_lite::future::block_on(async {
            let listener = rt.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let dial = rt.connect("127.0.0.1".to_owned(), addr.port());
            let (accepted, dialled) = futures_lite::future::zip(listener.accept(), dial).await;
            let (mut server, _) = accepted.unwrap();
            let mut client = dialled.unwrap();
            use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            let start = Instant::now();
            rt.sleep_until(start + std::time::Duration::from_millis(20)).await;
            assert!(start.elapsed() >= std::time::Duration::from_millis(20));
            let (tx, rx) = async_channel::bounded(1);
            rt.spawn(Box::pin(async move {
                let _ = tx.send(7u8).await;
            }));
            assert_eq!(rx.recv().await.ok(), Some(7));
        });
    }
}
