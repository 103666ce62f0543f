//! A link's bounded send queue and its kill switch, shared by the node task (which queues frames
//! and asks for closes) and the link's task (which writes the frames out): [`link_channels`].
//!
//! The queue holds at most [`DriverLimits::send_queue_frames`](crate::DriverLimits) frames;
//! when the node task finds it full it kills the link (a slow reader is disconnected). Dropping
//! the node task's end closes the link in order, once the frames already queued are written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use async_channel::TrySendError;
use peerlink_core::ErrorCode;

/// What a link's two ends share, in one small allocation. (Two `async_channel`s, one for the
/// frames and one for the kill signal, cost 768 bytes each on every idle link, their
/// cache-padded queues allocated 128-byte aligned, plus a listener per waiting receiver.)
#[derive(Debug, Default)]
pub(crate) struct Shared {
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
    pub fn poll_kill(&self, cx: &mut Context<'_>) -> Poll<Option<ErrorCode>> {
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
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<[u8]>>> {
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
    pub fn try_recv(&self) -> Option<Arc<[u8]>> {
        lock(&self.shared).frames.pop_front()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

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
            let frame: Arc<[u8]> = Arc::from(&b"{}"[..]);
            assert!(matches!(handle.frames.try_send(frame), Err(TrySendError::Closed(_))));
        });
    }
}
