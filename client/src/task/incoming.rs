//! The incoming half of the connection task: what the broker sends, and where it goes.
//!
//! Deliveries go to the subscriptions' streams or the direct stream, except redelivered
//! duplicates of messages handed over lately ([`DedupWindow`]); when a stream is full, the
//! delivery waits for room and no frame is read meanwhile, so that the broker feels the
//! backpressure. Confirmations (`Accepted`) settle the outgoing half's unconfirmed messages;
//! delivery failures and errors become [`Event`]s; `Subscribed` and refusals answer the
//! callers of `subscribe` ([`Subscriptions`]); pings are answered and pongs end flushes.
//!
//! It also keeps the receiving side's acknowledgement bookkeeping: the number of the
//! connection each delivery's tag belongs to, and in manual mode the tags handed out
//! ([`ManualTags`]). What it makes the client write (acknowledgements, pongs, subscriptions,
//! the messages released after resubscribing) goes through the [`Outgoing`] half it is
//! handed.

use super::outgoing::Outgoing;
use super::subscriptions::Subscriptions;
use super::{End, emit};
use crate::ack::{DedupWindow, ManualTags, dedup_key};
use crate::client::Shared;
use crate::connection::{Reader, frame_kind};
use crate::inbound;
use crate::subscription::{AckRef, Inbound, Lost, Route, deliver};
use crate::{ConnectOptions, Event, Message, SubscribeError};
use broadcast_protocol::{
    ClientFrame, CodecError, ErrorCode, ErrorFrame, FailureReason, Recipient, ServerFrame,
};
use futures::{FutureExt, Stream};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use tokio::sync::{mpsc, oneshot};

/// One item read from the connection: `None` when the broker closed it, an outer error when
/// reading failed, an inner one for a malformed frame.
pub(super) type ReadItem = Option<Result<Result<inbound::Incoming, CodecError>, CodecError>>;

/// A delivery waiting for room in a full stream.
type PendingDelivery = Pin<Box<dyn Future<Output = Result<(), (Lost, Inbound)>> + Send>>;

/// What [`Incoming::poll_read`] found.
pub(super) enum Read {
    /// The delivery that waited for room was handed over, or could not be.
    Delivered(Result<(), (Lost, Inbound)>),
    /// The next item from the connection.
    Item(ReadItem),
}

/// What the broker sends, and where it goes.
pub(super) struct Incoming {
    shared: Arc<Shared>,
    /// Whether the application acknowledges deliveries itself.
    manual_ack: bool,
    /// The direct stream: deliveries through no channel.
    direct: mpsc::Sender<Inbound>,
    subscriptions: Subscriptions,
    /// A delivery waiting for room in a full stream; no frame is read meanwhile.
    pending: Option<PendingDelivery>,
    /// The duplicate-window key of the pending delivery, to remember once handed over.
    pending_key: Option<Vec<u8>>,
    /// In manual mode, the tags handed to the application on the current connection.
    manual_tags: ManualTags,
    /// The messages handed to the application lately, to drop redelivered duplicates.
    dedup: DedupWindow,
    /// The duplicate-window key of the delivery being handled (a buffer kept for reuse).
    dedup_key: Vec<u8>,
    /// The acknowledgements taken from the shared queue (a buffer kept for reuse).
    ack_refs: Vec<AckRef>,
    /// Number of the current connection: a tag is acknowledged only on its own connection.
    epoch: u64,
}

impl Incoming {
    pub(super) fn new(
        options: &ConnectOptions,
        shared: Arc<Shared>,
        direct: mpsc::Sender<Inbound>,
    ) -> Self {
        Self {
            shared,
            manual_ack: options.manual_ack,
            direct,
            subscriptions: Subscriptions::default(),
            pending: None,
            pending_key: None,
            manual_tags: ManualTags::default(),
            dedup: DedupWindow::new(options.dedup_window),
            dedup_key: Vec::new(),
            ack_refs: Vec::new(),
            epoch: 0,
        }
    }

    /// Takes up a new connection: the tags of deliveries from now on belong to it.
    pub(super) fn connected(&mut self) {
        self.epoch += 1;
    }

    /// Subscribes again to every channel with a live stream, on a new connection.
    pub(super) fn resubscribe(&mut self, out: &mut Outgoing) {
        for frame in self.subscriptions.resubscribe() {
            out.push_frame(&frame);
        }
    }

    /// Whether resubscriptions after a reconnection wait for their answer.
    pub(super) fn is_resubscribing(&self) -> bool {
        self.subscriptions.is_resubscribing()
    }

