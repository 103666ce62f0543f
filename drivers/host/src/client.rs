//! The client side: authenticating to other nodes (challenge, signature, cached JWT), opening
//! outbound WebSocket links, and the HTTP requests the node asks for.
//!
//! HTTP uses hyper's client over the [`rt`](crate::rt) adapter: no extra HTTP stack, the same
//! parser as the server, and async all the way (no thread per request as `ureq` in
//! `smol::unblock` would need while a long-poll is held). A token is fetched on one keep-alive
//! connection (both requests), and an outbound link then upgrades that same connection. The
//! node's other requests (posts, long-polls) reuse idle keep-alive connections to the same node
//! (at most `max_idle_http_per_node` kept, each for at most `http_idle_reuse`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_channel::Sender;
use futures_lite::FutureExt as _;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{Parts, SendRequest};
use hyper::{Method, Request, Uri};
use peerlink_core::auth::sign_challenge;
use peerlink_core::endpoints;
use peerlink_core::node::NodeAddr;
use peerlink_core::node::{HttpMethod, LinkId};
use peerlink_core::{EntityId, Identity};

use crate::config::DriverLimits;
use crate::corked::Corked;
use crate::driver::Input;
use crate::link::{run_link, ws_config};
use crate::link_queue::LinkQueues;
use crate::rt::FuturesIo;
use crate::runtime::{Rt, Runtime, Stream as Tcp, sleep, spawn_with_output};
use crate::tls::MaybeTls;

/// Why a request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host[:port]/…` or `ws(s)://…`.
    #[error("bad URL")]
    BadUrl,
    /// `https`/`wss` without a configured CA file.
    #[error("TLS needed but no CA file is configured")]
    NoTls,
    /// Connecting, TLS or I/O failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The node answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer was not what the endpoint documents (or too large).
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// The WebSocket handshake failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The node at `url` answered `GET /auth/token` with another id than the hop this client
    /// meant to reach (spec §23.2): nothing was signed. A wrong `--url`, or a relay's URL given
    /// where the peer's own node was meant.
    #[error("the node at {url} is {found}, not {expected}")]
    WrongNode {
        /// The node's base URL.
        url: String,
        /// The id the node returned.
        found: Box<EntityId>,
        /// The id of the hop this client meant to reach (configured or pinned).
        expected: Box<EntityId>,
    },
}

/// What client tasks share: the identity (to sign challenges), TLS, the token cache, bounds.
pub(crate) struct ClientCtx {
    /// The executor.
    pub rt: Rt,
    pub identity: Arc<Identity>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub limits: DriverLimits,
    pub max_frame_bytes: usize,
    pub max_http_body_bytes: usize,
    /// Bearer tokens by node base URL, with when to stop using them.
    tokens: Mutex<BTreeMap<String, (String, Instant)>>,
    /// Idle keep-alive connections by node base URL, with when each became idle.
    idle: Mutex<BTreeMap<String, Vec<(KeepAlive, Instant)>>>,
}

impl ClientCtx {
    pub fn new(
        rt: Rt,
        identity: Arc<Identity>,
        tls: Option<Arc<rustls::ClientConfig>>,
        limits: DriverLimits,
        max_frame_bytes: usize,
        max_http_body_bytes: usize,
    ) -> Self {
        Self {
            rt,
            identity,
            tls,
            limits,
            max_frame_bytes,
            max_http_body_bytes,
            tokens: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(BTreeMap::new()),
        }
    }

