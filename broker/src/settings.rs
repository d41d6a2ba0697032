//! The broker process's settings: a TOML config file, `BROADCAST_*` environment variables and
//! command-line flags, in that order of precedence from lowest to highest, over the defaults of
//! [`Config`].
//!
//! Every setting has one key, the same in all three places: `heartbeat_secs` in the file is
//! `BROADCAST_HEARTBEAT_SECS` in the environment and `--heartbeat-secs` on the command line.
//! Durations are in seconds (fractions allowed) and sizes in the unit their key names. The
//! defaults are written once, in [`Config::default`] (and, for the process's own settings, in
//! [`Settings::default`]); the file's reader refuses unknown keys and values of the wrong type,
//! naming the key, and [`Settings::config`] refuses values out of range, naming the key.

use crate::auth::AuthSettings;
use crate::config::{Config, ConfigError, SyncMode};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

/// Declares the settings once: the file's struct, the command line's overrides (each flag
/// with its environment variable) and each key's description.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $key:ident: $ty:ty = $env:literal, )*) => {
        /// Every setting of a broker process, as a config file holds them.
        ///
        /// A file need not name every key: a missing key keeps its default.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $key: $ty, )*
            /// The `[auth]` table: identities, tokens, JWT keys and rights (the file only; no
            /// flag or variable). Re-read on SIGHUP.
            pub auth: AuthSettings,
        }

        /// The settings given on the command line or in the environment; each one given
        /// replaces the file's.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct Overrides {
            $( $(#[doc = $doc])* #[arg(long, env = $env, hide_env_values = true)] pub $key: Option<$ty>, )*
        }

        impl Overrides {
            /// Replaces each setting of `settings` that is given here.
            pub fn apply(self, settings: &mut Settings) {
                $( if let Some(value) = self.$key { settings.$key = value; } )*
            }
        }

        /// Each setting's key and description, in the file's order.
        pub const KEYS: &[(&str, &str)] = &[ $( (stringify!($key), concat!($($doc, "\n"),*)) ),* ];
    };
}

