//! The subscriptions of the connection task: the streams of each channel ([`Registry`]), the
//! callers of `subscribe` waiting for the broker's answer, the `Subscribe` frames of this
//! connection not answered yet, and whether the resubscriptions after a reconnection are
//! still going on (commands wait meanwhile).
//!
//! Pure bookkeeping: it returns the frames to write and says when the resubscriptions are
//! done, and the task acts on that.

use crate::SubscribeError;
use crate::subscription::{Inbound, Registry};
use broadcast_protocol::{ClientFrame, ErrorCode};
use std::collections::{HashMap, VecDeque};
use tokio::sync::{mpsc, oneshot};

/// Where a caller of `subscribe` waits for the broker's answer.
type Reply = oneshot::Sender<Result<(), SubscribeError>>;

/// The subscriptions and the state of their `Subscribe` frames.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    registry: Registry,
    /// Callers of `subscribe` waiting for the broker's answer, by channel.
    waiters: HashMap<String, Vec<Reply>>,
    /// Channels of the `Subscribe` frames sent on this connection and not answered yet, in
    /// send order: the broker answers them in that order.
    outstanding: VecDeque<String>,
    /// True after a reconnection until every subscription is active again.
    resubscribing: bool,
}

impl Subscriptions {
    /// The streams, to route deliveries to.
    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers the stream `tx` of a new subscription to `channel`, with the caller's
    /// `reply`; returns the `Subscribe` frame to send, or `None` when the caller already gave
    /// up and dropped its subscription.
    pub(super) fn subscribe(
        &mut self,
        channel: String,
        id: u64,
        tx: mpsc::Sender<Inbound>,
        reply: Reply,
    ) -> Option<ClientFrame> {
        if tx.is_closed() {
            return None;
        }
        self.registry.add(channel.clone(), id, tx);
        self.waiters.entry(channel.clone()).or_default().push(reply);
        self.outstanding.push_back(channel.clone());
        Some(ClientFrame::Subscribe { channel })
    }

    /// Forgets the stream `id` of `channel`; true when it was the channel's last one, and so
    /// the broker is to be told.
    pub(super) fn unsubscribe(&mut self, channel: &str, id: u64) -> bool {
        self.registry.remove(channel, id)
    }

    /// On a new connection: forgets the streams dropped meanwhile and returns a `Subscribe`
    /// frame for each channel that still has one; until all are answered, the task is
    /// [resubscribing](Self::is_resubscribing).
    pub(super) fn resubscribe(&mut self) -> Vec<ClientFrame> {
        self.registry.prune();
        let channels: Vec<String> = self.registry.channels().cloned().collect();
        let mut frames = Vec::with_capacity(channels.len());
        for channel in channels {
            frames.push(ClientFrame::Subscribe {
                channel: channel.clone(),
            });
            self.outstanding.push_back(channel);
        }
        self.resubscribing = !self.outstanding.is_empty();
        frames
    }

    /// Whether resubscriptions after a reconnection wait for their answer.
    pub(super) fn is_resubscribing(&self) -> bool {
        self.resubscribing
    }

    /// The broker answered the oldest `Subscribe` of `channel`; once no other one is
    /// outstanding, its callers are answered. True when that ends the resubscriptions.
    pub(super) fn subscribed(&mut self, channel: &str) -> bool {
        if let Some(pos) = self.outstanding.iter().position(|c| c == channel) {
            self.outstanding.remove(pos);
        }
        if !self.outstanding.iter().any(|c| c == channel) {
            for reply in self.waiters.remove(channel).unwrap_or_default() {
                let _ = reply.send(Ok(()));
            }
        }
        tracing::debug!(%channel, "subscribed");
        self.resume()
    }

    /// Whether an error from the broker refuses the oldest outstanding subscription.
    ///
    /// The broker answers frames in order and refuses a subscription with an error that names
    /// no message, or names the channel: such an error answers the oldest unanswered
    /// `Subscribe`.
    pub(super) fn refused_by(&self, code: ErrorCode, id: Option<&str>) -> bool {
        matches!(
            code,
            ErrorCode::InvalidName
                | ErrorCode::LimitReached
                | ErrorCode::Internal
                | ErrorCode::Forbidden
        ) && self
            .outstanding
            .front()
            .is_some_and(|channel| id.is_none_or(|id| id == channel.as_str()))
    }

    /// The broker refused the oldest outstanding subscription: its callers get the broker's
    /// `message` and its streams end. True when that ends the resubscriptions.
    pub(super) fn refuse_oldest(&mut self, code: ErrorCode, message: String) -> bool {
        let Some(channel) = self.outstanding.pop_front() else {
            return false;
        };
        tracing::warn!(%channel, %message, "subscription refused");
        for reply in self.waiters.remove(&channel).unwrap_or_default() {
            let _ = reply.send(Err(SubscribeError::Refused {
                code,
                message: message.clone(),
            }));
        }
        // The broker will not send anything through this channel: end its streams.
        self.registry.remove_channel(&channel);
        self.resume()
    }

    /// The connection is lost: no frame of it will be answered.
    pub(super) fn disconnected(&mut self) {
        self.outstanding.clear();
        self.resubscribing = false;
    }

