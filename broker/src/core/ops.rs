//! What the core asks of the store, and what the store reports back: plain values, applied
//! by the shell in the order the core decided them.

use super::confirm::ConfirmId;
use crate::store::{QueueId, Seq, Session, StoredEntry};
use broadcast_protocol::DeliveryFailed;

/// Entries to append to one queue, in order; the store assigns their sequence numbers. The
/// core builds one per run of consecutive entries to a queue, so an entry names no queue.
#[derive(Debug)]
pub struct QueueAppend {
    /// The queue appended to.
    pub queue: QueueId,
    /// The entries, in order.
    pub entries: Vec<StoredEntry>,
    /// One per entry: the confirmation waiting for the entry to be durable, if any.
    pub confirms: Vec<Option<ConfirmId>>,
}

impl QueueAppend {
    /// An append of one entry.
    pub fn new(queue: QueueId, entry: StoredEntry, confirm: Option<ConfirmId>) -> Self {
        Self {
            queue,
            entries: vec![entry],
            confirms: vec![confirm],
        }
    }

    /// Adds an entry after the others.
    pub fn push(&mut self, entry: StoredEntry, confirm: Option<ConfirmId>) {
        self.entries.push(entry);
        self.confirms.push(confirm);
    }

    /// Adds `entry` to the last append of `appends` when that is to `queue`, else starts one.
    pub fn push_to(
        appends: &mut Vec<QueueAppend>,
        queue: QueueId,
        entry: StoredEntry,
        confirm: Option<ConfirmId>,
    ) {
        match appends.last_mut() {
            Some(last) if last.queue == queue => last.push(entry, confirm),
            _ => appends.push(QueueAppend::new(queue, entry, confirm)),
        }
    }

    /// Whether any entry has a confirmation waiting for the write.
    pub fn waiting(&self) -> bool {
        self.confirms.iter().any(Option::is_some)
    }

    /// Adds the entries of `other` (to the same queue) after these.
    pub fn extend(&mut self, other: QueueAppend) {
        self.entries.extend(other.entries);
        self.confirms.extend(other.confirms);
    }
}

/// A write the core decided. The shell hands these to the store in the order they were
/// decided, before the core decides anything else (it holds the core's lock while it does).
#[derive(Debug)]
pub enum StoreOp {
    /// Appends runs of entries; confirmations wait for them to be durable.
    Append(Vec<QueueAppend>),
    /// Settles entries of a queue: acknowledged, expired or given up.
    Settle(QueueId, Vec<Seq>),
    /// Remembers a client's subscriptions while it is away.
    PutSession(Session),
    /// Forgets a client's session.
    RemoveSession(String),
    /// Drops a queue that holds nothing and has no connected recipient, with its numbering:
    /// a name addressed once takes no room once its messages are gone. A later entry starts
    /// the queue anew.
    Forget(QueueId),
    /// Moves every unsettled entry of `from` to the end of `to` (a channel's backlog to a
    /// new subscriber), except those sent by `except_from`: a message never reaches its
    /// sender through its own channel, so those keep waiting in `from`.
    Move {
        /// The queue emptied.
        from: QueueId,
        /// The queue appended to.
        to: QueueId,
        /// The client whose own messages stay in `from`.
        except_from: String,
    },
}

/// What the store reports back to the core, as a value.
#[derive(Debug)]
pub enum Completion {
    /// `n` entries were appended to `queue` (not yet durable): a drainer can read them.
    Appended {
        /// The queue.
        queue: QueueId,
        /// Entries appended.
        n: u64,
    },
    /// These appended entries are durable: their confirmations have this outcome.
    Durable(Vec<ConfirmId>),
    /// Writing entries of `queue` failed: each sender is told, then its confirmation
    /// settles.
    Failed {
        /// The queue written to.
        queue: QueueId,
        /// For each entry that a confirmation waited for: the confirmation, the sender and
        /// the message id.
        entries: Vec<(ConfirmId, String, String)>,
        /// Notices that were to wait in `queue` for their sender, each with the confirmation
        /// that waited for it, if any.
        notices: Vec<(Option<ConfirmId>, DeliveryFailed)>,
        /// What went wrong.
        error: String,
        /// Entries and bytes of the append, which the store does not keep: the append failed,
        /// or the flush after it did and the store undoes the append when it heals. The core
        /// stops counting them.
        not_stored: Option<(u64, u64)>,
        /// True when the append itself was applied (and reported [`Completion::Appended`])
        /// and only the flush after it failed.
        appended: bool,
    },
    /// The store looked for entries whose time to live ran out (asked for after
    /// [`crate::core::Core::begin_expiry_scan`]) and found these.
    Expired(Vec<(QueueId, Seq, StoredEntry)>),
    /// A move decided by the core was applied (the moved entries are in `to` now), or failed.
    Moved {
        /// The queue emptied.
        from: QueueId,
        /// The queue appended to.
        to: QueueId,
        /// Entries and bytes moved, `None` when the move failed.
        moved: Option<(u64, u64)>,
    },
}
