//! The store thread: applies the core's writes in groups, in the order they were decided,
//! and answers reads; what waits on a write goes to the flush thread with its group.

use super::flusher::{Flusher, Pending};
use super::journal::{Entry, Journal};
use super::{Command, Completions, release_retired};
use crate::core::{Completion, QueueAppend, StoreOp};
use crate::maps::HashMap;
use crate::store::{QueueId, QueueStore, Seq, StoreError, StoredEntry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Commands applied together before one flush.
const GROUP: usize = 8 * 1024;

/// How often a failed store is asked to heal.
const HEAL_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Worker {
    store: Arc<dyn QueueStore>,
    flusher: Flusher,
    journal: Journal,
    rx: mpsc::Receiver<Command>,
    next_seq: HashMap<QueueId, Seq>,
    done: Completions,
    failed: Arc<AtomicBool>,
    /// When the store was last asked to heal.
    healed_at: Instant,
}

impl Worker {
    pub(super) fn new(
        store: Arc<dyn QueueStore>,
        flusher: Flusher,
        journal: Journal,
        rx: mpsc::Receiver<Command>,
        next_seq: HashMap<QueueId, Seq>,
        done: Completions,
        failed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            flusher,
            journal,
            rx,
            next_seq,
            done,
            failed,
            healed_at: Instant::now(),
        }
    }

    pub(super) fn run(mut self) {
        let mut group = Vec::with_capacity(GROUP);
        let mut stop = None;
        while let Some(first) = self.rx.blocking_recv() {
            group.push(first);
            while group.len() < GROUP {
                match self.rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            if let Some(i) = group.iter().position(|c| matches!(c, Command::Shutdown(_))) {
                // Commands after the shutdown are not applied; their senders see the stop.
                if let Command::Shutdown(reply) = group.swap_remove(i) {
                    stop = Some(reply);
                }
                group.truncate(i);
            }
            let t0 = Instant::now();
            self.apply(&mut group);
            self.flusher
                .metrics
                .apply_seconds
                .observe(t0.elapsed().as_secs_f64());
            if stop.is_some() {
                break;
            }
        }
        // Everything handed to the flush thread is flushed and reported before it stops.
        self.flusher.stop();
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "final store flush failed");
        }
        // Close the store before answering, so that it can be opened again at once.
        drop(self);
        if let Some(reply) = stop {
            let _ = reply.send(flushed);
        }
    }

    fn apply(&mut self, group: &mut Vec<Command>) {
        // A failed store is asked to heal about once a second; the sweeper's looks bring a
        // command at least that often.
        if self.failed.load(Ordering::Acquire) && self.healed_at.elapsed() >= HEAL_EVERY {
            self.heal();
        }
        let number = self.journal.begin_group();
        let mut pending = Vec::new();
        let mut wrote = false;
        // Appends of the whole group are gathered per queue, so that each queue gets one
        // append (a few segments) per group whatever the number of messages; anything else
        // first writes the appends gathered before it, to keep the order decided.
        let mut appends: Vec<QueueAppend> = Vec::new();
        let mut index: HashMap<QueueId, usize> = HashMap::default();
        for cmd in group.drain(..) {
            match cmd {
                Command::Ops(ops, done) => {
                    for op in ops {
                        match op {
                            StoreOp::Append(runs) => gather(runs, &mut appends, &mut index),
                            op => {
                                wrote |= self.write_appends(&mut appends, &mut index, &mut pending);
                                wrote |= self.apply_op(op);
                            }
                        }
                    }
                    if let Some(done) = done {
                        pending.push(Pending::Done(done));
                    }
                }
                Command::Read {
                    queue,
                    from,
                    max,
                    reply,
                } => {
                    wrote |= self.write_appends(&mut appends, &mut index, &mut pending);
                    let _ = reply.send(self.store.read(&queue, from, max));
                }
                Command::Expired {
                    now_ms,
                    after,
                    max,
                    next,
                } => {
                    wrote |= self.write_appends(&mut appends, &mut index, &mut pending);
                    let entries =
                        (self.store.expired(now_ms, after.as_ref(), max)).unwrap_or_else(|e| {
                            tracing::error!(error = %e, "cannot look for expired messages");
                            Vec::new()
                        });
                    let cursor = (entries.len() == max)
                        .then(|| entries.last().map(|(q, seq, _)| (q.clone(), *seq)))
                        .flatten();
                    // Through the completions, so that the core sees it after everything this
                    // thread reported before it.
                    let taken = Box::new(move || {
                        let _ = next.send(cursor);
                    });
                    self.done.send_then(Completion::Expired(entries), taken);
                }
                Command::Shutdown(_) => unreachable!("shutdown is taken out of the group first"),
            }
        }
        wrote |= self.write_appends(&mut appends, &mut index, &mut pending);
        self.flusher.submit(number, wrote, pending);
        release_retired();
    }

    /// Asks the failed store to heal (reopen on what it made durable), then redoes what it
    /// took since its last durable flush and undoes the appends whose senders were told they
    /// failed; once that is durable, the store takes writes again.
    fn heal(&mut self) {
        self.healed_at = Instant::now();
        if self.journal.overflowed() {
            tracing::error!(
                "the store failed for too long to be healed; restart the broker to recover it"
            );
            return;
        }
        // Every group handed over before is reported (as failed) first, so that no flush of
        // the reopened store confirms a write made before it.
        self.flusher.wait(self.journal.begin_group());
        // Every group handed over has its outcome now: what is kept is what failed.
        self.journal.prune();
        if let Err(e) = self.store.heal() {
            tracing::warn!(error = %e, "the store is still failing");
            return;
        }
        let entries = self.journal.take();
        let redone = entries.iter().try_for_each(|(_, entry)| self.redo(entry));
        if let Err(e) = redone.and_then(|()| self.store.flush()) {
            tracing::warn!(error = %e, "the store reopened but cannot take writes yet");
            self.journal.put_back(entries);
            return;
        }
        self.journal.clear();
        // Never number below what the store holds: a failed append may have left entries.
        match self.store.queues() {
            Ok(queues) => {
                for q in queues {
                    let next = self.next_seq.entry(q.queue).or_insert(0);
                    *next = (*next).max(q.next_seq);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store reopened but cannot be read yet");
                return;
            }
        }
        self.failed.store(false, Ordering::Release);
        tracing::info!("the store takes writes again");
    }

    /// Applies a write of the journal again.
    fn redo(&mut self, entry: &Entry) -> Result<(), StoreError> {
        match entry {
            Entry::Undo { queue, first, n } => {
                let seqs: Vec<Seq> = (*first..first + n).collect();
                self.store.settle(queue, &seqs)
            }
            Entry::Redo(StoreOp::Settle(queue, seqs)) => self.store.settle(queue, seqs),
            Entry::Redo(StoreOp::PutSession(s)) => self.store.put_session(s),
            Entry::Redo(StoreOp::RemoveSession(name)) => self.store.remove_session(name),
            Entry::Redo(StoreOp::Forget(queue)) => {
                self.store.drop_queue(queue)?;
                self.next_seq.remove(queue);
                Ok(())
            }
            Entry::Redo(StoreOp::Move {
                from,
                to,
                except_from,
            }) => self.move_queue(from, to, except_from).map(|_| ()),
            Entry::Redo(StoreOp::Append(_)) => Ok(()),
        }
    }

    /// Writes the appends gathered so far; returns whether anything was written.
    fn write_appends(
        &mut self,
        appends: &mut Vec<QueueAppend>,
        index: &mut HashMap<QueueId, usize>,
        pending: &mut Vec<Pending>,
    ) -> bool {
        if appends.is_empty() {
            return false;
        }
        index.clear();
        for append in appends.drain(..) {
            // Reported after the flush: confirmations, and notices that are lost if it fails.
            let report = append.waiting()
                || append
                    .entries
                    .iter()
                    .any(|e| matches!(e, StoredEntry::Notice { .. }));
            let QueueAppend {
                queue,
                entries,
                confirms,
            } = append;
            let first = self.next_seq.get(&queue).copied().unwrap_or(1).max(1);
            let r = self.store.append(&queue, first, &entries);
            match &r {
                Ok(()) => {
                    self.next_seq
                        .insert(queue.clone(), first + entries.len() as u64);
                    let n = entries.len() as u64;
                    self.journal.push(Entry::Undo {
                        queue: queue.clone(),
                        first,
                        n,
                    });
                    self.done.send(Completion::Appended {
                        queue: queue.clone(),
                        n,
                    });
                }
                Err(e) => {
                    tracing::error!(%queue, error = %e, "store append failed");
                    self.failed.store(true, Ordering::Release);
                    // Part of it may be in the store: its seqs are not used again, and a
                    // store that heals settles them.
                    let n = entries.len() as u64;
                    self.next_seq.insert(queue.clone(), first + n);
                    self.journal.push(Entry::Undo {
                        queue: queue.clone(),
                        first,
                        n,
                    });
                }
            }
            if report || r.is_err() {
                pending.push(Pending::Appended {
                    queue,
                    entries,
                    confirms,
                    result: r.map_err(|e| e.to_string()),
                });
            }
        }
        true
    }

    /// Applies one write that is not an append; returns whether it wrote.
    /// Applies one write that is not an append, and keeps it in the journal until it is
    /// durable (a failed one too: a store that heals applies it then); returns whether it
    /// wrote.
    fn apply_op(&mut self, op: StoreOp) -> bool {
        match &op {
            StoreOp::Append(_) => unreachable!("appends are gathered by the caller"),
            StoreOp::Settle(queue, seqs) => {
                if let Err(e) = self.store.settle(queue, seqs) {
                    tracing::error!(%queue, error = %e, "store settle failed");
                }
            }
            StoreOp::PutSession(s) => {
                if let Err(e) = self.store.put_session(s) {
                    tracing::error!(client = %s.name, error = %e, "cannot remember a session");
                }
            }
            StoreOp::RemoveSession(name) => {
                if let Err(e) = self.store.remove_session(name) {
                    tracing::error!(client = %name, error = %e, "cannot forget a session");
                }
            }
            StoreOp::Forget(queue) => match self.store.drop_queue(queue) {
                // Numbered anew from now on, as the store would number it when opened.
                Ok(()) => {
                    self.next_seq.remove(queue);
                }
                // The queue keeps its numbering, so later appends still follow it.
                Err(e) => tracing::error!(%queue, error = %e, "cannot drop an empty queue"),
            },
            StoreOp::Move {
                from,
                to,
                except_from,
            } => {
                let moved = self.move_queue(from, to, except_from);
                if let Err(e) = &moved {
                    tracing::error!(%from, %to, error = %e, "cannot move a backlog");
                }
                // Reported at once, in order with everything else this thread reports: the
                // core's counts follow where the entries are now (a crash before the flush
                // rebuilds them from the store anyway).
                self.done.send(Completion::Moved {
                    from: from.clone(),
                    to: to.clone(),
                    moved: moved.as_ref().ok().copied(),
                });
                if moved.is_err() {
                    // Nothing moved, as the core now counts it: nothing to redo.
                    return true;
                }
            }
        }
        self.journal.push(Entry::Redo(op));
        true
    }

    /// Appends every unsettled entry of `from` but those sent by `except_from` to `to`, and
    /// settles them in `from`; returns how many entries and bytes moved.
    fn move_queue(
        &mut self,
        from: &QueueId,
        to: &QueueId,
        except_from: &str,
    ) -> Result<(u64, u64), StoreError> {
        let mut moved = (0u64, 0u64);
        let mut cursor = 0;
        loop {
            let mut batch = self.store.read(from, cursor, 4096)?;
            let Some((last, _)) = batch.last() else { break };
            cursor = last + 1;
            batch.retain(|(_, e)| !matches!(e, StoredEntry::Message(m) if m.sender == except_from));
            if batch.is_empty() {
                continue;
            }
            let first = self.next_seq.get(to).copied().unwrap_or(1).max(1);
            let entries: Vec<StoredEntry> = batch.iter().map(|(_, e)| e.clone()).collect();
            self.store.append(to, first, &entries)?;
            self.next_seq
                .insert(to.clone(), first + entries.len() as u64);
            let seqs: Vec<Seq> = batch.iter().map(|(s, _)| *s).collect();
            self.store.settle(from, &seqs)?;
            moved.0 += entries.len() as u64;
            moved.1 += entries.iter().map(StoredEntry::size).sum::<u64>();
        }
        Ok(moved)
    }
}