    /// Stops for good: the callers still waiting are released (their `subscribe` fails).
    pub(super) fn close(&mut self) {
        self.waiters.clear();
    }

    /// Once every resubscription is answered, lets messages flow again: true then.
    fn resume(&mut self) -> bool {
        if self.resubscribing && self.outstanding.is_empty() {
            self.resubscribing = false;
            tracing::debug!("resubscribed");
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    type Answer = oneshot::Receiver<Result<(), SubscribeError>>;

    /// Subscribes a new stream to `channel`; returns the stream, the caller's answer and the
    /// frame to send.
    fn subscribe(
        subs: &mut Subscriptions,
        channel: &str,
        id: u64,
    ) -> (mpsc::Receiver<Inbound>, Answer, Option<ClientFrame>) {
        let (tx, rx) = mpsc::channel(1);
        let (reply, answer) = oneshot::channel();
        let frame = subs.subscribe(channel.into(), id, tx, reply);
        (rx, answer, frame)
    }

    fn subscribe_frame(channel: &str) -> ClientFrame {
        ClientFrame::Subscribe {
            channel: channel.into(),
        }
    }

    #[test]
    fn a_subscriber_is_answered_once_the_last_subscribe_of_its_channel_is() {
        let mut subs = Subscriptions::default();
        let (_a, mut first, frame) = subscribe(&mut subs, "news", 1);
        assert_eq!(frame, Some(subscribe_frame("news")));
        let (_b, mut second, _) = subscribe(&mut subs, "news", 2);
        assert!(
            !subs.subscribed("news"),
            "not resubscribing: nothing to resume"
        );
        assert_eq!(first.try_recv(), Err(TryRecvError::Empty));
        subs.subscribed("news");
        assert_eq!(first.try_recv(), Ok(Ok(())));
        assert_eq!(second.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_subscription_dropped_before_the_task_heard_of_it_is_not_sent() {
        let mut subs = Subscriptions::default();
        let (_news, _answer, _) = subscribe(&mut subs, "news", 1);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (reply, _answer) = oneshot::channel();
        assert_eq!(subs.subscribe("sport".into(), 2, tx, reply), None);
        assert_eq!(subs.registry().channels().collect::<Vec<_>>(), ["news"]);
        assert!(
            !subs.refused_by(ErrorCode::InvalidName, Some("sport")),
            "no Subscribe of sport is outstanding"
        );
    }

    #[test]
    fn errors_refuse_the_oldest_subscription_when_they_can_be_its_answer() {
        let mut subs = Subscriptions::default();
        assert!(
            !subs.refused_by(ErrorCode::InvalidName, None),
            "nothing is outstanding"
        );
        let (mut a, mut a_answer, _) = subscribe(&mut subs, "a", 1);
        let (_b, mut b_answer, _) = subscribe(&mut subs, "b", 2);
        assert!(subs.refused_by(ErrorCode::InvalidName, None));
        assert!(subs.refused_by(ErrorCode::LimitReached, Some("a")));
        assert!(subs.refused_by(ErrorCode::Internal, None));
        assert!(
            !subs.refused_by(ErrorCode::InvalidName, Some("m-7")),
            "about a message"
        );
        assert!(!subs.refused_by(ErrorCode::InvalidTarget, None));

        subs.refuse_oldest(ErrorCode::LimitReached, "too many".into());
        assert_eq!(
            a_answer.try_recv(),
            Ok(Err(SubscribeError::Refused {
                code: ErrorCode::LimitReached,
                message: "too many".into()
            }))
        );
        assert!(
            matches!(a.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
            "the refused channel's streams end"
        );
        assert_eq!(b_answer.try_recv(), Err(TryRecvError::Empty));
        subs.subscribed("b");
        assert_eq!(b_answer.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_reconnection_resubscribes_live_streams_and_resumes_with_the_last_answer() {
        let mut subs = Subscriptions::default();
        assert!(subs.resubscribe().is_empty());
        assert!(!subs.is_resubscribing(), "nothing to wait for");

        let (_a, _, _) = subscribe(&mut subs, "a", 1);
        let (b, _, _) = subscribe(&mut subs, "b", 2);
        let (_c, _, _) = subscribe(&mut subs, "c", 3);
        drop(b);
        subs.disconnected();
        assert!(!subs.subscribed("a"), "answers of the lost connection");

        let mut frames = subs.resubscribe();
        frames.sort_by_key(|f| format!("{f:?}"));
        assert_eq!(frames, [subscribe_frame("a"), subscribe_frame("c")]);
        assert!(subs.is_resubscribing());
        assert!(!subs.subscribed("c"));
        assert!(subs.is_resubscribing());
        assert!(
            subs.refuse_oldest(ErrorCode::Internal, "gone".into()),
            "a refusal answers too"
        );
        assert!(!subs.is_resubscribing());
    }

    #[test]
    fn stopping_releases_the_callers_still_waiting() {
        let mut subs = Subscriptions::default();
        let (_a, mut answer, _) = subscribe(&mut subs, "a", 1);
        subs.close();
        assert_eq!(answer.try_recv(), Err(TryRecvError::Closed));
    }
}
