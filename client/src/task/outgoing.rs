//! The outgoing half of the connection task: everything the client writes to the broker.
//!
//! It owns the queue of encoded frames waiting for the socket, the messages and flush pings
//! held over a lost connection, the persistent messages waiting for the broker's `Accepted`
//! ([`UnconfirmedSet`]), the batch of acknowledgements ([`AckBatch`]), and the pings of
//! flushes and heartbeats.
//!
//! Persistent messages stay in the unconfirmed set from the moment they are queued for writing
//! until their `Accepted` arrives; after a reconnection (and the resubscriptions) they are sent
//! again, marked `resent`, before anything else. Acknowledgements of deliveries are written
//! with the next write, once a quarter of the broker's default window waits, or after
//! [`ACK_DELAY`](crate::ack::ACK_DELAY).
//!
//! It holds no socket: [`Outgoing::poll_write`] hands the queued frames to the sink the task
//! gives it, so that tests can read them from a buffer.

use super::emit;
use crate::ack::AckBatch;
use crate::unconfirmed::{Confirm, Unconfirmed, UnconfirmedSet, publish_id, publish_parts};
use crate::{Event, SendError};
use broadcast_protocol::codec::Encoded;
use broadcast_protocol::{
    ClientFrame, CodecError, FailureReason, HEADER_LEN, Recipient, Target, encode_frame,
};
use bytes::Bytes;
use futures::Sink;
use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

/// Above this many queued bytes the task stops pulling commands until the socket drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// What a queued frame is, for what happens to it when the connection is lost.
#[derive(Debug)]
enum Kind {
    /// Pings, pongs, subscriptions: rebuilt or meaningless on a new connection.
    Control,
    /// A message not yet registered as unconfirmed: kept and sent on the next connection.
    /// Its id and target are read from the frame when needed.
    Publish {
        persistent: bool,
        confirm: Option<Confirm>,
    },
    /// A copy of a message of the [`UnconfirmedSet`]: dropped with the connection, as the set
    /// sends it again.
    Unconfirmed,
    /// The ping of a flush: kept, so that it stays behind the messages sent before it.
    Flush(u64),
}

/// An encoded frame waiting to be written.
#[derive(Debug)]
struct Queued {
    bytes: Bytes,
    kind: Kind,
}

/// Frames waiting to be written, and whether the writer needs a flush.
#[derive(Debug, Default)]
struct OutQueue {
    frames: VecDeque<Queued>,
    bytes: usize,
    unflushed: bool,
}

impl OutQueue {
    fn push(&mut self, out: Queued) {
        self.bytes += out.bytes.len();
        self.frames.push_back(out);
        self.unflushed = true;
    }

    /// Feeds every queued frame to the writer, then flushes it once.
    ///
    /// Cancel-safe: a frame leaves the queue only when the writer has taken it.
    fn poll_write<W>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<(), CodecError>>
    where
        W: Sink<Encoded, Error = CodecError> + Unpin,
    {
        while !self.frames.is_empty() {
            ready!(Pin::new(&mut *writer).poll_ready(cx))?;
            let Some(out) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= out.bytes.len();
            Pin::new(&mut *writer).start_send(Encoded(out.bytes))?;
        }
        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }
}

/// What the client writes, and what it must remember of it across connections.
#[derive(Debug)]
pub(super) struct Outgoing {
    events: broadcast::Sender<Event>,
    /// Most persistent messages waiting for `Accepted` before commands wait.
    max_unconfirmed: usize,
    queue: OutQueue,
    /// Messages (and flush pings) queued but not written when the connection was lost.
    held: VecDeque<Queued>,
    /// Flushes waiting for their `Pong`, by nonce, in send order.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    next_nonce: u64,
    /// Largest frame body the current broker accepts.
    max_encode: usize,
    /// When the latest batch of frames was queued, for the heartbeat.
    last_sent: Instant,
    /// Persistent messages queued for writing and not yet confirmed by `Accepted`.
    unconfirmed: UnconfirmedSet,
    /// True after a lost connection until the unconfirmed messages are sent again.
    resend_due: bool,
    /// Tags to acknowledge on the current connection.
    acks: AckBatch,
}

