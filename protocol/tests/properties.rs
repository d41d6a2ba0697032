//! Property tests of the codec: every frame round-trips, no input makes the decoder panic, and
//! frames split anywhere in a byte stream are reassembled exactly.

mod common;

use broadcast_protocol::FrameBody;
use broadcast_protocol::{
    ClientFrame, CodecError, DEFAULT_MAX_FRAME, FrameCodec, HEADER_LEN, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, Publish, ServerFrame, Target, encode_frame,
};
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;
use std::fmt::Debug;
use tokio_util::codec::{Decoder, Encoder};

fn codec<In>() -> FrameCodec<In> {
    FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME)
}

/// Encodes `frame` with the codec, decodes it back and checks the outcome: the same frame, or
/// `UnsupportedVersion` for a handshake of another version.
fn round_trip<F>(frame: &F, version: Option<u16>) -> Result<(), TestCaseError>
where
    F: Serialize + FrameBody + PartialEq + Debug,
{
    let mut codec = codec::<F>();
    let mut buf = BytesMut::new();
    codec.encode(frame, &mut buf).expect("encodes");
    // The codec and `encode_frame` write the same bytes.
    prop_assert_eq!(
        &buf[..],
        &encode_frame(frame, DEFAULT_MAX_FRAME as usize).unwrap()[..]
    );
    let len = u32::from_be_bytes(buf[..HEADER_LEN].try_into().unwrap()) as usize;
    prop_assert_eq!(len, buf.len() - HEADER_LEN);
    let item = codec
        .decode(&mut buf)
        .expect("framing is intact")
        .expect("a whole frame");
    prop_assert!(buf.is_empty());
    match (item, version) {
        (Err(CodecError::UnsupportedVersion { got, supported }), Some(v))
            if !SPOKEN.contains(&v) =>
        {
            prop_assert_eq!(got, v);
            prop_assert_eq!(supported, PROTOCOL_VERSION);
        }
        (Ok(decoded), _) => {
            prop_assert!(version.is_none_or(|v| SPOKEN.contains(&v)));
            prop_assert_eq!(&decoded, frame);
        }
        (other, _) => prop_assert!(false, "{:?} decoded as {:?}", frame, other),
    }
    Ok(())
}

/// The protocol versions this crate decodes.
const SPOKEN: std::ops::RangeInclusive<u16> = MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION;

/// Feeds `input` to a fresh codec in one piece and drains it; must not panic.
fn drain<In: FrameBody>(input: &[u8]) {
    let mut codec = codec::<In>();
    let mut buf = BytesMut::from(input);
    // An `Err` ends the stream (oversized frame); `Ok(Some(Err(_)))` is one malformed frame.
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
}

