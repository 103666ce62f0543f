//! Outbound links: a token and a connection to the other node ([`crate::client`]), the
//! WebSocket handshake on it, then the link's task ([`crate::link`]).

use std::sync::Arc;

use async_channel::Sender;
use hyper::Uri;
use peerlink_core::node::{LinkId, NodeAddr};
use peerlink_core::wire;

use crate::client::{ClientCtx, ClientError, timeout, token_and_stream};
use crate::corked::Corked;
use crate::link::{run_link, ws_config};
use crate::link_queue::LinkQueues;
use crate::state::Input;

/// Where an outbound link goes: the node's finished URL, the node, and whether to offer the
/// binary envelope (spec §27.1).
pub(crate) struct Target {
    pub url: String,
    pub node: NodeAddr,
    pub offer_binary: bool,
}

/// Opens an outbound link to `target` and runs it; reports `LinkUp` (with the encoding the
/// server selected) or `LinkFailed`.
pub(crate) async fn run_outbound(
    ctx: Arc<ClientCtx>,
    link: LinkId,
    target: Target,
    queues: LinkQueues,
    inputs: Sender<Input>,
) {
    let Target { url, node, offer_binary } = target;
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
        if offer_binary {
            req.headers_mut().insert(
                hyper::header::SEC_WEBSOCKET_PROTOCOL,
                hyper::header::HeaderValue::from_static(wire::BINARY_SUBPROTOCOL),
            );
        }
        let config = ws_config(ctx.max_frame_bytes, ctx.limits.ws_read_buffer_bytes);
        let stream = Corked::new(stream);
        match async_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok((ws, resp)) => {
                let selected = resp
                    .headers()
                    .get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok());
                Ok((ws, wire::selected(selected, offer_binary)))
            }
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
        Ok((ws, encoding)) => {
            if inputs.send(Input::LinkUp { link, encoding }).await.is_err() {
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
