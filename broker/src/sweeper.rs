//! The broker-wide sweeper: settles messages whose time to live ran out (telling their
//! senders) and forgets sessions that expired.

use crate::router::{Router, now_ms};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries expired per round at most; a larger backlog of expired entries takes more rounds.
const PER_ROUND: usize = 4096;

/// Runs until shutdown.
pub(crate) async fn run(router: Arc<Router>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        rounds += 1;
        match router.persist.expired(now_ms(), PER_ROUND).await {
            Ok(found) if !found.is_empty() => {
                for cmd in router.expire(found) {
                    router.persist.send(cmd).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot look for expired messages"),
        }
        // Sessions expire on a scale of hours: look about once a minute.
        if rounds % (60_000 / every.as_millis().max(1) as u64).max(1) == 0 {
            for cmd in router.expire_sessions() {
                router.persist.send(cmd).await;
            }
        }
    }
}
