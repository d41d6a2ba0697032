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

/// One entry to append; the store thread assigns its sequence number.
pub(crate) struct AppendItem {
    pub(crate) queue: QueueId,
    pub(crate) entry: StoredEntry,
    /// The confirmation of a persistent message waiting for this write, if any: settled
    /// once the write is durable; on failure the message's sender is told first.
    pub(crate) confirm: Option<Arc<Confirm>>,
}

pub(crate) enum Command {
    Append(Vec<AppendItem>),
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
        for QueueAppend {
            queue,
            entries,
            confirms,
            waiting,
        } in appends.drain(..)
        {
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

/// What a group appends to one queue.
struct QueueAppend {
    queue: QueueId,
    entries: Vec<StoredEntry>,
    /// One per entry: the confirmation waiting for it, if any.
    confirms: Vec<Option<Arc<Confirm>>>,
    /// Whether any entry has a confirmation.
    waiting: bool,
}

/// Adds items to the appends of their queues.
fn gather(
    items: Vec<AppendItem>,
    appends: &mut Vec<QueueAppend>,
    index: &mut HashMap<QueueId, usize>,
) {
    // A command whose items all go to one queue (the usual case: a run of messages to one
    // recipient) reserves room for all of them at once, rather than growing and copying; one
    // spread over many queues reserves nothing (reserving its length per queue would be
    // quadratic).
    let single = items
        .split_first()
        .is_some_and(|(first, rest)| rest.iter().all(|i| i.queue == first.queue));
    let n = items.len();
    // Consecutive items to one queue find it with one lookup.
    let mut last: Option<usize> = None;
    for AppendItem {
        queue,
        entry,
        confirm,
    } in items
    {
        let i = match last {
            Some(i) if appends[i].queue == queue => i,
            _ => match index.get(&queue) {
                Some(&i) => i,
                None => {
                    index.insert(queue.clone(), appends.len());
                    appends.push(QueueAppend {
                        queue,
                        entries: Vec::new(),
                        confirms: Vec::new(),
                        waiting: false,
                    });
                    appends.len() - 1
                }
            },
        };
        last = Some(i);
        let a = &mut appends[i];
        if single && a.entries.len() == a.entries.capacity() {
            a.entries.reserve(n);
            a.confirms.reserve(n);
        }
        a.waiting |= confirm.is_some();
        a.entries.push(entry);
        a.confirms.push(confirm);
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

    fn item(queue: &str) -> AppendItem {
        AppendItem {
            queue: QueueId::Client(queue.to_owned()),
            entry: StoredEntry::Message(StoredMessage {
                id: "m".into(),
                sender: "alice".into(),
                channel: None,
                name: None,
                data: Bytes::from_static(b"x"),
                expires_at_ms: u64::MAX,
                redelivered: false,
            }),
            confirm: None,
        }
    }

    #[test]
    fn gathering_keeps_each_queues_order_across_commands_and_interleavings() {
        let id = |e: &StoredEntry| match e {
            StoredEntry::Message(m) => m.id.clone(),
            StoredEntry::Notice { .. } => unreachable!(),
        };
        let named = |queue: &str, n: u32| {
            let mut it = item(queue);
            if let StoredEntry::Message(m) = &mut it.entry {
                m.id = format!("{queue}{n}");
            }
            it
        };
        let (mut appends, mut index) = (Vec::new(), HashMap::default());
        gather(
            vec![named("a", 0), named("a", 1), named("b", 0), named("a", 2)],
            &mut appends,
            &mut index,
        );
        gather(vec![named("b", 1), named("a", 3)], &mut appends, &mut index);
        let ids: Vec<(String, Vec<String>)> = appends
            .iter()
            .map(|a| (a.queue.to_string(), a.entries.iter().map(id).collect()))
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].1, ["a0", "a1", "a2", "a3"]);
        assert_eq!(ids[1].1, ["b0", "b1"]);
        assert!(appends.iter().all(|a| a.confirms.len() == a.entries.len()));
        assert!(appends.iter().all(|a| !a.waiting));
    }

    #[test]
    fn gathering_reserves_room_for_a_run_to_one_queue_but_not_per_queue_of_a_spread() {
        let (mut appends, mut index) = (Vec::new(), HashMap::default());
        gather(
            (0..100).map(|_| item("bob")).collect(),
            &mut appends,
            &mut index,
        );
        assert_eq!(appends.len(), 1);
        assert_eq!(appends[0].entries.len(), 100);
        assert_eq!(appends[0].confirms.len(), 100);

        let (mut appends, mut index) = (Vec::new(), HashMap::default());
        let spread: Vec<AppendItem> = (0..1000).map(|i| item(&format!("r{i}"))).collect();
        gather(spread, &mut appends, &mut index);
        assert_eq!(appends.len(), 1000);
        // Reserving the command's length for each of its queues would hold a million entries.
        let room: usize = appends.iter().map(|a| a.entries.capacity()).sum();
        assert!(room < 10_000, "{room} entries reserved for 1,000 items");
        // Items keep their order within each queue.
        assert!(
            appends
                .iter()
                .enumerate()
                .all(|(i, a)| a.queue == QueueId::Client(format!("r{i}")))
        );
    }
}
