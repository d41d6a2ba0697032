//! The persistent messages handed to the connection and not yet confirmed by the broker's
//! `Accepted`, kept in send order to be sent again after a reconnection.

use crate::SendError;
use broadcast_protocol::Target;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap, VecDeque};
use tokio::sync::oneshot;

/// Where [`Client::send_confirmed`](crate::Client::send_confirmed) waits for the outcome.
pub(crate) type Confirm = oneshot::Sender<Result<(), SendError>>;

/// One unconfirmed message.
#[derive(Debug)]
pub(crate) struct Unconfirmed {
    pub(crate) id: String,
    pub(crate) target: Target,
    /// The encoded `Publish` frame; once sent again, with `resent` set.
    pub(crate) frame: Bytes,
    /// Whether `frame` has `resent` set.
    pub(crate) resent: bool,
    pub(crate) confirm: Option<Confirm>,
}

impl Unconfirmed {
    /// The frame to send again, marking it as resent the first time.
    pub(crate) fn resend_frame(&mut self) -> Bytes {
        if !self.resent {
            self.frame = mark_resent(&self.frame);
            self.resent = true;
        }
        self.frame.clone()
    }
}

/// The unconfirmed messages in send order, findable by id. Ids need not be unique: an
/// `Accepted` confirms the oldest unconfirmed message with its id.
#[derive(Debug, Default)]
pub(crate) struct UnconfirmedSet {
    by_seq: BTreeMap<u64, Unconfirmed>,
    by_id: HashMap<String, VecDeque<u64>>,
    next_seq: u64,
}

impl UnconfirmedSet {
    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Adds a message after every other one.
    pub(crate) fn push(&mut self, msg: Unconfirmed) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.entry(msg.id.clone()).or_default().push_back(seq);
        self.by_seq.insert(seq, msg);
    }

    /// Removes and returns the oldest message with this id, if any.
    pub(crate) fn confirm(&mut self, id: &str) -> Option<Unconfirmed> {
        let seqs = self.by_id.get_mut(id)?;
        let seq = seqs.pop_front();
        if seqs.is_empty() {
            self.by_id.remove(id);
        }
        self.by_seq.remove(&seq?)
    }

    /// The messages in send order, each with its sequence number for [`remove`](Self::remove).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Unconfirmed)> {
        self.by_seq.iter_mut().map(|(seq, msg)| (*seq, msg))
    }

    /// Removes the message with sequence number `seq`.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Unconfirmed> {
        let msg = self.by_seq.remove(&seq)?;
        if let Some(seqs) = self.by_id.get_mut(&msg.id) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.by_id.remove(&msg.id);
            }
        }
        Some(msg)
    }

    /// Removes every message, in send order.
    pub(crate) fn take_all(&mut self) -> Vec<Unconfirmed> {
        self.by_id.clear();
        std::mem::take(&mut self.by_seq).into_values().collect()
    }
}

/// The same encoded `Publish` frame with `resent` set.
///
/// `resent` is a `bool`, the last field of `Publish`, itself the last field of
/// `ClientFrame::Publish`: it is the last byte of the frame, one byte long.
pub(crate) fn mark_resent(frame: &Bytes) -> Bytes {
    let mut bytes = BytesMut::from(&frame[..]);
    if let Some(last) = bytes.last_mut() {
        *last = 1;
    }
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

    fn unconfirmed(id: &str) -> Unconfirmed {
        Unconfirmed {
            id: id.into(),
            target: Target::All,
            frame: encode_frame(&publish(false, None), 1 << 20).unwrap(),
            resent: false,
            confirm: None,
        }
    }

    fn ids(set: &mut UnconfirmedSet) -> Vec<String> {
        set.iter_mut().map(|(_, m)| m.id.clone()).collect()
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
        let seq_of_c = set.iter_mut().find(|(_, m)| m.id == "c").unwrap().0;
        assert_eq!(set.remove(seq_of_c).unwrap().id, "c");
        assert!(set.confirm("a").is_some());
        assert!(set.confirm("a").is_none());
        assert_eq!(ids(&mut set), ["b"]);
        assert_eq!(set.take_all().len(), 1);
        assert!(set.is_empty());
        assert!(set.confirm("b").is_none());
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
