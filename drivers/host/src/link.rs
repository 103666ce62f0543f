//! One WebSocket link's task (server- or client-side): reads frames into the node task, writes
//! the frames the node queued for it, and closes when told to.
//!
//! Bounds: the write queue holds [`DriverLimits::send_queue_frames`](crate::DriverLimits)
//! frames; when the node task finds it full it kills the link (a slow reader is disconnected).
//! Reads wait for room in the node task's input queue (backpressure on the socket). A frame read
//! goes to the node task as the bytes tungstenite read it into, not a copy: until handled it
//! keeps that read buffer alive (`ws_read_buffer_bytes`, 4 KiB, or the frame's own size when
//! larger), at most one per input queue slot.
//!
//! Writes are batched: when a frame is ready, the task also takes the frames already queued
//! behind it (at most [`WRITE_BATCH_FRAMES`] frames or [`WRITE_BATCH_BYTES`] bytes) and the
//! socket ([`Corked`]) holds their bytes until the batch ends, so a batch costs one `send`
//! syscall instead of one per frame.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use async_channel::{Sender, TrySendError};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use futures_lite::FutureExt as _;
use futures_lite::StreamExt as _;
use futures_lite::io::{AsyncRead, AsyncWrite};
use peerlink_core::ErrorCode;
use peerlink_core::node::LinkId;

use crate::runtime::{Rt, Runtime, sleep};

use crate::driver::Input;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many frames are written between two flushes.
const WRITE_BATCH_FRAMES: usize = 64;

/// No further frame joins a write batch once it holds this many bytes (the frame that starts a
/// batch goes whatever its size).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A corked socket writes its held bytes out once a write would take them past this.
const HOLD_BYTES: usize = WRITE_BATCH_BYTES;

/// A held-bytes buffer that grew past this is freed once written out, so a link that carried a
/// burst does not keep the memory while idle.
const HOLD_RETAIN: usize = 32 * 1024;

/// What a link's two ends share, in one small allocation. (Two `async_channel`s, one for the
/// frames and one for the kill signal, cost 768 bytes each on every idle link, their
/// cache-padded queues allocated 128-byte aligned, plus a listener per waiting receiver.)
#[derive(Debug, Default)]
struct Shared {
    /// Frames waiting to be written; the bound is [`FrameSender`]'s count.
    frames: VecDeque<Arc<[u8]>>,
    /// `Some(reason)` once the node task asked for a close (the first reason wins).
    kill: Option<Option<ErrorCode>>,
    /// The node task dropped its end: the link closes once the queued frames are written.
    handle_gone: bool,
    /// The link task ended: frames are refused.
    link_gone: bool,
    /// The link task, waiting for a frame.
    frame_waker: Option<Waker>,
    /// The link task, waiting for a kill (also while a write is blocked, when a new frame must
    /// not wake it).
    kill_waker: Option<Waker>,
}

type SharedRef = Arc<Mutex<Shared>>;

/// The shared state, locked. Nothing panics while holding the lock, but a poisoned lock is
/// used anyway rather than panicking in turn.
fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes the link task (where it waits for a frame, for a kill, or both), outside the lock.
fn wake(mut s: MutexGuard<'_, Shared>, frame: bool, kill: bool) {
    let frame = if frame { s.frame_waker.take() } else { None };
    let kill = if kill { s.kill_waker.take() } else { None };
    drop(s);
    for w in [frame, kill].into_iter().flatten() {
        w.wake();
    }
}

/// Keeps `cx`'s waker in `slot` (without cloning it again if it is already there).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The node task's end of a link's send queue. The storage grows as frames arrive; the bound is
/// a count.
#[derive(Debug)]
pub(crate) struct FrameSender {
    shared: SharedRef,
    cap: usize,
}

impl FrameSender {
    /// Queues a frame; `Full` once `cap` frames wait (the slow reader is then disconnected),
    /// `Closed` once the link task has ended.
    pub fn try_send(&self, frame: Arc<[u8]>) -> Result<(), TrySendError<Arc<[u8]>>> {
        let mut s = lock(&self.shared);
        if s.link_gone {
            return Err(TrySendError::Closed(frame));
        }
        if s.frames.len() >= self.cap {
            return Err(TrySendError::Full(frame));
        }
        s.frames.push_back(frame);
        wake(s, true, false);
        Ok(())
    }
}

/// The node task's kill switch for a link.
#[derive(Debug)]
pub(crate) struct KillSender {
    shared: SharedRef,
}

impl KillSender {
    /// Asks the link to close now, with this reason (`None`: orderly). `Full` if it was asked
    /// already (the first reason stands).
    pub fn try_send(
        &self,
        reason: Option<ErrorCode>,
    ) -> Result<(), TrySendError<Option<ErrorCode>>> {
        let mut s = lock(&self.shared);
        if s.kill.is_some() {
            return Err(TrySendError::Full(reason));
        }
        s.kill = Some(reason);
        wake(s, false, true);
        Ok(())
    }
}

/// The node task's side of a link. Dropping it (the node forgot the link) closes the link in
/// order once the frames already queued are written.
#[derive(Debug)]
pub(crate) struct LinkHandle {
    /// Frames to write, at most `send_queue_frames` waiting.
    pub frames: FrameSender,
    /// Close now, with this reason (`None`: orderly).
    pub kill: KillSender,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        let mut s = lock(&self.kill.shared);
        s.handle_gone = true;
        wake(s, true, true);
    }
}

/// The link task's side.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    shared: SharedRef,
}

impl Drop for LinkQueues {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.link_gone = true;
        s.frames.clear();
    }
}

