//! One WebSocket link's task (server- or client-side): reads frames into the node task, writes
//! the frames the node queued for it, and closes when told to.
//!
//! Bounds: the write queue ([`crate::link_queue`]) holds
//! [`DriverLimits::send_queue_frames`](crate::DriverLimits) frames; when the node task finds it
//! full it kills the link (a slow reader is disconnected). Reads wait for room in the node task's
//! input queue (backpressure on the socket). A frame read goes to the node task as the bytes
//! tungstenite read it into, not a copy: until handled it keeps that read buffer alive
//! (`ws_read_buffer_bytes`, 4 KiB, or the frame's own size when larger), at most one per input
//! queue slot.
//!
//! Writes are batched: when a frame is ready, the task also takes the frames already queued
//! behind it (at most [`WRITE_BATCH_FRAMES`] frames or [`WRITE_BATCH_BYTES`] bytes) and the
//! socket ([`Corked`]) holds their bytes until the batch ends, so a batch costs one `send`
//! syscall instead of one per frame.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_channel::Sender;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use futures_lite::FutureExt as _;
use futures_lite::StreamExt as _;
use futures_lite::io::{AsyncRead, AsyncWrite};
use peerlink_core::ErrorCode;
use peerlink_core::node::LinkId;
use peerlink_core::wire::Encoding;

use crate::corked::{Corked, HOLD_BYTES};
use crate::link_queue::LinkQueues;
use crate::runtime::{Rt, Runtime, sleep};
use crate::state::Input;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a killed link's task takes to end: writing its queued frames, then its close
/// handshake. A shutdown waits at most this long for its links.
pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// At most this many frames are written between two flushes.
const WRITE_BATCH_FRAMES: usize = 64;

/// No further frame joins a write batch once it holds this many bytes (the frame that starts a
/// batch goes whatever its size): what a corked socket holds.
const WRITE_BATCH_BYTES: usize = HOLD_BYTES;

/// tungstenite's configuration: frame and message limits from the core's frame limit, and a
/// deliberately small read buffer.
pub(crate) fn ws_config(max_frame_bytes: usize, read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer.max(1024))
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// The close frame for a reason the node gave: 1000 for an orderly close, 1008 (policy) with the
/// error code as the reason otherwise.
fn close_frame(reason: Option<ErrorCode>) -> CloseFrame {
    match reason {
        None => CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::from_static("BYE") },
        Some(code) => CloseFrame {
            code: CloseCode::Policy,
            reason: Utf8Bytes::from(code.as_str().to_owned()),
        },
    }
}

/// One frame of the node's as a message, without copying it: a binary envelope as a binary
/// message, JSON as a text message (spec §27.2). The node only makes UTF-8 JSON frames; anything
/// else is logged and dropped.
fn frame_message(link: LinkId, frame: Arc<[u8]>) -> Option<Message> {
    if Encoding::of(&frame) == Encoding::Binary {
        return Some(Message::Binary(Bytes::from_owner(frame)));
    }
    match Utf8Bytes::try_from(Bytes::from_owner(frame)) {
        Ok(text) => Some(Message::Text(text)),
        Err(_) => {
            tracing::warn!(?link, "node produced a non-UTF-8 frame; dropped");
            None
        }
    }
}

/// Writes `first` and the frames queued behind it (at most [`WRITE_BATCH_FRAMES`], and no more
/// once [`WRITE_BATCH_BYTES`] are written), then flushes once. Returns the frames written.
async fn write_batch<S>(
    ws: &mut WebSocketStream<Corked<S>>,
    frames: &LinkQueues,
    first: Arc<[u8]>,
    link: LinkId,
) -> Result<usize, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A lone frame goes straight out: holding it back would only copy it once more.
    let batch = !frames.is_empty();
    if batch {
        ws.get_mut().cork();
    }
    let mut count = 0;
    let mut bytes: usize = 0;
    let mut next = Some(first);
    while let Some(frame) = next {
        count += 1;
        bytes = bytes.saturating_add(frame.len());
        if let Some(message) = frame_message(link, frame) {
            ws.send(message).await?;
        }
        next = if count < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
            frames.try_recv()
        } else {
            None
        };
    }
    if batch {
        let io = ws.get_mut();
        io.uncork();
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await?;
    }
    Ok(count)
}

enum Step {
    Read(Option<Result<Message, WsError>>),
    Write(Arc<[u8]>),
    Kill(Option<ErrorCode>),
}

