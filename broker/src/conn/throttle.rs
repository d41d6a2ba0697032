//! Each connection's publish rate: messages and bytes a second, each an allowance that refills
//! at its rate up to a second's worth (at least one message, or one message's bytes).
//!
//! A message is never refused or dropped for its rate. It is routed, and its cost taken from
//! the allowance, which may go below zero; the connection then waits until the allowance is
//! back at zero before its next message is routed. While it waits, the broker reads on only
//! so far (see `conn::read_loop`): acknowledgements, pings and pongs are handled at once, the
//! rest is kept in order up to a bound, and past the bound the connection is not read at all,
//! so that TCP holds its sender back.

use std::time::Duration;
use tokio::time::Instant;

/// The longest one wait lasts.
const MAX_WAIT_SECS: f64 = 3600.0;

/// One allowance: `rate` a second, up to `burst`.
#[derive(Debug)]
struct Allowance {
    rate: f64,
    burst: f64,
    /// What is allowed as of `at`; below zero, what was taken ahead of the rate.
    left: f64,
    at: Instant,
}

impl Allowance {
    fn new(rate: f64, at: Instant) -> Self {
        let burst = rate.max(1.0);
        Self {
            rate,
            burst,
            left: burst,
            at,
        }
    }

    /// Takes `n` at `now`; how long until the allowance is back at zero.
    fn take(&mut self, n: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + elapsed * self.rate).min(self.burst) - n;
        self.at = now;
        if self.left >= 0.0 {
            Duration::ZERO
        } else {
            // However slow the rate, at most an hour at a time.
            Duration::from_secs_f64((-self.left / self.rate).min(MAX_WAIT_SECS))
        }
    }
}

/// The publish rate of one connection.
#[derive(Debug)]
pub(crate) struct Throttle {
    messages: Option<Allowance>,
    bytes: Option<Allowance>,
}

impl Throttle {
    /// A throttle of `messages` and `bytes` a second (0: that one unlimited); `None` when
    /// both are unlimited.
    pub(crate) fn new(messages: f64, bytes: f64) -> Option<Self> {
        Self::new_at(messages, bytes, Instant::now())
    }

    fn new_at(messages: f64, bytes: f64, now: Instant) -> Option<Self> {
        let allowance = |rate: f64| (rate > 0.0).then(|| Allowance::new(rate, now));
        let throttle = Self {
            messages: allowance(messages),
            bytes: allowance(bytes),
        };
        (throttle.messages.is_some() || throttle.bytes.is_some()).then_some(throttle)
    }

    /// Counts `messages` messages of `bytes` bytes published now; when the connection is over
    /// its rate, the instant until which it must wait.
    pub(crate) fn charge(&mut self, messages: usize, bytes: usize) -> Option<Instant> {
        self.charge_at(messages, bytes, Instant::now())
    }

    fn charge_at(&mut self, messages: usize, bytes: usize, now: Instant) -> Option<Instant> {
        let wait = [
            self.messages.as_mut().map(|a| a.take(messages as f64, now)),
            self.bytes.as_mut().map(|a| a.take(bytes as f64, now)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        (!wait.is_zero()).then(|| now + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_is_no_throttle() {
        assert!(Throttle::new(0.0, 0.0).is_none());
        assert!(Throttle::new(10.0, 0.0).is_some());
        assert!(Throttle::new(0.0, 10.0).is_some());
    }

    #[test]
    fn a_second_of_messages_passes_then_each_waits_its_share() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(100.0, 0.0, t0).unwrap();
        for _ in 0..100 {
            assert_eq!(t.charge_at(1, 10, t0), None);
        }
        assert_eq!(t.charge_at(1, 10, t0), Some(t0 + ms(10)));
        assert_eq!(t.charge_at(1, 10, t0 + ms(10)), Some(t0 + ms(20)));
    }

    #[test]
    fn the_allowance_refills_only_up_to_a_second() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(10.0, 0.0, t0).unwrap();
        let later = t0 + Duration::from_secs(60);
        assert_eq!(t.charge_at(10, 0, later), None);
        assert!(t.charge_at(1, 0, later).is_some());
    }

    #[test]
    fn bytes_are_counted_apart_and_the_longer_wait_wins() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(1000.0, 1000.0, t0).unwrap();
        // 3,000 bytes against a second's worth of 1,000: two seconds of debt.
        assert_eq!(t.charge_at(1, 3000, t0), Some(t0 + ms(2000)));
    }

    #[test]
    fn a_run_is_charged_whole() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(10.0, 0.0, t0).unwrap();
        assert_eq!(t.charge_at(30, 0, t0), Some(t0 + ms(2000)));
    }

    #[test]
    fn a_tiny_rate_waits_at_most_an_hour() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(1e-300, 1e-300, t0).unwrap();
        let until = t
            .charge_at(1, 1 << 20, t0)
            .expect("a megabyte over a byte's burst");
        assert_eq!(until - t0, Duration::from_secs(3600));
    }

    #[test]
    fn a_slow_rate_allows_one_message_at_once() {
        let t0 = Instant::now();
        let mut t = Throttle::new_at(0.5, 0.0, t0).unwrap();
        assert_eq!(t.charge_at(1, 0, t0), None);
        assert_eq!(t.charge_at(1, 0, t0), Some(t0 + ms(2000)));
    }
}
