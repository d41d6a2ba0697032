//! One suite of behaviours every `QueueStore` must show, run against `MemoryStore` and
//! `SledStore`, plus a property test of both against a simple model.

use broadcast_broker::store::{
    MemoryStore, QueueId, QueueInfo, QueueStore, Seq, Session, SledStore, StoreError, StoredEntry,
    StoredMessage,
};
use broadcast_protocol::{DeliveryFailed, FailureReason, Recipient};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tempfile::TempDir;

/// A store under test, with a way to close and reopen it.
trait Fixture {
    type Store: QueueStore;

    fn new() -> Self;
    fn store(&self) -> &Self::Store;
    /// Flushes, closes and reopens the store; a memory store stays as it is.
    fn reopen(&mut self);
    /// How many segment values the store holds, when it has any.
    fn segments(&self) -> Option<usize>;
}

struct Memory(MemoryStore);

impl Fixture for Memory {
    type Store = MemoryStore;

    fn new() -> Self {
        Memory(MemoryStore::new())
    }
    fn store(&self) -> &MemoryStore {
        &self.0
    }
    fn reopen(&mut self) {
        self.0.flush().unwrap();
    }
    fn segments(&self) -> Option<usize> {
        None
    }
}

struct Sled {
    dir: TempDir,
    store: Option<SledStore>,
}

impl Fixture for Sled {
    type Store = SledStore;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        Sled {
            dir,
            store: Some(store),
        }
    }
    fn store(&self) -> &SledStore {
        self.store.as_ref().unwrap()
    }
    fn reopen(&mut self) {
        self.store().flush().unwrap();
        drop(self.store.take());
        self.store = Some(SledStore::open(self.dir.path()).unwrap());
    }
    fn segments(&self) -> Option<usize> {
        Some(self.store().segment_count().unwrap())
    }
}

fn client(name: &str) -> QueueId {
    QueueId::Client(name.to_owned())
}

fn backlog(name: &str) -> QueueId {
    QueueId::Backlog(name.to_owned())
}

/// A message whose contents follow from `seq`, with `len` bytes of data.
fn message(seq: Seq, len: usize, expires_at_ms: u64) -> StoredEntry {
    StoredEntry::Message(StoredMessage {
        id: format!("m{seq}"),
        sender: "sender".to_owned(),
        channel: (seq % 3 == 0).then(|| "news".to_owned()),
        name: (seq % 2 == 0).then(|| "event".to_owned()),
        data: Bytes::from(vec![seq as u8; len]),
        expires_at_ms,
        redelivered: seq % 5 == 0,
    })
}

fn notice(seq: Seq, expires_at_ms: u64) -> StoredEntry {
    StoredEntry::Notice {
        notice: DeliveryFailed {
            id: format!("m{seq}"),
            recipient: Recipient::Channel("news".to_owned()),
            reason: FailureReason::Expired,
            detail: "no subscriber in time".to_owned(),
            ack_tag: None,
        },
        expires_at_ms,
    }
}

fn messages(seqs: std::ops::Range<Seq>) -> Vec<StoredEntry> {
    seqs.map(|seq| message(seq, 100, u64::MAX)).collect()
}

fn seqs_of(read: &[(Seq, StoredEntry)]) -> Vec<Seq> {
    read.iter().map(|(seq, _)| *seq).collect()
}

fn info<S: QueueStore>(store: &S, queue: &QueueId) -> Option<QueueInfo> {
    store
        .queues()
        .unwrap()
        .into_iter()
        .find(|info| &info.queue == queue)
}

