//! The benchmark message and the receiving side.
//!
//! Every message is `size` bytes (at least 16): its sequence number (`u64`, little endian),
//! the time it was made in nanoseconds since the first call in this process (`u64`, little
//! endian), then filler. Receivers count distinct sequence numbers, so that duplicates and
//! losses are counted rather than assumed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use broadcast_client::Message;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Smallest message: the sequence number and the send time.
pub const MIN_SIZE: usize = 16;

/// Nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A `size`-byte message (at least [`MIN_SIZE`]): sequence number, send time, filler.
pub fn message(seq: u64, size: usize) -> Bytes {
    let size = size.max(MIN_SIZE);
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(seq);
    b.put_u64_le(now_ns());
    b.resize(size, b'x');
    b.freeze()
}

/// The sequence number of a message, if it is long enough to have one.
pub fn seq_of(m: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(m.get(0..8)?.try_into().ok()?))
}

/// The send time of a message (see [`now_ns`]), if it is long enough to have one.
pub fn sent_at_ns(m: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(m.get(8..16)?.try_into().ok()?))
}

/// `n` per second over `d`, rounded; zero for an empty interval.
pub fn rate(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { (n as f64 / s).round() } else { 0.0 }
}

/// A set of sequence numbers below a bound, one bit each.
#[derive(Debug, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    limit: u64,
    len: u64,
}

impl SeqSet {
    /// An empty set of numbers below `limit`.
    pub fn new(limit: u64) -> Self {
        let words = usize::try_from(limit.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            bits: vec![0; words],
            limit,
            len: 0,
        }
    }

    /// Adds `seq`; true when it was not there before. Numbers at or above the limit are
    /// never added.
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq >= self.limit {
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits[word] & bit != 0 {
            return false;
        }
        self.bits[word] |= bit;
        self.len += 1;
        true
    }

    /// How many numbers are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one receiver got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Received {
    /// Distinct sequence numbers below the expected count.
    pub unique: u64,
    /// Every message, duplicates (and strays) included.
    pub total: u64,
    /// Messages marked as possibly delivered before.
    pub redelivered: u64,
    /// When the last message arrived.
    pub last: Option<Instant>,
}

impl Received {
    /// Messages received more than once (or not from this run).
    pub fn duplicates(&self) -> u64 {
        self.total - self.unique
    }
}

/// Receives from `stream` until `expect` distinct messages arrived, nothing came for `idle`,
/// the stream ended, or `deadline` passed.
pub async fn receive<S>(stream: &mut S, expect: u64, idle: Duration, deadline: Instant) -> Received
where
    S: Stream<Item = Message> + Unpin,
{
    let mut seen = SeqSet::new(expect);
    let mut r = Received::default();
    while seen.len() < expect {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = idle.min(deadline - now);
        let Ok(Some(m)) = tokio::time::timeout(wait, stream.next()).await else {
            break;
        };
        r.total += 1;
        r.redelivered += u64::from(m.redelivered);
        r.last = Some(Instant::now());
        if let Some(seq) = seq_of(&m.data) {
            seen.insert(seq);
        }
    }
    r.unique = seen.len();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_sequence_number_and_send_time() {
        let before = now_ns();
        let m = message(42, 128);
        assert_eq!(m.len(), 128);
        assert_eq!(seq_of(&m), Some(42));
        assert!(sent_at_ns(&m).unwrap() >= before);
        assert_eq!(message(1, 3).len(), MIN_SIZE);
        assert_eq!(seq_of(b"short"), None);
    }

    #[test]
    fn the_set_counts_each_number_once_and_ignores_out_of_range_ones() {
        let mut s = SeqSet::new(100);
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(99));
        assert!(!s.insert(100));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn rates_are_rounded_and_zero_for_no_time() {
        assert_eq!(rate(10, Duration::from_millis(300)), 33.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }
}
