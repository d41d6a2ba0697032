//! [`Client`]: the cheap, cloneable handle to a connection.

use crate::command::{Command, Control};
use crate::connector::connect_first;
use crate::subscription::{AckQueue, Acker, Inbound};
use crate::task::Task;
use crate::unconfirmed::Confirm;
use crate::{
    ConnectError, ConnectOptions, DirectMessages, Event, Events, Message, OutgoingMessage,
    ReauthError, SendError, SubscribeError, Subscription,
};
use broadcast_protocol::{
    CodecError, MAX_FRAME_CAP, Welcome, encode_publish, validate_channel, validate_client_name,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{broadcast, mpsc, oneshot};

/// State shared by the handles and the connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Name the broker registered the client under; reused on every reconnection.
    name: Mutex<String>,
    /// The broker's payload limit, from the latest `Welcome`.
    max_payload: AtomicU32,
    /// The broker's frame limit, from the latest `Welcome`.
    max_frame: AtomicU32,
    pub(crate) events: broadcast::Sender<Event>,
    /// The direct stream until [`Client::direct_messages`] takes it.
    direct: Mutex<Option<mpsc::Receiver<Inbound>>>,
    /// Whether someone took the direct stream (and so will read it).
    pub(crate) direct_taken: AtomicBool,
    next_subscription: AtomicU64,
    /// Acknowledgements of deliveries taken from the streams, for the connection task.
    pub(crate) acks: Arc<AckQueue>,
    /// The credential presented on each (re)connection: the configured token, then the latest
    /// one the broker accepted in a `Reauth`.
    token: Mutex<Option<String>>,
    /// The identity the broker reported, from the latest `Welcome`.
    identity: Mutex<Option<String>>,
    /// When the credential expires (ms since the Unix epoch), from `Welcome` and `Reauthed`.
    pub(crate) expires_ms: tokio::sync::watch::Sender<Option<u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is always consistent: a panic cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The state of a client before its first connection, with room for `event_buffer` events
    /// per receiver and `direct`, the direct stream until the application takes it.
    pub(crate) fn new(
        event_buffer: usize,
        direct: mpsc::Receiver<Inbound>,
        token: Option<String>,
    ) -> Self {
        let (events, _) = broadcast::channel(event_buffer);
        Self {
            name: Mutex::new(String::new()),
            max_payload: AtomicU32::new(0),
            max_frame: AtomicU32::new(0),
            events,
            direct: Mutex::new(Some(direct)),
            direct_taken: AtomicBool::new(false),
            next_subscription: AtomicU64::new(0),
            acks: Arc::default(),
            token: Mutex::new(token),
            identity: Mutex::new(None),
            expires_ms: tokio::sync::watch::Sender::new(None),
        }
    }

    pub(crate) fn token(&self) -> Option<String> {
        lock(&self.token).clone()
    }

    /// A fresh token from the token source, for the next connection.
    pub(crate) fn set_token(&self, token: String) {
        *lock(&self.token) = Some(token);
    }

    /// Whether the credential's expiry has passed.
    pub(crate) fn credential_expired(&self) -> bool {
        self.expires_ms
            .borrow()
            .is_some_and(|at| at <= crate::refresh::now_ms())
    }

    /// A `Reauth` was accepted: its token is the one to reconnect with.
    pub(crate) fn reauthed(&self, token: String, expires_ms: Option<u64>) {
        *lock(&self.token) = Some(token);
        self.expires_ms.send_replace(expires_ms);
    }

    pub(crate) fn name(&self) -> String {
        lock(&self.name).clone()
    }

    pub(crate) fn set_welcome(&self, welcome: &Welcome) {
        welcome.name.clone_into(&mut lock(&self.name));
        self.max_payload
            .store(welcome.max_payload, Ordering::Relaxed);
        self.max_frame
            .store(welcome.max_frame.min(MAX_FRAME_CAP), Ordering::Relaxed);
        lock(&self.identity).clone_from(&welcome.identity);
        self.expires_ms.send_replace(welcome.expires_ms);
    }
}

