//! [`MemoryStore`]: the same semantics as [`super::SledStore`], kept in memory.

use super::{
    QueueId, QueueInfo, QueueStore, Seq, Session, StoreError, StoredEntry, append_end, from_cursor,
};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// A [`QueueStore`] that keeps everything in memory; [`QueueStore::flush`] does nothing and
/// everything is lost when it is dropped. For tests, and for brokers that need no durability.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queues: BTreeMap<QueueId, Queue>,
    sessions: BTreeMap<String, Session>,
}

#[derive(Debug, Default)]
struct Queue {
    next_seq: Seq,
    /// Unsettled entries.
    entries: BTreeMap<Seq, StoredEntry>,
    /// Sum of their sizes.
    bytes: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // Every update is complete before the lock is released unless a panic interrupted it;
        // refuse to answer from a state a panic may have left half-updated.
        self.state
            .lock()
            .map_err(|_| StoreError::Io("the memory store was poisoned by a panic".to_owned()))
    }
}

impl QueueStore for MemoryStore {
    fn append(
        &self,
        queue: &QueueId,
        first_seq: Seq,
        entries: &[StoredEntry],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut state = self.state()?;
        let next_seq = state.queues.get(queue).map_or(0, |q| q.next_seq);
        let next_seq = append_end(queue, next_seq, first_seq, entries.len())?;
        let q = state.queues.entry(queue.clone()).or_default();
        q.next_seq = next_seq;
        for (seq, entry) in (first_seq..).zip(entries) {
            q.bytes += entry.size();
            q.entries.insert(seq, entry.clone());
        }
        Ok(())
    }

    fn settle(&self, queue: &QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if let Some(q) = state.queues.get_mut(queue) {
            for seq in seqs {
                if let Some(entry) = q.entries.remove(seq) {
                    q.bytes -= entry.size();
                }
            }
        }
        Ok(())
    }

    fn read(
        &self,
        queue: &QueueId,
        from: Seq,
        max: usize,
    ) -> Result<Vec<(Seq, StoredEntry)>, StoreError> {
        let state = self.state()?;
        Ok(state.queues.get(queue).map_or_else(Vec::new, |q| {
            q.entries
                .range(from..)
                .take(max)
                .map(|(&seq, entry)| (seq, entry.clone()))
                .collect()
        }))
    }

    fn expired(
        &self,
        now_ms: u64,
        after: Option<&(QueueId, Seq)>,
        max: usize,
    ) -> Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError> {
        let state = self.state()?;
        Ok(from_cursor(&state.queues, after)
            .flat_map(|(queue, q, from)| {
                q.entries
                    .range(from..)
                    .filter(move |(_, entry)| entry.expires_at_ms() <= now_ms)
                    .map(move |(&seq, entry)| (queue.clone(), seq, entry.clone()))
            })
            .take(max)
            .collect())
    }

    fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let state = self.state()?;
        Ok(state
            .queues
            .iter()
            .map(|(queue, q)| QueueInfo {
                queue: queue.clone(),
                next_seq: q.next_seq,
                pending: q.entries.len() as u64,
                bytes: q.bytes,
            })
            .collect())
    }

    fn drop_queue(&self, queue: &QueueId) -> Result<(), StoreError> {
        self.state()?.queues.remove(queue);
        Ok(())
    }

    fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.state()?
            .sessions
            .insert(session.name.clone(), session.clone());
        Ok(())
    }

    fn remove_session(&self, name: &str) -> Result<(), StoreError> {
        self.state()?.sessions.remove(name);
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        Ok(self.state()?.sessions.values().cloned().collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
