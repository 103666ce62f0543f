//! Confirmed sends: the application waits for a message's delivery and learns which transport
//! carried it (seed 000's `TransportResult`), and handlers keyed by message type or by
//! application-defined type.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_core::stream::FailReason;
use peerlink_core::{AppType, EntityId, Event, MessageId, MessageType, Transport};

/// The outcome of a delivered message (`Handle::send_confirmed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportResult {
    /// The recipient.
    pub to: EntityId,
    /// The message.
    pub id: MessageId,
    /// The transport that carried its last copy toward the recipient or its next hop
    /// (`None` only if none was ever handed to a transport, which an acknowledgement cannot
    /// follow).
    pub transport: Option<Transport>,
    /// From the node accepting the message to its acknowledgement: the time until the
    /// recipient's application had it, plus the acknowledgement's way back.
    pub elapsed: Duration,
}

/// Why a confirmed send did not end in delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    /// Why the node gave up.
    pub reason: FailReason,
    /// Whether it may still have been, or may still be, delivered (spec §13.6).
    pub maybe_delivered: bool,
}

/// A send waiting for its outcome.
pub(crate) struct Waiter {
    pub since: Instant,
    pub reply: async_channel::Sender<Result<TransportResult, Undelivered>>,
}

impl Waiter {
    /// Answers the waiter of a `Delivered` or `Failed` event; `true` when the event is used up
    /// (a `Delivered`: a confirmed send's own result, not put on `incoming`).
    pub fn answer(self, e: &Event) -> bool {
        match e {
            Event::Delivered { to, id, transport } => {
                let (to, id, transport) = (to.clone(), id.clone(), *transport);
                let elapsed = self.since.elapsed();
                let _ = self.reply.try_send(Ok(TransportResult { to, id, transport, elapsed }));
                true
            }
            Event::Failed { reason, maybe_delivered, .. } => {
                let (reason, maybe_delivered) = (*reason, *maybe_delivered);
                let _ = self.reply.try_send(Err(Undelivered { reason, maybe_delivered }));
                false
            }
            _ => false,
        }
    }
}

/// A handler the application registered; called on the node task, so it must not block (spawn
/// for real work).
pub(crate) type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// What a handler is registered for. An application type is more specific than a message
/// type, so its handler is asked first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HandlerKey {
    /// An application-defined type ([`Event::Message::app_type`]).
    App(AppType),
    /// A message type (`TASK_REQUEST` for requests).
    Type(MessageType),
}

impl HandlerKey {
    /// The keys an event answers to, most specific first.
    pub fn of(e: &Event) -> [Option<HandlerKey>; 2] {
        match e {
            Event::Message { kind, app_type, .. } => {
                [app_type.clone().map(HandlerKey::App), Some(HandlerKey::Type(*kind))]
            }
            Event::Request { .. } => [None, Some(HandlerKey::Type(MessageType::TaskRequest))],
            _ => [None, None],
        }
    }
}
