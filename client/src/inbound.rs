//! The reading side of a connection: frames from the broker, with deliveries made into
//! [`Message`]s straight from the frame's bytes.
//!
//! Most frames a client reads are deliveries, and most deliveries come from a few senders
//! through a few channels: their names are kept in a small cache and shared between messages,
//! so that a delivery costs allocations for its id and its payload only.

use crate::message::Message;
use broadcast_protocol::names::MAX_NAME_LEN;
use broadcast_protocol::{
    CodecError, DeliveryNamed, FrameCodec, ServerFrame, decode_body, decode_deliver_with,
};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio_util::codec::Decoder;

/// What the broker sent.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A delivery, already made into the message the application gets.
    Message(Message),
    /// Any other frame.
    Frame(ServerFrame),
}

/// Names the cache holds at most (each at most 256 bytes).
const NAMES: usize = 16;

/// Decodes the broker's frames within the connection's frame limit.
#[derive(Debug)]
pub(crate) struct InboundCodec {
    framing: FrameCodec<ServerFrame>,
    names: NameCache,
}

impl InboundCodec {
    /// A decoder of frames of at most `max_frame` bytes.
    pub(crate) fn new(max_frame: u32) -> Self {
        Self {
            framing: FrameCodec::new(max_frame, max_frame),
            names: NameCache::default(),
        }
    }

    fn message(d: DeliveryNamed<'_, Arc<str>>) -> Message {
        Message {
            id: d.id.to_owned(),
            sender: d.sender,
            channel: d.channel,
            name: d.name.map(str::to_owned),
            data: Bytes::copy_from_slice(d.data),
            persistent: d.persistent,
            redelivered: d.redelivered,
            ack_tag: d.ack_tag,
        }
    }
}

impl Decoder for InboundCodec {
    type Item = Result<Incoming, CodecError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let Some(body) = self.framing.decode_raw(src)? else {
            return Ok(None);
        };
        let names = &mut self.names;
        if let Some(d) = decode_deliver_with(&body, |name| names.get(name)) {
            return Ok(Some(Ok(Incoming::Message(Self::message(d)))));
        }
        // Anything else, or a delivery with something unusual in it, goes the general way
        // (which also names what is wrong with a bad frame).
        Ok(Some(decode_body::<ServerFrame>(&body).map(|f| match f {
            ServerFrame::Deliver(d) => Incoming::Message(d.into()),
            f => Incoming::Frame(f),
        })))
    }
}

/// The latest names seen, shared; the oldest makes room for a new one.
#[derive(Debug, Default)]
struct NameCache {
    names: Vec<Arc<str>>,
    next: usize,
}

impl NameCache {
    /// The name these bytes spell, shared; `None` when they are not UTF-8. A name seen before
    /// is found by its bytes, without checking them again.
    fn get(&mut self, name: &[u8]) -> Option<Arc<str>> {
        if let Some(known) = self.names.iter().find(|n| n.as_bytes() == name) {
            return Some(known.clone());
        }
        let new: Arc<str> = Arc::from(std::str::from_utf8(name).ok()?);
        if name.len() > MAX_NAME_LEN {
            // Names are at most this long; a longer one (from a broker that does not keep
            // to that) is used but not kept.
            return Some(new);
        }
        if self.names.len() < NAMES {
            self.names.push(new.clone());
        } else {
            self.names[self.next] = new.clone();
            self.next = (self.next + 1) % NAMES;
        }
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_protocol::{Delivery, encode_frame};

    fn deliver(sender: &str, channel: Option<&str>) -> Delivery {
        Delivery {
            id: "m1".into(),
            sender: sender.into(),
            channel: channel.map(Into::into),
            name: Some("ev".into()),
            data: Bytes::from_static(b"hi"),
            persistent: true,
            redelivered: false,
            ack_tag: Some(9),
        }
    }

    fn read(codec: &mut InboundCodec, frame: &ServerFrame) -> Incoming {
        let mut buf = BytesMut::from(&encode_frame(frame, 1 << 20).unwrap()[..]);
        codec.decode(&mut buf).unwrap().unwrap().unwrap()
    }

    #[test]
    fn deliveries_become_messages_and_share_repeated_names() {
        let mut codec = InboundCodec::new(1 << 20);
        let d = deliver("alice", Some("news"));
        let Incoming::Message(a) = read(&mut codec, &ServerFrame::Deliver(d.clone())) else {
            panic!("not a message");
        };
        assert_eq!(a, Message::from(d.clone()));
        let Incoming::Message(b) = read(&mut codec, &ServerFrame::Deliver(d)) else {
            panic!("not a message");
        };
        assert!(
            Arc::ptr_eq(&a.sender, &b.sender),
            "the sender's name is shared"
        );
        assert!(Arc::ptr_eq(
            a.channel.as_ref().unwrap(),
            b.channel.as_ref().unwrap()
        ));
        let Incoming::Frame(ServerFrame::Accepted { id }) =
            read(&mut codec, &ServerFrame::Accepted { id: "x".into() })
        else {
            panic!("not a frame");
        };
        assert_eq!(id, "x");
    }

    #[test]
    fn a_delivery_with_a_sender_that_is_not_utf8_is_reported_as_malformed() {
        let mut codec = InboundCodec::new(1 << 20);
        let frame = encode_frame(&ServerFrame::Deliver(deliver("ab", None)), 1 << 20).unwrap();
        let mut bytes = frame.to_vec();
        let at = bytes.windows(2).position(|w| w == b"ab").unwrap();
        bytes[at] = 0xff;
        let mut buf = BytesMut::from(&bytes[..]);
        let item = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(item, Err(CodecError::Decode(_))), "{item:?}");
        assert!(
            buf.is_empty(),
            "the bad frame is consumed; the stream goes on"
        );
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_names_and_stays_correct() {
        let mut cache = NameCache::default();
        for i in 0..100 {
            let name = format!("sender-{i}");
            assert_eq!(cache.get(name.as_bytes()).as_deref(), Some(name.as_str()));
            assert_eq!(cache.get(b"steady").as_deref(), Some("steady"));
        }
        assert!(cache.names.len() <= NAMES);
        assert_eq!(cache.get(b"not \xff utf-8"), None);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(cache.get(long.as_bytes()).as_deref(), Some(long.as_str()));
        assert!(
            cache.names.iter().all(|n| n.len() <= MAX_NAME_LEN),
            "an over-long name is not kept"
        );
    }
}
