//! Decoding never allocates much more than the frame it reads.
//!
//! This test binary counts every allocation of the process with a global allocator
//! (`peak_alloc`), so it lives in a file of its own, and each of its tests holds one lock from
//! start to end so that no other test allocates while one measures.

mod common;

use broadcast_protocol::FrameBody;
use broadcast_protocol::{
    ClientFrame, CodecError, DEFAULT_MAX_FRAME, DEFAULT_MAX_PAYLOAD, FrameCodec, HEADER_LEN,
    MAX_ACK_TAGS, MAX_LIST, Publish, ServerFrame, Target, encode_frame,
};
use bytes::{Bytes, BytesMut};
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use tokio_util::codec::Decoder;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Held by every test from start to end, so that tests running on other threads do not add to
/// the count.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What decoding may allocate beyond the body itself.
const SLACK: usize = 64 * 1024;

const MAX: usize = DEFAULT_MAX_FRAME as usize;

/// What one `decode` call did.
struct Measured<In> {
    /// Peak of the bytes allocated during the call, above what was allocated before it.
    peak: usize,
    /// What it returned.
    result: Result<Option<Result<In, CodecError>>, CodecError>,
    /// Capacity of the read buffer before and after the call.
    capacity: (usize, usize),
}

/// Feeds `input` to a fresh codec with the default limit and measures one `decode` call.
fn measure<In: FrameBody>(input: &[u8]) -> Measured<In> {
    let mut codec = FrameCodec::<In>::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
    // Room for a header more, so that the codec's own header reservation is already there.
    let mut buf = BytesMut::with_capacity(input.len() + HEADER_LEN);
    buf.extend_from_slice(input);
    let before_capacity = buf.capacity();
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let result = codec.decode(&mut buf);
    let peak = ALLOC.peak_usage().saturating_sub(before);
    Measured {
        peak,
        result,
        capacity: (before_capacity, buf.capacity()),
    }
}

