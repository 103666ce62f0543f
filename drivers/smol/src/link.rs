//! One WebSocket link's task (server- or client-side): reads frames into the node task, writes
//! the frames the node queued for it, and closes when told to.
//!
//! Bounds: the write queue holds [`DriverLimits::send_queue_frames`](crate::DriverLimits)
//! frames; when the node task finds it full it kills the link (a slow reader is disconnected).
//! Reads wait for room in the node task's input queue (backpressure on the socket).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use peerlink_core::ErrorCode;
use peerlink_core::node::LinkId;
use smol::channel::{Receiver, RecvError, Sender, TryRecvError, TrySendError};
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::StreamExt as _;

use crate::driver::Input;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The node task's end of a link's send queue. The storage is unbounded and grows as frames
/// arrive; the bound is a count. (A bounded channel reserves every slot up front: 256 slots cost
/// about 6 KiB on every idle link.)
#[derive(Debug, Clone)]
pub(crate) struct FrameSender {
    tx: Sender<Arc<[u8]>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl FrameSender {
    /// Queues a frame; `Full` once `cap` frames wait (the slow reader is then disconnected).
    pub fn try_send(&self, frame: Arc<[u8]>) -> Result<(), TrySendError<Arc<[u8]>>> {
        // Counted before it is sent, so the receiver never takes away more than was added.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(frame));
        }
        self.tx.try_send(frame).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }
}

/// The link task's end of its send queue.
#[derive(Debug)]
struct FrameReceiver {
    rx: Receiver<Arc<[u8]>>,
    queued: Arc<AtomicUsize>,
}

impl FrameReceiver {
    async fn recv(&self) -> Result<Arc<[u8]>, RecvError> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(frame)
    }

    fn try_recv(&self) -> Result<Arc<[u8]>, TryRecvError> {
        let frame = self.rx.try_recv()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(frame)
    }
}

/// The node task's side of a link.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    /// Frames to write, at most `send_queue_frames` waiting.
    pub frames: FrameSender,
    /// Close now, with this reason (`None`: orderly).
    pub kill: Sender<Option<ErrorCode>>,
}

/// The link task's side.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    frames: FrameReceiver,
    kill: Receiver<Option<ErrorCode>>,
}

/// A new link's two channels: at most `queue` frames, and one kill signal.
pub(crate) fn link_channels(queue: usize) -> (LinkHandle, LinkQueues) {
    let (ftx, frx) = smol::channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    let frames = FrameSender { tx: ftx, queued: Arc::clone(&queued), cap: queue.max(1) };
    let (ktx, krx) = smol::channel::bounded(1);
    let receiver = FrameReceiver { rx: frx, queued };
    (LinkHandle { frames, kill: ktx }, LinkQueues { frames: receiver, kill: krx })
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

enum Step {
    Read(Option<Result<Message, WsError>>),
    Write(Arc<[u8]>),
    Kill(Option<ErrorCode>),
}

/// Runs a link until either side closes it, then reports `Input::Closed` to the node task.
pub(crate) async fn run_link<S>(
    mut ws: WebSocketStream<S>,
    link: LinkId,
    queues: LinkQueues,
    inputs: Sender<Input>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let LinkQueues { frames, kill } = queues;
    let close: Option<CloseFrame> = loop {
        let step = async { Step::Kill(kill.recv().await.unwrap_or(None)) }
            .or(async {
                match frames.recv().await {
                    Ok(f) => Step::Write(f),
                    Err(_) => Step::Kill(None),
                }
            })
            .or(async { Step::Read(ws.next().await) })
            .await;
        match step {
            Step::Kill(reason) => {
                // Frames the node queued before asking for the close (the ERROR that explains
                // it, spec §19) go out first, within the close timeout.
                let flushed = async {
                    while let Ok(frame) = frames.try_recv() {
                        let Ok(text) = String::from_utf8(frame.to_vec()) else { continue };
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
                .or(async {
                    smol::Timer::after(CLOSE_TIMEOUT).await;
                    false
                })
                .await;
                break flushed.then(|| close_frame(reason));
            }
            Step::Write(frame) => {
                let Ok(text) = String::from_utf8(frame.to_vec()) else {
                    tracing::warn!(?link, "node produced a non-UTF-8 frame; dropped");
                    continue;
                };
                let sent = async { Some(ws.send(Message::Text(text.into())).await) }
                    .or(async {
                        let _ = kill.recv().await;
                        None
                    })
                    .await;
                match sent {
                    Some(Ok(())) => {}
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
                    let data = t.as_bytes().to_vec();
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
        let _ = async { ws.close(Some(frame)).await.ok() }
            .or(async {
                smol::Timer::after(CLOSE_TIMEOUT).await;
                None
            })
            .await;
    }
    let _ = inputs.send(Input::Closed { link }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_queue_is_bounded_by_count_and_frees_as_the_link_writes() {
        smol::block_on(async {
            let (handle, queues) = link_channels(2);
            let frame: Arc<[u8]> = Arc::from(&b"{}"[..]);
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok());
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok());
            assert!(matches!(
                handle.frames.try_send(Arc::clone(&frame)),
                Err(TrySendError::Full(_))
            ));
            assert!(queues.frames.recv().await.is_ok());
            assert!(handle.frames.try_send(Arc::clone(&frame)).is_ok(), "room again");
            assert!(matches!(handle.frames.try_send(frame), Err(TrySendError::Full(_))));
            assert!(queues.frames.try_recv().is_ok());
            assert!(queues.frames.try_recv().is_ok());
            assert!(queues.frames.try_recv().is_err(), "empty");
        });
    }
}
