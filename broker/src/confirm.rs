//! Confirmation of a persistent message to its sender.
//!
//! A [`Confirm`] counts the outcomes a persistent message still waits for: an acknowledgement
//! from each recipient it was handed to, a flush for each queue it was written to. Failures
//! count as outcomes once their notice is on its way. When the count reaches zero the
//! `Accepted` frame goes out through a slot reserved in the sender's outbound queue when the
//! message arrived, so the confirmation can never be refused for lack of room.

use crate::encode;
use crate::outbound::OutFrame;
use broadcast_protocol::ServerFrame;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::OwnedPermit;

/// Outcomes still awaited for one persistent message.
#[derive(Debug)]
pub(crate) struct Confirm {
    id: Arc<str>,
    /// Starts at one: the router's own hold, released once routing is complete.
    remaining: AtomicUsize,
    slot: Mutex<Option<(OwnedPermit<OutFrame>, Arc<crate::outbound::Shared>)>>,
}

impl Confirm {
    /// A confirmation that will be written through `slot`.
    pub(crate) fn new(
        id: Arc<str>,
        slot: OwnedPermit<OutFrame>,
        shared: Arc<crate::outbound::Shared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            remaining: AtomicUsize::new(1),
            slot: Mutex::new(Some((slot, shared))),
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
        let taken = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((slot, shared)) = taken {
            let bytes = encode::frame(&ServerFrame::Accepted {
                id: self.id.to_string(),
            });
            shared.queued.fetch_add(bytes.len(), Ordering::AcqRel);
            // A sender that has gone resends the message when it is back; nothing to do here.
            let _ = slot.send(OutFrame::control(bytes));
        }
    }
}