/// Runs a link until either side closes it, then reports `Input::Closed` to the node task.
///
/// A kill is seen before queued frames and reads; the frames queued before it still go out
/// (within [`CLOSE_TIMEOUT`]) before the close frame. A write blocked on a slow reader is
/// abandoned when the link is killed.
///
/// Not an `async fn`: an `async fn`'s future keeps its arguments and, beside them, the locals
/// they are moved into, so the socket would be held twice for the link's whole life. The
/// `async move` block uses the captured arguments in place.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run_link<S>(
    rt: Rt,
    mut ws: WebSocketStream<Corked<S>>,
    link: LinkId,
    queues: LinkQueues,
    inputs: Sender<Input>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let frames = &queues;
        let close: Option<CloseFrame> = loop {
            let step = poll_fn(|cx| {
                // A dropped handle (the node forgot the link) is an orderly close.
                if let Poll::Ready(reason) = frames.poll_kill(cx) {
                    return Poll::Ready(Step::Kill(reason));
                }
                if let Poll::Ready(frame) = frames.poll_recv(cx) {
                    return Poll::Ready(frame.map_or(Step::Kill(None), Step::Write));
                }
                Pin::new(&mut ws).poll_next(cx).map(Step::Read)
            })
            .await;
            match step {
                Step::Kill(reason) => {
                    // Boxed: it runs once, and would otherwise enlarge every idle link's task.
                    let flushed = Box::pin(write_queued(&*rt, &mut ws, frames, link)).await;
                    break flushed.then(|| close_frame(reason));
                }
                Step::Write(first) => {
                    // Boxed (one allocation per batch): held inline, the batch's state would
                    // enlarge every idle link's task by a few hundred bytes.
                    let batch = Box::pin(write_batch(&mut ws, frames, first, link));
                    let sent = async { Some(batch.await) }
                        .or(async {
                            poll_fn(|cx| frames.poll_kill(cx)).await;
                            None
                        })
                        .await;
                    match sent {
                        Some(Ok(_)) => {}
                        // Killed while blocked on a slow reader: drop the socket, no close handshake.
                        None => break None,
                        Some(Err(e)) => {
                            tracing::debug!(?link, error = %e, "write failed");
                            break None;
                        }
                    }
                }
                Step::Read(None) => break None,
                Step::Read(Some(Ok(msg))) => match msg {
                    Message::Text(t) => {
                        // The frame's bytes as tungstenite read them, not a copy.
                        let data = Bytes::from(t);
                        if inputs.send(Input::Frame { link, data, binary: false }).await.is_err() {
                            break Some(close_frame(None));
                        }
                    }
                    // The node refuses a binary message on a link that did not agree on them.
                    Message::Binary(data) => {
                        if inputs.send(Input::Frame { link, data, binary: true }).await.is_err() {
                            break Some(close_frame(None));
                        }
                    }
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                },
                Step::Read(Some(Err(WsError::Capacity(e)))) => {
                    tracing::debug!(?link, error = %e, "oversize frame refused");
                    break Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: Utf8Bytes::from_static("MESSAGE_TOO_LARGE"),
                    });
                }
                Step::Read(Some(Err(e))) => {
                    tracing::debug!(?link, error = %e, "link read failed");
                    break Some(CloseFrame {
                        code: CloseCode::Protocol,
                        reason: Utf8Bytes::from_static("INVALID_MESSAGE"),
                    });
                }
            }
        };
        if let Some(frame) = close {
            // Boxed for the same reason.
            Box::pin(close_handshake(&*rt, &mut ws, frame)).await;
        }
        let _ = inputs.send(Input::Closed { link }).await;
    }
}

/// On a kill: the frames the node queued before asking for the close (the ERROR that explains
/// it, spec §19) go out first, within [`CLOSE_TIMEOUT`]. Whether they all did.
async fn write_queued<S>(
    rt: &dyn Runtime,
    ws: &mut WebSocketStream<Corked<S>>,
    frames: &LinkQueues,
    link: LinkId,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async {
        while let Some(first) = frames.try_recv() {
            if write_batch(ws, frames, first, link).await.is_err() {
                return false;
            }
        }
        true
    }
    .or(async {
        sleep(rt, CLOSE_TIMEOUT).await;
        false
    })
    .await
}

