//! The store's own thread: every store operation runs there and writes are grouped; the flush
//! thread ([`crate::flusher`]) makes each group durable before any of its writes is reported
//! done, while the store thread applies the next group.
//!
//! Async code talks to it through [`Persist`], a bounded channel. Callers that must keep an
//! order between their decision and the store (the router assigns work to queues under its
//! lock) reserve a slot first and send under the lock without waiting.

use crate::confirm::Confirm;
use crate::flusher::{Flusher, Pending};
use crate::maps::HashMap;
use crate::store::{QueueId, QueueInfo, QueueStore, Seq, Session, StoreError, StoredEntry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the store thread at most; senders wait beyond that.
const CHANNEL: usize = 16 * 1024;

/// Commands applied together before one flush.
const GROUP: usize = 8 * 1024;

/// Called on the flush thread once a write is durable (or failed).
pub(crate) type Done = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// Called on the flush thread when a write of a persistent message that its sender waits for
/// has failed, with the queue and the entry: the sender must be told.
pub(crate) type OnFailed = Arc<dyn Fn(&QueueId, &StoredEntry, &StoreError) + Send + Sync>;

/// Called on the store thread after entries were appended to a queue (before the flush), so a
/// connected recipient's drainer can read them.
pub(crate) type OnAppended = Arc<dyn Fn(&QueueId, u64) + Send + Sync>;

/// Called on the flush thread once a move between queues is durable, with the entries and
/// bytes moved.
pub(crate) type Moved = Box<dyn FnOnce(Result<(u64, u64), &StoreError>) + Send>;

/// Answer to a look for expired entries.
pub(crate) type ExpiredReply =
    oneshot::Sender<Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError>>;

/// Entries to append to one queue, in order; the store thread assigns their sequence numbers.
/// The router builds one per run of consecutive entries to a queue, so an entry carries no
/// queue of its own.
pub(crate) struct QueueAppend {
    pub(crate) queue: QueueId,
    pub(crate) entries: Vec<StoredEntry>,
    /// One per entry: the confirmation of the persistent message waiting for its write, if
    /// any, settled once the write is durable (on failure the message's sender is told first).
    pub(crate) confirms: Vec<Option<Arc<Confirm>>>,
}

impl QueueAppend {
    /// An append of one entry.
    pub(crate) fn new(queue: QueueId, entry: StoredEntry, confirm: Option<Arc<Confirm>>) -> Self {
        Self {
            queue,
            entries: vec![entry],
            confirms: vec![confirm],
        }
    }

    /// Adds an entry after the others.
    pub(crate) fn push(&mut self, entry: StoredEntry, confirm: Option<Arc<Confirm>>) {
        self.entries.push(entry);
        self.confirms.push(confirm);
    }

    /// Adds `entry` to the last append of `appends` when that is to `queue`, else starts one.
    pub(crate) fn push_to(
        appends: &mut Vec<QueueAppend>,
        queue: QueueId,
        entry: StoredEntry,
        confirm: Option<Arc<Confirm>>,
    ) {
        match appends.last_mut() {
            Some(last) if last.queue == queue => last.push(entry, confirm),
            _ => appends.push(QueueAppend::new(queue, entry, confirm)),
        }
    }

    /// Whether any entry has a confirmation waiting for the write.
    fn waiting(&self) -> bool {
        self.confirms.iter().any(Option::is_some)
    }

    fn extend(&mut self, other: QueueAppend) {
        self.entries.extend(other.entries);
        self.confirms.extend(other.confirms);
    }
}

pub(crate) enum Command {
    Append(Vec<QueueAppend>),
    Settle(QueueId, Vec<Seq>),
    Read {
        queue: QueueId,
        from: Seq,
        max: usize,
        reply: oneshot::Sender<Result<Vec<(Seq, StoredEntry)>, StoreError>>,
    },
    Expired {
        now_ms: u64,
        max: usize,
        reply: ExpiredReply,
    },
    PutSession(Session, Option<Done>),
    RemoveSession(String, Option<Done>),
    /// Moves every unsettled entry of one queue to the end of another.
    Move {
        from: QueueId,
        to: QueueId,
        done: Moved,
    },
    /// Several commands that must be applied in this order, sent through one slot.
    Batch(Vec<Command>),
    /// Flushes, closes the store and stops the thread, then answers.
    Shutdown(oneshot::Sender<()>),
}

/// Handle on the store thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Persist {
    tx: mpsc::Sender<Command>,
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist")
            .field("failed", &self.is_failed())
            .finish()
    }
}

/// A reserved slot in the store thread's channel.
pub(crate) type Slot = mpsc::OwnedPermit<Command>;

impl Persist {
    /// Starts the store thread over an opened store.
    pub(crate) fn start(
        store: Arc<dyn QueueStore>,
        on_appended: OnAppended,
        on_failed: OnFailed,
    ) -> Result<Self, StoreError> {
        let next_seq = store
            .queues()?
            .into_iter()
            .map(
                |QueueInfo {
                     queue, next_seq, ..
                 }| (queue, next_seq),
            )
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let failed = Arc::new(AtomicBool::new(false));
        let flusher = Flusher::start(store.clone(), failed.clone(), on_failed)?;
        let worker = Worker {
            store,
            flusher,
            rx,
            next_seq,
            on_appended,
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("broadcast-store".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        Ok(Self { tx, failed })
    }

    /// True once a write or flush has failed: the store takes no more persistent messages.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
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

    /// Sends a command from code that cannot wait: at once when there is room, otherwise from
    /// a task of `rt` that waits for room.
    pub(crate) fn send_detached(&self, cmd: Command, rt: &tokio::runtime::Handle) {
        match self.tx.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the store thread has stopped");
            }
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

    /// Unsettled entries whose time to live has run out.
    pub(crate) async fn expired(
        &self,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Expired { now_ms, max, reply }).await;
        rx.await
            .map_err(|_| StoreError::Io("the store thread has stopped".into()))?
    }

    /// Flushes, closes the store and stops the store thread.
    pub(crate) async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown(reply)).await;
        let _ = rx.await;
    }
}

