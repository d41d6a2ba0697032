//! The hash maps and sets of the broker's hot paths: std's tables with foldhash, a fast
//! hasher seeded at random per process (names come from clients, so the seed keeps their
//! hashes unpredictable).

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// A `HashMap` with the broker's hasher.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, Seeded>;

/// A `HashSet` with the broker's hasher.
pub(crate) type HashSet<K> = std::collections::HashSet<K, Seeded>;

/// The process's seed, chosen at random on first use unless [`predictable`] came first.
static SEED: OnceLock<u64> = OnceLock::new();

/// foldhash with the process's seed.
#[derive(Debug, Clone)]
pub(crate) struct Seeded(foldhash::fast::FixedState);

impl Default for Seeded {
    fn default() -> Self {
        let seed = *SEED.get_or_init(|| foldhash::fast::RandomState::default().hash_one(0u64));
        Self(foldhash::fast::FixedState::with_seed(seed))
    }
}

impl BuildHasher for Seeded {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// Fixes the process's seed, so that every map iterates in an order that depends only on
/// what was put in it. Returns false when maps were made before (the seed is then random).
pub(crate) fn predictable() -> bool {
    SEED.set(0x5eed_b40a_dca5).is_ok() || SEED.get() == Some(&0x5eed_b40a_dca5)
}