/// A header and `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The varint form of a huge length: marker 253, then a little-endian u64.
fn huge(len: u64) -> Vec<u8> {
    let mut out = vec![253];
    out.extend_from_slice(&len.to_le_bytes());
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Asserts that decoding the frame `body` allocated at most `body.len() + SLACK` and that it was
/// refused as malformed.
fn assert_cheap_refusal<In: FrameBody + std::fmt::Debug>(what: &str, body: &[u8]) {
    let m = measure::<In>(&frame(body));
    assert!(
        m.peak <= body.len() + SLACK,
        "{what}: a {}-byte body made the decoder allocate {} bytes",
        body.len(),
        m.peak
    );
    match m.result {
        Ok(Some(Err(CodecError::Decode(_)))) => {}
        other => panic!("{what}: expected a malformed-frame item, got {other:?}"),
    }
}

#[test]
fn a_header_over_the_limit_is_refused_without_reserving_the_body() {
    let _serial = serial();
    for len in [MAX + 1, 2 * MAX, 1 << 31, u32::MAX as usize] {
        let mut input = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        input.extend_from_slice(&[0; 16]);
        let m = measure::<ClientFrame>(&input);
        assert!(
            matches!(m.result, Err(CodecError::FrameTooLarge { len: l, max }) if l == len && max == MAX),
            "header announcing {len} bytes: {:?}",
            m.result
        );
        assert!(
            // A few KiB of room: the test harness may print (and allocate) on its own thread meanwhile.
            m.peak < 4 * 1024,
            "header announcing {len} bytes allocated {}",
            m.peak
        );
        assert_eq!(m.capacity.0, m.capacity.1, "the read buffer grew");
    }
}

#[test]
fn a_header_within_the_limit_reserves_only_the_next_part_of_the_body() {
    let _serial = serial();
    // Room for the next 64 KiB of the body at most: memory follows what arrived, not what a
    // header announces.
    let step = MAX.min(64 * 1024);
    let mut input = u32::try_from(MAX).unwrap().to_be_bytes().to_vec();
    input.extend_from_slice(&[1, 2, 3]);
    let m = measure::<ClientFrame>(&input);
    assert!(matches!(m.result, Ok(None)), "{:?}", m.result);
    assert!(
        m.capacity.1 >= step,
        "the codec reserves room for the body it waits for"
    );
    assert!(
        m.peak <= step + SLACK,
        "waiting for a {MAX}-byte body allocated {}",
        m.peak
    );
}

#[test]
fn a_full_size_publish_costs_about_its_own_size() {
    let _serial = serial();
    let publish = ClientFrame::Publish(Publish {
        id: "V1StGXR8_Z5jdHi6B-myT".into(),
        target: Target::All,
        name: None,
        data: Bytes::from(vec![0x5a; DEFAULT_MAX_PAYLOAD as usize]),
        persistent: false,
        ttl_ms: None,
        resent: false,
    });
    let bytes = encode_frame(&publish, MAX).unwrap();
    let m = measure::<ClientFrame>(&bytes);
    assert!(matches!(&m.result, Ok(Some(Ok(f))) if *f == publish));
    let body = bytes.len() - HEADER_LEN;
    assert!(
        m.peak <= body + SLACK,
        "a {body}-byte body allocated {}",
        m.peak
    );
}

#[test]
fn hostile_length_prefixes_inside_a_body_cost_nothing() {
    let _serial = serial();
    let id: &[u8] = &[1, b'x'];
    let tail: &[u8] = &[0xaa; 32];
    // ClientFrame::Publish { id: "x", target: All, name: None, data: <2^40 bytes>, .. }
    let publish_data = concat(&[&[1], id, &[5, 0], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ClientFrame>("publish data of 2^40 bytes", &publish_data);
    // ClientFrame::Publish { id: "x", target: Group(<2^32 names>), .. }
    let group = concat(&[&[1], id, &[1], &huge(1 << 32), &[1, b'a', 1, b'b'], tail]);
    assert_cheap_refusal::<ClientFrame>("group of 2^32 names", &group);
    // ClientFrame::Publish { id: "x", target: Channels(<u64::MAX names>), .. }
    let channels = concat(&[&[1], id, &[3], &huge(u64::MAX), tail]);
    assert_cheap_refusal::<ClientFrame>("u64::MAX channels", &channels);
    // ClientFrame::Publish { id: <2^40 bytes>, .. }
    let long_id = concat(&[&[1], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ClientFrame>("an id of 2^40 bytes", &long_id);
    // ClientFrame::Hello { version: 1, name: Some(<2^40 bytes>), .. }
    let hello_name = concat(&[&[0, 1, 1], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ClientFrame>("a hello name of 2^40 bytes", &hello_name);
    // ClientFrame::Subscribe { channel: <2^40 bytes> }
    let subscribe = concat(&[&[2], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ClientFrame>("a channel of 2^40 bytes", &subscribe);
    // ClientFrame::Ack { tags: <2^62 tags> }
    let ack = concat(&[&[4], &huge(1 << 62), &[1, 2, 3]]);
    assert_cheap_refusal::<ClientFrame>("2^62 ack tags", &ack);
    // ServerFrame::Deliver { id: "x", sender: "x", channel: None, name: None, data: <2^40> }
    let deliver = concat(&[&[1], id, id, &[0, 0], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ServerFrame>("delivery data of 2^40 bytes", &deliver);
    // ServerFrame::Error { code: Internal, message: <2^40 bytes> }
    let error = concat(&[&[6, 11], &huge(1 << 40), tail]);
    assert_cheap_refusal::<ServerFrame>("an error message of 2^40 bytes", &error);
}

/// Group and channel lists and ack tag lists cost more in memory than on the wire (a name takes
/// one byte on the wire and a `String` in memory, a tag one byte and eight), so their length is
/// capped: at the cap they cost a small fixed amount beyond their body, and one element more is
/// a malformed frame refused at no cost.
#[test]
fn lists_are_capped_and_cost_little_up_to_the_cap() {
    let _serial = serial();
    for (what, cap) in [("group", MAX_LIST), ("ack", MAX_ACK_TAGS)] {
        for n in [1_000usize, cap, cap + 1, 1_000_000] {
            let count = u64::try_from(n).unwrap();
            let body = if what == "group" {
                concat(&[
                    &[1, 1, b'x', 1],
                    &huge(count),
                    &vec![0u8; n],
                    &[0, 0, 0, 0, 0],
                ])
            } else {
                concat(&[&[4], &huge(count), &vec![7u8; n]])
            };
            let m = measure::<ClientFrame>(&frame(&body));
            if n <= cap {
                assert!(
                    matches!(m.result, Ok(Some(Ok(_)))),
                    "{what} of {n}: {:?}",
                    m.result
                );
            } else {
                assert!(
                    matches!(m.result, Ok(Some(Err(_)))),
                    "{what} of {n}: {:?}",
                    m.result
                );
            }
            let bound = body.len() + SLACK + 64 * cap;
            assert!(
                m.peak <= bound,
                "{what} of {n}: a {}-byte body allocated {}",
                body.len(),
                m.peak
            );
        }
    }
}

fn encoded<T: Serialize>(frame: &T) -> Vec<u8> {
    encode_frame(frame, MAX).unwrap().to_vec()
}

/// Inserts a huge length prefix at `at` in the body of `frame` (a header and body), then keeps
/// `keep` of the body's bytes after it, and fixes the header.
fn with_hostile_prefix(frame_bytes: &[u8], at: usize, prefix: &[u8], keep: usize) -> Vec<u8> {
    let body = &frame_bytes[HEADER_LEN..];
    let at = at % (body.len() + 1);
    let rest = &body[at..];
    let rest = &rest[..keep.min(rest.len())];
    frame(&concat(&[&body[..at], prefix, rest]))
}

fn prefix() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(huge),
        (1u64 << 20..1 << 62).prop_map(huge),
        any::<u32>().prop_map(|n| concat(&[&[252], &n.to_le_bytes()])),
        any::<u16>().prop_map(|n| concat(&[&[251], &n.to_le_bytes()])),
    ]
}

fn check_peak<In: FrameBody>(input: &[u8]) -> Result<(), TestCaseError> {
    let body = input.len().saturating_sub(HEADER_LEN);
    let m = measure::<In>(input);
    prop_assert!(
        m.peak <= body + SLACK,
        "a {body}-byte body allocated {} bytes",
        m.peak
    );
    Ok(())
}

/// Runs a property over `cases` values of `strategy`, holding the measuring lock for the whole
/// run: proptest allocates while it makes and shrinks values, and that must not happen on
/// another thread while a test measures.
fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let _serial = serial();
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if let Err(e) = TestRunner::new(config).run(&strategy, property) {
        panic!("{e}");
    }
}

#[test]
fn decoding_a_client_frame_allocates_at_most_its_body() {
    check(256, common::client_frame(), |frame| {
        check_peak::<ClientFrame>(&encoded(&frame))
    });
}

#[test]
fn decoding_a_server_frame_allocates_at_most_its_body() {
    check(256, common::server_frame(), |frame| {
        check_peak::<ServerFrame>(&encoded(&frame))
    });
}

#[test]
fn a_hostile_length_anywhere_in_a_client_frame_costs_nothing() {
    let strategy = (common::client_frame(), any::<usize>(), prefix(), 0usize..64);
    check(256, strategy, |(frame, at, prefix, keep)| {
        check_peak::<ClientFrame>(&with_hostile_prefix(&encoded(&frame), at, &prefix, keep))
    });
}

#[test]
fn a_hostile_length_anywhere_in_a_server_frame_costs_nothing() {
    let strategy = (common::server_frame(), any::<usize>(), prefix(), 0usize..64);
    check(256, strategy, |(frame, at, prefix, keep)| {
        check_peak::<ServerFrame>(&with_hostile_prefix(&encoded(&frame), at, &prefix, keep))
    });
}

#[test]
fn decoding_arbitrary_bodies_allocates_at_most_their_length() {
    check(
        256,
        proptest::collection::vec(any::<u8>(), 0..512),
        |body| {
            check_peak::<ClientFrame>(&frame(&body))?;
            check_peak::<ServerFrame>(&frame(&body))
        },
    );
}