fn appends_and_reads_in_order_across_segments<F: Fixture>() {
    let mut f = F::new();
    let q = client("alice");
    let mut next = 0;
    // Small entries, so that segments are bounded by their count, not their size.
    for n in [1u64, 127, 128, 129, 300, 7] {
        let entries: Vec<StoredEntry> =
            (next..next + n).map(|s| message(s, 10, u64::MAX)).collect();
        f.store().append(&q, next, &entries).unwrap();
        next += n;
    }
    let want: Vec<(Seq, StoredEntry)> = (0..next).map(|s| (s, message(s, 10, u64::MAX))).collect();
    assert_eq!(f.store().read(&q, 0, usize::MAX).unwrap(), want);
    assert_eq!(f.store().read(&q, 0, 10).unwrap(), want[..10]);
    assert!(f.store().read(&q, 0, 0).unwrap().is_empty());
    // 1, 127, 128, 128 + 1, 128 * 2 + 44, 7 entries.
    if let Some(segments) = f.segments() {
        assert_eq!(segments, 1 + 1 + 1 + 2 + 3 + 1);
    }
    f.reopen();
    assert_eq!(f.store().read(&q, 0, usize::MAX).unwrap(), want);
    assert!(f.store().read(&client("bob"), 0, 10).unwrap().is_empty());
}

fn reads_from_the_middle<F: Fixture>() {
    let f = F::new();
    let q = client("alice");
    f.store().append(&q, 0, &messages(0..150)).unwrap();
    f.store().append(&q, 200, &messages(200..210)).unwrap();
    let read = f.store().read(&q, 70, 5).unwrap();
    assert_eq!(seqs_of(&read), vec![70, 71, 72, 73, 74]);
    assert_eq!(read[0].1, message(70, 100, u64::MAX));
    let read = f.store().read(&q, 148, 5).unwrap();
    assert_eq!(seqs_of(&read), vec![148, 149, 200, 201, 202]);
    assert_eq!(
        seqs_of(&f.store().read(&q, 170, 2).unwrap()),
        vec![200, 201]
    );
    assert!(f.store().read(&q, 210, 5).unwrap().is_empty());
}

fn settles_in_order<F: Fixture>() {
    let mut f = F::new();
    let q = client("alice");
    f.store().append(&q, 0, &messages(0..300)).unwrap();
    for start in (0..200).step_by(10) {
        let seqs: Vec<Seq> = (start..start + 10).collect();
        f.store().settle(&q, &seqs).unwrap();
        let read = f.store().read(&q, 0, 1).unwrap();
        assert_eq!(seqs_of(&read), vec![start + 10]);
    }
    let info = info(f.store(), &q).unwrap();
    assert_eq!((info.next_seq, info.pending), (300, 100));
    if let Some(segments) = f.segments() {
        // 200 / 128: one segment is settled; seqs 128..256 and 256..300 remain.
        assert_eq!(segments, 2);
    }
    f.reopen();
    assert_eq!(
        seqs_of(&f.store().read(&q, 0, usize::MAX).unwrap()),
        (200..300).collect::<Vec<_>>()
    );
}

fn settles_out_of_order<F: Fixture>() {
    let mut f = F::new();
    let q = client("alice");
    f.store().append(&q, 10, &messages(10..210)).unwrap();
    let odd: Vec<Seq> = (10..210).filter(|s| s % 2 == 1).collect();
    let even: Vec<Seq> = (10..210).filter(|s| s % 2 == 0).collect();
    f.store().settle(&q, &odd).unwrap();
    assert_eq!(seqs_of(&f.store().read(&q, 0, usize::MAX).unwrap()), even);
    assert_eq!(seqs_of(&f.store().read(&q, 11, 2).unwrap()), vec![12, 14]);
    f.reopen();
    assert_eq!(seqs_of(&f.store().read(&q, 0, usize::MAX).unwrap()), even);
    // Settle the evens from the back, so that the low seqs stay unsettled the longest.
    for chunk in even.rchunks(17) {
        f.store().settle(&q, chunk).unwrap();
    }
    f.store().settle(&q, &[0, 5, 10, 11, 500]).unwrap();
    assert!(f.store().read(&q, 0, usize::MAX).unwrap().is_empty());
    assert_eq!(f.segments().unwrap_or(0), 0);
    f.reopen();
    assert!(f.store().read(&q, 0, usize::MAX).unwrap().is_empty());
    let info = info(f.store(), &q).unwrap();
    assert_eq!((info.next_seq, info.pending, info.bytes), (210, 0, 0));
}

