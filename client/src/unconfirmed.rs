//! The persistent messages handed to the connection and not yet confirmed by the broker's
//! `Accepted`, kept in send order to be sent again after a reconnection.

use crate::SendError;
use crate::index::HashIndex;
use broadcast_protocol::{
    ClientFrame, HEADER_LEN, Target, decode_body, set_publish_resent, varint,
};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use tokio::sync::oneshot;

/// Where [`Client::send_confirmed`](crate::Client::send_confirmed) waits for the outcome.
pub(crate) type Confirm = oneshot::Sender<Result<(), SendError>>;

/// One unconfirmed message. Its id and target are read from its frame when needed, rather
/// than kept in copies of their own.
#[derive(Debug)]
pub(crate) struct Unconfirmed {
    /// The encoded `Publish` frame; once sent again, with `resent` set.
    pub(crate) frame: Bytes,
    /// Whether `frame` has `resent` set.
    pub(crate) resent: bool,
    pub(crate) confirm: Option<Confirm>,
}

impl Unconfirmed {
    /// The message id.
    pub(crate) fn id(&self) -> &str {
        publish_id(&self.frame).unwrap_or_default()
    }

    /// The frame to send again, marking it as resent the first time.
    pub(crate) fn resend_frame(&mut self) -> Bytes {
        if !self.resent {
            self.frame = mark_resent(&self.frame);
            self.resent = true;
        }
        self.frame.clone()
    }
}

/// The id of the message in an encoded `ClientFrame::Publish` frame (header included).
///
/// The body starts with the variant index of `ClientFrame`, then the `Publish` struct, whose
/// first field is the id: a length and UTF-8 bytes.
pub(crate) fn publish_id(frame: &[u8]) -> Option<&str> {
    let mut body = varint::Reader::new(frame.get(HEADER_LEN..)?);
    let _variant = body.varint()?;
    body.str()
}

/// The id and target of the message in an encoded `ClientFrame::Publish` frame (header
/// included), decoded in full: for the rare reports that need the target.
pub(crate) fn publish_parts(frame: &[u8]) -> Option<(String, Target)> {
    match decode_body::<ClientFrame>(frame.get(HEADER_LEN..)?) {
        Ok(ClientFrame::Publish(p)) => Some((p.id, p.target)),
        _ => None,
    }
}

/// The unconfirmed messages in send order, findable by id. Ids need not be unique: an
/// `Accepted` confirms the oldest unconfirmed message with its id.
///
/// Messages sit in a queue of slots numbered by a sequence number; a confirmed message leaves
/// an empty slot, dropped once it reaches the front. Confirmations mostly come in send order,
/// so a confirmation first looks at the oldest few messages; only one that is not among them
/// builds an index from the hash of each id to sequence numbers, kept up to date from then on
/// and dropped once the set is empty again.
#[derive(Debug, Default)]
pub(crate) struct UnconfirmedSet {
    slots: VecDeque<Option<Unconfirmed>>,
    /// The sequence number of `slots[0]`.
    base: u64,
    len: usize,
    /// Every message's id hash, while `indexed`.
    index: HashIndex,
    indexed: bool,
}

/// Messages a confirmation compares, oldest first, before it builds the index.
const FRONT: usize = 8;

