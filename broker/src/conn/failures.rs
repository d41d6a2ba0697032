//! Failed authentications per source address: each failure is answered a little later than
//! the one before (up to two seconds), and an address that fails `max` times within a minute
//! is refused new connections for `block` — so that guessing tokens is slow, and one host
//! that keeps trying does not cost the broker more than a few connections.
//!
//! Addresses are counted as the per-address limits count them (IPv6 by its /64); the book is
//! bounded, forgetting the addresses whose count has run out first.

use crate::maps::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; past it, those not blocked are forgotten.
const MAX_ENTRIES: usize = 16 * 1024;

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// The longest a refusal is delayed.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// The book of recent failures.
#[derive(Debug)]
pub(crate) struct Failures {
    /// Failures within a minute that block an address; 0: no limit.
    max: u32,
    block: Duration,
    book: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    /// At most `max` failures a minute per address (0: no limit), then `block` refused.
    pub(crate) fn new(max: u32, block: Duration) -> Self {
        Self {
            max,
            block,
            book: Mutex::new(HashMap::default()),
        }
    }

    /// How long `ip` is still refused, if it is.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let until = book.get(&super::addresses::key(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication from `ip`; returns how long to wait before answering.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        if self.max == 0 {
            return Duration::ZERO;
        }
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if book.len() >= MAX_ENTRIES {
            book.retain(|_, e| e.blocked_until.is_some_and(|u| u > now));
        }
        let entry = book.entry(super::addresses::key(ip)).or_insert(Entry {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(entry.since) > WINDOW {
            entry.count = 0;
            entry.since = now;
        }
        entry.count = entry.count.saturating_add(1);
        if entry.count >= self.max {
            entry.blocked_until = Some(now + self.block);
            entry.count = 0;
            entry.since = now;
        }
        (Duration::from_millis(100) * entry.count).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_waits_longer_then_is_blocked_for_a_while() {
        let f = Failures::new(5, Duration::from_secs(30));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..4).map(|_| f.failed(ip, t0)).collect();
        assert!(delays.windows(2).all(|w| w[0] < w[1]), "{delays:?}");
        assert_eq!(f.blocked(ip, t0), None);
        f.failed(ip, t0);
        assert_eq!(f.blocked(ip, t0), Some(Duration::from_secs(30)));
        assert_eq!(f.blocked(other, t0), None, "another address is not touched");
        assert_eq!(
            f.blocked(ip, t0 + Duration::from_secs(31)),
            None,
            "for a while only"
        );
        // Failures spread beyond the window never add up.
        let g = Failures::new(3, Duration::from_secs(30));
        for i in 0..10 {
            g.failed(ip, t0 + WINDOW * 2 * i);
        }
        assert_eq!(g.blocked(ip, t0 + WINDOW * 20), None);
        // No limit: nothing counted.
        let off = Failures::new(0, Duration::from_secs(30));
        assert_eq!(off.failed(ip, t0), Duration::ZERO);
        assert_eq!(off.blocked(ip, t0), None);
    }
}
