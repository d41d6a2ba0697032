//! Connection events: [`Event`] and the [`Events`] stream.

use broadcast_protocol::{ErrorCode, FailureReason, Recipient};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Something that happened to the connection, or a notice from the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The handshake succeeded (first connection or reconnection).
    Connected {
        /// Name the broker registered this client under.
        name: String,
    },
    /// The connection was lost; the client reconnects unless it was replaced.
    Disconnected {
        /// What happened (i/o error, end of stream, goodbye from the broker, silence...).
        reason: String,
    },
    /// The client waits `delay` and then makes connection attempt `attempt` (from 1).
    Reconnecting {
        /// Attempt number since the connection was lost, from 1.
        attempt: u32,
        /// Delay before this attempt.
        delay: Duration,
    },
    /// One recipient will not get one of this client's messages.
    ///
    /// The client raises this event itself, with `recipient` set to its own name, when it
    /// receives a message that nothing can take: no live [`Subscription`](crate::Subscription)
    /// for its channel and the [`DirectMessages`](crate::DirectMessages) stream dropped
    /// (`reason` [`FailureReason::NotSubscribed`]), or the direct stream never taken and full
    /// (`reason` [`FailureReason::SlowConsumer`]). It also raises it, with `reason`
    /// [`FailureReason::TooLarge`], for a queued message that no longer fits the frame limit of
    /// the broker it reconnected to.
    DeliveryFailed {
        /// Id of the message.
        id: String,
        /// Who will not get it.
        recipient: Recipient,
        /// Why.
        reason: FailureReason,
        /// Human-readable detail.
        detail: String,
    },
    /// A persistent message is safe with the broker.
    Accepted {
        /// Id of the message.
        id: String,
    },
    /// The client stopped before the broker confirmed one of its persistent messages: the
    /// message may or may not have been delivered. Raised once per such message when
    /// [`Client::close`](crate::Client::close) runs out of
    /// [`close_timeout`](crate::ConnectOptions::close_timeout), and when the client stops while
    /// disconnected (including for messages still in the send buffer).
    Unconfirmed {
        /// Id of the message.
        id: String,
    },
    /// The broker reported an error, about a message (`id`) or about the connection.
    ServerError {
        /// Kind of error.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
        /// The message the error is about, if any.
        id: Option<String>,
    },
    /// This [`Events`] receiver fell behind and missed `missed` events.
    Lagged {
        /// How many events were missed.
        missed: u64,
    },
    /// The client stopped for good: closed, replaced, or out of reconnect attempts.
    Closed,
}

/// A stream of every [`Event`] raised after it was made, from
/// [`Client::events`](crate::Client::events).
///
/// Each receiver holds up to [`ConnectOptions::event_buffer`](crate::ConnectOptions::event_buffer)
/// events (4096 by default); one that falls further behind yields
/// [`Event::Lagged`] in place of the events it missed. The stream ends once the connection task
/// has stopped and every event has been read.
pub struct Events {
    inner: BroadcastStream<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|res| match res {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Event::Lagged { missed },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_lagging_receiver_is_told_how_many_events_it_missed() {
        let (tx, rx) = broadcast::channel(2);
        let mut events = Events::new(rx);
        for attempt in 1..=5 {
            let _ = tx.send(Event::Reconnecting {
                attempt,
                delay: Duration::ZERO,
            });
        }
        drop(tx);
        assert_eq!(events.next().await, Some(Event::Lagged { missed: 3 }));
        assert!(matches!(
            events.next().await,
            Some(Event::Reconnecting { attempt: 4, .. })
        ));
        assert!(matches!(
            events.next().await,
            Some(Event::Reconnecting { attempt: 5, .. })
        ));
        assert_eq!(events.next().await, None);
    }
}