/// Feeds `stream` to a fresh codec in pieces cut at `cuts` (sorted offsets) and returns what
/// it decoded.
fn decode_in_pieces<In: FrameBody>(stream: &[u8], cuts: &[usize]) -> Vec<In> {
    let mut codec = codec::<In>();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        while let Some(item) = codec.decode(&mut buf).expect("framing is intact") {
            out.push(item.expect("a valid frame"));
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    out
}

fn stream_of<T: Serialize>(frames: &[T]) -> Vec<u8> {
    let mut codec = codec::<ClientFrame>();
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// Frames that round-trip (handshakes of the supported version only).
fn valid_client_frame() -> impl Strategy<Value = ClientFrame> {
    common::client_frame().prop_map(|mut f| {
        if let ClientFrame::Hello(h) = &mut f {
            h.version = PROTOCOL_VERSION;
        }
        f
    })
}

fn valid_server_frame() -> impl Strategy<Value = ServerFrame> {
    common::server_frame().prop_map(|mut f| {
        if let ServerFrame::Welcome(w) = &mut f {
            w.version = PROTOCOL_VERSION;
        }
        f
    })
}

/// Sorted cut points in `0..=len`, as random chunk sizes would make them.
fn cuts(len: usize, seeds: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = seeds.iter().map(|s| s % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_client_frame_round_trips(frame in common::client_frame()) {
        round_trip(&frame, common::client_version(&frame))?;
    }

    #[test]
    fn every_server_frame_round_trips(frame in common::server_frame()) {
        round_trip(&frame, common::server_version(&frame))?;
    }

    #[test]
    fn arbitrary_bytes_never_make_the_decoder_panic(bytes in vec(any::<u8>(), 0..256)) {
        drain::<ClientFrame>(&bytes);
        drain::<ServerFrame>(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_make_the_decoder_panic(
        bodies in vec(vec(any::<u8>(), 0..64), 1..4),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
            stream.extend_from_slice(body);
        }
        drain::<ClientFrame>(&stream);
        drain::<ServerFrame>(&stream);
    }

    #[test]
    fn damaged_frames_never_make_the_decoder_panic(
        client in valid_client_frame(),
        server in valid_server_frame(),
        flips in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        for mut bytes in [stream_of(&[client]), stream_of(&[server])] {
            // Damage the body only: a damaged header is a different frame length, which
            // `arbitrary_bytes_never_make_the_decoder_panic` covers.
            let body_len = bytes.len() - HEADER_LEN;
            if body_len > 0 {
                for &(at, xor) in &flips {
                    bytes[HEADER_LEN + at % body_len] ^= xor;
                }
            }
            drain::<ClientFrame>(&bytes);
            drain::<ServerFrame>(&bytes);
            // And the same frame cut short, with a header that still fits.
            let keep = cut % (body_len + 1);
            let mut short = u32::try_from(keep).unwrap().to_be_bytes().to_vec();
            short.extend_from_slice(&bytes[HEADER_LEN..HEADER_LEN + keep]);
            drain::<ClientFrame>(&short);
            drain::<ServerFrame>(&short);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn client_frames_split_at_random_points_decode_to_the_same_frames(
        frames in vec(valid_client_frame(), 1..8),
        seeds in vec(any::<usize>(), 0..32),
    ) {
        let stream = stream_of(&frames);
        let decoded = decode_in_pieces::<ClientFrame>(&stream, &cuts(stream.len(), &seeds));
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn server_frames_split_at_random_points_decode_to_the_same_frames(
        frames in vec(valid_server_frame(), 1..8),
        seeds in vec(any::<usize>(), 0..32),
    ) {
        let stream = stream_of(&frames);
        let decoded = decode_in_pieces::<ServerFrame>(&stream, &cuts(stream.len(), &seeds));
        prop_assert_eq!(decoded, frames);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn frames_split_at_every_byte_boundary_decode_to_the_same_frames(
        client in vec(valid_client_frame(), 1..5),
        server in vec(valid_server_frame(), 1..5),
    ) {
        let stream = stream_of(&client);
        for at in 0..=stream.len() {
            prop_assert_eq!(&decode_in_pieces::<ClientFrame>(&stream, &[at]), &client);
        }
        let stream = stream_of(&server);
        for at in 0..=stream.len() {
            prop_assert_eq!(&decode_in_pieces::<ServerFrame>(&stream, &[at]), &server);
        }
    }

    #[test]
    fn frames_fed_one_byte_at_a_time_decode_to_the_same_frames(
        client in vec(valid_client_frame(), 1..5),
        server in vec(valid_server_frame(), 1..5),
    ) {
        let stream = stream_of(&client);
        let every: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(decode_in_pieces::<ClientFrame>(&stream, &every), client);
        let stream = stream_of(&server);
        let every: Vec<usize> = (1..stream.len()).collect();
        prop_assert_eq!(decode_in_pieces::<ServerFrame>(&stream, &every), server);
    }
}

/// A burst of 100,000 messages arrives in TCP-sized pieces that split frames anywhere; every
/// message comes out, in order.
#[test]
fn a_burst_of_100_000_publishes_in_arbitrary_chunks_is_reassembled_whole() {
    const COUNT: usize = 100_000;
    let frames: Vec<ClientFrame> = (0..COUNT)
        .map(|i| {
            ClientFrame::Publish(Publish {
                id: format!("msg-{i:017}"),
                target: Target::Channel("burst".into()),
                name: None,
                data: Bytes::from(vec![(i % 251) as u8; i % 97]),
                persistent: i % 2 == 0,
                ttl_ms: None,
                resent: false,
            })
        })
        .collect();
    let stream = stream_of(&frames);
    // A fixed xorshift sequence of chunk sizes between 1 and 1500 bytes.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        at += 1 + (state % 1500) as usize;
        if at >= stream.len() {
            break;
        }
        cuts.push(at);
    }
    let decoded = decode_in_pieces::<ClientFrame>(&stream, &cuts);
    assert_eq!(decoded.len(), COUNT);
    assert!(
        decoded == frames,
        "the frames came out changed or out of order"
    );
}

/// A malformed body is one bad item: the frames after it still decode.
#[test]
fn a_malformed_frame_between_good_ones_does_not_break_the_stream() {
    let good = ClientFrame::Ping { nonce: 7 };
    let mut stream = stream_of(std::slice::from_ref(&good));
    stream.extend_from_slice(&[0, 0, 0, 3, 0xee, 0xee, 0xee]);
    stream.extend_from_slice(&stream_of(std::slice::from_ref(&good)));
    let mut codec = codec::<ClientFrame>();
    let mut buf = BytesMut::from(&stream[..]);
    let items: Vec<_> = std::iter::from_fn(|| codec.decode(&mut buf).unwrap()).collect();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap(), &good);
    assert!(matches!(items[1], Err(CodecError::Decode(_))));
    assert!(items[1].as_ref().unwrap_err().is_recoverable());
    assert_eq!(items[2].as_ref().unwrap(), &good);
}
