//! [`Events`]: the application's end of a node's event stream (`Handle::incoming`).
//!
//! A bounded queue from the node task to the application, which also tells the node when the
//! application has **taken** everything in it: a durable node writes its receive positions, and
//! sends the acknowledgements that wait for them, only once the application holds the messages
//! they cover (spec §26.2); a message still in this queue dies with the process. The node task
//! asks to be told ([`TakenSignal::want`]) when it leaves events here behind positions it holds
//! back; the application's next take that leaves the queue empty tells it at once, instead of
//! the node looking again every few milliseconds.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_channel::{Receiver, RecvError, Sender, TryRecvError};
use futures_lite::Stream;
use peerlink_core::Event;

/// The node's events, as the application takes them: [`recv`](Self::recv) (async),
/// [`recv_blocking`](Self::recv_blocking), [`try_recv`](Self::try_recv), or as a [`Stream`].
/// Clones share the queue (each event goes to one of them). The stream ends (`RecvError`) when
/// the node stops.
pub struct Events {
    // Boxed: a receiver being polled as a stream is pinned, and `Events` need not be.
    rx: Pin<Box<Receiver<Event>>>,
    signal: Arc<TakenSignal>,
}

impl Clone for Events {
    fn clone(&self) -> Self {
        Self { rx: Box::pin((*self.rx).clone()), signal: Arc::clone(&self.signal) }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("queued", &self.rx.len()).finish_non_exhaustive()
    }
}

/// The node task's side of a [`TakenSignal`]: the signal (to ask for word) and where the word
/// comes.
pub(crate) type TakenWord = (Arc<TakenSignal>, Pin<Box<Receiver<()>>>);

/// How the application's end tells the node task that it emptied the queue.
pub(crate) struct TakenSignal {
    /// Set by the node task when it waits for the queue to be emptied.
    wanted: AtomicBool,
    /// Wakes the node task (one pending wake-up is enough).
    wake: Sender<()>,
}

impl TakenSignal {
    /// A signal, and the node task's end of it.
    pub(crate) fn new() -> (Arc<Self>, Receiver<()>) {
        let (wake, woken) = async_channel::bounded(1);
        (Arc::new(Self { wanted: AtomicBool::new(false), wake }), woken)
    }

    /// The node task asks to be woken when the application next empties the queue.
    pub(crate) fn want(&self) {
        self.wanted.store(true, Ordering::SeqCst);
    }

    fn taken(&self, rx: &Receiver<Event>) {
        if rx.is_empty() && self.wanted.swap(false, Ordering::SeqCst) {
            // Full: a wake-up is pending already. Closed: the node has stopped.
            let _ = self.wake.try_send(());
        }
    }
}

impl Events {
    pub(crate) fn new(rx: Receiver<Event>, signal: Arc<TakenSignal>) -> Self {
        Self { rx: Box::pin(rx), signal }
    }

    /// The next event; an error once the node has stopped and the queue is empty.
    pub async fn recv(&self) -> Result<Event, RecvError> {
        let e = self.rx.recv().await?;
        self.signal.taken(&self.rx);
        Ok(e)
    }

    /// The next event, blocking the thread (not for use inside an async task).
    pub fn recv_blocking(&self) -> Result<Event, RecvError> {
        let e = self.rx.recv_blocking()?;
        self.signal.taken(&self.rx);
        Ok(e)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        let e = self.rx.try_recv()?;
        self.signal.taken(&self.rx);
        Ok(e)
    }

    /// Events queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether the node has stopped sending events (it stopped, or another `incoming()`
    /// replaced this stream).
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let polled = self.rx.as_mut().poll_next(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.signal.taken(&self.rx);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::StreamExt as _;
    use peerlink_core::EntityId;

    use super::*;

    fn event(n: u64) -> Event {
        Event::Message {
            from: EntityId::new("alice").unwrap(),
            id: peerlink_core::MessageId::new(format!("m{n}")).unwrap(),
            kind: peerlink_core::MessageType::PeerMessage,
            app_type: None,
            payload: vec![1],
        }
    }

    fn setup() -> (Sender<Event>, Events, Arc<TakenSignal>, Receiver<()>) {
        let (tx, rx) = async_channel::bounded(8);
        let (signal, woken) = TakenSignal::new();
        (tx, Events::new(rx, Arc::clone(&signal)), signal, woken)
    }

    #[test]
    fn the_node_hears_when_the_queue_it_waits_on_is_emptied_and_only_then() {
        let (tx, events, signal, woken) = setup();
        tx.try_send(event(1)).unwrap();
        tx.try_send(event(2)).unwrap();
        // Not asked: no word.
        events.try_recv().unwrap();
        events.try_recv().unwrap();
        assert!(woken.try_recv().is_err());
        // Asked: no word while events remain, one when the last is taken, by any way of taking.
        for how in 0..3 {
            tx.try_send(event(3)).unwrap();
            tx.try_send(event(4)).unwrap();
            signal.want();
            let take = || match how {
                0 => events.try_recv().unwrap(),
                1 => events.recv_blocking().unwrap(),
                _ => smol::block_on(events.clone().next()).unwrap(),
            };
            take();
            assert!(woken.try_recv().is_err(), "one event still queued");
            take();
            assert!(woken.try_recv().is_ok(), "emptied ({how})");
            assert!(woken.try_recv().is_err(), "one word per wish");
        }
    }

    #[test]
    fn a_stopped_node_does_not_make_taking_fail() {
        let (tx, events, signal, woken) = setup();
        tx.try_send(event(1)).unwrap();
        drop(woken);
        signal.want();
        assert!(events.try_recv().is_ok());
        drop(tx);
        assert!(events.try_recv().is_err());
        assert!(events.is_closed());
    }
}