impl Outgoing {
    pub(super) fn new(events: broadcast::Sender<Event>, max_unconfirmed: usize) -> Self {
        Self {
            events,
            max_unconfirmed,
            queue: OutQueue::default(),
            held: VecDeque::new(),
            flushes: VecDeque::new(),
            next_nonce: 0,
            max_encode: 0,
            last_sent: Instant::now(),
            unconfirmed: UnconfirmedSet::default(),
            resend_due: false,
            acks: AckBatch::default(),
        }
    }

    /// Takes up a new connection, whose broker accepts frame bodies of `max_encode` bytes.
    pub(super) fn connected(&mut self, max_encode: usize) {
        self.last_sent = Instant::now();
        self.max_encode = max_encode;
    }

    /// Asks again for the flushes whose ping went out on the lost connection; the others are
    /// held, behind the messages sent before them.
    pub(super) fn ping_flushes_again(&mut self) {
        let held: HashSet<u64> = self
            .held
            .iter()
            .filter_map(|out| match out.kind {
                Kind::Flush(nonce) => Some(nonce),
                _ => None,
            })
            .collect();
        let resend: Vec<u64> = self
            .flushes
            .iter()
            .map(|(nonce, _)| *nonce)
            .filter(|nonce| !held.contains(nonce))
            .collect();
        for nonce in resend {
            self.push_frame(&ClientFrame::Ping { nonce });
        }
    }

    /// Keeps what must survive the lost connection: unwritten messages and flush pings (the
    /// unconfirmed messages are kept apart), and forgets what was only valid on it.
    pub(super) fn disconnected(&mut self) {
        self.acks.clear();
        self.resend_due = !self.unconfirmed.is_empty();
        let frames = std::mem::take(&mut self.queue).frames;
        let mut kept: VecDeque<Queued> = frames
            .into_iter()
            .filter(|out| matches!(out.kind, Kind::Publish { .. } | Kind::Flush(_)))
            .collect();
        kept.append(&mut self.held);
        self.held = kept;
    }

    /// Moves the messages kept from a lost connection into the write queue: first the
    /// unconfirmed ones again, marked as resent, then those never written.
    pub(super) fn release_held(&mut self) {
        if std::mem::take(&mut self.resend_due) {
            self.resend_unconfirmed();
        }
        while let Some(out) = self.held.pop_front() {
            self.push_publish(out);
        }
    }

    /// Stops for good: empties the unconfirmed set and the held messages, and returns the ids
    /// of the persistent messages among them, which the broker never confirmed.
    pub(super) fn abandon(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .unconfirmed
            .take_all()
            .iter()
            .map(|msg| msg.id().to_owned())
            .collect();
        for out in self.held.drain(..) {
            if let Kind::Publish {
                persistent: true, ..
            } = out.kind
            {
                ids.push(frame_id(&out.bytes));
            }
        }
        ids
    }

    /// Releases the callers of flushes still waiting: their flush fails.
    pub(super) fn close(&mut self) {
        self.flushes.clear();
    }

    /// Whether more commands may be taken: few enough bytes wait for the socket and few
    /// enough persistent messages for their confirmation.
    pub(super) fn has_room(&self) -> bool {
        self.queue.bytes < WRITE_HIGH_WATER && self.unconfirmed.len() < self.max_unconfirmed
    }

    /// The number of persistent messages waiting for `Accepted`.
    pub(super) fn unconfirmed_len(&self) -> usize {
        self.unconfirmed.len()
    }

    /// Queues an encoded `Publish` frame from a handle.
    pub(super) fn publish(&mut self, frame: Bytes, persistent: bool, confirm: Option<Confirm>) {
        self.push_publish(Queued {
            bytes: frame,
            kind: Kind::Publish {
                persistent,
                confirm,
            },
        });
    }

    /// Queues the ping of a flush, answered by [`pong`](Self::pong).
    pub(super) fn flush(&mut self, reply: oneshot::Sender<()>) {
        let nonce = self.nonce();
        self.flushes.push_back((nonce, reply));
        match encode_frame(&ClientFrame::Ping { nonce }, self.max_encode) {
            Ok(bytes) => self.push(Queued {
                bytes,
                kind: Kind::Flush(nonce),
            }),
            Err(e) => tracing::warn!(error = %e, "cannot encode a ping"),
        }
    }