fn settles_a_middle_entry_and_reopens<F: Fixture>() {
    let mut f = F::new();
    let q = backlog("news");
    f.store().append(&q, 0, &messages(0..130)).unwrap();
    // Settle everything but 3 and 100, in an order that leaves holes behind the floor.
    let seqs: Vec<Seq> = (0..130).rev().filter(|s| *s != 3 && *s != 100).collect();
    f.store().settle(&q, &seqs[..60]).unwrap();
    f.store().settle(&q, &seqs[60..]).unwrap();
    f.reopen();
    assert_eq!(
        seqs_of(&f.store().read(&q, 0, usize::MAX).unwrap()),
        vec![3, 100]
    );
    f.store().settle(&q, &[3]).unwrap();
    f.reopen();
    assert_eq!(
        seqs_of(&f.store().read(&q, 0, usize::MAX).unwrap()),
        vec![100]
    );
    if let Some(segments) = f.segments() {
        assert_eq!(segments, 1);
    }
}

fn settle_is_idempotent_and_ignores_unknown_seqs<F: Fixture>() {
    let f = F::new();
    let q = client("alice");
    f.store().append(&q, 0, &messages(0..10)).unwrap();
    f.store().settle(&q, &[2, 2, 3]).unwrap();
    f.store().settle(&q, &[2, 3, 10, 11, u64::MAX]).unwrap();
    f.store().settle(&client("nobody"), &[1]).unwrap();
    f.store().settle(&q, &[]).unwrap();
    let info = info(f.store(), &q).unwrap();
    let bytes = messages(0..10).iter().map(StoredEntry::size).sum::<u64>()
        - message(2, 100, 0).size()
        - message(3, 100, 0).size();
    assert_eq!((info.next_seq, info.pending, info.bytes), (10, 8, bytes));
    assert!(info.bytes > 800);
}

fn next_seq_survives_full_settlement<F: Fixture>() {
    let mut f = F::new();
    let q = client("alice");
    f.store().append(&q, 0, &messages(0..100)).unwrap();
    f.store().settle(&q, &(0..100).collect::<Vec<_>>()).unwrap();
    assert_eq!(f.segments().unwrap_or(0), 0);
    f.reopen();
    let info = info(f.store(), &q).unwrap();
    assert_eq!((info.next_seq, info.pending, info.bytes), (100, 0, 0));
    let err = f.store().append(&q, 99, &messages(99..100)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SeqOrder {
                next_seq: 100,
                first_seq: 99,
                ..
            }
        ),
        "{err}"
    );
    f.store().append(&q, 105, &messages(105..107)).unwrap();
    assert_eq!(seqs_of(&f.store().read(&q, 0, 10).unwrap()), vec![105, 106]);
    f.reopen();
    assert_eq!(info_next(f.store(), &q), 107);
}

fn info_next<S: QueueStore>(store: &S, queue: &QueueId) -> Seq {
    info(store, queue).unwrap().next_seq
}

fn an_empty_append_changes_nothing<F: Fixture>() {
    let f = F::new();
    f.store().append(&client("alice"), 5, &[]).unwrap();
    assert!(f.store().queues().unwrap().is_empty());
}

fn append_rejects_overflowing_seqs<F: Fixture>() {
    let f = F::new();
    let q = client("alice");
    let err = f.store().append(&q, u64::MAX, &messages(0..2)).unwrap_err();
    assert!(matches!(err, StoreError::SeqOrder { .. }), "{err}");
    assert!(f.store().queues().unwrap().is_empty());
}

