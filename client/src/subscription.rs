//! Receiving: [`Subscription`] and [`DirectMessages`] streams, and the routing of each
//! delivery to them.

use crate::Message;
use crate::command::Control;
use foldhash::fast::RandomState;
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;

/// An acknowledgement to send when the application takes a message from its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckRef {
    /// The connection the delivery arrived on: a tag means something only there.
    pub(crate) epoch: u64,
    /// The broker's tag.
    pub(crate) tag: u64,
}

/// A delivery on its way to the application.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    pub(crate) msg: Message,
    /// Sent to the connection task when the message is taken (automatic acknowledgement).
    pub(crate) ack: Option<AckRef>,
}

/// The acknowledgements of the deliveries the application took from its streams, waiting for
/// the connection task.
///
/// Whoever queues into an empty queue sends [`Control::Acks`]; the task takes the whole queue
/// when that arrives. So the task hears of every acknowledgement at once, as before, but is
/// woken once per batch instead of once per message.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    refs: Mutex<Vec<AckRef>>,
}

impl AckQueue {
    fn lock(&self) -> MutexGuard<'_, Vec<AckRef>> {
        // A vector of plain values cannot be left half-written by a panic.
        self.refs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an acknowledgement; true when the queue was empty, and so the task must be told.
    fn push(&self, ack: AckRef) -> bool {
        let mut refs = self.lock();
        refs.push(ack);
        refs.len() == 1
    }

    /// Moves every queued acknowledgement to the end of `out`, in the order queued.
    pub(crate) fn take_into(&self, out: &mut Vec<AckRef>) {
        let mut refs = self.lock();
        if out.is_empty() {
            std::mem::swap(&mut *refs, out);
        } else {
            out.append(&mut refs);
        }
    }
}

/// What a stream needs to acknowledge the deliveries taken from it.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) queue: Arc<AckQueue>,
}

impl Acker {
    /// Unwraps a delivery the application takes, acknowledging it if it asks to be.
    fn take(&self, item: Option<Inbound>) -> Poll<Option<Message>> {
        Poll::Ready(item.map(|inbound| {
            if let Some(ack) = inbound.ack {
                if self.queue.push(ack) {
                    // An error means the task has stopped, and with it the connection the tag
                    // was for.
                    let _ = self.control.send(Control::Acks);
                }
            }
            inbound.msg
        }))
    }
}

/// The messages of one channel, from [`Client::subscribe`](crate::Client::subscribe).
///
/// Several subscriptions to the same channel each get every message of the channel. Dropping
/// the last one unsubscribes from the channel at the broker. The stream ends when the client
/// stops (closed, replaced, out of reconnect attempts) or when the broker refuses the channel
/// again after a reconnection.
pub struct Subscription {
    channel: String,
    id: u64,
    rx: mpsc::Receiver<Inbound>,
    acker: Acker,
}

impl Subscription {
    pub(crate) fn new(channel: String, id: u64, rx: mpsc::Receiver<Inbound>, acker: Acker) -> Self {
        Self {
            channel,
            id,
            rx,
            acker,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let item = ready!(self.rx.poll_recv(cx));
        self.acker.take(item)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The connection task sends `Unsubscribe` if this was the channel's last subscription.
        // An error means the task has stopped, and with it the connection.
        let _ = self.acker.control.send(Control::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// Messages with no channel, and channel messages that no live [`Subscription`] takes, from
/// [`Client::direct_messages`](crate::Client::direct_messages).
///
/// The stream ends when the client stops.
pub struct DirectMessages {
    rx: mpsc::Receiver<Inbound>,
    /// Carries acknowledgements; its control sender also keeps the connection task running
    /// while this stream is alive, even once every [`Client`](crate::Client) handle is gone.
    acker: Acker,
}

impl DirectMessages {
    pub(crate) fn new(rx: mpsc::Receiver<Inbound>, acker: Acker) -> Self {
        Self { rx, acker }
    }
}

impl Stream for DirectMessages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let item = ready!(self.rx.poll_recv(cx));
        self.acker.take(item)
    }
}

impl std::fmt::Debug for DirectMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectMessages").finish_non_exhaustive()
    }
}

