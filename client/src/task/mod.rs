//! The connection task: the one owner of the socket.
//!
//! [`Client`](crate::Client) handles talk to it through the channels of [`command`](crate::command).
//! It serves one connection at a time, then gets the next from the [`Connector`] until the
//! client stops. Its state is in two halves: [`outgoing`] (what the client writes) and
//! [`incoming`] (what the broker sends, and the [`subscriptions`] it answers); this module is
//! the loop that feeds them.
//!
//! While connected the task reads and writes at once, so that neither side can block the other
//! on a full socket buffer. It stops pulling commands while the connection is down, while it
//! resubscribes after a reconnection, while more than 64 KiB wait to be written, and while
//! `max_unconfirmed` persistent messages wait for the broker's `Accepted`: that is how
//! `send().await` feels backpressure.
//!
//! Closing drains: the messages already buffered are sent, the broker's confirmations awaited
//! (up to the close timeout), then `Bye` is written.

mod incoming;
mod outgoing;
mod subscriptions;

use self::incoming::{Incoming, Read, ReadItem};
use self::outgoing::{Outgoing, frame_id};
use crate::ack::ACK_DELAY;
use crate::client::Shared;
use crate::command::{Command, Control};
use crate::connection::{Connection, Reader};
use crate::connector::Connector;
use crate::inbound;
use crate::subscription::Inbound;
use crate::{ConnectOptions, Event, SubscribeError};
use broadcast_protocol::ClientFrame;
use broadcast_protocol::codec::Encoded;
use futures::{FutureExt, SinkExt, StreamExt};
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

/// Most frames handled per wake-up of the connection task before it looks at its other work.
const READ_BATCH: usize = 256;

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

/// Raises an event.
fn emit(events: &broadcast::Sender<Event>, event: Event) {
    // No receiver is not an error: nobody is watching events.
    let _ = events.send(event);
}

/// The state of the connection task.
pub(crate) struct Task {
    options: ConnectOptions,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    /// False once every [`Client`](crate::Client) handle is gone.
    commands_open: bool,
    control: mpsc::UnboundedReceiver<Control>,
    connector: Connector,
    outgoing: Outgoing,
    incoming: Incoming,
}