fn queues_report_counts_and_bytes<F: Fixture>() {
    let mut f = F::new();
    let (a, ab, news) = (client("a"), client("ab"), backlog("a"));
    f.store()
        .append(&news, 3, &[message(3, 1000, 9), notice(4, 9)])
        .unwrap();
    f.store().append(&ab, 0, &messages(0..5)).unwrap();
    f.store().append(&a, 0, &messages(0..70)).unwrap();
    f.store().settle(&a, &[0, 69]).unwrap();
    let size = |seqs: std::ops::Range<Seq>| messages(seqs).iter().map(StoredEntry::size).sum();
    let want = vec![
        QueueInfo {
            queue: a.clone(),
            next_seq: 70,
            pending: 68,
            bytes: size(1..69),
        },
        QueueInfo {
            queue: ab.clone(),
            next_seq: 5,
            pending: 5,
            bytes: size(0..5),
        },
        QueueInfo {
            queue: news.clone(),
            next_seq: 5,
            pending: 2,
            bytes: message(3, 1000, 9).size() + notice(4, 9).size(),
        },
    ];
    assert_eq!(f.store().queues().unwrap(), want);
    assert_eq!(message(3, 1000, 9).size(), 1000 + 2 + 6 + 4);
    f.reopen();
    assert_eq!(f.store().queues().unwrap(), want);
    // Names that prefix each other are separate queues.
    assert_eq!(f.store().read(&a, 0, usize::MAX).unwrap().len(), 68);
    assert_eq!(f.store().read(&ab, 0, usize::MAX).unwrap().len(), 5);
    assert_eq!(
        f.store().read(&news, 0, usize::MAX).unwrap()[1],
        (4, notice(4, 9))
    );
}

fn expired_returns_only_expired_unsettled_entries<F: Fixture>() {
    let mut f = F::new();
    let (a, b) = (client("a"), backlog("b"));
    let entries: Vec<StoredEntry> = (0..200).map(|s| message(s, 10, 1000 + s * 10)).collect();
    f.store().append(&a, 0, &entries).unwrap();
    f.store()
        .append(&b, 0, &[notice(0, 500), message(1, 10, 5000)])
        .unwrap();
    assert!(f.store().expired(499, None, 100).unwrap().is_empty());
    assert_eq!(f.store().expired(999, None, 100).unwrap().len(), 1);
    let expired = f.store().expired(1050, None, 100).unwrap();
    let got: Vec<(QueueId, Seq)> = expired.iter().map(|(q, s, _)| (q.clone(), *s)).collect();
    let mut want: Vec<(QueueId, Seq)> = (0..=5).map(|s| (a.clone(), s)).collect();
    want.push((b.clone(), 0));
    assert_eq!(got, want);
    assert_eq!(expired[6].2, notice(0, 500));
    assert_eq!(f.store().expired(1050, None, 3).unwrap().len(), 3);
    // Not settled by asking.
    assert_eq!(f.store().expired(1050, None, 100).unwrap().len(), 7);
    f.store().settle(&a, &[0, 2, 4]).unwrap();
    f.store().settle(&b, &[0]).unwrap();
    f.reopen();
    let got: Vec<Seq> = f
        .store()
        .expired(1050, None, 100)
        .unwrap()
        .iter()
        .map(|(_, s, _)| *s)
        .collect();
    assert_eq!(got, vec![1, 3, 5]);
    assert_eq!(
        f.store().expired(u64::MAX, None, usize::MAX).unwrap().len(),
        197 + 1
    );
    assert!(f.store().expired(u64::MAX, None, 0).unwrap().is_empty());
    // Going on after an entry: the rest of its queue, then the queues after it.
    let after = |q: &QueueId, s: Seq| -> Vec<(QueueId, Seq)> {
        f.store()
            .expired(1050, Some(&(q.clone(), s)), 100)
            .unwrap()
            .into_iter()
            .map(|(q, s, _)| (q, s))
            .collect()
    };
    assert_eq!(after(&a, 3), vec![(a.clone(), 5)]);
    assert_eq!(after(&a, 5), Vec::<(QueueId, Seq)>::new());
    assert_eq!(
        after(&client("0"), 999),
        vec![(a.clone(), 1), (a.clone(), 3), (a.clone(), 5)]
    );
}