/// The live subscriptions, by channel, as the connection task sees them.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    channels: HashMap<String, Vec<(u64, mpsc::Sender<Inbound>)>, RandomState>,
}

impl Registry {
    /// Adds subscription `id` to `channel`.
    pub(crate) fn add(&mut self, channel: String, id: u64, tx: mpsc::Sender<Inbound>) {
        self.channels.entry(channel).or_default().push((id, tx));
    }

    /// Removes subscription `id` from `channel`; true when that was the channel's last one, so
    /// the broker should be told to unsubscribe.
    pub(crate) fn remove(&mut self, channel: &str, id: u64) -> bool {
        let Some(subs) = self.channels.get_mut(channel) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|(sub, _)| *sub != id);
        if subs.len() == before || !subs.is_empty() {
            return false;
        }
        self.channels.remove(channel);
        true
    }

    /// Forgets every subscription of `channel` (their streams end).
    pub(crate) fn remove_channel(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// Forgets subscriptions whose stream was dropped, and channels left without any.
    pub(crate) fn prune(&mut self) {
        self.channels.retain(|_, subs| {
            subs.retain(|(_, tx)| !tx.is_closed());
            !subs.is_empty()
        });
    }

    /// The channels with at least one subscription.
    pub(crate) fn channels(&self) -> impl Iterator<Item = &String> {
        self.channels.keys()
    }

    /// Where a delivery through `channel` goes, without copying anything: see [`Route`].
    pub(crate) fn route(&self, channel: Option<&str>) -> Route<'_> {
        let Some(subs) = channel.and_then(|c| self.channels.get(c)) else {
            return Route::Direct;
        };
        let mut live = subs.iter().filter(|(_, tx)| !tx.is_closed());
        match (live.next(), live.next()) {
            (None, _) => Route::Direct,
            (Some((_, tx)), None) => Route::One(tx),
            (Some(_), Some(_)) => Route::Many,
        }
    }

    /// Where a delivery through `channel` goes: every live subscription of the channel. Empty
    /// for direct messages and for channels without a live subscription: those go to the
    /// direct stream.
    pub(crate) fn targets(&self, channel: Option<&str>) -> Vec<mpsc::Sender<Inbound>> {
        let Some(subs) = channel.and_then(|c| self.channels.get(c)) else {
            return Vec::new();
        };
        subs.iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(_, tx)| tx.clone())
            .collect()
    }
}

/// Where a delivery goes, as [`Registry::route`] sees it.
#[derive(Debug)]
pub(crate) enum Route<'a> {
    /// No live subscription: the direct stream.
    Direct,
    /// Exactly one live subscription.
    One(&'a mpsc::Sender<Inbound>),
    /// Several live subscriptions: see [`Registry::targets`].
    Many,
}

/// Why a delivery reached no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The direct stream was taken and dropped.
    DirectGone,
    /// The direct stream was never taken and its buffer is full.
    DirectFull,
}

