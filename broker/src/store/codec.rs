//! Keys and values of the sled store.
//!
//! Keys start with a one-byte kind. Queue-scoped keys continue with the queue's kind and name
//! and a 0xFF byte, which cannot occur in UTF-8, so one queue's keys never prefix another's;
//! segment keys end with the segment's first seq in big-endian, so a prefix scan is in seq
//! order. Message ids are never part of a key.
//!
//! Values are bincode (serde, standard configuration). Decoding is always limited, so a
//! corrupt length prefix cannot make it allocate more than [`DECODE_LIMIT`].

use super::{QueueId, Seq, StoreError, StoredEntry, StoredMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most bytes one decode may claim.
const DECODE_LIMIT: usize = 64 << 20;

/// Most entries in one segment; settlement of a segment is a [`Mask`].
pub(super) const SEGMENT_ENTRIES: usize = 128;
/// Settlement of a segment's entries, a bit each (bit `i` for the entry at first seq + `i`).
/// Encoded as a variable-length integer, so records written with 64-bit masks read the same.
pub(super) type Mask = u128;
/// Most encoded entry bytes in one segment, unless a single entry is larger.
///
/// sled writes a tree node larger than 128 KiB as a file of its own, created at every rewrite
/// of the node and deleted later: a file system operation that costs more than the write
/// (on ext4 it grows slower as files come and go). Leaves split at 17 keys, a queue's
/// segments are appended at the end of its key range, and a split writes both halves, so
/// segments of at most 12 KiB keep every node written while appending under that size.
pub(super) const SEGMENT_BYTES: usize = 12 * 1024;

/// Kind of the key holding the store's format version.
const META: u8 = b'm';
/// Kind of queue records: next seq and settlement.
pub(super) const QUEUE: u8 = b'q';
/// Kind of segments: up to [`SEGMENT_ENTRIES`] consecutive entries.
pub(super) const SEGMENT: u8 = b's';
/// Kind of sessions, keyed by client name.
pub(super) const SESSION: u8 = b'n';

const CLIENT: u8 = b'c';
const BACKLOG: u8 = b'b';
const SEP: u8 = 0xFF;

/// The key of the format version and the version this code writes.
pub(super) const FORMAT_KEY: &[u8] = &[META, b'f'];
pub(super) const FORMAT: &[u8] = &[1];

fn config() -> impl bincode::config::Config {
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
fn decode_prefix<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<(T, usize), StoreError> {
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
    let mut key = queue_scoped(SEGMENT, queue, 8);
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
    let (&SEGMENT, body) = key.split_first()? else {
        return None;
    };
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

/// What the index keeps of each entry, and what a segment's header holds so that opening
/// the store reads no payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct EntryMeta {
    pub(super) size: u64,
    pub(super) expires_at_ms: u64,
}

/// One segment ready to be written.
#[derive(Debug)]
pub(super) struct EncodedSegment {
    pub(super) first: Seq,
    pub(super) metas: Vec<EntryMeta>,
    pub(super) value: Vec<u8>,
}

/// Splits `entries` (seqs from `first_seq`) into segments of at most [`SEGMENT_ENTRIES`]
/// entries and [`SEGMENT_BYTES`] encoded bytes; an entry larger than that gets a segment of
/// its own.
///
/// A segment value is the encoded header (the entries' [`EntryMeta`]s) followed by the encoded
/// entries, one after another.
pub(super) fn encode_segments(
    first_seq: Seq,
    entries: &[StoredEntry],
) -> Result<Vec<EncodedSegment>, StoreError> {
    // Each entry's encoded length, computed without encoding it, so that each segment is
    // encoded once, straight into its value. A notice (rare) is encoded here and copied.
    let mut lens = Vec::with_capacity(entries.len());
    let mut notices = Vec::new();
    for entry in entries {
        match entry {
            StoredEntry::Message(m) => lens.push(message_len(m)),
            StoredEntry::Notice { .. } => {
                let mut bytes = Vec::new();
                encode_entry(entry, &mut bytes)?;
                lens.push(bytes.len());
                notices.push(bytes);
            }
        }
    }
    let mut notices = notices.into_iter();
    let mut segments = Vec::new();
    let mut start = 0; // index of the segment's first entry
    while start < entries.len() {
        let mut bytes = lens[start];
        let mut end = start + 1; // one past the segment's last entry
        while end < entries.len()
            && end - start < SEGMENT_ENTRIES
            && bytes + lens[end] <= SEGMENT_BYTES
        {
            bytes += lens[end];
            end += 1;
        }
        let metas: Vec<EntryMeta> = entries[start..end]
            .iter()
            .map(|e| EntryMeta {
                size: e.size(),
                expires_at_ms: e.expires_at_ms(),
            })
            .collect();
        let mut value = Vec::with_capacity(9 + 18 * metas.len() + bytes);
        encode_metas(&metas, &mut value);
        for entry in &entries[start..end] {
            match entry {
                StoredEntry::Message(m) => encode_message(m, &mut value),
                StoredEntry::Notice { .. } => {
                    value.extend_from_slice(&notices.next().unwrap_or_default());
                }
            }
        }
        segments.push(EncodedSegment {
            first: first_seq + start as u64,
            metas,
            value,
        });
        start = end;
    }
    Ok(segments)
}

/// Appends `n` as bincode's standard configuration encodes an unsigned integer: below 251 in
/// one byte, else a marker byte (251, 252, 253) and the value in 2, 4 or 8 little-endian bytes.
fn put_varint(out: &mut Vec<u8>, n: u64) {
    if n < 251 {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(251);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(252);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Appends a byte string (or a string's bytes) as bincode does: its length, then the bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes [`put_varint`] takes for `n`.
fn varint_len(n: u64) -> usize {
    if n < 251 {
        1
    } else if n <= u64::from(u16::MAX) {
        3
    } else if n <= u64::from(u32::MAX) {
        5
    } else {
        9
    }
}

fn bytes_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

fn opt_str_len(s: Option<&str>) -> usize {
    1 + s.map_or(0, |s| bytes_len(s.len()))
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

/// Bytes [`encode_message`] appends for `m`.
fn message_len(m: &StoredMessage) -> usize {
    1 + bytes_len(m.id.len())
        + bytes_len(m.sender.len())
        + opt_str_len(m.channel.as_deref())
        + opt_str_len(m.name.as_deref())
        + bytes_len(m.data.len())
        + varint_len(m.expires_at_ms)
        + 1
}

/// Appends the encoding of the entry holding message `m`: the same bytes as bincode's serde
/// encoding of the [`StoredEntry`] (so either reads what the other wrote), written field by
/// field instead of through serde, as nearly every entry is a message.
fn encode_message(m: &StoredMessage, out: &mut Vec<u8>) {
    // The variant's index, 0 for `Message`, then the fields in declaration order.
    out.push(0);
    put_bytes(out, m.id.as_bytes());
    put_bytes(out, m.sender.as_bytes());
    put_opt_str(out, m.channel.as_deref());
    put_opt_str(out, m.name.as_deref());
    put_bytes(out, &m.data);
    put_varint(out, m.expires_at_ms);
    out.push(u8::from(m.redelivered));
}

/// Appends one entry's encoding, the same bytes as bincode's serde encoding.
fn encode_entry(entry: &StoredEntry, out: &mut Vec<u8>) -> Result<(), StoreError> {
    match entry {
        StoredEntry::Message(m) => {
            encode_message(m, out);
            Ok(())
        }
        StoredEntry::Notice { .. } => bincode::serde::encode_into_std_write(entry, out, config())
            .map(|_| ())
            .map_err(|e| StoreError::Encode(e.to_string())),
    }
}

/// Appends a segment header, the same bytes as bincode's serde encoding of the slice: its
/// length, then each entry's size and expiry.
fn encode_metas(metas: &[EntryMeta], out: &mut Vec<u8>) {
    put_varint(out, metas.len() as u64);
    for meta in metas {
        put_varint(out, meta.size);
        put_varint(out, meta.expires_at_ms);
    }
}

/// The header of a segment value: its entries' metadata, and where the entries start.
pub(super) fn decode_segment_header(value: &[u8]) -> Result<(Vec<EntryMeta>, usize), StoreError> {
    let (metas, used): (Vec<EntryMeta>, usize) = decode_prefix(value, "segment header")?;
    if metas.is_empty() || metas.len() > SEGMENT_ENTRIES {
        return Err(StoreError::Corrupt(format!(
            "segment header: {} entries",
            metas.len()
        )));
    }
    Ok((metas, used))
}

/// Every entry of a segment value.
pub(super) fn decode_segment(value: &[u8]) -> Result<Vec<StoredEntry>, StoreError> {
    let (metas, mut at) = decode_segment_header(value)?;
    let mut entries = Vec::with_capacity(metas.len());
    for _ in 0..metas.len() {
        let (entry, used) = decode_prefix::<StoredEntry>(&value[at..], "segment entry")?;
        at += used;
        entries.push(entry);
    }
    if at != value.len() {
        return Err(StoreError::Corrupt(format!(
            "segment: {} bytes left over",
            value.len() - at
        )));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn serde_bytes<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, config()).expect("encodes")
    }

    /// Integers around every boundary of the variable-length encoding, and any other.
    fn int() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..300,
            (0u64..6).prop_map(|d| 65_533 + d),
            (0u64..6).prop_map(|d| 4_294_967_293 + d),
            (0u64..3).prop_map(|d| u64::MAX - d),
            any::<u64>(),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,40}", "x{250,260}"]
    }

    fn message() -> impl Strategy<Value = StoredMessage> {
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 65_530..65_540),
            ],
            int(),
            any::<bool>(),
        )
            .prop_map(
                |(id, sender, channel, name, data, expires_at_ms, redelivered)| StoredMessage {
                    id,
                    sender,
                    channel,
                    name,
                    data: Bytes::from(data),
                    expires_at_ms,
                    redelivered,
                },
            )
    }

    proptest! {
        #[test]
        fn an_entry_is_encoded_as_bincode_encodes_it(m in message()) {
            let len = message_len(&m);
            let entry = StoredEntry::Message(m);
            let mut fast = Vec::new();
            encode_entry(&entry, &mut fast).expect("encodes");
            prop_assert_eq!(fast.len(), len);
            prop_assert_eq!(&fast, &serde_bytes(&entry));
            let (back, used): (StoredEntry, usize) =
                decode_prefix(&fast, "entry").expect("decodes");
            prop_assert_eq!(used, fast.len());
            prop_assert_eq!(back, entry);
        }

        #[test]
        fn a_segment_header_is_encoded_as_bincode_encodes_it(
            metas in proptest::collection::vec((int(), int()), 0..300)
        ) {
            let metas: Vec<EntryMeta> = metas
                .into_iter()
                .map(|(size, expires_at_ms)| EntryMeta { size, expires_at_ms })
                .collect();
            let mut fast = Vec::new();
            encode_metas(&metas, &mut fast);
            prop_assert_eq!(fast, serde_bytes(&metas));
        }
    }
}