    /// The broker answered the ping `nonce`: the flushes up to it are done.
    pub(super) fn pong(&mut self, nonce: u64) {
        while self.flushes.front().is_some_and(|(n, _)| *n <= nonce) {
            if let Some((_, reply)) = self.flushes.pop_front() {
                let _ = reply.send(());
            }
        }
    }

    /// The broker confirmed the message `id`: removes and returns the oldest unconfirmed
    /// message with that id, if any.
    pub(super) fn confirm(&mut self, id: &str) -> Option<Unconfirmed> {
        self.unconfirmed.confirm(id)
    }

    /// Pings the broker when nothing was written for `interval`.
    pub(super) fn heartbeat(&mut self, now: Instant, interval: Duration) {
        if now.duration_since(self.last_sent) >= interval {
            let nonce = self.nonce();
            self.push_frame(&ClientFrame::Ping { nonce });
        }
    }

    /// Queues a control frame (subscriptions, pings, pongs, goodbye).
    pub(super) fn push_frame(&mut self, frame: &ClientFrame) {
        match encode_frame(frame, self.max_encode) {
            Ok(bytes) => self.push(Queued {
                bytes,
                kind: Kind::Control,
            }),
            Err(e) => tracing::warn!(error = %e, "cannot encode a control frame"),
        }
    }

    /// Adds a tag to the acknowledgement batch; a full batch is queued at once.
    pub(super) fn queue_ack(&mut self, tag: u64) {
        if self.acks.add_with(tag, Instant::now) {
            self.push_acks();
        }
    }

    /// Queues every acknowledgement waiting, in as few frames as possible.
    pub(super) fn push_acks(&mut self) {
        for frame in self.acks.take_frames() {
            self.push_frame(&frame);
        }
    }

    /// Queues the acknowledgements waiting when something is about to be written anyway:
    /// they go with it.
    pub(super) fn attach_acks(&mut self) {
        if !self.acks.is_empty() && self.queue.unflushed {
            self.push_acks();
        }
    }

    /// Whether acknowledgements wait to be queued.
    pub(super) fn has_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// When the waiting acknowledgements must be queued at the latest; `None` when none wait.
    pub(super) fn acks_due(&self) -> Option<Instant> {
        self.acks.due()
    }

    /// Whether frames were queued since the writer was last flushed.
    pub(super) fn unflushed(&self) -> bool {
        self.queue.unflushed
    }

    /// Feeds every queued frame to `writer`, then flushes it once.
    ///
    /// Cancel-safe: a frame leaves the queue only when the writer has taken it.
    pub(super) fn poll_write<W>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<(), CodecError>>
    where
        W: Sink<Encoded, Error = CodecError> + Unpin,
    {
        self.queue.poll_write(cx, writer)
    }

    fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    fn push(&mut self, out: Queued) {
        // One clock read per write batch: the frames queued together go out together.
        if !self.queue.unflushed {
            self.last_sent = Instant::now();
        }
        self.queue.push(out);
    }

    /// Queues a message frame, unless the broker connected now takes smaller frames than the
    /// one the message was encoded for. A persistent message joins the unconfirmed ones.
    fn push_publish(&mut self, out: Queued) {
        let Queued { bytes, kind } = out;
        let Kind::Publish {
            persistent,
            confirm,
        } = kind
        else {
            return self.push(Queued { bytes, kind });
        };
        let len = bytes.len().saturating_sub(HEADER_LEN);
        if len > self.max_encode {
            return self.too_large(&bytes, len, confirm);
        }
        if persistent {
            self.unconfirmed.push(Unconfirmed {
                frame: bytes.clone(),
                resent: false,
                confirm,
            });
            return self.push(Queued {
                bytes,
                kind: Kind::Unconfirmed,
            });
        }
        self.push(Queued {
            bytes,
            kind: Kind::Publish {
                persistent,
                confirm,
            },
        });
    }

