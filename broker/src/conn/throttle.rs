//! A connection's publish rate: messages and payload bytes a second, each bounded when set. At
//! the limit the connection is not read until the rate allows more (its sender is held back by
//! TCP); nothing it sent is dropped.

use std::time::Duration;
use tokio::time::Instant;

/// One allowance refilled at a steady rate, holding at most a second's worth.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    allowance: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            allowance: rate,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.allowance = (self.allowance + elapsed * self.rate).min(self.rate);
        self.at = now;
    }

    /// Takes `cost` (which may leave the allowance below zero: a message larger than a
    /// second's worth still goes, and the ones after it wait longer) and returns how long to
    /// wait before the next.
    fn take(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        self.allowance -= cost;
        if self.allowance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.allowance / self.rate)
        }
    }
}

/// The publish rate limits of one connection.
#[derive(Debug)]
pub(crate) struct Throttle {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Throttle {
    /// Limits of `messages` and `bytes` a second; 0 for none.
    pub(crate) fn new(messages: f64, bytes: f64) -> Self {
        let now = Instant::now();
        Self {
            messages: (messages > 0.0).then(|| Bucket::new(messages, now)),
            bytes: (bytes > 0.0).then(|| Bucket::new(bytes, now)),
        }
    }

    /// Whether any limit is set.
    pub(crate) fn is_on(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// How long to stop reading after `messages` messages of `bytes` payload bytes.
    pub(crate) fn take(&mut self, messages: usize, bytes: usize, now: Instant) -> Duration {
        let m = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(messages as f64, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes as f64, now));
        m.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worth_goes_at_once_then_each_waits_its_share() {
        let mut t = Throttle::new(10.0, 0.0);
        let now = Instant::now();
        for _ in 0..9 {
            assert_eq!(t.take(1, 100, now), Duration::ZERO);
        }
        assert_eq!(t.take(1, 100, now), Duration::ZERO);
        // The eleventh within the same second waits a tenth of a second.
        assert_eq!(t.take(1, 100, now), Duration::from_millis(100));
        // Half a second later, five more came back, less the one already taken.
        let later = now + Duration::from_millis(500);
        assert_eq!(t.take(4, 0, later), Duration::ZERO);
        assert!(t.take(1, 0, later) > Duration::ZERO);
    }

    #[test]
    fn bytes_are_limited_apart_and_the_longer_wait_wins() {
        let mut t = Throttle::new(1000.0, 1000.0);
        let now = Instant::now();
        assert_eq!(t.take(1, 1000, now), Duration::ZERO);
        assert_eq!(t.take(1, 500, now), Duration::from_millis(500));
        assert!(!Throttle::new(0.0, 0.0).is_on());
    }
}
