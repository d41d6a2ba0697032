//! Keys, values and damaged stores. The behaviour of both stores is tested by the conformance
//! suite in `tests/store_conformance.rs`.

use super::codec::{self, QueueRecord};
use super::segment::{SEGMENT_BYTES, SEGMENT_ENTRIES, format_1_segment};
use super::*;

fn message(seq: Seq, len: usize) -> StoredEntry {
    StoredEntry::Message(StoredMessage {
        id: format!("m{seq}"),
        sender: "s".to_owned(),
        channel: None,
        name: Some("n".to_owned()),
        data: Bytes::from(vec![7; len]),
        expires_at_ms: seq,
        redelivered: false,
    })
}

fn alice() -> QueueId {
    QueueId::Client("alice".to_owned())
}

/// Writes a segment value and its header, as an append does.
fn put_segment(store: &SledStore, queue: &QueueId, first: Seq, value: &[u8]) {
    let (metas, _) = codec::decode_segment_header(value).unwrap();
    let db = store.raw_db();
    db.insert(codec::segment_key(queue, first), value).unwrap();
    db.insert(
        codec::header_key(queue, first),
        codec::encode_header_value(&metas, value.len()),
    )
    .unwrap();
}

#[test]
fn keys_round_trip_and_sort_by_seq() {
    for queue in [
        QueueId::Client("a".to_owned()),
        QueueId::Backlog("a".to_owned()),
        QueueId::Client(String::new()),
        QueueId::Backlog("ünï côdé".to_owned()),
    ] {
        assert_eq!(
            codec::parse_queue_key(&codec::queue_key(&queue)),
            Some(queue.clone())
        );
        for seq in [0, 1, 255, 256, u64::MAX] {
            let key = codec::segment_key(&queue, seq);
            assert!(key.starts_with(&codec::segments_prefix(&queue)));
            assert_eq!(codec::parse_segment_key(&key), Some((queue.clone(), seq)));
        }
        assert!(codec::segment_key(&queue, 255) < codec::segment_key(&queue, 256));
        assert!(codec::segment_key(&queue, 1 << 40) < codec::segment_key(&queue, u64::MAX));
    }
    assert_eq!(codec::parse_segment_key(b"s"), None);
    assert_eq!(codec::parse_segment_key(b"sc\xff1234567"), None);
    assert_eq!(codec::parse_queue_key(b"qx\xff"), None);
    assert_eq!(codec::parse_queue_key(b"qc\xfe\xff"), None);
}

#[test]
fn no_queue_key_prefixes_another_queues_keys() {
    let a = codec::segments_prefix(&QueueId::Client("a".to_owned()));
    let ab = codec::segment_key(&QueueId::Client("ab".to_owned()), 0);
    let backlog = codec::segment_key(&QueueId::Backlog("a".to_owned()), 0);
    assert!(!ab.starts_with(&a));
    assert!(!backlog.starts_with(&a));
}

#[test]
fn segments_hold_at_most_128_entries() {
    let entries: Vec<StoredEntry> = (0..300).map(|s| message(s, 10)).collect();
    let segments = codec::encode_segments(1000, &entries).unwrap();
    let shape: Vec<(Seq, usize)> = segments.iter().map(|s| (s.first, s.metas.len())).collect();
    assert_eq!(shape, vec![(1000, 128), (1128, 128), (1256, 44)]);
    let decoded: Vec<StoredEntry> = segments
        .iter()
        .flat_map(|s| codec::decode_segment(&s.value).unwrap())
        .collect();
    assert_eq!(decoded, entries);
    assert_eq!(segments[2].metas[0].size, entries[256].size());
    assert_eq!(segments[2].metas[0].expires_at_ms, 256);
    assert_eq!(SEGMENT_ENTRIES, 128);
}