/// Hands `msg` to each of `targets`, waiting for room in each; when none of them takes it (no
/// target, or all dropped), to the direct stream. The direct stream is waited on only once it
/// has been taken: while nobody can read it, waiting would stall the connection for good.
pub(crate) async fn deliver(
    targets: Vec<mpsc::Sender<Inbound>>,
    direct: mpsc::Sender<Inbound>,
    direct_taken: bool,
    msg: Inbound,
) -> Result<(), (Lost, Inbound)> {
    let mut delivered = false;
    for tx in targets {
        delivered |= tx.send(msg.clone()).await.is_ok();
    }
    if delivered {
        return Ok(());
    }
    if direct_taken {
        return direct.send(msg).await.map_err(|e| (Lost::DirectGone, e.0));
    }
    direct.try_send(msg).map_err(|e| match e {
        mpsc::error::TrySendError::Full(m) => (Lost::DirectFull, m),
        mpsc::error::TrySendError::Closed(m) => (Lost::DirectGone, m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::FutureExt;

    fn msg(channel: Option<&str>, id: &str) -> Inbound {
        Inbound {
            msg: Message {
                id: id.into(),
                sender: "alice".into(),
                channel: channel.map(Into::into),
                name: None,
                data: Bytes::from_static(b"x"),
                persistent: true,
                redelivered: false,
                ack_tag: None,
            },
            ack: None,
        }
    }

    #[test]
    fn channel_messages_go_to_every_live_subscription_of_their_channel() {
        let mut reg = Registry::default();
        let (a_tx, _a_rx) = mpsc::channel(4);
        let (b_tx, _b_rx) = mpsc::channel(4);
        let (c_tx, c_rx) = mpsc::channel(4);
        reg.add("news".into(), 1, a_tx);
        reg.add("news".into(), 2, b_tx);
        reg.add("news".into(), 3, c_tx);
        reg.add("sport".into(), 4, mpsc::channel(4).0);
        drop(c_rx);
        assert_eq!(reg.targets(Some("news")).len(), 2);
        assert!(reg.targets(Some("weather")).is_empty());
        assert!(reg.targets(None).is_empty());
    }

    #[test]
    fn only_the_last_removal_unsubscribes() {
        let mut reg = Registry::default();
        reg.add("news".into(), 1, mpsc::channel(1).0);
        reg.add("news".into(), 2, mpsc::channel(1).0);
        assert!(!reg.remove("news", 1));
        assert!(!reg.remove("news", 1), "unknown ids change nothing");
        assert!(reg.remove("news", 2));
        assert!(!reg.remove("news", 2));
        assert_eq!(reg.channels().count(), 0);
    }

    #[test]
    fn pruning_forgets_dropped_streams() {
        let mut reg = Registry::default();
        let (live, _live_rx) = mpsc::channel(1);
        reg.add("news".into(), 1, live);
        reg.add("gone".into(), 2, mpsc::channel(1).0);
        reg.prune();
        assert_eq!(reg.channels().collect::<Vec<_>>(), ["news"]);
    }

    #[tokio::test]
    async fn deliveries_reach_subscriptions_or_else_the_direct_stream() {
        let (sub_tx, mut sub_rx) = mpsc::channel(4);
        let (direct_tx, mut direct_rx) = mpsc::channel(4);

        deliver(
            vec![sub_tx.clone()],
            direct_tx.clone(),
            true,
            msg(Some("news"), "1"),
        )
        .await
        .unwrap();
        assert_eq!(sub_rx.recv().await.unwrap().msg.id, "1");
        assert!(direct_rx.try_recv().is_err());

        deliver(vec![], direct_tx.clone(), true, msg(None, "2"))
            .await
            .unwrap();
        assert_eq!(direct_rx.recv().await.unwrap().msg.id, "2");

        // The subscription's stream was dropped before the connection task heard of it.
        drop(sub_rx);
        deliver(
            vec![sub_tx],
            direct_tx.clone(),
            true,
            msg(Some("news"), "3"),
        )
        .await
        .unwrap();
        assert_eq!(direct_rx.recv().await.unwrap().msg.id, "3");

        drop(direct_rx);
        let lost = deliver(vec![], direct_tx, true, msg(None, "4")).await;
        assert_eq!(lost.unwrap_err().0, Lost::DirectGone);
    }

    #[tokio::test]
    async fn a_full_subscription_makes_delivery_wait_instead_of_dropping() {
        let (sub_tx, mut sub_rx) = mpsc::channel(1);
        let (direct_tx, _direct_rx) = mpsc::channel(1);
        sub_tx.try_send(msg(Some("news"), "first")).unwrap();

        let mut pending = Box::pin(deliver(
            vec![sub_tx],
            direct_tx,
            true,
            msg(Some("news"), "second"),
        ));
        assert!(
            (&mut pending).now_or_never().is_none(),
            "must wait for room"
        );
        assert_eq!(sub_rx.recv().await.unwrap().msg.id, "first");
        pending.await.unwrap();
        assert_eq!(sub_rx.recv().await.unwrap().msg.id, "second");
    }

    #[tokio::test]
    async fn an_untaken_full_direct_stream_reports_instead_of_stalling() {
        let (direct_tx, _direct_rx) = mpsc::channel(1);
        deliver(vec![], direct_tx.clone(), false, msg(None, "1"))
            .await
            .unwrap();
        let lost = deliver(vec![], direct_tx, false, msg(None, "2")).now_or_never();
        let (why, m) = lost.expect("must not wait").unwrap_err();
        assert_eq!(why, Lost::DirectFull);
        assert_eq!(m.msg.id, "2");
    }
}
