//! The HTTP requests the node asks for (posts and long-polls to other nodes, with a token and a
//! kept connection when there is one) and the unauthenticated `GET`s of `peerlink status`.

use std::sync::Arc;
use std::time::Duration;

use futures_rustls::rustls;
use hyper::body::Bytes;
use hyper::{Method, Uri};
use peerlink_core::node::{HttpMethod, NodeAddr};
use peerlink_core::wire::{self, Encoding};
use peerlink_core::{EntityId, endpoints};

use super::pool::{KeepAlive, Media, connect};
use super::token::token;
use super::{ClientCtx, ClientError, HttpAnswer, timeout};
use crate::config::DriverLimits;
use crate::runtime::Rt;

/// One HTTP exchange on a fresh connection; the response body is bounded by `max_body`.
async fn http(
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
    let body = Bytes::from(body);
    let answer =
        conn.request(method, &uri, bearer, Media::of(content_type), body, max_body).await?;
    Ok((answer.status, answer.body))
}

/// An HTTP request the node asked for ([`Output::HttpRequest`]), as the driver carries it.
///
/// [`Output::HttpRequest`]: peerlink_core::node::Output::HttpRequest
pub(crate) struct NodeRequest {
    pub method: HttpMethod,
    /// The node's finished URL.
    pub url: String,
    pub body: Vec<u8>,
    /// Sent as `Content-Type` (its media type) with a `POST`.
    pub body_encoding: Encoding,
    /// Sent as `Accept:` [`wire::accept_header`].
    pub accept_binary: bool,
}

/// An HTTP request the node asked for, `req` to `node`: `None` when there was no answer (the
/// node retries). A 401 to a cached token is answered by one fresh login and one more try (the
/// node may have restarted with a new key, spec §23.2); a second 401 goes to the node. The
/// answer's encoding is what its `Content-Type` names ([`wire::body_encoding`]).
pub(crate) async fn node_request(
    ctx: &ClientCtx,
    node: &NodeAddr,
    req: NodeRequest,
    poll_wait: Duration,
) -> Option<HttpAnswer> {
    let base = node.base_url.trim_end_matches('/');
    let NodeRequest { method, url, body, body_encoding, accept_binary } = req;
    let body = Bytes::from(body);
    let media = Media {
        content_type: body_encoding.media_type(),
        accept: Some(wire::accept_header(accept_binary)),
    };
    for attempt in 0..2 {
        let had_token = ctx.cached(base).is_some();
        let answer = node_request_once(
            ctx,
            base,
            &node.entity,
            method,
            &url,
            media,
            body.clone(),
            poll_wait,
        )
        .await;
        match answer {
            Some(HttpAnswer { status: 401, .. }) if attempt == 0 && had_token => continue,
            answer => return answer,
        }
    }
    None
}

/// An answer without a body, for a refusal the client itself reports.
fn bare(status: u16) -> HttpAnswer {
    HttpAnswer { status, body: Vec::new(), encoding: Encoding::Json }
}

#[allow(clippy::too_many_arguments)]
async fn node_request_once(
    ctx: &ClientCtx,
    base: &str,
    node: &EntityId,
    method: HttpMethod,
    url: &str,
    media: Media<'_>,
    body: Bytes,
    poll_wait: Duration,
) -> Option<HttpAnswer> {
    let token = match token(ctx, base, node).await {
        Ok(t) => t,
        // The node refused us outright: report it as the HTTP refusal it is.
        Err(ClientError::Status(s)) if (400..500).contains(&s) => return Some(bare(s)),
        // Another node answers at that URL (spec §23.2): no retry can change that, so the
        // frames fail as refused at once (421 Misdirected Request, a 4xx of §16.4) rather
        // than as unreachable after the retries.
        Err(e @ ClientError::WrongNode { .. }) => {
            tracing::warn!(error = %e, "not authenticating: another node than the one meant");
            return Some(bare(421));
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
        // A kept connection the node closed just as this request went out fails at once:
        // the request is made again, once, on a fresh connection (the stream makes a repeated
        // post harmless, §13).
        if let Some(mut conn) = ctx.take_idle(base) {
            let again = body.clone();
            if let Ok(answer) =
                conn.request(m.clone(), &uri, Some(&token), media, again, limit).await
            {
                ctx.keep_idle(base, conn);
                return Ok(answer);
            }
        }
        let mut conn = KeepAlive::connect(ctx, &uri).await?;
        let answer = conn.request(m, &uri, Some(&token), media, body, limit).await?;
        ctx.keep_idle(base, conn);
        Ok(answer)
    };
    match timeout(&*ctx.rt, d, exchange).await {
        Ok(answer) => {
            if answer.status == 401 {
                ctx.forget(base);
            }
            let encoding = wire::body_encoding(answer.content_type.as_deref());
            Some(HttpAnswer { status: answer.status, body: answer.body, encoding })
        }
        Err(e) => {
            tracing::debug!(%url, error = %e, "HTTP request failed");
            None
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
