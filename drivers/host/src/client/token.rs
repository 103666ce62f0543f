//! The token client: a bearer token for another node, from the cache or by logging in
//! (`GET /auth/token`, the challenge signed for the node meant, `POST /auth/verify`); a token is
//! renewed at 80 % of its lifetime and forgotten when the node answers 401.

use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::{Method, Uri};
use peerlink_core::EntityId;
use peerlink_core::auth::sign_challenge;
use peerlink_core::endpoints;

use super::pool::{Answer, KeepAlive, Media, Stream, connect_within};
use super::{ClientCtx, ClientError, timeout};

impl ClientCtx {
    /// The token cached for `base`, unless it is due for renewal.
    pub(super) fn cached(&self, base: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens.get(base).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// Caches `token` for `base`, to be renewed once 80 % of `valid_for` has passed.
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

    /// Forgets the token for `base` (the node answered 401 to it).
    pub(crate) fn forget(&self, base: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(base);
        }
    }
}

/// A bearer token for the node `node` at `base` (`http(s)://host:port`), from the cache or by
/// authenticating on a connection of its own, which is then kept for reuse (usually by the
/// request that wanted the token).
pub(super) async fn token(
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
pub(crate) async fn token_and_stream(
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
    let Answer { status, body, .. } = timeout(
        &*ctx.rt,
        ctx.limits.http_timeout,
        conn.request(Method::GET, &uri, None, Media::of("text/plain"), Bytes::new(), max),
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
    let Answer { status, body, .. } = timeout(
        &*ctx.rt,
        ctx.limits.http_timeout,
        conn.request(
            Method::POST,
            &uri,
            None,
            Media::of("application/json"),
            Bytes::from(body),
            max,
        ),
    )
    .await?;
    if status != 200 {
        return Err(ClientError::Status(status));
    }
    let t: endpoints::TokenBody =
        endpoints::parse_body(&body, max).map_err(|_| ClientError::BadResponse("token"))?;
    let now_ms = crate::clock::unix_millis();
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
