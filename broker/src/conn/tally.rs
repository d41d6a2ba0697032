//! Counts per key of connections that hold something (a handshake in progress, a connection
//! of an identity), each count held by a [`Held`] that gives it back when dropped.

use crate::maps::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// What is held, per key; keys with nothing held are forgotten.
#[derive(Debug)]
pub(crate) struct Tally<K: Hash + Eq>(Arc<Mutex<HashMap<K, usize>>>);

impl<K: Hash + Eq> Default for Tally<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

fn lock<K>(book: &Mutex<HashMap<K, usize>>) -> MutexGuard<'_, HashMap<K, usize>> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Hash + Eq + Clone> Tally<K> {
    /// One more for `key`, unless it holds `max` already.
    pub(crate) fn take(&self, key: K, max: usize) -> Option<Held<K>> {
        let mut book = lock(&self.0);
        let n = book.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                book.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Held {
            book: self.0.clone(),
            key,
        })
    }
}

/// One count of a key, given back when dropped.
#[derive(Debug)]
pub(crate) struct Held<K: Hash + Eq> {
    book: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut book = lock(&self.book);
        if let Some(n) = book.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                book.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_limit_and_gets_back_what_is_dropped() {
        let tally = Tally::default();
        let a = tally.take("a", 2).unwrap();
        let _a2 = tally.take("a", 2).unwrap();
        assert!(tally.take("a", 2).is_none());
        assert!(tally.take("b", 2).is_some(), "another key is not touched");
        drop(a);
        assert!(tally.take("a", 2).is_some());
        assert!(tally.take("c", 0).is_none());
        assert!(
            lock(&tally.0).get("c").is_none(),
            "a refused key leaves nothing"
        );
    }
}