fn drop_queue_removes_everything<F: Fixture>() {
    let mut f = F::new();
    let (a, b) = (client("a"), client("b"));
    f.store().append(&a, 0, &messages(0..100)).unwrap();
    f.store().append(&b, 0, &messages(0..10)).unwrap();
    f.store().settle(&a, &[5]).unwrap();
    f.store().drop_queue(&a).unwrap();
    f.store().drop_queue(&client("nobody")).unwrap();
    assert!(f.store().read(&a, 0, 10).unwrap().is_empty());
    assert_eq!(f.store().queues().unwrap().len(), 1);
    if let Some(segments) = f.segments() {
        assert_eq!(segments, 1);
    }
    f.reopen();
    assert_eq!(f.store().queues().unwrap()[0].queue, b);
    // The seq record is gone too.
    f.store().append(&a, 0, &messages(0..3)).unwrap();
    assert_eq!(info_next(f.store(), &a), 3);
    assert_eq!(f.store().read(&a, 0, 10).unwrap().len(), 3);
}

fn sessions_are_put_replaced_and_removed<F: Fixture>() {
    let mut f = F::new();
    let session = |name: &str, channels: &[&str], at| Session {
        name: name.to_owned(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        last_seen_ms: at,
    };
    assert!(f.store().sessions().unwrap().is_empty());
    f.store().put_session(&session("bob", &["x"], 1)).unwrap();
    f.store().put_session(&session("alice", &[], 2)).unwrap();
    f.store()
        .put_session(&session("bob", &["y", "z"], 3))
        .unwrap();
    f.store().put_session(&session("carol", &["x"], 4)).unwrap();
    f.store().remove_session("carol").unwrap();
    f.store().remove_session("nobody").unwrap();
    let want = vec![session("alice", &[], 2), session("bob", &["y", "z"], 3)];
    assert_eq!(f.store().sessions().unwrap(), want);
    f.reopen();
    assert_eq!(f.store().sessions().unwrap(), want);
    // Sessions and queues do not mix.
    assert!(f.store().queues().unwrap().is_empty());
}

fn everything_survives_reopening<F: Fixture>() {
    let mut f = F::new();
    let (a, n) = (client("é ü"), backlog("news"));
    f.store().append(&a, 0, &messages(0..100)).unwrap();
    f.store()
        .append(&n, 7, &[notice(7, 70), message(8, 0, 80)])
        .unwrap();
    f.store().settle(&a, &[1, 50, 64, 99]).unwrap();
    f.store()
        .put_session(&Session {
            name: "é ü".to_owned(),
            channels: vec!["news".to_owned()],
            last_seen_ms: 5,
        })
        .unwrap();
    let queues = f.store().queues().unwrap();
    let read_a = f.store().read(&a, 0, usize::MAX).unwrap();
    let read_n = f.store().read(&n, 0, usize::MAX).unwrap();
    let expired = f.store().expired(75, None, 10).unwrap();
    let sessions = f.store().sessions().unwrap();
    f.reopen();
    f.reopen();
    assert_eq!(f.store().queues().unwrap(), queues);
    assert_eq!(f.store().read(&a, 0, usize::MAX).unwrap(), read_a);
    assert_eq!(f.store().read(&n, 0, usize::MAX).unwrap(), read_n);
    assert_eq!(f.store().expired(75, None, 10).unwrap(), expired);
    assert_eq!(f.store().sessions().unwrap(), sessions);
    assert_eq!(read_a.len(), 96);
}

fn large_entries_get_segments_of_their_own<F: Fixture>() {
    let mut f = F::new();
    let q = client("alice");
    let entries = vec![
        message(0, 10, 1),
        message(1, 10, 1),
        message(2, 200 * 1024, 1),
        message(3, 10, 1),
        message(4, 200 * 1024, 1),
        message(5, 200 * 1024, 1),
        message(6, 10, 1),
    ];
    f.store().append(&q, 0, &entries).unwrap();
    if let Some(segments) = f.segments() {
        // [0, 1], [2], [3], [4], [5], [6]
        assert_eq!(segments, 6);
    }
    // Many medium entries: at most 12 KiB of them per segment, two of these.
    let medium: Vec<StoredEntry> = (7..27).map(|s| message(s, 5 * 1024, 1)).collect();
    f.store().append(&q, 7, &medium).unwrap();
    if let Some(segments) = f.segments() {
        assert_eq!(segments, 6 + 10);
    }
    f.reopen();
    let read: Vec<StoredEntry> = f
        .store()
        .read(&q, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(read, entries.into_iter().chain(medium).collect::<Vec<_>>());
    f.store().settle(&q, &[2, 4]).unwrap();
    if let Some(segments) = f.segments() {
        assert_eq!(segments, 4 + 10);
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $test() {
                    super::$test::<super::Memory>();
                }
            )*
        }
        mod sled {
            $(
                #[test]
                fn $test() {
                    super::$test::<super::Sled>();
                }
            )*
        }
    };
}

