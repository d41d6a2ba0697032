//! Bookkeeping of the receiving side of persistent messages: the batch of acknowledgements
//! waiting to be written ([`AckBatch`]), the tags handed out in manual mode ([`ManualTags`]),
//! and the window of messages already handed to the application ([`DedupWindow`]).

use crate::index::HashIndex;
use broadcast_protocol::{ClientFrame, MAX_ACK_TAGS};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Longest time an acknowledgement waits for a frame to travel with.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(5);

/// A batch of this many tags is written at once rather than after [`ACK_DELAY`]: the broker
/// hands out a bounded window of unacknowledged deliveries (4,096 by default), so waiting for
/// the delay with a quarter of it acknowledged would stall a draining queue.
const ACK_EAGER: usize = 1024;

/// Most tags [`ManualTags`] remembers per connection; beyond that, acknowledgements are passed
/// on unchecked (acknowledging an unknown tag is harmless).
const MAX_MANUAL_TAGS: usize = 1 << 20;

/// Tags waiting to be acknowledged, written in as few `Ack` frames as possible.
///
/// The batch goes out with the next write, or [`ACK_DELAY`] after its first tag at the latest:
/// [`due`](Self::due) is the deadline, set only while tags wait.
#[derive(Debug, Default)]
pub(crate) struct AckBatch {
    tags: Vec<u64>,
    due: Option<Instant>,
}

impl AckBatch {
    /// Adds a tag; true when the batch holds [`ACK_EAGER`] tags or more and should be written
    /// at once.
    #[cfg(test)]
    pub(crate) fn add(&mut self, tag: u64, now: Instant) -> bool {
        self.add_with(tag, || now)
    }

    /// As [`add`](Self::add), reading the clock only when the batch was empty.
    pub(crate) fn add_with(&mut self, tag: u64, now: impl FnOnce() -> Instant) -> bool {
        if self.tags.is_empty() {
            self.due = Some(now() + ACK_DELAY);
        }
        self.tags.push(tag);
        self.tags.len() >= ACK_EAGER
    }

    /// When the batch must be written at the latest; `None` while it is empty.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Empties the batch into `Ack` frames of at most [`MAX_ACK_TAGS`] tags each.
    pub(crate) fn take_frames(&mut self) -> Vec<ClientFrame> {
        self.due = None;
        let tags = std::mem::take(&mut self.tags);
        tags.chunks(MAX_ACK_TAGS)
            .map(|chunk| ClientFrame::Ack {
                tags: chunk.to_vec(),
            })
            .collect()
    }

    /// Forgets every tag: they belong to a connection that is gone.
    pub(crate) fn clear(&mut self) {
        self.tags.clear();
        self.due = None;
    }
}

/// In manual mode, the tags handed to the application on the current connection and not
/// acknowledged yet, so that an acknowledgement of a message from an earlier connection (whose
/// tag means nothing, or something else, to the broker now) is dropped.
#[derive(Debug, Default)]
pub(crate) struct ManualTags {
    tags: HashSet<u64>,
    /// More tags than [`MAX_MANUAL_TAGS`] were handed out on this connection: stop checking.
    overflow: bool,
}

impl ManualTags {
    /// Remembers a tag handed to the application.
    pub(crate) fn handed(&mut self, tag: u64) {
        if self.tags.len() < MAX_MANUAL_TAGS {
            self.tags.insert(tag);
        } else {
            self.overflow = true;
        }
    }

    /// Whether an acknowledgement of `tag` should go to the broker (and forgets the tag).
    pub(crate) fn acknowledge(&mut self, tag: u64) -> bool {
        self.tags.remove(&tag) || self.overflow
    }

    /// Forgets every tag: the connection is gone.
    pub(crate) fn clear(&mut self) {
        self.tags.clear();
        self.overflow = false;
    }
}

/// Writes the key of the message `id` from `sender` into `buf`: the sender's length, the
/// sender, then the id, so that no two pairs share a key.
pub(crate) fn dedup_key(buf: &mut Vec<u8>, sender: &str, id: &str) {
    buf.clear();
    buf.extend_from_slice(&(sender.len() as u64).to_le_bytes());
    buf.extend_from_slice(sender.as_bytes());
    buf.extend_from_slice(id.as_bytes());
}

/// The `(sender, id)` pairs of the latest messages handed to the application, at most
/// `capacity` of them, oldest forgotten first.
///
/// The keys (see [`dedup_key`]) sit in a ring of buffers numbered by a sequence number; the
/// buffer of the pair forgotten is reused for the pair remembered, so that a full window
/// allocates nothing. An index from the hash of each key to its number finds them.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    capacity: usize,
    /// Hash and key of pair number `n` at `ring[n % capacity]`.
    ring: Vec<(u64, Vec<u8>)>,
    /// Number of the next pair; pairs `next - ring.len()..next` are remembered.
    next: u64,
    index: HashIndex,
}