settings! {
    /// Address to listen on for clients. Anything but a loopback address needs
    /// allow_unauthenticated: the broker has no credentials yet.
    listen: String = "BROADCAST_LISTEN",
    /// Address to listen on for clients over TLS (encrypted from the first byte); empty: no
    /// TLS listener. Needs tls_cert and tls_key.
    tls_listen: String = "BROADCAST_TLS_LISTEN",
    /// The TLS listener's certificate chain, PEM; re-read on SIGHUP for new connections.
    tls_cert: String = "BROADCAST_TLS_CERT",
    /// The TLS listener's private key, PEM; re-read on SIGHUP for new connections.
    tls_key: String = "BROADCAST_TLS_KEY",
    /// CA certificates (PEM) that TLS clients' certificates are verified against; empty:
    /// clients present none. A verified certificate whose name an identity lists in
    /// `certificates` proves that identity; clients without one present a token.
    tls_client_ca: String = "BROADCAST_TLS_CLIENT_CA",
    /// Address of the HTTP listener: Broadcast over WebSocket at /v1/ws and POST /v1/publish,
    /// with the same credentials and limits as the TCP listener; empty: none.
    http_listen: String = "BROADCAST_HTTP_LISTEN",
    /// Serve the HTTP listener over TLS, with tls_cert and tls_key (and tls_client_ca).
    http_tls: bool = "BROADCAST_HTTP_TLS",
    /// Origins whose pages may open a WebSocket, separated by commas
    /// (`https://app.example.org`), or `*` for any; requests without an Origin (not from a
    /// browser) are always allowed.
    http_allowed_origins: String = "BROADCAST_HTTP_ALLOWED_ORIGINS",
    /// Let clients connect without credentials on an address other than loopback (anyone who
    /// reaches the port can then connect under any name); the broker warns at start.
    allow_unauthenticated: bool = "BROADCAST_ALLOW_UNAUTHENTICATED",
    /// Directory of the message store; created when missing.
    data_dir: PathBuf = "BROADCAST_DATA_DIR",
    /// Log filter, in tracing-subscriber's syntax (the `RUST_LOG` environment variable
    /// overrides it).
    log: String = "BROADCAST_LOG",
    /// How log lines are written: `text`, or `json` (one object per line).
    log_format: LogFormat = "BROADCAST_LOG_FORMAT",
    /// Address of the admin HTTP API (health, readiness, metrics, state), for loopback or an
    /// operators' network; empty: no admin API.
    admin_listen: String = "BROADCAST_ADMIN_LISTEN",
    /// Bearer token the admin API asks for on every path but `/healthz` and `/readyz`;
    /// empty: none.
    admin_token: String = "BROADCAST_ADMIN_TOKEN",
    /// Most connections at once; further connections get an error frame and are closed.
    max_connections: usize = "BROADCAST_MAX_CONNECTIONS",
    /// Most connections open at once from one source address (0: no limit but
    /// max_connections).
    max_connections_per_address: usize = "BROADCAST_MAX_CONNECTIONS_PER_ADDRESS",
    /// Most new connections a second from one source address, fractions allowed, in bursts
    /// of a second's worth (0: no limit).
    connections_per_address_per_sec: f64 = "BROADCAST_CONNECTIONS_PER_ADDRESS_PER_SEC",
    /// Failed handshakes and authentications (a refused credential, a bad or missing Hello, a
    /// failed TLS handshake) from one source address within a minute after which it is
    /// refused new connections for auth_failure_block_secs (0: no limit).
    max_auth_failures_per_address: u32 = "BROADCAST_MAX_AUTH_FAILURES_PER_ADDRESS",
    /// Seconds an address that failed to authenticate too often is refused.
    auth_failure_block_secs: f64 = "BROADCAST_AUTH_FAILURE_BLOCK_SECS",
    /// Most connections open at once per identity (0: no limit).
    max_connections_per_identity: usize = "BROADCAST_MAX_CONNECTIONS_PER_IDENTITY",
    /// Most connections that have not finished their handshake (TLS and Hello) at once;
    /// further ones are refused at once.
    max_pending_handshakes: usize = "BROADCAST_MAX_PENDING_HANDSHAKES",
    /// Most connections from one source address that have not finished their handshake.
    max_pending_handshakes_per_address: usize = "BROADCAST_MAX_PENDING_HANDSHAKES_PER_ADDRESS",
    /// Most messages a second one connection may publish, fractions allowed, in bursts of a
    /// second's worth; a connection over it is held back (TCP slows its sender), never
    /// refused (0: no limit).
    publish_messages_per_sec: f64 = "BROADCAST_PUBLISH_MESSAGES_PER_SEC",
    /// Most payload bytes a second one connection may publish, held back the same way (0: no
    /// limit).
    publish_bytes_per_sec: f64 = "BROADCAST_PUBLISH_BYTES_PER_SEC",
    /// Largest message payload accepted, in bytes (4 KiB to 64 MiB less 64 KiB).
    max_payload: u32 = "BROADCAST_MAX_PAYLOAD",
    /// Most frames waiting in one connection's outbound queue.
    outbound_frames: usize = "BROADCAST_OUTBOUND_FRAMES",
    /// Most bytes waiting in one connection's outbound queue; a recipient whose queue is full
    /// is too slow.
    outbound_bytes: usize = "BROADCAST_OUTBOUND_BYTES",
    /// Seconds between pings to a connection the broker has sent nothing to.
    heartbeat_secs: f64 = "BROADCAST_HEARTBEAT_SECS",
    /// Seconds a new connection has to send its `Hello`.
    handshake_timeout_secs: f64 = "BROADCAST_HANDSHAKE_TIMEOUT_SECS",
    /// Seconds a closing connection may take to write what is queued for it.
    drain_timeout_secs: f64 = "BROADCAST_DRAIN_TIMEOUT_SECS",
    /// MiB of frames not yet fully received, across every connection; above it connections
    /// holding part of a frame are not read from until there is room.
    partial_frames_max_mib: usize = "BROADCAST_PARTIAL_FRAMES_MAX_MIB",
    /// Seconds a connection holding part of a frame may wait for room before it is closed.
    partial_frame_wait_secs: f64 = "BROADCAST_PARTIAL_FRAME_WAIT_SECS",
    /// Most subscriptions per connection.
    max_subscriptions: usize = "BROADCAST_MAX_SUBSCRIPTIONS",
    /// Most names in a group or channel list target.
    max_target_names: usize = "BROADCAST_MAX_TARGET_NAMES",
    /// Seconds a persistent delivery may stay unacknowledged before it is sent again.
    ack_timeout_secs: f64 = "BROADCAST_ACK_TIMEOUT_SECS",
    /// Deliveries of a persistent message to one recipient before its sender is told the
    /// attempts are exhausted.
    max_attempts: u32 = "BROADCAST_MAX_ATTEMPTS",
    /// Most unacknowledged persistent deliveries per recipient.
    max_unacked: usize = "BROADCAST_MAX_UNACKED",
    /// Most persistent messages of one connection waiting to be confirmed; beyond it the
    /// broker stops reading from the connection until some are.
    max_unconfirmed: usize = "BROADCAST_MAX_UNCONFIRMED",
    /// Seconds a persistent message without a time to live of its own is kept.
    default_ttl_secs: f64 = "BROADCAST_DEFAULT_TTL_SECS",
    /// Seconds a sender waits for room at a slower recipient before a non-persistent message
    /// to it fails as too slow.
    slow_consumer_wait_secs: f64 = "BROADCAST_SLOW_CONSUMER_WAIT_SECS",
    /// Seconds a disconnected client's subscriptions are remembered.
    session_expiry_secs: f64 = "BROADCAST_SESSION_EXPIRY_SECS",
    /// Seconds between looks for expired messages and sessions.
    expiry_interval_secs: f64 = "BROADCAST_EXPIRY_INTERVAL_SECS",
    /// Most messages queued for one recipient.
    queue_max_messages: u64 = "BROADCAST_QUEUE_MAX_MESSAGES",
    /// Most bytes queued for one recipient.
    queue_max_bytes: u64 = "BROADCAST_QUEUE_MAX_BYTES",
    /// Most messages kept for a channel with no subscriber.
    backlog_max_messages: u64 = "BROADCAST_BACKLOG_MAX_MESSAGES",
    /// Most bytes in the whole store.
    store_max_bytes: u64 = "BROADCAST_STORE_MAX_BYTES",
    /// Most bytes queued in one namespace, its clients' queues and channels' backlogs
    /// together (0: no limit but store_max_bytes).
    namespace_max_bytes: u64 = "BROADCAST_NAMESPACE_MAX_BYTES",
    /// How far a persistent message is made durable before it is confirmed: `device` (synced
    /// to the disk: survives a power cut) or `os` (written to the operating system: survives
    /// the broker's crash, not a power cut).
    store_sync: SyncMode = "BROADCAST_STORE_SYNC",
    /// MiB of the store kept cached in memory.
    store_cache_mib: u64 = "BROADCAST_STORE_CACHE_MIB",
    /// MiB kept free on the store's file system: below it persistent messages are refused
    /// until space returns (0: no reserve).
    store_min_free_mib: u64 = "BROADCAST_STORE_MIN_FREE_MIB",
}

