//! The connection task: the one owner of the socket.
//!
//! [`Client`](crate::Client) handles talk to it through two channels: a bounded channel of
//! [`Command`]s (messages, subscriptions, flushes; its capacity is the send buffer) and an
//! unbounded channel of [`Control`] messages that must get through even when the send buffer is
//! full or the connection is down (unsubscribing on drop, closing).
//!
//! While connected the task reads and writes at once, so that neither side can block the other
//! on a full socket buffer. It stops pulling commands while the connection is down, while it
//! resubscribes after a reconnection, while more than [`WRITE_HIGH_WATER`] bytes wait to be
//! written, and while `max_unconfirmed` persistent messages wait for the broker's `Accepted`:
//! that is how `send().await` feels backpressure.
//!
//! Persistent messages stay in an [`UnconfirmedSet`] from the moment they are queued for
//! writing until their `Accepted` arrives; after a reconnection (and the resubscriptions) they
//! are sent again, marked `resent`, before anything else. Acknowledgements of deliveries are
//! collected in an [`AckBatch`] and written with the next write, once a quarter of the broker's
//! default window waits, or after [`ACK_DELAY`].

use crate::ack::{ACK_DELAY, AckBatch, DedupWindow, ManualTags, dedup_key};
use crate::backoff::Backoff;
use crate::client::Shared;
use crate::connection::{self, Connection, Writer, frame_kind};
use crate::inbound::Incoming;
use crate::subscription::{AckRef, Inbound, Lost, Registry, Route, deliver};
use crate::unconfirmed::{Confirm, Unconfirmed, UnconfirmedSet, publish_id, publish_parts};
use crate::{ConnectError, ConnectOptions, Event, Message, SendError, SubscribeError};
use broadcast_protocol::codec::Encoded;
use broadcast_protocol::{
    ClientFrame, CodecError, ErrorCode, ErrorFrame, FailureReason, HEADER_LEN, Recipient,
    ServerFrame, Target, encode_frame,
};
use bytes::Bytes;
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

/// Above this many queued bytes the task stops pulling commands until the socket drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Most frames handled per wake-up of the connection task before it looks at its other work.
const READ_BATCH: usize = 256;

/// A request from a [`Client`](crate::Client) handle, in send order.
#[derive(Debug)]
pub(crate) enum Command {
    /// An encoded `Publish` frame; `confirm` (persistent messages only) is answered when the
    /// broker's `Accepted` arrives.
    Publish {
        frame: Bytes,
        persistent: bool,
        confirm: Option<Confirm>,
    },
    /// Register a subscription and subscribe at the broker; answered once `Subscribed` arrives.
    Subscribe {
        channel: String,
        id: u64,
        tx: mpsc::Sender<Inbound>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    /// Ping; answered once the matching `Pong` arrives.
    Flush { reply: oneshot::Sender<()> },
}

/// A request that does not wait for the send buffer or the connection.
#[derive(Debug)]
pub(crate) enum Control {
    /// A [`Subscription`](crate::Subscription) was dropped.
    Unsubscribe { channel: String, id: u64 },
    /// [`Client::close`](crate::Client::close).
    Close { reply: oneshot::Sender<()> },
    /// The application took deliveries from a stream (automatic acknowledgement): their
    /// [`AckRef`]s wait in the shared [`AckQueue`](crate::subscription::AckQueue). Sent when the queue stops being empty, so
    /// one wake-up of the task carries every acknowledgement queued until it looks.
    Acks,
    /// [`Client::ack`](crate::Client::ack) (manual acknowledgement).
    ManualAck { tag: u64 },
}

/// Why the task stopped serving a connection.
#[derive(Debug)]
enum End {
    /// Lost: reconnect.
    Lost(String),
    /// Another connection took the name: stop for good, without reconnecting.
    Replaced(String),
    /// Closed by the user (with the reply to send once done) or every handle dropped.
    Stop(Option<oneshot::Sender<()>>),
}

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

#[derive(Debug)]
struct Outgoing {
    bytes: Bytes,
    kind: Kind,
}

/// Frames waiting to be written, and whether the writer needs a flush.
#[derive(Debug, Default)]
struct OutQueue {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    unflushed: bool,
}

impl OutQueue {
    fn push(&mut self, out: Outgoing) {
        self.bytes += out.bytes.len();
        self.frames.push_back(out);
        self.unflushed = true;
    }

