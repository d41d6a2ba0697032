//! The Broadcast message broker, as a library.
//!
//! Named clients connect over TCP and send messages to one client, a group of clients, a
//! channel, several channels, a client within a channel, or everyone. Every delivery that cannot
//! be made produces a delivery-failed notice to the sender. The `broadcast-broker` binary is a
//! thin wrapper around [`Broker`]; a Rust service can embed the broker the same way, send
//! messages from it with a [`BrokerHandle`] and observe every message clients send.
//!
//! Modules: the routing core, the shell around it, and the store.
//! - [`core`]: every routing decision, as a deterministic state machine with no I/O.
//! - `engine`: the core under its lock, joined to the store; what connections call.
//! - `conn`: the connection side of the shell: accept loop, one task per connection, its
//!   writer, its drainer and its bounded outbound queue.
//! - `persist`: the store side of the shell: the store thread applying the core's writes in
//!   groups, and the flush thread that makes them durable before they are reported done.
//! - `sweeper`: the timer that expires messages and sessions.
//! - [`config`]: [`Config`], its defaults and validation.
//! - [`server`]: [`Broker`]: start on a bound listener, wait for shutdown.
//! - [`handle`]: [`BrokerHandle`]: publish as the broker, observe client messages.
//! - `encode`: frames encoded once and shared across a fan-out.
//! - `maps`: the hash maps of the hot paths, with a fast seeded hasher.
//! - [`store`]: the message store: [`store::QueueStore`], on disk or in memory.
//! - [`error`]: the error type, [`BrokerError`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
mod conn;
pub mod core;
mod encode;
mod engine;
pub mod error;
pub mod handle;
mod maps;
mod metrics;
mod namespace;
mod persist;
pub mod server;
pub mod settings;
pub mod store;
mod sweeper;
pub mod tls;
mod web;

pub use admin::AdminOptions;
pub use config::{Config, ConfigError, SyncMode};
pub use error::BrokerError;
pub use handle::{BrokerHandle, Observed};
pub use server::{Broker, Listeners};
pub use settings::{LogFormat, Overrides, Settings, SettingsError};

/// Sender name of messages that the broker itself sends (see [`BrokerHandle::publish`]).
pub const BROKER_SENDER: &str = "$broker";
