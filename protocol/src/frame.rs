//! Frames and the values they carry.
//!
//! Field order is wire order: bincode writes struct fields one after another with no names, and
//! enum variants as their index (a variable-length integer). Never reorder fields or variants;
//! add new variants at the end and new fields only with a new protocol version.

use crate::wire;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// First frame a client sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks; must be [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// Name to register under; the broker generates one when absent. A connection that asks
    /// for a name already connected takes it over.
    #[serde(deserialize_with = "wire::opt_string")]
    pub name: Option<String>,
    /// Reserved for authentication; must be absent in version 1.
    #[serde(deserialize_with = "wire::opt_string")]
    pub token: Option<String>,
    /// Reserved for namespaces; must be absent in version 1.
    #[serde(deserialize_with = "wire::opt_string")]
    pub namespace: Option<String>,
    /// Largest frame body the client accepts, in bytes.
    pub max_frame: u32,
    /// How often the client sends a ping when it has nothing else to send, in milliseconds
    /// (0: never). The broker closes a connection silent for three such intervals.
    pub heartbeat_ms: u32,
}

/// The broker's answer to a valid [`Hello`].
///
/// Its first six fields are those of version 1; the last three are on the wire only when
/// `version` is 2 or later (a version 1 `Welcome` ends after `heartbeat_ms`, and decodes with
/// them `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version of the connection: the client's, when the broker speaks it.
    pub version: u16,
    /// Name the connection is registered under.
    pub name: String,
    /// Broker software and version, for diagnostics.
    pub server: String,
    /// Largest frame body the broker accepts, in bytes.
    pub max_frame: u32,
    /// Largest message payload the broker accepts, in bytes.
    pub max_payload: u32,
    /// How often the broker pings an idle connection, in milliseconds.
    pub heartbeat_ms: u32,
    /// Version 2: the identity the credential proved; absent when the broker requires none.
    pub identity: Option<String>,
    /// Version 2: the namespace the connection lives in; absent for the default namespace.
    pub namespace: Option<String>,
    /// Version 2: when the credential expires, in milliseconds since the Unix epoch; absent
    /// when it does not. The broker closes the connection then (`AuthExpired`) unless a
    /// `Reauth` brought a later expiry.
    pub expires_ms: Option<u64>,
}