const MIB: u64 = 1 << 20;

/// The end of the default file: credentials, none by default.
const AUTH_EXAMPLE: &str = "
# Credentials ([auth], this file only; re-read on SIGHUP). Without any, clients connect
# without credentials and the broker listens on loopback only (see allow_unauthenticated).
# `broadcast-broker token new --identity NAME` makes a token and prints its lines.
#
# [[auth.identities]]
# identity = \"billing\"
# namespace = \"tenant-a\"               # default: the default namespace
# tokens_sha256 = [\"...\"]
# [auth.identities.rights]               # patterns: `*` one segment, `>` the rest
# names = [\"billing\"]                    # default: the identity itself
# send_clients = [\">\"]                   # default: everyone; deny_send_clients wins
# send_channels = [\">\"]                  # deny_send_channels wins
# send_all = true
# subscribe = [\">\"]                      # deny_subscribe wins
#
# [[auth.jwt_keys]]                      # JWTs: sub, exp, rights and namespace in \"broadcast\"
# algorithm = \"EdDSA\"                    # EdDSA or RS256: public_key(_file); HS256: secret(_file)
# public_key_file = \"/etc/broadcast/jwt.pub.pem\"
#
# [auth]
# jwt_leeway_secs = 30
# revoked_jti = []
# revoked_before = {}                    # identity = Unix seconds: older JWTs refused
";