conformance!(
    appends_and_reads_in_order_across_segments,
    reads_from_the_middle,
    settles_in_order,
    settles_out_of_order,
    settles_a_middle_entry_and_reopens,
    settle_is_idempotent_and_ignores_unknown_seqs,
    next_seq_survives_full_settlement,
    an_empty_append_changes_nothing,
    append_rejects_overflowing_seqs,
    queues_report_counts_and_bytes,
    expired_returns_only_expired_unsettled_entries,
    drop_queue_removes_everything,
    sessions_are_put_replaced_and_removed,
    everything_survives_reopening,
    large_entries_get_segments_of_their_own,
);

#[test]
fn opening_a_directory_another_store_has_open_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path == dir.path()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn opening_a_corrupt_directory_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(SledStore::open(dir.path()).unwrap());
    std::fs::write(
        dir.path().join("conf"),
        b"\xde\xad\xbe\xef not a sled config",
    )
    .unwrap();
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path == dir.path()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn opening_a_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = SledStore::open(&file).unwrap_err();
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

/// The model of a store: each queue's next seq and unsettled entries.
type Model = BTreeMap<QueueId, (Seq, BTreeMap<Seq, StoredEntry>)>;

#[derive(Debug, Clone)]
enum Op {
    Append {
        queue: usize,
        gap: u64,
        len: u64,
        size: usize,
        expiry: u64,
    },
    Settle {
        queue: usize,
        picks: Vec<u64>,
    },
    Read {
        queue: usize,
        from: u64,
        max: usize,
    },
    Expired {
        now: u64,
        max: usize,
        after: Option<(usize, u64)>,
    },
    Drop {
        queue: usize,
    },
    Reopen,
}

fn queue_ids() -> [QueueId; 3] {
    [client("a"), client("ab"), backlog("a")]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3u64, 1..150u64, 0..300usize, 0..100u64)
            .prop_map(|(queue, gap, len, size, expiry)| Op::Append { queue, gap, len, size, expiry }),
        4 => (0..3usize, prop::collection::vec(any::<u64>(), 0..80))
            .prop_map(|(queue, picks)| Op::Settle { queue, picks }),
        2 => (0..3usize, any::<u64>(), 0..100usize).prop_map(|(queue, from, max)| Op::Read { queue, from, max }),
        1 => (0..200u64, 0..50usize, prop::option::of((0..3usize, 0..200u64)))
            .prop_map(|(now, max, after)| Op::Expired { now, max, after }),
        1 => (0..3usize).prop_map(|queue| Op::Drop { queue }),
        1 => Just(Op::Reopen),
    ]
}