impl Serialize for Welcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let v2 = self.version >= 2;
        let mut t = s.serialize_tuple(if v2 { 9 } else { 6 })?;
        t.serialize_element(&self.version)?;
        t.serialize_element(&self.name)?;
        t.serialize_element(&self.server)?;
        t.serialize_element(&self.max_frame)?;
        t.serialize_element(&self.max_payload)?;
        t.serialize_element(&self.heartbeat_ms)?;
        if v2 {
            t.serialize_element(&self.identity)?;
            t.serialize_element(&self.namespace)?;
            t.serialize_element(&self.expires_ms)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Welcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(9, wire::WelcomeVisitor)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// One client, by name.
    Client(#[serde(deserialize_with = "wire::string")] String),
    /// Each of several clients, by name (at most [`crate::MAX_LIST`]); every name gets its own
    /// outcome.
    Group(#[serde(deserialize_with = "wire::string_vec")] Vec<String>),
    /// Every subscriber of one channel but the sender's own connection.
    Channel(#[serde(deserialize_with = "wire::string")] String),
    /// Every subscriber of any of several channels (at most [`crate::MAX_LIST`]), each once,
    /// but the sender's connection.
    Channels(#[serde(deserialize_with = "wire::string_vec")] Vec<String>),
    /// One client in its role as a subscriber of a channel: delivered to that client only,
    /// tagged with the channel.
    ClientInChannel {
        /// The client.
        #[serde(deserialize_with = "wire::string")]
        client: String,
        /// The channel the client must be subscribed to.
        #[serde(deserialize_with = "wire::string")]
        channel: String,
    },
    /// Every connected client but the sender.
    All,
}

/// A message as its sender hands it to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Id made by the sender (a nanoid by default), kept end to end and named in notices.
    #[serde(deserialize_with = "wire::string")]
    pub id: String,
    /// Where the message goes.
    pub target: Target,
    /// Optional event name, for the receiver to dispatch on.
    #[serde(deserialize_with = "wire::opt_string")]
    pub name: Option<String>,
    /// The payload.
    #[serde(deserialize_with = "wire::bytes")]
    pub data: Bytes,
    /// Whether the broker keeps the message for recipients it cannot reach now.
    pub persistent: bool,
    /// How long the message may wait for a recipient, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// True when the sender sends the message again because it was not confirmed before its
    /// connection was lost; recipients get it marked as redelivered.
    pub resent: bool,
}

/// A message as the broker hands it to a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sender's id for the message.
    #[serde(deserialize_with = "wire::string")]
    pub id: String,
    /// Name of the sending client, set by the broker; `$broker` for messages the broker sends.
    #[serde(deserialize_with = "wire::string")]
    pub sender: String,
    /// Channel the message reached the recipient through, if any.
    #[serde(deserialize_with = "wire::opt_string")]
    pub channel: Option<String>,
    /// The sender's event name.
    #[serde(deserialize_with = "wire::opt_string")]
    pub name: Option<String>,
    /// The payload.
    #[serde(deserialize_with = "wire::bytes")]
    pub data: Bytes,
    /// The sender's persistence flag.
    pub persistent: bool,
    /// True when this recipient may have been handed the message before.
    pub redelivered: bool,
    /// When present, the recipient acknowledges the delivery with this tag.
    pub ack_tag: Option<u64>,
}

/// Who a failed delivery was meant for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Recipient {
    /// A client, by name.
    Client(#[serde(deserialize_with = "wire::string")] String),
    /// A channel, by name.
    Channel(#[serde(deserialize_with = "wire::string")] String),
    /// Everyone connected.
    All,
}

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// The recipient is not connected.
    NotConnected,
    /// The channel has no subscriber but the sender, or nobody else is connected.
    NoSubscribers,
    /// The recipient's outbound queue is full: it reads more slowly than it is sent to.
    SlowConsumer,
    /// The delivery is larger than the recipient accepts.
    TooLarge,
    /// The message's time to live ran out before it could be delivered.
    Expired,
    /// The recipient's queue is at its limit.
    QueueFull,
    /// The message was handed to the recipient the maximum number of times, never acknowledged.
    AttemptsExhausted,
    /// The message store cannot take the message.
    StoreUnavailable,
    /// The broker is shutting down.
    ShuttingDown,
    /// The recipient is connected but not subscribed to the channel it was addressed through.
    NotSubscribed,
}

impl FailureReason {
    /// Every reason, in the order of their wire numbers.
    pub const ALL: [FailureReason; 10] = [
        FailureReason::NotConnected,
        FailureReason::NoSubscribers,
        FailureReason::SlowConsumer,
        FailureReason::TooLarge,
        FailureReason::Expired,
        FailureReason::QueueFull,
        FailureReason::AttemptsExhausted,
        FailureReason::StoreUnavailable,
        FailureReason::ShuttingDown,
        FailureReason::NotSubscribed,
    ];

    /// The reason's name in snake case (`not_connected`), as reports and metrics print it.
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::NotConnected => "not_connected",
            FailureReason::NoSubscribers => "no_subscribers",
            FailureReason::SlowConsumer => "slow_consumer",
            FailureReason::TooLarge => "too_large",
            FailureReason::Expired => "expired",
            FailureReason::QueueFull => "queue_full",
            FailureReason::AttemptsExhausted => "attempts_exhausted",
            FailureReason::StoreUnavailable => "store_unavailable",
            FailureReason::ShuttingDown => "shutting_down",
            FailureReason::NotSubscribed => "not_subscribed",
        }
    }

    /// Its position in [`FailureReason::ALL`] (its wire number).
    pub fn index(self) -> usize {
        match self {
            FailureReason::NotConnected => 0,
            FailureReason::NoSubscribers => 1,
            FailureReason::SlowConsumer => 2,
            FailureReason::TooLarge => 3,
            FailureReason::Expired => 4,
            FailureReason::QueueFull => 5,
            FailureReason::AttemptsExhausted => 6,
            FailureReason::StoreUnavailable => 7,
            FailureReason::ShuttingDown => 8,
            FailureReason::NotSubscribed => 9,
        }
    }
}

/// Notice to a sender that one recipient will not get one of its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailed {
    /// The id of the message.
    #[serde(deserialize_with = "wire::string")]
    pub id: String,
    /// Who will not get it.
    pub recipient: Recipient,
    /// Why.
    pub reason: FailureReason,
    /// Human-readable detail.
    #[serde(deserialize_with = "wire::string")]
    pub detail: String,
    /// When present, the notice was kept for the sender while it was away, and the sender
    /// acknowledges it with this tag (as a delivery).
    pub ack_tag: Option<u64>,
}