    /// Reports a message that no longer fits the broker's frame limit.
    fn too_large(&mut self, frame: &[u8], len: usize, confirm: Option<Confirm>) {
        let (id, target) = publish_parts(frame).unwrap_or_else(|| {
            // Never the case: the client encoded the frame itself.
            (frame_id(frame), Target::All)
        });
        let detail = format!(
            "frame of {len} bytes exceeds the broker's limit of {} bytes",
            self.max_encode
        );
        tracing::warn!(%id, "{detail}");
        for recipient in recipients(target) {
            emit(
                &self.events,
                Event::DeliveryFailed {
                    id: id.clone(),
                    recipient,
                    reason: FailureReason::TooLarge,
                    detail: detail.clone(),
                },
            );
        }
        if let Some(confirm) = confirm {
            let _ = confirm.send(Err(SendError::TooLarge {
                size: len,
                max: self.max_encode,
            }));
        }
    }

    /// Queues every unconfirmed message again, in send order, with `resent` set.
    fn resend_unconfirmed(&mut self) {
        let max = self.max_encode;
        let mut frames = Vec::with_capacity(self.unconfirmed.len());
        let mut too_large = Vec::new();
        for (seq, msg) in self.unconfirmed.iter_mut() {
            let frame = msg.resend_frame();
            let len = frame.len().saturating_sub(HEADER_LEN);
            if len > max {
                too_large.push((seq, len));
            } else {
                frames.push(frame);
            }
        }
        for (seq, len) in too_large {
            if let Some(msg) = self.unconfirmed.remove(seq) {
                self.too_large(&msg.frame, len, msg.confirm);
            }
        }
        tracing::debug!(count = frames.len(), "sending unconfirmed messages again");
        for bytes in frames {
            self.push(Queued {
                bytes,
                kind: Kind::Unconfirmed,
            });
        }
    }
}

/// The id of the message in an encoded `Publish` frame, as an owned string.
pub(super) fn frame_id(frame: &[u8]) -> String {
    publish_id(frame).unwrap_or_default().to_owned()
}

