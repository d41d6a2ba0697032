//! Errors of the codec.

use thiserror::Error;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The underlying socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame header announced a body larger than the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length the header announced, or the encoded length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame body is not a valid frame of this protocol.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// A value could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The peer speaks a protocol version this side does not support.
    #[error(
        "unsupported protocol version {got} (supported: {} to {supported})",
        crate::MIN_PROTOCOL_VERSION
    )]
    UnsupportedVersion {
        /// Version the peer announced.
        got: u16,
        /// Version this side speaks.
        supported: u16,
    },
}

impl CodecError {
    /// True when the error comes from one malformed frame body: the framing is intact, so the
    /// connection can answer with an error frame and go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Decode(_))
    }
}