    /// Feeds every queued frame to the writer, then flushes it once.
    ///
    /// Cancel-safe: a frame leaves the queue only when the writer has taken it.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut Writer,
    ) -> Poll<Result<(), CodecError>> {
        while !self.frames.is_empty() {
            ready!(Sink::<Encoded>::poll_ready(Pin::new(&mut *writer), cx))?;
            let Some(out) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= out.bytes.len();
            Pin::new(&mut *writer).start_send(Encoded(out.bytes))?;
        }
        ready!(Sink::<Encoded>::poll_flush(Pin::new(&mut *writer), cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }
}

type PendingDelivery = Pin<Box<dyn Future<Output = Result<(), (Lost, Inbound)>> + Send>>;

/// The state of the connection task.
pub(crate) struct Driver {
    addr: String,
    options: ConnectOptions,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// False once every [`Client`](crate::Client) handle is gone.
    commands_open: bool,
    control: mpsc::UnboundedReceiver<Control>,
    direct: mpsc::Sender<Inbound>,
    registry: Registry,
    /// Callers of `subscribe` waiting for the broker's answer, by channel.
    waiters: HashMap<String, Vec<oneshot::Sender<Result<(), SubscribeError>>>>,
    /// Channels of the `Subscribe` frames sent on this connection and not answered yet, in
    /// send order: the broker answers them in that order.
    outstanding: VecDeque<String>,
    /// True after a reconnection until every subscription is active again; commands wait.
    resubscribing: bool,
    /// Messages (and flush pings) queued but not written when the connection was lost.
    held: VecDeque<Outgoing>,
    /// Flushes waiting for their `Pong`, by nonce, in send order.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    next_nonce: u64,
    out: OutQueue,
    /// Largest frame body the current broker accepts.
    max_encode: usize,
    last_sent: Instant,
    /// A delivery waiting for room in a full stream; no frame is read meanwhile.
    pending: Option<PendingDelivery>,
    /// The duplicate-window key of the pending delivery, to remember once handed over.
    pending_key: Option<Vec<u8>>,
    backoff: Backoff,
    /// Persistent messages queued for writing and not yet confirmed by `Accepted`.
    unconfirmed: UnconfirmedSet,
    /// True after a lost connection until the unconfirmed messages are sent again.
    resend_due: bool,
    /// Tags to acknowledge on the current connection.
    acks: AckBatch,
    /// In manual mode, the tags handed to the application on the current connection.
    manual_tags: ManualTags,
    /// The messages handed to the application lately, to drop redelivered duplicates.
    dedup: DedupWindow,
    /// The duplicate-window key of the delivery being handled (a buffer kept for reuse).
    dedup_key: Vec<u8>,
    /// The acknowledgements taken from the shared queue (a buffer kept for reuse).
    ack_refs: Vec<AckRef>,
    /// Number of the current connection: a tag is acknowledged only on its own connection.
    epoch: u64,
}

impl Driver {
    pub(crate) fn new(
        addr: String,
        options: ConnectOptions,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        control: mpsc::UnboundedReceiver<Control>,
        direct: mpsc::Sender<Inbound>,
    ) -> Self {
        let backoff = Backoff::new(options.reconnect_initial, options.reconnect_max);
        let dedup = DedupWindow::new(options.dedup_window);
        Self {
            addr,
            options,
            shared,
            commands,
            commands_open: true,
            control,
            direct,
            registry: Registry::default(),
            waiters: HashMap::new(),
            outstanding: VecDeque::new(),
            resubscribing: false,
            held: VecDeque::new(),
            flushes: VecDeque::new(),
            next_nonce: 0,
            out: OutQueue::default(),
            max_encode: 0,
            last_sent: Instant::now(),
            pending: None,
            pending_key: None,
            backoff,
            unconfirmed: UnconfirmedSet::default(),
            resend_due: false,
            acks: AckBatch::default(),
            manual_tags: ManualTags::default(),
            dedup,
            dedup_key: Vec::new(),
            ack_refs: Vec::new(),
            epoch: 0,
        }
    }

    /// Serves `conn`, which [`start`](Self::start) has set up, then each reconnection, until
    /// the client stops.
    pub(crate) async fn run(mut self, mut conn: Connection) {
        loop {
            let span = conn.span.clone();
            let end = self.serve(&mut conn).instrument(span.clone()).await;
            let reason = match end {
                End::Stop(reply) => {
                    async {
                        let alive = self.drain(&mut conn).await;
                        self.goodbye(&mut conn, alive).await;
                    }
                    .instrument(span)
                    .await;
                    self.finish(reply);
                    return;
                }
                End::Replaced(reason) => {
                    span.in_scope(
                        || tracing::warn!(%reason, "connection replaced; not reconnecting"),
                    );
                    self.emit(Event::Disconnected { reason });
                    self.finish(None);
                    return;
                }
                End::Lost(reason) => reason,
            };
            span.in_scope(|| tracing::info!(%reason, "connection lost"));
            self.emit(Event::Disconnected { reason });
            drop(conn);
            self.on_disconnect();
            conn = match self.reconnect().await {
                Ok(conn) => {
                    conn.span.in_scope(|| self.start(&conn));
                    conn
                }
                Err(reply) => {
                    self.finish(reply);
                    return;
                }
            };
        }
    }

    fn emit(&self, event: Event) {
        // No receiver is not an error: nobody is watching events.
        let _ = self.shared.events.send(event);
    }

    /// Stops for good: later sends fail, waiting callers are released, persistent messages
    /// never confirmed are reported, `Closed` is raised.
    fn finish(&mut self, reply: Option<oneshot::Sender<()>>) {
        self.commands.close();
        self.abandon_unconfirmed();
        self.waiters.clear();
        self.flushes.clear();
        self.emit(Event::Closed);
        tracing::info!(addr = %self.addr, "client closed");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Raises [`Event::Unconfirmed`] for every persistent message the broker never confirmed,
    /// including those never sent; their `send_confirmed` callers fail with `Closed`.
    fn abandon_unconfirmed(&mut self) {
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
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Publish {
                    frame,
                    persistent: true,
                    ..
                } => ids.push(frame_id(&frame)),
                Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(SubscribeError::Closed));
                }
                Command::Publish { .. } | Command::Flush { .. } => {}
            }
        }
        if !ids.is_empty() {
            tracing::warn!(
                count = ids.len(),
                "stopping with persistent messages the broker never confirmed"
            );
        }
        for id in ids {
            self.emit(Event::Unconfirmed { id });
        }
    }

    /// Keeps what must survive the lost connection: unwritten messages and flush pings (the
    /// unconfirmed messages are kept apart), and forgets what was only valid on it.
    fn on_disconnect(&mut self) {
        self.outstanding.clear();
        self.resubscribing = false;
        self.acks.clear();
        self.manual_tags.clear();
        self.resend_due = !self.unconfirmed.is_empty();
        let frames = std::mem::take(&mut self.out).frames;
        let mut kept: VecDeque<Outgoing> = frames
            .into_iter()
            .filter(|out| matches!(out.kind, Kind::Publish { .. } | Kind::Flush(_)))
            .collect();
        kept.append(&mut self.held);
        self.held = kept;
    }

    /// Waits and tries again until a connection succeeds, the attempts run out (`Err(None)`)
    /// or the client is closed (`Err(Some(reply))` or `Err(None)` when every handle is gone).
    async fn reconnect(&mut self) -> Result<Connection, Option<oneshot::Sender<()>>> {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            if let Some(max) = self.options.max_reconnect_attempts {
                if attempt > max {
                    tracing::warn!(addr = %self.addr, attempts = max, "giving up reconnecting");
                    return Err(None);
                }
            }
            let delay = self.backoff.delay(attempt);
            self.emit(Event::Reconnecting { attempt, delay });
            let mut sleep = pin!(tokio::time::sleep(delay));
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    ctrl = self.control.recv() => self.on_control_offline(ctrl)?,
                }
            }
            let (addr, options, name) =
                (self.addr.clone(), self.options.clone(), self.shared.name());
            let mut establish =
                pin!(async move { connection::establish(&addr, &options, Some(&name)).await });
            loop {
                tokio::select! {
                    res = &mut establish => match res {
                        Ok(conn) => return Ok(conn),
                        Err(e) => {
                            tracing::warn!(addr = %self.addr, attempt, error = %e, "reconnect failed");
                            break;
                        }
                    },
                    ctrl = self.control.recv() => self.on_control_offline(ctrl)?,
                }
            }
        }
    }

    fn on_control_offline(
        &mut self,
        ctrl: Option<Control>,
    ) -> Result<(), Option<oneshot::Sender<()>>> {
        match ctrl {
            Some(Control::Unsubscribe { channel, id }) => {
                self.registry.remove(&channel, id);
                Ok(())
            }
            Some(Control::Close { reply }) => Err(Some(reply)),
            // Tags of a lost connection mean nothing to the next one.
            Some(Control::Acks) => {
                self.shared.acks.take_into(&mut self.ack_refs);
                self.ack_refs.clear();
                Ok(())
            }
            Some(Control::ManualAck { .. }) => Ok(()),
            None => Err(None),
        }
    }

    /// Sets up a new connection: limits, name, resubscriptions, pending flushes.
    pub(crate) fn start(&mut self, conn: &Connection) {
        let welcome = &conn.welcome;
        self.epoch += 1;
        self.last_sent = Instant::now();
        self.max_encode = conn.writer.encoder().max_encode();
        self.shared.set_welcome(welcome);
        self.emit(Event::Connected {
            name: welcome.name.clone(),
        });
        tracing::info!(name = %welcome.name, "connected");

        self.registry.prune();
        let channels: Vec<String> = self.registry.channels().cloned().collect();
        for channel in channels {
            self.push_frame(&ClientFrame::Subscribe {
                channel: channel.clone(),
            });
            self.outstanding.push_back(channel);
        }
        self.resubscribing = !self.outstanding.is_empty();
        // Flushes whose ping went out on the lost connection ask again; the others are held,
        // behind the messages sent before them.
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
        if !self.resubscribing {
            self.release_held();
        }
    }

    async fn serve(&mut self, conn: &mut Connection) -> End {
        let interval = self.options.heartbeat;
        let mut heartbeat = (!interval.is_zero()).then(|| {
            // Check four times per interval: a ping goes out at most 1.25 intervals after the
            // last frame, well before the broker's limit of three.
            let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        let mut last_recv = Instant::now();
        let mut ack_timer = pin!(tokio::time::sleep(ACK_DELAY));
        loop {
            let accept_commands = self.commands_open
                && !self.resubscribing
                && self.out.bytes < WRITE_HIGH_WATER
                && self.unconfirmed.len() < self.options.max_unconfirmed;
            if !self.acks.is_empty() && self.out.unflushed {
                // Something is about to be written: the acknowledgements go with it.
                self.push_acks();
            }
            if let Some(due) = self.acks.due() {
                if ack_timer.deadline() != due {
                    ack_timer.as_mut().reset(due);
                }
            }
            tokio::select! {
                ctrl = self.control.recv() => match ctrl {
                    Some(Control::Unsubscribe { channel, id }) => {
                        if self.registry.remove(&channel, id) {
                            self.push_frame(&ClientFrame::Unsubscribe { channel });
                        }
                    }
                    Some(Control::Acks) => self.take_acks(),
                    Some(Control::ManualAck { tag }) => {
                        if self.manual_tags.acknowledge(tag) {
                            self.queue_ack(tag);
                        }
                    }
                    Some(Control::Close { reply }) => return End::Stop(Some(reply)),
                    None => return End::Stop(None),
                },
                () = &mut ack_timer, if self.acks.due().is_some() => self.push_acks(),
                res = poll_fn(|cx| self.out.poll_write(cx, &mut conn.writer)), if self.out.unflushed => {
                    if let Err(e) = res {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                res = poll_fn(|cx| match self.pending.as_mut() {
                    Some(fut) => fut.as_mut().poll(cx),
                    None => Poll::Pending,
                }), if self.pending.is_some() => {
                    self.pending = None;
                    let key = self.pending_key.take();
                    let keyed = key.is_some();
                    if let Some(key) = key {
                        self.dedup_key = key;
                    }
                    // Reading was paused: silence meanwhile says nothing about the broker.
                    last_recv = Instant::now();
                    self.on_delivered(res, keyed);
                }
                frame = conn.reader.next(), if self.pending.is_none() => {
                    last_recv = Instant::now();
                    let mut frame = frame;
                    // Handle every frame already read before going back to the other
                    // branches: one wake-up, one clock read for a whole batch.
                    for handled in 1..=READ_BATCH {
                        match frame {
                            None => return End::Lost("the broker closed the connection".into()),
                            Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                            Some(Ok(Err(e))) => {
                                tracing::warn!(error = %e, "skipping a malformed frame");
                            }
                            Some(Ok(Ok(Incoming::Message(msg)))) => {
                                tracing::trace!(frame = "Deliver", "received");
                                self.on_delivery(msg);
                            }
                            Some(Ok(Ok(Incoming::Frame(f)))) => {
                                if let Some(end) = self.on_frame(f) {
                                    return end;
                                }
                            }
                        }
                        // Read the next frame only when it will be handled in this batch.
                        if self.pending.is_some() || handled == READ_BATCH {
                            break;
                        }
                        match conn.reader.next().now_or_never() {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
                cmd = self.commands.recv(), if accept_commands => match cmd {
                    None => self.commands_open = false,
                    Some(cmd) => {
                        self.on_command(cmd);
                        // Batch whatever else is ready into the same write.
                        while self.out.bytes < WRITE_HIGH_WATER
                            && self.unconfirmed.len() < self.options.max_unconfirmed
                        {
                            match self.commands.try_recv() {
                                Ok(cmd) => self.on_command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                },
                _ = poll_fn(|cx| match heartbeat.as_mut() {
                    Some(tick) => tick.poll_tick(cx),
                    None => Poll::Pending,
                }) => {
                    let now = Instant::now();
                    if self.pending.is_none() && now.duration_since(last_recv) >= interval * 3 {
                        return End::Lost(format!(
                            "nothing received from the broker for {:?}",
                            interval * 3
                        ));
                    }
                    if now.duration_since(self.last_sent) >= interval {
                        let nonce = self.nonce();
                        self.push_frame(&ClientFrame::Ping { nonce });
                    }
                }
            }
        }
    }

    /// Before saying goodbye: queues what is held and every message already buffered, then
    /// serves the connection until the broker has confirmed every persistent message or the
    /// close timeout has passed. Deliveries that arrive meanwhile are left unacknowledged, for
    /// the broker to hand over again. False when the connection was lost meanwhile.
    async fn drain(&mut self, conn: &mut Connection) -> bool {
        self.commands.close();
        self.release_held();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                cmd @ Command::Publish { .. } => self.on_command(cmd),
                Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(SubscribeError::Closed));
                }
                // Dropping the reply fails the flush with `SendError::Closed`.
                Command::Flush { .. } => {}
            }
        }
        if self.unconfirmed.is_empty() {
            return true;
        }
        tracing::debug!(
            count = self.unconfirmed.len(),
            "waiting for confirmations before closing"
        );
        let mut deadline = pin!(tokio::time::sleep(self.options.close_timeout));
        while !self.unconfirmed.is_empty() {
            if !self.acks.is_empty() {
                self.push_acks();
            }
            tokio::select! {
                () = &mut deadline => {
                    tracing::debug!(count = self.unconfirmed.len(), "timed out waiting for confirmations");
                    return true;
                }
                res = poll_fn(|cx| self.out.poll_write(cx, &mut conn.writer)), if self.out.unflushed => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "write failed while closing");
                        return false;
                    }
                }
                frame = conn.reader.next() => match frame {
                    None => return false,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed while closing");
                        return false;
                    }
                    Some(Ok(Err(e))) => tracing::warn!(error = %e, "skipping a malformed frame"),
                    Some(Ok(Ok(Incoming::Message(m)))) => {
                        tracing::debug!(id = %m.id, "closing: leaving a delivery unacknowledged");
                    }
                    Some(Ok(Ok(Incoming::Frame(frame)))) => {
                        if self.on_frame(frame).is_some() {
                            return false;
                        }
                    }
                },
            }
        }
        true
    }

    /// Writes what is queued (when the connection is `alive`), then `Bye`, and closes.
    async fn goodbye(&mut self, conn: &mut Connection, alive: bool) {
        if !alive {
            return;
        }
        self.push_acks();
        self.push_frame(&ClientFrame::Bye);
        let write = async {
            poll_fn(|cx| self.out.poll_write(cx, &mut conn.writer)).await?;
            SinkExt::<Encoded>::close(&mut conn.writer).await
        };
        match tokio::time::timeout(self.options.connect_timeout, write).await {
            Ok(Ok(())) => tracing::debug!("said goodbye"),
            Ok(Err(e)) => tracing::debug!(error = %e, "could not say goodbye"),
            Err(_) => tracing::debug!("timed out saying goodbye"),
        }
    }

    fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    fn push(&mut self, out: Outgoing) {
        // One clock read per write batch: the frames queued together go out together.
        if !self.out.unflushed {
            self.last_sent = Instant::now();
        }
        self.out.push(out);
    }

    fn push_frame(&mut self, frame: &ClientFrame) {
        match encode_frame(frame, self.max_encode) {
            Ok(bytes) => self.push(Outgoing {
                bytes,
                kind: Kind::Control,
            }),
            Err(e) => tracing::warn!(error = %e, "cannot encode a control frame"),
        }
    }

    /// Queues every acknowledgement waiting, in as few frames as possible.
    fn push_acks(&mut self) {
        for frame in self.acks.take_frames() {
            self.push_frame(&frame);
        }
    }

    /// Adds a tag to the acknowledgement batch; a full batch is queued at once.
    fn queue_ack(&mut self, tag: u64) {
        if self.acks.add_with(tag, Instant::now) {
            self.push_acks();
        }
    }

    /// Queues the acknowledgements of the deliveries the application took from its streams,
    /// those of the current connection only.
    fn take_acks(&mut self) {
        let mut refs = std::mem::take(&mut self.ack_refs);
        self.shared.acks.take_into(&mut refs);
        for ack in refs.drain(..) {
            if ack.epoch == self.epoch {
                self.queue_ack(ack.tag);
            }
        }
        self.ack_refs = refs;
    }

    /// Queues a message frame, unless the broker connected now takes smaller frames than the
    /// one the message was encoded for. A persistent message joins the unconfirmed ones.
    fn push_publish(&mut self, out: Outgoing) {
        let Outgoing { bytes, kind } = out;
        let Kind::Publish {
            persistent,
            confirm,
        } = kind
        else {
            return self.push(Outgoing { bytes, kind });
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
            return self.push(Outgoing {
                bytes,
                kind: Kind::Unconfirmed,
            });
        }
        self.push(Outgoing {
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
            self.emit(Event::DeliveryFailed {
                id: id.clone(),
                recipient,
                reason: FailureReason::TooLarge,
                detail: detail.clone(),
            });
        }
        if let Some(confirm) = confirm {
            let _ = confirm.send(Err(SendError::TooLarge {
                size: len,
                max: self.max_encode,
            }));
        }
    }

    /// Moves the messages kept from a lost connection into the write queue: first the
    /// unconfirmed ones again, marked as resent, then those never written.
    fn release_held(&mut self) {
        if std::mem::take(&mut self.resend_due) {
            self.resend_unconfirmed();
        }
        while let Some(out) = self.held.pop_front() {
            self.push_publish(out);
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
            self.push(Outgoing {
                bytes,
                kind: Kind::Unconfirmed,
            });
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish {
                frame,
                persistent,
                confirm,
            } => self.push_publish(Outgoing {
                bytes: frame,
                kind: Kind::Publish {
                    persistent,
                    confirm,
                },
            }),
            Command::Subscribe {
                channel,
                id,
                tx,
                reply,
            } => {
                if tx.is_closed() {
                    // The caller gave up and dropped its subscription already.
                    return;
                }
                self.registry.add(channel.clone(), id, tx);
                self.waiters.entry(channel.clone()).or_default().push(reply);
                self.push_frame(&ClientFrame::Subscribe {
                    channel: channel.clone(),
                });
                self.outstanding.push_back(channel);
            }
            Command::Flush { reply } => {
                let nonce = self.nonce();
                self.flushes.push_back((nonce, reply));
                match encode_frame(&ClientFrame::Ping { nonce }, self.max_encode) {
                    Ok(bytes) => self.push(Outgoing {
                        bytes,
                        kind: Kind::Flush(nonce),
                    }),
                    Err(e) => tracing::warn!(error = %e, "cannot encode a ping"),
                }
            }
        }
    }

    fn on_frame(&mut self, frame: ServerFrame) -> Option<End> {
        tracing::trace!(frame = frame_kind(&frame), "received");
        match frame {
            ServerFrame::Deliver(delivery) => self.on_delivery(delivery.into()),
            ServerFrame::DeliveryFailed(f) => {
                self.emit(Event::DeliveryFailed {
                    id: f.id,
                    recipient: f.recipient,
                    reason: f.reason,
                    detail: f.detail,
                });
                if let Some(tag) = f.ack_tag {
                    self.queue_ack(tag);
                }
            }
            ServerFrame::Accepted { id } => {
                let confirmed = self.unconfirmed.confirm(&id);
                self.emit(Event::Accepted { id });
                if let Some(confirm) = confirmed.and_then(|msg| msg.confirm) {
                    let _ = confirm.send(Ok(()));
                }
            }
            ServerFrame::Subscribed { channel } => self.on_subscribed(&channel),
            ServerFrame::Unsubscribed { channel } => tracing::debug!(%channel, "unsubscribed"),
            ServerFrame::Error(e) => return self.on_error(e),
            ServerFrame::Ping { nonce } => self.push_frame(&ClientFrame::Pong { nonce }),
            ServerFrame::Pong { nonce } => {
                while self.flushes.front().is_some_and(|(n, _)| *n <= nonce) {
                    if let Some((_, reply)) = self.flushes.pop_front() {
                        let _ = reply.send(());
                    }
                }
            }
            ServerFrame::Bye { reason } => {
                return Some(End::Lost(format!("the broker said goodbye: {reason}")));
            }
            ServerFrame::Welcome(_) => tracing::warn!("ignoring a second Welcome"),
        }
        None
    }

    fn on_error(&mut self, e: ErrorFrame) -> Option<End> {
        let ErrorFrame { code, message, id } = e;
        self.emit(Event::ServerError {
            code,
            message: message.clone(),
            id: id.clone(),
        });
        if code == ErrorCode::Replaced {
            return Some(End::Replaced(format!(
                "another connection took the name: {message}"
            )));
        }
        // The broker answers frames in order and refuses a subscription with an error that
        // names no message: such an error answers the oldest unanswered `Subscribe`.
        let refuses_subscription = matches!(
            code,
            ErrorCode::InvalidName | ErrorCode::LimitReached | ErrorCode::Internal
        ) && self
            .outstanding
            .front()
            .is_some_and(|channel| id.as_deref().is_none_or(|id| id == channel.as_str()));
        if refuses_subscription {
            self.refuse_oldest_subscription(message);
        } else {
            tracing::debug!(?code, %message, ?id, "error from the broker");
        }
        None
    }

    fn on_subscribed(&mut self, channel: &str) {
        if let Some(pos) = self.outstanding.iter().position(|c| c == channel) {
            self.outstanding.remove(pos);
        }
        if !self.outstanding.iter().any(|c| c == channel) {
            for reply in self.waiters.remove(channel).unwrap_or_default() {
                let _ = reply.send(Ok(()));
            }
        }
        tracing::debug!(%channel, "subscribed");
        self.maybe_resume();
    }

    fn refuse_oldest_subscription(&mut self, message: String) {
        let Some(channel) = self.outstanding.pop_front() else {
            return;
        };
        tracing::warn!(%channel, %message, "subscription refused");
        for reply in self.waiters.remove(&channel).unwrap_or_default() {
            let _ = reply.send(Err(SubscribeError::Refused {
                message: message.clone(),
            }));
        }
        // The broker will not send anything through this channel: end its streams.
        self.registry.remove_channel(&channel);
        self.maybe_resume();
    }

    /// Once every resubscription is answered, lets messages flow again.
    fn maybe_resume(&mut self) {
        if self.resubscribing && self.outstanding.is_empty() {
            self.resubscribing = false;
            tracing::debug!("resubscribed");
            self.release_held();
        }
    }

    fn on_delivery(&mut self, msg: Message) {
        // Only messages that may come again are worth remembering (or looking up).
        let remember = msg.persistent || msg.ack_tag.is_some();
        let keyed = self.dedup.is_enabled() && (remember || msg.redelivered);
        if keyed {
            dedup_key(&mut self.dedup_key, &msg.sender, &msg.id);
        }
        if keyed && msg.redelivered && self.dedup.contains_key(&self.dedup_key) {
            tracing::debug!(id = %msg.id, sender = %msg.sender, "dropping a redelivered duplicate");
            if let Some(tag) = msg.ack_tag {
                self.queue_ack(tag);
            }
            return;
        }
        let key = keyed && remember;
        let ack = match msg.ack_tag {
            Some(tag) if self.options.manual_ack => {
                self.manual_tags.handed(tag);
                None
            }
            Some(tag) => Some(AckRef {
                epoch: self.epoch,
                tag,
            }),
            None => None,
        };
        let taken = self.shared.direct_taken.load(Ordering::Acquire);
        let inbound = Inbound { msg, ack };
        // The usual case, one stream with room, is handled without boxing a future.
        let route = self.registry.route(inbound.msg.channel.as_deref());
        let inbound = match route {
            Route::One(tx) => match tx.try_send(inbound) {
                Ok(()) => return self.on_delivered(Ok(()), key),
                Err(e) => e.into_inner(),
            },
            Route::Direct if taken => match self.direct.try_send(inbound) {
                Ok(()) => return self.on_delivered(Ok(()), key),
                Err(e) => e.into_inner(),
            },
            Route::Direct | Route::Many => inbound,
        };
        let targets = self.registry.targets(inbound.msg.channel.as_deref());
        let mut fut: PendingDelivery =
            Box::pin(deliver(targets, self.direct.clone(), taken, inbound));
        match (&mut fut).now_or_never() {
            Some(res) => self.on_delivered(res, key),
            None => {
                self.pending = Some(fut);
                self.pending_key = key.then(|| std::mem::take(&mut self.dedup_key));
            }
        }
    }

    /// Remembers a message handed to the application (when `key`, the one in `dedup_key`), or
    /// reports one no stream could take.
    fn on_delivered(&mut self, res: Result<(), (Lost, Inbound)>, key: bool) {
        let (lost, msg) = match res {
            Ok(()) => {
                if key {
                    self.dedup.insert_key(&self.dedup_key);
                }
                return;
            }
            Err((lost, inbound)) => (lost, inbound.msg),
        };
        let through = msg
            .channel
            .as_deref()
            .map(|c| format!(" through channel {c:?}"))
            .unwrap_or_default();
        let (reason, detail) = match lost {
            Lost::DirectGone => (
                FailureReason::NotSubscribed,
                format!(
                    "message from {:?}{through} dropped by the client: no live subscription \
                     or direct message stream takes it",
                    msg.sender
                ),
            ),
            Lost::DirectFull => (
                FailureReason::SlowConsumer,
                format!(
                    "message from {:?}{through} dropped by the client: the direct message \
                     stream was never taken and its buffer is full",
                    msg.sender
                ),
            ),
        };
        tracing::warn!(id = %msg.id, "{detail}");
        self.emit(Event::DeliveryFailed {
            id: msg.id,
            recipient: Recipient::Client(self.shared.name()),
            reason,
            detail,
        });
    }
}

/// The id of the message in an encoded `Publish` frame, as an owned string.
fn frame_id(frame: &[u8]) -> String {
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

/// Makes the first connection: retries i/o failures and timeouts with backoff, honouring the
/// attempt limit; a refusal or protocol error is returned at once, as retrying cannot help.
pub(crate) async fn connect_first(
    addr: &str,
    options: &ConnectOptions,
) -> Result<Connection, ConnectError> {
    let mut backoff = Backoff::new(options.reconnect_initial, options.reconnect_max);
    let max = options.max_reconnect_attempts.map(|n| n.max(1));
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match connection::establish(addr, options, options.name.as_deref()).await {
            Ok(conn) => return Ok(conn),
            Err(e @ (ConnectError::Io(_) | ConnectError::Timeout)) => {
                if max.is_some_and(|max| attempt >= max) {
                    tracing::warn!(%addr, attempt, error = %e, "connection attempt failed; giving up");
                    return Err(if attempt == 1 {
                        e
                    } else {
                        ConnectError::AttemptsExhausted { attempts: attempt }
                    });
                }
                let delay = backoff.delay(attempt);
                tracing::warn!(%addr, attempt, error = %e, ?delay, "connection attempt failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