impl Default for Settings {
    fn default() -> Self {
        let c = Config::default();
        Self {
            listen: "127.0.0.1:7400".to_owned(),
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            http_listen: String::new(),
            http_tls: false,
            http_allowed_origins: String::new(),
            allow_unauthenticated: false,
            data_dir: c.data_dir,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            admin_listen: String::new(),
            admin_token: String::new(),
            max_connections: c.max_connections,
            max_connections_per_address: c.max_connections_per_address,
            connections_per_address_per_sec: c.connections_per_address_per_sec,
            max_auth_failures_per_address: c.max_auth_failures_per_address,
            auth_failure_block_secs: c.auth_failure_block.as_secs_f64(),
            max_connections_per_identity: c.max_connections_per_identity,
            max_pending_handshakes: c.max_pending_handshakes,
            max_pending_handshakes_per_address: c.max_pending_handshakes_per_address,
            publish_messages_per_sec: c.publish_messages_per_sec,
            publish_bytes_per_sec: c.publish_bytes_per_sec,
            max_payload: c.max_payload,
            outbound_frames: c.outbound_frames,
            outbound_bytes: c.outbound_bytes,
            heartbeat_secs: c.heartbeat.as_secs_f64(),
            handshake_timeout_secs: c.handshake_timeout.as_secs_f64(),
            drain_timeout_secs: c.drain_timeout.as_secs_f64(),
            partial_frames_max_mib: c.partial_frames_max_bytes / MIB as usize,
            partial_frame_wait_secs: c.partial_frame_wait.as_secs_f64(),
            max_subscriptions: c.max_subscriptions,
            max_target_names: c.max_target_names,
            ack_timeout_secs: c.ack_timeout.as_secs_f64(),
            max_attempts: c.max_attempts,
            max_unacked: c.max_unacked,
            max_unconfirmed: c.max_unconfirmed,
            default_ttl_secs: c.default_ttl.as_secs_f64(),
            slow_consumer_wait_secs: c.slow_consumer_wait.as_secs_f64(),
            session_expiry_secs: c.session_expiry.as_secs_f64(),
            expiry_interval_secs: c.expiry_interval.as_secs_f64(),
            queue_max_messages: c.queue_max_messages,
            queue_max_bytes: c.queue_max_bytes,
            backlog_max_messages: c.backlog_max_messages,
            store_max_bytes: c.store_max_bytes,
            namespace_max_bytes: c.namespace_max_bytes,
            store_sync: c.store_sync,
            store_cache_mib: c.store_cache_bytes / MIB,
            store_min_free_mib: c.store_min_free_bytes / MIB,
            auth: c.auth,
        }
    }
}

/// Settings that cannot be read or used.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The config file cannot be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key and where it is.
        message: String,
    },
    /// A setting is out of range.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The settings cannot be written as TOML.
    #[error("cannot write the settings as TOML: {0}")]
    Write(String),
}

impl Settings {
    /// Reads a config file: the defaults, with each key the file names replaced.
    ///
    /// # Errors
    /// [`SettingsError::Read`] or [`SettingsError::Parse`].
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| SettingsError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads settings from the text of a config file; the error names the key at fault.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The settings as a config file, without comments.
    ///
    /// # Errors
    /// [`SettingsError::Write`], which settings of these types never cause.
    pub fn to_toml(&self) -> Result<String, SettingsError> {
        toml::to_string(self).map_err(|e| SettingsError::Write(e.to_string()))
    }

    /// A config file of every setting with its default, each after a comment saying what it
    /// does.
    ///
    /// # Errors
    /// As [`Settings::to_toml`].
    pub fn default_file() -> Result<String, SettingsError> {
        let table = toml::Table::try_from(Settings::default())
            .map_err(|e| SettingsError::Write(e.to_string()))?;
        let mut out = String::from(
            "# Broadcast broker settings, each with its default.\n\
             #\n\
             # Each key may also be given as an environment variable (heartbeat_secs is\n\
             # BROADCAST_HEARTBEAT_SECS) or a flag (--heartbeat-secs). Flags win over the\n\
             # environment, and both over this file. A key left out keeps its default.\n",
        );
        for (key, doc) in KEYS {
            out.push('\n');
            for line in doc.lines() {
                let line = line.strip_prefix(' ').unwrap_or(line);
                let _ = writeln!(out, "#{}{line}", if line.is_empty() { "" } else { " " });
            }
            if let Some(value) = table.get(*key) {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        out.push_str(AUTH_EXAMPLE);
        Ok(out)
    }

    /// The settings with secrets replaced by `(set)`, to show.
    pub fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        if !shown.admin_token.is_empty() {
            shown.admin_token = "(set)".to_owned();
        }
        shown.auth = shown.auth.redacted();
        shown
    }

    /// The settings as JSON for reports, secrets left out.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.redacted()).unwrap_or_default()
    }

