//! Hand-written encoders and decoders of the frames that are sent once per message:
//! `Publish`, `Deliver` and `Accepted`.
//!
//! The encoders write exactly the bytes the serde encoding ([`crate::encode_frame`]) writes,
//! and the decoders read exactly what it reads (the tests compare the two over arbitrary values
//! and arbitrary bytes), without going through serde's per-field calls and bincode's reader and
//! writer layers, which cost several times more than the bytes themselves. A decoder that meets
//! anything unusual (another frame, a bad byte, a non-canonical integer) gives up and leaves the
//! body to the serde decoder, which decodes it or reports what is wrong: errors are the serde
//! path's alone.
//!
//! The encoding, as in `PROTOCOL.md`: integers (lengths, variant indexes, `u64` values) as
//! bincode's variable-length integers, strings and byte strings as a length then the bytes,
//! `Option` as a `0` or `1` byte then the value, `bool` as one byte.

use crate::varint::{self, Reader, len as varint_len, put as varint, put_bytes as string};
use crate::{
    ClientFrame, CodecError, Delivery, HEADER_LEN, MAX_FRAME_CAP, MAX_LIST, Publish, ServerFrame,
    Target,
};
use bytes::Bytes;

/// Index of `ClientFrame::Publish`.
const PUBLISH: u64 = 1;
/// Index of `ServerFrame::Deliver`.
const DELIVER: u64 = 1;
/// Index of `ServerFrame::Accepted`.
const ACCEPTED: u64 = 3;

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
    /// The length of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN
            + varint_len(DELIVER)
            + str_len(self.id.as_bytes())
            + str_len(self.sender.as_bytes())
            + opt_str_len(self.channel)
            + opt_str_len(self.name)
            + str_len(self.data)
            + 2
            + opt_u64_len(self.ack_tag)
    }

    /// Encodes `ServerFrame::Deliver` with these fields as a complete frame.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame`.
    pub fn encode(&self, max_frame: usize) -> Result<Bytes, CodecError> {
        let mut b = Frame::new(self.frame_len(), max_frame)?;
        varint(&mut b.0, DELIVER);
        string(&mut b.0, self.id.as_bytes());
        string(&mut b.0, self.sender.as_bytes());
        opt_string(&mut b.0, self.channel);
        opt_string(&mut b.0, self.name);
        string(&mut b.0, self.data);
        b.0.push(u8::from(self.persistent));
        b.0.push(u8::from(self.redelivered));
        opt_u64(&mut b.0, self.ack_tag);
        Ok(b.finish())
    }
}

/// Encodes `ClientFrame::Publish(p)` as a complete frame, as [`crate::encode_frame`] does.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame`.
pub fn encode_publish(p: &Publish, max_frame: usize) -> Result<Bytes, CodecError> {
    let strings_len = |ns: &[String]| {
        varint_len(ns.len() as u64) + ns.iter().map(|n| str_len(n.as_bytes())).sum::<usize>()
    };
    let target = match &p.target {
        Target::Client(n) => varint_len(0) + str_len(n.as_bytes()),
        Target::Group(ns) => varint_len(1) + strings_len(ns),
        Target::Channel(n) => varint_len(2) + str_len(n.as_bytes()),
        Target::Channels(ns) => varint_len(3) + strings_len(ns),
        Target::ClientInChannel { client, channel } => {
            varint_len(4) + str_len(client.as_bytes()) + str_len(channel.as_bytes())
        }
        Target::All => varint_len(5),
    };
    let len = HEADER_LEN
        + varint_len(PUBLISH)
        + str_len(p.id.as_bytes())
        + target
        + opt_str_len(p.name.as_deref())
        + str_len(&p.data)
        + 1
        + opt_u64_len(p.ttl_ms)
        + 1;
    let mut b = Frame::new(len, max_frame)?;
    let buf = &mut b.0;
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
    buf.push(u8::from(p.persistent));
    opt_u64(buf, p.ttl_ms);
    buf.push(u8::from(p.resent));
    Ok(b.finish())
}

