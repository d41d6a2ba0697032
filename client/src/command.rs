//! What [`Client`](crate::Client) handles ask of the connection task.
//!
//! Two channels carry it: a bounded channel of [`Command`]s (messages, subscriptions, flushes;
//! its capacity is the send buffer) and an unbounded channel of [`Control`] messages that must
//! get through even when the send buffer is full or the connection is down (unsubscribing on
//! drop, acknowledgements, closing).

use crate::SubscribeError;
use crate::subscription::Inbound;
use crate::unconfirmed::Confirm;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// A request from a [`Client`](crate::Client) handle, in send order.
#[derive(Debug)]
pub(crate) enum Command {
    /// An encoded `Publish` frame; `confirm` (persistent messages only) is answered when the
    /// broker's `Accepted` arrives.
    Publish {
        frame: Bytes,
        persistent: bool,
        confirm: Option<Confirm>,
    },
    /// Register a subscription and subscribe at the broker; answered once `Subscribed` arrives.
    Subscribe {
        channel: String,
        id: u64,
        tx: mpsc::Sender<Inbound>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    /// Ping; answered once the matching `Pong` arrives.
    Flush { reply: oneshot::Sender<()> },
}

/// A request that does not wait for the send buffer or the connection.
#[derive(Debug)]
pub(crate) enum Control {
    /// A [`Subscription`](crate::Subscription) was dropped.
    Unsubscribe { channel: String, id: u64 },
    /// [`Client::close`](crate::Client::close).
    Close { reply: oneshot::Sender<()> },
    /// The application took deliveries from a stream (automatic acknowledgement): their
    /// [`AckRef`](crate::subscription::AckRef)s wait in the shared
    /// [`AckQueue`](crate::subscription::AckQueue). Sent when the queue stops being empty, so
    /// one wake-up of the task carries every acknowledgement queued until it looks.
    Acks,
    /// [`Client::ack`](crate::Client::ack) (manual acknowledgement).
    ManualAck { tag: u64 },
    /// [`Client::reauth`](crate::Client::reauth).
    Reauth {
        token: String,
        reply: oneshot::Sender<Result<Option<u64>, crate::ReauthError>>,
    },
}
