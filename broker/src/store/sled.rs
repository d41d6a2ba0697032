//! [`SledStore`]: queues and sessions in a sled database.
//!
//! Entries are written in segments of up to 128 consecutive entries per sled value, because
//! sled's cost is mostly per key: one key per message stores an order of magnitude fewer
//! messages per second. Each segment's header (its entries' sizes and expiries) is also
//! stored under a key of its own. Each queue has one small record with its next seq and
//! which entries are settled; a segment is deleted once all of its entries are settled.
//!
//! An in-memory index, rebuilt on open from the records and the segment headers, knows every
//! segment's entries (size, expiry, settled or not), so counting, finding expired entries and
//! settling read no payloads. Opening reads the header keys, never the segments: sled keeps
//! what it reads in memory beyond its cache setting, so reading the segments would make the
//! broker's memory grow with the messages queued. Every change is written first and applied
//! to the index only once sled has taken it, so a failed write leaves the index as it was.
//!
//! An append or a settlement is several sled writes, not one batch, ordered so that the store
//! is valid after any prefix of them (sled recovers a prefix of its log, and nothing is
//! confirmed before a flush): an append writes its segments, then their headers (a queue's
//! next seq is the larger of its record's and the end of its last segment). A settlement
//! writes the record, then deletes the headers of the segments it settles in full, each before
//! its segment. So a header always has its segment; a segment without a header (of an append
//! never confirmed, or of a settlement cut short) is never read, and is dropped when the store
//! is compacted. The record does not always cover a segment settled in full (one settled
//! before an earlier segment is not in it): cut before its header is deleted, such a segment
//! is delivered again, which is what a settlement that was never made durable means.

use super::codec::{self, EncodedSegment, EntryMeta, Mask, QueueRecord};
use super::compact;
use super::durable::{DataDir, SyncMode};
use super::{
    QueueId, QueueInfo, QueueStore, Seq, Session, StoreError, StoredEntry, append_end, from_cursor,
};
use sled::{Batch, Db};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// A [`QueueStore`] in a sled database in one directory.
///
/// Writes become durable at [`QueueStore::flush`] (sled also flushes on its own every half
/// second). Only one `SledStore` can have a directory open at a time.
#[derive(Debug)]
pub struct SledStore {
    /// The database; `None` only while [`QueueStore::heal`] reopens it.
    db: RwLock<Option<Db>>,
    options: SledOptions,
    path: PathBuf,
    index: Mutex<Index>,
    data_dir: Mutex<DataDir>,
}

/// Settings of a [`SledStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledOptions {
    /// How far a flush makes writes durable. Default [`SyncMode::Device`].
    pub sync: SyncMode,
    /// Most bytes of the database that sled keeps cached in memory. Default 64 MiB.
    pub cache_bytes: u64,
    /// Free bytes kept in reserve on the store's file system: with less free, flushes fail
    /// (persistent messages are refused) until space returns. Default 64 MiB; 0 for none.
    pub min_free_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Device,
            cache_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
        }
    }
}

/// Every queue's segments, by queue.
#[derive(Debug, Default)]
struct Index {
    queues: BTreeMap<QueueId, QueueState>,
    /// Bytes of the keys and values read when the store was opened: about what it holds.
    loaded_bytes: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    next_seq: Seq,
    /// Unsettled entries.
    pending: u64,
    /// Sum of the unsettled entries' sizes.
    bytes: u64,
    /// Segments with at least one unsettled entry, by first seq.
    segments: BTreeMap<Seq, Segment>,
    /// First seqs of the segments with at least one settled entry.
    partial: BTreeSet<Seq>,
}

#[derive(Debug)]
struct Segment {
    metas: Box<[EntryMeta]>,
    /// Bit `i` is set when the entry `i` is settled.
    settled: Mask,
    pending: u64,
    bytes: u64,
    /// Earliest expiry of an unsettled entry.
    min_expiry: u64,
}

/// Mask with a bit for each of `len` entries.
fn full_mask(len: usize) -> Mask {
    if len >= Mask::BITS as usize {
        Mask::MAX
    } else {
        (1 << len) - 1
    }
}

impl Segment {
    fn new(metas: Box<[EntryMeta]>, settled: Mask) -> Self {
        let mut segment = Segment {
            metas,
            settled: 0,
            pending: 0,
            bytes: 0,
            min_expiry: u64::MAX,
        };
        segment.set_settled(settled);
        segment
    }