impl Task {
    pub(crate) fn new(
        addr: String,
        options: ConnectOptions,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        control: mpsc::UnboundedReceiver<Control>,
        direct: mpsc::Sender<Inbound>,
    ) -> Self {
        let outgoing = Outgoing::new(shared.events.clone(), options.max_unconfirmed);
        let incoming = Incoming::new(&options, shared.clone(), direct);
        Self {
            connector: Connector::new(addr, options.clone()),
            options,
            shared,
            commands,
            commands_open: true,
            control,
            outgoing,
            incoming,
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
            self.incoming.disconnected();
            self.outgoing.disconnected();
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
        emit(&self.shared.events, event);
    }

    /// Stops for good: later sends fail, waiting callers are released, persistent messages
    /// never confirmed are reported, `Closed` is raised.
    fn finish(&mut self, reply: Option<oneshot::Sender<()>>) {
        self.commands.close();
        self.abandon_unconfirmed();
        self.incoming.close();
        self.outgoing.close();
        self.emit(Event::Closed);
        tracing::info!(addr = %self.connector.addr(), "client closed");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Raises [`Event::Unconfirmed`] for every persistent message the broker never confirmed,
    /// including those never sent; their `send_confirmed` callers fail with `Closed`.
    fn abandon_unconfirmed(&mut self) {
        let mut ids = self.outgoing.abandon();
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

    /// Waits and tries again until a connection succeeds, the attempts run out (`Err(None)`)
    /// or the client is closed (`Err(Some(reply))` or `Err(None)` when every handle is gone).
    /// Control messages are served meanwhile.
    async fn reconnect(&mut self) -> Result<Connection, Option<oneshot::Sender<()>>> {
        let name = self.shared.name();
        let Self {
            connector,
            control,
            incoming,
            shared,
            ..
        } = self;
        let mut attempts = pin!(connector.reconnect(&name, shared));
        loop {
            tokio::select! {
                conn = &mut attempts => return conn.ok_or(None),
                ctrl = control.recv() => on_control_offline(incoming, ctrl)?,
            }
        }
    }

    /// Sets up a new connection: limits, name, resubscriptions, pending flushes.
    pub(crate) fn start(&mut self, conn: &Connection) {
        let welcome = &conn.welcome;
        self.incoming.connected();
        self.outgoing.connected(conn.writer.encoder().max_encode());
        self.shared.set_welcome(welcome);
        self.emit(Event::Connected {
            name: welcome.name.clone(),
        });
        tracing::info!(name = %welcome.name, "connected");

        self.incoming.resubscribe(&mut self.outgoing);
        self.outgoing.ping_flushes_again();
        if !self.incoming.is_resubscribing() {
            self.outgoing.release_held();
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
            let accept_commands =
                self.commands_open && !self.incoming.is_resubscribing() && self.outgoing.has_room();
            self.outgoing.attach_acks();
            if let Some(due) = self.outgoing.acks_due() {
                if ack_timer.deadline() != due {
                    ack_timer.as_mut().reset(due);
                }
            }
            tokio::select! {
                ctrl = self.control.recv() => {
                    if let Some(end) = self.on_control(ctrl) {
                        return end;
                    }
                }
                () = &mut ack_timer, if self.outgoing.acks_due().is_some() => {
                    self.outgoing.push_acks();
                }
                res = poll_fn(|cx| self.outgoing.poll_write(cx, &mut conn.writer)),
                    if self.outgoing.unflushed() =>
                {
                    if let Err(e) = res {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                read = poll_fn(|cx| self.incoming.poll_read(cx, &mut conn.reader)) => {
                    // A frame came, or reading was paused for a full stream: either way, the
                    // silence so far says nothing about the broker.
                    last_recv = Instant::now();
                    match read {
                        Read::Delivered(res) => self.incoming.delivered(res),
                        Read::Item(item) => {
                            if let Some(end) = self.read_batch(item, &mut conn.reader) {
                                return end;
                            }
                        }
                    }
                }
                cmd = self.commands.recv(), if accept_commands => match cmd {
                    None => self.commands_open = false,
                    Some(cmd) => {
                        self.on_command(cmd);
                        // Batch whatever else is ready into the same write.
                        while self.outgoing.has_room() {
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
                    if !self.incoming.is_waiting() && now.duration_since(last_recv) >= interval * 3
                    {
                        return End::Lost(format!(
                            "nothing received from the broker for {:?}",
                            interval * 3
                        ));
                    }
                    self.outgoing.heartbeat(now, interval);
                }
            }
        }
    }

    /// Handles `first` and every further item already read, before going back to the other
    /// work: one wake-up, one clock read for a whole batch. `Some` when the connection ends.
    fn read_batch(&mut self, first: ReadItem, reader: &mut Reader) -> Option<End> {
        let mut item = first;
        for handled in 1..=READ_BATCH {
            if let Some(end) = self.incoming.on_read(item, &mut self.outgoing) {
                return Some(end);
            }
            // Read the next frame only when it will be handled in this batch.
            if self.incoming.is_waiting() || handled == READ_BATCH {
                break;
            }
            match reader.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        None
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish {
                frame,
                persistent,
                confirm,
            } => self.outgoing.publish(frame, persistent, confirm),
            Command::Subscribe {
                channel,
                id,
                tx,
                reply,
            } => self
                .incoming
                .subscribe(channel, id, tx, reply, &mut self.outgoing),
            Command::Flush { reply } => self.outgoing.flush(reply),
        }
    }

    /// Handles a control message while connected; `Some` when the client stops (`None`:
    /// every handle is gone).
    fn on_control(&mut self, ctrl: Option<Control>) -> Option<End> {
        match ctrl {
            Some(Control::Unsubscribe { channel, id }) => {
                if self.incoming.unsubscribe(&channel, id) {
                    self.outgoing
                        .push_frame(&ClientFrame::Unsubscribe { channel });
                }
            }
            Some(Control::Acks) => self.incoming.take_acks(&mut self.outgoing),
            Some(Control::ManualAck { tag }) => self.incoming.manual_ack(tag, &mut self.outgoing),
            Some(Control::Reauth { token, reply }) => {
                self.outgoing.push_frame(&ClientFrame::Reauth {
                    token: token.clone(),
                });
                self.incoming.reauth_sent(token, reply);
            }
            Some(Control::Close { reply }) => return Some(End::Stop(Some(reply))),
            None => return Some(End::Stop(None)),
        }
        None
    }

    /// Before saying goodbye: queues what is held and every message already buffered, then
    /// serves the connection until the broker has confirmed every persistent message or the
    /// close timeout has passed. Deliveries that arrive meanwhile are left unacknowledged, for
    /// the broker to hand over again. False when the connection was lost meanwhile.
    async fn drain(&mut self, conn: &mut Connection) -> bool {
        self.commands.close();
        self.outgoing.release_held();
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
        if self.outgoing.unconfirmed_len() == 0 {
            return true;
        }
        tracing::debug!(
            count = self.outgoing.unconfirmed_len(),
            "waiting for confirmations before closing"
        );
        let mut deadline = pin!(tokio::time::sleep(self.options.close_timeout));
        while self.outgoing.unconfirmed_len() > 0 {
            if self.outgoing.has_acks() {
                self.outgoing.push_acks();
            }
            tokio::select! {
                () = &mut deadline => {
                    tracing::debug!(
                        count = self.outgoing.unconfirmed_len(),
                        "timed out waiting for confirmations"
                    );
                    return true;
                }
                res = poll_fn(|cx| self.outgoing.poll_write(cx, &mut conn.writer)),
                    if self.outgoing.unflushed() =>
                {
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
                    Some(Ok(Ok(inbound::Incoming::Message(m)))) => {
                        tracing::debug!(id = %m.id, "closing: leaving a delivery unacknowledged");
                    }
                    Some(Ok(Ok(inbound::Incoming::Frame(frame)))) => {
                        if self.incoming.on_frame(frame, &mut self.outgoing).is_some() {
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
        self.outgoing.push_acks();
        self.outgoing.push_frame(&ClientFrame::Bye);
        let write = async {
            poll_fn(|cx| self.outgoing.poll_write(cx, &mut conn.writer)).await?;
            SinkExt::<Encoded>::close(&mut conn.writer).await
        };
        match tokio::time::timeout(self.options.connect_timeout, write).await {
            Ok(Ok(())) => tracing::debug!("said goodbye"),
            Ok(Err(e)) => tracing::debug!(error = %e, "could not say goodbye"),
            Err(_) => tracing::debug!("timed out saying goodbye"),
        }
    }
}

/// Handles a control message while no connection is up: `Err` when the client stops (with
/// the reply of [`Client::close`](crate::Client::close), if that is why).
fn on_control_offline(
    incoming: &mut Incoming,
    ctrl: Option<Control>,
) -> Result<(), Option<oneshot::Sender<()>>> {
    match ctrl {
        Some(Control::Unsubscribe { channel, id }) => {
            // The broker forgot the subscription with the connection.
            incoming.unsubscribe(&channel, id);
            Ok(())
        }
        Some(Control::Close { reply }) => Err(Some(reply)),
        Some(Control::Acks) => {
            incoming.drop_acks();
            Ok(())
        }
        Some(Control::ManualAck { .. }) => Ok(()),
        Some(Control::Reauth { reply, .. }) => {
            // Nothing to renew while disconnected: the next connection presents the
            // credential the client has.
            let _ = reply.send(Err(crate::ReauthError::Closed));
            Ok(())
        }
        None => Err(None),
    }
}
