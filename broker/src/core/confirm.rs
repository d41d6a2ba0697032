//! Confirmation of persistent messages to their senders: the one place a confirmation is
//! opened, counted and settled.
//!
//! A confirmation counts the outcomes a persistent message still waits for: an
//! acknowledgement from each recipient it was handed to, a durable write for each queue it
//! was written to, and the core's own hold while it routes the message. Failures count as
//! outcomes once their notice is on its way. When the count reaches zero the `Accepted` frame
//! goes to the sender's connection and the sender's permit is released.

use super::outlet::Outlet;
use bytes::Bytes;

/// Names one persistent message waiting for its confirmation: a slot of the table and the
/// generation of that slot, so that a slot used again is not confused with its old owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfirmId(u64);

impl ConfirmId {
    fn new(slot: usize, generation: u32) -> Self {
        Self(((generation as u64) << 32) | slot as u64)
    }

    fn slot(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// An id for tests of code that only carries ids.
    #[cfg(test)]
    pub(crate) fn for_test(n: u64) -> Self {
        Self(n)
    }
}

/// What a sender's connection hands the core with each persistent message: the `Accepted`
/// frame to send once it is confirmed, and the permit to release then.
#[derive(Debug)]
pub struct NewConfirm<O: Outlet> {
    /// The encoded `Accepted` frame.
    pub accepted: Bytes,
    /// Released at confirmation.
    pub permit: O::Permit,
}

struct Pending<O: Outlet> {
    remaining: u32,
    to: O,
    accepted: Bytes,
    _permit: O::Permit,
}

struct Slot<O: Outlet> {
    generation: u32,
    pending: Option<Pending<O>>,
}

/// Every confirmation still waiting, in a table of slots used again once free (no hashing on
/// the path of every persistent message).
pub(crate) struct Confirms<O: Outlet> {
    slots: Vec<Slot<O>>,
    free: Vec<usize>,
    waiting: usize,
}

impl<O: Outlet> Default for Confirms<O> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            waiting: 0,
        }
    }
}

impl<O: Outlet> Confirms<O> {
    /// Opens a confirmation to `to`, held by the router until [`Confirms::settle`] releases
    /// that hold.
    pub(crate) fn open(&mut self, to: O, new: NewConfirm<O>) -> ConfirmId {
        let pending = Pending {
            remaining: 1,
            to,
            accepted: new.accepted,
            _permit: new.permit,
        };
        self.waiting += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    pending: None,
                });
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        s.pending = Some(pending);
        ConfirmId::new(slot, s.generation)
    }

    fn pending(&mut self, id: ConfirmId) -> Option<&mut Pending<O>> {
        self.slots
            .get_mut(id.slot())
            .filter(|s| s.generation == id.generation())
            .and_then(|s| s.pending.as_mut())
    }

    /// One more outcome to wait for.
    pub(crate) fn add(&mut self, id: ConfirmId) {
        if let Some(p) = self.pending(id) {
            p.remaining += 1;
        }
    }

    /// One outcome arrived; the last one sends `Accepted`.
    pub(crate) fn settle(&mut self, id: ConfirmId) {
        let Some(p) = self.pending(id) else {
            debug_assert!(false, "confirmation {id:?} settled after it was complete");
            return;
        };
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        if let Some(p) = self.slots[id.slot()].pending.take() {
            self.free.push(id.slot());
            self.waiting -= 1;
            // A sender that has gone resends the message when it is back; nothing to do then.
            p.to.push_confirmation(p.accepted);
        }
    }

    /// Confirmations still waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }
}
