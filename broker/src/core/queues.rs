//! What each queue in the store holds, as counters the core keeps beside the store: how many
//! entries and bytes are unsettled, how many were decided but not yet appended, which were
//! handed out before, and the limits a new entry must stay within.

use super::State;
use super::ops::StoreOp;
use super::outlet::Outlet;
use crate::config::Config;
use crate::maps::{HashMap, HashSet};
use crate::store::{QueueId, QueueInfo, Seq, StoredEntry};

/// Counters of one queue in the store.
#[derive(Debug, Default)]
pub(super) struct QueueMeta {
    /// Unsettled entries.
    pub(super) pending: u64,
    /// Their bytes.
    pub(super) bytes: u64,
    /// Entries decided but not yet appended by the store.
    pub(super) unapplied: u64,
    /// Counts every entry decided for this queue, so a drainer can tell whether anything
    /// was decided after it asked the store for entries.
    pub(super) decided: u64,
    /// Highest sequence number handed to any connection in this broker's life (entries at or
    /// below it are marked redelivered); at start-up, everything stored before.
    pub(super) hwm: Seq,
    /// Delivery attempts of entries handed out at least once.
    pub(super) attempts: HashMap<Seq, u32>,
    /// Moves of a backlog into this queue decided and not yet applied: their entries are
    /// counted in the backlog until the store says what moved.
    pub(super) moves_in: u64,
}

impl QueueMeta {
    /// Whether the queue holds entries, or will once the store has applied what was decided.
    pub(super) fn holds_entries(&self) -> bool {
        self.pending > 0 || self.unapplied > 0 || self.moves_in > 0
    }
}

/// Every queue's counters, and the bytes of all of them.
#[derive(Debug, Default)]
pub(super) struct Queues {
    map: HashMap<QueueId, QueueMeta>,
    stored_bytes: u64,
    /// Bytes of the queues of each namespace but the default one (whose bytes are the rest
    /// of `stored_bytes`); a namespace is kept while its queues hold bytes. Counted only when
    /// they are limited (restored from the store at start).
    namespaces: Option<Namespaces>,
    /// While the store looks for expired entries: the entries settled meanwhile, which its
    /// answer may still name, and how many looks are open (they may overlap when the store
    /// is behind).
    scan: Option<HashSet<(QueueId, Seq)>>,
    scans_open: u32,
    /// Backlogs whose entries are being moved to a subscriber, with the number of moves
    /// under way: their counts are the subscribers' until the store says what moved.
    moving: HashMap<QueueId, u32>,
    /// Queues that may have been left empty since they were last looked at.
    maybe_idle: Vec<QueueId>,
}

impl Queues {
    /// The counters of the queues the store holds; with the bytes of each namespace when
    /// `per_namespace`.
    pub(super) fn restore(infos: Vec<QueueInfo>, per_namespace: bool) -> Self {
        let mut queues = Self {
            namespaces: per_namespace.then(Namespaces::default),
            ..Self::default()
        };
        for q in infos {
            queues.stored_bytes = queues.stored_bytes.saturating_add(q.bytes);
            if let Some(ns) = &mut queues.namespaces {
                ns.add(&q.queue, q.bytes);
            }
            let meta = QueueMeta {
                pending: q.pending,
                bytes: q.bytes,
                hwm: q.next_seq.saturating_sub(1),
                ..QueueMeta::default()
            };
            if q.pending == 0 {
                queues.maybe_idle.push(q.queue.clone());
            }
            queues.map.insert(q.queue, meta);
        }
        queues
    }

    /// Notes that `queue` may have been left empty.
    pub(super) fn check_idle(&mut self, queue: QueueId) {
        self.maybe_idle.push(queue);
    }

    /// Whether some queue may have been left empty since the last [`Queues::take_idle`].
    pub(super) fn may_be_idle(&self) -> bool {
        !self.maybe_idle.is_empty()
    }

    /// Removes the counters of the queues noted since the last call that hold nothing, are
    /// not being moved, and for which `keep` is false; returns them.
    pub(super) fn take_idle(&mut self, keep: impl Fn(&QueueId) -> bool) -> Vec<QueueId> {
        let mut idle = Vec::new();
        for queue in std::mem::take(&mut self.maybe_idle) {
            let empty = self
                .map
                .get(&queue)
                .is_some_and(|m| !m.holds_entries() && m.bytes == 0 && m.attempts.is_empty());
            if empty && !self.moving.contains_key(&queue) && !keep(&queue) {
                self.map.remove(&queue);
                idle.push(queue);
            }
        }
        idle
    }

    pub(super) fn get(&self, queue: &QueueId) -> Option<&QueueMeta> {
        self.map.get(queue)
    }

    pub(super) fn get_mut(&mut self, queue: &QueueId) -> Option<&mut QueueMeta> {
        self.map.get_mut(queue)
    }

    /// The counters of `queue`, made when missing (the name is copied only then).
    pub(super) fn entry(&mut self, queue: &QueueId) -> &mut QueueMeta {
        if !self.map.contains_key(queue) {
            self.map.insert(queue.clone(), QueueMeta::default());
        }
        self.map.get_mut(queue).expect("inserted above")
    }

