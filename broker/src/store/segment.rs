//! Segment values: up to [`SEGMENT_ENTRIES`] consecutive entries of one queue in one sled value.
//!
//! Segments are written in the compact layout of store format 2. Integers are variable-length
//! as in bincode's standard configuration ([`broadcast_protocol::varint`]) (below 251 in one byte, else a marker byte 251, 252
//! or 253 and the value in 2, 4 or 8 little-endian bytes); a string or byte string is its
//! length and its bytes.
//!
//! ```text
//! segment = 0xFE, count, base expiry, count × meta, count × entry
//! meta    = size, expiry − base expiry (wrapping, zigzag)
//! entry   = tag, then for a message: id, sender (unless SAME_SENDER), channel (if CHANNEL),
//!           name (if NAME), data;  for a notice (tag NOTICE): the bincode encoding of the
//!           whole entry
//! tag     = REDELIVERED 0x01 | CHANNEL 0x02 | NAME 0x04 | SAME_SENDER 0x08, or NOTICE 0x80
//! ```
//!
//! A message's expiry is only in the header, and a message from the same sender as the entry
//! before it names no sender: a segment of one sender's messages holds little besides ids and
//! payloads, so sled, which writes each value about three times as its tree splits, writes
//! fewer bytes per message.
//!
//! Values of store format 1 are still read: the bincode encoding of the `Vec<EntryMeta>`
//! header, then the bincode encoding of each entry. Their first byte is their entry count (1
//! to 128), never 0xFE.

use super::codec::decode_prefix;
use super::{Seq, StoreError, StoredEntry, StoredMessage};
use broadcast_protocol::varint::{self, bytes_len, put as put_varint, put_bytes};

/// Most entries in one segment; settlement of a segment is a 128-bit mask.
pub(crate) const SEGMENT_ENTRIES: usize = 128;
/// Most encoded entry bytes in one segment, unless a single entry is larger.
///
/// sled writes a tree node larger than 128 KiB as a file of its own, created at every rewrite
/// of the node and deleted later: a file system operation that costs more than the write
/// (on ext4 it grows slower as files come and go). Leaves split at 17 keys, a queue's
/// segments are appended at the end of its key range, and a split writes both halves, so
/// segments of at most 12 KiB keep every node written while appending under that size.
pub(crate) const SEGMENT_BYTES: usize = 12 * 1024;

/// First byte of a segment in the compact layout.
const COMPACT: u8 = 0xFE;
const REDELIVERED: u8 = 0x01;
const CHANNEL: u8 = 0x02;
const NAME: u8 = 0x04;
const SAME_SENDER: u8 = 0x08;
const NOTICE: u8 = 0x80;

/// What the index keeps of each entry, and what a segment's header holds so that opening
/// the store reads no payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct EntryMeta {
    pub(crate) size: u64,
    pub(crate) expires_at_ms: u64,
}

impl EntryMeta {
    /// What the header holds of `entry`.
    pub(crate) fn of(entry: &StoredEntry) -> Self {
        Self {
            size: entry.size(),
            expires_at_ms: entry.expires_at_ms(),
        }
    }
}

/// One segment ready to be written.
#[derive(Debug)]
pub(crate) struct EncodedSegment {
    pub(crate) first: Seq,
    pub(crate) metas: Vec<EntryMeta>,
    pub(crate) value: Vec<u8>,
}

