//! The on-disk message store (`SledStore`): appending 10,000 entries of 128 bytes in batches
//! of 256 with a flush per batch, then reading them back and settling them.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broadcast_broker::store::{QueueId, QueueStore, SledStore, StoredEntry, StoredMessage};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ENTRIES: u64 = 10_000;
const BATCH: usize = 256;

fn entry(seq: u64) -> StoredEntry {
    StoredEntry::Message(StoredMessage {
        id: format!("msg-{seq}"),
        sender: "sender-1".into(),
        channel: None,
        name: None,
        data: Bytes::from(vec![b'x'; 128]),
        expires_at_ms: u64::MAX,
        redelivered: false,
    })
}

/// A queue not used before in this store.
fn fresh_queue() -> QueueId {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    QueueId::Client(format!("client-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Appends `ENTRIES` entries to `queue` in batches, flushing after each batch.
fn append_all(store: &SledStore, queue: &QueueId, entries: &[StoredEntry]) {
    for (i, batch) in entries.chunks(BATCH).enumerate() {
        store
            .append(queue, (i * BATCH) as u64, batch)
            .expect("append");
        store.flush().expect("flush");
    }
}

/// Reads the queue back in batches, settling each batch and flushing; returns the count.
fn read_and_settle(store: &SledStore, queue: &QueueId) -> u64 {
    let (mut from, mut n) = (0, 0);
    loop {
        let batch = store.read(queue, from, BATCH).expect("read");
        let Some((last, _)) = batch.last() else {
            return n;
        };
        from = last + 1;
        n += batch.len() as u64;
        let seqs: Vec<u64> = batch.iter().map(|(seq, _)| *seq).collect();
        store.settle(queue, &seqs).expect("settle");
        store.flush().expect("flush");
    }
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(dir.path()).expect("open the store");
    let entries: Vec<StoredEntry> = (0..ENTRIES).map(entry).collect();

    let mut g = c.benchmark_group("store");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(ENTRIES));
    g.bench_function("append_10k_x128B_batch256_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let queue = fresh_queue();
                let t = Instant::now();
                append_all(&store, &queue, &entries);
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("read_settle_10k_x128B_batch256", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let queue = fresh_queue();
                append_all(&store, &queue, &entries);
                let t = Instant::now();
                let n = read_and_settle(&store, &queue);
                total += t.elapsed();
                assert_eq!(black_box(n), ENTRIES);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
