//! Connections per source address: how many are open at once and how fast new ones come, each
//! bounded when configured, so that one host cannot take every connection the broker allows.
//!
//! An IPv4 address (also one mapped into IPv6) counts alone; an IPv6 address counts with its
//! /64, which one host usually holds whole. The book keeps every address with a connection
//! open, and those with an allowance not yet refilled up to a bound: past it they are
//! forgotten (their allowance starts full again), so many addresses cannot make it grow.

use crate::maps::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Entries kept before those of addresses with nothing open are dropped (first those with a
/// full allowance, then all of them).
const PRUNE_AT: usize = 16 * 1024;

/// The open connections and allowance of new ones of every address that has either.
#[derive(Debug)]
pub(crate) struct Addresses {
    max_open: usize,
    /// New connections a second; 0 for no limit.
    rate: f64,
    /// Most new connections at once: a second's worth, at least one.
    burst: f64,
    book: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<IpAddr, Entry>,
    /// Size at which the next prune runs: twice what the last one left, so that pruning costs
    /// a constant share of each admission however many connections are open.
    prune_at: usize,
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
            book: Mutex::new(Book {
                entries: HashMap::default(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    fn limited(&self) -> bool {
        self.max_open > 0 || self.rate > 0.0
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops entries with nothing open: those with a full allowance, and if that is not
    /// enough, all of them.
    fn prune(&self, book: &mut Book, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        book.entries.retain(|_, e| {
            e.refill(now, rate, burst);
            e.open > 0 || e.allowance < burst
        });
        if book.entries.len() >= PRUNE_AT {
            book.entries.retain(|_, e| e.open > 0);
        }
        book.prune_at = PRUNE_AT.max(2 * book.entries.len());
    }

    /// Admits a new connection from `ip` at `now`, or says why not. The permit counts it as
    /// open until dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Permit, Refusal> {
        let ip = key(ip);
        if !self.limited() {
            return Ok(Permit { book: None, ip });
        }
        let mut book = self.book();
        if book.entries.len() >= book.prune_at {
            self.prune(&mut book, now);
        }
        let entry = book.entries.entry(ip).or_insert(Entry {
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
        self.book().entries.len()
    }
}

/// The address a connection counts against: an IPv4 address as it is (also when mapped into
/// IPv6), an IPv6 address as its /64.
pub(super) fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
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
        if let Some(entry) = book.entries.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
            entry.refill(Instant::now(), addresses.rate, addresses.burst);
            if entry.open == 0 && entry.allowance >= addresses.burst {
                book.entries.remove(&self.ip);
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

    #[test]
    fn an_ipv6_64_counts_as_one_address_and_mapped_ipv4_as_ipv4() {
        let addresses = Arc::new(Addresses::new(1, 0.0));
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = addresses.admit(a, now).unwrap();
        assert_eq!(addresses.admit(b, now).unwrap_err(), Refusal::TooMany(1));
        let _other = addresses.admit(other, now).unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _v4 = addresses.admit(v4, now).unwrap();
        assert_eq!(
            addresses.admit(mapped, now).unwrap_err(),
            Refusal::TooMany(1)
        );
        // Mapped IPv4 addresses do not share one bucket.
        let _next = addresses
            .admit("::ffff:192.0.2.8".parse().unwrap(), now)
            .unwrap();
    }

    #[test]
    fn many_addresses_with_allowances_not_yet_refilled_do_not_grow_the_book() {
        let addresses = Arc::new(Addresses::new(0, 0.001));
        let now = Instant::now();
        for i in 0..3 * PRUNE_AT {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i as u32));
            drop(addresses.admit(ip, now).unwrap());
            assert!(addresses.len() <= PRUNE_AT, "{} entries", addresses.len());
        }
    }
}
