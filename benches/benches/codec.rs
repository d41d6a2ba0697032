//! Encoding and decoding of the two frames every message crosses: the sender's `Publish` and
//! the recipient's `Deliver`, each with a 128-byte payload, through `FrameCodec`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, Delivery, FrameCodec, Publish, ServerFrame, Target,
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

const PAYLOAD: usize = 128;

fn publish() -> ClientFrame {
    ClientFrame::Publish(Publish {
        id: "V1StGXR8_Z5jdHi6B-myT".into(),
        target: Target::Client("receiver-1".into()),
        name: None,
        data: Bytes::from(vec![b'x'; PAYLOAD]),
        persistent: false,
        ttl_ms: None,
        resent: false,
    })
}

fn deliver() -> ServerFrame {
    ServerFrame::Deliver(Delivery {
        id: "V1StGXR8_Z5jdHi6B-myT".into(),
        sender: "sender-1".into(),
        channel: Some("bench.fan".into()),
        name: None,
        data: Bytes::from(vec![b'x'; PAYLOAD]),
        persistent: true,
        redelivered: false,
        ack_tag: Some(12_345),
    })
}

/// Encodes `frame` into a buffer and decodes it back, as the two ends of a connection do.
fn round_trip<T>(frame: &T, buf: &mut BytesMut) -> T
where
    T: serde::Serialize + broadcast_protocol::FrameBody,
{
    let mut codec = FrameCodec::<T>::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
    codec.encode(frame, buf).expect("encode");
    codec
        .decode(buf)
        .expect("decode")
        .expect("a whole frame")
        .expect("a valid frame")
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(4096);
    let p = publish();
    g.bench_function("publish_128B_encode_decode", |b| {
        b.iter(|| black_box(round_trip(black_box(&p), &mut buf)))
    });
    let d = deliver();
    g.bench_function("deliver_128B_encode_decode", |b| {
        b.iter(|| black_box(round_trip(black_box(&d), &mut buf)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
