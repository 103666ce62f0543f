//! One HTTP exchange the core asked for, on a thread of its own (long polls block for up to the
//! poll wait), with the bearer token for the node it goes to.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use peerlink_core::node::{HttpMethod, NodeAddr, RequestId};

use crate::driver::{Input, Shared};

/// Starts the exchange on a thread of its own; it reports `HttpDone` or `HttpFailed`. Returns
/// `false`, and starts nothing, past `max_in_flight` exchanges or when no thread can be had (the
/// caller then fails the exchange and the core retries later).
pub fn spawn(
    request: RequestId,
    method: HttpMethod,
    url: String,
    node: NodeAddr,
    body: Vec<u8>,
    shared: &Arc<Shared>,
    inputs: SyncSender<Input>,
) -> bool {
    if shared.http_in_flight.fetch_add(1, Ordering::AcqRel) >= shared.config.http.max_in_flight {
        shared.http_in_flight.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    let thread_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new().name("peerlink-http".into()).spawn(move || {
        let shared = thread_shared;
        let input = match exchange(method, &url, &node, &body, &shared) {
            Some((status, body)) => Input::HttpDone(request, status, body),
            None => Input::HttpFailed(request),
        };
        shared.http_in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = inputs.send(input);
    });
    if spawned.is_err() {
        shared.http_in_flight.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

/// Makes the request at `url` (the node's finished URL) of `node`. A 401 to a cached token is
/// answered by one fresh login and one more try (the node may have restarted with a new key,
/// spec §23.2); a second 401 goes to the node.
fn exchange(
    method: HttpMethod,
    url: &str,
    node: &NodeAddr,
    body: &[u8],
    shared: &Shared,
) -> Option<(u16, Vec<u8>)> {
    let base = &node.base_url;
    for attempt in 0..2 {
        let had_token = shared.tokens.has(base);
        let token = shared.tokens.token(&shared.agent, node).ok()?;
        let auth = format!("Bearer {token}");
        let response = match method {
            HttpMethod::Get => shared.agent.get(url).header("authorization", &auth).call(),
            HttpMethod::Post => shared
                .agent
                .post(url)
                .header("authorization", &auth)
                .header("content-type", "application/x-ndjson")
                .send(body),
        };
        let mut response = response.ok()?;
        let status = response.status().as_u16();
        if status == 401 {
            shared.tokens.invalidate(base);
            if attempt == 0 && had_token {
                continue;
            }
        }
        let limit = u64::try_from(shared.config.node.max_http_body_bytes).unwrap_or(u64::MAX);
        let body = response.body_mut().with_config().limit(limit).read_to_vec().ok()?;
        return Some((status, body));
    }
    None
}