/// Splits `entries` (seqs from `first_seq`) into segments of at most [`SEGMENT_ENTRIES`]
/// entries and [`SEGMENT_BYTES`] bytes of encoded entries; an entry larger than that gets a
/// segment of its own.
pub(crate) fn encode_segments(
    first_seq: Seq,
    entries: &[StoredEntry],
) -> Result<Vec<EncodedSegment>, StoreError> {
    // Each entry's encoded length, with its sender (as the first of a segment) and without
    // it when it may be left out, so that each segment is encoded once, straight into its
    // value. A notice (rare) is encoded here and copied.
    let mut lens = Vec::with_capacity(entries.len());
    let mut notices = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry {
            StoredEntry::Message(m) => {
                let full = message_len(m, false);
                let same = i > 0 && same_sender(&entries[i - 1], m);
                lens.push((full, if same { message_len(m, true) } else { full }));
            }
            StoredEntry::Notice { .. } => {
                let mut bytes = vec![NOTICE];
                bincode::serde::encode_into_std_write(entry, &mut bytes, super::codec::config())
                    .map_err(|e| StoreError::Encode(e.to_string()))?;
                lens.push((bytes.len(), bytes.len()));
                notices.push(bytes);
            }
        }
    }
    let mut notices = notices.into_iter();
    let mut segments = Vec::new();
    let mut start = 0; // index of the segment's first entry
    while start < entries.len() {
        let mut bytes = lens[start].0;
        let mut end = start + 1; // one past the segment's last entry
        while end < entries.len()
            && end - start < SEGMENT_ENTRIES
            && bytes + lens[end].1 <= SEGMENT_BYTES
        {
            bytes += lens[end].1;
            end += 1;
        }
        let run = &entries[start..end];
        let metas: Vec<EntryMeta> = run.iter().map(EntryMeta::of).collect();
        let mut value = Vec::with_capacity(19 + 10 * metas.len() + bytes);
        encode_header(&metas, &mut value);
        for (i, entry) in run.iter().enumerate() {
            match entry {
                StoredEntry::Message(m) => {
                    let same = i > 0 && same_sender(&run[i - 1], m);
                    encode_message(m, same, &mut value);
                }
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

fn same_sender(before: &StoredEntry, m: &StoredMessage) -> bool {
    matches!(before, StoredEntry::Message(b) if b.sender == m.sender)
}

fn encode_header(metas: &[EntryMeta], out: &mut Vec<u8>) {
    let base = metas.first().map_or(0, |m| m.expires_at_ms);
    out.push(COMPACT);
    put_varint(out, metas.len() as u64);
    put_varint(out, base);
    for meta in metas {
        put_varint(out, meta.size);
        put_varint(out, zigzag(meta.expires_at_ms.wrapping_sub(base) as i64));
    }
}

fn message_len(m: &StoredMessage, same_sender: bool) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| bytes_len(s.len()));
    1 + bytes_len(m.id.len())
        + if same_sender {
            0
        } else {
            bytes_len(m.sender.len())
        }
        + opt(&m.channel)
        + opt(&m.name)
        + bytes_len(m.data.len())
}

fn encode_message(m: &StoredMessage, same_sender: bool, out: &mut Vec<u8>) {
    let mut tag = 0;
    if m.redelivered {
        tag |= REDELIVERED;
    }
    if m.channel.is_some() {
        tag |= CHANNEL;
    }
    if m.name.is_some() {
        tag |= NAME;
    }
    if same_sender {
        tag |= SAME_SENDER;
    }
    out.push(tag);
    put_bytes(out, m.id.as_bytes());
    if !same_sender {
        put_bytes(out, m.sender.as_bytes());
    }
    if let Some(channel) = &m.channel {
        put_bytes(out, channel.as_bytes());
    }
    if let Some(name) = &m.name {
        put_bytes(out, name.as_bytes());
    }
    put_bytes(out, &m.data);
}

/// The header of a segment value: its entries' metadata, and where the entries start.
pub(crate) fn decode_segment_header(value: &[u8]) -> Result<(Vec<EntryMeta>, usize), StoreError> {
    let (metas, used) = if value.first() == Some(&COMPACT) {
        let mut r = Reader::new(value);
        r.skip(1)?;
        let count = r.varint()?;
        if count == 0 || count > SEGMENT_ENTRIES as u64 {
            return Err(corrupt(format!("segment header: {count} entries")));
        }
        let base = r.varint()?;
        let mut metas = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let size = r.varint()?;
            let delta = unzigzag(r.varint()?);
            metas.push(EntryMeta {
                size,
                expires_at_ms: base.wrapping_add(delta as u64),
            });
        }
        (metas, r.at())
    } else {
        decode_prefix::<Vec<EntryMeta>>(value, "segment header")?
    };
    if metas.is_empty() || metas.len() > SEGMENT_ENTRIES {
        return Err(corrupt(format!("segment header: {} entries", metas.len())));
    }
    Ok((metas, used))
}

/// The value stored under a segment's header key (store format 3): the length of the
/// segment's value, then its header in the compact layout.
///
/// ```text
/// header value = value length, 0xFE, count, base expiry, count × meta
/// ```
///
/// Opening the store reads these alone, never the segments: sled keeps in memory what it has
/// read, whatever its cache setting, so a scan of the segments themselves would hold about as
/// much memory as the queues hold messages.
pub(crate) fn encode_header_value(metas: &[EntryMeta], value_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 4 * metas.len());
    put_varint(&mut out, value_len as u64);
    encode_header(metas, &mut out);
    out
}

