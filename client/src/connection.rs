//! One TCP connection to the broker once the handshake is done: its framed halves and the
//! broker's `Welcome`. The [`connector`](crate::connector) makes them.

use crate::inbound::InboundCodec;
use broadcast_protocol::{FrameCodec, ServerFrame, Welcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::Span;

/// The reading half of a connection, plaintext or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plaintext or TLS.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The read half: frames from the broker.
pub(crate) type Reader = FramedRead<ReadHalf, InboundCodec>;
/// The write half: frames to the broker.
pub(crate) type Writer = FramedWrite<WriteHalf, FrameCodec<ServerFrame>>;

/// A connection that completed the handshake.
pub(crate) struct Connection {
    /// Read and written concurrently, so that a broker blocked on writing to this client never
    /// waits on this client blocked on writing to the broker.
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    pub(crate) welcome: Welcome,
    /// The `client_conn` span of this connection attempt, for the life of the connection.
    pub(crate) span: Span,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

/// The name of a frame's variant, for logs and errors (never its payload).
pub(crate) fn frame_kind(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome(_) => "Welcome",
        ServerFrame::Reauthed { .. } => "Reauthed",
        ServerFrame::Deliver(_) => "Deliver",
        ServerFrame::DeliveryFailed(_) => "DeliveryFailed",
        ServerFrame::Accepted { .. } => "Accepted",
        ServerFrame::Subscribed { .. } => "Subscribed",
        ServerFrame::Unsubscribed { .. } => "Unsubscribed",
        ServerFrame::Error(_) => "Error",
        ServerFrame::Ping { .. } => "Ping",
        ServerFrame::Pong { .. } => "Pong",
        ServerFrame::Bye { .. } => "Bye",
    }
}
