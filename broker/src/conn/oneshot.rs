//! One message published from outside a connection (the HTTP publish API): its credentials
//! admitted, the message checked and routed exactly as a connection's would be, and the
//! broker's answers to it collected: the delivery-failed notices, then `Accepted` for a
//! persistent message (once stored, or taken by its recipients), or the error that refused it.

use super::access::Access;
use super::outbound::Outbound;
use super::{Context, Handled, handle};
use crate::{metrics, namespace};
use broadcast_protocol::{
    ClientFrame, ErrorCode, HEADER_LEN, Hello, Publish, ServerFrame, decode_body,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The sender of a message published without a name, on a broker without credentials. No
/// client can take a name starting with `$`, so notices about its messages that come later
/// are not kept.
pub(crate) const ANONYMOUS_SENDER: &str = "$http";

/// Why a message was not routed.
pub(crate) type Refused = (ErrorCode, String);

/// Publishes `msg` from `peer` as a client presenting `hello` (its name is the sender's;
/// `None` only on a broker without credentials, for [`ANONYMOUS_SENDER`]) would; the frames
/// the broker answered, in order: notices, then `Accepted` or an `Error` for a persistent
/// message. A refused credential counts against the address as a connection's does.
pub(crate) async fn publish(
    ctx: &Arc<Context>,
    peer: SocketAddr,
    hello: &Hello,
    peer_names: Vec<String>,
    msg: Publish,
) -> Result<Vec<ServerFrame>, Refused> {
    let admitted = Access::admit(hello, ctx.credentials.subscribe(), peer_names);
    let (name, mut access) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let engine_metrics = &ctx.engine.metrics;
            metrics::add(&engine_metrics.refused[metrics::refusal(refusal.0)], 1);
            if refusal.0 == ErrorCode::Unauthorized {
                // Each failure is answered later than the one before, and enough of them
                // block the address, as for connections.
                let wait = ctx
                    .admission
                    .failures
                    .failed(peer.ip(), std::time::Instant::now());
                tokio::time::sleep(wait).await;
            }
            return Err(refusal);
        }
    };
    let name = match (&hello.name, access.identity()) {
        (Some(_), _) => name,
        (None, None) => Arc::from(namespace::scoped(access.namespace(), ANONYMOUS_SENDER)),
        (None, Some(_)) => {
            return Err((
                ErrorCode::BadHandshake,
                "this broker requires credentials: name the sender in `from`".into(),
            ));
        }
    };
    let persistent = msg.persistent;
    let id = msg.id.clone();
    let cfg = &ctx.config;
    let max_frame = cfg.max_frame() as usize;
    let close = CancellationToken::new();
    // Answers are taken as they come, so the queue never holds more than a few.
    let (out, mut rx) = Outbound::new(
        ctx.engine.next_conn_id(),
        64,
        64 * 1024 + max_frame,
        max_frame,
        close.clone(),
    );
    let unconfirmed = Arc::new(Semaphore::new(1));
    let wait = cfg.ack_timeout + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    let route = handle(
        ClientFrame::Publish(msg),
        &out,
        &name,
        ctx,
        &unconfirmed,
        &mut access,
    );
    tokio::pin!(route);
    let (mut routed, mut confirmed) = (false, false);
    let mut answers = Vec::new();
    let result = loop {
        let frame = tokio::select! {
            handled = &mut route, if !routed => {
                if let Handled::Close | Handled::CloseWith(_) = handled {
                    break Err((ErrorCode::ShuttingDown, "the broker is shutting down".into()));
                }
                routed = true;
                if persistent {
                    if confirmed {
                        break Ok(());
                    }
                    continue;
                }
                // Non-persistent: every answer is queued by now.
                while let Ok(frame) = rx.try_recv() {
                    answers.extend(decode(&frame.bytes));
                }
                break Ok(());
            }
            frame = rx.recv() => frame,
            _ = tokio::time::sleep_until(deadline) => break Err((
                ErrorCode::Timeout,
                format!("the message was not confirmed within {wait:?}; it may still be delivered"),
            )),
        };
        let Some(frame) = frame.as_ref().and_then(|f| decode(&f.bytes)) else {
            continue;
        };
        // Persistent: `Accepted` (or an error about it) ends the answers.
        let done = match &frame {
            ServerFrame::Accepted { id: a } => *a == id,
            ServerFrame::Error(e) => e.id.as_deref() == Some(id.as_str()) || e.id.is_none(),
            _ => false,
        };
        answers.push(frame);
        if done {
            confirmed = true;
            if routed {
                break Ok(());
            }
        }
    };
    close.cancel();
    result.map(|()| answers)
}

/// A frame the broker queued, decoded; `None` for the writer's wake-ups (no bytes).
fn decode(bytes: &[u8]) -> Option<ServerFrame> {
    decode_body(bytes.get(HEADER_LEN..)?).ok()
}
