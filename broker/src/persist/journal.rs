//! What the store thread applied and the flush thread has not yet made durable, kept so that a
//! store that failed and healed (reopened on what it had made durable) is brought back to what
//! the core decided: its writes redone, and the appends whose senders were told they failed
//! undone.

use crate::core::StoreOp;
use crate::store::{QueueId, Seq};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most entries kept; past that a failed store cannot be healed (a restart recovers it).
const MAX_ENTRIES: usize = 1 << 20;

/// One write not known to be durable.
pub(super) enum Entry {
    /// A write to apply again: a settlement, a session change, a queue forgotten, a move.
    Redo(StoreOp),
    /// Entries appended to `queue` from seq `first`: settled again, since their senders were
    /// told they failed unless they became durable.
    Undo { queue: QueueId, first: Seq, n: u64 },
}

/// The writes of the groups not yet flushed, by group number.
pub(super) struct Journal {
    entries: Vec<(u64, Entry)>,
    group: u64,
    /// The highest group the flush thread has made durable.
    durable: Arc<AtomicU64>,
    overflowed: bool,
}

impl Journal {
    pub(super) fn new(durable: Arc<AtomicU64>) -> Self {
        Self {
            entries: Vec::new(),
            group: 0,
            durable,
            overflowed: false,
        }
    }

    /// Forgets what has become durable and numbers the next group.
    pub(super) fn begin_group(&mut self) -> u64 {
        let durable = self.durable.load(Ordering::Acquire);
        if self.entries.first().is_some_and(|(g, _)| *g <= durable) {
            self.entries.retain(|(g, _)| *g > durable);
        }
        self.group += 1;
        self.group
    }

    /// Keeps a write of the current group.
    pub(super) fn push(&mut self, entry: Entry) {
        if self.entries.len() < MAX_ENTRIES {
            self.entries.push((self.group, entry));
        } else {
            self.overflowed = true;
        }
    }

    /// Whether writes were dropped for want of room, so that the journal is incomplete.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Takes the writes kept, in the order they were applied, to apply them again; hand them
    /// back with [`Journal::put_back`] unless that made them durable.
    pub(super) fn take(&mut self) -> Vec<(u64, Entry)> {
        std::mem::take(&mut self.entries)
    }

    /// Keeps again the writes [`Journal::take`] took, before any written since.
    pub(super) fn put_back(&mut self, mut entries: Vec<(u64, Entry)>) {
        entries.append(&mut self.entries);
        self.entries = entries;
    }

    /// Forgets every write kept: they are durable now.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.overflowed = false;
    }
}