    /// An idle connection to `base` that may carry another request, if one is kept.
    fn take_idle(&self, base: &str) -> Option<KeepAlive> {
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
    fn keep_idle(&self, base: &str, conn: KeepAlive) {
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

    fn cached(&self, base: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(base).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    fn store(&self, base: &str, token: String, valid_for: Duration) {
        if let Ok(mut tokens) = self.tokens.lock() {
            if !tokens.contains_key(base) && tokens.len() >= self.limits.max_cached_tokens.max(1) {
                tokens.pop_first();
            }
            // Renew at 80 % of the lifetime, so a token is never presented about to expire.
            let until = Instant::now() + valid_for.mul_f64(0.8);
            tokens.insert(base.to_owned(), (token, until));
        }
    }

    fn forget(&self, base: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(base);
        }
    }
}

/// `scheme://authority` of a URL, with `ws`→`http` and `wss`→`https`: the key naming a node.
pub fn base_of(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let scheme = match uri.scheme_str()? {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return None,
    };
    Some(format!("{scheme}://{}", uri.authority()?.as_str().to_ascii_lowercase()))
}

type Stream = MaybeTls<TlsStream<Tcp>>;

async fn connect(ctx: &ClientCtx, uri: &Uri) -> Result<Stream, ClientError> {
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
async fn connect_within(ctx: &ClientCtx, uri: &Uri) -> Result<Stream, ClientError> {
    timeout(&*ctx.rt, ctx.limits.http_timeout, connect(ctx, uri)).await
}

async fn timeout<T>(
    rt: &dyn Runtime,
    d: Duration,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    f.or(async {
        sleep(rt, d).await;
        Err(ClientError::Timeout)
    })
    .await
}

/// An HTTP/1.1 connection kept open across requests. It can hand its socket back, so a client
/// fetches its token and then upgrades to WebSocket on one connection (spec §23.2).
struct KeepAlive {
    send: SendRequest<Full<Bytes>>,
    /// The connection's task's outcome: its socket back, once `send` is dropped.
    conn: async_channel::Receiver<Result<Parts<FuturesIo<Stream>>, hyper::Error>>,
    /// Whether the last answer left the connection open (no `Connection: close`).
    reusable: bool,
}

impl KeepAlive {
    async fn open(rt: &dyn Runtime, stream: Stream) -> Result<Self, ClientError> {
        let (send, conn) = hyper::client::conn::http1::handshake(FuturesIo(stream)).await?;
        Ok(Self { send, conn: spawn_with_output(rt, conn.without_shutdown()), reusable: true })
    }

    /// Whether another request may go on this connection: the last answer did not ask to close
    /// it and the node has not closed it since.
    fn open_for_more(&self) -> bool {
        self.reusable && !self.send.is_closed()
    }

    /// A fresh connection to `uri`'s host.
    async fn connect(ctx: &ClientCtx, uri: &Uri) -> Result<Self, ClientError> {
        Self::open(&*ctx.rt, connect_within(ctx, uri).await?).await
    }

    /// One exchange; the response body is bounded by `max_body`.
    async fn request(
        &mut self,
        method: Method,
        uri: &Uri,
        bearer: Option<&str>,
        content_type: &str,
        body: Bytes,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host = uri.authority().map_or("", |a| a.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(token) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body)).map_err(|_| ClientError::BadUrl)?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
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
        Ok((status, body))
    }

    /// The socket back, once every answer has been read; refuses one with bytes left over.
    async fn into_stream(self) -> Result<Stream, ClientError> {
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

/// One HTTP exchange on a fresh connection; the response body is bounded by `max_body`.
pub(crate) async fn http(
    ctx: &ClientCtx,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
    max_body: usize,
) -> Result<(u16, Vec<u8>), ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl)?;
    let mut conn = KeepAlive::open(&*ctx.rt, connect(ctx, &uri).await?).await?;
    conn.request(method, &uri, bearer, content_type, Bytes::from(body), max_body).await
}

/// A bearer token for the node `node` at `base` (`http(s)://host:port`), from the cache or by
/// authenticating on a connection of its own, which is then kept for reuse (usually by the
/// request that wanted the token).
pub(crate) async fn token(
    ctx: &ClientCtx,
    base: &str,
    node: &EntityId,
) -> Result<String, ClientError> {
    if let Some(t) = ctx.cached(base) {
        return Ok(t);
    }
    let uri: Uri = base.parse().map_err(|_| ClientError::BadUrl)?;
    let mut conn = KeepAlive::connect(ctx, &uri).await?;
    let token = fetch_token(ctx, &mut conn, base, node).await?;
    ctx.keep_idle(base, conn);
    Ok(token)
}

/// A token for `node` and a connection to `uri` to upgrade: without a cached token, the token
/// is fetched on that same connection (spec §23.2), or on fresh ones where the node closes a
/// connection after an answer.
async fn token_and_stream(
    ctx: &ClientCtx,
    uri: &Uri,
    base: &str,
    node: &EntityId,
) -> Result<(String, Stream), ClientError> {
    let stream = connect_within(ctx, uri).await?;
    if let Some(t) = ctx.cached(base) {
        return Ok((t, stream));
    }
    let mut conn = KeepAlive::open(&*ctx.rt, stream).await?;
    let token = fetch_token(ctx, &mut conn, base, node).await?;
    if conn.open_for_more()
        && let Ok(stream) = conn.into_stream().await
    {
        return Ok((token, stream));
    }
    Ok((token, connect_within(ctx, uri).await?))
}

/// Authenticates on `conn`: `GET /auth/token`, sign the challenge naming `node`,
/// `POST /auth/verify`; caches the token.
async fn fetch_token(
    ctx: &ClientCtx,
    conn: &mut KeepAlive,
    base: &str,
    node: &EntityId,
) -> Result<String, ClientError> {
    let me = ctx.identity.id();
    let url = endpoints::token_url(base, me.as_str(), &ctx.identity.public_key().to_b64u());
    let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl)?;
    let max = ctx.limits.max_auth_body_bytes;
    let (status, body) = timeout(
        &*ctx.rt,
        ctx.limits.http_timeout,
        conn.request(Method::GET, &uri, None, "text/plain", Bytes::new(), max),
    )
    .await?;
    if status != 200 {
        return Err(ClientError::Status(status));
    }
    let ch: endpoints::ChallengeBody =
        endpoints::parse_body(&body, max).map_err(|_| ClientError::BadResponse("challenge"))?;
    let signature = sign_for(ctx, base, node, &ch)?;
    let verify = endpoints::VerifyBody {
        entity_id: me.as_str().to_owned(),
        challenge: ch.challenge,
        signature,
    };
    let uri: Uri = endpoints::verify_url(base).parse().map_err(|_| ClientError::BadUrl)?;
    let body = serde_json::to_vec(&verify).map_err(|_| ClientError::BadResponse("verify body"))?;
    if !conn.open_for_more() {
        *conn = KeepAlive::connect(ctx, &uri).await?;
    }
    let (status, body) = timeout(
        &*ctx.rt,
        ctx.limits.http_timeout,
        conn.request(Method::POST, &uri, None, "application/json", Bytes::from(body), max),
    )
    .await?;
    if status != 200 {
        return Err(ClientError::Status(status));
    }
    let t: endpoints::TokenBody =
        endpoints::parse_body(&body, max).map_err(|_| ClientError::BadResponse("token"))?;
    let now_ms = crate::driver::unix_millis();
    ctx.store(base, t.token.clone(), Duration::from_millis(t.expires_at.saturating_sub(now_ms)));
    Ok(t.token)
}

/// The signature answering challenge `ch` from the node at `base`, which this client means to
/// be the hop `node`. The pin (spec §23.2): the input signed names the `node_id` the node
/// returned, and only once it is checked to be `node`. A node claiming another id gets nothing
/// signed: signing the expected id would only earn a 401 from a node that is someone else, and
/// signing the claimed one would answer, for a rogue node, a challenge it relayed from another.
fn sign_for(
    ctx: &ClientCtx,
    base: &str,
    node: &EntityId,
    ch: &endpoints::ChallengeBody,
) -> Result<String, ClientError> {
    let found =
        EntityId::new(ch.node_id.clone()).map_err(|_| ClientError::BadResponse("node_id"))?;
    if found != *node {
        let (found, expected) = (Box::new(found), Box::new(node.clone()));
        return Err(ClientError::WrongNode { url: base.to_owned(), found, expected });
    }
    sign_challenge(&ctx.identity, &found, &ch.challenge)
        .map_err(|_| ClientError::BadResponse("challenge"))
}

/// An HTTP request the node asked for, at `url` (the node's finished URL) of `node`: `None`
/// when there was no answer (the node retries). A 401 to a cached token is answered by one
/// fresh login and one more try (the node may have restarted with a new key, spec §23.2); a
/// second 401 goes to the node.
pub(crate) async fn node_request(
    ctx: &ClientCtx,
    node: &NodeAddr,
    method: HttpMethod,
    url: &str,
    body: Vec<u8>,
    poll_wait: Duration,
) -> Option<(u16, Vec<u8>)> {
    let base = node.base_url.trim_end_matches('/');
    let body = Bytes::from(body);
    for attempt in 0..2 {
        let had_token = ctx.cached(base).is_some();
        let answer =
            node_request_once(ctx, base, &node.entity, method, url, body.clone(), poll_wait).await;
        match answer {
            Some((401, _)) if attempt == 0 && had_token => continue,
            answer => return answer,
        }
    }
    None
}

async fn node_request_once(
    ctx: &ClientCtx,
    base: &str,
    node: &EntityId,
    method: HttpMethod,
    url: &str,
    body: Bytes,
    poll_wait: Duration,
) -> Option<(u16, Vec<u8>)> {
    let token = match token(ctx, base, node).await {
        Ok(t) => t,
        // The node refused us outright: report it as the HTTP refusal it is.
        Err(ClientError::Status(s)) if (400..500).contains(&s) => return Some((s, Vec::new())),
        // Another node answers at that URL (spec §23.2): no retry can change that, so the
        // frames fail as refused at once (421 Misdirected Request, a 4xx of §16.4) rather
        // than as unreachable after the retries.
        Err(e @ ClientError::WrongNode { .. }) => {
            tracing::warn!(error = %e, "not authenticating: another node than the one meant");
            return Some((421, Vec::new()));
        }
        Err(e) => {
            tracing::debug!(%url, error = %e, "authentication failed");
            return None;
        }
    };
    let (m, wait) = match method {
        HttpMethod::Get => (Method::GET, poll_wait),
        HttpMethod::Post => (Method::POST, Duration::ZERO),
    };
    let limit = ctx.max_http_body_bytes;
    let d = ctx.limits.http_timeout.saturating_add(wait);
    let exchange = async {
        let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl)?;
        let ndjson = "application/x-ndjson";
        // A kept connection the node closed just as this request went out fails at once:
        // the request is made again, once, on a fresh connection (the stream makes a repeated
        // post harmless, §13).
        if let Some(mut conn) = ctx.take_idle(base) {
            let again = body.clone();
            if let Ok(answer) =
                conn.request(m.clone(), &uri, Some(&token), ndjson, again, limit).await
            {
                ctx.keep_idle(base, conn);
                return Ok(answer);
            }
        }
        let mut conn = KeepAlive::connect(ctx, &uri).await?;
        let answer = conn.request(m, &uri, Some(&token), ndjson, body, limit).await?;
        ctx.keep_idle(base, conn);
        Ok(answer)
    };
    match timeout(&*ctx.rt, d, exchange).await {
        Ok((status, body)) => {
            if status == 401 {
                ctx.forget(base);
            }
            Some((status, body))
        }
        Err(e) => {
            tracing::debug!(%url, error = %e, "HTTP request failed");
            None
        }
    }
}

