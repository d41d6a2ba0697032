//! Frames the broker sends, encoded once and shared.
//!
//! A fan-out to a thousand subscribers encodes its `Deliver` frame once (per channel tag) and
//! hands every recipient the same [`Bytes`]. Deliveries and confirmations are written by the
//! protocol's hand-written encoders from borrowed fields (tested there against the serde
//! encoding), without cloning the message's strings first.

use crate::namespace;
pub(crate) use broadcast_protocol::DeliveryRef;
use broadcast_protocol::{
    CodecError, DeliveryFailed, ErrorCode, ErrorFrame, MAX_FRAME_CAP, Recipient, ServerFrame,
    encode_frame,
};
use bytes::Bytes;

/// Encodes a `Deliver` frame. Size limits are checked by the caller against each recipient.
/// The sender and channel are shown without their namespace: every recipient is in it.
pub(crate) fn deliver(d: &DeliveryRef<'_>) -> Result<Bytes, CodecError> {
    let shown = DeliveryRef {
        sender: namespace::shown(d.sender),
        channel: d.channel.map(namespace::shown),
        ..*d
    };
    shown.encode(MAX_FRAME_CAP as usize)
}

/// An `Accepted` frame for message `id`.
pub(crate) fn accepted(id: &str) -> Bytes {
    match broadcast_protocol::encode_accepted(id, MAX_FRAME_CAP as usize) {
        Ok(b) => b,
        // A message id is at most 256 bytes, far below the cap.
        Err(e) => unreachable!("accepted frame could not be encoded: {e}"),
    }
}

/// Encodes any other server frame; these are small and cannot exceed any limit.
pub(crate) fn frame(f: &ServerFrame) -> Bytes {
    match encode_frame(f, MAX_FRAME_CAP as usize) {
        Ok(b) => b,
        // Every field of these frames is bounded far below the cap (names are at most 256
        // bytes, error messages are made by the broker), so encoding cannot fail.
        Err(e) => unreachable!("server frame could not be encoded: {e}"),
    }
}

/// An `Error` frame.
pub(crate) fn error(code: ErrorCode, message: impl Into<String>, id: Option<&str>) -> Bytes {
    frame(&ServerFrame::Error(ErrorFrame {
        code,
        message: message.into(),
        id: id.map(str::to_owned),
    }))
}

/// A `DeliveryFailed` frame, its names shown without their namespace.
pub(crate) fn failed(mut notice: DeliveryFailed) -> Bytes {
    shown_notice(&mut notice);
    frame(&ServerFrame::DeliveryFailed(notice))
}

/// A notice's names without their namespace, as its sender is shown them.
pub(crate) fn shown_notice(notice: &mut DeliveryFailed) {
    match &mut notice.recipient {
        Recipient::Client(n) | Recipient::Channel(n) => {
            if let Some(shown) = unscoped(n) {
                *n = shown;
            }
        }
        Recipient::All => {}
    }
    if let std::borrow::Cow::Owned(detail) = namespace::shown_text(&notice.detail) {
        notice.detail = detail;
    }
}

/// A broker name without its namespace, when it has one.
fn unscoped(name: &str) -> Option<String> {
    let shown = namespace::shown(name);
    (shown.len() != name.len()).then(|| shown.to_owned())
}
