//! Connections per source address: how many are open at once and how fast new ones come, each
//! bounded when configured, so that one host cannot take every connection the broker allows.

use crate::maps::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Entries kept before those of addresses with nothing open and a full allowance are dropped.
const PRUNE_AT: usize = 16 * 1024;

/// The open connections and allowance of new ones of every address that has either.
#[derive(Debug)]
pub(crate) struct Addresses {
    max_open: usize,
    /// New connections a second; 0 for no limit.
    rate: f64,
    /// Most new connections at once: a second's worth, at least one.
    burst: f64,
    book: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug)]
struct Entry {
    open: usize,
    /// New connections allowed now, as of `at`.
    allowance: f64,
    at: Instant,
}

/// Why a connection from an address is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Refusal {
    /// It has this many connections open already.
    TooMany(usize),
    /// Its new connections come faster than this many a second.
    TooFast(f64),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooMany(max) => {
                write!(f, "this address has its limit of {max} connections open")
            }
            Refusal::TooFast(rate) => write!(
                f,
                "this address opens connections faster than its limit of {rate} a second"
            ),
        }
    }
}

impl Entry {
    /// The allowance refilled up to `now`.
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.allowance = (self.allowance + elapsed * rate).min(burst);
        self.at = now;
    }
}

impl Addresses {
    /// Limits of `max_open` connections open (0: none) and `rate` new ones a second (0: none)
    /// per source address.
    pub(crate) fn new(max_open: usize, rate: f64) -> Self {
        Self {
            max_open,
            rate,
            burst: rate.max(1.0),
            book: Mutex::new(HashMap::default()),
        }
    }

    fn limited(&self) -> bool {
        self.max_open > 0 || self.rate > 0.0
    }

    fn book(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip` at `now`, or says why not. The permit counts it as
    /// open until dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        if !self.limited() {
            return Ok(Permit { book: None, ip });
        }
        let mut book = self.book();
        if book.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            book.retain(|_, e| {
                e.refill(now, rate, burst);
                e.open > 0 || e.allowance < burst
            });
        }
        let entry = book.entry(ip).or_insert(Entry {
            open: 0,
            allowance: self.burst,
            at: now,
        });
        if self.max_open > 0 && entry.open >= self.max_open {
            return Err(Refusal::TooMany(self.max_open));
        }
        if self.rate > 0.0 {
            entry.refill(now, self.rate, self.burst);
            if entry.allowance < 1.0 {
                return Err(Refusal::TooFast(self.rate));
            }
            entry.allowance -= 1.0;
        }
        entry.open += 1;
        Ok(Permit {
            book: Some(self.clone()),
            ip,
        })
    }

    /// Addresses with an entry, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.book().len()
    }
}

/// A connection counted as open for its address.
#[derive(Debug)]
pub(crate) struct Permit {
    book: Option<Arc<Addresses>>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(addresses) = &self.book else {
            return;
        };
        let mut book = addresses.book();
        if let Some(entry) = book.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
            entry.refill(Instant::now(), addresses.rate, addresses.burst);
            if entry.open == 0 && entry.allowance >= addresses.burst {
                book.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn open_connections_are_bounded_per_address_and_freed_when_dropped() {
        let addresses = Arc::new(Addresses::new(2, 0.0));
        let now = Instant::now();
        let a = addresses.admit(ip(1), now).unwrap();
        let _b = addresses.admit(ip(1), now).unwrap();
        assert_eq!(
            addresses.admit(ip(1), now).unwrap_err(),
            Refusal::TooMany(2)
        );
        // Another address is not affected.
        let _c = addresses.admit(ip(2), now).unwrap();
        drop(a);
        let _d = addresses.admit(ip(1), now).unwrap();
    }

    #[test]
    fn new_connections_are_bounded_per_address_per_second() {
        let addresses = Arc::new(Addresses::new(0, 2.0));
        let t0 = Instant::now();
        let mut held = Vec::new();
        held.push(addresses.admit(ip(1), t0).unwrap());
        held.push(addresses.admit(ip(1), t0).unwrap());
        assert_eq!(
            addresses.admit(ip(1), t0).unwrap_err(),
            Refusal::TooFast(2.0)
        );
        // Half a second gives one more.
        let later = t0 + Duration::from_millis(500);
        held.push(addresses.admit(ip(1), later).unwrap());
        assert!(addresses.admit(ip(1), later).is_err());
        // Closing does not give the allowance back.
        held.clear();
        assert!(addresses.admit(ip(1), later).is_err());
    }

    #[test]
    fn without_limits_nothing_is_kept() {
        let addresses = Arc::new(Addresses::new(0, 0.0));
        let now = Instant::now();
        let held: Vec<_> = (0..100)
            .map(|_| addresses.admit(ip(1), now).unwrap())
            .collect();
        assert_eq!(addresses.len(), 0);
        drop(held);
    }

    #[test]
    fn addresses_with_nothing_open_and_a_full_allowance_are_forgotten() {
        // One new connection a thousand seconds: a dropped permit leaves its entry behind.
        let addresses = Arc::new(Addresses::new(10, 0.001));
        let t0 = Instant::now();
        let many = |i: usize| IpAddr::from(std::net::Ipv4Addr::from(i as u32));
        let kept = addresses.admit(many(0), t0).unwrap();
        for i in 1..PRUNE_AT {
            drop(addresses.admit(many(i), t0).unwrap());
        }
        assert_eq!(addresses.len(), PRUNE_AT);
        // A thousand seconds later every allowance is full: a new address prunes all but the
        // address with a connection open.
        let later = t0 + Duration::from_secs(1001);
        let _new = addresses.admit(many(PRUNE_AT), later).unwrap();
        assert_eq!(addresses.len(), 2);
        drop(kept);
    }
}
