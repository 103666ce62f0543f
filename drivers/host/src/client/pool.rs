//! Connections to other nodes: TCP or TLS, bounded by `http_timeout`; the keep-alive HTTP/1.1
//! connection ([`KeepAlive`]), which can hand its socket back for a WebSocket upgrade; and the
//! idle connections kept per node for the next request to it.

use std::time::Instant;

use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::pki_types::ServerName;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{Parts, SendRequest};
use hyper::{Method, Request, Uri};

use super::{ClientCtx, ClientError, timeout};
use crate::rt::FuturesIo;
use crate::runtime::{Runtime, Stream as Tcp, spawn_with_output};
use crate::tls::MaybeTls;

/// A connection to another node: plain TCP or TLS.
pub(crate) type Stream = MaybeTls<TlsStream<Tcp>>;

/// A connection to `uri`'s host, over TLS for `https`/`wss`.
pub(super) async fn connect(ctx: &ClientCtx, uri: &Uri) -> Result<Stream, ClientError> {
    let tls = matches!(uri.scheme_str(), Some("https" | "wss"));
    let host = uri.host().ok_or(ClientError::BadUrl)?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = ctx.rt.connect(host.clone(), port).await?;
    if !tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let config = ctx.tls.clone().ok_or(ClientError::NoTls)?;
    let name = ServerName::try_from(host).map_err(|_| ClientError::BadUrl)?;
    let stream = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// [`connect`], bounded by `http_timeout`.
pub(super) async fn connect_within(ctx: &ClientCtx, uri: &Uri) -> Result<Stream, ClientError> {
    timeout(&*ctx.rt, ctx.limits.http_timeout, connect(ctx, uri)).await
}

/// An HTTP/1.1 connection kept open across requests. It can hand its socket back, so a client
/// fetches its token and then upgrades to WebSocket on one connection (spec §23.2).
/// The headers of a request that say what its body is and what it takes back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Media<'a> {
    pub content_type: &'a str,
    /// `Accept`, if any.
    pub accept: Option<&'a str>,
}

impl<'a> Media<'a> {
    /// A body of `content_type`, no `Accept`.
    pub fn of(content_type: &'a str) -> Self {
        Media { content_type, accept: None }
    }
}

/// An answer read on a [`KeepAlive`]: its status, body, and `Content-Type` header.
pub(super) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

pub(super) struct KeepAlive {
    send: SendRequest<Full<Bytes>>,
    /// The connection's task's outcome: its socket back, once `send` is dropped.
    conn: async_channel::Receiver<Result<Parts<FuturesIo<Stream>>, hyper::Error>>,
    /// Whether the last answer left the connection open (no `Connection: close`).
    reusable: bool,
}

impl KeepAlive {
    /// An HTTP/1.1 connection over `stream`, its connection task spawned on `rt`.
    pub(super) async fn open(rt: &dyn Runtime, stream: Stream) -> Result<Self, ClientError> {
        let (send, conn) = hyper::client::conn::http1::handshake(FuturesIo(stream)).await?;
        Ok(Self { send, conn: spawn_with_output(rt, conn.without_shutdown()), reusable: true })
    }

    /// Whether another request may go on this connection: the last answer did not ask to close
    /// it and the node has not closed it since.
    pub(super) fn open_for_more(&self) -> bool {
        self.reusable && !self.send.is_closed()
    }

    /// A fresh connection to `uri`'s host.
    pub(super) async fn connect(ctx: &ClientCtx, uri: &Uri) -> Result<Self, ClientError> {
        Self::open(&*ctx.rt, connect_within(ctx, uri).await?).await
    }

    /// One exchange; the response body is bounded by `max_body`.
    pub(super) async fn request(
        &mut self,
        method: Method,
        uri: &Uri,
        bearer: Option<&str>,
        media: Media<'_>,
        body: Bytes,
        max_body: usize,
    ) -> Result<Answer, ClientError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host = uri.authority().map_or("", |a| a.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, media.content_type);
        if let Some(accept) = media.accept {
            req = req.header(hyper::header::ACCEPT, accept);
        }
        if let Some(token) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body)).map_err(|_| ClientError::BadUrl)?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.reusable = !resp
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("close")));
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| ClientError::BadResponse("body too large or cut"))?
            .to_bytes()
            .to_vec();
        Ok(Answer { status, body, content_type })
    }

    /// The socket back, once every answer has been read; refuses one with bytes left over.
    pub(super) async fn into_stream(self) -> Result<Stream, ClientError> {
        drop(self.send);
        let parts = self
            .conn
            .recv()
            .await
            .map_err(|_| ClientError::BadResponse("connection task gone"))??;
        if !parts.read_buf.is_empty() {
            return Err(ClientError::BadResponse("bytes after the last answer"));
        }
        Ok(parts.io.0)
    }
}

impl ClientCtx {
    /// An idle connection to `base` that may carry another request, if one is kept.
    pub(super) fn take_idle(&self, base: &str) -> Option<KeepAlive> {
        let mut idle = self.idle.lock().ok()?;
        let conns = idle.get_mut(base)?;
        // Newest first: the most recently used is the least likely to have been closed.
        while let Some((conn, since)) = conns.pop() {
            if conn.open_for_more() && since.elapsed() < self.limits.http_idle_reuse {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `base`, if it may carry one and there is room.
    pub(super) fn keep_idle(&self, base: &str, conn: KeepAlive) {
        if !conn.open_for_more() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        if !idle.contains_key(base) && idle.len() >= self.limits.max_cached_tokens.max(1) {
            idle.pop_first();
        }
        let reuse = self.limits.http_idle_reuse;
        // Every node's expired connections go, not only this one's: a node never contacted
        // again must not keep sockets open.
        idle.retain(|_, conns| {
            conns.retain(|(c, since)| c.open_for_more() && since.elapsed() < reuse);
            !conns.is_empty()
        });
        let conns = idle.entry(base.to_owned()).or_default();
        if conns.len() < self.limits.max_idle_http_per_node {
            conns.push((conn, Instant::now()));
        }
    }
}
