//! Broker configuration.

use crate::auth::{AuthSettings, Credentials};
pub use crate::store::SyncMode;
use broadcast_protocol::{FRAME_ENVELOPE, MAX_FRAME_CAP, MIN_FRAME};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Settings of a broker. `Config::default()` holds the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the message store; created when missing. Default `broadcast-data`.
    pub data_dir: PathBuf,
    /// Most connections at once; further connections get an error frame and are closed.
    /// Default 20,000.
    pub max_connections: usize,
    /// Most connections open at once from one source address; further ones get a
    /// `LimitReached` error and are closed. Default 0: no limit but `max_connections`.
    pub max_connections_per_address: usize,
    /// Most new connections a second from one source address (fractions allowed, bursts of a
    /// second's worth); faster ones get a `LimitReached` error and are closed. Default 0: no
    /// limit.
    pub connections_per_address_per_sec: f64,
    /// Failed handshakes (a refused credential, a bad or missing `Hello`, a failed TLS
    /// handshake) from one source address within a minute after which the address is
    /// refused new connections for `auth_failure_block` (each failure is also answered a
    /// little later than the one before). Default 0: no limit.
    pub max_auth_failures_per_address: u32,
    /// How long an address that failed too often is refused. Default 60 s.
    pub auth_failure_block: Duration,
    /// Most connections open at once per identity (and namespace). Default 0: no limit.
    pub max_connections_per_identity: usize,
    /// Most connections that have not finished their handshake (TLS and `Hello`) at once;
    /// further ones are refused at once, so that connections that never finish (slowloris)
    /// hold a bounded amount of memory. Default 1,024.
    pub max_pending_handshakes: usize,
    /// Most of those from one source address, so that one host cannot take them all and
    /// keep new clients out. Default 128.
    pub max_pending_handshakes_per_address: usize,
    /// Most messages a second one connection may publish (fractions allowed, bursts of a
    /// second's worth). A connection over it is held back, never refused: its next frames are
    /// handled only once it is within its rate again (acknowledgements and pongs read up to
    /// 64 KiB ahead meanwhile), and TCP slows its sender. Default 0: no limit.
    pub publish_messages_per_sec: f64,
    /// Most payload bytes a second one connection may publish, held back the same way.
    /// Default 0: no limit.
    pub publish_bytes_per_sec: f64,
    /// Largest message payload accepted, in bytes. Default 1 MiB. Frames may be this plus
    /// 64 KiB of envelope.
    pub max_payload: u32,
    /// Most frames waiting in one connection's outbound queue. Default 8,192.
    pub outbound_frames: usize,
    /// Most bytes waiting in one connection's outbound queue. Default 8 MiB. A recipient whose
    /// queue is full is too slow: deliveries to it fail with `SlowConsumer`.
    pub outbound_bytes: usize,
    /// How often the broker pings a connection it has sent nothing to. Default 5 s. A
    /// connection silent for three times the larger of this and the client's own heartbeat is
    /// closed.
    pub heartbeat: Duration,
    /// How long a new connection has to send its `Hello`. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a closing connection may take to write what is queued for it. Default 5 s.
    pub drain_timeout: Duration,
    /// Most bytes of frames not yet fully received, across every connection. Default 256 MiB.
    /// Above it, connections holding part of a frame are not read from until there is room.
    pub partial_frames_max_bytes: usize,
    /// How long a connection holding part of a frame may wait for room under
    /// `partial_frames_max_bytes` before it is closed with an error. Default 5 s.
    pub partial_frame_wait: Duration,
    /// Most subscriptions per connection. Default 10,000.
    pub max_subscriptions: usize,
    /// Most names in a group or channel list target. Default 1,024.
    pub max_target_names: usize,
    /// How long a delivery of a persistent message may stay unacknowledged before it is sent
    /// again. Default 30 s.
    pub ack_timeout: Duration,
    /// How many times a persistent message is handed to one recipient before its sender is
    /// told the attempts are exhausted. Default 10.
    pub max_attempts: u32,
    /// Most unacknowledged persistent deliveries per recipient. Default 4,096.
    pub max_unacked: usize,
    /// Most persistent messages of one connection waiting for their `Accepted`; beyond that
    /// the broker stops reading from the connection until some are confirmed. Default 65,536.
    pub max_unconfirmed: usize,
    /// Time to live of a persistent message that does not set one. Default 24 h.
    pub default_ttl: Duration,
    /// Most messages queued for one recipient. Default 1,000,000.
    pub queue_max_messages: u64,
    /// Most bytes queued for one recipient. Default 1 GiB.
    pub queue_max_bytes: u64,
    /// Most messages kept for a channel that has no subscriber at all. Default 10,000.
    pub backlog_max_messages: u64,
    /// Most bytes in the whole store. Default 8 GiB.
    pub store_max_bytes: u64,
    /// Most bytes queued in one namespace (its clients' queues and its channels' backlogs),
    /// so that one tenant cannot fill the store for the others; a message over it fails for
    /// its recipient as `QueueFull`. Default 0: no limit but `store_max_bytes`.
    pub namespace_max_bytes: u64,
    /// How far the store makes a persistent message durable before it is confirmed: synced
    /// to the device, surviving a power cut (the default), or written to the operating
    /// system, surviving the broker's crash but not a power cut.
    pub store_sync: SyncMode,
    /// Most bytes of the store that are kept cached in memory. Default 64 MiB.
    pub store_cache_bytes: u64,
    /// Free bytes kept in reserve on the store's file system: below it persistent messages
    /// are refused (`StoreUnavailable`) until space returns, so that acknowledgements can
    /// still be written. Default 64 MiB; 0 turns the reserve off.
    pub store_min_free_bytes: u64,
    /// How long a disconnected client's subscriptions are remembered. Default 24 h.
    pub session_expiry: Duration,
    /// How often expired messages and sessions are looked for. Default 1 s.
    pub expiry_interval: Duration,
    /// How long a sender waits for room in a recipient's full outbound queue before a
    /// non-persistent message to it fails as `SlowConsumer`: flow control for a recipient
    /// that is slower than its sender. A recipient that made its sender wait in vain is not
    /// waited for again until it takes frames. Default 1 s.
    pub slow_consumer_wait: Duration,
    /// Origins (`https://app.example.org`) whose pages may open a WebSocket on the HTTP
    /// listener; `*` allows any. A WebSocket request without an `Origin` header (not from a
    /// browser) is always allowed. Default: none.
    pub http_allowed_origins: Vec<String>,
    /// Identities, tokens, JWT keys and rights. Default: none, and then clients connect
    /// without credentials.
    pub auth: AuthSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("broadcast-data"),
            max_connections: 20_000,
            max_connections_per_address: 0,
            connections_per_address_per_sec: 0.0,
            max_auth_failures_per_address: 0,
            auth_failure_block: Duration::from_secs(60),
            max_connections_per_identity: 0,
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_address: 128,
            publish_messages_per_sec: 0.0,
            publish_bytes_per_sec: 0.0,
            max_payload: broadcast_protocol::DEFAULT_MAX_PAYLOAD,
            outbound_frames: 8192,
            outbound_bytes: 8 * 1024 * 1024,
            heartbeat: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            partial_frames_max_bytes: 256 << 20,
            partial_frame_wait: Duration::from_secs(5),
            max_subscriptions: 10_000,
            max_target_names: 1024,
            ack_timeout: Duration::from_secs(30),
            max_attempts: 10,
            max_unacked: 4096,
            max_unconfirmed: 65_536,
            default_ttl: Duration::from_secs(24 * 3600),
            queue_max_messages: 1_000_000,
            queue_max_bytes: 1 << 30,
            backlog_max_messages: 10_000,
            store_max_bytes: 8 << 30,
            namespace_max_bytes: 0,
            store_sync: SyncMode::Device,
            store_cache_bytes: 64 << 20,
            store_min_free_bytes: 64 << 20,
            session_expiry: Duration::from_secs(24 * 3600),
            expiry_interval: Duration::from_secs(1),
            slow_consumer_wait: Duration::from_secs(1),
            http_allowed_origins: Vec::new(),
            auth: AuthSettings::default(),
        }
    }
}