#[test]
fn a_queue_record_with_64_bit_masks_reads_the_same() {
    // Records written when segments held at most 64 entries: the masks were `u64`.
    #[derive(serde::Serialize)]
    struct Narrow {
        next_seq: u64,
        acked_below: u64,
        partial: Vec<(u64, u64)>,
    }
    let masks = [1, 250, 251, u64::from(u32::MAX) + 1, 1 << 63, u64::MAX];
    let narrow = Narrow {
        next_seq: 9000,
        acked_below: 70,
        partial: masks
            .iter()
            .enumerate()
            .map(|(i, &m)| (64 * i as u64 + 64, m))
            .collect(),
    };
    let record: QueueRecord = codec::decode(&codec::encode(&narrow).unwrap(), "record").unwrap();
    assert_eq!(
        record,
        QueueRecord {
            next_seq: 9000,
            acked_below: 70,
            partial: narrow
                .partial
                .iter()
                .map(|&(first, m)| (first, u128::from(m)))
                .collect(),
        }
    );
}

#[test]
fn segments_hold_at_most_12_kib_unless_one_entry_is_larger() {
    let entries = vec![
        message(0, 5 * 1024),
        message(1, 5 * 1024),
        message(2, 5 * 1024),
        message(3, 40 * 1024),
        message(4, 1),
    ];
    let segments = codec::encode_segments(0, &entries).unwrap();
    let shape: Vec<usize> = segments.iter().map(|s| s.metas.len()).collect();
    assert_eq!(shape, vec![2, 1, 1, 1]);
    for segment in &segments[..2] {
        assert!(segment.value.len() <= SEGMENT_BYTES + 100);
    }
    assert_eq!(SEGMENT_BYTES, 12 * 1024);
}

/// sled writes a node over its size limit as a file of its own, created and later deleted,
/// which costs far more than the write: appending a queue's messages must not do that.
#[test]
fn appending_writes_no_node_as_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut next = 0;
    for run in 0..100u64 {
        // Runs of different lengths, as groups of writes come, of 150-byte messages.
        let n = 100 + (run * 37) % 900;
        let entries: Vec<StoredEntry> = (next..next + n).map(|s| message(s, 150)).collect();
        store.append(&alice(), next, &entries).unwrap();
        next += n;
        store.flush().unwrap();
    }
    let files = std::fs::read_dir(dir.path().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0, "{files} nodes written as files of their own");
    assert_eq!(
        store.read(&alice(), 0, usize::MAX).unwrap().len() as u64,
        next
    );
}