struct Worker {
    store: Arc<dyn QueueStore>,
    flusher: Flusher,
    rx: mpsc::Receiver<Command>,
    next_seq: HashMap<QueueId, Seq>,
    on_appended: OnAppended,
    failed: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
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
            self.apply(&mut group);
            if stop.is_some() {
                break;
            }
        }
        // Everything handed to the flush thread is flushed and reported before it stops.
        self.flusher.stop();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
        // Close the store before answering, so that it can be opened again at once.
        drop(self);
        if let Some(reply) = stop {
            let _ = reply.send(());
        }
    }

    fn apply(&mut self, group: &mut Vec<Command>) {
        let mut pending = Vec::new();
        let mut wrote = false;
        // Appends of the whole group are gathered per queue, so that each queue gets one
        // append (a few segments) per group whatever the number of messages.
        let mut appends: Vec<QueueAppend> = Vec::new();
        let mut index: HashMap<QueueId, usize> = HashMap::default();
        for cmd in group.drain(..) {
            match cmd {
                Command::Append(items) => gather(items, &mut appends, &mut index),
                other => {
                    // Keep the order between appends and everything else.
                    wrote |= self.flush_appends(&mut appends, &mut index, &mut pending);
                    wrote |= self.apply_one(other, &mut pending);
                }
            }
        }
        wrote |= self.flush_appends(&mut appends, &mut index, &mut pending);
        self.flusher.submit(wrote, pending);
        release_retired();
    }

    fn flush_appends(
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
            let waiting = append.waiting();
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
                    (self.on_appended)(&queue, entries.len() as u64);
                }
                Err(e) => {
                    tracing::error!(%queue, error = %e, "store append failed");
                    self.failed.store(true, Ordering::Release);
                }
            }
            if waiting {
                pending.push(Pending::Appended {
                    queue,
                    entries,
                    confirms,
                    result: r.map_err(|e| clone_err(&e)),
                });
            }
        }
        true
    }

    fn apply_one(&mut self, cmd: Command, pending: &mut Vec<Pending>) -> bool {
        match cmd {
            Command::Append(_) => unreachable!("appends are gathered by the caller"),
            Command::Settle(queue, seqs) => {
                if let Err(e) = self.store.settle(&queue, &seqs) {
                    tracing::error!(%queue, error = %e, "store settle failed");
                }
                true
            }
            Command::Read {
                queue,
                from,
                max,
                reply,
            } => {
                let _ = reply.send(self.store.read(&queue, from, max));
                false
            }
            Command::Expired { now_ms, max, reply } => {
                let _ = reply.send(self.store.expired(now_ms, max));
                false
            }
            Command::PutSession(s, done) => {
                let r = self.store.put_session(&s);
                if let Some(done) = done {
                    pending.push(Pending::Done(done, r));
                }
                true
            }
            Command::RemoveSession(name, done) => {
                let r = self.store.remove_session(&name);
                if let Some(done) = done {
                    pending.push(Pending::Done(done, r));
                }
                true
            }
            Command::Move { from, to, done } => {
                let r = self.move_queue(&from, &to);
                pending.push(Pending::Moved(done, r));
                true
            }
            Command::Batch(cmds) => {
                let mut wrote = false;
                let mut appends = Vec::new();
                let mut index = HashMap::default();
                for cmd in cmds {
                    match cmd {
                        Command::Append(items) => {
                            gather(items, &mut appends, &mut index);
                            wrote |= self.flush_appends(&mut appends, &mut index, pending);
                        }
                        other => wrote |= self.apply_one(other, pending),
                    }
                }
                wrote
            }
            Command::Shutdown(_) => unreachable!("shutdown is taken out of the group first"),
        }
    }

    /// Appends every unsettled entry of `from` to `to` and settles them in `from`; returns
    /// how many entries and bytes moved.
    fn move_queue(&mut self, from: &QueueId, to: &QueueId) -> Result<(u64, u64), StoreError> {
        let mut moved = (0u64, 0u64);
        let mut cursor = 0;
        loop {
            let batch = self.store.read(from, cursor, 4096)?;
            let Some((last, _)) = batch.last() else { break };
            cursor = last + 1;
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
        if moved.0 > 0 {
            (self.on_appended)(to, moved.0);
        }
        Ok(moved)
    }
}

/// Hands what sled retired on this thread (old log buffers of 512 KiB, old tree nodes) to
/// its epoch collector now, rather than once 64 of them have piled up: sled frees them through
/// crossbeam's default collector, and a thread that keeps writing otherwise holds dozens of
/// them (an offline queue of 100,000 messages: peak memory 69 MB, 49 MB with this).
pub(crate) fn release_retired() {
    crossbeam_epoch::pin().flush();
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

fn clone_err(e: &StoreError) -> StoreError {
    StoreError::Io(e.to_string())
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
        let (out, _rx) = crate::outbound::Outbound::new(
            1,
            8,
            1 << 20,
            1 << 20,
            tokio_util::sync::CancellationToken::new(),
        );
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let confirm = Confirm::new("a1", out, permit);
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