/// Opens an outbound link to `node` at `url` (the node's finished URL) and runs it; reports
/// `LinkUp` or `LinkFailed`.
pub(crate) async fn run_outbound(
    ctx: Arc<ClientCtx>,
    link: LinkId,
    url: String,
    node: NodeAddr,
    queues: LinkQueues,
    inputs: Sender<Input>,
) {
    let connected = timeout(&*ctx.rt, ctx.limits.handshake_timeout.saturating_mul(3), async {
        let base = node.base_url.trim_end_matches('/');
        let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl)?;
        let (token, stream) = token_and_stream(&ctx, &uri, base, &node.entity).await?;
        use async_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::BadResponse("token is not a header value"))?;
        req.headers_mut().insert(hyper::header::AUTHORIZATION, auth);
        let config = ws_config(ctx.max_frame_bytes, ctx.limits.ws_read_buffer_bytes);
        let stream = Corked::new(stream);
        match async_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(async_tungstenite::tungstenite::Error::Http(resp)) => {
                if resp.status() == 401 {
                    ctx.forget(base);
                }
                Err(ClientError::Status(resp.status().as_u16()))
            }
            Err(e) => Err(ClientError::WebSocket(e.to_string())),
        }
    })
    .await;
    match connected {
        Ok(ws) => {
            if inputs.send(Input::LinkUp { link }).await.is_err() {
                return;
            }
            run_link(Arc::clone(&ctx.rt), ws, link, queues, inputs).await;
        }
        Err(e @ ClientError::WrongNode { .. }) => {
            tracing::warn!(error = %e, "link failed: another node than the one meant");
            let _ = inputs.send(Input::LinkFailed { link }).await;
        }
        Err(e) => {
            tracing::info!(%url, error = %e, "link failed");
            let _ = inputs.send(Input::LinkFailed { link }).await;
        }
    }
}

