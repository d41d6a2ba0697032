//! The flush thread: makes the store thread's writes durable and only then reports them done.
//!
//! The store thread applies a group of writes and hands what waits on them to this thread,
//! then goes on with the next group while this one flushes. One flush covers every group
//! handed over before it started, so writing and flushing overlap and a slow flush makes the
//! next flush cover more, instead of holding up the writes behind it.

use super::journal::Outcomes;
use super::{Completions, release_retired};
use crate::core::{Completion, ConfirmId};
use crate::metrics::Metrics;
use crate::store::{QueueId, QueueStore, StoredEntry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Groups handed over and not yet flushed, at most; the store thread waits beyond that.
const BEHIND: usize = 64;

/// What to report once a write is flushed.
pub(super) enum Pending {
    /// Someone waits for everything before this point to be durable.
    Done(oneshot::Sender<()>),
    /// Entries appended to one queue, each with the confirmation of its persistent message
    /// if one waits for it, and the append's outcome before the flush (kept when a
    /// confirmation waits, when a notice is among them, or when the append failed).
    Appended {
        queue: QueueId,
        entries: Vec<StoredEntry>,
        confirms: Vec<Option<ConfirmId>>,
        result: Result<(), String>,
    },
}

/// One group of writes applied by the store thread.
struct Group {
    /// The store thread's number of the group.
    number: u64,
    /// False when the group only read, so nothing needs flushing.
    wrote: bool,
    pending: Vec<Pending>,
}

/// Handle on the flush thread, owned by the store thread.
pub(super) struct Flusher {
    tx: Option<SyncSender<Group>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    done: Completions,
    /// The broker's metrics, which the store thread also records in.
    pub(super) metrics: Arc<Metrics>,
}

impl Flusher {
    /// Starts the flush thread over `store`; a failed flush sets `failed`.
    /// The flush thread adds each group's outcome (durable or not) to `outcomes` before it
    /// reports the group.
    pub(super) fn start(
        store: Arc<dyn QueueStore>,
        failed: Arc<AtomicBool>,
        outcomes: Outcomes,
        done: Completions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::store::StoreError> {
        let (tx, rx) = sync_channel(BEHIND);
        let (thread_failed, thread_done) = (failed.clone(), done.clone());
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("broadcast-flush".into())
            .spawn(move || {
                run(
                    &*store,
                    &rx,
                    &thread_failed,
                    &outcomes,
                    &thread_done,
                    &thread_metrics,
                )
            })
            .map_err(|e| {
                crate::store::StoreError::Io(format!("cannot start the flush thread: {e}"))
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            done,
            metrics,
        })
    }

    /// Hands over a group of applied writes; waits while the flush thread is far behind.
    pub(super) fn submit(&self, number: u64, wrote: bool, pending: Vec<Pending>) {
        if !wrote && pending.is_empty() {
            return;
        }
        let group = Group {
            number,
            wrote,
            pending,
        };
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send(group) {
                // The flush thread is gone (it panicked): nothing handed over can be reported
                // durable. Report it failed, to its senders too, and refuse persistent messages
                // from now on.
                tracing::error!("the flush thread has stopped; persistent messages are refused");
                self.failed.store(true, Ordering::Release);
                let error = "the flush thread has stopped".to_owned();
                report(e.0.pending, Err(&error), &self.done);
            }
        }
    }

    /// Waits until everything handed over so far has been flushed (or failed) and reported.
    pub(super) fn wait(&self, number: u64) {
        let (tx, rx) = oneshot::channel();
        self.submit(number, false, vec![Pending::Done(tx)]);
        let _ = rx.blocking_recv();
    }

    /// Flushes everything handed over, reports it, and stops the thread; the thread's hold
    /// on the store is released when this returns.
    pub(super) fn stop(&mut self) {
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

/// How often the flush thread checks that the store can still make writes durable.
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn run(
    store: &dyn QueueStore,
    rx: &Receiver<Group>,
    failed: &AtomicBool,
    outcomes: &Outcomes,
    done: &Completions,
    metrics: &Metrics,
) {
    let mut groups = Vec::new();
    let mut checked = Instant::now();
    loop {
        // At least once a period while the thread is not stuck in a flush.
        metrics.flusher_seen_ms.store(
            metrics.started.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        // A store that can no longer make writes durable is noticed within a period, also
        // while nothing is written.
        if checked.elapsed() >= CHECK_EVERY {
            checked = Instant::now();
            if !failed.load(Ordering::Acquire) {
                if let Err(e) = store.check() {
                    tracing::error!(error = %e, "the store cannot make writes durable; persistent messages are refused");
                    failed.store(true, Ordering::Release);
                }
            }
        }
        let first = match rx.recv_timeout(CHECK_EVERY) {
            Ok(group) => group,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        groups.push(first);
        groups.extend(rx.try_iter());
        let wrote = groups.iter().any(|g| g.wrote);
        let flushed = if wrote {
            let t0 = Instant::now();
            let flushed = store.flush().map_err(|e| e.to_string());
            metrics.flush_seconds.observe(t0.elapsed().as_secs_f64());
            metrics.flush_groups.observe(groups.len() as f64);
            metrics.flushes.fetch_add(1, Ordering::Relaxed);
            flushed
        } else {
            Ok(())
        };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "store flush failed; persistent messages are refused until the store heals");
            failed.store(true, Ordering::Release);
        }
        outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(groups.iter().map(|g| (g.number, flushed.is_ok())));
        let pending = groups.drain(..).flat_map(|g| g.pending).collect();
        report(pending, flushed.as_ref().map(|_| ()), done);
        release_retired();
    }
}

/// Reports each write's outcome, its own failure else the flush's, as completions: the
/// confirmations of everything durable in one.
fn report(pending: Vec<Pending>, flushed: Result<(), &String>, done: &Completions) {
    let mut durable = Vec::new();
    for p in pending {
        match p {
            Pending::Done(tx) => {
                // Completions before it first: what waits for this point sees their effects.
                if !durable.is_empty() {
                    done.send(Completion::Durable(std::mem::take(&mut durable)));
                }
                let _ = tx.send(());
            }
            Pending::Appended {
                queue,
                entries,
                confirms,
                result,
            } => {
                let error = result.as_ref().err().or(flushed.err());
                match error {
                    None => durable.extend(confirms.into_iter().flatten()),
                    Some(error) => {
                        // Not kept either way: a store that heals undoes the append.
                        let bytes = entries.iter().map(StoredEntry::size).sum();
                        let not_stored = Some((entries.len() as u64, bytes));
                        let mut messages = Vec::new();
                        let mut notices = Vec::new();
                        for (entry, confirm) in entries.into_iter().zip(confirms) {
                            match (entry, confirm) {
                                (StoredEntry::Message(m), Some(id)) => {
                                    messages.push((id, m.sender, m.id))
                                }
                                (StoredEntry::Notice { notice, .. }, confirm) => {
                                    notices.push((confirm, notice))
                                }
                                (StoredEntry::Message(_), None) => {}
                            }
                        }
                        done.send(Completion::Failed {
                            queue,
                            entries: messages,
                            notices,
                            error: error.clone(),
                            not_stored,
                            appended: result.is_ok(),
                        });
                    }
                }
            }
        }
    }
    if !durable.is_empty() {
        done.send(Completion::Durable(durable));
    }
}
