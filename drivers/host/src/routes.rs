//! Every HTTP endpoint of the node (spec §21 and `drivers/smol/README.md`): authentication,
//! the WebSocket upgrades, the message endpoint, discovery, health and metrics. Requests are
//! parsed by hyper; this module only routes them and maps every refusal to a status code and a
//! JSON body `{"error": "<ERROR_CODE>"}`.

// Handlers return `Result<Resp, Resp>`: the error is the refusal to send, built where it is
// decided; its size is irrelevant next to the I/O it answers.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_channel::Sender;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use futures_lite::FutureExt as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use peerlink_core::auth::{AuthError, Authority, Bearer, bearer_token};
use peerlink_core::endpoints;
use peerlink_core::node::{HttpCall, LinkId, LinkKind};
use peerlink_core::wire;
use peerlink_core::{EntityId, ErrorCode, PublicKey, SessionId};
use serde_json::json;

use crate::clock::Clock;
use crate::config::DriverLimits;
use crate::corked::Corked;
use crate::link::{run_link, ws_config};
use crate::link_queue::{LinkQueues, link_channels};
use crate::metrics::{ClusterCounters, Snapshot};
use crate::origin::OriginPolicy;
use crate::rt::HyperIo;
use crate::runtime::{Rt, sleep};
use crate::state::Input;

/// A request body the endpoints can read: hyper's own ([`Incoming`]), axum's, any
/// `http_body::Body` of bytes.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<T> RequestBody for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// What request handlers share.
pub(crate) struct RouteCtx {
    pub inputs: Sender<Input>,
    /// Checks tokens (immutable; challenges live on the node task).
    pub checker: Authority,
    pub clock: Clock,
    pub limits: DriverLimits,
    pub max_frame_bytes: usize,
    pub max_http_body_bytes: usize,
    /// Whether upgrades may select the binary envelope (the node's `binary_links`).
    pub binary_links: bool,
    pub public_key: PublicKey,
    pub capabilities: serde_json::Value,
    /// Which web pages may open links.
    pub origins: OriginPolicy,
    /// The executor.
    pub rt: Rt,
    /// A cluster node's broker counters (`/healthz` says whether the broker is reachable).
    pub cluster: Option<Arc<ClusterCounters>>,
}

type Resp = Response<Full<Bytes>>;

/// `GET /healthz`: `ok` while serving; a cluster node whose broker is unreachable still serves
/// its own entities and says `degraded`, with the cluster's state.
fn health(ctx: &RouteCtx) -> serde_json::Value {
    match &ctx.cluster {
        None => json!({"status": "ok"}),
        Some(c) if c.is_up() => json!({"status": "ok", "cluster": "up"}),
        Some(_) => json!({"status": "degraded", "cluster": "down"}),
    }
}

/// The hyper service for one connection.
pub(crate) fn service(
    ctx: Arc<RouteCtx>,
) -> impl hyper::service::Service<Request<Incoming>, Response = Resp, Error = Infallible, Future: Send>
+ Send {
    hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(answer(&ctx, req).await) }
    })
}

/// The answer to one request to the node's endpoints.
pub(crate) async fn answer<B: RequestBody + Sync>(ctx: &RouteCtx, req: Request<B>) -> Resp {
    route(ctx, req).await.unwrap_or_else(|r| r)
}

/// A request body made `Sync` (as hyper's own is; axum's is not): the routes hold the request
/// by reference across awaits, and this body is only ever reached through `&mut`, so the
/// mutex is never locked.
pub(crate) struct Exclusive<B>(std::sync::Mutex<B>);

impl<B> Exclusive<B> {
    pub(crate) fn new(body: B) -> Self {
        Self(std::sync::Mutex::new(body))
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Exclusive<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let body = match self.get_mut().0.get_mut() {
            Ok(body) => body,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::pin::Pin::new(body).poll_frame(cx)
    }
}

fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_resp(status: u16, v: serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

fn to_json(v: &impl serde::Serialize) -> Resp {
    match serde_json::to_vec(v) {
        Ok(body) => respond(200, "application/json", body),
        Err(_) => error(500, ErrorCode::InternalError),
    }
}

/// A refusal (spec §23.1): the status, and `{"error": CODE, "message": TEXT}`.
fn error(status: u16, code: ErrorCode) -> Resp {
    let body = serde_json::to_vec(&endpoints::ErrorResponse::new(code)).unwrap_or_default();
    let mut r = respond(status, "application/json", body);
    if status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    r
}

fn auth_error(e: &AuthError) -> Resp {
    error(e.http_status(), e.code())
}

/// One query parameter, percent-decoded; `None` if absent or repeated.
fn query<B: RequestBody>(req: &Request<B>, name: &str) -> Option<String> {
    endpoints::query_param(req.uri().query()?, name)
}

/// Asks the node task and waits for its answer; 503 when it has stopped.
async fn ask<T>(ctx: &RouteCtx, make: impl FnOnce(Sender<T>) -> Input) -> Result<T, Resp> {
    let (tx, rx) = async_channel::bounded(1);
    let unavailable = || error(503, ErrorCode::InternalError);
    ctx.inputs.send(make(tx)).await.map_err(|_| unavailable())?;
    rx.recv().await.map_err(|_| unavailable())
}

/// A request header as text (`None` when missing or not visible ASCII).
fn header_str<B>(req: &Request<B>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn read_body<B: RequestBody>(req: Request<B>, max: usize) -> Result<Vec<u8>, Resp> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(_) => Err(error(413, ErrorCode::MessageTooLarge)),
    }
}

/// The entity a request's bearer token (header, or `?token=`) names, with the key it proved, or
/// the 401 to answer.
fn authenticate<B: RequestBody>(ctx: &RouteCtx, req: &Request<B>) -> Result<Bearer, Resp> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = match header {
        Some(h) => bearer_token(h).map(str::to_owned),
        None => query(req, endpoints::TOKEN_PARAM),
    }
    .ok_or_else(|| error(401, ErrorCode::AuthenticationFailed))?;
    ctx.checker.check_bearer(&token, None, ctx.clock.now()).map_err(|e| {
        tracing::debug!(error = %e, "token refused");
        auth_error(&e)
    })
}

