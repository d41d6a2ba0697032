//! Length-prefixed framing with bincode bodies.
//!
//! A frame is a 4-byte big-endian body length followed by the body. The decoder checks the
//! announced length against its limit before it reserves any memory for the body, and decodes
//! the body with a bincode size limit and with strings borrowed before they are copied, so that
//! a frame can never make it allocate more than the frame's own size (plus a small constant).

use crate::{
    ClientFrame, CodecError, HEADER_LEN, MAX_FRAME_CAP, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    ServerFrame,
};
use bincode::config::{Configuration, Limit};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// bincode settings for every body: variable-length integers, little-endian, and a size limit.
type Config = Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    Limit<{ MAX_FRAME_CAP as usize }>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<{ MAX_FRAME_CAP as usize }>();

/// Encodes `frame` as a complete wire frame (header and body).
///
/// Used for frames that are encoded once and written to many connections.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] when the body exceeds `max_frame`; [`CodecError::Encode`] when
/// the value cannot be encoded.
pub fn encode_frame<T: Serialize>(frame: &T, max_frame: usize) -> Result<Bytes, CodecError> {
    encode_frame_sized(frame, max_frame, 128)
}

/// Like [`encode_frame`], with room for `capacity` bytes reserved first: a caller that knows
/// about how large the frame will be (its payload plus its names) saves the buffer from
/// growing while the frame is written.
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_frame_sized<T: Serialize>(
    frame: &T,
    max_frame: usize,
    capacity: usize,
) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::with_capacity(capacity.min(HEADER_LEN + max_frame));
    encode_into(frame, max_frame, &mut buf)?;
    Ok(buf.freeze())
}

fn encode_into<T: Serialize>(
    frame: &T,
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    if let Err(e) = bincode::serde::encode_into_std_write(frame, &mut writer, CONFIG) {
        let dst = writer.into_inner();
        dst.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let dst = writer.into_inner();
    let len = dst.len() - start - HEADER_LEN;
    if len > max_frame {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    // `len <= max_frame <= MAX_FRAME_CAP`, which fits in a u32.
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// A frame type the codec decodes: [`ClientFrame`] or [`ServerFrame`].
///
/// Every shape is decoded by serde; the shapes sent once per message are first tried by the
/// hand-written decoders of [`crate::fast`], which read the same bytes to the same values.
pub trait FrameBody: DeserializeOwned {
    /// The frame, when `body` is one of the shapes decoded by hand and holds nothing unusual;
    /// `None` leaves the body to serde.
    fn decode_fast(body: &[u8]) -> Option<Self>;
}

impl FrameBody for ClientFrame {
    fn decode_fast(body: &[u8]) -> Option<Self> {
        crate::fast::decode_client(body)
    }
}

impl FrameBody for ServerFrame {
    fn decode_fast(body: &[u8]) -> Option<Self> {
        crate::fast::decode_server(body)
    }
}

/// Decodes one frame body (without its header).
///
/// # Errors
/// [`CodecError::UnsupportedVersion`] when the body is a handshake of another protocol version;
/// [`CodecError::Decode`] when it is not a valid frame or has bytes left over.
pub fn decode_body<T: FrameBody>(body: &[u8]) -> Result<T, CodecError> {
    if let Some(frame) = T::decode_fast(body) {
        return Ok(frame);
    }
    decode_serde(body)
}

/// Decodes one frame body with serde only.
pub(crate) fn decode_serde<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    match bincode::serde::borrow_decode_from_slice::<T, _>(body, CONFIG) {
        Ok((value, used)) if used == body.len() => {
            check_version(body)?;
            Ok(value)
        }
        Ok((_, used)) => {
            check_version(body)?;
            Err(CodecError::Decode(format!(
                "{} bytes left over after the frame",
                body.len() - used
            )))
        }
        Err(e) => {
            check_version(body)?;
            Err(CodecError::Decode(e.to_string()))
        }
    }
}

/// The handshake (`Hello`, `Welcome`) is variant 0 in both directions and starts with the
/// protocol version, so a peer of another version is recognised even when the rest of its
/// handshake has another shape.
fn check_version(body: &[u8]) -> Result<(), CodecError> {
    match bincode::decode_from_slice::<(u32, u16), _>(body, CONFIG) {
        Ok(((0, got), _)) if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&got) => {
            Err(CodecError::UnsupportedVersion {
                got,
                supported: PROTOCOL_VERSION,
            })
        }
        _ => Ok(()),
    }
}

/// A tokio-util codec: decodes frames of type `In`, encodes any serializable frame and
/// pre-encoded frames.
///
/// Decoding yields `Result<In, CodecError>` items: a malformed body is reported as an item
/// (the framing is intact, so the connection can answer and go on), while an oversized frame or
/// an i/o failure ends the stream with an error.
#[derive(Debug)]
pub struct FrameCodec<In> {
    max_decode: usize,
    max_encode: usize,
    /// Body length of the frame being received, once its header has been read and checked.
    pending: Option<usize>,
    _in: PhantomData<fn() -> In>,
}

impl<In> FrameCodec<In> {
    /// A codec that accepts frames of at most `max_decode` bytes and sends frames of at most
    /// `max_encode` bytes. Both are clamped to [`MAX_FRAME_CAP`].
    pub fn new(max_decode: u32, max_encode: u32) -> Self {
        Self {
            max_decode: max_decode.min(MAX_FRAME_CAP) as usize,
            max_encode: max_encode.min(MAX_FRAME_CAP) as usize,
            pending: None,
            _in: PhantomData,
        }
    }

    /// Changes the largest frame this side sends (after the peer has told its limit).
    pub fn set_max_encode(&mut self, max: u32) {
        self.max_encode = max.min(MAX_FRAME_CAP) as usize;
    }

    /// The largest frame this side sends.
    pub fn max_encode(&self) -> usize {
        self.max_encode
    }

    /// The largest frame this side accepts.
    pub fn max_decode(&self) -> usize {
        self.max_decode
    }
}

/// Most room reserved at once for a frame body that is still arriving.
const RESERVE_STEP: usize = 64 * 1024;

impl<In> FrameCodec<In> {
    /// Takes the next whole frame body (without its header) off `src`, for a reader that
    /// decodes bodies itself; `None` until a whole frame has arrived.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when a frame announces more than the decode limit, before
    /// any room is reserved for it.
    pub fn decode_raw(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                if src.len() < HEADER_LEN {
                    src.reserve(HEADER_LEN);
                    return Ok(None);
                }
                let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
                if len > self.max_decode {
                    return Err(CodecError::FrameTooLarge {
                        len,
                        max: self.max_decode,
                    });
                }
                src.advance(HEADER_LEN);
                self.pending = Some(len);
                len
            }
        };
        if src.len() < len {
            // Room for the next part of the body only: memory follows the bytes that
            // arrived, not the length a frame announces.
            src.reserve((len - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len)))
    }
}

