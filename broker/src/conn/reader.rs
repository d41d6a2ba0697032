//! The reading half of a connection: frames off the socket, with the bytes of frames not yet
//! complete counted against one budget for the whole broker ([`PartialFrames`]).
//!
//! A frame may take long to arrive (a slow network, or a client that sends a large frame a
//! byte at a time), and its bytes are held until it is complete. Each connection may hold up
//! to a maximum-size frame, so thousands of them could hold gigabytes. While the bytes held
//! across the broker are over the budget, a connection that holds part of a frame is not read
//! from (its sender is held back by TCP); one that waits longer than the budget's wait is
//! closed with an error. Connections holding nothing read on, so complete small frames keep
//! flowing.

use crate::metrics::Traffic;
use broadcast_protocol::{ClientFrame, CodecError, FrameCodec, decode_body};
use bytes::BytesMut;
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// Bytes of incomplete frames held by every connection, against a limit.
#[derive(Debug)]
pub(crate) struct PartialFrames {
    held: AtomicUsize,
    limit: usize,
    /// How long a connection may wait for room before it is closed.
    wait: Duration,
    /// Wakes the connections waiting for room once the bytes held fall to the limit.
    room: Arc<Notify>,
}

impl PartialFrames {
    pub(crate) fn new(limit: usize, wait: Duration) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
            wait,
            room: Arc::new(Notify::new()),
        }
    }

    /// Bytes held now, across the broker.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.held() > self.limit
    }

    fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    fn remove(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.held.fetch_sub(n, Ordering::Relaxed);
        if before > self.limit && before - n <= self.limit {
            self.room.notify_waiters();
        }
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed, or a frame announced more than the limit.
    Codec(CodecError),
    /// The connection held part of a frame and waited this long for room in the budget.
    Starved(Duration),
}

/// Frames read from a connection: each a decoded frame or why its body is malformed.
pub(crate) type ReadItem = Result<Result<ClientFrame, CodecError>, ReadError>;

/// Reads and frames what a client sends.
pub(crate) struct FrameReader {
    rd: super::ReadHalf,
    buf: BytesMut,
    codec: FrameCodec<ClientFrame>,
    budget: Arc<PartialFrames>,
    /// Bytes this connection counts in the budget: those of its incomplete frame.
    held: usize,
    /// Set while it waits for room: when it gives up, and the wake-up when there is room (a
    /// waiting connection that closes takes its registration with it).
    starving: Option<Pin<Box<Sleep>>>,
    room: Option<Pin<Box<OwnedNotified>>>,
    eof: bool,
    traffic: Arc<Traffic>,
    /// Frames and bytes read and not yet added to `traffic` (added when the reader waits,
    /// not for every frame).
    frames: u64,
    bytes: u64,
    /// The length on the wire of the last frame read, header included.
    last_len: usize,
}

impl FrameReader {
    pub(crate) fn new(
        rd: super::ReadHalf,
        max_frame: u32,
        budget: Arc<PartialFrames>,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(8 * 1024),
            codec: FrameCodec::new(max_frame, max_frame),
            budget,
            held: 0,
            starving: None,
            room: None,
            eof: false,
            traffic,
            frames: 0,
            bytes: 0,
            last_len: 0,
        }
    }

    /// The length on the wire of the last frame read, header included (0 before any).
    pub(crate) fn last_len(&self) -> usize {
        self.last_len
    }

    /// Adds the frames and bytes read since the last time to the connection's counters.
    fn count(&mut self) {
        let (frames, bytes) = (
            std::mem::take(&mut self.frames),
            std::mem::take(&mut self.bytes),
        );
        self.traffic.read.add(frames, bytes);
    }

    /// Counts `n` bytes of an incomplete frame as this connection's.
    fn hold(&mut self, n: usize) {
        if n > self.held {
            self.budget.add(n - self.held);
        } else {
            self.budget.remove(self.held - n);
        }
        self.held = n;
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.hold(0);
        self.count();
    }
}

impl Stream for FrameReader {
    type Item = ReadItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReadItem>> {
        let this = self.get_mut();
        loop {
            match this.codec.decode_raw(&mut this.buf) {
                Err(e) => {
                    this.hold(0);
                    return Poll::Ready(Some(Err(ReadError::Codec(e))));
                }
                Ok(Some(body)) => {
                    this.last_len = broadcast_protocol::HEADER_LEN + body.len();
                    // What follows in the buffer belongs to frames not yet complete.
                    this.hold(this.buf.len());
                    this.starving = None;
                    this.room = None;
                    this.frames += 1;
                    return Poll::Ready(Some(Ok(decode_body(&body))));
                }
                Ok(None) => {}
            }
            if this.eof {
                this.hold(0);
                return Poll::Ready(None);
            }
            this.hold(this.buf.len());
            if this.held > 0 && this.budget.over() {
                let wait = this.budget.wait;
                let deadline = this.starving.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + wait))
                });
                if deadline.as_mut().poll(cx).is_ready() {
                    this.hold(0);
                    return Poll::Ready(Some(Err(ReadError::Starved(wait))));
                }
                let budget = &this.budget;
                let room = this
                    .room
                    .get_or_insert_with(|| Box::pin(budget.room.clone().notified_owned()));
                // Registered before the check: room made right after it wakes this connection.
                room.as_mut().enable();
                if this.budget.over() && room.as_mut().poll(cx).is_pending() {
                    this.count();
                    return Poll::Pending;
                }
            }
            this.starving = None;
            this.room = None;
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf.reserve(8 * 1024);
            }
            match poll_read_buf(Pin::new(&mut this.rd), cx, &mut this.buf) {
                Poll::Pending => {
                    this.count();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => this.bytes += n as u64,
                Poll::Ready(Err(e)) => {
                    this.hold(0);
                    return Poll::Ready(Some(Err(ReadError::Codec(e.into()))));
                }
            }
        }
    }
}