async fn route<B: RequestBody>(ctx: &RouteCtx, req: Request<B>) -> Result<Resp, Resp> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(json_resp(200, health(ctx))),
        (Method::GET, "/metrics") => {
            let snap: Snapshot = ask(ctx, |tx| {
                Input::Call(Box::new(move |core, _| {
                    let snapshot = core.snapshot();
                    core.answer_after_writes(Box::new(move || {
                        let _ = tx.try_send(snapshot);
                    }));
                }))
            })
            .await?;
            Ok(respond(200, "text/plain; version=0.0.4", crate::metrics::render(&snap)))
        }
        (Method::GET, "/auth/token") => challenge(ctx, &req).await,
        (Method::POST, "/auth/verify") => verify(ctx, req).await,
        (Method::GET, "/ws/v1/peers") => upgrade(ctx, req, LinkKind::Peers).await,
        (Method::GET, "/ws/v1/events") => upgrade(ctx, req, LinkKind::Events).await,
        (Method::POST, "/v1/messages") => {
            let who = authenticate(ctx, &req)?;
            // The node decides what the headers mean (spec §27.7): a binary body it does not
            // speak is answered 415, and the answer's encoding follows `Accept`.
            let encoding = wire::body_encoding(header_str(&req, header::CONTENT_TYPE));
            let accept_binary = wire::accepts_binary(header_str(&req, header::ACCEPT));
            let body = read_body(req, ctx.max_http_body_bytes).await?;
            let call = HttpCall::PostMessages { body, encoding, accept_binary };
            let answer = ask(ctx, |reply| Input::Http { who, call, reply }).await?;
            Ok(respond(answer.status, answer.encoding.media_type(), answer.body))
        }
        (Method::GET, "/v1/messages") => {
            let who = authenticate(ctx, &req)?;
            let wait = endpoints::poll_wait_of(req.uri().query())
                .map_err(|_| error(400, ErrorCode::InvalidMessage))?;
            let accept_binary = wire::accepts_binary(header_str(&req, header::ACCEPT));
            let call = HttpCall::Poll { wait, accept_binary };
            let answer = ask(ctx, |reply| Input::Http { who, call, reply }).await?;
            Ok(respond(answer.status, answer.encoding.media_type(), answer.body))
        }
        (Method::GET, "/peers/discover") => {
            authenticate(ctx, &req)?;
            let peers = ask(ctx, |tx| {
                Input::Call(Box::new(move |core, now| {
                    let _ = tx.try_send(core.discovered_peers(now));
                }))
            })
            .await?;
            let node_id = ctx.checker.node_id().as_str().to_owned();
            Ok(to_json(&endpoints::DiscoverBody { node_id, peers }))
        }
        (Method::GET, "/peers/capabilities") => Ok(to_json(&endpoints::CapabilitiesBody {
            node_id: ctx.checker.node_id().as_str().to_owned(),
            public_key: ctx.public_key.to_b64u(),
            versions: vec![peerlink_core::PROTOCOL_VERSION.to_owned()],
            capabilities: ctx.capabilities.clone(),
        })),
        (
            _,
            "/healthz"
            | "/metrics"
            | "/auth/token"
            | "/auth/verify"
            | "/ws/v1/peers"
            | "/ws/v1/events"
            | "/v1/messages"
            | "/peers/discover"
            | "/peers/capabilities",
        ) => Err(error(405, ErrorCode::InvalidMessage)),
        _ => Err(error(404, ErrorCode::InvalidMessage)),
    }
}

/// `GET /auth/token?entity_id=E&pubkey=K`.
async fn challenge<B: RequestBody>(ctx: &RouteCtx, req: &Request<B>) -> Result<Resp, Resp> {
    let bad = || error(400, ErrorCode::InvalidMessage);
    let entity = query(req, "entity_id").and_then(|e| EntityId::new(e).ok()).ok_or_else(bad)?;
    let pubkey = query(req, "pubkey").ok_or_else(bad)?;
    let ch = ask(ctx, |reply| Input::Challenge { entity, pubkey, reply })
        .await?
        .map_err(|e| auth_error(&e))?;
    Ok(to_json(&endpoints::ChallengeBody {
        node_id: ctx.checker.node_id().as_str().to_owned(),
        challenge: ch.challenge,
        expires_at: ch.expires_at.as_unix_millis(),
    }))
}