    fn len(&self) -> u64 {
        self.metas.len() as u64
    }

    fn is_full(&self, mask: Mask) -> bool {
        mask == full_mask(self.metas.len())
    }

    fn is_settled(&self, i: usize) -> bool {
        self.settled & (1 << i) != 0
    }

    /// Replaces the settled mask and recomputes the counts.
    fn set_settled(&mut self, mask: Mask) {
        self.settled = mask & full_mask(self.metas.len());
        self.pending = 0;
        self.bytes = 0;
        self.min_expiry = u64::MAX;
        for (i, meta) in self.metas.iter().enumerate() {
            if self.settled & (1 << i) == 0 {
                self.pending += 1;
                self.bytes = self.bytes.saturating_add(meta.size);
                self.min_expiry = self.min_expiry.min(meta.expires_at_ms);
            }
        }
    }
}

impl QueueState {
    /// The segment holding `seq`, by first seq.
    fn segment_of(&self, seq: Seq) -> Option<(Seq, &Segment)> {
        let (&first, segment) = self.segments.range(..=seq).next_back()?;
        (seq - first < segment.len()).then_some((first, segment))
    }

    /// The record of this queue after the settled masks in `changed` (by segment first seq)
    /// replace the segments' own.
    fn record(&self, changed: &BTreeMap<Seq, Mask>) -> QueueRecord {
        let mask =
            |first: Seq, segment: &Segment| changed.get(&first).copied().unwrap_or(segment.settled);
        // The first unsettled seq: every seq below it is settled or was never appended.
        let mut acked_below = self.next_seq;
        for (&first, segment) in &self.segments {
            let m = mask(first, segment);
            if !segment.is_full(m) {
                acked_below = first + u64::from(m.trailing_ones());
                break;
            }
        }
        let mut partial = Vec::new();
        let firsts: BTreeSet<Seq> = self.partial.iter().chain(changed.keys()).copied().collect();
        for first in firsts {
            let Some(segment) = self.segments.get(&first) else {
                continue;
            };
            let mut m = mask(first, segment);
            if segment.is_full(m) {
                continue;
            }
            if first < acked_below {
                // Only the segment holding `acked_below` can start below it.
                m &= !full_mask((acked_below - first) as usize);
            }
            if m != 0 {
                partial.push((first, m));
            }
        }
        QueueRecord {
            next_seq: self.next_seq,
            acked_below,
            partial,
        }
    }
}

/// How long [`SledStore::open`] waits for a directory locked by a store that is closing.
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Opens the database in `dir`, retrying while its lock is held for up to [`LOCK_WAIT`].
///
/// sled closes its files from background threads some time after the last `Db` handle is
/// dropped, so reopening a directory right after closing it can find the lock still held.
fn open_db(dir: &Path, options: &SledOptions) -> sled::Result<Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // No background flusher: the store thread flushes every group of writes itself, and
        // a second flushing thread would only contend with it for sled's locks.
        let config = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .cache_capacity(options.cache_bytes);
        match config.open() {
            // sled reports the lock as an `Other` I/O error; its message is the only sign.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(LOCK_RETRY);
            }
            result => return result,
        }
    }
}

/// Opens the database in `dir`, checks or sets its format, and reads its index.
fn open_store(dir: &Path, options: &SledOptions) -> Result<(Db, Index), StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: dir.to_path_buf(),
        reason,
    };
    let db = open_db(dir, options).map_err(|e| open_error(e.to_string()))?;
    match db
        .get(codec::FORMAT_KEY)
        .map_err(|e| open_error(e.to_string()))?
    {
        Some(format) if &*format == codec::FORMAT => {}
        // Formats 1 and 2 have no header keys (and format 1 lays segments out differently;
        // both layouts are read): the headers are written, then the store is marked as
        // format 3. Interrupted, this starts again at the next open.
        Some(format) if &*format == codec::FORMAT_1 || &*format == codec::FORMAT_2 => {
            write_headers(&db).map_err(|e| open_error(e.to_string()))?;
            db.insert(codec::FORMAT_KEY, codec::FORMAT)
                .and_then(|_| db.flush())
                .map_err(|e| open_error(e.to_string()))?;
        }
        Some(format) => {
            return Err(open_error(format!("unknown store format {:?}", &*format)));
        }
        None if db.is_empty() => {
            db.insert(codec::FORMAT_KEY, codec::FORMAT)
                .map_err(|e| open_error(e.to_string()))?;
        }
        None => return Err(open_error("not a message store".to_owned())),
    }
    let index = load(&db).map_err(|e| open_error(e.to_string()))?;
    db.flush().map_err(|e| open_error(e.to_string()))?;
    Ok((db, index))
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        e => StoreError::Io(e.to_string()),
    }
}

