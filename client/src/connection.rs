//! One TCP connection to the broker: connect, handshake, and the framed halves.

use crate::inbound::{InboundCodec, Incoming};
use crate::{ConnectError, ConnectOptions};
use broadcast_protocol::{
    ClientFrame, CodecError, FrameCodec, Hello, MAX_FRAME_CAP, PROTOCOL_VERSION, ServerFrame,
    Welcome,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{Instrument, Span, field};

/// The read half: frames from the broker.
pub(crate) type Reader = FramedRead<OwnedReadHalf, InboundCodec>;
/// The write half: frames to the broker.
pub(crate) type Writer = FramedWrite<OwnedWriteHalf, FrameCodec<ServerFrame>>;

/// A connection that completed the handshake.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Read and written concurrently, so that a broker blocked on writing to this client never
    /// waits on this client blocked on writing to the broker.
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    pub(crate) welcome: Welcome,
    /// The `client_conn` span of this connection attempt, for the life of the connection.
    pub(crate) span: Span,
}

/// Connects to `addr` and performs the handshake, all within the connect timeout.
pub(crate) async fn establish(
    addr: &str,
    options: &ConnectOptions,
    name: Option<&str>,
) -> Result<Connection, ConnectError> {
    let span = tracing::info_span!("client_conn", name = field::Empty, addr = %addr);
    if let Some(name) = name {
        span.record("name", name);
    }
    let attempt = handshake(addr, options, name, span.clone()).instrument(span);
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(res) => res,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn handshake(
    addr: &str,
    options: &ConnectOptions,
    name: Option<&str>,
    span: Span,
) -> Result<Connection, ConnectError> {
    let stream = TcpStream::connect(addr).await?;
    // Small frames (acks, pings, short messages) must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, InboundCodec::new(options.max_frame));
    let mut writer = FramedWrite::new(write, FrameCodec::new(options.max_frame, options.max_frame));
    let hello = ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: name.map(str::to_owned),
        token: None,
        namespace: None,
        max_frame: options.max_frame,
        heartbeat_ms: options.heartbeat_ms(),
    });
    writer.send(&hello).await.map_err(codec_error)?;
    let welcome = match reader.next().await {
        None => {
            return Err(ConnectError::Protocol(
                "the broker closed the connection during the handshake".into(),
            ));
        }
        Some(Err(e)) | Some(Ok(Err(e))) => return Err(codec_error(e)),
        Some(Ok(Ok(Incoming::Frame(ServerFrame::Welcome(welcome))))) => welcome,
        Some(Ok(Ok(Incoming::Frame(ServerFrame::Error(e))))) => {
            return Err(ConnectError::Refused {
                code: e.code,
                message: e.message,
            });
        }
        Some(Ok(Ok(Incoming::Frame(other)))) => {
            return Err(ConnectError::Protocol(format!(
                "expected Welcome, got {}",
                frame_kind(&other)
            )));
        }
        Some(Ok(Ok(Incoming::Message(_)))) => {
            return Err(ConnectError::Protocol(
                "expected Welcome, got Deliver".into(),
            ));
        }
    };
    if welcome.version != PROTOCOL_VERSION {
        return Err(ConnectError::Protocol(format!(
            "the broker speaks protocol version {}, this client {PROTOCOL_VERSION}",
            welcome.version
        )));
    }
    writer
        .encoder_mut()
        .set_max_encode(welcome.max_frame.min(MAX_FRAME_CAP));
    span.record("name", welcome.name.as_str());
    tracing::debug!(server = %welcome.server, "handshake done");
    Ok(Connection {
        reader,
        writer,
        welcome,
        span,
    })
}

fn codec_error(e: CodecError) -> ConnectError {
    match e {
        CodecError::Io(e) => ConnectError::Io(e),
        other => ConnectError::Protocol(other.to_string()),
    }
}

/// The name of a frame's variant, for logs and errors (never its payload).
pub(crate) fn frame_kind(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome(_) => "Welcome",
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