impl LinkQueues {
    /// The kill reason once asked; `None` (an orderly close) once the handle is gone and the
    /// queue is empty.
    fn poll_kill(&self, cx: &mut Context<'_>) -> Poll<Option<ErrorCode>> {
        let mut s = lock(&self.shared);
        if let Some(reason) = s.kill {
            return Poll::Ready(reason);
        }
        if s.handle_gone && s.frames.is_empty() {
            return Poll::Ready(None);
        }
        register(&mut s.kill_waker, cx);
        Poll::Pending
    }

    /// The next frame; `None` once the handle is gone and the queue is empty.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<[u8]>>> {
        let mut s = lock(&self.shared);
        if let Some(frame) = s.frames.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if s.handle_gone {
            return Poll::Ready(None);
        }
        register(&mut s.frame_waker, cx);
        Poll::Pending
    }

    /// The next frame, if one is queued.
    fn try_recv(&self) -> Option<Arc<[u8]>> {
        lock(&self.shared).frames.pop_front()
    }

    /// Whether no frame is queued.
    fn is_empty(&self) -> bool {
        lock(&self.shared).frames.is_empty()
    }
}

/// A new link's queue: at most `queue` frames, and one kill signal.
pub(crate) fn link_channels(queue: usize) -> (LinkHandle, LinkQueues) {
    let shared = SharedRef::default();
    let frames = FrameSender { shared: Arc::clone(&shared), cap: queue.max(1) };
    let kill = KillSender { shared: Arc::clone(&shared) };
    (LinkHandle { frames, kill }, LinkQueues { shared })
}

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

/// A link's socket, able to hold its writes back while a batch of frames is written.
///
/// tungstenite flushes after every message it sends; while corked, writes are only copied into
/// a buffer (at most [`HOLD_BYTES`] before they go out anyway) and flushes do nothing, so the
/// batch reaches the socket in one write when [`Corked::uncork`] and a flush end it. Uncorked,
/// it writes whatever it still holds and then passes writes straight through. Links start
/// uncorked (the client's WebSocket handshake runs over it) and are corked only by
/// [`run_link`]'s write batches.
#[derive(Debug)]
pub(crate) struct Corked<S> {
    io: S,
    held: Vec<u8>,
    /// How much of `held` is already written.
    written: usize,
    corked: bool,
}

impl<S> Corked<S> {
    /// Wraps a socket, uncorked.
    pub fn new(io: S) -> Self {
        Self { io, held: Vec::new(), written: 0, corked: false }
    }

    fn cork(&mut self) {
        self.corked = true;
    }

    fn uncork(&mut self) {
        self.corked = false;
    }

    /// Holds `data` if corked and it fits.
    fn hold(&mut self, data: &[u8]) -> bool {
        let fits = self.held.len().saturating_add(data.len()) <= HOLD_BYTES;
        if self.corked && fits {
            self.held.extend_from_slice(data);
        }
        self.corked && fits
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.held.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written = self.written.saturating_add(n.min(rest.len()));
        }
        if self.held.capacity() > HOLD_RETAIN {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hold(data) {
            return Poll::Ready(Ok(data.len()));
        }
        ready!(this.poll_write_held(cx))?;
        if this.hold(data) {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.corked {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
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

/// One frame of the node's as a text message, without copying it. The node only makes UTF-8
/// JSON frames; anything else is logged and dropped.
fn text_message(link: LinkId, frame: Arc<[u8]>) -> Option<Message> {
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
        if let Some(message) = text_message(link, frame) {
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
                        if inputs.send(Input::Frame { link, data }).await.is_err() {
                            break Some(close_frame(None));
                        }
                    }
                    Message::Binary(_) => {
                        tracing::debug!(?link, "binary frame refused");
                        break Some(CloseFrame {
                            code: CloseCode::Unsupported,
                            reason: Utf8Bytes::from_static("INVALID_MESSAGE"),
                        });
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
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_tungstenite::tungstenite::protocol::{Role, WebSocket};

    use super::*;

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
    fn the_send_queue_is_bounded_by_count_and_frees_as_the_link_writes() {
        smol::block_on(async {
            let (handle, queues) = link_channels(2);
            let frames = &queues;
            let frame: Arc<[u8]> = Arc::from(&b"{}"[..]);
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok());
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok());
            assert!(matches!(
                handle.frames.try_send(Arc::clone(&frame)),
                Err(TrySendError::Full(_))
            ));
            assert!(poll_fn(|cx| frames.poll_recv(cx)).await.is_some());
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok(), "room again");
            assert!(matches!(handle.frames.try_send(frame), Err(TrySendError::Full(_))));
            assert!(frames.try_recv().is_some());
            assert!(frames.try_recv().is_some());
            assert!(frames.try_recv().is_none(), "empty");
            drop(handle);
            assert!(poll_fn(|cx| frames.poll_recv(cx)).await.is_none(), "closed");
        });
    }

    #[test]
    fn the_first_kill_reason_stands_and_a_gone_link_refuses_frames() {
        smol::block_on(async {
            let (handle, queues) = link_channels(4);
            assert!(handle.kill.try_send(Some(ErrorCode::Timeout)).is_ok());
            assert!(handle.kill.try_send(None).is_err());
            assert_eq!(poll_fn(|cx| queues.poll_kill(cx)).await, Some(ErrorCode::Timeout));
            drop(queues);
            assert!(matches!(handle.frames.try_send(frame(0)), Err(TrySendError::Closed(_))));
        });
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
            assert!(!ws.get_ref().corked, "uncorked after a batch");
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
