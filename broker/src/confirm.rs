//! Confirmation of a persistent message to its sender.
//!
//! A [`Confirm`] counts the outcomes a persistent message still waits for: an acknowledgement
//! from each recipient it was handed to, a flush for each queue it was written to. Failures
//! count as outcomes once their notice is on its way. When the count reaches zero the
//! `Accepted` frame goes to the sender's connection: into its outbound queue when there is
//! room, otherwise into a list of confirmations that the connection's writer sends as soon
//! as it has written what is queued, so a confirmation is never refused and never waits
//! behind a slow recipient. That list is bounded: each connection has at most
//! `max_unconfirmed` persistent messages waiting for their confirmation (a permit of its
//! semaphore travels with each `Confirm`); beyond that the broker stops reading from it.

use crate::encode;
use crate::outbound::Outbound;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::OwnedSemaphorePermit;

/// Outcomes still awaited for one persistent message.
#[derive(Debug)]
pub(crate) struct Confirm {
    /// Starts at one: the router's own hold, released once routing is complete.
    remaining: AtomicUsize,
    /// Where the confirmation goes, the permit it holds, and the `Accepted` frame (encoded
    /// when the message arrived).
    to: Mutex<Option<(Outbound, OwnedSemaphorePermit, Bytes)>>,
}

impl Confirm {
    /// A confirmation for message `id` of the connection `out`, holding one of the
    /// connection's unconfirmed permits until it is sent.
    pub(crate) fn new(id: &str, out: Outbound, permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(1),
            to: Mutex::new(Some((out, permit, encode::accepted(id)))),
        })
    }

    /// One more outcome to wait for.
    pub(crate) fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One outcome arrived; the last one sends `Accepted`.
    pub(crate) fn settle(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let taken = self.to.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((out, _permit, accepted)) = taken {
            // A sender that has gone resends the message when it is back; nothing to do then.
            out.push_confirmation(accepted);
        }
    }
}