/// The entries' metadata and the segment value's length from a header value.
pub(crate) fn decode_header_value(bytes: &[u8]) -> Result<(Vec<EntryMeta>, u64), StoreError> {
    let mut r = Reader::new(bytes);
    let value_len = r.varint()?;
    let header = r.rest();
    if header.first() != Some(&COMPACT) {
        return Err(corrupt(
            "segment header: not in the compact layout".to_owned(),
        ));
    }
    let (metas, used) = decode_segment_header(header)?;
    if used != header.len() {
        return Err(corrupt(format!(
            "segment header: {} bytes left over",
            header.len() - used
        )));
    }
    Ok((metas, value_len))
}

/// Every entry of a segment value.
pub(crate) fn decode_segment(value: &[u8]) -> Result<Vec<StoredEntry>, StoreError> {
    let (metas, at) = decode_segment_header(value)?;
    let mut entries = Vec::with_capacity(metas.len());
    let mut r = Reader::new(value);
    r.skip(at)?;
    if value.first() == Some(&COMPACT) {
        for meta in &metas {
            let entry = r.entry(meta, entries.last())?;
            entries.push(entry);
        }
    } else {
        for _ in 0..metas.len() {
            let (entry, used) = decode_prefix::<StoredEntry>(r.rest(), "segment entry")?;
            r.skip(used)?;
            entries.push(entry);
        }
    }
    if !r.rest().is_empty() {
        return Err(corrupt(format!(
            "segment: {} bytes left over",
            r.rest().len()
        )));
    }
    Ok(entries)
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(what)
}

/// Reads a compact segment: the protocol's reader, with each failed read a corrupt segment
/// that says where.
struct Reader<'a> {
    value: &'a [u8],
    r: varint::Reader<'a>,
}

impl<'a> Reader<'a> {
    fn new(value: &'a [u8]) -> Self {
        Self {
            value,
            r: varint::Reader::new(value),
        }
    }

    /// Where the next read starts.
    fn at(&self) -> usize {
        self.value.len() - self.r.rest().len()
    }

    fn rest(&self) -> &'a [u8] {
        self.r.rest()
    }

    fn read<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut varint::Reader<'a>) -> Option<T>,
    ) -> Result<T, StoreError> {
        let at = self.at();
        f(&mut self.r).ok_or_else(|| corrupt(format!("segment: no valid {what} at {at}")))
    }

    fn skip(&mut self, n: usize) -> Result<(), StoreError> {
        self.read("bytes", |r| r.advance(n))
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        self.read("integer", varint::Reader::varint)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        self.read("string", |r| r.str().map(str::to_owned))
    }

    fn entry(
        &mut self,
        meta: &EntryMeta,
        before: Option<&StoredEntry>,
    ) -> Result<StoredEntry, StoreError> {
        let tag = self.read("entry tag", varint::Reader::u8)?;
        if tag == NOTICE {
            let (entry, used) = decode_prefix::<StoredEntry>(self.rest(), "segment entry")?;
            self.skip(used)?;
            // A message is never written this way: its expiry would not be the header's.
            return match entry {
                StoredEntry::Notice { expires_at_ms, .. }
                    if expires_at_ms == meta.expires_at_ms =>
                {
                    Ok(entry)
                }
                _ => Err(corrupt(format!(
                    "segment: the entry before {} is not the notice its header describes",
                    self.at()
                ))),
            };
        }
        if tag & !(REDELIVERED | CHANNEL | NAME | SAME_SENDER) != 0 {
            return Err(corrupt(format!("segment: bad entry tag {tag:#04x}")));
        }
        let id = self.string()?;
        let sender = if tag & SAME_SENDER != 0 {
            match before {
                Some(StoredEntry::Message(b)) => b.sender.clone(),
                _ => {
                    return Err(corrupt(
                        "segment: an entry names the sender of no message before it".to_owned(),
                    ));
                }
            }
        } else {
            self.string()?
        };
        let channel = (tag & CHANNEL != 0).then(|| self.string()).transpose()?;
        let name = (tag & NAME != 0).then(|| self.string()).transpose()?;
        let data = bytes::Bytes::copy_from_slice(self.read("payload", varint::Reader::bytes)?);
        Ok(StoredEntry::Message(StoredMessage {
            id,
            sender,
            channel,
            name,
            data,
            expires_at_ms: meta.expires_at_ms,
            redelivered: tag & REDELIVERED != 0,
        }))
    }
}

/// A segment value as store format 1 wrote it: the bincode encoding of `metas`, then of each
/// entry. Only tests write them now.
#[cfg(test)]
pub(crate) fn format_1_segment(metas: &[EntryMeta], entries: &[StoredEntry]) -> Vec<u8> {
    let config = super::codec::config();
    let mut value = bincode::serde::encode_to_vec(metas, config).expect("encodes");
    for e in entries {
        value.extend(bincode::serde::encode_to_vec(e, config).expect("encodes"));
    }
    value
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests;
