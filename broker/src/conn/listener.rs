//! The accept loop: one task per connection, a bound on connections, back-off on accept
//! errors.

use super::{Context, refuse, serve};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, tracker: &TaskTracker) {
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let ctx = ctx.clone();
                        tracker.spawn(async move {
                            serve(stream, peer, ctx).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "connection limit reached, refusing");
                        crate::metrics::add(
                            &ctx.engine.metrics.refused[crate::metrics::REFUSED_MAX_CONNECTIONS],
                            1,
                        );
                        let max = ctx.config.max_connections;
                        tracker.spawn(async move {
                            let msg = format!("the broker is at its limit of {max} connections");
                            refuse(stream, &msg).await;
                        });
                    }
                }
            }
            Err(e) => {
                // Usually out of file descriptors: wait for connections to close.
                tracing::error!(error = %e, ?backoff, "accept failed");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