fn check_against_model<F: Fixture>(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut f = F::new();
    let mut model = Model::new();
    let ids = queue_ids();
    for op in ops {
        match op {
            Op::Append {
                queue,
                gap,
                len,
                size,
                expiry,
            } => {
                let id = &ids[*queue];
                let (next, entries) = model.entry(id.clone()).or_default();
                let first = *next + gap;
                let new: Vec<StoredEntry> = (first..first + len)
                    .map(|s| {
                        if s % 11 == 0 {
                            notice(s, expiry + s % 50)
                        } else {
                            message(s, *size, expiry + s % 50)
                        }
                    })
                    .collect();
                f.store().append(id, first, &new).unwrap();
                *next = first + len;
                entries.extend((first..).zip(new));
            }
            Op::Settle { queue, picks } => {
                let id = &ids[*queue];
                let span = model.get(id).map_or(0, |(next, _)| *next) + 5;
                let seqs: Vec<Seq> = picks.iter().map(|p| p % span).collect();
                f.store().settle(id, &seqs).unwrap();
                if let Some((_, entries)) = model.get_mut(id) {
                    for seq in &seqs {
                        entries.remove(seq);
                    }
                }
            }
            Op::Read { queue, from, max } => {
                let id = &ids[*queue];
                let from = from % (model.get(id).map_or(0, |(next, _)| *next) + 5);
                let want: Vec<(Seq, StoredEntry)> =
                    model.get(id).map_or_else(Vec::new, |(_, e)| {
                        e.range(from..)
                            .take(*max)
                            .map(|(s, e)| (*s, e.clone()))
                            .collect()
                    });
                prop_assert_eq!(f.store().read(id, from, *max).unwrap(), want);
            }
            Op::Expired { now, max, after } => {
                let after = after.map(|(q, seq)| (ids[q].clone(), seq));
                let want: Vec<(QueueId, Seq, StoredEntry)> = model
                    .iter()
                    .flat_map(|(id, (_, e))| {
                        e.iter()
                            .filter(|(_, e)| e.expires_at_ms() <= *now)
                            .map(move |(s, e)| (id.clone(), *s, e.clone()))
                    })
                    .filter(|(id, s, _)| after.as_ref().is_none_or(|a| (id, s) > (&a.0, &a.1)))
                    .take(*max)
                    .collect();
                prop_assert_eq!(f.store().expired(*now, after.as_ref(), *max).unwrap(), want);
            }
            Op::Drop { queue } => {
                f.store().drop_queue(&ids[*queue]).unwrap();
                model.remove(&ids[*queue]);
            }
            Op::Reopen => f.reopen(),
        }
        let want: Vec<QueueInfo> = model
            .iter()
            .map(|(id, (next, e))| QueueInfo {
                queue: id.clone(),
                next_seq: *next,
                pending: e.len() as u64,
                bytes: e.values().map(StoredEntry::size).sum(),
            })
            .collect();
        prop_assert_eq!(f.store().queues().unwrap(), want);
    }
    for (id, (_, entries)) in &model {
        let all: Vec<(Seq, StoredEntry)> = entries.iter().map(|(s, e)| (*s, e.clone())).collect();
        prop_assert_eq!(&f.store().read(id, 0, usize::MAX).unwrap(), &all);
    }
    f.reopen();
    prop_assert_eq!(f.store().queues().unwrap().len(), model.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_store_agrees_with_the_model(ops in prop::collection::vec(op(), 1..40)) {
        check_against_model::<Memory>(&ops)?;
    }

    #[test]
    fn sled_store_agrees_with_the_model(ops in prop::collection::vec(op(), 1..40)) {
        check_against_model::<Sled>(&ops)?;
    }
}
