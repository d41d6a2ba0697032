//! Exponential backoff with full jitter between connection attempts.

use std::time::Duration;

/// Delay before each connection attempt: a uniformly random time between zero and a ceiling
/// that starts at `initial` and doubles with each attempt up to `max`.
///
/// Full jitter spreads the reconnects of many clients that lost the same broker, so they do not
/// all come back in the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, fastrand::Rng::new())
    }

    pub(crate) fn with_rng(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self { initial, max, rng }
    }

    /// The largest delay of attempt `attempt` (counted from 1).
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A random delay for attempt `attempt` (counted from 1), in `0..=ceiling(attempt)`.
    pub(crate) fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_initial_and_stops_at_max() {
        let backoff = Backoff::new(100 * MS, 5000 * MS);
        let ceilings: Vec<_> = (1..=8).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(|ms| ms * MS)
        );
        assert_eq!(backoff.ceiling(u32::MAX), 5000 * MS);
        assert_eq!(backoff.ceiling(0), 100 * MS);
    }

    #[test]
    fn an_initial_delay_above_max_is_capped() {
        let backoff = Backoff::new(10_000 * MS, 5000 * MS);
        assert_eq!(backoff.ceiling(1), 5000 * MS);
    }

    #[test]
    fn jittered_delays_stay_within_bounds_and_spread_over_them() {
        let mut backoff = Backoff::with_rng(100 * MS, 5000 * MS, fastrand::Rng::with_seed(7));
        for attempt in 1..=10 {
            let ceiling = backoff.ceiling(attempt);
            let delays: Vec<_> = (0..500).map(|_| backoff.delay(attempt)).collect();
            let min = delays.iter().copied().min().unwrap_or_default();
            let max = delays.iter().copied().max().unwrap_or_default();
            assert!(max <= ceiling, "attempt {attempt}: {max:?} > {ceiling:?}");
            // Full jitter: the delays cover the whole range, not just the top of it.
            assert!(
                min < ceiling / 10,
                "attempt {attempt}: smallest delay {min:?}"
            );
            assert!(
                max > ceiling * 9 / 10,
                "attempt {attempt}: largest delay {max:?}"
            );
        }
    }

    #[test]
    fn zero_delays_are_allowed() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.delay(3), Duration::ZERO);
    }
}