fn missing_segment(queue: &QueueId, first: Seq) -> StoreError {
    StoreError::Corrupt(format!(
        "the segment at seq {first} of the {queue} is missing"
    ))
}

impl SledStore {
    /// Opens the store in `dir`, creating the directory and an empty store when needed, and
    /// rebuilds the index from what the store holds.
    ///
    /// sled releases a directory's lock a little after its last handle is dropped, so opening
    /// waits up to a second for the lock before it gives up.
    ///
    /// # Errors
    /// [`StoreError::Open`], naming `dir`, when the directory is locked by another open store,
    /// cannot be read or written, or holds data that is not a valid store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &SledOptions::default())
    }

    /// Opens the store in `dir` with these settings; see [`SledStore::open`].
    ///
    /// # Errors
    /// As [`SledStore::open`].
    pub fn open_with(dir: &Path, options: &SledOptions) -> Result<Self, StoreError> {
        let open_error = |e: StoreError| StoreError::Open {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        compact::recover(dir).map_err(open_error)?;
        let (mut db, mut index) = open_store(dir, options)?;
        let on_disk = db.size_on_disk().map_err(io).map_err(open_error)?;
        if compact::worth_it(on_disk, index.loaded_bytes) {
            tracing::info!(
                dir = %dir.display(),
                on_disk_mib = on_disk >> 20,
                held_mib = index.loaded_bytes >> 20,
                "compacting the store"
            );
            compact::rewrite(dir, db, |path| open_db(path, options), worth_keeping)
                .map_err(open_error)?;
            (db, index) = open_store(dir, options)?;
        }
        let data_dir = DataDir::open(dir, options.sync, options.min_free_bytes).map_err(|e| {
            StoreError::Open {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(SledStore {
            db: RwLock::new(Some(db)),
            options: *options,
            path: dir.to_path_buf(),
            index: Mutex::new(index),
            data_dir: Mutex::new(data_dir),
        })
    }

    /// A handle on the database.
    fn db(&self) -> Result<Db, StoreError> {
        self.db
            .read()
            .ok()
            .and_then(|db| db.clone())
            .ok_or_else(|| StoreError::Io("the store is being reopened".to_owned()))
    }

    /// The directory the store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many segment values the database holds, for tests.
    ///
    /// # Errors
    /// Storage failures.
    #[doc(hidden)]
    pub fn segment_count(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        for item in self.db()?.scan_prefix([codec::SEGMENT]) {
            item.map_err(io)?;
            count += 1;
        }
        Ok(count)
    }

    /// The database, for tests that look at or damage what is stored.
    #[cfg(test)]
    pub(super) fn raw_db(&self) -> Db {
        self.db().expect("the store is open")
    }

    fn index(&self) -> Result<MutexGuard<'_, Index>, StoreError> {
        // A panic while the lock was held may have left the index half-updated; refuse to use
        // it rather than answer from it.
        self.index
            .lock()
            .map_err(|_| StoreError::Io("the store index was poisoned by a panic".to_owned()))
    }

    /// Deletes segments just written for an append that failed, so that its entries (whose
    /// senders are told they failed) are not found when the store is next opened. Best
    /// effort: after a write error sled usually refuses every write.
    fn forget_segments(&self, queue: &QueueId, segments: &[EncodedSegment]) {
        for segment in segments {
            let removed = self.db().and_then(|db| {
                db.remove(codec::header_key(queue, segment.first))
                    .and_then(|_| db.remove(codec::segment_key(queue, segment.first)))
                    .map_err(io)
            });
            if let Err(e) = removed {
                tracing::warn!(%queue, first = segment.first, error = %e,
                    "cannot delete a segment of a failed append");
            }
        }
    }

    fn load_segment(
        &self,
        queue: &QueueId,
        first: Seq,
        len: u64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let value = self
            .db()?
            .get(codec::segment_key(queue, first))
            .map_err(io)?
            .ok_or_else(|| missing_segment(queue, first))?;
        let entries = codec::decode_segment(&value)?;
        if entries.len() as u64 != len {
            return Err(StoreError::Corrupt(format!(
                "the segment at seq {first} of the {queue} holds {} entries, not {len}",
                entries.len()
            )));
        }
        Ok(entries)
    }
}

/// Whether a compaction copies `key`: every key but a segment without a header, which an
/// append that was never confirmed wrote.
pub(super) fn worth_keeping(db: &Db, key: &[u8]) -> sled::Result<bool> {
    match codec::parse_segment_key(key) {
        Some((queue, first)) => db.contains_key(codec::header_key(&queue, first)),
        None => Ok(true),
    }
}

/// Writes the header key of every segment of a store of format 1 or 2, reading each segment.
fn write_headers(db: &Db) -> Result<(), StoreError> {
    for item in db.scan_prefix([codec::SEGMENT]) {
        let (key, value) = item.map_err(io)?;
        let (queue, first) = codec::parse_segment_key(&key)
            .ok_or_else(|| StoreError::Corrupt(format!("bad segment key {:?}", &*key)))?;
        let (metas, _) = codec::decode_segment_header(&value)?;
        db.insert(
            codec::header_key(&queue, first),
            codec::encode_header_value(&metas, value.len()),
        )
        .map_err(io)?;
    }
    Ok(())
}

/// Rebuilds the index from the queue records and segment headers, and deletes segments whose
/// entries are all settled (a store written by this code holds none).
fn load(db: &Db) -> Result<Index, StoreError> {
    // Each queue's next seq, first unsettled seq and masks of partly settled segments.
    let mut records: HashMap<QueueId, (Seq, Seq, HashMap<Seq, Mask>)> = HashMap::new();
    let mut loaded_bytes = 0u64;
    for item in db.scan_prefix([codec::QUEUE]) {
        let (key, value) = item.map_err(io)?;
        loaded_bytes += (key.len() + value.len()) as u64;
        let queue = codec::parse_queue_key(&key)
            .ok_or_else(|| StoreError::Corrupt(format!("bad queue key {:?}", &*key)))?;
        let record: QueueRecord = codec::decode(&value, "queue record")?;
        let partial = record.partial.into_iter().collect();
        records.insert(queue, (record.next_seq, record.acked_below, partial));
    }
    let mut index = Index::default();
    let mut stale = Batch::default();
    let mut any_stale = false;
    for item in db.scan_prefix([codec::HEADER]) {
        let (key, value) = item.map_err(io)?;
        let (queue, first) = codec::parse_header_key(&key)
            .ok_or_else(|| StoreError::Corrupt(format!("bad segment header key {:?}", &*key)))?;
        let (metas, value_len) = codec::decode_header_value(&value)?;
        // The segment's key is as long as its header's.
        loaded_bytes = loaded_bytes
            .saturating_add(value_len)
            .saturating_add(2 * key.len() as u64 + value.len() as u64);
        let len = metas.len() as u64;
        let end = first.checked_add(len).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the segment at seq {first} of the {queue} overflows"
            ))
        })?;
        let record = records.get(&queue);
        let mut settled: Mask = 0;
        if let Some((_, acked_below, partial)) = record {
            if *acked_below > first {
                settled |= full_mask((acked_below - first).min(len) as usize);
            }
            settled |= partial.get(&first).copied().unwrap_or(0);
        }
        let segment = Segment::new(metas.into_boxed_slice(), settled);
        if segment.pending == 0 {
            stale.remove(codec::segment_key(&queue, first));
            stale.remove(key);
            any_stale = true;
        }
        let state = index.queues.entry(queue).or_default();
        state.next_seq = state.next_seq.max(end);
        if segment.pending == 0 {
            continue;
        }
        state.pending += segment.pending;
        state.bytes = state.bytes.saturating_add(segment.bytes);
        if segment.settled != 0 {
            state.partial.insert(first);
        }
        state.segments.insert(first, segment);
    }
    for (queue, (next_seq, _, _)) in records {
        let state = index.queues.entry(queue).or_default();
        state.next_seq = state.next_seq.max(next_seq);
    }
    if any_stale {
        db.apply_batch(stale).map_err(io)?;
    }
    index.loaded_bytes = loaded_bytes;
    Ok(index)
}

