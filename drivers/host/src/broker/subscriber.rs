//! [`Subscriber`]: a connection of its own for `SUBSCRIBE`/`PSUBSCRIBE`, its messages handed
//! to a bounded channel, its loss made known.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::{Msg, PushInfo, PushKind};

use super::{Broker, BrokerError, Settings, open};

/// A message published on a channel the subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel it was published on (for a pattern subscription, the channel that matched),
    /// any byte that is not UTF-8 replaced.
    pub channel: String,
    /// The payload, as published.
    pub payload: Vec<u8>,
}

/// A subscription connection. Subscribe with [`Subscriber::subscribe`] and
/// [`Subscriber::psubscribe`]; read what is published from [`Subscriber::messages`].
///
/// **Bound.** Messages wait in a channel of the capacity given to [`Broker::subscriber`]. The
/// connection's reader never waits for the application (a wait would stall the connection, and
/// the broker would then drop it for its output buffer): a message that finds the channel full
/// is dropped and counted ([`Subscriber::dropped`]), and so is one whose payload is over the
/// `max_payload` given to [`Broker::subscriber`] ([`Subscriber::oversized`]): anyone allowed to
/// publish on the broker could otherwise fill the queue with large ones. Redis's pub/sub is at most once anyway;
/// what must not be lost belongs in a stream or a list, not in a publication.
///
/// **Loss.** When the connection is lost, [`Subscriber::lost`] completes, [`Subscriber::is_lost`]
/// turns true, and the message channel is closed: what was queued can still be read, then
/// `recv` fails. Nothing resubscribes: make a new subscriber ([`Broker::subscriber`]).
#[derive(Debug)]
pub struct Subscriber {
    broker: Broker,
    messages: async_channel::Receiver<Published>,
    /// Never sent on: closed when the connection is lost.
    lost: async_channel::Receiver<()>,
    dropped: Arc<AtomicU64>,
    oversized: Arc<AtomicU64>,
}

impl Subscriber {
    /// A subscription connection like the one of `settings`, queueing up to `capacity`
    /// messages of at most `max_payload` bytes.
    pub(super) async fn open(
        settings: Arc<Settings>,
        capacity: usize,
        max_payload: usize,
    ) -> Result<Subscriber, BrokerError> {
        let (messages_tx, messages) = async_channel::bounded(capacity.max(1));
        let (lost_tx, lost) = async_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let oversized = Arc::new(AtomicU64::new(0));
        let push = PushSender {
            messages: messages_tx,
            lost: lost_tx,
            dropped: dropped.clone(),
            oversized: oversized.clone(),
            max_payload,
        };
        let con = open(&settings, Some(push)).await?;
        Ok(Subscriber { broker: Broker { settings, con }, messages, lost, dropped, oversized })
    }

    /// Subscribes to `channel`, bounded by the connection's timeout.
    pub async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.change(Change::Subscribe, channel).await
    }

    /// Subscribes to the channels matching `pattern` (`*`, `?`, `[…]`, as Redis's `PSUBSCRIBE`).
    pub async fn psubscribe(&self, pattern: &str) -> Result<(), BrokerError> {
        self.change(Change::PSubscribe, pattern).await
    }

    /// Unsubscribes from `channel`.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.change(Change::Unsubscribe, channel).await
    }

    /// Unsubscribes from `pattern`.
    pub async fn punsubscribe(&self, pattern: &str) -> Result<(), BrokerError> {
        self.change(Change::PUnsubscribe, pattern).await
    }

    /// Makes `change` to the subscriptions, confirmed by the broker within the timeout.
    async fn change(&self, change: Change, name: &str) -> Result<(), BrokerError> {
        let mut con = self.broker.con.clone();
        let request = async move {
            match change {
                Change::Subscribe => con.subscribe(name).await,
                Change::PSubscribe => con.psubscribe(name).await,
                Change::Unsubscribe => con.unsubscribe(name).await,
                Change::PUnsubscribe => con.punsubscribe(name).await,
            }
        };
        self.broker.bounded(self.broker.settings.timeout, request).await
    }

    /// The messages, in the order the broker sent them (a clone of the one receiver: each
    /// message goes to one reader). Closed once the connection is lost and they are read.
    pub fn messages(&self) -> async_channel::Receiver<Published> {
        self.messages.clone()
    }

    /// How many messages were dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many messages were dropped because their payload was over `max_payload`.
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }

    /// Whether the connection is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_closed()
    }

    /// Completes when the connection is lost (at once if it is).
    pub async fn lost(&self) {
        // Nothing is ever sent: `recv` returns when the channel closes.
        let _ = self.lost.recv().await;
    }
}

/// A change to a subscriber's subscriptions.
#[derive(Debug, Clone, Copy)]
enum Change {
    Subscribe,
    PSubscribe,
    Unsubscribe,
    PUnsubscribe,
}

/// What the connection's driver hands pushes to. It must not block (it runs in the driver).
/// Dropped with the driver, which closes both channels too.
pub(super) struct PushSender {
    messages: async_channel::Sender<Published>,
    lost: async_channel::Sender<()>,
    dropped: Arc<AtomicU64>,
    oversized: Arc<AtomicU64>,
    max_payload: usize,
}

impl redis::aio::AsyncPushSender for PushSender {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        if info.kind == PushKind::Disconnection {
            self.lost.close();
            self.messages.close();
            return Ok(());
        }
        // Other pushes (the confirmations of SUBSCRIBE and the like) are the requests' answers.
        let Some(msg) = Msg::from_push_info(info) else { return Ok(()) };
        if msg.get_payload_bytes().len() > self.max_payload {
            self.oversized.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let channel = msg.get_channel::<Vec<u8>>().unwrap_or_default();
        let published = Published {
            channel: String::from_utf8_lossy(&channel).into_owned(),
            payload: msg.get_payload_bytes().to_vec(),
        };
        if let Err(async_channel::TrySendError::Full(_)) = self.messages.try_send(published) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