/// Kinds of error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer's protocol version is not supported; the connection closes.
    UnsupportedVersion,
    /// The first frame was not a handshake, or the handshake was refused; the connection closes.
    BadHandshake,
    /// A client or channel name or message id is not valid.
    InvalidName,
    /// Another connection took this connection's name; the connection closes.
    Replaced,
    /// A frame exceeded the size limit; the connection closes.
    FrameTooLarge,
    /// A frame body could not be decoded; the frame was skipped.
    Malformed,
    /// A message target is not valid (an empty group, a duplicate name, ...); it was not sent.
    InvalidTarget,
    /// A message payload exceeds the payload limit; it was not sent.
    PayloadTooLarge,
    /// A bound was reached (subscriptions per connection, ...).
    LimitReached,
    /// The broker is shutting down.
    ShuttingDown,
    /// The peer did not send a frame for too long; the connection closes.
    Timeout,
    /// A fault in the broker.
    Internal,
    /// Version 2: the credential, or the name asked for, is refused; the connection closes.
    Unauthorized,
    /// Version 2: the connection's rights do not allow this publish or subscribe; nothing of it
    /// was done (`id` names the message, or the channel), and the connection goes on.
    Forbidden,
    /// Version 2: the connection's credential expired without a `Reauth`; the connection
    /// closes.
    AuthExpired,
}

/// An error reported to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What kind of error.
    pub code: ErrorCode,
    /// Human-readable explanation.
    #[serde(deserialize_with = "wire::string")]
    pub message: String,
    /// The message the error is about, when there is one.
    #[serde(deserialize_with = "wire::opt_string")]
    pub id: Option<String>,
}

impl ErrorCode {
    /// The code's name in snake case (`bad_handshake`), as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadHandshake => "bad_handshake",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::Replaced => "replaced",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Malformed => "malformed",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AuthExpired => "auth_expired",
        }
    }
}

/// Frames a client sends to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Handshake; first frame on every connection and only there.
    Hello(Hello),
    /// Send a message.
    Publish(Publish),
    /// Subscribe to a channel; answered by `Subscribed`.
    Subscribe {
        /// The channel.
        #[serde(deserialize_with = "wire::string")]
        channel: String,
    },
    /// Unsubscribe from a channel; answered by `Unsubscribed`.
    Unsubscribe {
        /// The channel.
        #[serde(deserialize_with = "wire::string")]
        channel: String,
    },
    /// Acknowledge deliveries by their `ack_tag`.
    Ack {
        /// The tags (at most [`crate::MAX_ACK_TAGS`]).
        #[serde(deserialize_with = "wire::u64_vec")]
        tags: Vec<u64>,
    },
    /// Liveness probe; the broker answers `Pong` with the same nonce after it has processed
    /// every frame sent before it.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Answer to the broker's `Ping`.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// The client is closing the connection on purpose.
    Bye,
    /// Version 2: a fresh credential for the same identity, so that the connection outlives
    /// the expiry of the one it was opened with; answered by `Reauthed`, or by an
    /// `Unauthorized` error that closes the connection.
    Reauth {
        /// The new token.
        #[serde(deserialize_with = "wire::string")]
        token: String,
    },
}

/// Frames the broker sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Handshake answer; first frame on every accepted connection.
    Welcome(Welcome),
    /// A message for this client.
    Deliver(Delivery),
    /// One recipient will not get one of this client's messages.
    DeliveryFailed(DeliveryFailed),
    /// A persistent message is safe: handed to and acknowledged by every recipient it was
    /// delivered to, and stored for every recipient it is queued for.
    Accepted {
        /// The message id.
        #[serde(deserialize_with = "wire::string")]
        id: String,
    },
    /// A subscription is active.
    Subscribed {
        /// The channel.
        #[serde(deserialize_with = "wire::string")]
        channel: String,
    },
    /// A subscription is gone.
    Unsubscribed {
        /// The channel.
        #[serde(deserialize_with = "wire::string")]
        channel: String,
    },
    /// Something the client sent was refused, or the connection is about to close.
    Error(ErrorFrame),
    /// Liveness probe; the client answers `Pong` with the same nonce.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Answer to the client's `Ping`.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// The broker is closing the connection on purpose (for example at shutdown).
    Bye {
        /// Why.
        #[serde(deserialize_with = "wire::string")]
        reason: String,
    },
    /// Version 2: a `Reauth` was accepted; the connection goes on under the new credential,
    /// with the rights it grants.
    Reauthed {
        /// When the new credential expires, in milliseconds since the Unix epoch; absent when
        /// it does not.
        expires_ms: Option<u64>,
    },
}
