//! The writing half of a connection: batches queued frames into few writes, pings an idle
//! client, and at close writes what is left, then a farewell.

use super::outbound::{OutFrame, Outbound};
use crate::encode;
use crate::engine::Engine;
use broadcast_protocol::{
    DeliveryFailed, FailureReason, HEADER_LEN, Recipient, ServerFrame, decode_deliver_origin,
};
use bytes::BytesMut;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes gathered into one write.
const BATCH_BYTES: usize = 256 * 1024;

/// Largest write buffer a connection keeps once its queue is empty.
const IDLE_BUFFER: usize = 16 * 1024;

pub(crate) struct Writer {
    pub(crate) rx: mpsc::Receiver<OutFrame>,
    pub(crate) io: super::WriteHalf,
    pub(crate) out: Outbound,
    pub(crate) engine: Arc<Engine>,
    pub(crate) name: Arc<str>,
    pub(crate) heartbeat: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
    /// The connection's traffic counters.
    pub(crate) traffic: Arc<crate::metrics::Traffic>,
}

impl Writer {
    pub(crate) async fn run(mut self) {
        let mut buf = BytesMut::new();
        let mut nonce = 0u64;
        let close = self.out.shared.close.clone();
        let mut healthy = true;
        loop {
            let next = tokio::select! {
                biased;
                _ = close.cancelled() => break,
                r = tokio::time::timeout(self.heartbeat, self.rx.recv()) => r,
            };
            let result = match next {
                Ok(Some(first)) => self.write_batch(first, &mut buf).await,
                Ok(None) => break,
                Err(_idle) => {
                    nonce += 1;
                    let ping = encode::frame(&ServerFrame::Ping { nonce });
                    let written = match self.io.write_all(&ping).await {
                        Ok(()) => self.io.flush().await,
                        Err(e) => Err(e),
                    };
                    if written.is_ok() {
                        self.traffic.written.add(1, ping.len() as u64);
                    }
                    written
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "write failed");
                healthy = false;
                close.cancel();
                break;
            }
        }
        if healthy {
            let limit = self.drain_timeout;
            if tokio::time::timeout(limit, self.finish(&mut buf))
                .await
                .is_err()
            {
                tracing::debug!("client did not take the rest of its queue in time");
            }
        }
        self.fail_unwritten().await;
    }

    async fn write_batch(&mut self, first: OutFrame, buf: &mut BytesMut) -> std::io::Result<()> {
        buf.clear();
        // Room for what is queued (up to a batch) at once, rather than growing and copying
        // the buffer frame after frame.
        let queued = self.out.shared.queued.load(Ordering::Acquire);
        buf.reserve(queued.clamp(first.bytes.len(), BATCH_BYTES + first.bytes.len()));
        buf.extend_from_slice(&first.bytes);
        let mut drained = false;
        let mut frames = 1;
        while buf.len() < BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(f) => {
                    buf.extend_from_slice(&f.bytes);
                    frames += 1;
                }
                Err(_) => {
                    drained = true;
                    break;
                }
            }
        }
        if drained {
            // Confirmations that found the queue full go out once everything queued before
            // them (notices about the same messages among it) has been taken.
            let mut stash = self
                .out
                .shared
                .confirmations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for c in stash.drain(..) {
                buf.extend_from_slice(&c);
                frames += 1;
            }
            self.out
                .shared
                .notice_waiting
                .store(false, Ordering::Release);
        }
        // Every byte so far was counted as queued; a probe was not.
        let n = buf.len();
        // Read before it is taken: a batch with no probe (nearly all) writes nothing here.
        let probe = match self.out.shared.probe.load(Ordering::Acquire) {
            0 => 0,
            _ => self.out.shared.probe.swap(0, Ordering::AcqRel),
        };
        if probe != 0 {
            // The reading half asks the client for a sign of life.
            buf.extend_from_slice(&encode::frame(&ServerFrame::Ping { nonce: probe }));
        }
        // A TLS stream may keep records it could not write yet until it is flushed (for TCP
        // the flush does nothing).
        let r = match self.io.write_all(buf).await {
            Ok(()) => self.io.flush().await,
            Err(e) => Err(e),
        };
        if r.is_ok() {
            let frames = frames as u64 + u64::from(probe != 0);
            self.traffic.written.add(frames, buf.len() as u64);
        }
        self.out.shared.queued.fetch_sub(n, Ordering::AcqRel);
        self.out.shared.stalled.store(false, Ordering::Release);
        // As many senders waiting for room as frames left the queue: each may fit one now,
        // and thousands of waiters are not all woken for the room of a few.
        let waiting = self.out.shared.room_waiters.load(Ordering::Acquire);
        for _ in 0..waiting.min(frames) {
            self.out.shared.room.notify_one();
        }
        if self.out.shared.wants_room.swap(false, Ordering::AcqRel) {
            self.out.shared.wake.notify_one();
        }
        if buf.capacity() > 4 * BATCH_BYTES || (drained && buf.capacity() > IDLE_BUFFER) {
            // A connection with nothing more to write keeps no large buffer: thousands of
            // connections that were busy once must not each hold a batch's worth of memory.
            *buf = BytesMut::new();
        }
        r
    }

    /// Writes whatever is still queued, then the farewell (or `Bye` at shutdown), then closes.
    async fn finish(&mut self, buf: &mut BytesMut) {
        while let Ok(f) = self.rx.try_recv() {
            if self.write_batch(f, buf).await.is_err() {
                return;
            }
        }
        let farewell = self
            .out
            .shared
            .farewell
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let farewell = farewell.or_else(|| {
            self.shutdown.is_cancelled().then(|| {
                encode::frame(&ServerFrame::Bye {
                    reason: "the broker is shutting down".into(),
                })
            })
        });
        if let Some(f) = farewell {
            if self.io.write_all(&f).await.is_ok() {
                self.traffic.written.add(1, f.len() as u64);
            }
        }
        let _ = self.io.shutdown().await;
    }

    /// Tells the sender of every message that never left this queue.
    async fn fail_unwritten(&mut self) {
        self.rx.close();
        while let Ok(f) = self.rx.try_recv() {
            if !f.at_most_once {
                continue;
            }
            // The frame is the broker's own encoding of a delivery: it decodes.
            let Some(d) = decode_deliver_origin(&f.bytes[HEADER_LEN..]) else {
                continue;
            };
            tracing::debug!(id = %d.id, sender = %d.sender, "not written before the close");
            let notice = DeliveryFailed {
                id: d.id.to_owned(),
                recipient: Recipient::Client(self.name.to_string()),
                reason: FailureReason::NotConnected,
                detail: format!(
                    "{} disconnected before the message was written to it",
                    self.name
                ),
                ack_tag: None,
            };
            self.engine.notify(d.sender, notice).await;
        }
    }
}
