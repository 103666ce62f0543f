//! hyper 1.x on any [`Runtime`](crate::runtime::Runtime): an executor, a timer, and IO wrappers in both directions between hyper's
//! `rt::Read`/`rt::Write` and futures-io's `AsyncRead`/`AsyncWrite`.
//!
//! No `unsafe`: reads into hyper's buffer go through a small stack buffer and
//! `ReadBufCursor::put_slice` (one extra copy of at most [`COPY_CHUNK`] bytes per read).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

use crate::runtime::{BoxSleep, Rt};

/// Largest number of bytes one `poll_read` of [`FuturesIo`] moves into hyper's buffer.
pub const COPY_CHUNK: usize = 8 * 1024;

/// Runs hyper's background futures on the node's [`Runtime`](crate::runtime::Runtime).
#[derive(Debug, Clone)]
pub struct HyperExecutor(pub Rt);

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(Box::pin(fut));
    }
}

/// hyper's timer on the node's runtime.
#[derive(Debug, Clone)]
pub struct HyperTimer(pub Rt);

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(crate::runtime::sleep(&*self.0, duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(self.0.sleep_until(deadline)))
    }
}

/// A runtime's timer as a hyper `Sleep`.
pub struct HyperSleep(BoxSleep);

impl Future for HyperSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

/// A futures-io stream (a runtime's TCP stream, a TLS stream) as hyper IO.
#[derive(Debug)]
pub struct FuturesIo<T>(pub T);

impl<T: AsyncRead + Unpin> Read for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; COPY_CHUNK];
        let want = buf.remaining().min(COPY_CHUNK);
        let Some(dst) = tmp.get_mut(..want) else { return Poll::Ready(Ok(())) };
        match Pin::new(&mut self.0).poll_read(cx, dst) {
            Poll::Ready(Ok(n)) => {
                if let Some(read) = dst.get(..n) {
                    buf.put_slice(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> Write for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// hyper IO (such as `hyper::upgrade::Upgraded`) as a futures-io stream, for async-tungstenite.
#[derive(Debug)]
pub struct HyperIo<T>(pub T);

impl<T: Read + Unpin> AsyncRead for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, rb.unfilled()) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Write + Unpin> AsyncWrite for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    use smol::net::{TcpListener, TcpStream};

    use crate::smol_runtime::rt as test_rt;

    #[test]
    fn timer_sleeps_at_least_the_duration() {
        smol::block_on(async {
            let start = Instant::now();
            hyper::rt::Timer::sleep(&HyperTimer(test_rt()), Duration::from_millis(20)).await;
            assert!(start.elapsed() >= Duration::from_millis(20));
        });
    }

    #[test]
    fn executor_runs_spawned_futures() {
        smol::block_on(async {
            let (tx, rx) = async_channel::bounded(1);
            hyper::rt::Executor::execute(&HyperExecutor(test_rt()), async move {
                let _ = tx.send(7u8).await;
            });
            assert_eq!(rx.recv().await.ok(), Some(7));
        });
    }

    /// A real hyper server and client over the adapter, through a loopback socket, with a body
    /// larger than one copy chunk, then an upgrade carried through `HyperIo` both ways.
    #[test]
    fn hyper_round_trip_and_upgrade_over_loopback() {
        smol::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = smol::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/upgrade" {
                            smol::spawn(async move {
                                let up = hyper::upgrade::on(req).await.unwrap();
                                let mut io = HyperIo(up);
                                let mut buf = [0u8; 5];
                                io.read_exact(&mut buf).await.unwrap();
                                io.write_all(&buf).await.unwrap();
                                io.flush().await.unwrap();
                            })
                            .detach();
                            let resp = hyper::Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            return Ok::<_, hyper::Error>(resp);
                        }
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok(hyper::Response::new(Full::new(body)))
                    },
                );
                hyper::server::conn::http1::Builder::new()
                    .timer(HyperTimer(test_rt()))
                    .serve_connection(FuturesIo(stream), service)
                    .with_upgrades()
                    .await
                    .unwrap();
            });

            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(FuturesIo(stream)).await.unwrap();
            smol::spawn(async move {
                let _ = conn.with_upgrades().await;
            })
            .detach();
            let big = vec![0xabu8; COPY_CHUNK * 3 + 17];
            let req = hyper::Request::post("/echo").body(Full::new(Bytes::from(big.clone())));
            let resp = send.send_request(req.unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got.as_ref(), big.as_slice());

            let req = hyper::Request::get("/upgrade")
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::new(Bytes::new()))
                .unwrap();
            // The connection takes the next request only once it finished the previous one.
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 101);
            let mut io = HyperIo(hyper::upgrade::on(resp).await.unwrap());
            io.write_all(b"hello").await.unwrap();
            io.flush().await.unwrap();
            let mut back = [0u8; 5];
            io.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            server.await;
        });
    }
}