impl UnconfirmedSet {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, seq: u64) -> Option<&Unconfirmed> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    fn take_slot(&mut self, seq: u64) -> Option<Unconfirmed> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let msg = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.len == 0 && self.indexed {
            // In order again: confirmations look at the front first.
            self.index.clear();
            self.indexed = false;
        }
        Some(msg)
    }

    /// Adds a message after every other one.
    pub(crate) fn push(&mut self, msg: Unconfirmed) {
        // Empty slots left behind an old unconfirmed message are squeezed out now and then,
        // so that the queue stays within a small multiple of the messages it holds.
        if self.slots.len() >= 1024 && self.slots.len() > 4 * self.len {
            self.compact();
        }
        let seq = self.base + self.slots.len() as u64;
        if self.indexed {
            let hash = self.index.hash(msg.id().as_bytes());
            self.index.insert(hash, seq);
        }
        self.slots.push_back(Some(msg));
        self.len += 1;
    }

    /// Renumbers the messages without gaps, and the index with them.
    fn compact(&mut self) {
        let msgs: Vec<Unconfirmed> = self.slots.drain(..).flatten().collect();
        self.slots.extend(msgs.into_iter().map(Some));
        if self.indexed {
            self.build_index();
        }
    }

    /// Indexes every message.
    fn build_index(&mut self) {
        self.index.clear();
        for (i, msg) in self.slots.iter().enumerate() {
            if let Some(msg) = msg {
                let hash = self.index.hash(msg.id().as_bytes());
                self.index.insert(hash, self.base + i as u64);
            }
        }
        self.indexed = true;
    }

    /// Removes and returns the oldest message with this id, if any.
    pub(crate) fn confirm(&mut self, id: &str) -> Option<Unconfirmed> {
        if !self.indexed {
            let mut seen = 0;
            for (i, slot) in self.slots.iter().enumerate() {
                let Some(msg) = slot else { continue };
                if msg.id() == id {
                    return self.take_slot(self.base + i as u64);
                }
                seen += 1;
                if seen == FRONT {
                    break;
                }
            }
            if seen < FRONT {
                // Every message was compared.
                return None;
            }
            self.build_index();
        }
        let hash = self.index.hash(id.as_bytes());
        let slots = &self.slots;
        let base = self.base;
        let seq = self.index.take(hash, |seq| {
            let i = (seq - base) as usize;
            slots
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|m| m.id() == id)
        })?;
        self.take_slot(seq)
    }

    /// The messages in send order, each with its sequence number for [`remove`](Self::remove).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Unconfirmed)> {
        let base = self.base;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, slot)| slot.as_mut().map(|msg| (base + i as u64, msg)))
    }

    /// Removes the message with sequence number `seq`.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Unconfirmed> {
        if self.indexed {
            let hash = self.index.hash(self.slot(seq)?.id().as_bytes());
            self.index.remove(hash, seq);
        }
        self.take_slot(seq)
    }

    /// Removes every message, in send order.
    pub(crate) fn take_all(&mut self) -> Vec<Unconfirmed> {
        self.index.clear();
        self.indexed = false;
        self.base += self.slots.len() as u64;
        self.len = 0;
        self.slots.drain(..).flatten().collect()
    }
}

