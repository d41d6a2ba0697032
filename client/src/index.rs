//! [`HashIndex`]: finds entries kept elsewhere (by a sequence number) from a hash of their key,
//! without owning a copy of the key.
//!
//! The owner keeps its entries where a sequence number finds them, and compares keys itself:
//! the index maps the hash of a key to the sequence numbers of the entries whose key has that
//! hash, oldest first. One entry per hash is the usual case and allocates nothing; several
//! (equal keys, or the rare collision) are kept in a side list.

use foldhash::fast::RandomState;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// A hasher for keys that are already hashes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; this keeps the hasher correct for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PassThroughMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// Sequence numbers by key hash; see the [module documentation](self).
///
/// The oldest sequence number of each hash is in `first`, a map of small entries; the later
/// ones, rare, in `more`.
#[derive(Debug, Default)]
pub(crate) struct HashIndex {
    first: PassThroughMap<u64>,
    more: PassThroughMap<VecDeque<u64>>,
    hasher: RandomState,
}

impl HashIndex {
    /// The hash of `key` (foldhash, seeded at random per index, so that keys cannot be chosen
    /// to collide).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Adds `seq` after every sequence number already there for `hash`.
    pub(crate) fn insert(&mut self, hash: u64, seq: u64) {
        match self.first.entry(hash) {
            Entry::Vacant(e) => {
                e.insert(seq);
            }
            Entry::Occupied(_) => self.more.entry(hash).or_default().push_back(seq),
        }
    }

    /// The oldest sequence number for `hash` that `matches`, if any.
    pub(crate) fn find(&self, hash: u64, mut matches: impl FnMut(u64) -> bool) -> Option<u64> {
        let first = *self.first.get(&hash)?;
        if matches(first) {
            return Some(first);
        }
        self.more
            .get(&hash)?
            .iter()
            .copied()
            .find(|seq| matches(*seq))
    }

    /// Removes and returns the oldest sequence number for `hash` that `matches`, if any.
    pub(crate) fn take(&mut self, hash: u64, mut matches: impl FnMut(u64) -> bool) -> Option<u64> {
        let Entry::Occupied(mut first) = self.first.entry(hash) else {
            return None;
        };
        let seq = *first.get();
        if matches(seq) {
            // The next one, if any, moves up.
            match self.more.entry(hash) {
                Entry::Vacant(_) => {
                    first.remove();
                }
                Entry::Occupied(mut more) => {
                    if let Some(next) = more.get_mut().pop_front() {
                        *first.get_mut() = next;
                    }
                    if more.get().is_empty() {
                        more.remove();
                    }
                }
            }
            return Some(seq);
        }
        let Entry::Occupied(mut more) = self.more.entry(hash) else {
            return None;
        };
        let pos = more.get().iter().position(|seq| matches(*seq))?;
        let seq = more.get_mut().remove(pos);
        if more.get().is_empty() {
            more.remove();
        }
        seq
    }

    /// Removes `seq` from the entries of `hash`.
    pub(crate) fn remove(&mut self, hash: u64, seq: u64) -> bool {
        self.take(hash, |s| s == seq).is_some()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.first.clear();
        self.more.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_one_hash_come_out_oldest_first() {
        let mut index = HashIndex::default();
        let h = index.hash(b"a");
        index.insert(h, 1);
        index.insert(h, 5);
        index.insert(h, 9);
        assert_eq!(index.find(h, |_| true), Some(1));
        assert_eq!(index.take(h, |s| s > 1), Some(5));
        assert!(index.remove(h, 1));
        assert!(!index.remove(h, 1));
        assert_eq!(index.take(h, |_| true), Some(9));
        assert_eq!(index.take(h, |_| true), None);
        assert!(index.first.is_empty() && index.more.is_empty());
    }

    #[test]
    fn a_miss_leaves_the_entry_alone() {
        let mut index = HashIndex::default();
        let h = index.hash(b"b");
        index.insert(h, 3);
        assert_eq!(index.take(h, |_| false), None);
        assert_eq!(index.find(h + 1, |_| true), None);
        assert_eq!(index.take(h, |_| true), Some(3));
    }
}
