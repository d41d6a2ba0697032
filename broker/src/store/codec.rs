//! Keys and values of the sled store.
//!
//! Keys start with a one-byte kind. Queue-scoped keys continue with the queue's kind and name
//! and a 0xFF byte, which cannot occur in UTF-8, so one queue's keys never prefix another's;
//! segment and segment header keys end with the segment's first seq in big-endian, so a
//! prefix scan is in seq order. Message ids are never part of a key.
//!
//! Values are bincode (serde, standard configuration), except segments and their headers,
//! which have a layout of their own (see [`super::segment`]). Decoding is always limited, so a corrupt length
//! prefix cannot make it allocate more than [`DECODE_LIMIT`].

pub(super) use super::segment::{
    EncodedSegment, EntryMeta, decode_header_value, decode_segment, decode_segment_header,
    encode_header_value, encode_segments,
};
use super::{QueueId, Seq, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most bytes one decode may claim.
const DECODE_LIMIT: usize = 64 << 20;

/// Settlement of a segment's entries, a bit each (bit `i` for the entry at first seq + `i`).
/// Encoded as a variable-length integer, so records written with 64-bit masks read the same.
pub(super) type Mask = u128;
/// Kind of the key holding the store's format version.
const META: u8 = b'm';
/// Kind of queue records: next seq and settlement.
pub(super) const QUEUE: u8 = b'q';
/// Kind of segments: up to [`super::segment::SEGMENT_ENTRIES`] consecutive entries.
pub(super) const SEGMENT: u8 = b's';
/// Kind of segment headers: each segment's entry metadata and size, under a key of its own
/// (the segment's key with this kind), so that opening the store reads no segment.
pub(super) const HEADER: u8 = b'h';
/// Kind of sessions, keyed by client name.
pub(super) const SESSION: u8 = b'n';

const CLIENT: u8 = b'c';
const BACKLOG: u8 = b'b';
const SEP: u8 = 0xFF;

/// The key of the format version and the version this code writes: 3, where each segment's
/// header is also stored under a key of its own (see [`super::segment::encode_header_value`]).
/// Format 2 has no header keys; format 1 has no header keys and segments in the bincode
/// layout. Both are read: the header keys are written when such a store is opened, and then
/// the store is marked as format 3, before anything else is written to it.
pub(super) const FORMAT_KEY: &[u8] = &[META, b'f'];
pub(super) const FORMAT: &[u8] = &[3];
pub(super) const FORMAT_2: &[u8] = &[2];
pub(super) const FORMAT_1: &[u8] = &[1];

pub(super) fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a value.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StoreError::Encode(e.to_string()))
}

/// Decodes a value that must fill `bytes` exactly; `what` names it in errors.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    let (value, used) = decode_prefix(bytes, what)?;
    if used != bytes.len() {
        return Err(StoreError::Corrupt(format!(
            "{what}: {} bytes left over",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Decodes a value at the start of `bytes`; returns it and the bytes it took.
pub(super) fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<(T, usize), StoreError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn queue_scoped(kind: u8, queue: &QueueId, extra: usize) -> Vec<u8> {
    let (qkind, name) = match queue {
        QueueId::Client(name) => (CLIENT, name),
        QueueId::Backlog(name) => (BACKLOG, name),
    };
    let mut key = Vec::with_capacity(3 + name.len() + extra);
    key.push(kind);
    key.push(qkind);
    key.extend_from_slice(name.as_bytes());
    key.push(SEP);
    key
}

/// Key of a queue's record.
pub(super) fn queue_key(queue: &QueueId) -> Vec<u8> {
    queue_scoped(QUEUE, queue, 0)
}

/// Prefix of every segment key of a queue.
pub(super) fn segments_prefix(queue: &QueueId) -> Vec<u8> {
    queue_scoped(SEGMENT, queue, 0)
}

/// Key of the segment of `queue` whose first seq is `first`.
pub(super) fn segment_key(queue: &QueueId, first: Seq) -> Vec<u8> {
    seq_key(SEGMENT, queue, first)
}

/// Key of the header of the segment of `queue` whose first seq is `first`.
pub(super) fn header_key(queue: &QueueId, first: Seq) -> Vec<u8> {
    seq_key(HEADER, queue, first)
}

/// Prefix of every segment header key of a queue.
pub(super) fn headers_prefix(queue: &QueueId) -> Vec<u8> {
    queue_scoped(HEADER, queue, 0)
}

fn seq_key(kind: u8, queue: &QueueId, first: Seq) -> Vec<u8> {
    let mut key = queue_scoped(kind, queue, 8);
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// Key of a session.
pub(super) fn session_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(SESSION);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The queue of a queue-scoped key body: kind byte, name, separator.
fn parse_queue(body: &[u8]) -> Option<QueueId> {
    let (&qkind, rest) = body.split_first()?;
    let (&sep, name) = rest.split_last()?;
    if sep != SEP {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?.to_owned();
    match qkind {
        CLIENT => Some(QueueId::Client(name)),
        BACKLOG => Some(QueueId::Backlog(name)),
        _ => None,
    }
}

/// The queue of a queue record key.
pub(super) fn parse_queue_key(key: &[u8]) -> Option<QueueId> {
    match key.split_first()? {
        (&QUEUE, body) => parse_queue(body),
        _ => None,
    }
}

/// The queue and first seq of a segment key.
pub(super) fn parse_segment_key(key: &[u8]) -> Option<(QueueId, Seq)> {
    parse_seq_key(SEGMENT, key)
}

/// The queue and first seq of a segment header key.
pub(super) fn parse_header_key(key: &[u8]) -> Option<(QueueId, Seq)> {
    parse_seq_key(HEADER, key)
}

fn parse_seq_key(kind: u8, key: &[u8]) -> Option<(QueueId, Seq)> {
    let (&found, body) = key.split_first()?;
    if found != kind {
        return None;
    }
    let split = body.len().checked_sub(8)?;
    let (body, seq) = body.split_at(split);
    let seq = Seq::from_be_bytes(seq.try_into().ok()?);
    Some((parse_queue(body)?, seq))
}

/// A queue's next seq and settlement, one small value per queue.
///
/// Every seq below `acked_below` is settled (or was never appended). Beyond it, `partial`
/// lists the segments, by first seq, that hold settled entries, with a bit mask of them (bit
/// `i` is seq `first + i`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct QueueRecord {
    pub(super) next_seq: Seq,
    pub(super) acked_below: Seq,
    pub(super) partial: Vec<(Seq, Mask)>,
}
