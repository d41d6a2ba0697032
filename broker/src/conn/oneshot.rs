//! One message published from outside a connection (the HTTP publish API): its credentials
//! admitted, the message checked and routed exactly as a connection's would be, and the
//! broker's answers to it collected: the delivery-failed notices, then `Accepted` for a
//! persistent message (once stored, or taken by its recipients), or the error that refused it.

use super::access::Access;
use super::outbound::Outbound;
use super::{Context, Handled, handle};
use crate::namespace;
use broadcast_protocol::{
    ClientFrame, ErrorCode, HEADER_LEN, Hello, Publish, ServerFrame, decode_body,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The sender of a message published without a name, on a broker without credentials.
pub(crate) const ANONYMOUS_SENDER: &str = "$http";

/// Why a message was not routed.
pub(crate) type Refused = (ErrorCode, String);

/// Publishes `msg` as a client presenting `hello` (its name is the sender's; `None` only on
/// a broker without credentials, for [`ANONYMOUS_SENDER`]) would; the frames the broker
/// answered, in order: notices, then `Accepted` or an `Error` for a persistent message.
pub(crate) async fn publish(
    ctx: &Arc<Context>,
    hello: &Hello,
    peer_names: Vec<String>,
    msg: Publish,
) -> Result<Vec<ServerFrame>, Refused> {
    let (name, mut access) = Access::admit(hello, ctx.credentials.subscribe(), peer_names)?;
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
    // Room for a notice per recipient of the largest target, so that routing never waits
    // for the answers to be read.
    let frames = cfg.max_target_names + 16;
    let close = CancellationToken::new();
    let (out, mut rx) = Outbound::new(
        ctx.engine.next_conn_id(),
        frames,
        frames * 1024 + max_frame,
        max_frame,
        close.clone(),
    );
    let unconfirmed = Arc::new(Semaphore::new(1));
    let handled = handle(
        ClientFrame::Publish(msg),
        &out,
        &name,
        ctx,
        &unconfirmed,
        &mut access,
    )
    .await;
    if let Handled::Close | Handled::CloseWith(_) = handled {
        return Err((ErrorCode::Internal, "the broker is shutting down".into()));
    }
    let mut answers = Vec::new();
    let decode =
        |bytes: &[u8]| -> Option<ServerFrame> { decode_body(bytes.get(HEADER_LEN..)?).ok() };
    // Non-persistent: every answer is queued by now. Persistent: `Accepted` (or an error)
    // ends them, once the message is stored or taken.
    let wait = cfg.ack_timeout + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = if persistent {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err((
                        ErrorCode::Timeout,
                        format!(
                            "the message was not confirmed within {wait:?}; it may still be delivered"
                        ),
                    ));
                }
            }
        } else {
            rx.try_recv().ok()
        };
        let Some(frame) = next else { break };
        if frame.bytes.is_empty() {
            continue;
        }
        let Some(frame) = decode(&frame.bytes) else {
            continue;
        };
        let done = match &frame {
            ServerFrame::Accepted { id: a } => *a == id,
            ServerFrame::Error(e) => e.id.as_deref() == Some(id.as_str()) || e.id.is_none(),
            _ => false,
        };
        answers.push(frame);
        if done {
            break;
        }
    }
    close.cancel();
    Ok(answers)
}