/// A setting that is out of range; names the field.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid setting `{field}`: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Config {
    /// Largest frame body accepted: the payload limit plus the envelope.
    pub fn max_frame(&self) -> u32 {
        self.max_payload.saturating_add(FRAME_ENVELOPE)
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.max_frame() > MAX_FRAME_CAP || self.max_payload < MIN_FRAME {
            return err(
                "max_payload",
                "must be between 4 KiB and 64 MiB less 64 KiB",
            );
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.max_pending_handshakes == 0 {
            return err("max_pending_handshakes", "must be at least 1");
        }
        if self.max_pending_handshakes_per_address == 0 {
            return err("max_pending_handshakes_per_address", "must be at least 1");
        }
        if let Err(e) = Credentials::new(&self.auth) {
            return err("auth", &e.0);
        }
        for (key, rate) in [
            (
                "connections_per_address_per_sec",
                self.connections_per_address_per_sec,
            ),
            ("publish_messages_per_sec", self.publish_messages_per_sec),
            ("publish_bytes_per_sec", self.publish_bytes_per_sec),
        ] {
            if !(rate >= 0.0 && rate.is_finite()) {
                return err(key, "must be a number of zero or more");
            }
        }
        if self.outbound_frames < 16 {
            return err("outbound_frames", "must be at least 16");
        }
        if self.outbound_bytes < self.max_frame() as usize {
            return err(
                "outbound_bytes",
                "must hold at least one frame of the largest size",
            );
        }
        if self.heartbeat < Duration::from_millis(10) {
            return err("heartbeat", "must be at least 10 ms");
        }
        if self.handshake_timeout.is_zero() {
            return err("handshake_timeout", "must be more than zero");
        }
        if self.partial_frames_max_bytes < self.max_frame() as usize {
            return err(
                "partial_frames_max_bytes",
                "must hold at least one frame of the largest size",
            );
        }
        if self.max_subscriptions == 0 {
            return err("max_subscriptions", "must be at least 1");
        }
        if self.max_target_names == 0 {
            return err("max_target_names", "must be at least 1");
        }
        if self.max_target_names > broadcast_protocol::MAX_LIST {
            return err("max_target_names", "must be at most 4096");
        }
        if self.ack_timeout < Duration::from_millis(10) {
            return err("ack_timeout", "must be at least 10 ms");
        }
        if self.max_attempts == 0 {
            return err("max_attempts", "must be at least 1");
        }
        if self.max_unconfirmed == 0 {
            return err("max_unconfirmed", "must be at least 1");
        }
        if self.max_unacked == 0 {
            return err("max_unacked", "must be at least 1");
        }
        if self.default_ttl.is_zero() {
            return err("default_ttl", "must be more than zero");
        }
        if self.queue_max_messages == 0 {
            return err("queue_max_messages", "must be at least 1");
        }
        if self.backlog_max_messages == 0 {
            return err("backlog_max_messages", "must be at least 1");
        }
        if self.queue_max_bytes < u64::from(self.max_frame()) {
            return err(
                "queue_max_bytes",
                "must hold at least one message of the largest size",
            );
        }
        if self.store_max_bytes < self.queue_max_bytes {
            return err("store_max_bytes", "must be at least queue_max_bytes");
        }
        if self.store_cache_bytes < 1 << 20 {
            return err("store_cache_bytes", "must be at least 1 MiB");
        }
        if self.expiry_interval < Duration::from_millis(10) {
            return err("expiry_interval", "must be at least 10 ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn names_the_field_in_error() {
        let c = Config {
            outbound_bytes: 10,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "outbound_bytes");
        let c = Config {
            max_payload: 100 * 1024 * 1024,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_payload");
    }
}
