//! Confirmation of persistent messages to their senders: the one place a confirmation is
//! opened, counted and settled.
//!
//! A confirmation counts the outcomes a persistent message still waits for: an
//! acknowledgement from each recipient it was handed to, a durable write for each queue it
//! was written to, and the core's own hold while it routes the message. Failures count as
//! outcomes once their notice is on its way. When the count reaches zero the `Accepted` frame
//! goes to the sender's connection and the sender's permit is released.

use super::outlet::Outlet;
use crate::maps::HashMap;
use bytes::Bytes;

/// Names one persistent message waiting for its confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfirmId(u64);

impl ConfirmId {
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

/// Every confirmation still waiting.
pub(crate) struct Confirms<O: Outlet> {
    next: u64,
    pending: HashMap<u64, Pending<O>>,
}

impl<O: Outlet> Default for Confirms<O> {
    fn default() -> Self {
        Self {
            next: 0,
            pending: HashMap::default(),
        }
    }
}

impl<O: Outlet> Confirms<O> {
    /// Opens a confirmation to `to`, held by the router until [`Confirms::settle`] releases
    /// that hold.
    pub(crate) fn open(&mut self, to: O, new: NewConfirm<O>) -> ConfirmId {
        self.next += 1;
        let pending = Pending {
            remaining: 1,
            to,
            accepted: new.accepted,
            _permit: new.permit,
        };
        self.pending.insert(self.next, pending);
        ConfirmId(self.next)
    }

    /// One more outcome to wait for.
    pub(crate) fn add(&mut self, id: ConfirmId) {
        if let Some(p) = self.pending.get_mut(&id.0) {
            p.remaining += 1;
        }
    }

    /// One outcome arrived; the last one sends `Accepted`.
    pub(crate) fn settle(&mut self, id: ConfirmId) {
        let Some(p) = self.pending.get_mut(&id.0) else {
            debug_assert!(false, "confirmation {id:?} settled after it was complete");
            return;
        };
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        if let Some(p) = self.pending.remove(&id.0) {
            // A sender that has gone resends the message when it is back; nothing to do then.
            p.to.push_confirmation(p.accepted);
        }
    }

    /// Confirmations still waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}
