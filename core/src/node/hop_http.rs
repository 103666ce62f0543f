//! HTTP to next hops while WebSocket is unusable: batched `POST`s with retries, long-polls, and
//! the body encoding each hop speaks (spec §21, §27.7). A hop is posted binary bodies only once
//! an answer from it came in binary ([`wire::hop_speaks_binary`]); a `415` to a binary body puts
//! its frames back, in JSON, at the front of the hop's batch.

use std::sync::Arc;

use super::hops::{BatchItem, Exchange, MAX_HTTP_INFLIGHT, MIN_POLL_INTERVAL, messages_url};
use super::links::Source;
use super::{HttpMethod, Node, Output, RequestId};
use crate::capabilities::Transport;
use crate::endpoints::WAIT_PARAM;
use crate::error::ErrorCode;
use crate::http_body;
use crate::ids::EntityId;
use crate::stream::FailReason;
use crate::time::Timestamp;
use crate::transport::{HttpOutcome, TransportPreference, classify_http};
use crate::wire::{self, Encoding};

/// The status of an answer refusing a body's media type.
const UNSUPPORTED_MEDIA_TYPE: u16 = 415;

/// Bytes a frame takes in a body of `encoding`: the frame and its framing.
fn framed_len(item: &BatchItem, encoding: Encoding) -> usize {
    item.frame.len().saturating_add(http_body::overhead(encoding))
}

impl Node {
    /// The encoding of the bodies this node posts to `hop`: binary once an answer from it was
    /// binary (and while `binary_links` is on), else JSON.
    pub(super) fn hop_body_encoding(&self, hop: &EntityId) -> Encoding {
        match self.hops.get(hop) {
            Some(h) if h.binary_bodies && self.config.binary_links => Encoding::Binary,
            _ => Encoding::Json,
        }
    }

    /// `frame` in `encoding`, for an HTTP body; the code (counted as rejected) of a frame that
    /// cannot be translated (spec §27.3, §27.4).
    pub(super) fn body_frame(
        &mut self,
        frame: Arc<[u8]>,
        encoding: Encoding,
    ) -> Result<Arc<[u8]>, ErrorCode> {
        wire::translate(frame, encoding, self.config.limits.max_frame_bytes).map_err(|e| {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            e.code()
        })
    }

    /// Posts the frames batched for each hop, in as few requests as the body size allows, while
    /// the hop has fewer than [`MAX_HTTP_INFLIGHT`] requests in flight. What does not fit waits
    /// in the batch for the next request to finish (every step ends here, a response too), up to
    /// one request body (`max_http_body_bytes`); only frames past that bound are dropped and
    /// left to the delivery layer's retransmission (spec §13.3). Dropping every frame met by a
    /// full set of requests instead held a few percent of a busy HTTP stream for a whole
    /// retransmission timeout (200 ms at least) although a slot was free a few ms later.
    pub(super) fn flush_http_batches(&mut self, now: Timestamp) {
        let hops: Vec<EntityId> =
            self.hops.iter().filter(|(_, h)| !h.batch.is_empty()).map(|(k, _)| k.clone()).collect();
        let max_body = self.config.max_http_body_bytes;
        for hop in hops {
            let encoding = self.hop_body_encoding(&hop);
            let Some(h) = self.hops.get_mut(&hop) else { continue };
            let batch = std::mem::take(&mut h.batch);
            // In the encoding the hop speaks now (it may have changed since they were batched),
            // so that their sizes are those of the body.
            let batch = self.items_in(now, batch, encoding);
            let Some(h) = self.hops.get_mut(&hop) else { continue };
            let mut free = MAX_HTTP_INFLIGHT.saturating_sub(h.inflight.len());
            let mut items = batch.into_iter().peekable();
            while free > 0 && items.peek().is_some() {
                // One request: at least one frame, then as many as fit in a body.
                let mut group: Vec<BatchItem> = Vec::new();
                let mut size = 0usize;
                while let Some(item) = items.next_if(|item| {
                    group.is_empty() || size.saturating_add(framed_len(item, encoding)) <= max_body
                }) {
                    size = size.saturating_add(framed_len(&item, encoding));
                    group.push(item);
                }
                self.post(now, &hop, group, 1);
                free = free.saturating_sub(1);
            }
            // The rest waits for a request to finish, oldest first, within one body.
            let mut size = 0usize;
            let waiting: Vec<BatchItem> = items
                .take_while(|item| {
                    size = size.saturating_add(framed_len(item, encoding));
                    size <= max_body
                })
                .collect();
            // (Anything batched meanwhile, by a refusal's consequences, goes after them.)
            if let Some(h) = self.hops.get_mut(&hop) {
                let mut waiting = waiting;
                waiting.append(&mut h.batch);
                h.batch = waiting;
            }
        }
        self.ensure_polls(now);
    }