impl<In: FrameBody> Decoder for FrameCodec<In> {
    type Item = Result<In, CodecError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        Ok(self.decode_raw(src)?.map(|body| decode_body(&body)))
    }
}

impl<In, T: Serialize> Encoder<&T> for FrameCodec<In> {
    type Error = CodecError;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_into(item, self.max_encode, dst)
    }
}

/// A complete frame made by [`encode_frame`], written as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(pub Bytes);

impl<In> Encoder<Encoded> for FrameCodec<In> {
    type Error = CodecError;

    fn encode(&mut self, item: Encoded, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = item.0.len().saturating_sub(HEADER_LEN);
        if len > self.max_encode {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_encode,
            });
        }
        dst.extend_from_slice(&item.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, Hello, ServerFrame};

    fn hello(version: u16) -> ClientFrame {
        ClientFrame::Hello(Hello {
            version,
            name: Some("alice".into()),
            token: None,
            namespace: None,
            max_frame: 1 << 20,
            heartbeat_ms: 5000,
        })
    }

    #[test]
    fn round_trips_through_the_codec() {
        let mut codec = FrameCodec::<ClientFrame>::new(1 << 20, 1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(&hello(PROTOCOL_VERSION), &mut buf).unwrap();
        let got = codec.decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(got, hello(PROTOCOL_VERSION));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_an_oversized_header_before_reading_the_body() {
        let mut codec = FrameCodec::<ClientFrame>::new(4096, 4096);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 0x7fff_ffff,
                max: 4096
            }
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn reports_another_protocol_version() {
        let bytes = encode_frame(&hello(7), 1 << 20).unwrap();
        let err = decode_body::<ClientFrame>(&bytes[HEADER_LEN..]).unwrap_err();
        assert!(matches!(
            err,
            CodecError::UnsupportedVersion {
                got: 7,
                supported: 2
            }
        ));
        let bytes = encode_frame(&hello(0), 1 << 20).unwrap();
        assert!(decode_body::<ClientFrame>(&bytes[HEADER_LEN..]).is_err());
        for version in [1, 2] {
            let bytes = encode_frame(&hello(version), 1 << 20).unwrap();
            assert_eq!(
                decode_body::<ClientFrame>(&bytes[HEADER_LEN..]).unwrap(),
                hello(version)
            );
        }
    }

    fn welcome(version: u16) -> crate::Welcome {
        crate::Welcome {
            version,
            name: "alice".into(),
            server: "broadcast".into(),
            max_frame: 4096,
            max_payload: 1024,
            heartbeat_ms: 0,
            identity: Some("billing".into()),
            namespace: None,
            expires_ms: Some(1 << 40),
        }
    }

    #[test]
    fn a_version_1_welcome_ends_before_the_fields_of_version_2() {
        let v1 = encode_frame(&ServerFrame::Welcome(welcome(1)), 1 << 20).unwrap();
        let v2 = encode_frame(&ServerFrame::Welcome(welcome(2)), 1 << 20).unwrap();
        // identity (1 + 1 + 7), namespace (1), expires_ms (1 + 1 + 8)
        assert_eq!(v2.len() - v1.len(), 9 + 1 + 10);
        let got = decode_body::<ServerFrame>(&v1[HEADER_LEN..]).unwrap();
        let stripped = crate::Welcome {
            identity: None,
            expires_ms: None,
            ..welcome(1)
        };
        assert_eq!(got, ServerFrame::Welcome(stripped));
        let got = decode_body::<ServerFrame>(&v2[HEADER_LEN..]).unwrap();
        assert_eq!(got, ServerFrame::Welcome(welcome(2)));
        // A version 2 Welcome cut after its version 1 fields is malformed.
        let mut cut = v1[HEADER_LEN..].to_vec();
        cut[1] = 2;
        assert!(decode_body::<ServerFrame>(&cut).is_err());
    }

    #[test]
    fn a_malformed_body_is_an_item_not_the_end_of_the_stream() {
        let mut codec = FrameCodec::<ServerFrame>::new(4096, 4096);
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xfe, 0xfe][..]);
        let item = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(item, Err(CodecError::Decode(_))));
    }

    #[test]
    fn refuses_to_encode_beyond_the_peer_limit() {
        let mut codec = FrameCodec::<ServerFrame>::new(4096, 16);
        let mut buf = BytesMut::new();
        let err = codec.encode(&hello(1), &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert!(buf.is_empty());
    }
}
