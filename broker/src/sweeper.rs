//! The broker-wide sweeper: settles messages whose time to live ran out (telling their
//! senders) and forgets sessions that expired.

use crate::engine::{Engine, now_ms};
use crate::persist::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries expired per round at most; a larger backlog of expired entries takes more rounds.
const PER_ROUND: usize = 4096;

/// Runs until shutdown.
pub(crate) async fn run(engine: Arc<Engine>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        rounds += 1;
        // What the store finds comes back as a completion, after everything the store did
        // before; entries settled while it looks are not expired again from its answer.
        engine.begin_expiry_scan();
        let look = Command::Expired {
            now_ms: now_ms(),
            max: PER_ROUND,
        };
        engine.persist.send(look).await;
        // Sessions expire on a scale of hours: look about once a minute.
        if rounds % (60_000 / every.as_millis().max(1) as u64).max(1) == 0 {
            engine.expire_sessions().await;
        }
    }
}