/// Sends the close frame, then reads (dropping what comes) until the peer's close frame or the
/// end of the stream: the closing handshake (RFC 6455 §7.1.1), all within [`CLOSE_TIMEOUT`].
///
/// Dropping the socket right after the close frame lost what it carried: frames the peer was
/// still sending arrived on a socket that was no longer read, so closing it reset the
/// connection, and the peer's link failed on its next write before it read the frames queued
/// ahead of the close (the acknowledgements a shutdown flushes, then `BYE`). A peer whose
/// acknowledgements were lost so sent the messages again to a restarted relay, which delivered
/// them twice (e2e_restart on tokio).
async fn close_handshake<S>(
    rt: &dyn Runtime,
    ws: &mut WebSocketStream<Corked<S>>,
    frame: CloseFrame,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = async {
        ws.close(Some(frame)).await.ok()?;
        while let Some(Ok(_)) = ws.next().await {}
        Some(())
    }
    .or(async {
        sleep(rt, CLOSE_TIMEOUT).await;
        None
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Context;

    use async_tungstenite::tungstenite::protocol::{Role, WebSocket};

    use super::*;
    use crate::link_queue::{Shared, link_channels};

    /// A socket that records each write reaching it. Reads never complete; while `blocked`,
    /// writes do not either (a reader that stopped reading).
    #[derive(Clone, Default)]
    struct Wire {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        blocked: Arc<AtomicBool>,
    }

    impl Wire {
        fn writes(&self) -> usize {
            self.writes.lock().unwrap().len()
        }

        /// Every message written so far, parsed back by a client (the tests check that none
        /// is missing).
        fn messages(&self) -> Vec<Message> {
            let bytes = self.writes.lock().unwrap().concat();
            let mut ws =
                WebSocket::from_raw_socket(std::io::Cursor::new(bytes), Role::Client, None);
            // Ends at the end of the bytes (a reset) or after a close frame.
            std::iter::from_fn(|| ws.read().ok()).collect()
        }
    }

    impl AsyncRead for Wire {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.blocked.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            self.writes.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn server(wire: &Wire) -> WebSocketStream<Corked<Wire>> {
        WebSocketStream::from_raw_socket(Corked::new(wire.clone()), Role::Server, None).await
    }

    fn frame(i: usize) -> Arc<[u8]> {
        Arc::from(format!("{{\"n\":{i}}}").into_bytes())
    }

    fn texts(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    fn expected(frames: std::ops::Range<usize>) -> Vec<String> {
        frames.map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    #[test]
    fn an_idle_links_task_and_queue_stay_small() {
        type Io = Corked<crate::rt::HyperIo<hyper::upgrade::Upgraded>>;
        fn task_size<A, F>(_: fn(A) -> F) -> usize {
            size_of::<F>()
        }
        let task = task_size(|(ws, link, queues, inputs): (WebSocketStream<Io>, _, _, _)| {
            run_link(crate::smol_runtime::rt(), ws, link, queues, inputs)
        });
        eprintln!("link task future: {task} bytes, shared queue: {} bytes", size_of::<Shared>());
        // Twice the socket's size would mean it is held twice (see `run_link`).
        assert!(task < 2 * size_of::<WebSocketStream<Io>>() + 256, "{task} bytes");
    }

    #[test]
    fn queued_frames_leave_in_one_write_and_a_lone_frame_in_one_too() {
        smol::block_on(async {
            let wire = Wire::default();
            let mut ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            for i in 1..10 {
                handle.frames.try_send(frame(i)).unwrap();
            }
            let n = write_batch(&mut ws, &queues, frame(0), LinkId(1)).await;
            assert_eq!(n.unwrap(), 10);
            assert_eq!(wire.writes(), 1, "one write for the whole batch");
            assert_eq!(texts(&wire.messages()), expected(0..10));

            let n = write_batch(&mut ws, &queues, frame(10), LinkId(1)).await;
            assert_eq!(n.unwrap(), 1);
            assert_eq!(wire.writes(), 2);
            assert_eq!(texts(&wire.messages()), expected(0..11));
            assert!(!ws.get_ref().is_corked(), "uncorked after a batch");
        });
    }

    #[test]
    fn a_write_batch_stops_at_the_frame_cap_and_the_rest_follows() {
        smol::block_on(async {
            let wire = Wire::default();
            let mut ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            for i in 1..100 {
                handle.frames.try_send(frame(i)).unwrap();
            }
            let n = write_batch(&mut ws, &queues, frame(0), LinkId(1)).await;
            assert_eq!(n.unwrap(), WRITE_BATCH_FRAMES);
            assert_eq!(wire.writes(), 1);
            let first = queues.try_recv().unwrap();
            let n = write_batch(&mut ws, &queues, first, LinkId(1)).await;
            assert_eq!(n.unwrap(), 100 - WRITE_BATCH_FRAMES);
            assert_eq!(wire.writes(), 2);
            assert_eq!(texts(&wire.messages()), expected(0..100));
        });
    }

    #[test]
    fn a_write_batch_stops_at_the_byte_cap() {
        smol::block_on(async {
            let wire = Wire::default();
            let mut ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            let big = |c: u8| -> Arc<[u8]> { Arc::from(vec![c; 100 * 1024]) };
            for c in [b'b', b'c', b'd'] {
                handle.frames.try_send(big(c)).unwrap();
            }
            let n = write_batch(&mut ws, &queues, big(b'a'), LinkId(1)).await;
            assert_eq!(n.unwrap(), 3, "300 KiB: past the byte cap after the third frame");
            assert_eq!(queues.try_recv().unwrap()[0], b'd');
            let sent = texts(&wire.messages());
            assert_eq!(sent.len(), 3);
            assert!(sent.iter().zip("abc".chars()).all(|(t, c)| t.starts_with(c)));
        });
    }

    #[test]
    fn a_non_utf8_frame_is_dropped_and_the_rest_of_the_batch_goes() {
        smol::block_on(async {
            let wire = Wire::default();
            let mut ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            handle.frames.try_send(Arc::from(&b"\xff\xfe"[..])).unwrap();
            handle.frames.try_send(frame(1)).unwrap();
            let n = write_batch(&mut ws, &queues, frame(0), LinkId(1)).await;
            assert_eq!(n.unwrap(), 3);
            assert_eq!(texts(&wire.messages()), expected(0..2));
        });
    }

    #[test]
    fn a_kill_still_sends_the_frames_queued_before_it_then_the_close_frame() {
        smol::block_on(async {
            let wire = Wire::default();
            let ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            for i in 0..100 {
                handle.frames.try_send(frame(i)).unwrap();
            }
            handle.kill.try_send(Some(ErrorCode::RateLimitExceeded)).unwrap();
            let (tx, rx) = async_channel::bounded(4);
            run_link(crate::smol_runtime::rt(), ws, LinkId(7), queues, tx).await;
            let messages = wire.messages();
            assert_eq!(texts(&messages), expected(0..100));
            match messages.last() {
                Some(Message::Close(Some(c))) => {
                    assert_eq!(c.code, CloseCode::Policy);
                    assert_eq!(c.reason.as_str(), ErrorCode::RateLimitExceeded.as_str());
                }
                other => panic!("no close frame last: {other:?}"),
            }
            assert!(wire.writes() <= 3, "two batches and the close frame");
            assert!(matches!(rx.try_recv(), Ok(Input::Closed { .. })));
        });
    }

    #[test]
    fn a_write_blocked_on_a_slow_reader_is_abandoned_when_killed() {
        smol::block_on(async {
            let wire = Wire::default();
            wire.blocked.store(true, Ordering::SeqCst);
            let ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            let (tx, rx) = async_channel::bounded(4);
            let mut task = pin!(run_link(crate::smol_runtime::rt(), ws, LinkId(7), queues, tx));
            handle.frames.try_send(frame(0)).unwrap();
            handle.frames.try_send(frame(1)).unwrap();
            assert!(smol::future::poll_once(task.as_mut()).await.is_none(), "blocked");
            handle.kill.try_send(None).unwrap();
            let ended = task.or(async {
                smol::Timer::after(Duration::from_secs(5)).await;
                panic!("the kill did not end the blocked link");
            });
            ended.await;
            assert_eq!(wire.writes(), 0, "no close handshake on a blocked socket");
            assert!(matches!(rx.try_recv(), Ok(Input::Closed { .. })));
        });
    }

    #[test]
    fn a_dropped_handle_closes_the_link_in_order() {
        smol::block_on(async {
            let wire = Wire::default();
            let ws = server(&wire).await;
            let (handle, queues) = link_channels(256);
            handle.frames.try_send(frame(0)).unwrap();
            drop(handle);
            let (tx, _rx) = async_channel::bounded(4);
            run_link(crate::smol_runtime::rt(), ws, LinkId(7), queues, tx).await;
            let messages = wire.messages();
            assert_eq!(texts(&messages), expected(0..1));
            assert!(
                matches!(messages.last(), Some(Message::Close(Some(c))) if c.code == CloseCode::Normal)
            );
        });
    }
}