/// The same encoded `Publish` frame with `resent` set.
pub(crate) fn mark_resent(frame: &Bytes) -> Bytes {
    let mut bytes = BytesMut::from(&frame[..]);
    let marked = set_publish_resent(&mut bytes);
    // The client encoded the frame itself, as a whole `Publish` frame.
    debug_assert!(marked, "not a Publish frame");
    bytes.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_protocol::{ClientFrame, Publish, encode_frame};

    fn publish(resent: bool, ttl_ms: Option<u64>) -> ClientFrame {
        ClientFrame::Publish(Publish {
            id: "m-1".into(),
            target: Target::Group(vec!["a".into(), "b".into()]),
            name: Some("ev".into()),
            data: Bytes::from_static(b"payload"),
            persistent: true,
            ttl_ms,
            resent,
        })
    }

    #[test]
    fn marking_a_frame_resent_sets_the_resent_field() {
        for ttl in [None, Some(0), Some(300), Some(u64::MAX)] {
            let original = encode_frame(&publish(false, ttl), 1 << 20).unwrap();
            let expected = encode_frame(&publish(true, ttl), 1 << 20).unwrap();
            assert_eq!(mark_resent(&original), expected);
        }
    }

    fn frame_with_id(id: &str) -> Bytes {
        let mut frame = publish(false, None);
        if let ClientFrame::Publish(p) = &mut frame {
            p.id = id.into();
        }
        encode_frame(&frame, 1 << 20).unwrap()
    }

    fn unconfirmed(id: &str) -> Unconfirmed {
        Unconfirmed {
            frame: frame_with_id(id),
            resent: false,
            confirm: None,
        }
    }

    fn ids(set: &mut UnconfirmedSet) -> Vec<String> {
        set.iter_mut().map(|(_, m)| m.id().to_owned()).collect()
    }

    #[test]
    fn the_id_and_target_are_read_from_the_frame() {
        for len in [0, 1, 21, 250, 251, 300, 70_000] {
            let id = "x".repeat(len);
            let frame = frame_with_id(&id);
            assert_eq!(publish_id(&frame), Some(id.as_str()));
            let (parsed, target) = publish_parts(&frame).unwrap();
            assert_eq!(parsed, id);
            assert_eq!(target, Target::Group(vec!["a".into(), "b".into()]));
            assert_eq!(publish_id(&mark_resent(&frame)), Some(id.as_str()));
        }
        assert_eq!(publish_id(b"\0\0"), None);
        assert_eq!(publish_id(b"\0\0\0\x09\x01\x30"), None, "cut short");
    }

    #[test]
    fn empty_slots_are_squeezed_out_behind_an_old_message() {
        let mut set = UnconfirmedSet::default();
        set.push(unconfirmed("old"));
        for round in 0..20 {
            for i in 0..500 {
                set.push(unconfirmed(&format!("m{round}-{i}")));
            }
            for i in 0..500 {
                assert!(set.confirm(&format!("m{round}-{i}")).is_some());
            }
            assert!(set.slots.len() <= 4 * set.len() + 1024 + 500);
        }
        set.push(unconfirmed("new"));
        assert_eq!(ids(&mut set), ["old", "new"]);
        assert!(set.confirm("new").is_some());
        assert!(set.confirm("old").is_some());
        assert!(set.is_empty());
    }

    #[test]
    fn accepted_confirms_the_oldest_message_with_its_id_and_order_is_kept() {
        let mut set = UnconfirmedSet::default();
        for id in ["a", "b", "a", "c"] {
            set.push(unconfirmed(id));
        }
        assert_eq!(set.len(), 4);
        assert!(set.confirm("zzz").is_none());
        assert!(set.confirm("a").is_some());
        assert_eq!(ids(&mut set), ["b", "a", "c"]);
        let seq_of_c = set.iter_mut().find(|(_, m)| m.id() == "c").unwrap().0;
        assert_eq!(set.remove(seq_of_c).unwrap().id(), "c");
        assert!(set.confirm("a").is_some());
        assert!(set.confirm("a").is_none());
        assert_eq!(ids(&mut set), ["b"]);
        assert_eq!(set.take_all().len(), 1);
        assert!(set.is_empty());
        assert!(set.confirm("b").is_none());
    }

    /// What the set must do, written plainly: a list in send order.
    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Confirm(u8),
        /// Removes the message at this position (modulo the length), if any.
        Remove(usize),
        TakeAll,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Few distinct ids, so that duplicates and misses are common; pushes weigh more, so
        // that the set grows past the front that confirmations look at first.
        prop_oneof![
            6 => (0u8..24).prop_map(Op::Push),
            4 => (0u8..24).prop_map(Op::Confirm),
            1 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::TakeAll),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_set_behaves_as_a_list_in_send_order(
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            let mut set = UnconfirmedSet::default();
            let mut model: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(n) => {
                        set.push(unconfirmed(&format!("id{n}")));
                        model.push(format!("id{n}"));
                    }
                    Op::Confirm(n) => {
                        let id = format!("id{n}");
                        let got = set.confirm(&id).map(|m| m.id().to_owned());
                        let want = model.iter().position(|m| *m == id).map(|i| model.remove(i));
                        proptest::prop_assert_eq!(got, want);
                    }
                    Op::Remove(i) => {
                        if !model.is_empty() {
                            let i = i % model.len();
                            let seq = set.iter_mut().nth(i).map(|(seq, _)| seq).unwrap();
                            let got = set.remove(seq).map(|m| m.id().to_owned());
                            proptest::prop_assert_eq!(got, Some(model.remove(i)));
                        }
                    }
                    Op::TakeAll => {
                        let got: Vec<String> =
                            set.take_all().iter().map(|m| m.id().to_owned()).collect();
                        proptest::prop_assert_eq!(got, std::mem::take(&mut model));
                    }
                }
                proptest::prop_assert_eq!(set.len(), model.len());
                proptest::prop_assert_eq!(ids(&mut set), model.clone());
            }
        }
    }

    #[test]
    fn in_order_confirmations_use_no_index_and_one_out_of_order_builds_it() {
        let mut set = UnconfirmedSet::default();
        for i in 0..100 {
            set.push(unconfirmed(&format!("m{i}")));
        }
        for i in 0..50 {
            assert!(set.confirm(&format!("m{i}")).is_some());
        }
        assert!(!set.indexed);
        assert!(set.confirm("m99").is_some());
        assert!(set.indexed);
        assert!(set.confirm("nothing").is_none());
        for i in 50..99 {
            assert!(set.confirm(&format!("m{i}")).is_some());
        }
        assert!(set.is_empty());
        assert!(
            !set.indexed,
            "an empty set goes back to looking at the front"
        );
    }

    #[test]
    fn a_resent_frame_is_marked_once() {
        let mut msg = unconfirmed("a");
        let first = msg.resend_frame();
        assert!(msg.resent);
        assert_eq!(first.last(), Some(&1));
        assert_eq!(msg.resend_frame(), first);
    }
}
