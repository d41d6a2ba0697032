//! What the store thread applied and the flush thread has not yet made durable, kept so that a
//! store that failed and healed (reopened on what it had made durable) is brought back to what
//! the core decided: its writes redone, and the appends whose senders were told they failed
//! undone.
//!
//! Writes are kept by group. The flush thread reports each group's outcome; the writes of a
//! group made durable are forgotten, those of a group whose flush failed are kept until the
//! store heals, whatever became of the groups after it.

use crate::core::StoreOp;
use crate::store::{QueueId, Seq};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Most entries kept; past that a failed store cannot be healed (a restart recovers it).
const MAX_ENTRIES: usize = 1 << 20;

/// One write not known to be durable.
pub(super) enum Entry {
    /// A write to apply again: a settlement, a session change, a queue forgotten, a move.
    Redo(StoreOp),
    /// Entries appended to `queue` from seq `first` (or an append that failed): settled again,
    /// since their senders are told they failed unless they became durable.
    Undo { queue: QueueId, first: Seq, n: u64 },
}

/// Outcomes of groups' flushes, as the flush thread reports them: group number, and whether
/// the group is durable.
pub(super) type Outcomes = Arc<Mutex<Vec<(u64, bool)>>>;

/// The writes of the groups not known to be durable, by group number.
pub(super) struct Journal {
    entries: Vec<(u64, Entry)>,
    group: u64,
    outcomes: Outcomes,
    overflowed: bool,
}

impl Journal {
    pub(super) fn new(outcomes: Outcomes) -> Self {
        Self {
            entries: Vec::new(),
            group: 0,
            outcomes,
            overflowed: false,
        }
    }

    /// Forgets the writes of the groups reported durable since the last call.
    pub(super) fn prune(&mut self) {
        let reported =
            std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        let durable: HashSet<u64> = reported
            .into_iter()
            .filter_map(|(group, ok)| ok.then_some(group))
            .collect();
        if !durable.is_empty() {
            self.entries.retain(|(g, _)| !durable.contains(g));
        }
    }

    /// Forgets what has become durable and numbers the next group.
    pub(super) fn begin_group(&mut self) -> u64 {
        self.prune();
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
