//! The broker-wide sweeper: settles messages whose time to live ran out (telling their
//! senders) and forgets sessions that expired.

use crate::engine::{Engine, now_ms};
use crate::persist::Command;
use crate::store::{QueueId, Seq};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Entries expired per look at most. A look that finds this many is followed at once by the
/// next, which goes on after the last entry found: a backlog of expired entries is worked off
/// as fast as the store settles them, and entries skipped (handed out and waiting for their
/// acknowledgement) do not hold up the others.
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
        // One pass over every queue per tick, in looks of at most PER_ROUND entries, each
        // going on from where the one before stopped.
        let mut after = None;
        while let Some(next) = look(&engine, after).await {
            if shutdown.is_cancelled() {
                return;
            }
            after = Some(next);
        }
        // Sessions expire on a scale of hours: look about once a minute.
        if rounds % (60_000 / every.as_millis().max(1) as u64).max(1) == 0 {
            engine.expire_sessions().await;
        }
    }
}

/// One look for expired entries after `after`. Returns where the next look goes on from, if
/// this one found as many as it could take, once the core has settled what it found (its
/// settlements reach the store before the next look, which cannot find them again).
async fn look(engine: &Engine, after: Option<(QueueId, Seq)>) -> Option<(QueueId, Seq)> {
    // What the store finds comes back as a completion, after everything the store did
    // before; entries settled while it looks are not expired again from its answer.
    engine.begin_expiry_scan();
    let (next, answer) = oneshot::channel();
    let look = Command::Expired {
        now_ms: now_ms(),
        after,
        max: PER_ROUND,
        next,
    };
    engine.persist.send(look).await;
    answer.await.ok().flatten()
}
