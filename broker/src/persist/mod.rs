//! The store's side of the shell: its own thread applies the core's writes in groups
//! (`worker`), and a flush thread makes each group durable before anything in it is reported
//! done (`flusher`), while the store thread applies the next group.
//!
//! Async code talks to the store thread through [`Persist`], a bounded channel. The engine
//! reserves a slot before it locks the core, on every path, and sends the core's writes
//! through it under the lock without waiting: writes reach the store in the order they were
//! decided. What the store reports back goes to the engine as
//! [`Completion`] values.

mod flusher;
mod journal;
mod worker;

use crate::core::StoreOp;
use crate::store::{QueueId, QueueInfo, QueueStore, Seq, StoreError, StoredEntry};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the store thread at most; senders wait beyond that.
const CHANNEL: usize = 16 * 1024;

pub(crate) use crate::engine::Completions;

/// What the store thread is asked to do.
pub(crate) enum Command {
    /// Writes decided by the core, applied in order; the sender, if any, is answered once
    /// they (and everything before them) are durable.
    Ops(Vec<StoreOp>, Option<oneshot::Sender<()>>),
    /// Reads unsettled entries of a queue.
    Read {
        queue: QueueId,
        from: Seq,
        max: usize,
        reply: oneshot::Sender<Result<Vec<(Seq, StoredEntry)>, StoreError>>,
    },
    /// Looks for at most `max` entries whose time to live ran out, after `after` in queue and
    /// seq order. What it finds is a completion; once the core has taken it and its
    /// settlements are on their way to the store, `next` is answered with where the next look
    /// goes on from: the last entry found when `max` were found, else `None`.
    Expired {
        now_ms: u64,
        after: Option<(QueueId, Seq)>,
        max: usize,
        next: oneshot::Sender<Option<(QueueId, Seq)>>,
    },
    /// Flushes, closes the store and stops the thread, then answers with the final flush's
    /// outcome.
    Shutdown(oneshot::Sender<Result<(), StoreError>>),
}

/// Handle on the store thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Persist {
    tx: mpsc::Sender<Command>,
}

/// A reserved slot in the store thread's channel.
pub(crate) type Slot = mpsc::OwnedPermit<Command>;

impl Persist {
    /// Starts the store and flush threads over an opened store whose queues are `queues` (as
    /// [`QueueStore::queues`] reported them); a failed write or flush sets `failed`;
    /// completions go to `done`.
    pub(crate) fn start(
        store: Arc<dyn QueueStore>,
        queues: &[QueueInfo],
        failed: Arc<AtomicBool>,
        done: Completions,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        let next_seq = queues
            .iter()
            .map(|q| (q.queue.clone(), q.next_seq))
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let outcomes = journal::Outcomes::default();
        let flusher = flusher::Flusher::start(
            store.clone(),
            failed.clone(),
            outcomes.clone(),
            done.clone(),
            metrics,
        )?;
        let journal = journal::Journal::new(outcomes);
        let worker = worker::Worker::new(store, flusher, journal, rx, next_seq, done, failed);
        std::thread::Builder::new()
            .name("broadcast-store".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Reserves a slot, waiting while the store thread is behind.
    pub(crate) async fn reserve(&self) -> Option<Slot> {
        self.tx.clone().reserve_owned().await.ok()
    }

    /// Sends a command, waiting for room.
    pub(crate) async fn send(&self, cmd: Command) {
        if self.tx.send(cmd).await.is_err() {
            tracing::error!("the store thread has stopped");
        }
    }

    /// Reads unsettled entries of a queue from `from` on.
    pub(crate) async fn read(
        &self,
        queue: QueueId,
        from: Seq,
        max: usize,
    ) -> Result<Vec<(Seq, StoredEntry)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read {
            queue,
            from,
            max,
            reply,
        })
        .await;
        rx.await
            .map_err(|_| StoreError::Io("the store thread has stopped".into()))?
    }

    /// Flushes, closes the store and stops the store thread.
    ///
    /// # Errors
    /// The final flush failed (what the store took last may not be on disk), or the store
    /// thread had already stopped.
    pub(crate) async fn shutdown(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown(reply)).await;
        rx.await.map_err(|_| {
            StoreError::Io("the store thread had stopped before the shutdown".into())
        })?
    }
}

/// Hands what sled retired on this thread (old log buffers of 512 KiB, old tree nodes) to
/// its epoch collector now, rather than once 64 of them have piled up: sled frees them through
/// crossbeam's default collector, and a thread that keeps writing otherwise holds dozens of
/// them (an offline queue of 100,000 messages: peak memory 69 MB, 49 MB with this).
fn release_retired() {
    crossbeam_epoch::pin().flush();
}