    /// Forgets what was only valid on the lost connection.
    pub(super) fn disconnected(&mut self) {
        self.subscriptions.disconnected();
        self.manual_tags.clear();
    }

    /// Stops for good: callers of `subscribe` still waiting are released.
    pub(super) fn close(&mut self) {
        self.subscriptions.close();
    }

    /// A new subscription from a handle.
    pub(super) fn subscribe(
        &mut self,
        channel: String,
        id: u64,
        tx: mpsc::Sender<Inbound>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
        out: &mut Outgoing,
    ) {
        if let Some(frame) = self.subscriptions.subscribe(channel, id, tx, reply) {
            out.push_frame(&frame);
        }
    }

    /// A subscription was dropped; true when it was the channel's last one, and so the
    /// broker is to be told.
    pub(super) fn unsubscribe(&mut self, channel: &str, id: u64) -> bool {
        self.subscriptions.unsubscribe(channel, id)
    }

    /// Queues the acknowledgements of the deliveries the application took from its streams,
    /// those of the current connection only.
    pub(super) fn take_acks(&mut self, out: &mut Outgoing) {
        let mut refs = std::mem::take(&mut self.ack_refs);
        self.shared.acks.take_into(&mut refs);
        for ack in refs.drain(..) {
            if ack.epoch == self.epoch {
                out.queue_ack(ack.tag);
            }
        }
        self.ack_refs = refs;
    }

    /// Drops the acknowledgements the application queued while no connection is up: tags of
    /// a lost connection mean nothing to the next one.
    pub(super) fn drop_acks(&mut self) {
        self.shared.acks.take_into(&mut self.ack_refs);
        self.ack_refs.clear();
    }

    /// [`Client::ack`](crate::Client::ack): acknowledges `tag` if it was handed out on the
    /// current connection.
    pub(super) fn manual_ack(&mut self, tag: u64, out: &mut Outgoing) {
        if self.manual_tags.acknowledge(tag) {
            out.queue_ack(tag);
        }
    }

