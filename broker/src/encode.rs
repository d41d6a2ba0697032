//! Frames the broker sends, encoded once and shared.
//!
//! A fan-out to a thousand subscribers encodes its `Deliver` frame once (per channel tag) and
//! hands every recipient the same [`Bytes`]. The borrowed mirror types below serialize exactly
//! as `ServerFrame::Deliver(Delivery)` does, without cloning the message's strings first; a
//! test checks the bytes are identical.

use broadcast_protocol::{
    CodecError, DeliveryFailed, ErrorCode, ErrorFrame, HEADER_LEN, MAX_FRAME_CAP, ServerFrame,
    encode_frame, encode_frame_sized,
};
use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeStruct, SerializeStructVariant, Serializer};

/// Index of `ServerFrame::Deliver` on the wire.
const DELIVER_VARIANT: u32 = 1;
/// Index of `ServerFrame::Accepted` on the wire.
const ACCEPTED_VARIANT: u32 = 3;

/// A delivery borrowing its fields from the message being routed.
pub(crate) struct DeliveryRef<'a> {
    pub(crate) id: &'a str,
    pub(crate) sender: &'a str,
    pub(crate) channel: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    pub(crate) data: &'a [u8],
    pub(crate) persistent: bool,
    pub(crate) redelivered: bool,
    pub(crate) ack_tag: Option<u64>,
}

struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for DeliveryRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Delivery", 8)?;
        st.serialize_field("id", self.id)?;
        st.serialize_field("sender", self.sender)?;
        st.serialize_field("channel", &self.channel)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("data", &BytesRef(self.data))?;
        st.serialize_field("persistent", &self.persistent)?;
        st.serialize_field("redelivered", &self.redelivered)?;
        st.serialize_field("ack_tag", &self.ack_tag)?;
        st.end()
    }
}

struct DeliverFrame<'a>(&'a DeliveryRef<'a>);

impl Serialize for DeliverFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("ServerFrame", DELIVER_VARIANT, "Deliver", self.0)
    }
}

/// Encodes a `Deliver` frame. Size limits are checked by the caller against each recipient.
pub(crate) fn deliver(d: &DeliveryRef<'_>) -> Result<Bytes, CodecError> {
    encode_frame_sized(
        &DeliverFrame(d),
        MAX_FRAME_CAP as usize,
        deliver_capacity(d),
    )
}

/// Room for a `Deliver` frame: its strings and payload, plus the header, the length prefixes,
/// the flags and the tag, so the buffer never grows while the frame is written.
fn deliver_capacity(d: &DeliveryRef<'_>) -> usize {
    let text = d.id.len() + d.sender.len();
    let extra = d.channel.map_or(0, str::len) + d.name.map_or(0, str::len);
    HEADER_LEN + 64 + text + extra + d.data.len()
}

/// `ServerFrame::Accepted` borrowing the message id.
struct AcceptedFrame<'a>(&'a str);

impl Serialize for AcceptedFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = s.serialize_struct_variant("ServerFrame", ACCEPTED_VARIANT, "Accepted", 1)?;
        v.serialize_field("id", self.0)?;
        v.end()
    }
}

/// An `Accepted` frame for message `id`, encoded without copying the id first.
pub(crate) fn accepted(id: &str) -> Bytes {
    match encode_frame(&AcceptedFrame(id), MAX_FRAME_CAP as usize) {
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

/// A `DeliveryFailed` frame.
pub(crate) fn failed(notice: DeliveryFailed) -> Bytes {
    frame(&ServerFrame::DeliveryFailed(notice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_protocol::Delivery;

    #[test]
    fn a_delivery_fits_the_room_reserved_for_it() {
        let long = "n".repeat(256);
        let data = vec![7u8; 100_000];
        for (size, tag) in [(0, None), (128, Some(u64::MAX)), (100_000, Some(u64::MAX))] {
            let d = DeliveryRef {
                id: &long,
                sender: &long,
                channel: Some(&long),
                name: Some(&long),
                data: &data[..size],
                persistent: true,
                redelivered: true,
                ack_tag: tag,
            };
            assert!(deliver(&d).unwrap().len() <= deliver_capacity(&d));
        }
    }

    #[test]
    fn borrowed_accepted_encodes_like_the_owned_frame() {
        let id = "V1StGXR8_Z5jdHi6B-myT";
        let owned = ServerFrame::Accepted { id: id.into() };
        assert_eq!(accepted(id), encode_frame(&owned, 1 << 20).unwrap());
    }

    #[test]
    fn borrowed_delivery_encodes_like_the_owned_frame() {
        for (channel, name, tag) in [(None, None, None), (Some("jobs"), Some("ev"), Some(7u64))] {
            let owned = ServerFrame::Deliver(Delivery {
                id: "V1StGXR8_Z5jdHi6B-myT".into(),
                sender: "alice".into(),
                channel: channel.map(str::to_owned),
                name: name.map(str::to_owned),
                data: Bytes::from_static(b"hello"),
                persistent: true,
                redelivered: false,
                ack_tag: tag,
            });
            let borrowed = DeliveryRef {
                id: "V1StGXR8_Z5jdHi6B-myT",
                sender: "alice",
                channel,
                name,
                data: b"hello",
                persistent: true,
                redelivered: false,
                ack_tag: tag,
            };
            assert_eq!(
                deliver(&borrowed).unwrap(),
                encode_frame(&owned, 1 << 20).unwrap()
            );
        }
    }
}
