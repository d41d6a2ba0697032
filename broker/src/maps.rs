//! The hash maps and sets of the broker's hot paths: std's tables with foldhash, a fast
//! hasher seeded at random per process (names come from clients, so the seed keeps their
//! hashes unpredictable).

/// A `HashMap` with the broker's hasher.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with the broker's hasher.
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