/// `POST /auth/verify` with `{"entity_id", "challenge", "signature"}`.
async fn verify<B: RequestBody>(ctx: &RouteCtx, req: Request<B>) -> Result<Resp, Resp> {
    let body = read_body(req, ctx.limits.max_auth_body_bytes).await?;
    let bad = || error(400, ErrorCode::InvalidMessage);
    let v: endpoints::VerifyBody = endpoints::parse_body(&body, ctx.limits.max_auth_body_bytes)
        .map_err(|e| error(e.http_status(), e.code()))?;
    let entity = EntityId::new(v.entity_id).map_err(|_| bad())?;
    let (challenge, signature) = (v.challenge, v.signature);
    let answer = ask(ctx, |reply| Input::Verify { entity, challenge, reply })
        .await?
        .map_err(|e| auth_error(&e))?;
    // The public-key work (a verification, a signature) runs here, not on the node task.
    let token = ctx.checker.finish(answer, &signature).map_err(|e| auth_error(&e))?;
    let lifetime = ctx.checker.config().token_lifetime;
    let expires_at = ctx.clock.now().saturating_add(lifetime).as_unix_millis();
    Ok(to_json(&endpoints::TokenBody { token, expires_at }))
}

fn header_has<B: RequestBody>(req: &Request<B>, name: header::HeaderName, want: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    })
}

/// A WebSocket upgrade: the token is checked and the node accepts the link before `101`.
async fn upgrade<B: RequestBody>(
    ctx: &RouteCtx,
    mut req: Request<B>,
    kind: LinkKind,
) -> Result<Resp, Resp> {
    let origins: Vec<&[u8]> =
        req.headers().get_all(header::ORIGIN).iter().map(HeaderValue::as_bytes).collect();
    if !ctx.origins.allows(&origins) {
        return Err(error(403, ErrorCode::AuthenticationFailed));
    }
    let who = authenticate(ctx, &req)?;
    let bad = || error(400, ErrorCode::InvalidMessage);
    if !header_has(&req, header::UPGRADE, "websocket")
        || !header_has(&req, header::CONNECTION, "upgrade")
        || !header_has(&req, header::SEC_WEBSOCKET_VERSION, "13")
    {
        return Err(bad());
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).ok_or_else(bad)?;
    let accept = derive_accept_key(key.as_bytes());
    // The session to resume is named in-band by SESSION_RESUME; a malformed one is still refused.
    if let Some(s) = query(&req, endpoints::SESSION_PARAM) {
        SessionId::new(s).map_err(|_| bad())?;
    }
    // The core's rule picks the encoding (spec §27.1); the `101` names it.
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .find_map(|v| v.to_str().ok().filter(|s| wire::offers_binary(Some(s))));
    let encoding = wire::choose(offered, ctx.binary_links);
    let (handle, queues) = link_channels(ctx.limits.send_queue_frames);
    let link = ask(ctx, |reply| Input::Accept { kind, who, encoding, handle, reply })
        .await?
        .map_err(|code| match code {
            ErrorCode::RateLimitExceeded => error(503, code),
            _ => error(403, code),
        })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let inputs = ctx.inputs.clone();
    let config = ws_config(ctx.max_frame_bytes, ctx.limits.ws_read_buffer_bytes);
    let timeout = ctx.limits.handshake_timeout;
    let rt = Arc::clone(&ctx.rt);
    ctx.rt.spawn(Box::pin(serve_upgraded(rt, on_upgrade, timeout, config, link, queues, inputs)));
    let mut r = respond(101, "text/plain", Bytes::new());
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = encoding.subprotocol() {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok(r)
}

/// An accepted link's first task: waits (at most `timeout`) for hyper to hand over the upgraded
/// connection, then starts the link as a task of its own. The link's task is allocated at the
/// size of its future for as long as the link lives, so it must not also carry this one's state
/// (hyper's upgrade future, the timer, the moved-from arguments): a few hundred bytes on every
/// idle connection.
async fn serve_upgraded(
    rt: Rt,
    on_upgrade: hyper::upgrade::OnUpgrade,
    timeout: Duration,
    config: WebSocketConfig,
    link: LinkId,
    queues: LinkQueues,
    inputs: Sender<Input>,
) {
    let upgraded = async { on_upgrade.await.ok() }
        .or(async {
            sleep(&*rt, timeout).await;
            None
        })
        .await;
    match upgraded {
        Some(io) => {
            let io = Corked::new(HyperIo(io));
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            let link_rt = Arc::clone(&rt);
            rt.spawn(Box::pin(run_link(link_rt, ws, link, queues, inputs)));
        }
        None => {
            let _ = inputs.send(Input::Closed { link }).await;
        }
    }
}
