//! The Broadcast wire protocol.
//!
//! Broadcast clients and the broker exchange length-prefixed frames over TCP: a 4-byte
//! big-endian body length, then a body in bincode's standard serde encoding (variable-length
//! integers, little-endian). `PROTOCOL.md` in this crate documents every frame byte by byte.
//!
//! The crate is sans-IO: it holds no sockets and spawns no tasks.
//!
//! - [`frame`]: the frames each side sends ([`ClientFrame`], [`ServerFrame`]) and the values
//!   they carry ([`Publish`], [`Delivery`], [`Target`], ...).
//! - [`codec`]: [`FrameCodec`], a tokio-util codec that enforces the frame size limit before any
//!   allocation, and [`encode_frame`] for frames that are encoded once and sent many times.
//! - [`fast`]: hand-written encoders and decoders of the per-message frames (`Publish`,
//!   `Deliver`, `Accepted`), byte for byte what [`encode_frame`] writes, several times cheaper;
//!   [`set_publish_resent`] and [`decode_deliver_origin`], which touch or read one field of an
//!   encoded frame without decoding the rest.
//! - [`names`]: validation of client, channel and message-id strings.
//! - [`varint`]: bincode's variable-length integers and byte strings, written and read
//!   (checked) by hand, for the fast codecs and the broker's store segments.
//! - [`error`]: the codec error type, [`CodecError`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod fast;
pub mod frame;
pub mod names;
pub mod varint;
mod wire;

pub use codec::{FrameBody, FrameCodec, decode_body, encode_frame, encode_frame_sized};
pub use error::CodecError;
pub use fast::{
    DeliveryNamed, DeliveryOrigin, DeliveryRef, decode_deliver, decode_deliver_origin,
    decode_deliver_with, encode_accepted, encode_publish, set_publish_resent,
};
pub use frame::*;
pub use names::{NameError, new_message_id, validate_channel, validate_client_name, validate_id};

/// Newest version of the protocol spoken by this crate, sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 2;

/// Oldest version of the protocol this crate still speaks: a version 1 peer is answered in
/// version 1 (no credentials, no `Reauth`, `Welcome` without the fields of version 2).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Default largest message payload (`data`) in bytes: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Room a frame has beyond its payload for ids, names, targets and other fields.
pub const FRAME_ENVELOPE: u32 = 64 * 1024;

/// Default largest frame body in bytes: the default payload limit plus the envelope, so that a
/// message with a full 1 MiB payload fits in one frame.
pub const DEFAULT_MAX_FRAME: u32 = DEFAULT_MAX_PAYLOAD + FRAME_ENVELOPE;

/// Largest frame limit either side may configure (64 MiB).
pub const MAX_FRAME_CAP: u32 = 64 * 1024 * 1024;

/// Smallest frame limit either side may configure (4 KiB).
pub const MIN_FRAME: u32 = 4 * 1024;

/// Most names in a group or channel-list target; a longer list is a malformed frame.
pub const MAX_LIST: usize = 4096;

/// Most tags in one `Ack` frame; a longer list is a malformed frame.
pub const MAX_ACK_TAGS: usize = 8192;

/// Length of the frame header: a big-endian `u32` body length.
pub const HEADER_LEN: usize = 4;