/// A connection to a Broadcast broker that reconnects, resubscribes and buffers by itself.
///
/// `Client` is a cheap handle: clones share one background task that owns the socket. The
/// task runs until [`close`](Self::close) is called, the broker hands the name to another
/// connection, the reconnect attempts run out, or every `Client`, [`Subscription`] and
/// [`DirectMessages`] is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    commands: mpsc::Sender<Command>,
    control: mpsc::UnboundedSender<Control>,
    pub(crate) shared: Arc<Shared>,
    receive_buffer: usize,
    manual_ack: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the broker at `addr` (`host:port`) and starts the background task.
    ///
    /// The first connection must succeed: i/o failures and timeouts are retried with the
    /// reconnect backoff up to [`ConnectOptions::max_reconnect_attempts`] attempts (forever by
    /// default), each limited by [`ConnectOptions::connect_timeout`]. Connections lost later are
    /// restored in the background. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// - [`ConnectError::InvalidName`] when the configured name is not a valid client name;
    /// - [`ConnectError::Refused`] when the broker answers the handshake with an error;
    /// - [`ConnectError::Protocol`] when the peer does not speak this protocol;
    /// - [`ConnectError::Io`] or [`ConnectError::Timeout`] when the only allowed attempt fails,
    ///   [`ConnectError::AttemptsExhausted`] when several were allowed and all failed.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), broadcast_client::ConnectError> {
    /// use broadcast_client::{Client, ConnectOptions};
    /// let client = Client::connect("127.0.0.1:7400", ConnectOptions::new().name("alice")).await?;
    /// println!("connected as {}", client.name());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(
        addr: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client, ConnectError> {
        if let Some(name) = &options.name {
            validate_client_name(name)?;
        }
        let addr = addr.into();
        let conn = connect_first(&addr, &options).await?;

        let (commands, commands_rx) = mpsc::channel(options.send_buffer);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (direct_tx, direct_rx) = mpsc::channel(options.receive_buffer);
        let shared = Arc::new(Shared::new(
            options.event_buffer,
            direct_rx,
            options.token.clone(),
        ));
        let refresh = options.token_refresh.clone();
        let receive_buffer = options.receive_buffer;
        let manual_ack = options.manual_ack;
        let mut task = Task::new(
            addr,
            options,
            shared.clone(),
            commands_rx,
            control_rx,
            direct_tx,
        );
        // Set up here rather than in the task, so that the name and limits are known when this
        // returns (and the first `Connected` event, raised before anyone can watch, is never
        // seen: events report changes after `connect`).
        conn.span.in_scope(|| task.start(&conn));
        tokio::spawn(task.run(conn));
        let client = Client {
            inner: Arc::new(Inner {
                commands,
                control,
                shared,
                receive_buffer,
                manual_ack,
            }),
        };
        if let Some(refresh) = refresh {
            tokio::spawn(crate::refresh::run(Arc::downgrade(&client.inner), refresh));
        }
        Ok(client)
    }

    /// A handle on the client `inner` belongs to.
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Client {
        Client { inner }
    }

    /// The identity the broker's credentials proved, when the broker requires credentials.
    pub fn identity(&self) -> Option<String> {
        lock(&self.inner.shared.identity).clone()
    }

    /// When the credential expires, in milliseconds since the Unix epoch, if it does.
    pub fn credential_expires_ms(&self) -> Option<u64> {
        *self.inner.shared.expires_ms.borrow()
    }

    /// Presents a fresh credential for the same identity on the live connection (`Reauth`),
    /// so that it outlives the expiry of the one it was opened with; later reconnections use
    /// it too. Returns the new expiry.
    ///
    /// # Errors
    /// [`ReauthError::Refused`] when the broker refuses the token (it then closes the
    /// connection, and the client reconnects with the credential it had);
    /// [`ReauthError::Closed`] when the connection ended before the answer or the client is
    /// closed.
    pub async fn reauth(&self, token: impl Into<String>) -> Result<Option<u64>, ReauthError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .control
            .send(Control::Reauth {
                token: token.into(),
                reply,
            })
            .map_err(|_| ReauthError::Closed)?;
        answer.await.map_err(|_| ReauthError::Closed)?
    }

    /// The name the broker registered this client under (the configured one, or the one the
    /// broker generated). It is kept across reconnections.
    pub fn name(&self) -> String {
        self.inner.shared.name()
    }

    /// Queues a message and returns its id, waiting while the send buffer is full (which it
    /// stays while the connection is down: messages sent then go out, in order, once the
    /// client has reconnected and resubscribed).
    ///
    /// Success means the message is queued, not delivered: failed deliveries are reported as
    /// [`Event::DeliveryFailed`], refusals as [`Event::ServerError`]; [`flush`](Self::flush)
    /// waits until the broker has processed it, [`send_confirmed`](Self::send_confirmed) until
    /// a persistent message is safe with the broker.
    ///
    /// A persistent message is kept by the client until the broker confirms it, and sent again
    /// after a reconnection if it was not; see
    /// [the crate documentation](crate#persistent-messages-and-acknowledgements).
    ///
    /// # Errors
    /// [`SendError::InvalidName`] / [`SendError::InvalidTarget`] when the message is not valid,
    /// [`SendError::TooLarge`] when it exceeds the broker's limits, [`SendError::Closed`] when
    /// the client has stopped.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: broadcast_client::Client) -> Result<(), broadcast_client::SendError> {
    /// use broadcast_client::OutgoingMessage;
    /// let id = client.send(OutgoingMessage::to_client("bob", "hello").event("greeting")).await?;
    /// println!("sent {id}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, msg: OutgoingMessage) -> Result<String, SendError> {
        let (id, cmd) = self.prepare(msg, None)?;
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| SendError::Closed)?;
        Ok(id)
    }

    /// Queues many messages in one call, in order, and returns one result per message: its id,
    /// or why that message was not queued (an invalid one is left out; the others go). The
    /// valid messages take their places in the send buffer together, waiting while it has no
    /// room, so the connection writes them out in as few writes as it can.
    ///
    /// As with [`send`](Self::send), success means queued; [`flush`](Self::flush) waits until
    /// the broker has processed them.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: broadcast_client::Client) {
    /// use broadcast_client::OutgoingMessage;
    /// let batch = (0..100).map(|i| OutgoingMessage::to_channel("ticks", format!("tick {i}")));
    /// for result in client.send_batch(batch).await {
    ///     if let Err(e) = result {
    ///         eprintln!("not sent: {e}");
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn send_batch(
        &self,
        msgs: impl IntoIterator<Item = OutgoingMessage>,
    ) -> Vec<Result<String, SendError>> {
        let mut results = Vec::new();
        let mut ready = Vec::new();
        for msg in msgs {
            match self.prepare(msg, None) {
                Ok((id, cmd)) => {
                    ready.push((results.len(), cmd));
                    results.push(Ok(id));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // Slots for a whole chunk at once: its messages are queued one after the other, with
        // nothing of another sender of this client between them.
        let chunk = self.inner.commands.max_capacity().max(1);
        let mut ready = ready.into_iter().peekable();
        while ready.peek().is_some() {
            let cmds: Vec<(usize, Command)> = ready.by_ref().take(chunk).collect();
            match self.inner.commands.reserve_many(cmds.len()).await {
                Ok(permits) => {
                    for (permit, (_, cmd)) in permits.zip(cmds) {
                        permit.send(cmd);
                    }
                }
                Err(_) => {
                    for (i, _) in cmds.into_iter().chain(ready.by_ref()) {
                        results[i] = Err(SendError::Closed);
                    }
                }
            }
        }
        results
    }

    /// Like [`send`](Self::send), but fails instead of waiting when the send buffer is full.
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`SendError::BufferFull`].
    pub fn try_send(&self, msg: OutgoingMessage) -> Result<String, SendError> {
        let (id, cmd) = self.prepare(msg, None)?;
        self.inner.commands.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::BufferFull,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })?;
        Ok(id)
    }

    /// Sends a message and resolves once the broker has confirmed it: for a persistent
    /// message, when its `Accepted` arrives (the message is acknowledged by every recipient it
    /// was handed to and stored for every recipient it is queued for); for a non-persistent
    /// one, when the broker has processed it (a [`flush`](Self::flush) round trip).
    ///
    /// Waits like [`send`](Self::send) while the send buffer is full, and while
    /// [`ConnectOptions::max_unconfirmed`] messages are already unconfirmed. A lost connection
    /// does not fail the call: the message is sent again after the reconnection and the call
    /// resolves when that copy is confirmed. Recipients that will not get the message are
    /// reported as [`Event::DeliveryFailed`] before the call resolves; a confirmed message
    /// has been dealt with by the broker, not necessarily delivered to everyone.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`SendError::Closed`] also when the client stops before the
    /// confirmation arrives, and [`SendError::TooLarge`] when the broker reconnected to takes
    /// smaller frames than the message.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: broadcast_client::Client) -> Result<(), broadcast_client::SendError> {
    /// use broadcast_client::OutgoingMessage;
    /// let id = client.send_confirmed(OutgoingMessage::to_client("bob", "invoice 17")).await?;
    /// println!("{id} is safe with the broker");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_confirmed(&self, msg: OutgoingMessage) -> Result<String, SendError> {
        if !msg.is_persistent() {
            let id = self.send(msg).await?;
            self.flush().await?;
            return Ok(id);
        }
        let (reply, answer) = oneshot::channel();
        let (id, cmd) = self.prepare(msg, Some(reply))?;
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| SendError::Closed)?;
        answer.await.map_err(|_| SendError::Closed)??;
        Ok(id)
    }

    /// Acknowledges a message received in manual mode
    /// ([`ConnectOptions::manual_ack`]): queues its `ack_tag` for the next acknowledgement
    /// frame, without waiting. Does nothing for a message without a tag, in automatic mode
    /// (where messages are acknowledged when taken from their stream), or for a message that
    /// arrived on an earlier connection (the broker hands such messages over again).
    pub fn ack(&self, msg: &Message) {
        if !self.inner.manual_ack {
            return;
        }
        if let Some(tag) = msg.ack_tag {
            // An error means the task has stopped, and with it the connection the tag was for.
            let _ = self.inner.control.send(Control::ManualAck { tag });
        }
    }

    /// Validates and encodes a message, here rather than in the connection task, so that the
    /// caller learns at once what is wrong with it.
    fn prepare(
        &self,
        msg: OutgoingMessage,
        confirm: Option<Confirm>,
    ) -> Result<(String, Command), SendError> {
        if self.inner.commands.is_closed() {
            return Err(SendError::Closed);
        }
        msg.validate()?;
        let shared = &self.inner.shared;
        let max_payload = shared.max_payload.load(Ordering::Relaxed) as usize;
        if msg.data().len() > max_payload {
            return Err(SendError::TooLarge {
                size: msg.data().len(),
                max: max_payload,
            });
        }
        let max_frame = shared.max_frame.load(Ordering::Relaxed);
        let publish = msg.into_publish();
        // Sized for the whole frame up front: one allocation, no copy on growing.
        let frame = encode_publish(&publish, max_frame as usize).map_err(|e| match e {
            CodecError::FrameTooLarge { len, max } => SendError::TooLarge { size: len, max },
            other => SendError::InvalidTarget(other.to_string()),
        })?;
        // The frame holds everything the connection needs: the id is handed back, not copied.
        let cmd = Command::Publish {
            frame,
            persistent: publish.persistent,
            confirm,
        };
        Ok((publish.id, cmd))
    }

    /// Subscribes to `channel`; resolves once the broker has confirmed the subscription.
    ///
    /// Each call makes a new [`Subscription`], and each subscription to a channel gets every
    /// message of it. While the connection is down the call waits for the reconnection.
    ///
    /// # Errors
    /// [`SubscribeError::InvalidName`] for a bad channel name, [`SubscribeError::Refused`] when
    /// the broker refuses (for example, too many subscriptions), [`SubscribeError::Closed`]
    /// when the client stops first.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: broadcast_client::Client) -> Result<(), broadcast_client::SubscribeError> {
    /// use futures::StreamExt;
    /// let mut news = client.subscribe("news").await?;
    /// while let Some(msg) = news.next().await {
    ///     println!("{}: {:?}", msg.sender, msg.data);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(
        &self,
        channel: impl Into<String>,
    ) -> Result<Subscription, SubscribeError> {
        let channel = channel.into();
        validate_channel(&channel)?;
        let id = self
            .inner
            .shared
            .next_subscription
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.receive_buffer);
        let (reply, answer) = oneshot::channel();
        // Made before the request, so that dropping this future at any point unsubscribes.
        let subscription = Subscription::new(channel.clone(), id, rx, self.acker());
        let cmd = Command::Subscribe {
            channel,
            id,
            tx,
            reply,
        };
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| SubscribeError::Closed)?;
        match answer.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SubscribeError::Closed),
        }
    }

    /// The stream of direct messages (those with no channel), and of channel messages that no
    /// live [`Subscription`] takes. `Some` only the first time it is called.
    ///
    /// Messages received before it is taken wait in its buffer; once that is full, further
    /// ones are dropped and reported as [`Event::DeliveryFailed`] (reason
    /// [`SlowConsumer`](crate::FailureReason::SlowConsumer)), so that a client that never
    /// reads direct messages does not stall. Once taken, a full stream makes the connection
    /// wait for room; if it is dropped, messages it would have had are reported the same way
    /// (reason [`NotSubscribed`](crate::FailureReason::NotSubscribed)).
    pub fn direct_messages(&self) -> Option<DirectMessages> {
        let shared = &self.inner.shared;
        let rx = lock(&shared.direct).take()?;
        shared.direct_taken.store(true, Ordering::Release);
        Some(DirectMessages::new(rx, self.acker()))
    }

    /// What a stream needs to acknowledge deliveries.
    fn acker(&self) -> Acker {
        Acker {
            control: self.inner.control.clone(),
            queue: self.inner.shared.acks.clone(),
        }
    }

    /// A new stream of every [`Event`] raised from now on.
    pub fn events(&self) -> Events {
        Events::new(self.inner.shared.events.subscribe())
    }

    /// Resolves once the broker has processed everything this client sent before the call
    /// (and sent the delivery failures it caused). If the connection is lost meanwhile, it
    /// resolves once the new connection has processed the messages that were still queued.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the client stops first.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(client: broadcast_client::Client) -> Result<(), broadcast_client::SendError> {
    /// use broadcast_client::OutgoingMessage;
    /// client.send(OutgoingMessage::to_channel("news", "extra!")).await?;
    /// client.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<(), SendError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Flush { reply })
            .await
            .map_err(|_| SendError::Closed)?;
        answer.await.map_err(|_| SendError::Closed)
    }

    /// Writes out the messages already queued (when connected), waits up to
    /// [`ConnectOptions::close_timeout`] for the broker to confirm the persistent messages not
    /// confirmed yet, says goodbye to the broker, closes the connection and raises
    /// [`Event::Closed`]. Each persistent message still unconfirmed (or never sent, when the
    /// connection is down) is reported first as [`Event::Unconfirmed`]. Later sends fail with
    /// [`SendError::Closed`] and every stream ends. Closing a closed client does nothing.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.control.send(Control::Close { reply }).is_ok() {
            // An error means the task stopped on its own meanwhile: closed as well.
            let _ = done.await;
        }
    }
}
