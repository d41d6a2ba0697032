//! Each connection's bounded outbound queue, the shell's [`Outlet`].
//!
//! The core pushes frames without waiting ([`Outbound::try_push`]): a recipient whose queue is
//! full, in frames or in bytes, is too slow, and the delivery fails with a notice instead of
//! growing memory. A connection pushes its own answers and notices with [`Outbound::push`],
//! which waits, so a client that does not read its notices stops being read from.

pub(crate) use crate::core::{OutFrame, PushError};

use crate::core::Outlet;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// State shared by a connection's reader, its writer and the router.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Bytes queued and not yet written.
    pub(crate) queued: AtomicUsize,
    /// Cancelled when the connection must close (takeover, shutdown, error, client gone).
    pub(crate) close: CancellationToken,
    /// Last frame to write before closing, when the broker closes the connection on purpose.
    pub(crate) farewell: Mutex<Option<Bytes>>,
    /// Wakes the connection's drainer (queue entries appended, acknowledgements, room).
    pub(crate) wake: Arc<Notify>,
    /// Set when the drainer waits for room in the queue; the writer then wakes it.
    pub(crate) wants_room: AtomicBool,
    /// `Accepted` frames that found the queue full; the writer sends them after its next
    /// batch. Bounded by the connection's limit of unconfirmed messages.
    pub(crate) confirmations: Mutex<Vec<Bytes>>,
    /// Set while a notice waits in `confirmations`: confirmations then wait behind it (a
    /// notice precedes the confirmation of the same message).
    pub(crate) notice_waiting: AtomicBool,
    /// Nonce of a liveness probe the writer is to send with its next write (0: none). Pings
    /// need no order, so a probe never waits behind a full queue.
    pub(crate) probe: AtomicU64,
    /// Set when a sender waited for room in vain; cleared when the writer makes progress.
    /// While set, deliveries that find the queue full fail at once instead of waiting.
    pub(crate) stalled: AtomicBool,
    /// Senders waiting for room (within the byte budget) in [`Outbound::push_within`]; the
    /// writer wakes them after each write while there are any.
    pub(crate) room: Notify,
    pub(crate) room_waiters: AtomicUsize,
}

/// The sending side of a connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) conn_id: u64,
    tx: mpsc::Sender<OutFrame>,
    pub(crate) shared: Arc<Shared>,
    max_bytes: usize,
    /// Largest frame the client accepts.
    pub(crate) max_frame: usize,
}