/// `GET url` without authentication (for `peerlink status`: `/healthz`, `/metrics`); plain
/// `http://` only. The body is bounded by `max_body`.
pub async fn get_public(rt: Rt, url: &str, max_body: usize) -> Result<(u16, Vec<u8>), ClientError> {
    get_public_with(rt, url, None, max_body).await
}

/// [`get_public`], also over `https://` when `tls` is given.
async fn get_public_with(
    rt: Rt,
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_body: usize,
) -> Result<(u16, Vec<u8>), ClientError> {
    // No request here is authenticated: the identity only fills the context.
    let id = EntityId::new("anonymous").map_err(|_| ClientError::BadUrl)?;
    let identity = Arc::new(crate::keys::generate(id).map_err(|_| ClientError::BadUrl)?);
    let limits = DriverLimits::default();
    let ctx = ClientCtx::new(rt, identity, tls, limits.clone(), 0, max_body);
    timeout(
        &*ctx.rt,
        limits.http_timeout,
        http(&ctx, Method::GET, url, None, "text/plain", Vec::new(), max_body),
    )
    .await
}

/// Largest `GET /peers/capabilities` answer accepted, in bytes.
const MAX_CAPABILITIES_BODY: usize = 16 * 1024;

/// Who the node at `base` (`http(s)://host:port`) says it is: `GET /peers/capabilities`, the
/// public endpoint of spec §23.5, with its entity id and public key. A client that learns a
/// hop's id this way pins it: every later login there must return that id (spec §23.2). `tls`
/// (the client configuration of [`crate::tls::client_config`]) is needed for `https://`.
pub async fn capabilities(
    rt: Rt,
    base: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<endpoints::CapabilitiesBody, ClientError> {
    let url = format!("{}{}", base.trim_end_matches('/'), endpoints::CAPABILITIES_PATH);
    let (status, body) = get_public_with(rt, &url, tls, MAX_CAPABILITIES_BODY).await?;
    if status != 200 {
        return Err(ClientError::Status(status));
    }
    endpoints::parse_body(&body, MAX_CAPABILITIES_BODY)
        .map_err(|_| ClientError::BadResponse("capabilities"))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A minimal node on std sockets: answers `GET /auth/token`, `POST /auth/verify` and
    /// `POST /v1/messages` (with `Connection: close` and a close after each answer when `close`
    /// is set), and takes `PING` on whatever connection the client upgrades. Counts connections.
    fn fake_node(close: bool) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
        fake_node_quitting(close, usize::MAX)
    }

    /// [`fake_node`] whose connections end, without a word, after `answers` answers each.
    fn fake_node_quitting(
        close: bool,
        answers: usize,
    ) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
        fake_node_named("node", close, answers)
    }

    /// [`fake_node_quitting`] whose `/auth/token` names it `node_id`. Its `/auth/verify` answers
    /// 401 unless the signature is the client's ([`ctx`]) over `node_id` and the challenge.
    fn fake_node_named(
        node_id: &'static str,
        close: bool,
        answers: usize,
    ) -> (String, Arc<AtomicUsize>, std::sync::mpsc::Receiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let (pinged, ping_rx) = std::sync::mpsc::channel();
        let counter = Arc::clone(&conns);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let pinged = pinged.clone();
                std::thread::spawn(move || serve(stream, n, node_id, close, answers, pinged));
            }
        });
        (base, conns, ping_rx)
    }

    fn serve(
        stream: std::net::TcpStream,
        n: usize,
        node_id: &str,
        close: bool,
        answers: usize,
        pinged: std::sync::mpsc::Sender<usize>,
    ) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        for _ in 0..answers {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with("PING") {
                let _ = pinged.send(n);
                return;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let later = crate::driver::unix_millis() + 60_000;
            let mut status = "200 OK";
            let json = if line.starts_with("GET /auth/token") {
                let challenge = peerlink_core::encoding::b64u(&CHALLENGE);
                format!(
                    r#"{{"node_id":"{node_id}","challenge":"{challenge}","expires_at":{later}}}"#
                )
            } else if line.starts_with("POST /auth/verify") {
                if !signed_for(node_id, &body) {
                    status = "401 Unauthorized";
                }
                format!(r#"{{"token":"tok","expires_at":{later}}}"#)
            } else if line.starts_with("GET /peers/capabilities") {
                format!(
                    r#"{{"node_id":"{node_id}","public_key":"k","versions":["1.2"],"capabilities":{{}}}}"#
                )
            } else if line.starts_with("POST /v1/messages") {
                String::new()
            } else {
                return;
            };
            let connection = if close { "Connection: close\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
                json.len()
            );
            out.write_all(head.as_bytes()).unwrap();
            out.write_all(json.as_bytes()).unwrap();
            if close {
                return;
            }
        }
    }

    /// The challenge every fake node issues.
    const CHALLENGE: [u8; 32] = [7; 32];

    /// The client of these tests.
    fn me() -> Identity {
        Identity::from_secret_bytes(EntityId::new("me").unwrap(), &[3; 32])
    }

    fn ctx() -> ClientCtx {
        ClientCtx::new(
            crate::smol_runtime::rt(),
            Arc::new(me()),
            None,
            DriverLimits::default(),
            1 << 20,
            1 << 20,
        )
    }

    /// Whether a `POST /auth/verify` body carries [`me`]'s signature over `node_id` and
    /// [`CHALLENGE`] (spec §23.2).
    fn signed_for(node_id: &str, body: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<endpoints::VerifyBody>(body) else { return false };
        let Ok(sig) = peerlink_core::encoding::decode_b64u_array::<64>("signature", &v.signature)
        else {
            return false;
        };
        let input = peerlink_core::auth::challenge_signing_input(
            &EntityId::new(node_id).unwrap(),
            &CHALLENGE,
        );
        me().public_key().verify(&input, &sig).is_ok()
    }

    async fn token_then_ping(base: &str) -> String {
        let ctx = ctx();
        let uri: Uri = format!("{base}/ws/v1/peers").parse().unwrap();
        let node = EntityId::new("node").unwrap();
        let (token, stream) = token_and_stream(&ctx, &uri, base, &node).await.unwrap();
        let mut stream = stream;
        smol::io::AsyncWriteExt::write_all(&mut stream, b"PING\r\n").await.unwrap();
        smol::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
        token
    }

    #[test]
    fn the_token_and_the_upgrade_share_one_keep_alive_connection() {
        let (base, conns, pinged) = fake_node(false);
        let token = smol::block_on(token_then_ping(&base));
        assert_eq!(token, "tok");
        let on = pinged.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((on, conns.load(Ordering::SeqCst)), (1, 1), "one connection for everything");
    }

    #[test]
    fn a_node_that_closes_after_each_answer_gets_fresh_connections() {
        let (base, conns, pinged) = fake_node(true);
        let token = smol::block_on(token_then_ping(&base));
        assert_eq!(token, "tok");
        let on = pinged.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((on, conns.load(Ordering::SeqCst)), (3, 3), "token, verify, upgrade");
    }

    #[test]
    fn login_signs_the_node_id_returned_when_it_is_the_hop_meant() {
        // The fake node's verify answers 401 unless the signature names "relay": the id it
        // returned, which is also the hop this client meant (a relay, not the peer behind it).
        let (base, _, _) = fake_node_named("relay", false, usize::MAX);
        let relay = EntityId::new("relay").unwrap();
        let token = smol::block_on(token(&ctx(), &base, &relay)).unwrap();
        assert_eq!(token, "tok");
    }

    #[test]
    fn login_refuses_a_node_that_is_not_the_hop_meant_and_signs_nothing() {
        // Connection: close after each answer, so a POST /auth/verify would need a second
        // connection: there must be none.
        let (base, conns, _) = fake_node_named("relay", true, usize::MAX);
        let bob = EntityId::new("bob").unwrap();
        let ctx = ctx();
        let err = smol::block_on(token(&ctx, &base, &bob)).unwrap_err();
        match &err {
            ClientError::WrongNode { url, found, expected } => {
                assert_eq!(
                    (url.as_str(), found.as_str(), expected.as_str()),
                    (&*base, "relay", "bob")
                );
            }
            other => panic!("expected WrongNode, got {other:?}"),
        }
        assert_eq!(err.to_string(), format!("the node at {base} is relay, not bob"));
        assert_eq!(conns.load(Ordering::SeqCst), 1, "GET /auth/token only: no verify");
        assert!(ctx.cached(&base).is_none());
    }

    #[test]
    fn a_link_to_a_node_that_is_not_the_hop_meant_is_refused_before_signing() {
        let (base, conns, _) = fake_node_named("relay", true, usize::MAX);
        let uri: Uri = format!("{base}/ws/v1/peers").parse().unwrap();
        let bob = EntityId::new("bob").unwrap();
        let r = smol::block_on(token_and_stream(&ctx(), &uri, &base, &bob));
        assert!(matches!(r, Err(ClientError::WrongNode { .. })), "{:?}", r.map(|(t, _)| t));
        assert_eq!(conns.load(Ordering::SeqCst), 1, "no verify, no upgrade");
    }

    #[test]
    fn capabilities_tell_who_the_node_is_without_logging_in() {
        let (base, _, _) = fake_node_named("relay", false, usize::MAX);
        let caps =
            smol::block_on(capabilities(crate::smol_runtime::rt(), &format!("{base}/"), None))
                .unwrap();
        assert_eq!((caps.node_id.as_str(), caps.public_key.as_str()), ("relay", "k"));
    }

    /// Posts `n` times to the fake node at `base`, `pause` apart; every answer must be 200.
    fn post(ctx: &ClientCtx, base: &str, n: usize, pause: Duration) {
        let node = NodeAddr { entity: EntityId::new("node").unwrap(), base_url: base.to_owned() };
        let url = format!("{base}/v1/messages");
        smol::block_on(async {
            for _ in 0..n {
                let r =
                    node_request(ctx, &node, HttpMethod::Post, &url, b"x".to_vec(), pause).await;
                assert_eq!(r.map(|(s, _)| s), Some(200));
                smol::Timer::after(pause).await;
            }
        });
    }

    #[test]
    fn posts_reuse_the_connection_that_fetched_the_token() {
        let (base, conns, _) = fake_node(false);
        post(&ctx(), &base, 3, Duration::ZERO);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "token, verify and three posts on one");
    }

    #[test]
    fn a_node_that_closes_after_each_answer_gets_a_connection_per_post() {
        let (base, conns, _) = fake_node(true);
        post(&ctx(), &base, 3, Duration::ZERO);
        assert_eq!(conns.load(Ordering::SeqCst), 5, "token, verify, then one per post");
    }

    #[test]
    fn a_kept_connection_the_node_ended_costs_no_request() {
        // Token, verify and one post on the first connection, which then ends: the next post
        // finds it closed (or fails on it and is made again) and succeeds on a fresh one.
        let (base, conns, _) = fake_node_quitting(false, 3);
        post(&ctx(), &base, 2, Duration::ZERO);
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_connection_idle_past_its_reuse_time_is_replaced() {
        let (base, conns, _) = fake_node(false);
        let mut ctx = ctx();
        ctx.limits.http_idle_reuse = Duration::from_millis(30);
        post(&ctx, &base, 3, Duration::from_millis(60));
        assert_eq!(conns.load(Ordering::SeqCst), 3, "each post finds the last one too old");
    }

    #[test]
    fn idle_connections_kept_per_node_are_bounded() {
        let (base, _, _) = fake_node(false);
        let mut ctx = ctx();
        ctx.limits.max_idle_http_per_node = 2;
        let uri: Uri = base.parse().unwrap();
        smol::block_on(async {
            for _ in 0..4 {
                let conn = KeepAlive::connect(&ctx, &uri).await.unwrap();
                ctx.keep_idle(&base, conn);
            }
        });
        let kept = ctx.idle.lock().unwrap().get(&base).map_or(0, Vec::len);
        assert_eq!(kept, 2);
    }
}
