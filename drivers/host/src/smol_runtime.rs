//! [`SmolRuntime`]: the host's four operations on smol's global executor and `async-net`
//! (feature `smol`; `peerlink-smol` re-exports it, and this crate's tests run on it).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use std::sync::Arc;

use crate::runtime::{BoxFuture, BoxSleep, Listener, Rt, Runtime, Stream};

/// smol's global executor, its timers and its TCP sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

/// A smol TCP listener.
struct SmolListener(smol::net::TcpListener);

impl Listener for SmolListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (tcp, peer) = self.0.accept().await?;
            tcp.set_nodelay(true)?;
            Ok((Box::new(tcp) as Stream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        smol::spawn(future).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> BoxSleep {
        let timer = smol::Timer::at(deadline);
        Box::pin(async move {
            timer.await;
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Stream>> {
        Box::pin(async move {
            let tcp = smol::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp) as Stream)
        })
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = smol::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SmolListener(listener)) as Box<dyn Listener>)
        })
    }

    fn adopt(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        let listener = smol::net::TcpListener::try_from(listener)?;
        Ok(Box::new(SmolListener(listener)))
    }
}

/// smol as a node's runtime.
pub fn rt() -> Rt {
    Arc::new(SmolRuntime)
}