#[test]
fn damaged_values_are_corrupt_not_panics() {
    let segments = codec::encode_segments(0, &[message(0, 100), message(1, 100)]).unwrap();
    let value = &segments[0].value;
    for cut in 0..value.len() {
        let err = codec::decode_segment(&value[..cut]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
    let mut longer = value.clone();
    longer.push(0);
    assert!(matches!(
        codec::decode_segment(&longer),
        Err(StoreError::Corrupt(_))
    ));
    // Length prefixes that claim far more than the limit, and an empty header.
    for bad in [
        &[0xfc, 0xff, 0xff, 0xff, 0xff][..],
        &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
        &[0][..],
        &[129][..],
    ] {
        assert!(matches!(
            codec::decode_segment(bad),
            Err(StoreError::Corrupt(_))
        ));
    }
    assert!(matches!(
        codec::decode::<QueueRecord>(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "r"),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn the_queue_record_is_small_after_settling_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let entries: Vec<StoredEntry> = (0..200).map(|s| message(s, 10)).collect();
    store.append(&alice(), 0, &entries).unwrap();
    let record = || -> QueueRecord {
        let value = store
            .raw_db()
            .get(codec::queue_key(&alice()))
            .unwrap()
            .unwrap();
        codec::decode(&value, "record").unwrap()
    };
    store
        .settle(&alice(), &(0..70).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(
        record(),
        QueueRecord {
            next_seq: 200,
            acked_below: 70,
            partial: vec![]
        }
    );
    store.settle(&alice(), &[72, 130]).unwrap();
    assert_eq!(
        record(),
        QueueRecord {
            next_seq: 200,
            acked_below: 70,
            partial: vec![(0, 1 << 72), (128, 1 << 2)]
        }
    );
    store.settle(&alice(), &[70, 71]).unwrap();
    assert_eq!(record().acked_below, 73);
    assert_eq!(record().partial, vec![(128, 1 << 2)]);
}

/// The writes of an append (segments, then the record) and of a settlement (the record, then
/// deletes) are separate; a crash can keep any prefix of them. Each prefix opens as a valid
/// store that holds what it should.
#[test]
fn a_store_cut_between_the_writes_of_an_append_or_a_settlement_opens_whole() {
    let entries: Vec<StoredEntry> = (0..300).map(|s| message(s, 10)).collect();
    let reopen = |store: SledStore, dir: &tempfile::TempDir| {
        store.flush().unwrap();
        drop(store);
        SledStore::open(dir.path()).unwrap()
    };
    let seqs = |store: &SledStore| -> Vec<Seq> {
        let read = store.read(&alice(), 0, 1000).unwrap();
        read.into_iter().map(|(seq, _)| seq).collect()
    };

    // An append writes its segments only: the record (written by the last settlement) stays
    // behind, and the next seq follows the segments.
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.append(&alice(), 0, &entries[..100]).unwrap();
    assert!(
        store
            .raw_db()
            .get(codec::queue_key(&alice()))
            .unwrap()
            .is_none()
    );
    store.settle(&alice(), &[0]).unwrap();
    store.append(&alice(), 100, &entries[100..]).unwrap();
    let record = store
        .raw_db()
        .get(codec::queue_key(&alice()))
        .unwrap()
        .unwrap();
    let record: QueueRecord = codec::decode(&record, "record").unwrap();
    assert_eq!((record.next_seq, record.acked_below), (100, 1));
    let store = reopen(store, &dir);
    assert_eq!(seqs(&store), (1..300).collect::<Vec<_>>());
    assert_eq!(store.queues().unwrap()[0].next_seq, 300);
    store.settle(&alice(), &[1, 2]).unwrap();

    // Cut after a settlement's record, before its deletes: the segments it settled in full
    // are back, settled by the record, and deleted on open.
    store
        .settle(&alice(), &(0..228).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(store.segment_count().unwrap(), 1);
    for segment in codec::encode_segments(0, &entries[..100])
        .unwrap()
        .into_iter()
        .chain(codec::encode_segments(100, &entries[100..228]).unwrap())
    {
        put_segment(&store, &alice(), segment.first, &segment.value);
    }
    assert_eq!(store.segment_count().unwrap(), 3);
    let store = reopen(store, &dir);
    assert_eq!(seqs(&store), (228..300).collect::<Vec<_>>());
    assert_eq!(store.segment_count().unwrap(), 1);
    assert_eq!(store.queues().unwrap()[0].next_seq, 300);
}

#[test]
fn a_segment_settled_before_an_earlier_one_and_cut_between_its_deletes_opens_whole() {
    // Segment A (seqs 0..100) stays unsettled; segment B (100..228) is settled in full. The
    // record cannot say B is settled (A before it is not), so what a cut leaves of B's
    // deletes decides what opens.
    let entries: Vec<StoredEntry> = (0..228).map(|s| message(s, 10)).collect();
    let b = codec::encode_segments(100, &entries[100..])
        .unwrap()
        .remove(0);
    let seqs = |store: &SledStore| -> Vec<Seq> {
        let read = store.read(&alice(), 0, 1000).unwrap();
        read.into_iter().map(|(seq, _)| seq).collect()
    };
    for cut_after_header_delete in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&alice(), 0, &entries[..100]).unwrap();
        store.append(&alice(), 100, &entries[100..]).unwrap();
        store
            .settle(&alice(), &(100..228).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.segment_count().unwrap(), 1);
        if cut_after_header_delete {
            // The header is gone, the segment not yet: never read, B stays settled.
            store
                .raw_db()
                .insert(codec::segment_key(&alice(), 100), &b.value[..])
                .unwrap();
        } else {
            // Neither is gone: B comes back whole, to be delivered again.
            put_segment(&store, &alice(), 100, &b.value);
        }
        store.flush().unwrap();
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        let expected: Vec<Seq> = if cut_after_header_delete {
            (0..100).collect()
        } else {
            (0..228).collect()
        };
        assert_eq!(
            seqs(&store),
            expected,
            "cut after header delete: {cut_after_header_delete}"
        );
        assert_eq!(store.queues().unwrap()[0].next_seq, 228);
        assert_eq!(
            store.expired(u64::MAX, None, 1000).unwrap().len(),
            expected.len()
        );
    }
}

#[test]
fn a_damaged_segment_header_fails_open_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.append(&alice(), 0, &[message(0, 10)]).unwrap();
    store
        .raw_db()
        .insert(codec::header_key(&alice(), 0), &[0x05, 0xff, 0xff][..])
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn a_damaged_queue_record_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.append(&alice(), 0, &[message(0, 10)]).unwrap();
    store
        .raw_db()
        .insert(codec::queue_key(&alice()), &[1, 2, 3, 4, 5, 6][..])
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

#[test]
fn a_damaged_segment_body_is_corrupt_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.append(&alice(), 0, &[message(0, 10)]).unwrap();
    let key = codec::segment_key(&alice(), 0);
    let mut value = store.raw_db().get(&key).unwrap().unwrap().to_vec();
    value.truncate(value.len() - 3);
    store.raw_db().insert(&key, value).unwrap();
    let err = store.read(&alice(), 0, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let err = store.expired(u64::MAX, None, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    store.raw_db().remove(&key).unwrap();
    let err = store.read(&alice(), 0, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[test]
fn a_damaged_session_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .raw_db()
        .insert(codec::session_key("bob"), &[0xff][..])
        .unwrap();
    assert!(matches!(store.sessions(), Err(StoreError::Corrupt(_))));
}

#[test]
fn a_database_that_is_not_a_store_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.raw_db().insert(b"mf", &[9][..]).unwrap();
    store.flush().unwrap();
    drop(store);
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.raw_db().remove(b"mf").unwrap();
    store.raw_db().insert(b"other", &[1][..]).unwrap();
    store.flush().unwrap();
    drop(store);
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a message store"), "{err}");
}

#[test]
fn entry_sizes_count_payload_and_strings() {
    assert_eq!(message(5, 100).size(), 100 + 2 + 1 + 1);
    let notice = StoredEntry::Notice {
        notice: DeliveryFailed {
            id: "abc".to_owned(),
            recipient: Recipient::Client("bob".to_owned()),
            reason: broadcast_protocol::FailureReason::Expired,
            detail: "gone".to_owned(),
            ack_tag: None,
        },
        expires_at_ms: 9,
    };
    assert_eq!(notice.size(), 3 + 3 + 4);
    assert_eq!(notice.expires_at_ms(), 9);
}

#[test]
fn stores_of_formats_1_and_2_open_read_their_segments_and_are_marked_format_3() {
    let entries: Vec<StoredEntry> = (0..5).map(|seq| message(seq, 30)).collect();
    let metas: Vec<codec::EntryMeta> = entries.iter().map(codec::EntryMeta::of).collect();
    // A segment in the bincode layout of format 1, and one in the compact layout of format 2.
    let format_2_segment = codec::encode_segments(10, &entries)
        .unwrap()
        .remove(0)
        .value;
    for (format, value) in [
        (codec::FORMAT_1, format_1_segment(&metas, &entries)),
        (codec::FORMAT_2, format_2_segment),
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            // A store as that format left it: its format key and a segment without a header.
            let store = SledStore::open(dir.path()).unwrap();
            store.raw_db().insert(codec::FORMAT_KEY, format).unwrap();
            store
                .raw_db()
                .insert(codec::segment_key(&alice(), 10), value)
                .unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.raw_db().get(codec::FORMAT_KEY).unwrap().as_deref(),
            Some(codec::FORMAT)
        );
        let read: Vec<StoredEntry> = store
            .read(&alice(), 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(read, entries);
        // New entries go after the old ones, in the compact layout, and both read back.
        store.append(&alice(), 15, &[message(15, 30)]).unwrap();
        let store = {
            store.flush().unwrap();
            drop(store);
            SledStore::open(dir.path()).unwrap()
        };
        let seqs: Vec<Seq> = store
            .read(&alice(), 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(seqs, [10, 11, 12, 13, 14, 15]);
    }
}

#[test]
fn a_segment_written_without_its_header_is_never_read_and_is_dropped_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<StoredEntry> = (0..3).map(|seq| message(seq, 30)).collect();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&alice(), 0, &entries[..1]).unwrap();
        // A cut between an append's segment and its header: the append was never confirmed.
        let orphan = codec::encode_segments(1, &entries[1..]).unwrap().remove(0);
        store
            .raw_db()
            .insert(codec::segment_key(&alice(), 1), orphan.value)
            .unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.read(&alice(), 0, usize::MAX).unwrap().len(), 1);
    assert_eq!(store.queues().unwrap()[0].next_seq, 1);
    // The next append takes the seqs the orphan had, and reads back as appended.
    store.append(&alice(), 1, &[message(7, 30)]).unwrap();
    let read = store.read(&alice(), 0, usize::MAX).unwrap();
    assert_eq!(read, [(0, entries[0].clone()), (1, message(7, 30))]);

    // An orphan the next append did not overwrite is left out when the store is rewritten.
    let orphan = codec::encode_segments(5, &entries[1..]).unwrap().remove(0);
    store
        .raw_db()
        .insert(codec::segment_key(&alice(), 5), orphan.value)
        .unwrap();
    assert_eq!(store.segment_count().unwrap(), 3);
    let db = store.raw_db();
    drop(store);
    compact::rewrite(dir.path(), db, |p| ::sled::open(p), sled::worth_keeping).unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.segment_count().unwrap(), 2);
    assert_eq!(store.read(&alice(), 0, usize::MAX).unwrap(), read);
}

#[test]
fn a_segment_header_claiming_huge_sizes_opens_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [message(0, 10), message(1, 10)];
    {
        let store = SledStore::open(dir.path()).unwrap();
        // Sizes no entry has: the index adds them up as the store opens.
        let metas: Vec<codec::EntryMeta> = entries
            .iter()
            .map(|e| codec::EntryMeta {
                size: u64::MAX - 1,
                expires_at_ms: e.expires_at_ms(),
            })
            .collect();
        let value = format_1_segment(&metas, &entries);
        put_segment(&store, &alice(), 0, &value);
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let info = &store.queues().unwrap()[0];
    assert_eq!((info.pending, info.bytes), (2, u64::MAX));
    assert_eq!(store.read(&alice(), 0, usize::MAX).unwrap().len(), 2);
    store.settle(&alice(), &[0]).unwrap();
    assert_eq!(store.queues().unwrap()[0].pending, 1);
}

#[test]
fn a_data_directory_deleted_or_replaced_fails_the_next_flush_naming_it() {
    for replace in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let store = SledStore::open(&path).unwrap();
        store.append(&alice(), 1, &[message(1, 10)]).unwrap();
        store.flush().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        if replace {
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("db"), b"someone else's").unwrap();
        }
        store.append(&alice(), 2, &[message(2, 10)]).unwrap();
        let err = store.flush().unwrap_err().to_string();
        assert!(
            err.contains("no longer the one the store opened") && err.contains("data"),
            "{err}"
        );
    }
}