/// The recipients of a message, one per name for groups and channel lists.
fn recipients(target: Target) -> Vec<Recipient> {
    match target {
        Target::Client(c) | Target::ClientInChannel { client: c, .. } => vec![Recipient::Client(c)],
        Target::Group(cs) => cs.into_iter().map(Recipient::Client).collect(),
        Target::Channel(c) => vec![Recipient::Channel(c)],
        Target::Channels(cs) => cs.into_iter().map(Recipient::Channel).collect(),
        Target::All => vec![Recipient::All],
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use broadcast_protocol::{FrameCodec, Publish, ServerFrame, decode_body, encode_publish};
    use tokio::sync::oneshot::error::TryRecvError;
    use tokio_util::codec::FramedWrite;

    const MAX: usize = 1 << 20;

    /// An outgoing half connected to a broker that takes frames of `max_encode` bytes, with
    /// the receiver of its events.
    pub(in crate::task) fn outgoing(
        max_unconfirmed: usize,
    ) -> (Outgoing, broadcast::Receiver<Event>) {
        let (events, rx) = broadcast::channel(64);
        let mut out = Outgoing::new(events, max_unconfirmed);
        out.connected(MAX);
        (out, rx)
    }

    pub(in crate::task) fn publish_frame(id: &str, target: Target, data: usize) -> Bytes {
        let p = Publish {
            id: id.into(),
            target,
            name: None,
            data: Bytes::from(vec![7; data]),
            persistent: true,
            ttl_ms: None,
            resent: false,
        };
        encode_publish(&p, MAX).unwrap()
    }

    /// Writes everything queued into a buffer, as the socket would take it, and decodes it.
    pub(in crate::task) fn written(out: &mut Outgoing) -> Vec<ClientFrame> {
        let mut writer =
            FramedWrite::new(Vec::new(), FrameCodec::<ServerFrame>::new(1 << 20, 1 << 20));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match out.poll_write(&mut cx, &mut writer) {
            Poll::Ready(Ok(())) => {}
            other => panic!("a buffer takes everything at once: {other:?}"),
        }
        assert!(!out.unflushed());
        let mut bytes = writer.get_ref().as_slice();
        let mut frames = Vec::new();
        while let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() {
            let (body, rest) = rest.split_at(u32::from_be_bytes(*header) as usize);
            frames.push(decode_body::<ClientFrame>(body).unwrap());
            bytes = rest;
        }
        frames
    }

    /// The ids and `resent` flags of the `Publish` frames among `frames`, and their kinds.
    fn summary(frames: &[ClientFrame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                ClientFrame::Publish(p) if p.resent => format!("{} again", p.id),
                ClientFrame::Publish(p) => p.id.clone(),
                ClientFrame::Ping { nonce } => format!("ping {nonce}"),
                ClientFrame::Ack { tags } => format!("ack {tags:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn publish(out: &mut Outgoing, id: &str, persistent: bool) {
        out.publish(publish_frame(id, Target::All, 1), persistent, None);
    }

    #[test]
    fn acknowledgements_wait_for_the_next_write() {
        let (mut out, _events) = outgoing(16);
        out.queue_ack(1);
        out.queue_ack(2);
        assert!(!out.unflushed(), "acknowledgements alone wait");
        assert!(out.acks_due().is_some());
        out.attach_acks();
        assert!(
            out.has_acks(),
            "nothing is being written for them to go with"
        );

        publish(&mut out, "m1", false);
        out.attach_acks();
        assert_eq!(summary(&written(&mut out)), ["m1", "ack [1, 2]"]);
        assert!(!out.has_acks());
        assert_eq!(out.acks_due(), None);
    }

    #[test]
    fn a_large_batch_of_acknowledgements_is_queued_at_once() {
        let (mut out, _events) = outgoing(16);
        let mut tags = 0;
        while !out.unflushed() {
            out.queue_ack(tags);
            tags += 1;
            assert!(
                tags <= 8192,
                "a batch of a quarter window is written at once"
            );
        }
        assert!(tags > 1);
        let frames = written(&mut out);
        assert_eq!(
            frames,
            [ClientFrame::Ack {
                tags: (0..tags).collect()
            }]
        );
        assert_eq!(out.acks_due(), None);
    }

    #[test]
    fn acknowledgements_of_a_lost_connection_are_forgotten() {
        let (mut out, _events) = outgoing(16);
        out.queue_ack(1);
        out.disconnected();
        out.connected(MAX);
        assert!(!out.has_acks());
        out.push_acks();
        assert!(written(&mut out).is_empty());
    }

    #[test]
    fn after_a_reconnection_unconfirmed_messages_go_first_marked_resent_then_the_held_ones() {
        let (mut out, _events) = outgoing(16);
        publish(&mut out, "a", true);
        publish(&mut out, "b", true);
        assert_eq!(summary(&written(&mut out)), ["a", "b"]);
        // Queued, not written, when the connection is lost.
        publish(&mut out, "c", true);
        publish(&mut out, "d", false);
        let (reply, mut flushed) = oneshot::channel();
        out.flush(reply);
        out.push_frame(&ClientFrame::Subscribe {
            channel: "news".into(),
        });
        out.disconnected();

        out.connected(MAX);
        out.ping_flushes_again();
        assert!(written(&mut out).is_empty(), "the flush's ping is held");
        out.release_held();
        assert_eq!(
            summary(&written(&mut out)),
            ["a again", "b again", "c again", "d", "ping 1"],
            "the Subscribe of the lost connection is dropped"
        );
        assert_eq!(out.unconfirmed_len(), 3);
        assert!(out.confirm("b").is_some());
        assert!(out.confirm("b").is_none());
        assert_eq!(out.unconfirmed_len(), 2);
        assert_eq!(flushed.try_recv(), Err(TryRecvError::Empty));
        out.pong(1);
        assert_eq!(flushed.try_recv(), Ok(()));

        // Lost again: the same frames go again, marked once.
        out.disconnected();
        out.connected(MAX);
        out.release_held();
        assert_eq!(summary(&written(&mut out)), ["a again", "c again"]);
    }

    #[test]
    fn a_flush_whose_ping_was_written_asks_again_on_the_next_connection() {
        let (mut out, _events) = outgoing(16);
        let (first, mut first_done) = oneshot::channel();
        let (second, mut second_done) = oneshot::channel();
        out.flush(first);
        out.flush(second);
        assert_eq!(summary(&written(&mut out)), ["ping 1", "ping 2"]);
        out.disconnected();
        out.connected(MAX);
        out.ping_flushes_again();
        out.release_held();
        assert_eq!(summary(&written(&mut out)), ["ping 1", "ping 2"]);
        out.pong(1);
        assert_eq!(first_done.try_recv(), Ok(()));
        assert_eq!(second_done.try_recv(), Err(TryRecvError::Empty));
        out.close();
        assert_eq!(second_done.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn a_message_too_large_for_the_broker_fails_instead_of_being_sent() {
        let (mut out, mut events) = outgoing(16);
        let target = Target::Group(vec!["x".into(), "y".into()]);
        // Written under a large limit, then lost with the connection.
        out.publish(publish_frame("big", target.clone(), 5000), true, None);
        let (confirm, mut outcome) = oneshot::channel();
        out.publish(publish_frame("small", Target::All, 1), true, Some(confirm));
        written(&mut out);
        out.disconnected();

        // The next broker takes less.
        out.connected(4096);
        out.release_held();
        assert_eq!(summary(&written(&mut out)), ["small again"]);
        assert_eq!(out.unconfirmed_len(), 1);
        for name in ["x", "y"] {
            match events.try_recv().unwrap() {
                Event::DeliveryFailed {
                    id,
                    recipient,
                    reason,
                    ..
                } => {
                    assert_eq!(id, "big");
                    assert_eq!(recipient, Recipient::Client(name.into()));
                    assert_eq!(reason, FailureReason::TooLarge);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }

        let (confirm, mut big) = oneshot::channel();
        out.publish(
            publish_frame("big2", Target::All, 5000),
            true,
            Some(confirm),
        );
        assert!(matches!(
            big.try_recv(),
            Ok(Err(SendError::TooLarge { max: 4096, .. }))
        ));
        assert!(written(&mut out).is_empty());
        assert_eq!(out.unconfirmed_len(), 1);
        assert_eq!(outcome.try_recv(), Err(TryRecvError::Empty));
        let small = out.confirm("small").unwrap();
        assert!(
            small.confirm.is_some(),
            "its caller is answered by whoever confirms it"
        );
    }

    #[test]
    fn commands_wait_while_too_much_is_unconfirmed_or_unwritten() {
        let (mut out, _events) = outgoing(2);
        publish(&mut out, "a", true);
        assert!(out.has_room());
        publish(&mut out, "b", true);
        assert!(!out.has_room(), "two messages wait for confirmation");
        out.confirm("a");
        written(&mut out);
        assert!(out.has_room());

        let frame = publish_frame("big", Target::All, 40 * 1024);
        out.publish(frame.clone(), false, None);
        assert!(out.has_room());
        out.publish(frame, false, None);
        assert!(!out.has_room(), "80 KiB wait for the socket");
        written(&mut out);
        assert!(out.has_room());
    }

    #[test]
    fn stopping_gives_up_every_message_not_confirmed() {
        let (mut out, _events) = outgoing(16);
        publish(&mut out, "a", true);
        publish(&mut out, "b", false);
        publish(&mut out, "c", true);
        out.disconnected();
        assert_eq!(out.abandon(), ["a", "c"]);
        assert_eq!(out.unconfirmed_len(), 0);
        out.connected(MAX);
        out.release_held();
        assert!(written(&mut out).is_empty(), "nothing is held any more");
    }

    #[test]
    fn the_heartbeat_pings_only_after_a_quiet_interval() {
        let (mut out, _events) = outgoing(16);
        let hour = Duration::from_secs(3600);
        out.heartbeat(Instant::now(), hour);
        assert!(!out.unflushed());
        out.heartbeat(Instant::now() + hour, hour);
        assert_eq!(summary(&written(&mut out)), ["ping 1"]);
    }
}
