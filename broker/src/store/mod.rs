//! The message store: per-recipient queues of messages and notices that wait for a recipient,
//! and the sessions of clients that are away.
//!
//! [`QueueStore`] is the interface the broker uses; [`SledStore`] keeps everything on disk and
//! [`MemoryStore`] keeps it in memory (for tests and for brokers that need no durability).
//!
//! Every queue is a sequence of entries numbered by a [`Seq`] that the caller assigns and that
//! only grows. Entries are appended, read back in seq order, and settled (acknowledged, expired
//! or given up) one by one; settled entries are never returned again.

mod codec;
mod compact;
mod durable;
mod memory;
mod segment;
mod sled;

#[cfg(test)]
mod tests;

pub use self::durable::SyncMode;
pub use self::memory::MemoryStore;
pub use self::sled::{SledOptions, SledStore};

use broadcast_protocol::{DeliveryFailed, Recipient};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Position of an entry in its queue. Assigned by the caller; strictly increasing per queue.
pub type Seq = u64;

/// Which queue an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueId {
    /// A client's queue, by client name.
    Client(String),
    /// A channel's backlog, by channel name: messages sent to a channel with no subscriber at
    /// all.
    Backlog(String),
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueId::Client(name) => write!(f, "queue of client {name:?}"),
            QueueId::Backlog(name) => write!(f, "backlog of channel {name:?}"),
        }
    }
}

/// A message waiting in a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The sender's id for the message.
    pub id: String,
    /// Name of the sending client.
    pub sender: String,
    /// Channel the message is delivered through, if any.
    pub channel: Option<String>,
    /// The sender's event name.
    pub name: Option<String>,
    /// The payload.
    #[serde(deserialize_with = "payload")]
    pub data: Bytes,
    /// When the message stops waiting, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// True when the recipient may have been handed the message before.
    pub redelivered: bool,
}

/// Reads a payload by borrowing it from the stored value and copying it once, instead of
/// decoding it into a zeroed vector first (the encoding is the same).
fn payload<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    struct Payload;
    impl<'de> serde::de::Visitor<'de> for Payload {
        type Value = Bytes;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
    }
    d.deserialize_bytes(Payload)
}

/// One entry of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEntry {
    /// A message for the queue's recipient.
    Message(StoredMessage),
    /// A delivery-failed notice for the queue's client, about one of its own messages.
    Notice {
        /// The notice.
        notice: DeliveryFailed,
        /// When the notice stops waiting, in milliseconds since the Unix epoch.
        expires_at_ms: u64,
    },
}

impl StoredEntry {
    /// When the entry stops waiting, in milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        match self {
            StoredEntry::Message(m) => m.expires_at_ms,
            StoredEntry::Notice { expires_at_ms, .. } => *expires_at_ms,
        }
    }

    /// Approximate size in bytes: the payload plus the strings. Used to bound queues, not to
    /// account for the exact space taken on disk.
    pub fn size(&self) -> u64 {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let bytes = match self {
            StoredEntry::Message(m) => {
                m.data.len() + m.id.len() + m.sender.len() + opt(&m.channel) + opt(&m.name)
            }
            StoredEntry::Notice { notice, .. } => {
                let recipient = match &notice.recipient {
                    Recipient::Client(name) | Recipient::Channel(name) => name.len(),
                    Recipient::All => 0,
                };
                notice.id.len() + notice.detail.len() + recipient
            }
        };
        bytes as u64
    }
}

/// What the broker remembers of a client that is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The client's name.
    pub name: String,
    /// The channels the client is subscribed to.
    pub channels: Vec<String>,
    /// When the client was last connected, in milliseconds since the Unix epoch;
    /// [`Session::CONNECTED`] while it is connected.
    pub last_seen_ms: u64,
}

impl Session {
    /// The `last_seen_ms` of a client that is connected: a session found with it when the
    /// store opens belonged to a client connected when the broker stopped without saying so
    /// (a crash), and counts as last seen when the broker started again.
    pub const CONNECTED: u64 = u64::MAX;
}

/// The state of one queue, as [`QueueStore::queues`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue.
    pub queue: QueueId,
    /// One more than the highest seq ever appended to the queue.
    pub next_seq: Seq,
    /// How many entries are not settled.
    pub pending: u64,
    /// Sum of [`StoredEntry::size`] over the entries that are not settled.
    pub bytes: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store in a directory cannot be opened: it is locked by another open store, cannot
    /// be read, or its contents are not valid.
    #[error("cannot open the message store in {}: {reason}", path.display())]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the store failed.
    #[error("message store I/O failed: {0}")]
    Io(String),
    /// Data read from the store is not valid.
    #[error("message store data is corrupt: {0}")]
    Corrupt(String),
    /// An entry could not be encoded.
    #[error("cannot encode a store entry: {0}")]
    Encode(String),
    /// An append starts below the queue's next seq, or its seqs would overflow.
    #[error("cannot append seqs from {first_seq} to the {queue}: its next seq is {next_seq}")]
    SeqOrder {
        /// The queue.
        queue: QueueId,
        /// The first seq of the append.
        first_seq: Seq,
        /// The queue's next seq.
        next_seq: Seq,
    },
}