/// Encodes `ServerFrame::Accepted { id }` as a complete frame.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame` (an id is at most 256
/// bytes, far below any frame limit a peer may set).
pub fn encode_accepted(id: &str, max_frame: usize) -> Result<Bytes, CodecError> {
    let len = HEADER_LEN + varint_len(ACCEPTED) + str_len(id.as_bytes());
    let mut b = Frame::new(len, max_frame)?;
    varint(&mut b.0, ACCEPTED);
    string(&mut b.0, id.as_bytes());
    Ok(b.finish())
}

/// Sets `resent` in an encoded `ClientFrame::Publish` frame (header included), in place, so
/// that a message kept since its first sending goes out again without being encoded again.
///
/// `resent` is a `bool`, the last field of [`Publish`], and `Publish` is all that follows the
/// variant index in the body of `ClientFrame::Publish`: the field is the frame's last byte.
/// Setting it changes nothing else, the frame's length included.
///
/// Returns false, and leaves the bytes as they are, when `frame` is plainly not a whole
/// `Publish` frame: its header does not give the length of the rest, its body does not start
/// with the index of `ClientFrame::Publish`, or its last byte is not a `bool`. The fields in
/// between are not read.
pub fn set_publish_resent(frame: &mut [u8]) -> bool {
    let Some((header, body)) = frame.split_first_chunk_mut::<HEADER_LEN>() else {
        return false;
    };
    let whole = usize::try_from(u32::from_be_bytes(*header)).ok() == Some(body.len());
    // Index 1 is one byte: an integer up to 250 is its own encoding.
    let publish = body.first().is_some_and(|&b| u64::from(b) == PUBLISH);
    match body.last_mut() {
        Some(last) if whole && publish && *last <= 1 => {
            *last = 1;
            true
        }
        _ => false,
    }
}

/// The id and sender of a `Deliver` frame: who sent which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryOrigin<'a> {
    /// As [`crate::Delivery::id`].
    pub id: &'a str,
    /// As [`crate::Delivery::sender`].
    pub sender: &'a str,
}

/// Reads the id and sender of a `ServerFrame::Deliver` body, its first two fields, borrowed
/// from it, without reading the rest of the frame: for a broker that needs to tell the sender
/// about a delivery it encoded itself.
///
/// `None` when the body is not a `Deliver` frame or its first two fields are not two strings
/// in their canonical encoding. The fields after them are not checked: a body this reads may
/// still be malformed further on; [`decode_deliver`] checks the whole of it.
pub fn decode_deliver_origin(body: &[u8]) -> Option<DeliveryOrigin<'_>> {
    let mut r = Reader::new(body);
    if r.varint()? != DELIVER {
        return None;
    }
    let id = r.str()?;
    let sender = r.str()?;
    Some(DeliveryOrigin { id, sender })
}

/// A frame being written into a buffer of exactly its length (so that it becomes [`Bytes`]
/// without another allocation), its header first.
struct Frame(Vec<u8>);

impl Frame {
    /// A frame of `len` bytes, header included, once its body is checked against the limit.
    fn new(len: usize, max_frame: usize) -> Result<Self, CodecError> {
        let body = len - HEADER_LEN;
        if body > max_frame {
            return Err(CodecError::FrameTooLarge {
                len: body,
                max: max_frame,
            });
        }
        let header = u32::try_from(body).map_err(|_| CodecError::FrameTooLarge {
            len: body,
            max: MAX_FRAME_CAP as usize,
        })?;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&header.to_be_bytes());
        Ok(Frame(buf))
    }

    fn finish(self) -> Bytes {
        debug_assert_eq!(
            self.0.len(),
            self.0.capacity(),
            "frame length computed exactly"
        );
        Bytes::from(self.0)
    }
}

/// Bytes a string or byte string takes: its length, then itself.
fn str_len(s: &[u8]) -> usize {
    varint::bytes_len(s.len())
}