    /// The broker's [`Config`], checked.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting's key when one is out of range.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let config = Config {
            data_dir: self.data_dir.clone(),
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            connections_per_address_per_sec: self.connections_per_address_per_sec,
            max_auth_failures_per_address: self.max_auth_failures_per_address,
            auth_failure_block: secs("auth_failure_block_secs", self.auth_failure_block_secs)?,
            max_connections_per_identity: self.max_connections_per_identity,
            max_pending_handshakes: self.max_pending_handshakes,
            max_pending_handshakes_per_address: self.max_pending_handshakes_per_address,
            publish_messages_per_sec: self.publish_messages_per_sec,
            publish_bytes_per_sec: self.publish_bytes_per_sec,
            max_payload: self.max_payload,
            outbound_frames: self.outbound_frames,
            outbound_bytes: self.outbound_bytes,
            heartbeat: secs("heartbeat_secs", self.heartbeat_secs)?,
            handshake_timeout: secs("handshake_timeout_secs", self.handshake_timeout_secs)?,
            drain_timeout: secs("drain_timeout_secs", self.drain_timeout_secs)?,
            partial_frames_max_bytes: self.partial_frames_max_mib.saturating_mul(MIB as usize),
            partial_frame_wait: secs("partial_frame_wait_secs", self.partial_frame_wait_secs)?,
            max_subscriptions: self.max_subscriptions,
            max_target_names: self.max_target_names,
            ack_timeout: secs("ack_timeout_secs", self.ack_timeout_secs)?,
            max_attempts: self.max_attempts,
            max_unacked: self.max_unacked,
            max_unconfirmed: self.max_unconfirmed,
            default_ttl: secs("default_ttl_secs", self.default_ttl_secs)?,
            queue_max_messages: self.queue_max_messages,
            queue_max_bytes: self.queue_max_bytes,
            backlog_max_messages: self.backlog_max_messages,
            store_max_bytes: self.store_max_bytes,
            namespace_max_bytes: self.namespace_max_bytes,
            store_sync: self.store_sync,
            store_cache_bytes: self.store_cache_mib.saturating_mul(MIB),
            store_min_free_bytes: self.store_min_free_mib.saturating_mul(MIB),
            session_expiry: secs("session_expiry_secs", self.session_expiry_secs)?,
            expiry_interval: secs("expiry_interval_secs", self.expiry_interval_secs)?,
            slow_consumer_wait: secs("slow_consumer_wait_secs", self.slow_consumer_wait_secs)?,
            http_allowed_origins: self
                .http_allowed_origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            auth: self.auth.clone(),
        };
        config.validate().map_err(|e| ConfigError {
            field: key_of(e.field),
            reason: e.reason,
        })?;
        Ok(config)
    }
}

/// A number of seconds as a duration.
fn secs(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| ConfigError {
        field: key,
        reason: format!("{value} is not a number of seconds of zero or more"),
    })
}

/// The setting's key of a field of [`Config`].
fn key_of(field: &'static str) -> &'static str {
    match field {
        "heartbeat" => "heartbeat_secs",
        "handshake_timeout" => "handshake_timeout_secs",
        "drain_timeout" => "drain_timeout_secs",
        "partial_frames_max_bytes" => "partial_frames_max_mib",
        "partial_frame_wait" => "partial_frame_wait_secs",
        "ack_timeout" => "ack_timeout_secs",
        "default_ttl" => "default_ttl_secs",
        "store_cache_bytes" => "store_cache_mib",
        "store_min_free_bytes" => "store_min_free_mib",
        "session_expiry" => "session_expiry_secs",
        "expiry_interval" => "expiry_interval_secs",
        "slow_consumer_wait" => "slow_consumer_wait_secs",
        "auth_failure_block" => "auth_failure_block_secs",
        other => other,
    }
}

#[cfg(test)]
mod tests;
