//! The listener: one port for every endpoint (see `routes`), plain or TLS, with a bound on
//! connections and timeouts on the handshake and on request headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_channel::Receiver;
use futures_lite::FutureExt as _;
use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;

pub use crate::error::ListenError;
use crate::routes::{RouteCtx, service};
use crate::rt::{FuturesIo, HyperTimer};
use crate::runtime::{Listener, Stream as Tcp, sleep};
use crate::tls::MaybeTls;

/// Counts a served connection for as long as it lives.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until `stop` fires; then every connection it serves is closed once its
/// request in flight, if any, is answered.
///
/// Closing them matters: a kept-alive connection outliving its node would answer every later
/// request `503` (the node task is gone), and a client reusing it would keep reaching the
/// stopped node, even once a new node listens at the same address, until its retries ran out
/// and its messages failed.
pub(crate) async fn serve(
    listener: Box<dyn Listener>,
    tls: Option<TlsAcceptor>,
    ctx: Arc<RouteCtx>,
    stop: Receiver<()>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    // Never sent on: dropped when this loop ends, which every connection's receiver sees.
    let (_stopping, stopped) = async_channel::bounded::<()>(1);
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
                sleep(&*ctx.rt, std::time::Duration::from_millis(50)).await;
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
        let rt = Arc::clone(&ctx.rt);
        rt.spawn(Box::pin(async move {
            let _guard = guard;
            if let Some(stream) = handshake(tcp, tls, &ctx).await {
                serve_connection(stream, ctx, stopped).await;
            }
        }));
    }
}

type Stream = MaybeTls<TlsStream<Tcp>>;

async fn handshake(tcp: Tcp, tls: Option<TlsAcceptor>, ctx: &RouteCtx) -> Option<Stream> {
    let Some(acceptor) = tls else { return Some(MaybeTls::Plain(tcp)) };
    let accepted = async { acceptor.accept(tcp).await.ok() }
        .or(async {
            sleep(&*ctx.rt, ctx.limits.handshake_timeout).await;
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
        .timer(HyperTimer(Arc::clone(&ctx.rt)))
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