    /// Posts `items` to `hop` in the body encoding it speaks now; a frame that cannot be put in
    /// it fails its owner as refused.
    pub(super) fn post(
        &mut self,
        now: Timestamp,
        hop: &EntityId,
        items: Vec<BatchItem>,
        attempt: u32,
    ) {
        let encoding = self.hop_body_encoding(hop);
        let kept = self.items_in(now, items, encoding);
        if kept.is_empty() {
            return;
        }
        let size = kept.iter().fold(0usize, |n, i| n.saturating_add(framed_len(i, encoding)));
        if kept.len() > 1 && size > self.config.max_http_body_bytes {
            // Sized in another encoding (a retry after the hop stopped answering binary, or a
            // new URL): back to the front of the batch, which sizes them again, in order.
            if let Some(h) = self.hops.get_mut(hop) {
                let mut kept = kept;
                kept.append(&mut h.batch);
                h.batch = kept;
            }
            return;
        }
        let request = self.next_request_id();
        let accept_binary = self.config.binary_links;
        let Some(h) = self.hops.get_mut(hop) else { return };
        // Bounded in-flight requests per hop. Callers post only with a slot free (a batch waits,
        // a retry takes its own request's slot); were it full, the frames would be dropped here
        // and the delivery layer would re-send them later (spec §13.3).
        if h.inflight.len() >= MAX_HTTP_INFLIGHT {
            return;
        }
        let body = http_body::encode(kept.iter().map(|i| &*i.frame), encoding);
        let url = messages_url(&h.addr.base_url);
        let node = h.addr.clone();
        h.inflight.insert(request, Exchange { items: kept, attempt, retry_at: None, encoding });
        self.emit(Output::HttpRequest {
            request,
            method: HttpMethod::Post,
            url,
            node,
            body,
            body_encoding: encoding,
            accept_binary,
        });
    }