#[test]
fn a_store_synced_to_the_os_only_flushes_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions {
        sync: SyncMode::Os,
        ..SledOptions::default()
    };
    let store = SledStore::open_with(dir.path(), &options).unwrap();
    store.append(&alice(), 1, &[message(1, 10)]).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = SledStore::open_with(dir.path(), &SledOptions::default()).unwrap();
    assert_eq!(store.read(&alice(), 0, 10).unwrap().len(), 1);
}

#[test]
fn healing_never_starts_an_empty_store_where_the_data_directory_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path).unwrap();
    store.append(&alice(), 1, &[message(1, 10)]).unwrap();
    store.flush().unwrap();
    // A healthy store heals at once, keeping what it holds.
    store.heal().unwrap();
    assert_eq!(store.read(&alice(), 0, 10).unwrap().len(), 1);
    std::fs::remove_dir_all(&path).unwrap();
    let err = store.heal().unwrap_err().to_string();
    assert!(err.contains("no longer the one the store opened"), "{err}");
    assert!(!path.exists(), "healing created {}", path.display());
}

#[test]
fn a_file_system_without_its_reserve_of_free_space_fails_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions {
        min_free_bytes: u64::MAX,
        ..SledOptions::default()
    };
    // Opening does not need the reserve: a broker on a full disk still starts and delivers.
    let store = SledStore::open_with(dir.path(), &options).unwrap();
    store.append(&alice(), 1, &[message(1, 10)]).unwrap();
    let err = store.flush().unwrap_err().to_string();
    assert!(err.contains("keeps in reserve"), "{err}");
    assert_eq!(store.read(&alice(), 0, 10).unwrap().len(), 1);
}

