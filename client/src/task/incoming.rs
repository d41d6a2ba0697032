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
use crate::connection::frame_kind;
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

/// One frame read from the connection: an outer error when reading failed, an inner one for a
/// malformed frame.
pub(super) type ReadResult = Result<Result<inbound::Incoming, CodecError>, CodecError>;

/// The next item read from the connection: `None` when the broker closed it.
pub(super) type ReadItem = Option<ReadResult>;

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
    /// A `Reauth` sent and not yet answered: its token and its caller.
    reauth: std::collections::VecDeque<(String, ReauthReply)>,
}

type ReauthReply = oneshot::Sender<Result<Option<u64>, crate::ReauthError>>;

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
            reauth: std::collections::VecDeque::new(),
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
        // Its caller learns that the connection ended before the answer.
        self.reauth.clear();
    }

    /// A `Reauth` was written; answered by `Reauthed` or an `Unauthorized` error.
    pub(super) fn reauth_sent(&mut self, token: String, reply: ReauthReply) {
        // The broker answers each in turn.
        self.reauth.push_back((token, reply));
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

    /// Waits for the delivery waiting for room, if any, else for the next item from
    /// `reader` (the connection's [`Reader`](crate::connection::Reader)).
    pub(super) fn poll_read<R>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> Poll<Read>
    where
        R: Stream<Item = ReadResult> + Unpin,
    {
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
            ServerFrame::Reauthed { expires_ms } => {
                if let Some((token, reply)) = self.reauth.pop_front() {
                    self.shared.reauthed(token, expires_ms);
                    let _ = reply.send(Ok(expires_ms));
                }
            }
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
        if code == ErrorCode::Unauthorized
            && let Some((_, reply)) = self.reauth.pop_front()
        {
            let _ = reply.send(Err(crate::ReauthError::Refused {
                code,
                message: message.clone(),
            }));
        }
        if code == ErrorCode::Forbidden
            && let Some(id) = id.as_deref()
            && let Some(confirm) = out.confirm(id).and_then(|msg| msg.confirm)
        {
            // A persistent message refused whole: it will never be accepted.
            let _ = confirm.send(Err(crate::SendError::Forbidden(message)));
            return None;
        }
        if code == ErrorCode::Replaced {
            return Some(End::Replaced(format!(
                "another connection took the name: {message}"
            )));
        }
        if self.subscriptions.refused_by(code, id.as_deref()) {
            if self.subscriptions.refuse_oldest(code, message) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::outgoing::tests::{publish_frame, written};
    use broadcast_protocol::{Delivery, DeliveryFailed, Target};
    use bytes::Bytes;
    use tokio::sync::broadcast;
    use tokio::sync::oneshot::error::TryRecvError;

    /// An incoming half and an outgoing half on a connection, with the application's ends.
    struct Harness {
        incoming: Incoming,
        out: Outgoing,
        events: broadcast::Receiver<Event>,
        /// The direct stream, taken by the application.
        direct: mpsc::Receiver<Inbound>,
    }

    fn harness(options: ConnectOptions) -> Harness {
        let (direct_tx, direct) = mpsc::channel(4);
        let shared = Arc::new(Shared::new(64, mpsc::channel(1).1, None));
        shared.direct_taken.store(true, Ordering::Release);
        let events = shared.events.subscribe();
        let mut out = Outgoing::new(shared.events.clone(), 16);
        out.connected(1 << 20);
        let mut incoming = Incoming::new(&options, shared, direct_tx);
        incoming.connected();
        Harness {
            incoming,
            out,
            events,
            direct,
        }
    }

    impl Harness {
        fn frame(&mut self, frame: ServerFrame) -> Option<End> {
            self.incoming.on_frame(frame, &mut self.out)
        }

        fn deliver(&mut self, d: Delivery) {
            let item = Some(Ok(Ok(inbound::Incoming::Message(d.into()))));
            assert!(self.incoming.on_read(item, &mut self.out).is_none());
        }

        /// The events raised so far.
        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.events.try_recv().ok()).collect()
        }
    }

    fn delivery(id: &str, channel: Option<&str>, ack_tag: Option<u64>) -> Delivery {
        Delivery {
            id: id.into(),
            sender: "alice".into(),
            channel: channel.map(Into::into),
            name: None,
            data: Bytes::from_static(b"x"),
            persistent: true,
            redelivered: false,
            ack_tag,
        }
    }

    fn acks(frames: &[ClientFrame]) -> Vec<u64> {
        frames
            .iter()
            .flat_map(|f| match f {
                ClientFrame::Ack { tags } => tags.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn accepted_confirms_the_message_and_answers_its_sender() {
        let mut h = harness(ConnectOptions::new());
        let (confirm, mut outcome) = oneshot::channel();
        h.out
            .publish(publish_frame("m1", Target::All, 1), true, Some(confirm));
        h.out
            .publish(publish_frame("m2", Target::All, 1), true, None);
        assert!(h.frame(ServerFrame::Accepted { id: "m1".into() }).is_none());
        assert!(matches!(outcome.try_recv(), Ok(Ok(()))));
        assert_eq!(h.out.unconfirmed_len(), 1);
        assert!(matches!(&h.events()[..], [Event::Accepted { id }] if id == "m1"));

        // An unknown id is still reported; nothing else changes.
        h.frame(ServerFrame::Accepted { id: "zz".into() });
        assert_eq!(h.out.unconfirmed_len(), 1);
        assert!(matches!(&h.events()[..], [Event::Accepted { id }] if id == "zz"));
    }

    #[test]
    fn a_delivery_failure_is_raised_and_a_notice_kept_for_the_sender_acknowledged() {
        let mut h = harness(ConnectOptions::new());
        for (id, ack_tag) in [("m1", None), ("m2", Some(9))] {
            h.frame(ServerFrame::DeliveryFailed(DeliveryFailed {
                id: id.into(),
                recipient: Recipient::Client("bob".into()),
                reason: FailureReason::NotConnected,
                detail: "bob is away".into(),
                ack_tag,
            }));
        }
        let ids: Vec<String> = h
            .events()
            .into_iter()
            .map(|e| match e {
                Event::DeliveryFailed { id, reason, .. } => {
                    assert_eq!(reason, FailureReason::NotConnected);
                    id
                }
                other => panic!("unexpected event {other:?}"),
            })
            .collect();
        assert_eq!(ids, ["m1", "m2"]);
        h.out.push_acks();
        assert_eq!(acks(&written(&mut h.out)), [9]);
    }

    #[test]
    fn a_redelivered_duplicate_is_dropped_and_acknowledged_at_once() {
        let mut h = harness(ConnectOptions::new());
        h.deliver(delivery("m1", None, Some(1)));
        let first = h.direct.try_recv().unwrap();
        assert_eq!(first.msg.id, "m1");
        assert_eq!(first.ack.map(|a| a.tag), Some(1), "acknowledged once taken");

        let again = Delivery {
            redelivered: true,
            ..delivery("m1", None, Some(2))
        };
        h.deliver(again.clone());
        assert!(h.direct.try_recv().is_err(), "the duplicate is dropped");
        h.out.push_acks();
        assert_eq!(acks(&written(&mut h.out)), [2]);

        // Without a window, a redelivery is passed on, marked.
        let mut h = harness(ConnectOptions::new().dedup_window(0));
        h.deliver(delivery("m1", None, Some(1)));
        h.deliver(again);
        h.direct.try_recv().unwrap();
        assert!(h.direct.try_recv().unwrap().msg.redelivered);
    }

    #[test]
    fn a_full_stream_pauses_reading_until_it_has_room() {
        let mut h = harness(ConnectOptions::new());
        let (tx, mut news) = mpsc::channel(1);
        let (reply, _answer) = oneshot::channel();
        h.incoming
            .subscribe("news".into(), 1, tx, reply, &mut h.out);
        h.deliver(delivery("m1", Some("news"), None));
        assert!(!h.incoming.is_waiting());
        h.deliver(delivery("m2", Some("news"), None));
        assert!(h.incoming.is_waiting(), "m2 waits for room");

        // Nothing is read meanwhile: the reader is not even polled.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut reader = futures::stream::poll_fn(|_| -> Poll<Option<ReadResult>> {
            panic!("read while a delivery waits")
        });
        assert!(h.incoming.poll_read(&mut cx, &mut reader).is_pending());

        assert_eq!(news.try_recv().unwrap().msg.id, "m1");
        let Poll::Ready(Read::Delivered(res)) = h.incoming.poll_read(&mut cx, &mut reader) else {
            panic!("the waiting delivery goes through once there is room");
        };
        h.incoming.delivered(res);
        assert!(!h.incoming.is_waiting());
        assert_eq!(news.try_recv().unwrap().msg.id, "m2");

        let mut reader = futures::stream::iter([Err(CodecError::Decode("bad".into()))]);
        assert!(matches!(
            h.incoming.poll_read(&mut cx, &mut reader),
            Poll::Ready(Read::Item(Some(Err(_))))
        ));
    }

    #[test]
    fn a_delivery_no_stream_takes_is_reported() {
        let mut h = harness(ConnectOptions::new());
        h.events();
        let Harness { direct, .. } = &mut h;
        direct.close();
        while direct.try_recv().is_ok() {}
        h.deliver(delivery("m1", None, None));
        assert!(matches!(
            &h.events()[..],
            [Event::DeliveryFailed { id, reason: FailureReason::NotSubscribed, .. }] if id == "m1"
        ));
    }

    #[test]
    fn manual_acknowledgements_go_out_only_for_tags_of_the_current_connection() {
        let mut h = harness(ConnectOptions::new().manual_ack(true));
        h.deliver(delivery("m1", None, Some(1)));
        h.deliver(delivery("m2", None, Some(2)));
        assert!(
            h.direct.try_recv().unwrap().ack.is_none(),
            "the application acknowledges"
        );
        h.incoming.manual_ack(1, &mut h.out);
        h.incoming.manual_ack(1, &mut h.out);
        h.incoming.manual_ack(7, &mut h.out);
        h.out.push_acks();
        assert_eq!(acks(&written(&mut h.out)), [1]);

        h.incoming.disconnected();
        h.out.disconnected();
        h.incoming.connected();
        h.out.connected(1 << 20);
        h.incoming.manual_ack(2, &mut h.out);
        h.out.push_acks();
        assert!(acks(&written(&mut h.out)).is_empty());
    }

    #[test]
    fn automatic_acknowledgements_carry_their_connection() {
        let mut h = harness(ConnectOptions::new());
        h.deliver(delivery("m1", None, Some(1)));
        h.incoming.disconnected();
        h.incoming.connected();
        h.deliver(delivery("m2", None, Some(1)));
        let first = h.direct.try_recv().unwrap().ack.unwrap();
        let second = h.direct.try_recv().unwrap().ack.unwrap();
        assert_eq!(second.epoch, first.epoch + 1);
    }

    #[test]
    fn pings_are_answered_and_pongs_end_flushes() {
        let mut h = harness(ConnectOptions::new());
        h.frame(ServerFrame::Ping { nonce: 5 });
        assert_eq!(written(&mut h.out), [ClientFrame::Pong { nonce: 5 }]);
        let (reply, mut done) = oneshot::channel();
        h.out.flush(reply);
        let [ClientFrame::Ping { nonce }] = written(&mut h.out)[..] else {
            panic!("a flush pings");
        };
        assert_eq!(done.try_recv(), Err(TryRecvError::Empty));
        h.frame(ServerFrame::Pong { nonce });
        assert_eq!(done.try_recv(), Ok(()));
    }

    #[test]
    fn messages_wait_until_every_resubscription_is_answered() {
        let mut h = harness(ConnectOptions::new());
        let mut streams = Vec::new();
        for (id, channel) in [(1, "a"), (2, "b")] {
            let (tx, rx) = mpsc::channel(1);
            let (reply, _) = oneshot::channel();
            h.incoming
                .subscribe(channel.into(), id, tx, reply, &mut h.out);
            h.frame(ServerFrame::Subscribed {
                channel: channel.into(),
            });
            streams.push(rx);
        }
        written(&mut h.out);
        h.out
            .publish(publish_frame("m1", Target::All, 1), false, None);
        h.incoming.disconnected();
        h.out.disconnected();

        h.incoming.connected();
        h.out.connected(1 << 20);
        h.incoming.resubscribe(&mut h.out);
        assert!(h.incoming.is_resubscribing());
        assert_eq!(
            written(&mut h.out).len(),
            2,
            "two Subscribe frames, no message"
        );
        h.frame(ServerFrame::Subscribed {
            channel: "a".into(),
        });
        assert!(written(&mut h.out).is_empty());
        h.frame(ServerFrame::Error(ErrorFrame {
            code: ErrorCode::LimitReached,
            message: "too many".into(),
            id: None,
        }));
        assert!(!h.incoming.is_resubscribing(), "a refusal answers too");
        assert!(matches!(
            &written(&mut h.out)[..],
            [ClientFrame::Publish(p)] if p.id == "m1"
        ));
    }

    #[test]
    fn the_frames_that_end_a_connection_say_how() {
        let mut h = harness(ConnectOptions::new());
        let replaced = ServerFrame::Error(ErrorFrame {
            code: ErrorCode::Replaced,
            message: "newer".into(),
            id: None,
        });
        assert!(matches!(h.frame(replaced), Some(End::Replaced(_))));
        assert!(matches!(
            &h.events()[..],
            [Event::ServerError {
                code: ErrorCode::Replaced,
                ..
            }]
        ));
        let bye = ServerFrame::Bye {
            reason: "shutting down".into(),
        };
        assert!(matches!(h.frame(bye), Some(End::Lost(_))));
        assert!(matches!(
            h.incoming.on_read(None, &mut h.out),
            Some(End::Lost(_))
        ));
        let failed = Some(Err(CodecError::Io(std::io::ErrorKind::BrokenPipe.into())));
        assert!(matches!(
            h.incoming.on_read(failed, &mut h.out),
            Some(End::Lost(_))
        ));
        let malformed = Some(Ok(Err(CodecError::Decode("bad".into()))));
        assert!(
            h.incoming.on_read(malformed, &mut h.out).is_none(),
            "skipped"
        );
        let other = ServerFrame::Error(ErrorFrame {
            code: ErrorCode::InvalidTarget,
            message: "no such client".into(),
            id: Some("m1".into()),
        });
        assert!(h.frame(other).is_none());
    }
}