impl QueueStore for SledStore {
    fn append(
        &self,
        queue: &QueueId,
        first_seq: Seq,
        entries: &[StoredEntry],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut index = self.index()?;
        let state = index.queues.get(queue);
        let next_seq = append_end(
            queue,
            state.map_or(0, |s| s.next_seq),
            first_seq,
            entries.len(),
        )?;
        let segments = codec::encode_segments(first_seq, entries)?;
        let db = self.db()?;
        // Only the segments and their headers are written: the new entries are unsettled,
        // and the next seq follows from the headers when the store is opened, so the queue's
        // record does not change. The writes are not one sled batch (a batch makes sled write
        // its log buffer out twice, which costs more than the writes); every prefix of them is
        // a valid store, as each segment is written before its header.
        for (i, segment) in segments.iter().enumerate() {
            let written = db
                .insert(codec::segment_key(queue, segment.first), &segment.value[..])
                .and_then(|_| {
                    db.insert(
                        codec::header_key(queue, segment.first),
                        codec::encode_header_value(&segment.metas, segment.value.len()),
                    )
                });
            if let Err(e) = written {
                self.forget_segments(queue, &segments[..=i]);
                return Err(io(e));
            }
        }

        let state = index.queues.entry(queue.clone()).or_default();
        state.next_seq = next_seq;
        for EncodedSegment { first, metas, .. } in segments {
            let segment = Segment::new(metas.into_boxed_slice(), 0);
            state.pending += segment.pending;
            state.bytes = state.bytes.saturating_add(segment.bytes);
            state.segments.insert(first, segment);
        }
        Ok(())
    }