impl DedupWindow {
    /// A window of `capacity` pairs; zero keeps none, so nothing is suppressed.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Vec::new(),
            next: 0,
            index: HashIndex::default(),
        }
    }

    /// Whether the window remembers anything at all.
    pub(crate) fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.capacity as u64) as usize
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u64> {
        self.index
            .find(hash, |seq| self.ring[self.slot(seq)].1.as_slice() == key)
    }

    /// Whether the pair with this key (from [`dedup_key`]) was handed to the application
    /// recently.
    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.capacity > 0 && self.find(self.index.hash(key), key).is_some()
    }

    /// Records that the pair with this key (from [`dedup_key`]) was handed to the
    /// application.
    pub(crate) fn insert_key(&mut self, key: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let hash = self.index.hash(key);
        if self.find(hash, key).is_some() {
            return;
        }
        let seq = self.next;
        self.next += 1;
        if self.ring.len() < self.capacity {
            self.ring.push((hash, key.to_vec()));
        } else {
            let slot = self.slot(seq);
            // This slot holds the oldest pair, number `seq - capacity`.
            let (old, buf) = &mut self.ring[slot];
            self.index.remove(*old, seq - self.capacity as u64);
            *old = hash;
            buf.clear();
            buf.extend_from_slice(key);
        }
        self.index.insert(hash, seq);
    }

    /// Whether the message `id` from `sender` was handed to the application recently.
    #[cfg(test)]
    fn contains(&self, sender: &str, id: &str) -> bool {
        let mut key = Vec::new();
        dedup_key(&mut key, sender, id);
        self.contains_key(&key)
    }

    /// Records that the message `id` from `sender` was handed to the application.
    #[cfg(test)]
    fn insert(&mut self, sender: &str, id: &str) {
        let mut key = Vec::new();
        dedup_key(&mut key, sender, id);
        self.insert_key(&key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_remembers_the_latest_pairs_only() {
        let mut window = DedupWindow::new(2);
        window.insert("alice", "m1");
        window.insert("bob", "m1");
        assert!(window.contains("alice", "m1"));
        assert!(window.contains("bob", "m1"));
        assert!(!window.contains("alice", "m2"));
        assert!(
            !window.contains("carol", "m1"),
            "pairs, not ids, are compared"
        );

        window.insert("alice", "m1");
        assert_eq!(window.len(), 2, "a pair already known is not added twice");

        window.insert("alice", "m2");
        assert!(
            !window.contains("alice", "m1"),
            "the oldest pair is forgotten"
        );
        assert!(window.contains("bob", "m1"));
        assert!(window.contains("alice", "m2"));
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn a_full_window_keeps_forgetting_the_oldest_pair() {
        let mut window = DedupWindow::new(3);
        for i in 0..100 {
            window.insert("alice", &format!("m{i}"));
            assert!(window.contains("alice", &format!("m{i}")));
            if i >= 3 {
                assert!(!window.contains("alice", &format!("m{}", i - 3)));
                assert!(window.contains("alice", &format!("m{}", i - 2)));
            }
            assert!(window.len() <= 3);
        }
        assert!(
            !window.contains("alic", "em99"),
            "the sender and the id are kept apart"
        );
    }

    #[test]
    fn an_empty_window_suppresses_nothing() {
        let mut window = DedupWindow::new(0);
        window.insert("alice", "m1");
        assert!(!window.contains("alice", "m1"));
        assert_eq!(window.len(), 0);
    }

    #[test]
    fn a_batch_is_due_a_short_delay_after_its_first_tag() {
        let mut batch = AckBatch::default();
        assert_eq!(batch.due(), None);
        assert!(batch.is_empty());
        let t0 = Instant::now();
        assert!(!batch.add(7, t0));
        assert!(!batch.add(8, t0 + Duration::from_millis(3)));
        assert_eq!(
            batch.due(),
            Some(t0 + ACK_DELAY),
            "later tags keep the deadline"
        );
        assert_eq!(
            batch.take_frames(),
            vec![ClientFrame::Ack { tags: vec![7, 8] }]
        );
        assert_eq!(batch.due(), None);
        assert!(batch.is_empty());
        assert!(
            batch.take_frames().is_empty(),
            "an empty batch writes nothing"
        );
    }

    #[test]
    fn a_batch_of_a_quarter_window_asks_to_be_written_and_frames_hold_at_most_the_limit() {
        let mut batch = AckBatch::default();
        let now = Instant::now();
        let eager = u64::try_from(ACK_EAGER).unwrap();
        for tag in 0..eager - 1 {
            assert!(!batch.add(tag, now));
        }
        assert!(batch.add(eager - 1, now), "the batch is large enough to go");
        // A batch not written at once (say, while the connection is down) still splits into
        // frames within the protocol's limit.
        let n = u64::try_from(MAX_ACK_TAGS).unwrap();
        for tag in eager..=n {
            batch.add(tag, now);
        }
        let frames = batch.take_frames();
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| match f {
                ClientFrame::Ack { tags } => tags.len(),
                other => panic!("not an Ack: {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [MAX_ACK_TAGS, 1]);
    }

    #[test]
    fn clearing_a_batch_disarms_it() {
        let mut batch = AckBatch::default();
        batch.add(1, Instant::now());
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.due(), None);
    }

    #[test]
    fn manual_acks_of_unknown_tags_are_dropped() {
        let mut tags = ManualTags::default();
        tags.handed(3);
        assert!(!tags.acknowledge(4));
        assert!(tags.acknowledge(3));
        assert!(!tags.acknowledge(3), "each tag is acknowledged once");
        tags.handed(5);
        tags.clear();
        assert!(
            !tags.acknowledge(5),
            "tags of a lost connection are forgotten"
        );
    }
}
