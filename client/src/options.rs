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
/// | [`event_buffer`](Self::event_buffer) | 4096 events per [`Events`](crate::Events) stream |
/// | [`heartbeat`](Self::heartbeat) | 5 s |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s per attempt |
/// | [`max_frame`](Self::max_frame) | [`DEFAULT_MAX_FRAME`] |
/// | [`max_unconfirmed`](Self::max_unconfirmed) | 4096 persistent messages |
/// | [`close_timeout`](Self::close_timeout) | 5 s |
/// | [`manual_ack`](Self::manual_ack) | false: acknowledged when taken from a stream |
/// | [`dedup_window`](Self::dedup_window) | 16,384 messages |
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
#[derive(Clone)]
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
    pub(crate) event_buffer: usize,
    /// Ping after this long without sending; the broker is dead after three of these
    /// without receiving. Zero turns heartbeats off.
    pub(crate) heartbeat: Duration,
    /// Limit on each attempt: TCP connect plus handshake.
    pub(crate) connect_timeout: Duration,
    /// Largest frame body this client accepts.
    pub(crate) max_frame: u32,
    /// Most persistent messages written and not yet confirmed by the broker.
    pub(crate) max_unconfirmed: usize,
    /// How long [`Client::close`] waits for outstanding confirmations.
    pub(crate) close_timeout: Duration,
    /// Whether the application acknowledges deliveries itself with [`Client::ack`].
    pub(crate) manual_ack: bool,
    /// How many `(sender, id)` pairs of received messages are remembered to drop duplicates.
    pub(crate) dedup_window: usize,
    /// The credential sent in `Hello` (version 2).
    pub(crate) token: Option<String>,
    /// The namespace asked for in `Hello` (version 2).
    pub(crate) namespace: Option<String>,
    /// TLS: the client configuration (trusted CAs, a client certificate).
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// TLS: the name the broker's certificate must hold (default: the address's host).
    pub(crate) server_name: Option<String>,
    /// Makes a fresh token before the current one expires.
    pub(crate) token_refresh: Option<TokenRefresh>,
}

/// A source of fresh tokens, for [`ConnectOptions::token_refresh`].
pub type TokenRefresh = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("token_refresh", &self.token_refresh.is_some())
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame", &self.max_frame)
            .field("manual_ack", &self.manual_ack)
            .finish_non_exhaustive()
    }
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
            event_buffer: 4096,
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            max_unconfirmed: 4096,
            close_timeout: Duration::from_secs(5),
            manual_ack: false,
            dedup_window: 16_384,
            token: None,
            namespace: None,
            tls: None,
            server_name: None,
            token_refresh: None,
        }
    }
}

impl ConnectOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The credential to present: a service token or a JWT, sent in the handshake and again
    /// on every reconnection (the latest one given to [`Client::reauth`](crate::Client::reauth)
    /// once there is one). Needed by a broker that requires credentials.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Connects over TLS with `config` (see [`crate::tls::client_config`] to build one from
    /// PEM files); the broker's certificate must be valid for the address's host, or for
    /// [`ConnectOptions::server_name`].
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name the broker's TLS certificate must hold, when it is not the host of the address
    /// connected to (a DNS name or an IP address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The namespace to live in: names, channels, queues and `All` of other namespaces are
    /// never met. A broker that requires credentials puts each identity in its own namespace
    /// and refuses another; one that requires none takes the namespace asked for. Default: the
    /// default namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Renews the credential on the live connection before it expires: when the broker says
    /// the current one expires (`Welcome`, `Reauthed`), the client calls `refresh` once 80% of
    /// the time left has passed and sends the token it returns in a `Reauth`. A failure is
    /// logged and tried again a second later, until the credential expires.
    pub fn token_refresh<F, Fut>(mut self, refresh: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_refresh = Some(std::sync::Arc::new(move || Box::pin(refresh())));
        self
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

    /// How many events each [`Events`](crate::Events) stream holds (at least 16). A stream that
    /// falls further behind yields [`Event::Lagged`](crate::Event::Lagged) for what it missed;
    /// a sender that counts `Accepted` events for many persistent messages needs room for
    /// as many as it keeps unconfirmed.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(16);
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

    /// How many persistent messages may be written and not yet confirmed by the broker's
    /// `Accepted` (at least 1). The client keeps each of them to send again after a
    /// reconnection; at the limit it stops taking messages from the send buffer until a
    /// confirmation arrives, so [`Client::send`] waits and [`Client::try_send`] fails with
    /// [`SendError::BufferFull`](crate::SendError::BufferFull) once the buffer is full too
    /// (and subscriptions and flushes queued behind them wait as well). It also bounds the
    /// callers of [`Client::send_confirmed`] waiting at once.
    pub fn max_unconfirmed(mut self, messages: usize) -> Self {
        self.max_unconfirmed = messages.max(1);
        self
    }

    /// How long [`Client::close`] waits for the broker to confirm the persistent messages
    /// still unconfirmed before it says goodbye. Each message still unconfirmed then is
    /// reported as [`Event::Unconfirmed`](crate::Event::Unconfirmed).
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout = d;
        self
    }

    /// With `true`, the application acknowledges each delivery itself, with
    /// [`Client::ack`], once it has dealt with it. By default (`false`) a delivery is
    /// acknowledged when the application takes it from its
    /// [`Subscription`](crate::Subscription) or [`DirectMessages`](crate::DirectMessages)
    /// stream. Unacknowledged deliveries are handed over again by the broker.
    pub fn manual_ack(mut self, manual: bool) -> Self {
        self.manual_ack = manual;
        self
    }

    /// How many received messages (by sender and id) the client remembers in order to drop
    /// redelivered duplicates of them; zero turns duplicate suppression off. See
    /// [the crate documentation](crate#persistent-messages-and-acknowledgements).
    pub fn dedup_window(mut self, messages: usize) -> Self {
        self.dedup_window = messages;
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
