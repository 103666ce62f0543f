//! The runtime of this crate's unit tests: smol's global executor (the real drivers are in
//! `drivers/smol` and `drivers/tokio`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::{BoxFuture, BoxSleep, Listener, Rt, Runtime, Stream};

#[derive(Debug)]
struct TestRuntime;

struct TestListener(smol::net::TcpListener);

impl Listener for TestListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (s, a) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s) as Stream, a))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Runtime for TestRuntime {
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
            let s = smol::net::TcpStream::connect((host.as_str(), port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Stream)
        })
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = smol::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TestListener(l)) as Box<dyn Listener>)
        })
    }
}

/// The test runtime.
pub(crate) fn rt() -> Rt {
    Arc::new(TestRuntime)
}