    /// Keeps one long-poll open to each hop that has traffic for us while WebSocket is unusable.
    /// A `WEBSOCKET_ONLY` node never polls, it uses no HTTP at all (spec §16): it keeps a link
    /// to such a hop open (or reconnecting) instead.
    fn ensure_polls(&mut self, now: Timestamp) {
        let candidates: Vec<EntityId> = self
            .hops
            .iter()
            .filter(|(_, h)| {
                h.poll.is_none() && h.poll_retry_at.is_none() && !h.transport.websocket_usable(now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for hop in candidates {
            if !self.hop_active(&hop) {
                continue;
            }
            if self.config.preference == TransportPreference::WebsocketOnly {
                self.ensure_ws(now, &hop);
                continue;
            }
            let request = self.next_request_id();
            let wait = self.config.poll_wait.as_millis();
            let accept_binary = self.config.binary_links;
            let Some(h) = self.hops.get_mut(&hop) else { continue };
            h.poll = Some(request);
            let url = format!("{}?{WAIT_PARAM}={wait}", messages_url(&h.addr.base_url));
            let node = h.addr.clone();
            self.emit(Output::HttpRequest {
                request,
                method: HttpMethod::Get,
                url,
                node,
                body: Vec::new(),
                body_encoding: Encoding::Json,
                accept_binary,
            });
        }
    }

    /// The answer to an HTTP request this node made, with the encoding its `Content-Type`
    /// names ([`wire::body_encoding`]).
    pub fn handle_http_response(
        &mut self,
        now: Timestamp,
        request: RequestId,
        status: u16,
        body: &[u8],
        encoding: Encoding,
    ) {
        self.on_http_result(now, request, Some(status), body, encoding);
        self.finish(now);
    }

    /// An HTTP request this node made failed without an answer (connection refused, timeout).
    pub fn handle_http_failure(&mut self, now: Timestamp, request: RequestId) {
        self.on_http_result(now, request, None, &[], Encoding::Json);
        self.finish(now);
    }

    fn on_http_result(
        &mut self,
        now: Timestamp,
        request: RequestId,
        status: Option<u16>,
        body: &[u8],
        stated: Encoding,
    ) {
        let Some(hop) = self
            .hops
            .iter()
            .find(|(_, h)| h.poll == Some(request) || h.inflight.contains_key(&request))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let outcome = classify_http(status);
        // No answer, or a server failing: this URL may be down. (A 429 or 408 is an answer.)
        match status {
            None | Some(500..=599) => self.hop_attempt_failed(&hop),
            Some(200..=299) => self.hop_attempt_succeeded(&hop),
            Some(_) => {}
        }
        let binary_links = self.config.binary_links;
        let Some(h) = self.hops.get_mut(&hop) else { return };
        if let Some(status) = status {
            h.binary_bodies =
                wire::hop_speaks_binary(h.binary_bodies, status, stated, binary_links);
        }
        if h.poll == Some(request) {
            h.poll = None;
            if outcome == HttpOutcome::Delivered {
                h.poll_backoff.reset();
                // An empty answer: poll again after a pause, so a server that does not hold
                // polls cannot drive a request loop.
                if body.is_empty() {
                    h.poll_retry_at = Some(now.saturating_add(MIN_POLL_INTERVAL));
                }
            } else {
                let delay = h.poll_backoff.next_delay(&mut self.rng);
                h.poll_retry_at = Some(now.saturating_add(delay));
            }
        } else if let Some(mut ex) = h.inflight.remove(&request) {
            if status == Some(UNSUPPORTED_MEDIA_TYPE) && ex.encoding == Encoding::Binary {
                // The hop no longer takes binary bodies (it restarted without them): its frames
                // go again, in JSON, first in line.
                self.requeue_as_json(now, &hop, ex.items);
                self.reschedule_hop(now, &hop);
                return;
            }
            match outcome {
                HttpOutcome::Delivered => {}
                HttpOutcome::Retry => match self.config.http_retry.delay_after(ex.attempt) {
                    Some(delay) => {
                        ex.retry_at = Some(now.saturating_add(delay));
                        h.inflight.insert(request, ex);
                    }
                    // Retries exhausted: the next hop cannot be reached.
                    None => self.fail_owners(now, ex.items, FailReason::Unreachable),
                },
                HttpOutcome::Rejected | HttpOutcome::Unexpected => {
                    self.fail_owners(now, ex.items, FailReason::Rejected)
                }
            }
        }
        if outcome == HttpOutcome::Delivered {
            let encoding = wire::answer_body_encoding(stated, binary_links);
            self.process_body(now, Source::Hop(hop.clone()), body, encoding);
        }
        self.reschedule_hop(now, &hop);
    }

    /// `items` with their frames in `encoding` (the same frames when they are in it already); a
    /// frame that cannot be translated fails its owner as refused.
    fn items_in(
        &mut self,
        now: Timestamp,
        items: Vec<BatchItem>,
        encoding: Encoding,
    ) -> Vec<BatchItem> {
        if items.iter().all(|i| Encoding::of(&i.frame) == encoding) {
            return items;
        }
        let mut kept = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for item in items {
            match self.body_frame(Arc::clone(&item.frame), encoding) {
                Ok(frame) => kept.push(BatchItem { frame, owner: item.owner }),
                Err(_) => refused.push(item),
            }
        }
        if !refused.is_empty() {
            self.fail_owners(now, refused, FailReason::Rejected);
        }
        kept
    }

    /// Puts the frames of a binary body refused with `415` back at the front of `hop`'s batch,
    /// in JSON (a frame that has none fails its owner as refused).
    fn requeue_as_json(&mut self, now: Timestamp, hop: &EntityId, items: Vec<BatchItem>) {
        let mut again = self.items_in(now, items, Encoding::Json);
        if let Some(h) = self.hops.get_mut(hop) {
            again.append(&mut h.batch);
            h.batch = again;
        }
    }

    /// Processes a body from a next hop: its envelopes in `encoding` ([`http_body::frames`]);
    /// a framing error is answered as a bad NDJSON line is.
    pub(super) fn process_body(
        &mut self,
        now: Timestamp,
        source: Source,
        body: &[u8],
        encoding: Encoding,
    ) {
        let max = self.config.limits.max_frame_bytes;
        for frame in http_body::frames(body, encoding, max) {
            match frame {
                Ok(frame) => {
                    self.stats.received(Transport::Http, frame.len());
                    self.process_frame(now, source.clone(), frame, encoding);
                }
                Err(e) => {
                    self.stats.rejected = self.stats.rejected.saturating_add(1);
                    self.reply_error(now, &source, None, e.code(), None);
                }
            }
        }
    }

    pub(super) fn fail_owners(
        &mut self,
        now: Timestamp,
        items: Vec<BatchItem>,
        reason: FailReason,
    ) {
        // A durable node does not give up on a message because a next hop did not answer for a
        // while: its stream re-sends the message until the message's lifetime ends (spec
        // §26.3). What a next hop refused still fails at once.
        let keep = self.config.durable && reason == FailReason::Unreachable;
        for item in items {
            match item.owner {
                Some(super::hops::Owner::Message(peer, _)) if keep => self.reschedule_peer(&peer),
                Some(super::hops::Owner::Message(peer, id)) => {
                    self.fail_message(now, &peer, &id, reason)
                }
                Some(super::hops::Owner::Handshake(peer)) if keep => {
                    self.handshake_unanswered(now, &peer)
                }
                Some(super::hops::Owner::Handshake(peer)) => {
                    self.handshake_refused(now, &peer, reason)
                }
                None => {}
            }
        }
    }
}