/// Storage of queues and sessions.
///
/// Synchronous: called from one dedicated thread (never from async code), so implementations
/// may block.
///
/// Orders are fixed so that every implementation answers alike: queues in [`QueueId`] order
/// (clients, then backlogs, each by name), entries of a queue in seq order.
pub trait QueueStore: Send + Sync + 'static {
    /// Appends `entries` to `queue` with seqs `first_seq`, `first_seq + 1`, ...
    ///
    /// `first_seq` must be at least the queue's next seq (callers assign seqs and may skip
    /// numbers). Appending no entries does nothing. Not durable until [`flush`](Self::flush).
    ///
    /// # Errors
    /// [`StoreError::SeqOrder`] when `first_seq` is below the queue's next seq; otherwise
    /// storage failures.
    fn append(
        &self,
        queue: &QueueId,
        first_seq: Seq,
        entries: &[StoredEntry],
    ) -> Result<(), StoreError>;

    /// Marks seqs settled (acknowledged, expired or given up). Idempotent; unknown seqs and
    /// unknown queues are ignored. Not durable until [`flush`](Self::flush).
    ///
    /// # Errors
    /// Storage failures.
    fn settle(&self, queue: &QueueId, seqs: &[Seq]) -> Result<(), StoreError>;

    /// Unsettled entries of `queue` with seq at least `from`, in seq order, at most `max`.
    ///
    /// # Errors
    /// Storage failures, [`StoreError::Corrupt`] for entries that cannot be decoded.
    fn read(
        &self,
        queue: &QueueId,
        from: Seq,
        max: usize,
    ) -> Result<Vec<(Seq, StoredEntry)>, StoreError>;

    /// Unsettled entries of any queue whose `expires_at_ms` is at most `now_ms`, at most `max`,
    /// in queue order then seq order, from the start or only those that come after `after`
    /// in that order. Does not settle them.
    ///
    /// # Errors
    /// Storage failures, [`StoreError::Corrupt`] for entries that cannot be decoded.
    fn expired(
        &self,
        now_ms: u64,
        after: Option<&(QueueId, Seq)>,
        max: usize,
    ) -> Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError>;

    /// Every queue that has ever been appended to and not dropped, in queue order, with its
    /// next seq, unsettled count and bytes. The next seq is one more than the highest seq ever
    /// appended: it never goes backwards, also across reopening, even when every entry is
    /// settled.
    ///
    /// # Errors
    /// Storage failures.
    fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;

    /// Removes a queue, all its entries and its next seq. Not durable until
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    /// Storage failures.
    fn drop_queue(&self, queue: &QueueId) -> Result<(), StoreError>;

    /// Inserts a session, or replaces the one with the same name. Not durable until
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    /// Storage failures.
    fn put_session(&self, session: &Session) -> Result<(), StoreError>;

    /// Removes the session with this name, if there is one. Not durable until
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    /// Storage failures.
    fn remove_session(&self, name: &str) -> Result<(), StoreError>;

    /// Every session, by name.
    ///
    /// # Errors
    /// Storage failures, [`StoreError::Corrupt`] for sessions that cannot be decoded.
    fn sessions(&self) -> Result<Vec<Session>, StoreError>;

    /// Makes everything done before durable. Blocks until the data is on disk.
    ///
    /// # Errors
    /// Storage failures.
    fn flush(&self) -> Result<(), StoreError>;

    /// Checks, without writing, that what the store takes can still be made durable (for a
    /// store on disk: that its directory is still the one it opened). The broker calls it
    /// when it has not flushed for a while.
    ///
    /// # Errors
    /// Why the store can no longer make writes durable.
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Tries to make a store that failed take writes again, as it was made durable last:
    /// writes taken and not flushed before the failure may be gone (the broker applies them
    /// again). The broker asks about once a second while the store is failed.
    ///
    /// # Errors
    /// Why the store still cannot take writes.
    fn heal(&self) -> Result<(), StoreError> {
        self.check()?;
        self.flush()
    }

    /// Bytes the store takes on disk, when it is on disk and they can be told.
    fn size_on_disk(&self) -> Option<u64> {
        None
    }
}

/// The queues of `queues` from the queue of `after` on (all without it), each with the least
/// seq wanted from it.
fn from_cursor<'a, V>(
    queues: &'a std::collections::BTreeMap<QueueId, V>,
    after: Option<&(QueueId, Seq)>,
) -> impl Iterator<Item = (&'a QueueId, &'a V, Seq)> + 'a {
    use std::ops::Bound;
    let start = after.map_or(Bound::Unbounded, |(q, _)| Bound::Included(q.clone()));
    let after = after.cloned();
    queues
        .range((start, Bound::Unbounded))
        .filter_map(move |(queue, v)| match &after {
            Some((q, seq)) if q == queue => Some((queue, v, seq.checked_add(1)?)),
            _ => Some((queue, v, 0)),
        })
}

/// Seqs of an append: `first_seq..first_seq + len`, checked against the queue's next seq.
/// Returns the queue's next seq after the append.
fn append_end(
    queue: &QueueId,
    next_seq: Seq,
    first_seq: Seq,
    len: usize,
) -> Result<Seq, StoreError> {
    let order = || StoreError::SeqOrder {
        queue: queue.clone(),
        first_seq,
        next_seq,
    };
    if first_seq < next_seq {
        return Err(order());
    }
    first_seq.checked_add(len as u64).ok_or_else(order)
}
