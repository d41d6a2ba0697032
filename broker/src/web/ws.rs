//! Broadcast over WebSocket: each binary message carries one complete frame, its 4-byte
//! length header included, byte for byte what TCP carries. The broker reads the messages as
//! one byte stream (so a frame split over messages, or messages holding several frames,
//! are read as TCP's would be) and sends every frame in a message of its own. Text messages
//! are not part of the protocol and close the connection.

use super::Conn;
use axum::extract::State;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use broadcast_protocol::HEADER_LEN;
use bytes::{Buf, BytesMut};
use futures::stream::SplitSink;
use futures::{Sink, StreamExt};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio_util::io::StreamReader;
use tracing::Instrument;

/// Upgrades a request to a WebSocket and serves Broadcast over it, when its `Origin` (sent by
/// browsers) is allowed.
pub(super) async fn upgrade(
    State(conn): State<Conn>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(refused) = conn.origin_refused(&headers) {
        return refused;
    }
    let (Some(handshaking), Some(slot)) = (conn.take_handshaking(), conn.take_slot()) else {
        return (StatusCode::BAD_REQUEST, "one WebSocket per connection\n").into_response();
    };
    let max = conn.ctx.config.max_frame() as usize + HEADER_LEN;
    let span = tracing::Span::current();
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let sessions = conn.sessions.clone();
            let session = async move {
                let (sink, stream) = socket.split();
                let reader = StreamReader::new(stream.filter_map(|m| {
                    futures::future::ready(match m {
                        Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                        Ok(Message::Text(_)) => Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text messages are not part of the protocol",
                        ))),
                        Ok(Message::Close(_)) => None,
                        Ok(Message::Ping(_) | Message::Pong(_)) => None,
                        Err(e) => Some(Err(io::Error::other(e))),
                    })
                }));
                let writer = FrameWriter {
                    sink,
                    buf: BytesMut::new(),
                };
                crate::conn::session(
                    Box::new(reader),
                    Box::new(writer),
                    conn.peer_names,
                    conn.peer,
                    conn.conn_id,
                    conn.ctx,
                    handshaking,
                )
                .await;
                drop(slot);
            }
            .instrument(span);
            // Tracked with the broker's connections: shutdown waits for it.
            async move {
                let _ = sessions.spawn(session).await;
            }
        })
}

/// The writing half of a WebSocket: the bytes of whole frames, sent one frame per binary
/// message. Each write first sends on what the last one left, so at most one write's bytes
/// (and part of a frame) wait here.
struct FrameWriter {
    sink: SplitSink<WebSocket, Message>,
    buf: BytesMut,
}

impl FrameWriter {
    /// The length of the whole frame at the front of `buf`, header included, if complete.
    fn complete(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let len = HEADER_LEN + u32::from_be_bytes(header) as usize;
        (self.buf.len() >= len).then_some(len)
    }

    /// Hands every whole frame in the buffer to the WebSocket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(len) = self.complete() {
            ready!(Pin::new(&mut self.sink).poll_ready(cx)).map_err(io::Error::other)?;
            let frame = self.buf.split_to(len).freeze();
            Pin::new(&mut self.sink)
                .start_send(Message::Binary(frame))
                .map_err(io::Error::other)?;
        }
        if self.buf.is_empty() {
            // Give back the room of a large frame once it is sent.
            self.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FrameWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.buf.extend_from_slice(data);
        // Sent on now where the WebSocket has room; the rest at the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.sink)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.buf.advance(this.buf.len());
        Pin::new(&mut this.sink)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
