//! The listener: one port for every endpoint (see `routes`), plain or TLS, with a bound on
//! connections and timeouts on the handshake and on request headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use smol::channel::Receiver;
use smol::future::FutureExt as _;
use smol::net::{TcpListener, TcpStream};

use crate::routes::{RouteCtx, service};
use crate::rt::{FuturesIo, SmolTimer};
use crate::tls::MaybeTls;

/// Counts a served connection for as long as it lives.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

/// Accepts connections until `stop` fires; then every connection it serves is closed once its
/// request in flight, if any, is answered.
///
/// Closing them matters: a kept-alive connection outliving its node would answer every later
/// request `503` (the node task is gone), and a client reusing it would keep reaching the
/// stopped node, even once a new node listens at the same address, until its retries ran out
/// and its messages failed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<RouteCtx>,
    stop: Receiver<()>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    // Never sent on: dropped when this loop ends, which every connection's receiver sees.
    let (_stopping, stopped) = smol::channel::bounded::<()>(1);
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = stop.recv().await;
                None
            })
            .await;
        let (tcp, peer) = match accepted {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                smol::Timer::after(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if live.load(Ordering::Acquire) >= ctx.limits.max_connections {
            tracing::info!(%peer, "connection limit reached; closing");
            drop(tcp);
            continue;
        }
        live.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard(Arc::clone(&live));
        let ctx = Arc::clone(&ctx);
        let tls = tls.clone();
        let stopped = stopped.clone();
        smol::spawn(async move {
            let _guard = guard;
            let _ = tcp.set_nodelay(true);
            if let Some(stream) = handshake(tcp, tls, &ctx).await {
                serve_connection(stream, ctx, stopped).await;
            }
        })
        .detach();
    }
}

type Stream = MaybeTls<TlsStream<TcpStream>>;

async fn handshake(tcp: TcpStream, tls: Option<TlsAcceptor>, ctx: &RouteCtx) -> Option<Stream> {
    let Some(acceptor) = tls else { return Some(MaybeTls::Plain(tcp)) };
    let accepted = async { acceptor.accept(tcp).await.ok() }
        .or(async {
            smol::Timer::after(ctx.limits.handshake_timeout).await;
            None
        })
        .await?;
    Some(MaybeTls::Tls(Box::new(accepted)))
}

/// Serves one connection until it ends; once `stopped` closes (the node stopped), keep-alive
/// ends: the request in flight is answered, then the connection closes.
async fn serve_connection(stream: Stream, ctx: Arc<RouteCtx>, stopped: Receiver<()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(SmolTimer)
        .header_read_timeout(ctx.limits.handshake_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(FuturesIo(stream), service(ctx)).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = async { Some(conn.as_mut().await) }
        .or(async {
            let _ = stopped.recv().await;
            None
        })
        .await;
    let result = match ended {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Whether plain (non-TLS) listening on `addr` is allowed.
pub(crate) fn check_plain(addr: SocketAddr, require_tls: bool) -> Result<(), ListenError> {
    if require_tls && !addr.ip().is_loopback() {
        return Err(ListenError::PlainNotLoopback(addr));
    }
    Ok(())
}
