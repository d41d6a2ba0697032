//! Hand-written encoders of the frames that are sent once per message: `Publish`, `Deliver`
//! and `Accepted`.
//!
//! They write exactly the bytes the serde encoding ([`crate::encode_frame`]) writes (the tests
//! compare the two over arbitrary values), without going through serde's per-field calls and
//! bincode's writer layers, which cost several times more than the bytes themselves.
//!
//! The encoding, as in `PROTOCOL.md`: integers (lengths, variant indexes, `u64` values) as
//! bincode's variable-length integers, strings and byte strings as a length then the bytes,
//! `Option` as a `0` or `1` byte then the value, `bool` as one byte.

use crate::{CodecError, HEADER_LEN, MAX_FRAME_CAP, Publish, Target};
use bytes::{BufMut, Bytes, BytesMut};

/// Index of `ClientFrame::Publish`.
const PUBLISH: u64 = 1;
/// Index of `ServerFrame::Deliver`.
const DELIVER: u64 = 1;
/// Index of `ServerFrame::Accepted`.
const ACCEPTED: u64 = 3;

/// Most bytes a variable-length integer takes.
const VARINT_MAX: usize = 9;

/// A `Deliver` frame's fields, borrowed from the message being delivered, so that a fan-out
/// encodes from the message itself instead of copying its strings into a [`crate::Delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef<'a> {
    /// As [`crate::Delivery::id`].
    pub id: &'a str,
    /// As [`crate::Delivery::sender`].
    pub sender: &'a str,
    /// As [`crate::Delivery::channel`].
    pub channel: Option<&'a str>,
    /// As [`crate::Delivery::name`].
    pub name: Option<&'a str>,
    /// As [`crate::Delivery::data`].
    pub data: &'a [u8],
    /// As [`crate::Delivery::persistent`].
    pub persistent: bool,
    /// As [`crate::Delivery::redelivered`].
    pub redelivered: bool,
    /// As [`crate::Delivery::ack_tag`].
    pub ack_tag: Option<u64>,
}

impl DeliveryRef<'_> {
    /// The most bytes the whole frame (header included) can take.
    pub fn max_len(&self) -> usize {
        let text = self.id.len() + self.sender.len();
        let extra = self.channel.map_or(0, str::len) + self.name.map_or(0, str::len);
        HEADER_LEN + 8 * VARINT_MAX + text + extra + self.data.len()
    }

    /// Encodes `ServerFrame::Deliver` with these fields as a complete frame.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame`.
    pub fn encode(&self, max_frame: usize) -> Result<Bytes, CodecError> {
        let mut b = Frame::new(self.max_len());
        varint(&mut b.buf, DELIVER);
        string(&mut b.buf, self.id.as_bytes());
        string(&mut b.buf, self.sender.as_bytes());
        opt_string(&mut b.buf, self.channel);
        opt_string(&mut b.buf, self.name);
        string(&mut b.buf, self.data);
        b.buf.put_u8(u8::from(self.persistent));
        b.buf.put_u8(u8::from(self.redelivered));
        opt_u64(&mut b.buf, self.ack_tag);
        b.finish(max_frame)
    }
}

/// Encodes `ClientFrame::Publish(p)` as a complete frame, as [`crate::encode_frame`] does.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame`.
pub fn encode_publish(p: &Publish, max_frame: usize) -> Result<Bytes, CodecError> {
    let names = match &p.target {
        Target::Client(n) | Target::Channel(n) => n.len() + VARINT_MAX,
        Target::Group(ns) | Target::Channels(ns) => {
            ns.iter().map(|n| n.len() + VARINT_MAX).sum::<usize>() + VARINT_MAX
        }
        Target::ClientInChannel { client, channel } => {
            client.len() + channel.len() + 2 * VARINT_MAX
        }
        Target::All => 0,
    };
    let room = HEADER_LEN
        + 8 * VARINT_MAX
        + p.id.len()
        + names
        + p.name.as_ref().map_or(0, String::len)
        + p.data.len();
    let mut b = Frame::new(room);
    let buf = &mut b.buf;
    varint(buf, PUBLISH);
    string(buf, p.id.as_bytes());
    match &p.target {
        Target::Client(n) => {
            varint(buf, 0);
            string(buf, n.as_bytes());
        }
        Target::Group(ns) => {
            varint(buf, 1);
            strings(buf, ns);
        }
        Target::Channel(n) => {
            varint(buf, 2);
            string(buf, n.as_bytes());
        }
        Target::Channels(ns) => {
            varint(buf, 3);
            strings(buf, ns);
        }
        Target::ClientInChannel { client, channel } => {
            varint(buf, 4);
            string(buf, client.as_bytes());
            string(buf, channel.as_bytes());
        }
        Target::All => varint(buf, 5),
    }
    opt_string(buf, p.name.as_deref());
    string(buf, &p.data);
    buf.put_u8(u8::from(p.persistent));
    opt_u64(buf, p.ttl_ms);
    buf.put_u8(u8::from(p.resent));
    b.finish(max_frame)
}

