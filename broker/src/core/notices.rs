//! Delivery-failed notices for senders: made in one place, and sent outside of the sender's
//! own request straight to its connection or, when it has no room or is away, into its queue
//! in the store, so that a sender that acts on failures never misses one.

use super::confirm::ConfirmId;
use super::ops::{QueueAppend, StoreOp};
use super::outlet::{OutFrame, Outlet, PushError};
use super::{Core, Now, State};
use crate::encode;
use crate::store::{QueueId, StoredEntry};
use broadcast_protocol::{DeliveryFailed, FailureReason, Recipient};

/// The one place a message that cannot be delivered now, and will not be kept, ends up: a
/// notice for its sender.
pub(super) fn undeliverable(
    sender: &str,
    id: &str,
    recipient: Recipient,
    reason: FailureReason,
    detail: String,
) -> DeliveryFailed {
    tracing::debug!(%id, %sender, ?recipient, ?reason, "not delivered");
    DeliveryFailed {
        id: id.to_owned(),
        recipient,
        reason,
        detail,
        ack_tag: None,
    }
}

impl<O: Outlet> Core<O> {
    /// Sends `notice` to `sender` outside of its own request (see the module documentation).
    pub fn notify(&mut self, now: Now, sender: &str, notice: DeliveryFailed) {
        self.st.notify(now, sender, notice);
    }
}

impl<O: Outlet> State<O> {
    /// Sends a notice to a sender at `now`.
    pub(super) fn notify(&mut self, now: Now, sender: &str, notice: DeliveryFailed) {
        self.notify_before(now, sender, notice, None);
    }

    /// Sends a notice to a sender, then settles `confirm` (the sender's own confirmation of
    /// the message the notice is about), so that `Accepted` never overtakes the notice: at
    /// once when the notice is handed to the sender's connection, once it is durable when it
    /// waits in the sender's queue.
    pub(super) fn notify_before(
        &mut self,
        now: Now,
        sender: &str,
        notice: DeliveryFailed,
        confirm: Option<ConfirmId>,
    ) {
        self.stats.failed(notice.reason);
        // No client can take a name starting with `$` (the broker's own, the HTTP API's
        // anonymous sender): a notice kept for it would never be read.
        if crate::namespace::shown(sender).starts_with('$') {
            tracing::warn!(%sender, id = %notice.id, reason = ?notice.reason, "a message from a sender no client can be was not delivered");
            return self.settle(confirm);
        }
        if let Some(c) = self.clients.get(sender) {
            if c.out
                .try_push(OutFrame::control(encode::failed(notice.clone())))
                .is_ok()
            {
                return self.settle(confirm);
            }
        }
        if self.store_failed {
            self.tell_or_lose(sender, notice);
            return self.settle(confirm);
        }
        let queue = QueueId::Client(sender.to_owned());
        // A queued notice waits for its sender as long as a message would by default.
        let entry = StoredEntry::Notice {
            notice,
            expires_at_ms: now.wall_ms.saturating_add(self.notice_ttl_ms),
        };
        self.queues.count_enqueued(&queue, &entry);
        if let Some(c) = self.clients.get_mut(sender) {
            c.queue_mode = true;
        }
        let append = QueueAppend::new(queue, entry, confirm);
        self.ops.push(StoreOp::Append(vec![append]));
    }

    fn settle(&mut self, confirm: Option<ConfirmId>) {
        if let Some(id) = confirm {
            self.confirms.settle(id);
        }
    }

    /// A store write for a message failed: its sender learns that the recipient of `queue`
    /// will not get it.
    pub(super) fn store_write_failed(
        &mut self,
        queue: &QueueId,
        sender: &str,
        id: &str,
        error: &str,
    ) {
        let recipient = match queue {
            QueueId::Client(name) => Recipient::Client(name.clone()),
            QueueId::Backlog(channel) => Recipient::Channel(channel.clone()),
        };
        let notice = DeliveryFailed {
            id: id.to_owned(),
            recipient,
            reason: FailureReason::StoreUnavailable,
            detail: format!("the message store failed: {error}"),
            ack_tag: None,
        };
        self.stats.failed(notice.reason);
        self.tell_or_lose(sender, notice);
    }

    /// Hands a notice that the store cannot keep to its sender's connection, beside its queue
    /// when the queue is full; a sender that is away loses it (reported by the shell).
    pub(super) fn tell_or_lose(&mut self, sender: &str, notice: DeliveryFailed) {
        match self.clients.get(sender) {
            Some(c) => {
                let frame = encode::failed(notice);
                if let Err(PushError::Full) = c.out.try_push(OutFrame::control(frame.clone())) {
                    c.out.push_notice(frame);
                }
            }
            None => self.lost.push((sender.to_owned(), notice)),
        }
    }
}
