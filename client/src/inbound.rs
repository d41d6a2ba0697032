//! The reading side of a connection: frames from the broker, with deliveries made into
//! [`Message`]s straight from the frame's bytes.
//!
//! Most frames a client reads are deliveries, and most deliveries come from a few senders
//! through a few channels: their names are kept in a small cache and shared between messages,
//! so that a delivery costs allocations for its id and its payload only.

use crate::message::Message;
use broadcast_protocol::{
    CodecError, DeliveryRef, FrameCodec, ServerFrame, decode_body, decode_deliver,
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

    fn message(&mut self, d: &DeliveryRef<'_>) -> Message {
        Message {
            id: d.id.to_owned(),
            sender: self.names.get(d.sender),
            channel: d.channel.map(|c| self.names.get(c)),
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
        if let Some(d) = decode_deliver(&body) {
            return Ok(Some(Ok(Incoming::Message(self.message(&d)))));
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
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().find(|n| ***n == *name) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(name);
        if self.names.len() < NAMES {
            self.names.push(new.clone());
        } else {
            self.names[self.next] = new.clone();
            self.next = (self.next + 1) % NAMES;
        }
        new
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
    fn the_cache_holds_a_bounded_number_of_names_and_stays_correct() {
        let mut cache = NameCache::default();
        for i in 0..100 {
            let name = format!("sender-{i}");
            assert_eq!(&*cache.get(&name), name.as_str());
            assert_eq!(&*cache.get("steady"), "steady");
        }
        assert!(cache.names.len() <= NAMES);
    }
}