/// Encodes `ServerFrame::Accepted { id }` as a complete frame.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame` (an id is at most 256
/// bytes, far below any frame limit a peer may set).
pub fn encode_accepted(id: &str, max_frame: usize) -> Result<Bytes, CodecError> {
    let mut b = Frame::new(HEADER_LEN + 2 * VARINT_MAX + id.len());
    varint(&mut b.buf, ACCEPTED);
    string(&mut b.buf, id.as_bytes());
    b.finish(max_frame)
}

/// A frame being written: the length header first, filled in at the end.
struct Frame {
    buf: BytesMut,
}

impl Frame {
    fn new(room: usize) -> Self {
        let mut buf = BytesMut::with_capacity(room.min(HEADER_LEN + MAX_FRAME_CAP as usize));
        buf.put_u32(0);
        Frame { buf }
    }

    fn finish(mut self, max_frame: usize) -> Result<Bytes, CodecError> {
        let len = self.buf.len() - HEADER_LEN;
        if len > max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: max_frame,
            });
        }
        // `len <= max_frame`, and every caller's limit is at most `MAX_FRAME_CAP`, a u32; a
        // larger limit still cannot wrap, as frames that large are refused by every peer.
        let header = u32::try_from(len).map_err(|_| CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME_CAP as usize,
        })?;
        self.buf[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
        Ok(self.buf.freeze())
    }
}

/// bincode's variable-length integer: one byte up to 250, else a marker byte (251, 252, 253)
/// then the value as a little-endian `u16`, `u32` or `u64`.
fn varint(buf: &mut BytesMut, v: u64) {
    if v <= 250 {
        buf.put_u8(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        buf.put_u8(251);
        buf.put_u16_le(v);
    } else if let Ok(v) = u32::try_from(v) {
        buf.put_u8(252);
        buf.put_u32_le(v);
    } else {
        buf.put_u8(253);
        buf.put_u64_le(v);
    }
}

fn string(buf: &mut BytesMut, s: &[u8]) {
    varint(buf, s.len() as u64);
    buf.put_slice(s);
}

fn opt_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        None => buf.put_u8(0),
        Some(s) => {
            buf.put_u8(1);
            string(buf, s.as_bytes());
        }
    }
}

fn strings(buf: &mut BytesMut, ss: &[String]) {
    varint(buf, ss.len() as u64);
    for s in ss {
        string(buf, s.as_bytes());
    }
}

fn opt_u64(buf: &mut BytesMut, v: Option<u64>) {
    match v {
        None => buf.put_u8(0),
        Some(v) => {
            buf.put_u8(1);
            varint(buf, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, Delivery, ServerFrame, encode_frame};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Long enough to need two-byte lengths now and then.
        prop_oneof![".{0,8}", "[a-z]{240,300}"]
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            text().prop_map(Target::Client),
            prop::collection::vec(text(), 0..4).prop_map(Target::Group),
            text().prop_map(Target::Channel),
            prop::collection::vec(text(), 0..4).prop_map(Target::Channels),
            (text(), text())
                .prop_map(|(client, channel)| Target::ClientInChannel { client, channel }),
            Just(Target::All),
        ]
    }

    fn data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (0usize..2).prop_map(|k| vec![7u8; [70_000, 65_535][k]]),
        ]
    }

    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..300,
            300u64..70_000,
            70_000u64..5_000_000_000,
            any::<u64>()
        ]
    }

    proptest! {
        #[test]
        fn publish_is_encoded_as_serde_encodes_it(
            id in text(), target in target(), name in prop::option::of(text()), data in data(),
            persistent in any::<bool>(), ttl_ms in prop::option::of(number()), resent in any::<bool>(),
        ) {
            let p = Publish { id, target, name, data: Bytes::from(data), persistent, ttl_ms, resent };
            let max = 1 << 20;
            prop_assert_eq!(
                encode_publish(&p, max).unwrap(),
                encode_frame(&ClientFrame::Publish(p.clone()), max).unwrap()
            );
            // Too large for a small limit either way, with the same figures.
            prop_assert_eq!(
                encode_publish(&p, 16).unwrap_err().to_string(),
                encode_frame(&ClientFrame::Publish(p), 16).unwrap_err().to_string()
            );
        }

        #[test]
        fn deliveries_and_confirmations_are_encoded_as_serde_encodes_them(
            id in text(), sender in text(), channel in prop::option::of(text()),
            name in prop::option::of(text()), data in data(), persistent in any::<bool>(),
            redelivered in any::<bool>(), ack_tag in prop::option::of(number()),
        ) {
            let d = DeliveryRef {
                id: &id, sender: &sender, channel: channel.as_deref(), name: name.as_deref(),
                data: &data, persistent, redelivered, ack_tag,
            };
            let owned = ServerFrame::Deliver(Delivery {
                id: id.clone(), sender: sender.clone(), channel: channel.clone(),
                name: name.clone(), data: Bytes::from(data.clone()), persistent, redelivered,
                ack_tag,
            });
            let max = 1 << 20;
            let fast = d.encode(max).unwrap();
            prop_assert!(fast.len() <= d.max_len());
            prop_assert_eq!(fast, encode_frame(&owned, max).unwrap());
            prop_assert_eq!(
                encode_accepted(&id, max).unwrap(),
                encode_frame(&ServerFrame::Accepted { id }, max).unwrap()
            );
        }
    }
}