impl Outbound {
    /// A new queue; the receiver goes to the connection's writer.
    pub(crate) fn new(
        conn_id: u64,
        frames: usize,
        max_bytes: usize,
        max_frame: usize,
        close: CancellationToken,
    ) -> (Self, mpsc::Receiver<OutFrame>) {
        let (tx, rx) = mpsc::channel(frames);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            close,
            farewell: Mutex::new(None),
            wake: Arc::new(Notify::new()),
            wants_room: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            room: Notify::new(),
            room_waiters: AtomicUsize::new(0),
            confirmations: Mutex::new(Vec::new()),
            notice_waiting: AtomicBool::new(false),
            probe: AtomicU64::new(0),
        });
        (
            Self {
                conn_id,
                tx,
                shared,
                max_bytes,
                max_frame,
            },
            rx,
        )
    }

    /// Queues a frame if there is room now.
    pub(crate) fn try_push(&self, frame: OutFrame) -> Result<(), PushError> {
        let len = frame.bytes.len();
        let before = self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if !self.fits(before, len) {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued.fetch_sub(len, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => PushError::Full,
                    mpsc::error::TrySendError::Closed(_) => PushError::Closed,
                })
            }
        }
    }

    /// Whether a frame of `len` bytes fits in the byte budget with `queued` bytes queued. An
    /// empty queue takes any frame, so one frame larger than the budget is not refused for
    /// ever.
    fn fits(&self, queued: usize, len: usize) -> bool {
        queued == 0 || queued + len <= self.max_bytes
    }

    /// Queues a frame, waiting for room in frames (the byte budget is not applied: these are
    /// the connection's own small answers).
    pub(crate) async fn push(&self, frame: OutFrame) -> Result<(), PushError> {
        let len = frame.bytes.len();
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        self.tx.send(frame).await.map_err(|_| {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            PushError::Closed
        })
    }

    /// True while the connection is known not to take frames.
    pub(crate) fn is_stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::Acquire)
    }

    /// Queues a frame, waiting at most `wait` for room within the queue's byte budget, then
    /// for a free frame slot in turn with other waiting senders. After a vain wait the
    /// connection is marked stalled, so that later deliveries to it do not wait as well.
    pub(crate) async fn push_within(
        &self,
        frame: OutFrame,
        wait: std::time::Duration,
    ) -> Result<(), PushError> {
        let deadline = tokio::time::Instant::now() + wait;
        let len = frame.bytes.len();
        let over_budget = || !self.fits(self.shared.queued.load(Ordering::Acquire), len);
        let mut gave_up = false;
        if over_budget() {
            self.shared.room_waiters.fetch_add(1, Ordering::AcqRel);
            loop {
                let room = self.shared.room.notified();
                tokio::pin!(room);
                // Registered before the check, so that room made right after it wakes us.
                room.as_mut().enable();
                if !over_budget() {
                    break;
                }
                tokio::select! {
                    _ = room => {}
                    _ = self.shared.close.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        gave_up = true;
                        break;
                    }
                }
            }
            self.shared.room_waiters.fetch_sub(1, Ordering::AcqRel);
        }
        if !gave_up {
            // The frame slots are handed to waiting senders in turn.
            if let Ok(pushed) = tokio::time::timeout_at(deadline, self.push(frame)).await {
                return pushed;
            }
        }
        self.shared.stalled.store(true, Ordering::Release);
        Err(PushError::Full)
    }

    /// Asks the writer to wake the drainer once it has written what is queued.
    pub(crate) fn want_room(&self) {
        self.shared.wants_room.store(true, Ordering::Release);
    }

    /// Queues a confirmation: at once when there is room, otherwise for the writer to send
    /// after its current batch.
    pub(crate) fn push_confirmation(&self, bytes: Bytes) {
        self.push_unrefused(bytes, false);
    }

    /// Queues a notice that the store cannot keep: at once when there is room, otherwise beside
    /// the queue, where confirmations pushed after it wait behind it.
    pub(crate) fn push_notice(&self, bytes: Bytes) {
        self.push_unrefused(bytes, true);
    }

    /// Queues a frame that is never refused: into the queue when there is room (and no notice
    /// waits beside it), otherwise beside it, for the writer to send after its current batch.
    fn push_unrefused(&self, bytes: Bytes, notice: bool) {
        // Counted like every queued frame: the writer takes the bytes off once written.
        self.shared.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        let stash = || {
            self.shared
                .confirmations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if !notice && self.shared.notice_waiting.load(Ordering::Acquire) {
            // Behind a notice that waits beside the queue, never ahead of it.
            let mut stash = stash();
            if !stash.is_empty() {
                stash.push(bytes);
                return;
            }
        }
        match self.tx.try_send(OutFrame::control(bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                let mut stash = stash();
                stash.push(frame.bytes);
                if notice {
                    self.shared.notice_waiting.store(true, Ordering::Release);
                }
                drop(stash);
                // The writer may have emptied the queue meanwhile and be waiting: wake it.
                let _ = self.tx.try_send(OutFrame::control(Bytes::new()));
            }
            Err(mpsc::error::TrySendError::Closed(frame)) => {
                self.shared
                    .queued
                    .fetch_sub(frame.bytes.len(), Ordering::AcqRel);
            }
        }
    }

    /// Asks the writer to send a `Ping` with `nonce` with its next write, whatever is queued.
    pub(crate) fn probe(&self, nonce: u64) {
        self.shared.probe.store(nonce, Ordering::Release);
        // Wakes a writer that waits for frames; a busy one sees the probe after its batch.
        let _ = self.tx.try_send(OutFrame::control(Bytes::new()));
    }

    /// Closes the connection after writing what is queued and then `farewell`.
    pub(crate) fn close_with(&self, farewell: Option<Bytes>) {
        if let Some(f) = farewell {
            let mut slot = self
                .shared
                .farewell
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(f);
        }
        self.shared.close.cancel();
    }
}

