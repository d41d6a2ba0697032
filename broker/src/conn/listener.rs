//! The accept loop: one task per connection, bounds on connections (in all, and per source
//! address), back-off on accept errors.

use super::{Context, refuse, serve};
use crate::metrics::{self, REFUSED_ADDRESS_RATE, REFUSED_MAX_CONNECTIONS, REFUSED_PER_ADDRESS};
use crate::tls::TlsConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Broadcast frames from the first byte.
    Broadcast,
    /// HTTP: a WebSocket carrying Broadcast frames, or a publish request.
    Http,
}

/// Accepts connections until shutdown; with `tls`, each is a TLS connection. The limits on
/// connections (in all, per address) are shared by every listener.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsConfig>>,
    kind: Kind,
    ctx: Arc<Context>,
    tracker: &TaskTracker,
) {
    let permits = ctx.admission.permits.clone();
    let addresses = ctx.admission.addresses.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let now = std::time::Instant::now();
                if let Some(left) = ctx.admission.failures.blocked(peer.ip(), now) {
                    tracing::warn!(%peer, "refusing an address that failed to authenticate too often");
                    metrics::add(
                        &ctx.engine.metrics.refused[metrics::REFUSED_AUTH_FAILURES],
                        1,
                    );
                    let (ctx, tls) = (ctx.clone(), tls.clone());
                    tracker.spawn(async move {
                        let msg = format!(
                            "refused: this address failed to authenticate (or to finish a handshake) too often; try again in {} s",
                            left.as_secs().max(1)
                        );
                        refuse(stream, tls, kind, &ctx, &msg).await;
                    });
                    continue;
                }
                let address = match addresses.admit(peer.ip(), std::time::Instant::now()) {
                    Ok(address) => address,
                    Err(refusal) => {
                        tracing::warn!(%peer, %refusal, "refusing a connection");
                        let label = match refusal {
                            super::addresses::Refusal::TooMany(_) => REFUSED_PER_ADDRESS,
                            super::addresses::Refusal::TooFast(_) => REFUSED_ADDRESS_RATE,
                        };
                        metrics::add(&ctx.engine.metrics.refused[label], 1);
                        let (ctx, tls) = (ctx.clone(), tls.clone());
                        tracker.spawn(async move {
                            refuse(stream, tls, kind, &ctx, &format!("refused: {refusal}")).await;
                        });
                        continue;
                    }
                };
                let handshaking = match ctx
                    .admission
                    .handshake(peer.ip(), ctx.config.max_pending_handshakes_per_address)
                {
                    Ok(handshaking) => handshaking,
                    Err(why) => {
                        tracing::warn!(%peer, why, "refusing a connection");
                        metrics::add(
                            &ctx.engine.metrics.refused[metrics::REFUSED_PENDING_HANDSHAKES],
                            1,
                        );
                        // Without a TLS handshake of its own (that is what is scarce): a TLS
                        // connection is closed, a plaintext one told why.
                        if tls.is_none() {
                            let ctx = ctx.clone();
                            tracker.spawn(async move {
                                refuse(stream, None, kind, &ctx, &format!("refused: {why}")).await;
                            });
                        }
                        continue;
                    }
                };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (ctx, tls) = (ctx.clone(), tls.clone());
                        let slot = super::Slot(permit, address);
                        match kind {
                            Kind::Broadcast => {
                                tracker.spawn(async move {
                                    serve(stream, tls, peer, ctx, handshaking).await;
                                    drop(slot);
                                });
                            }
                            Kind::Http => {
                                // A WebSocket takes the slot on with it, and its session is
                                // tracked as the connection was.
                                let sessions = tracker.clone();
                                tracker.spawn(crate::web::serve(
                                    stream,
                                    tls,
                                    peer,
                                    ctx,
                                    handshaking,
                                    slot,
                                    sessions,
                                ));
                            }
                        }
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "connection limit reached, refusing");
                        metrics::add(&ctx.engine.metrics.refused[REFUSED_MAX_CONNECTIONS], 1);
                        let max = ctx.config.max_connections;
                        let (ctx, tls) = (ctx.clone(), tls.clone());
                        tracker.spawn(async move {
                            let msg = format!("the broker is at its limit of {max} connections");
                            refuse(stream, tls, kind, &ctx, &msg).await;
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
