//! Telling a live client from a dead one: the broker probes a connection it has not heard
//! from for a heartbeat, whatever it sends it, and closes it once it has heard nothing for the
//! idle limit. A client that only receives (its own heartbeat 0) stays connected by answering
//! the probes.

use std::time::Duration;

/// What to do about a connection that has been silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Ask for a sign of life (a `Ping`), and wait again.
    Probe,
    /// Silent for the idle limit: close it.
    Close,
}

/// One connection's silence, counted in the time its reader waited for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    probe: Duration,
    idle: Duration,
    silent: Duration,
}

impl Liveness {
    /// Probes after `heartbeat` of silence; closes after three times the larger of the
    /// broker's heartbeat and the client's (`client_heartbeat`, zero when it never pings).
    pub fn new(heartbeat: Duration, client_heartbeat: Duration) -> Self {
        let probe = heartbeat.max(Duration::from_millis(1));
        Self {
            probe,
            idle: 3 * probe.max(client_heartbeat),
            silent: Duration::ZERO,
        }
    }

    /// A frame arrived.
    pub fn heard(&mut self) {
        self.silent = Duration::ZERO;
    }

    /// How long to wait for a frame before [`Liveness::waited`] decides.
    pub fn wait(&self) -> Duration {
        self.probe.min(self.idle.saturating_sub(self.silent))
    }

    /// No frame came for `waited` more.
    pub fn waited(&mut self, waited: Duration) -> Silence {
        self.silent += waited;
        if self.silent >= self.idle {
            Silence::Close
        } else {
            Silence::Probe
        }
    }

    /// The silence after which the connection is closed.
    pub fn idle(&self) -> Duration {
        self.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_connection_is_probed_each_heartbeat_and_closed_after_three() {
        let mut l = Liveness::new(100 * MS, Duration::ZERO);
        let mut probes = 0;
        loop {
            let wait = l.wait();
            assert!(wait > Duration::ZERO && wait <= 100 * MS);
            match l.waited(wait) {
                Silence::Probe => probes += 1,
                Silence::Close => break,
            }
        }
        assert_eq!(probes, 2);
        assert_eq!(l.idle(), 300 * MS);
    }

    #[test]
    fn a_client_that_answers_every_probe_is_never_closed() {
        let mut l = Liveness::new(100 * MS, Duration::ZERO);
        for _ in 0..1_000 {
            assert_eq!(l.waited(l.wait()), Silence::Probe);
            // It answers the probe before the next heartbeat.
            l.heard();
        }
    }

    #[test]
    fn a_client_with_a_longer_heartbeat_gets_three_of_its_own() {
        let mut l = Liveness::new(100 * MS, 1_000 * MS);
        let mut waited = Duration::ZERO;
        while l.waited(l.wait()) == Silence::Probe {
            waited += 100 * MS;
        }
        assert_eq!(waited + 100 * MS, 3_000 * MS);
    }
}