fn opt_str_len(s: Option<&str>) -> usize {
    1 + s.map_or(0, |s| str_len(s.as_bytes()))
}

fn opt_u64_len(v: Option<u64>) -> usize {
    1 + v.map_or(0, varint_len)
}

fn opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            string(buf, s.as_bytes());
        }
    }
}

fn strings(buf: &mut Vec<u8>, ss: &[String]) {
    varint(buf, ss.len() as u64);
    for s in ss {
        string(buf, s.as_bytes());
    }
}

fn opt_u64(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            varint(buf, v);
        }
    }
}

/// Decodes a `ClientFrame::Publish` body; `None` for anything else or anything unusual.
pub(crate) fn decode_client(body: &[u8]) -> Option<ClientFrame> {
    let mut r = Reader::new(body);
    if r.varint()? != PUBLISH {
        return None;
    }
    let id = r.string()?;
    let target = match r.varint()? {
        0 => Target::Client(r.string()?),
        1 => Target::Group(r.strings()?),
        2 => Target::Channel(r.string()?),
        3 => Target::Channels(r.strings()?),
        4 => Target::ClientInChannel {
            client: r.string()?,
            channel: r.string()?,
        },
        5 => Target::All,
        _ => return None,
    };
    let p = Publish {
        id,
        target,
        name: r.opt_string()?,
        data: Bytes::copy_from_slice(r.bytes()?),
        persistent: r.bool()?,
        ttl_ms: r.opt_u64()?,
        resent: r.bool()?,
    };
    r.rest().is_empty().then_some(ClientFrame::Publish(p))
}

/// Reads a `ServerFrame::Deliver` body as borrowed fields, for a reader that makes its own
/// values from them; `None` for anything else or anything unusual (leave that body to
/// [`crate::decode_body`]).
pub fn decode_deliver(body: &[u8]) -> Option<DeliveryRef<'_>> {
    let d = decode_deliver_with(body, |b| std::str::from_utf8(b).ok())?;
    Some(DeliveryRef {
        id: d.id,
        sender: d.sender,
        channel: d.channel,
        name: d.name,
        data: d.data,
        persistent: d.persistent,
        redelivered: d.redelivered,
        ack_tag: d.ack_tag,
    })
}

/// A `Deliver` frame read by [`decode_deliver_with`]: the sender's and channel's names as the
/// caller made them, the rest borrowed from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryNamed<'a, N> {
    /// As [`crate::Delivery::id`].
    pub id: &'a str,
    /// As [`crate::Delivery::sender`], made by the caller.
    pub sender: N,
    /// As [`crate::Delivery::channel`], made by the caller.
    pub channel: Option<N>,
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

/// As [`decode_deliver`], but the sender's and the channel's names are handed to `name` as
/// raw bytes: it must check that they are UTF-8 (or find them among names it checked before)
/// and return `None` for bytes that are not, which makes the whole read give up.
pub fn decode_deliver_with<'a, N>(
    body: &'a [u8],
    mut name: impl FnMut(&'a [u8]) -> Option<N>,
) -> Option<DeliveryNamed<'a, N>> {
    let mut r = Reader::new(body);
    if r.varint()? != DELIVER {
        return None;
    }
    let id = r.str()?;
    let sender = name(r.bytes()?)?;
    let channel = match r.u8()? {
        0 => None,
        1 => Some(name(r.bytes()?)?),
        _ => return None,
    };
    let d = DeliveryNamed {
        id,
        sender,
        channel,
        name: r.opt_str()?,
        data: r.bytes()?,
        persistent: r.bool()?,
        redelivered: r.bool()?,
        ack_tag: r.opt_u64()?,
    };
    r.rest().is_empty().then_some(d)
}