    fn settle(&self, queue: &QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        let mut index = self.index()?;
        let Some(state) = index.queues.get_mut(queue) else {
            return Ok(());
        };
        // New settled masks of the segments that change, by first seq.
        let mut changed: BTreeMap<Seq, Mask> = BTreeMap::new();
        for &seq in seqs {
            let Some((first, segment)) = state.segment_of(seq) else {
                continue;
            };
            let mask = changed.entry(first).or_insert(segment.settled);
            *mask |= 1 << (seq - first);
        }
        // Indexing cannot fail: every key of `changed` was found in `state.segments` above,
        // and nothing has been removed since.
        changed.retain(|first, mask| state.segments[first].settled != *mask);
        if changed.is_empty() {
            return Ok(());
        }
        let record = state.record(&changed);
        // The record first, then the segments it settles in full, each header before its
        // segment: a segment is never left with a header and without its value (see the
        // module documentation).
        let db = self.db()?;
        db.insert(codec::queue_key(queue), codec::encode(&record)?)
            .map_err(io)?;
        let mut deleted = Ok(());
        for (&first, &mask) in &changed {
            if state.segments[&first].is_full(mask) {
                let removed = db
                    .remove(codec::header_key(queue, first))
                    .and_then(|_| db.remove(codec::segment_key(queue, first)));
                if let Err(e) = removed {
                    deleted = deleted.and(Err(io(e)));
                }
            }
        }

        // The index follows the record, which sled has taken.
        for (first, mask) in changed {
            let Some(segment) = state.segments.get_mut(&first) else {
                continue;
            };
            state.pending -= segment.pending;
            state.bytes = state.bytes.saturating_sub(segment.bytes);
            segment.set_settled(mask);
            if segment.pending == 0 {
                state.segments.remove(&first);
                state.partial.remove(&first);
            } else {
                state.pending += segment.pending;
                state.bytes = state.bytes.saturating_add(segment.bytes);
                state.partial.insert(first);
            }
        }
        deleted
    }