/// Adds appends to the group's appends of their queues, keeping each queue's order.
fn gather(
    runs: Vec<QueueAppend>,
    appends: &mut Vec<QueueAppend>,
    index: &mut HashMap<QueueId, usize>,
) {
    for run in runs {
        match index.get(&run.queue) {
            Some(&i) => appends[i].extend(run),
            None => {
                index.insert(run.queue.clone(), appends.len());
                appends.push(run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredMessage;
    use bytes::Bytes;

    fn entry(id: String) -> StoredEntry {
        StoredEntry::Message(StoredMessage {
            id,
            sender: "alice".into(),
            channel: None,
            name: None,
            data: Bytes::from_static(b"x"),
            expires_at_ms: u64::MAX,
            redelivered: false,
        })
    }

    /// The appends the router builds for entries named `queue` + `n`, in this order.
    fn runs(items: &[(&str, u32)]) -> Vec<QueueAppend> {
        let mut runs = Vec::new();
        for (queue, n) in items {
            let queue_id = QueueId::Client((*queue).to_owned());
            QueueAppend::push_to(&mut runs, queue_id, entry(format!("{queue}{n}")), None);
        }
        runs
    }

    fn ids(a: &QueueAppend) -> Vec<String> {
        a.entries
            .iter()
            .map(|e| match e {
                StoredEntry::Message(m) => m.id.clone(),
                StoredEntry::Notice { .. } => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn consecutive_entries_to_one_queue_are_one_append() {
        let r = runs(&[("a", 0), ("a", 1), ("b", 0), ("a", 2)]);
        assert_eq!(r.len(), 3);
        assert_eq!(ids(&r[0]), ["a0", "a1"]);
        assert_eq!(ids(&r[1]), ["b0"]);
        assert_eq!(ids(&r[2]), ["a2"]);
        assert!(
            r.iter()
                .all(|a| a.confirms.len() == a.entries.len() && !a.waiting())
        );
    }

    #[test]
    fn an_append_waits_when_any_of_its_entries_has_a_confirmation() {
        let confirm = crate::core::ConfirmId::for_test(1);
        let a = || QueueId::Client("a".into());
        let mut first = runs(&[("a", 0)]);
        QueueAppend::push_to(&mut first, a(), entry("a1".into()), Some(confirm));
        let (mut appends, mut index) = (Vec::new(), HashMap::default());
        // An append without confirmations, extended by one with a confirmation: the group's
        // append for the queue waits, and the confirmation stays beside its entry.
        gather(runs(&[("a", 2)]), &mut appends, &mut index);
        gather(first, &mut appends, &mut index);
        gather(runs(&[("b", 0)]), &mut appends, &mut index);
        assert_eq!(ids(&appends[0]), ["a2", "a0", "a1"]);
        assert!(appends[0].waiting());
        assert!(appends[0].confirms[2].is_some());
        assert!(appends[0].confirms[..2].iter().all(Option::is_none));
        assert!(!appends[1].waiting());
    }

    #[test]
    fn gathering_keeps_each_queues_order_across_commands_and_interleavings() {
        let (mut appends, mut index) = (Vec::new(), HashMap::default());
        gather(
            runs(&[("a", 0), ("a", 1), ("b", 0), ("a", 2)]),
            &mut appends,
            &mut index,
        );
        gather(runs(&[("b", 1), ("a", 3)]), &mut appends, &mut index);
        assert_eq!(appends.len(), 2);
        assert_eq!(appends[0].queue, QueueId::Client("a".into()));
        assert_eq!(ids(&appends[0]), ["a0", "a1", "a2", "a3"]);
        assert_eq!(ids(&appends[1]), ["b0", "b1"]);
        assert!(appends.iter().all(|a| a.confirms.len() == a.entries.len()));
    }
}