    /// Each queue with its unsettled entries and bytes, leaving out empty ones.
    pub(super) fn counts(&self) -> Vec<(QueueId, u64, u64)> {
        self.map
            .iter()
            .filter(|(_, m)| m.pending > 0 || m.bytes > 0)
            .map(|(q, m)| (q.clone(), m.pending, m.bytes))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn pending_total(&self) -> u64 {
        self.map.values().map(|m| m.pending).sum()
    }

    pub(super) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Why an entry of `size` bytes cannot be added to `queue`, if it cannot.
    pub(super) fn full(
        &self,
        cfg: &Config,
        queue: &QueueId,
        size: u64,
        max_messages: u64,
    ) -> Option<String> {
        let (pending, bytes) = self.map.get(queue).map_or((0, 0), |m| (m.pending, m.bytes));
        // Told to the sender: the name as it knows it, without a namespace (written only
        // for a refusal: this runs for every entry queued).
        let what = || match queue {
            QueueId::Client(n) => format!("the queue of client {}", crate::namespace::shown(n)),
            QueueId::Backlog(n) => {
                format!("the backlog of channel {}", crate::namespace::shown(n))
            }
        };
        if pending >= max_messages {
            Some(format!(
                "{} holds its limit of {max_messages} messages",
                what()
            ))
        } else if bytes.saturating_add(size) > cfg.queue_max_bytes {
            Some(format!(
                "{} holds its limit of {} bytes",
                what(),
                cfg.queue_max_bytes
            ))
        } else if self.namespaces.as_ref().is_some_and(|ns| {
            ns.bytes(queue, self.stored_bytes).saturating_add(size) > cfg.namespace_max_bytes
        }) {
            Some(format!(
                "the namespace holds its limit of {} queued bytes",
                cfg.namespace_max_bytes
            ))
        } else if self.stored_bytes.saturating_add(size) > cfg.store_max_bytes {
            Some(format!(
                "the store holds its limit of {} bytes",
                cfg.store_max_bytes
            ))
        } else {
            None
        }
    }

    /// Counts an entry decided for a queue.
    pub(super) fn count_enqueued(&mut self, queue: &QueueId, entry: &StoredEntry) {
        let size = entry.size();
        self.stored_bytes += size;
        if let Some(ns) = &mut self.namespaces {
            ns.add(queue, size);
        }
        // One lookup when the queue is known; its name is copied only the first time.
        let meta = match self.map.get_mut(queue) {
            Some(meta) => meta,
            None => self.map.entry(queue.clone()).or_default(),
        };
        meta.pending += 1;
        meta.bytes += size;
        meta.unapplied += 1;
        meta.decided += 1;
    }

    /// Opens the window of a look for expired entries: entries settled from now on are
    /// remembered until [`Queues::end_scan`].
    pub(super) fn begin_scan(&mut self) {
        self.scans_open += 1;
        self.scan.get_or_insert_with(HashSet::default);
    }

    /// Closes the window of the oldest open look: the entries settled since the first look
    /// still open began (a superset of what settled during this one, which is safe to skip).
    pub(super) fn end_scan(&mut self) -> HashSet<(QueueId, Seq)> {
        self.scans_open = self.scans_open.saturating_sub(1);
        if self.scans_open == 0 {
            self.scan.take().unwrap_or_default()
        } else {
            self.scan.clone().unwrap_or_default()
        }
    }

    /// Counts an entry settled in a queue.
    pub(super) fn count_settled(&mut self, queue: &QueueId, seq: Seq, size: u64) {
        if let Some(scan) = &mut self.scan {
            scan.insert((queue.clone(), seq));
        }
        self.stored_bytes = self.stored_bytes.saturating_sub(size);
        if let Some(ns) = &mut self.namespaces {
            ns.remove(queue, size);
        }
        if let Some(meta) = self.map.get_mut(queue) {
            meta.pending = meta.pending.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(size);
            meta.attempts.remove(&seq);
            if meta.pending == 0 {
                self.maybe_idle.push(queue.clone());
            }
        }
    }

    /// Stops counting `n` entries of `bytes` decided for `queue` that the store does not
    /// keep; `appended` when their append was applied (and so no longer counted unapplied).
    pub(super) fn count_not_stored(&mut self, queue: &QueueId, n: u64, bytes: u64, appended: bool) {
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        if let Some(ns) = &mut self.namespaces {
            ns.remove(queue, bytes);
        }
        if let Some(meta) = self.map.get_mut(queue) {
            meta.pending = meta.pending.saturating_sub(n);
            meta.bytes = meta.bytes.saturating_sub(bytes);
            if !appended {
                meta.unapplied = meta.unapplied.saturating_sub(n);
            }
            self.maybe_idle.push(queue.clone());
        }
    }

    /// Notes a move of a channel's backlog into the queue `to` of a new subscriber: the
    /// entries stay counted in the backlog until the move is applied.
    pub(super) fn count_move(&mut self, backlog: &QueueId, to: &QueueId) {
        *self.moving.entry(backlog.clone()).or_insert(0) += 1;
        self.entry(to).moves_in += 1;
    }

    /// Whether the entries of `queue` are being moved elsewhere.
    pub(super) fn is_moving(&self, queue: &QueueId) -> bool {
        self.moving.contains_key(queue)
    }

    /// A move from `from` into `to` was applied (`None`: it failed): what moved is counted
    /// in `to` instead of `from`.
    pub(super) fn moved(&mut self, from: &QueueId, to: &QueueId, moved: Option<(u64, u64)>) {
        if let Some(n) = self.moving.get_mut(from) {
            *n -= 1;
            if *n == 0 {
                self.moving.remove(from);
            }
        }
        let (n, bytes) = moved.unwrap_or((0, 0));
        if let Some(meta) = self.map.get_mut(from) {
            meta.pending = meta.pending.saturating_sub(n);
            meta.bytes = meta.bytes.saturating_sub(bytes);
            self.maybe_idle.push(from.clone());
        }
        let meta = self.entry(to);
        meta.moves_in = meta.moves_in.saturating_sub(1);
        meta.pending += n;
        meta.bytes += bytes;
        meta.decided += n;
    }
}

impl<O: Outlet> State<O> {
    /// Forgets the queues left empty whose recipient is not connected: their counters here,
    /// and (through [`StoreOp::Forget`]) their record and numbering in the store.
    pub(super) fn forget_idle(&mut self) {
        if !self.queues.may_be_idle() {
            return;
        }
        let clients = &self.clients;
        let idle = self.queues.take_idle(|queue| match queue {
            QueueId::Client(name) => clients.contains_key(name.as_str()),
            QueueId::Backlog(_) => false,
        });
        self.ops.extend(idle.into_iter().map(StoreOp::Forget));
    }
}

/// Bytes queued per namespace, for all but the default one.
#[derive(Debug, Default)]
struct Namespaces {
    bytes: HashMap<Box<str>, u64>,
    /// Their sum.
    total: u64,
}

/// The namespace of a queue, `None` for the default one.
fn namespace(queue: &QueueId) -> Option<&str> {
    let (QueueId::Client(name) | QueueId::Backlog(name)) = queue;
    Some(crate::namespace::namespace_of(name)).filter(|ns| !ns.is_empty())
}

impl Namespaces {
    fn add(&mut self, queue: &QueueId, n: u64) {
        let Some(ns) = namespace(queue) else {
            return;
        };
        self.total = self.total.saturating_add(n);
        match self.bytes.get_mut(ns) {
            Some(bytes) => *bytes = bytes.saturating_add(n),
            None => {
                self.bytes.insert(ns.into(), n);
            }
        }
    }

