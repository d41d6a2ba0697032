//! The flush thread: makes the store thread's writes durable and only then reports them done.
//!
//! The store thread applies a group of writes and hands what waits on them to this thread,
//! then goes on with the next group while this one flushes. One flush covers every group
//! handed over before it started, so writing and flushing overlap and a slow flush makes the
//! next flush cover more, instead of holding up the writes behind it.

use crate::confirm::Confirm;
use crate::persist::{Done, Moved, OnFailed};
use crate::store::{QueueId, QueueStore, StoreError, StoredEntry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Groups handed over and not yet flushed, at most; the store thread waits beyond that.
const BEHIND: usize = 64;

/// What to report once a write is flushed.
pub(crate) enum Pending {
    /// A write and its own outcome before the flush.
    Done(Done, Result<(), StoreError>),
    /// A move between queues and its outcome before the flush.
    Moved(Moved, Result<(u64, u64), StoreError>),
    /// Entries appended to one queue, each with the confirmation of its persistent message
    /// if one waits for it, and the append's outcome before the flush.
    Appended {
        queue: QueueId,
        entries: Vec<StoredEntry>,
        confirms: Vec<Option<Arc<Confirm>>>,
        result: Result<(), StoreError>,
    },
}

/// One group of writes applied by the store thread.
struct Group {
    /// False when the group only read, so nothing needs flushing.
    wrote: bool,
    pending: Vec<Pending>,
}

/// Handle on the flush thread, owned by the store thread.
pub(crate) struct Flusher {
    tx: Option<SyncSender<Group>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    on_failed: OnFailed,
}

impl Flusher {
    /// Starts the flush thread over `store`; a failed flush sets `failed`.
    pub(crate) fn start(
        store: Arc<dyn QueueStore>,
        failed: Arc<AtomicBool>,
        on_failed: OnFailed,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel(BEHIND);
        let (thread_failed, thread_on_failed) = (failed.clone(), on_failed.clone());
        let thread = std::thread::Builder::new()
            .name("broadcast-flush".into())
            .spawn(move || run(&*store, &rx, &thread_failed, &*thread_on_failed))
            .map_err(|e| StoreError::Io(format!("cannot start the flush thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            on_failed,
        })
    }

    /// Hands over a group of applied writes; waits while the flush thread is far behind.
    pub(crate) fn submit(&self, wrote: bool, pending: Vec<Pending>) {
        if !wrote && pending.is_empty() {
            return;
        }
        let group = Group { wrote, pending };
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send(group) {
                // The flush thread is gone (it panicked): nothing handed over can be reported
                // durable. Report it failed, to its senders too, and refuse persistent messages
                // from now on.
                tracing::error!("the flush thread has stopped; persistent messages are refused");
                self.failed.store(true, Ordering::Release);
                let error = StoreError::Io("the flush thread has stopped".into());
                report(e.0.pending, Err(&error), &*self.on_failed);
            }
        }
    }

    /// Flushes everything handed over, reports it, and stops the thread; the thread's hold
    /// on the store is released when this returns.
    pub(crate) fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the flush thread panicked");
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

type FailedFn = dyn Fn(&QueueId, &StoredEntry, &StoreError) + Send + Sync;

fn run(store: &dyn QueueStore, rx: &Receiver<Group>, failed: &AtomicBool, on_failed: &FailedFn) {
    let mut groups = Vec::new();
    while let Ok(first) = rx.recv() {
        groups.push(first);
        groups.extend(rx.try_iter());
        let wrote = groups.iter().any(|g| g.wrote);
        let flushed = if wrote { store.flush() } else { Ok(()) };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "store flush failed; persistent messages are refused");
            failed.store(true, Ordering::Release);
        }
        for group in groups.drain(..) {
            report(group.pending, flushed.as_ref().map(|_| ()), on_failed);
        }
        crate::persist::release_retired();
    }
}

/// Reports each write's outcome: its own failure, else the flush's.
fn report(pending: Vec<Pending>, flushed: Result<(), &StoreError>, on_failed: &FailedFn) {
    for p in pending {
        match p {
            Pending::Done(done, r) => done(r.as_ref().and(flushed).map(|_| ())),
            Pending::Moved(done, r) => match (&r, flushed) {
                (Ok(n), Ok(())) => done(Ok(*n)),
                (Err(e), _) | (_, Err(e)) => done(Err(e)),
            },
            Pending::Appended {
                queue,
                entries,
                confirms,
                result,
            } => {
                let error = result.as_ref().err().or(flushed.err());
                for (entry, confirm) in entries.iter().zip(confirms) {
                    let Some(confirm) = confirm else { continue };
                    if let Some(e) = error {
                        on_failed(&queue, entry, e);
                    }
                    confirm.settle();
                }
            }
        }
    }
}
