//! Each connection's drainer: hands the connection its queue in order, within the window of
//! unacknowledged deliveries, and sends late deliveries again.

use crate::core::DrainStep;
use crate::engine::Engine;
use crate::store::QueueId;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Runs until the connection closes.
pub(crate) async fn run(
    engine: Arc<Engine>,
    name: Arc<str>,
    conn_id: u64,
    wake: Arc<Notify>,
    close: CancellationToken,
) {
    let queue = QueueId::Client(name.to_string());
    loop {
        loop {
            match engine.drain_step(&name, conn_id) {
                DrainStep::Gone => return,
                DrainStep::Idle => break,
                DrainStep::Read { from, max, decided } => {
                    let entries = tokio::select! {
                        _ = close.cancelled() => return,
                        r = engine.persist.read(queue.clone(), from, max) => r,
                    };
                    match entries {
                        Ok(entries) => {
                            if !engine.drained(&name, conn_id, from, decided, entries).await {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the queue");
                            break;
                        }
                    }
                }
            }
        }
        let deadline = engine.next_deadline(&name, conn_id);
        tokio::select! {
            _ = close.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                engine.redeliver_late(&name, conn_id).await;
            }
        }
    }
}