impl Outbound {
    /// Bytes waiting in the queue now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl Outlet for Outbound {
    type Permit = OwnedSemaphorePermit;

    fn conn_id(&self) -> u64 {
        self.conn_id
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn try_push(&self, frame: OutFrame) -> Result<(), PushError> {
        Outbound::try_push(self, frame)
    }

    fn push_confirmation(&self, accepted: Bytes) {
        Outbound::push_confirmation(self, accepted);
    }

    fn push_notice(&self, notice: Bytes) {
        Outbound::push_notice(self, notice);
    }

    fn is_stalled(&self) -> bool {
        Outbound::is_stalled(self)
    }

    fn want_room(&self) {
        Outbound::want_room(self);
    }

    fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> OutFrame {
        OutFrame::control(Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn a_confirmation_that_finds_the_queue_full_is_kept_and_counted() {
        let (out, mut rx) = Outbound::new(1, 2, 1 << 20, 1 << 20, CancellationToken::new());
        assert_eq!(out.try_push(frame(10)), Ok(()));
        assert_eq!(out.try_push(frame(20)), Ok(()));
        out.push_confirmation(Bytes::from(vec![1u8; 7]));
        // Kept aside for the writer, and counted with what is queued: the writer takes off
        // every byte it writes, these included.
        let stash = out.shared.confirmations.lock().unwrap().clone();
        assert_eq!(stash, vec![Bytes::from(vec![1u8; 7])]);
        assert_eq!(out.shared.queued.load(Ordering::Acquire), 37);
        // With room, a confirmation is queued like any frame.
        rx.try_recv().unwrap();
        out.push_confirmation(Bytes::from(vec![2u8; 5]));
        assert_eq!(out.shared.queued.load(Ordering::Acquire), 42);
        assert_eq!(out.shared.confirmations.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_confirmation_waits_behind_a_notice_that_found_the_queue_full() {
        let (out, mut rx) = Outbound::new(1, 1, 1 << 20, 1 << 20, CancellationToken::new());
        assert_eq!(out.try_push(frame(10)), Ok(()));
        out.push_notice(Bytes::from_static(b"notice"));
        // Room again: a confirmation alone would take it, but it must not pass the notice.
        rx.try_recv().unwrap();
        out.push_confirmation(Bytes::from_static(b"accepted"));
        let stash = out.shared.confirmations.lock().unwrap().clone();
        assert_eq!(
            stash,
            vec![
                Bytes::from_static(b"notice"),
                Bytes::from_static(b"accepted")
            ]
        );
        assert!(rx.try_recv().is_err(), "nothing went ahead of the notice");
    }

    #[test]
    fn refuses_beyond_the_byte_budget_but_takes_one_large_frame() {
        let (out, mut rx) = Outbound::new(1, 16, 100, 1 << 20, CancellationToken::new());
        assert_eq!(out.try_push(frame(500)), Ok(()));
        assert_eq!(out.try_push(frame(1)), Err(PushError::Full));
        rx.try_recv().unwrap();
        out.shared.queued.fetch_sub(500, Ordering::AcqRel);
        assert_eq!(out.try_push(frame(60)), Ok(()));
        assert_eq!(out.try_push(frame(40)), Ok(()));
        assert_eq!(out.try_push(frame(1)), Err(PushError::Full));
    }

    #[test]
    fn refuses_beyond_the_frame_count_and_after_close() {
        let (out, rx) = Outbound::new(1, 2, 1 << 20, 1 << 20, CancellationToken::new());
        assert_eq!(out.try_push(frame(1)), Ok(()));
        assert_eq!(out.try_push(frame(1)), Ok(()));
        assert_eq!(out.try_push(frame(1)), Err(PushError::Full));
        drop(rx);
        assert_eq!(out.try_push(frame(1)), Err(PushError::Closed));
        assert_eq!(out.shared.queued.load(Ordering::Acquire), 2);
    }
}