    fn remove(&mut self, queue: &QueueId, n: u64) {
        let Some(ns) = namespace(queue) else {
            return;
        };
        self.total = self.total.saturating_sub(n);
        if let Some(bytes) = self.bytes.get_mut(ns) {
            *bytes = bytes.saturating_sub(n);
            if *bytes == 0 {
                self.bytes.remove(ns);
            }
        }
    }

    /// Bytes queued in the namespace of `queue`, out of `stored` in all.
    fn bytes(&self, queue: &QueueId, stored: u64) -> u64 {
        match namespace(queue) {
            Some(ns) => self.bytes.get(ns).copied().unwrap_or(0),
            None => stored.saturating_sub(self.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_named_as_its_sender_knows_it() {
        let cfg = Config {
            queue_max_bytes: 100,
            ..Config::default()
        };
        let queues = Queues::default();
        let bob = QueueId::Client("a\u{1f}bob".into());
        assert_eq!(queues.full(&cfg, &bob, 100, 10), None);
        assert_eq!(
            queues.full(&cfg, &bob, 101, 10).as_deref(),
            Some("the queue of client bob holds its limit of 100 bytes")
        );
        let news = QueueId::Backlog("news".into());
        assert_eq!(
            queues.full(&cfg, &news, 1, 0).as_deref(),
            Some("the backlog of channel news holds its limit of 0 messages")
        );
    }

    #[test]
    fn each_namespace_counts_its_own_bytes_and_the_default_one_the_rest() {
        let a = QueueId::Client("a\u{1f}bob".into());
        let a_backlog = QueueId::Backlog("a\u{1f}news".into());
        let b = QueueId::Client("b\u{1f}bob".into());
        let default = QueueId::Client("bob".into());
        let mut ns = Namespaces::default();
        ns.add(&a, 10);
        ns.add(&a_backlog, 5);
        ns.add(&b, 7);
        ns.add(&default, 100);
        let stored = 122;
        assert_eq!(ns.bytes(&a, stored), 15);
        assert_eq!(ns.bytes(&b, stored), 7);
        assert_eq!(ns.bytes(&default, stored), 100);
        ns.remove(&a, 10);
        ns.remove(&a_backlog, 5);
        assert!(
            !ns.bytes.contains_key("a"),
            "an empty namespace is forgotten"
        );
        assert_eq!(ns.bytes(&default, stored - 15), 100);
    }
}