    fn read(
        &self,
        queue: &QueueId,
        from: Seq,
        max: usize,
    ) -> Result<Vec<(Seq, StoredEntry)>, StoreError> {
        let index = self.index()?;
        let mut out = Vec::new();
        let Some(state) = index.queues.get(queue) else {
            return Ok(out);
        };
        if max == 0 {
            return Ok(out);
        }
        let start = state.segment_of(from).map_or(from, |(first, _)| first);
        for (&first, segment) in state.segments.range(start..) {
            let skip = from.saturating_sub(first);
            // Unsettled entries of this segment at or after `from`.
            let wanted =
                !segment.settled & full_mask(segment.metas.len()) & !full_mask(skip as usize);
            if wanted == 0 {
                continue;
            }
            let entries = self.load_segment(queue, first, segment.len())?;
            for (i, entry) in entries.into_iter().enumerate() {
                if wanted & (1 << i) != 0 {
                    out.push((first + i as u64, entry));
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn expired(
        &self,
        now_ms: u64,
        after: Option<&(QueueId, Seq)>,
        max: usize,
    ) -> Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError> {
        let index = self.index()?;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for (queue, state, from) in from_cursor(&index.queues, after) {
            let start = state.segment_of(from).map_or(from, |(first, _)| first);
            for (&first, segment) in state.segments.range(start..) {
                if segment.min_expiry > now_ms || first + segment.len() <= from {
                    continue;
                }
                let entries = self.load_segment(queue, first, segment.len())?;
                for (i, entry) in entries.into_iter().enumerate() {
                    let seq = first + i as u64;
                    if seq >= from
                        && !segment.is_settled(i)
                        && segment.metas[i].expires_at_ms <= now_ms
                    {
                        out.push((queue.clone(), seq, entry));
                        if out.len() == max {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let index = self.index()?;
        Ok(index
            .queues
            .iter()
            .map(|(queue, state)| QueueInfo {
                queue: queue.clone(),
                next_seq: state.next_seq,
                pending: state.pending,
                bytes: state.bytes,
            })
            .collect())
    }

    fn drop_queue(&self, queue: &QueueId) -> Result<(), StoreError> {
        let mut index = self.index()?;
        let mut batch = Batch::default();
        let mut segments = 0;
        // Scan rather than trust the index, so that no segment of the queue (nor a segment
        // without a header) can survive it.
        let db = self.db()?;
        for prefix in [codec::headers_prefix(queue), codec::segments_prefix(queue)] {
            for key in db.scan_prefix(prefix).keys() {
                batch.remove(key.map_err(io)?);
                segments += 1;
            }
        }
        if segments == 0 {
            // An empty queue (the usual case) is its record alone: one write, not a batch.
            db.remove(codec::queue_key(queue)).map_err(io)?;
        } else {
            batch.remove(codec::queue_key(queue));
            db.apply_batch(batch).map_err(io)?;
        }
        index.queues.remove(queue);
        Ok(())
    }

    fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.db()?
            .insert(codec::session_key(&session.name), codec::encode(session)?)
            .map_err(io)?;
        Ok(())
    }

    fn remove_session(&self, name: &str) -> Result<(), StoreError> {
        self.db()?.remove(codec::session_key(name)).map_err(io)?;
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        let mut sessions = Vec::new();
        for item in self.db()?.scan_prefix([codec::SESSION]) {
            let (_, value) = item.map_err(io)?;
            sessions.push(codec::decode(&value, "session")?);
        }
        Ok(sessions)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db()?.flush().map_err(io)?;
        self.data_dir
            .lock()
            .map_err(|_| StoreError::Io("the data directory's lock was poisoned".to_owned()))?
            .sync()
    }

    fn heal(&self) -> Result<(), StoreError> {
        // Never over a directory that is not the one opened: that would start an empty store
        // where the confirmed messages were.
        self.check()?;
        // Failed for want of space only: the database itself is fine.
        if self.flush().is_ok() {
            return Ok(());
        }
        // sled refuses every write after its first failed one: the database is reopened on
        // what it made durable, and the index read anew from it (only with the reserve of
        // free space there, checked above: sled writes as it opens).
        let mut index = self.index()?;
        let mut db = self
            .db
            .write()
            .map_err(|_| StoreError::Io("the store's handle was poisoned".to_owned()))?;
        drop(db.take());
        let (reopened, fresh) = open_store(&self.path, &self.options)?;
        *db = Some(reopened);
        *index = fresh;
        drop((db, index));
        self.flush()
    }

    fn size_on_disk(&self) -> Option<u64> {
        self.db().ok()?.size_on_disk().ok()
    }

    fn check(&self) -> Result<(), StoreError> {
        self.data_dir
            .lock()
            .map_err(|_| StoreError::Io("the data directory's lock was poisoned".to_owned()))?
            .check()
    }
}
