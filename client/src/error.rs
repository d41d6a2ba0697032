//! The errors of each client operation.
//!
//! Every operation has its own enum, so callers match on the kind of failure rather than on
//! strings: [`ConnectError`] for [`Client::connect`](crate::Client::connect),
//! [`SendError`] for sending and flushing, [`SubscribeError`] for subscribing.

use broadcast_protocol::{ErrorCode, NameError};
use thiserror::Error;

/// Why [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The TCP connection could not be made or failed during the handshake.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connection and handshake took longer than the connect timeout.
    #[error("timed out connecting to the broker")]
    Timeout,
    /// The broker answered the handshake with an error frame.
    #[error("the broker refused the connection ({code:?}): {message}")]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The peer did not speak the Broadcast protocol as expected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// TLS could not be set up: the handshake failed (a certificate not trusted, expired, or
    /// for another name), or the TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Every connection attempt allowed by
    /// [`ConnectOptions::max_reconnect_attempts`](crate::ConnectOptions::max_reconnect_attempts)
    /// failed; the error of each attempt was logged at `warn` level.
    #[error("gave up after {attempts} connection attempts")]
    AttemptsExhausted {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The client name set with [`ConnectOptions::name`](crate::ConnectOptions::name) is not
    /// a valid client name.
    #[error("invalid client name: {0}")]
    InvalidName(#[from] NameError),
}

/// Why a message could not be queued, or a flush could not complete.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The client was closed, or gave up reconnecting, or was replaced by another connection
    /// with the same name.
    #[error("the client is closed")]
    Closed,
    /// The send buffer is full ([`Client::try_send`](crate::Client::try_send) only).
    #[error("the send buffer is full")]
    BufferFull,
    /// The payload exceeds the broker's payload limit, or the whole frame exceeds the broker's
    /// frame limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload (or of the encoded frame) in bytes.
        size: usize,
        /// The limit announced by the broker.
        max: usize,
    },
    /// A client or channel name, or the message id, is not valid.
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    /// The target is not valid: an empty list, or a name listed twice.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// The broker refused the message: the client's identity may not send to one of its
    /// recipients. Nothing of it was delivered or kept.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// Why [`Client::reauth`](crate::Client::reauth) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReauthError {
    /// The connection ended before the broker answered, or the client is closed.
    #[error("the connection ended before the broker answered")]
    Closed,
    /// The broker refused the credential; it closes the connection.
    #[error("the broker refused the credential ({code:?}): {message}")]
    Refused {
        /// The broker's error code (`Unauthorized`).
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscribeError {
    /// The client was closed, or gave up reconnecting, before the broker answered.
    #[error("the client is closed")]
    Closed,
    /// The channel name is not valid.
    #[error("invalid channel name: {0}")]
    InvalidName(#[from] NameError),
    /// The broker refused the subscription (for example, too many subscriptions, or
    /// `Forbidden` to this identity).
    #[error("the broker refused the subscription ({code:?}): {message}")]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
}