/// Decodes a `ServerFrame::Deliver` or `ServerFrame::Accepted` body; `None` for anything else
/// or anything unusual.
pub(crate) fn decode_server(body: &[u8]) -> Option<ServerFrame> {
    let mut r = Reader::new(body);
    match r.varint()? {
        DELIVER => decode_deliver(body).map(|d| {
            ServerFrame::Deliver(Delivery {
                id: d.id.to_owned(),
                sender: d.sender.to_owned(),
                channel: d.channel.map(str::to_owned),
                name: d.name.map(str::to_owned),
                data: Bytes::copy_from_slice(d.data),
                persistent: d.persistent,
                redelivered: d.redelivered,
                ack_tag: d.ack_tag,
            })
        }),
        ACCEPTED => {
            let id = r.string()?;
            r.rest().is_empty().then_some(ServerFrame::Accepted { id })
        }
        _ => None,
    }
}

/// Readers of the fields the protocol's frames are made of, beyond integers and strings.
impl<'a> Reader<'a> {
    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.str().map(Some),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }

    fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.varint().map(Some),
            _ => None,
        }
    }

    /// A list of strings within the protocol's list limit.
    fn strings(&mut self) -> Option<Vec<String>> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > MAX_LIST {
            return None;
        }
        // Each string takes at least one byte, so the bytes left bound the list too.
        let mut v = Vec::with_capacity(n.min(self.rest().len()));
        for _ in 0..n {
            v.push(self.string()?);
        }
        Some(v)
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
            let frame = encode_publish(&p, max).unwrap();
            prop_assert_eq!(&frame, &encode_frame(&ClientFrame::Publish(p.clone()), max).unwrap());
            // One byte over the limit either way, with the same figures (a fixed small limit
            // fails for the shortest frames, which fit it).
            let small = frame.len() - HEADER_LEN - 1;
            prop_assert_eq!(
                encode_publish(&p, small).unwrap_err().to_string(),
                encode_frame(&ClientFrame::Publish(p), small).unwrap_err().to_string()
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
            prop_assert_eq!(fast.len(), d.frame_len());
            prop_assert_eq!(fast, encode_frame(&owned, max).unwrap());
            prop_assert_eq!(
                encode_accepted(&id, max).unwrap(),
                encode_frame(&ServerFrame::Accepted { id }, max).unwrap()
            );
        }

        #[test]
        fn the_decoders_read_what_the_encoders_write(
            id in text(), target in target(), name in prop::option::of(text()), data in data(),
            persistent in any::<bool>(), ttl_ms in prop::option::of(number()), resent in any::<bool>(),
            channel in prop::option::of(text()), ack_tag in prop::option::of(number()),
        ) {
            let p = Publish {
                id: id.clone(), target, name: name.clone(), data: Bytes::from(data.clone()),
                persistent, ttl_ms, resent,
            };
            let frame = encode_publish(&p, 1 << 20).unwrap();
            prop_assert_eq!(decode_client(&frame[HEADER_LEN..]), Some(ClientFrame::Publish(p)));
            let d = Delivery {
                id: id.clone(), sender: id.clone(), channel, name, data: Bytes::from(data),
                persistent, redelivered: resent, ack_tag,
            };
            let frame = encode_frame(&ServerFrame::Deliver(d.clone()), 1 << 20).unwrap();
            let view = decode_deliver(&frame[HEADER_LEN..]).unwrap();
            prop_assert_eq!(
                (view.id, view.sender, view.channel, view.name, view.data, view.ack_tag),
                (&*d.id, &*d.sender, d.channel.as_deref(), d.name.as_deref(), &d.data[..], d.ack_tag)
            );
            prop_assert_eq!((view.persistent, view.redelivered), (d.persistent, d.redelivered));
            prop_assert_eq!(decode_server(&frame[HEADER_LEN..]), Some(ServerFrame::Deliver(d)));
            let frame = encode_accepted(&id, 1 << 20).unwrap();
            prop_assert_eq!(decode_server(&frame[HEADER_LEN..]), Some(ServerFrame::Accepted { id }));
        }

        #[test]
        fn what_the_decoders_accept_serde_reads_the_same(
            id in text(), target in target(), data in data(), ack_tag in prop::option::of(number()),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(), whole in any::<bool>(),
        ) {
            // Valid bodies, damaged here and there and perhaps cut short: whenever a hand-written
            // decoder takes one, serde must read the very same frame from it.
            let p = Publish {
                id: id.clone(), target, name: None, data: Bytes::from(data.clone()),
                persistent: true, ttl_ms: ack_tag, resent: false,
            };
            let d = DeliveryRef {
                id: &id, sender: &id, channel: None, name: Some(&id), data: &data,
                persistent: false, redelivered: true, ack_tag,
            };
            for frame in [encode_publish(&p, 1 << 20).unwrap(), d.encode(1 << 20).unwrap()] {
                let mut body = frame[HEADER_LEN..].to_vec();
                for (at, byte) in &damage {
                    let i = at.index(body.len());
                    body[i] = *byte;
                }
                if !whole {
                    body.truncate(cut.index(body.len() + 1));
                }
                if let Some(f) = decode_client(&body) {
                    prop_assert_eq!(crate::codec::decode_serde::<ClientFrame>(&body).ok(), Some(f));
                }
                if let Some(f) = decode_server(&body) {
                    prop_assert_eq!(crate::codec::decode_serde::<ServerFrame>(&body).ok(), Some(f));
                }
            }
        }

        #[test]
        fn every_single_byte_change_is_read_alike_by_both_decoders(
            id in "[a-z]{0,3}", ttl in prop::option::of(number()), tag in prop::option::of(number()),
        ) {
            // Every position of small valid bodies, set to every byte value.
            let p = Publish {
                id: id.clone(), target: Target::Group(vec![id.clone()]), name: Some(id.clone()),
                data: Bytes::from_static(b"ab"), persistent: true, ttl_ms: ttl, resent: false,
            };
            let d = DeliveryRef {
                id: &id, sender: &id, channel: Some(&id), name: None, data: b"ab",
                persistent: false, redelivered: true, ack_tag: tag,
            };
            let frames = [
                encode_publish(&p, 1 << 20).unwrap(),
                d.encode(1 << 20).unwrap(),
                encode_accepted(&id, 1 << 20).unwrap(),
            ];
            for frame in frames {
                let body = &frame[HEADER_LEN..];
                for i in 0..body.len() {
                    for byte in 0..=255u8 {
                        let mut b = body.to_vec();
                        b[i] = byte;
                        if let Some(f) = decode_client(&b) {
                            prop_assert_eq!(crate::codec::decode_serde::<ClientFrame>(&b).ok(), Some(f));
                        }
                        if let Some(f) = decode_server(&b) {
                            prop_assert_eq!(crate::codec::decode_serde::<ServerFrame>(&b).ok(), Some(f));
                        }
                    }
                }
            }
        }

        #[test]
        fn a_publish_frame_marked_resent_decodes_as_the_same_publish_resent(
            id in text(), target in target(), name in prop::option::of(text()), data in data(),
            persistent in any::<bool>(), ttl_ms in prop::option::of(number()), resent in any::<bool>(),
        ) {
            let p = Publish { id, target, name, data: Bytes::from(data), persistent, ttl_ms, resent };
            let mut frame = encode_publish(&p, 1 << 20).unwrap().to_vec();
            prop_assert!(set_publish_resent(&mut frame));
            let want = Publish { resent: true, ..p };
            prop_assert_eq!(&frame[..], &encode_publish(&want, 1 << 20).unwrap()[..]);
            let body = &frame[HEADER_LEN..];
            prop_assert_eq!(
                crate::codec::decode_serde::<ClientFrame>(body).ok(),
                Some(ClientFrame::Publish(want.clone()))
            );
            prop_assert_eq!(decode_client(body), Some(ClientFrame::Publish(want)));
        }

        #[test]
        fn only_whole_publish_frames_are_marked_resent(
            id in text(), data in data(), cut in 1usize..8, nonce in number(),
        ) {
            let p = Publish {
                id: id.clone(), target: Target::All, name: None, data: Bytes::from(data),
                persistent: true, ttl_ms: None, resent: false,
            };
            let publish = encode_publish(&p, 1 << 20).unwrap();
            // Other client frames (a server's `Deliver` has the same index as `Publish`: the
            // direction tells them apart, not the bytes).
            let frame = |f: &ClientFrame| encode_frame(f, 1 << 20).unwrap().to_vec();
            let others = [
                // Cut short, or without its header: not a whole frame.
                publish[..publish.len() - cut].to_vec(),
                publish[HEADER_LEN..].to_vec(),
                frame(&ClientFrame::Ack { tags: vec![1] }),
                frame(&ClientFrame::Subscribe { channel: id }),
                frame(&ClientFrame::Ping { nonce }),
                Vec::new(),
            ];
            for other in others {
                let mut bytes = other.clone();
                prop_assert!(!set_publish_resent(&mut bytes), "{:?}", other);
                prop_assert_eq!(bytes, other);
            }
        }

        #[test]
        fn the_origin_of_a_delivery_is_what_the_full_decode_reads(
            id in text(), sender in text(), channel in prop::option::of(text()),
            name in prop::option::of(text()), data in data(), persistent in any::<bool>(),
            redelivered in any::<bool>(), ack_tag in prop::option::of(number()),
        ) {
            let d = Delivery {
                id, sender, channel, name, data: Bytes::from(data), persistent, redelivered,
                ack_tag,
            };
            let frame = encode_frame(&ServerFrame::Deliver(d.clone()), 1 << 20).unwrap();
            let body = &frame[HEADER_LEN..];
            let Ok(ServerFrame::Deliver(full)) = crate::decode_body::<ServerFrame>(body) else {
                return Err(TestCaseError::fail("a Deliver frame decodes"));
            };
            prop_assert_eq!(
                decode_deliver_origin(body),
                Some(DeliveryOrigin { id: &full.id, sender: &full.sender })
            );
            let accepted = encode_accepted(&full.id, 1 << 20).unwrap();
            prop_assert_eq!(full, d);
            prop_assert_eq!(decode_deliver_origin(&accepted[HEADER_LEN..]), None);
        }

        #[test]
        fn the_origin_read_from_damaged_bytes_agrees_with_the_full_decode(
            id in text(), sender in text(), data in data(), ack_tag in prop::option::of(number()),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(), whole in any::<bool>(),
        ) {
            let d = DeliveryRef {
                id: &id, sender: &sender, channel: None, name: Some(&id), data: &data,
                persistent: false, redelivered: true, ack_tag,
            };
            let frame = d.encode(1 << 20).unwrap();
            let mut body = frame[HEADER_LEN..].to_vec();
            for (at, byte) in &damage {
                let i = at.index(body.len());
                body[i] = *byte;
            }
            if !whole {
                body.truncate(cut.index(body.len() + 1));
            }
            // Whenever both read the frame, they read the same id and sender; and whatever the
            // checked decoder takes, the origin is read from too.
            let origin = decode_deliver_origin(&body);
            if let Ok(ServerFrame::Deliver(full)) = crate::codec::decode_serde::<ServerFrame>(&body) {
                if let Some(origin) = origin {
                    prop_assert_eq!((origin.id, origin.sender), (&*full.id, &*full.sender));
                }
            }
            if let Some(fast) = decode_deliver(&body) {
                prop_assert_eq!(origin, Some(DeliveryOrigin { id: fast.id, sender: fast.sender }));
            }
        }

        #[test]
        fn what_the_decoders_accept_in_arbitrary_bytes_serde_reads_the_same(
            body in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Some(f) = decode_client(&body) {
                prop_assert_eq!(crate::codec::decode_serde::<ClientFrame>(&body).ok(), Some(f));
            }
            if let Some(f) = decode_server(&body) {
                prop_assert_eq!(crate::codec::decode_serde::<ServerFrame>(&body).ok(), Some(f));
            }
        }
    }
}
