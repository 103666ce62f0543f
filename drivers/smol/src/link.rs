//! One WebSocket link's task (server- or client-side): reads frames into the node task, writes
//! the frames the node queued for it, and closes when told to.
//!
//! Bounds: the write queue holds [`DriverLimits::send_queue_frames`](crate::DriverLimits)
//! frames; when the node task finds it full it kills the link (a slow reader is disconnected).
//! Reads wait for room in the node task's input queue (backpressure on the socket).

use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use peerlink_core::ErrorCode;
use peerlink_core::node::LinkId;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::StreamExt as _;

use crate::driver::Input;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The node task's side of a link.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    /// Frames to write.
    pub frames: Sender<Arc<[u8]>>,
    /// Close now, with this reason (`None`: orderly).
    pub kill: Sender<Option<ErrorCode>>,
}

/// The link task's side.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    frames: Receiver<Arc<[u8]>>,
    kill: Receiver<Option<ErrorCode>>,
}

/// A new link's two channels: `queue` frames, and one kill signal.
pub(crate) fn link_channels(queue: usize) -> (LinkHandle, LinkQueues) {
    let (ftx, frx) = smol::channel::bounded(queue.max(1));
    let (ktx, krx) = smol::channel::bounded(1);
    (LinkHandle { frames: ftx, kill: ktx }, LinkQueues { frames: frx, kill: krx })
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
