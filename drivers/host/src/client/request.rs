//! The HTTP requests the node asks for (posts and long-polls to other nodes, with a token and a
//! kept connection when there is one) and the unauthenticated `GET`s of `peerlink status`.

use std::sync::Arc;
use std::time::Duration;

use futures_rustls::rustls;
use hyper::body::Bytes;
use hyper::{Method, Uri};
use peerlink_core::node::{HttpMethod, NodeAddr};
use peerlink_core::{EntityId, endpoints};

use super::pool::{KeepAlive, connect};
use super::token::token;
use super::{ClientCtx, ClientError, timeout};
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
    conn.request(method, &uri, bearer, content_type, Bytes::from(body), max_body).await
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