#[test]
fn a_store_much_larger_on_disk_than_what_it_holds_is_rewritten_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let store = SledStore::open(&path).unwrap();
    // About 100 MB written, then all of it settled.
    let entries: Vec<StoredEntry> = (0..1000).map(|s| message(s, 100_000)).collect();
    store.append(&alice(), 0, &entries).unwrap();
    store.flush().unwrap();
    let seqs: Vec<Seq> = (0..1000).collect();
    store.settle(&alice(), &seqs).unwrap();
    store.flush().unwrap();
    let bloated = store.raw_db().size_on_disk().unwrap();
    assert!(bloated > 100 << 20, "{bloated}");
    drop(store);
    let store = SledStore::open(&path).unwrap();
    let compact = store.raw_db().size_on_disk().unwrap();
    assert!(compact < 16 << 20, "{bloated} bytes became {compact}");
    // What it held is still there: the queue's numbering goes on.
    assert_eq!(store.queues().unwrap()[0].next_seq, 1000);
    assert!(!dir.path().join("data.compact").exists());
    assert!(!dir.path().join("data.old").exists());
}

#[test]
fn an_interrupted_rewrite_is_finished_or_undone_when_the_store_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let (path, new, old) = (
        dir.path().join("data"),
        dir.path().join("data.compact"),
        dir.path().join("data.old"),
    );
    let make = |at: &std::path::Path, seq: Seq| {
        let store = SledStore::open(at).unwrap();
        store.append(&alice(), seq, &[message(seq, 10)]).unwrap();
        store.flush().unwrap();
    };
    let first_seq =
        |at: &std::path::Path| SledStore::open(at).unwrap().read(&alice(), 0, 10).unwrap()[0].0;

    // An incomplete rewrite beside the store: dropped.
    make(&path, 1);
    make(&new, 2);
    assert_eq!(first_seq(&path), 1);
    assert!(!new.exists());

    // A complete rewrite, the store moved aside and an empty directory made in its place.
    make(&new, 3);
    std::fs::write(new.join("COMPACTED"), b"").unwrap();
    std::fs::rename(&path, &old).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert_eq!(first_seq(&path), 3);
    assert!(!new.exists() && !old.exists() && !path.join("COMPACTED").exists());

    // The store moved aside, the rewrite incomplete: moved back.
    std::fs::rename(&path, &old).unwrap();
    make(&new, 4);
    assert_eq!(first_seq(&path), 3);
    assert!(!new.exists() && !old.exists());
}