    /// Whether a delivery waits for room in a full stream (and so reading is paused).
    pub(super) fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits for the delivery waiting for room, if any, else for the next item read.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>, reader: &mut Reader) -> Poll<Read> {
        if let Some(fut) = self.pending.as_mut() {
            let res = ready!(fut.as_mut().poll(cx));
            self.pending = None;
            return Poll::Ready(Read::Delivered(res));
        }
        Pin::new(reader).poll_next(cx).map(Read::Item)
    }

    /// The delivery that waited for room was handed over, or could not be.
    pub(super) fn delivered(&mut self, res: Result<(), (Lost, Inbound)>) {
        let key = self.pending_key.take();
        let keyed = key.is_some();
        if let Some(key) = key {
            self.dedup_key = key;
        }
        self.on_delivered(res, keyed);
    }

    /// Handles one item read from the connection; `Some` when the connection ends.
    pub(super) fn on_read(&mut self, item: ReadItem, out: &mut Outgoing) -> Option<End> {
        match item {
            None => Some(End::Lost("the broker closed the connection".into())),
            Some(Err(e)) => Some(End::Lost(format!("read failed: {e}"))),
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "skipping a malformed frame");
                None
            }
            Some(Ok(Ok(inbound::Incoming::Message(msg)))) => {
                tracing::trace!(frame = "Deliver", "received");
                self.on_delivery(msg, out);
                None
            }
            Some(Ok(Ok(inbound::Incoming::Frame(f)))) => self.on_frame(f, out),
        }
    }

    /// Handles a frame other than a delivery; `Some` when the connection ends.
    pub(super) fn on_frame(&mut self, frame: ServerFrame, out: &mut Outgoing) -> Option<End> {
        tracing::trace!(frame = frame_kind(&frame), "received");
        match frame {
            ServerFrame::Deliver(delivery) => self.on_delivery(delivery.into(), out),
            ServerFrame::DeliveryFailed(f) => {
                self.emit(Event::DeliveryFailed {
                    id: f.id,
                    recipient: f.recipient,
                    reason: f.reason,
                    detail: f.detail,
                });
                if let Some(tag) = f.ack_tag {
                    out.queue_ack(tag);
                }
            }
            ServerFrame::Accepted { id } => {
                let confirmed = out.confirm(&id);
                self.emit(Event::Accepted { id });
                if let Some(confirm) = confirmed.and_then(|msg| msg.confirm) {
                    let _ = confirm.send(Ok(()));
                }
            }
            ServerFrame::Subscribed { channel } => {
                if self.subscriptions.subscribed(&channel) {
                    out.release_held();
                }
            }
            ServerFrame::Unsubscribed { channel } => tracing::debug!(%channel, "unsubscribed"),
            ServerFrame::Error(e) => return self.on_error(e, out),
            ServerFrame::Ping { nonce } => out.push_frame(&ClientFrame::Pong { nonce }),
            ServerFrame::Pong { nonce } => out.pong(nonce),
            ServerFrame::Bye { reason } => {
                return Some(End::Lost(format!("the broker said goodbye: {reason}")));
            }
            ServerFrame::Welcome(_) => tracing::warn!("ignoring a second Welcome"),
        }
        None
    }

    fn on_error(&mut self, e: ErrorFrame, out: &mut Outgoing) -> Option<End> {
        let ErrorFrame { code, message, id } = e;
        self.emit(Event::ServerError {
            code,
            message: message.clone(),
            id: id.clone(),
        });
        if code == ErrorCode::Replaced {
            return Some(End::Replaced(format!(
                "another connection took the name: {message}"
            )));
        }
        if self.subscriptions.refused_by(code, id.as_deref()) {
            if self.subscriptions.refuse_oldest(message) {
                out.release_held();
            }
        } else {
            tracing::debug!(?code, %message, ?id, "error from the broker");
        }
        None
    }

    fn on_delivery(&mut self, msg: Message, out: &mut Outgoing) {
        // Only messages that may come again are worth remembering (or looking up).
        let remember = msg.persistent || msg.ack_tag.is_some();
        let keyed = self.dedup.is_enabled() && (remember || msg.redelivered);
        if keyed {
            dedup_key(&mut self.dedup_key, &msg.sender, &msg.id);
        }
        if keyed && msg.redelivered && self.dedup.contains_key(&self.dedup_key) {
            tracing::debug!(id = %msg.id, sender = %msg.sender, "dropping a redelivered duplicate");
            if let Some(tag) = msg.ack_tag {
                out.queue_ack(tag);
            }
            return;
        }
        let key = keyed && remember;
        let ack = match msg.ack_tag {
            Some(tag) if self.manual_ack => {
                self.manual_tags.handed(tag);
                None
            }
            Some(tag) => Some(AckRef {
                epoch: self.epoch,
                tag,
            }),
            None => None,
        };
        let taken = self.shared.direct_taken.load(Ordering::Acquire);
        let inbound = Inbound { msg, ack };
        // The usual case, one stream with room, is handled without boxing a future.
        let registry = self.subscriptions.registry();
        let inbound = match registry.route(inbound.msg.channel.as_deref()) {
            Route::One(tx) => match tx.try_send(inbound) {
                Ok(()) => return self.on_delivered(Ok(()), key),
                Err(e) => e.into_inner(),
            },
            Route::Direct if taken => match self.direct.try_send(inbound) {
                Ok(()) => return self.on_delivered(Ok(()), key),
                Err(e) => e.into_inner(),
            },
            Route::Direct | Route::Many => inbound,
        };
        let targets = registry.targets(inbound.msg.channel.as_deref());
        let mut fut: PendingDelivery =
            Box::pin(deliver(targets, self.direct.clone(), taken, inbound));
        match (&mut fut).now_or_never() {
            Some(res) => self.on_delivered(res, key),
            None => {
                self.pending = Some(fut);
                self.pending_key = key.then(|| std::mem::take(&mut self.dedup_key));
            }
        }
    }

    /// Remembers a message handed to the application (when `key`, the one in `dedup_key`), or
    /// reports one no stream could take.
    fn on_delivered(&mut self, res: Result<(), (Lost, Inbound)>, key: bool) {
        let (lost, msg) = match res {
            Ok(()) => {
                if key {
                    self.dedup.insert_key(&self.dedup_key);
                }
                return;
            }
            Err((lost, inbound)) => (lost, inbound.msg),
        };
        let through = msg
            .channel
            .as_deref()
            .map(|c| format!(" through channel {c:?}"))
            .unwrap_or_default();
        let (reason, detail) = match lost {
            Lost::DirectGone => (
                FailureReason::NotSubscribed,
                format!(
                    "message from {:?}{through} dropped by the client: no live subscription \
                     or direct message stream takes it",
                    msg.sender
                ),
            ),
            Lost::DirectFull => (
                FailureReason::SlowConsumer,
                format!(
                    "message from {:?}{through} dropped by the client: the direct message \
                     stream was never taken and its buffer is full",
                    msg.sender
                ),
            ),
        };
        tracing::warn!(id = %msg.id, "{detail}");
        self.emit(Event::DeliveryFailed {
            id: msg.id,
            recipient: Recipient::Client(self.shared.name()),
            reason,
            detail,
        });
    }

    fn emit(&self, event: Event) {
        emit(&self.shared.events, event);
    }
}
