//! End to end through an in-process broker and the client library: one sender, 10 channel
//! subscribers, 10,000 non-persistent 128-byte messages; throughput in deliveries.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use broadcast_bench::payload::{SeqSet, message, seq_of};
use broadcast_bench::server::{Server, ServerKind};
use broadcast_client::{Client, ConnectOptions, OutgoingMessage, Subscription};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

const SUBSCRIBERS: usize = 10;
const MESSAGES: u64 = 10_000;
const CHANNEL: &str = "bench.fanout";

struct Setup {
    server: Server,
    sender: Client,
    subscribers: Vec<(Client, Subscription)>,
}

async fn setup() -> Setup {
    let server = Server::start(&ServerKind::InProcess).await.expect("broker");
    let connect = |name: String| {
        let addr = server.addr().to_owned();
        async move {
            ConnectOptions::new()
                .name(name)
                .connect(addr)
                .await
                .expect("connect")
        }
    };
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let c = connect(format!("sub-{i}")).await;
        let s = c.subscribe(CHANNEL).await.expect("subscribe");
        subscribers.push((c, s));
    }
    let sender = connect("pub".into()).await;
    Setup {
        server,
        sender,
        subscribers,
    }
}

/// Receives one round of messages; panics on a loss (nothing for 10 s).
async fn receive_round(sub: &mut Subscription) {
    let mut seen = SeqSet::new(MESSAGES);
    while seen.len() < MESSAGES {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("lost messages: {} of {MESSAGES}", seen.len()));
        seen.insert(seq_of(&m.data).expect("a benchmark message"));
    }
}

/// One round: send every message, wait until every subscriber has all of them.
async fn round(s: &mut Setup) {
    let sender = s.sender.clone();
    let send = async move {
        for seq in 0..MESSAGES {
            let msg = OutgoingMessage::to_channel(CHANNEL, message(seq, 128)).persistent(false);
            sender.send(msg).await.expect("send");
        }
        sender.flush().await.expect("flush");
    };
    let receive =
        futures::future::join_all(s.subscribers.iter_mut().map(|(_, sub)| receive_round(sub)));
    futures::join!(send, receive);
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut s = rt.block_on(setup());
    let mut g = c.benchmark_group("fanout");
    // Each iteration takes about a tenth of a second: flat sampling keeps the run short.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(MESSAGES * SUBSCRIBERS as u64));
    g.bench_function("1_sender_10_subscribers_10k_x128B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    round(&mut s).await;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(async move {
        s.sender.close().await;
        for (c, sub) in s.subscribers {
            drop(sub);
            c.close().await;
        }
        s.server.stop().await.expect("stop the broker");
    });
}

criterion_group!(benches, fanout);
criterion_main!(benches);
