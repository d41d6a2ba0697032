//! [`ConnectOptions`]: how a [`Client`] connects, reconnects and buffers.

use crate::{Client, ConnectError};
use broadcast_protocol::{DEFAULT_MAX_FRAME, MAX_FRAME_CAP, MIN_FRAME};
use std::time::Duration;

/// Settings for a [`Client`], built with consuming setters and ended with
/// [`connect`](ConnectOptions::connect).
///
/// All defaults live in the [`Default`] impl:
///
/// | setting | default |
/// |---|---|
/// | [`name`](Self::name) | none: the broker generates one |
/// | [`reconnect_delay`](Self::reconnect_delay) | 100 ms doubling to 5 s, full jitter |
/// | [`max_reconnect_attempts`](Self::max_reconnect_attempts) | `None`: forever |
/// | [`send_buffer`](Self::send_buffer) | 1024 frames |
/// | [`receive_buffer`](Self::receive_buffer) | 1024 messages per stream |
/// | [`heartbeat`](Self::heartbeat) | 5 s |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s per attempt |
/// | [`max_frame`](Self::max_frame) | [`DEFAULT_MAX_FRAME`] |
///
/// ```no_run
/// # async fn example() -> Result<(), broadcast_client::ConnectError> {
/// use std::time::Duration;
/// let client = broadcast_client::ConnectOptions::new()
///     .name("worker-1")
///     .reconnect_delay(Duration::from_millis(50), Duration::from_secs(2))
///     .max_reconnect_attempts(Some(10))
///     .connect("127.0.0.1:7400")
///     .await?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name to register under; the broker generates one when `None`.
    pub(crate) name: Option<String>,
    /// Ceiling of the first reconnect delay; doubles with each failed attempt.
    pub(crate) reconnect_initial: Duration,
    /// Largest reconnect delay ceiling.
    pub(crate) reconnect_max: Duration,
    /// Connection attempts allowed in a row before giving up; `None` for no limit.
    pub(crate) max_reconnect_attempts: Option<u32>,
    /// Capacity of the command channel between the handles and the connection task.
    pub(crate) send_buffer: usize,
    /// Capacity of each subscription's and of the direct stream's channel.
    pub(crate) receive_buffer: usize,
    /// Ping after this long without sending; the broker is dead after three of these
    /// without receiving. Zero turns heartbeats off.
    pub(crate) heartbeat: Duration,
    /// Limit on each attempt: TCP connect plus handshake.
    pub(crate) connect_timeout: Duration,
    /// Largest frame body this client accepts.
    pub(crate) max_frame: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            name: None,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_reconnect_attempts: None,
            send_buffer: 1024,
            receive_buffer: 1024,
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl ConnectOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers under `name`. Without a name the broker generates one; either way the client
    /// keeps the name the broker gave it when it reconnects. A connection that registers a name
    /// already connected takes it over, and the older connection closes for good.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Delay between connection attempts: attempt `n` waits a random time between zero and
    /// `initial * 2^(n-1)`, the ceiling capped at `max` ("full jitter").
    pub fn reconnect_delay(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// How many connection attempts in a row may fail before the client gives up: `None` (the
    /// default) never gives up. The limit applies to the first connection too, which makes at
    /// least one attempt.
    pub fn max_reconnect_attempts(mut self, n: Option<u32>) -> Self {
        self.max_reconnect_attempts = n;
        self
    }

    /// How many outgoing frames may wait for the connection (at least 1). When they are all
    /// taken, [`Client::send`] waits and [`Client::try_send`] fails with
    /// [`SendError::BufferFull`](crate::SendError::BufferFull).
    pub fn send_buffer(mut self, messages: usize) -> Self {
        self.send_buffer = messages.max(1);
        self
    }

    /// How many received messages each [`Subscription`](crate::Subscription) and the
    /// [`DirectMessages`](crate::DirectMessages) stream hold (at least 1). When one is full the
    /// connection stops reading until there is room, which slows the broker down through TCP.
    pub fn receive_buffer(mut self, messages: usize) -> Self {
        self.receive_buffer = messages.max(1);
        self
    }

    /// Sends a ping after `interval` without sending anything, and treats the connection as
    /// dead after three intervals without receiving anything. Zero turns heartbeats off.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Time allowed for each connection attempt, TCP connect and handshake together.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Largest frame body this client accepts, clamped to the protocol's bounds.
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes.clamp(MIN_FRAME, MAX_FRAME_CAP);
        self
    }

    /// Connects to the broker at `addr` (`host:port`); the same as [`Client::connect`].
    ///
    /// # Errors
    /// See [`Client::connect`].
    pub async fn connect(self, addr: impl Into<String>) -> Result<Client, ConnectError> {
        Client::connect(addr, self).await
    }

    /// The heartbeat interval in milliseconds, as sent in `Hello`.
    pub(crate) fn heartbeat_ms(&self) -> u32 {
        u32::try_from(self.heartbeat.as_millis()).unwrap_or(u32::MAX)
    }
}
