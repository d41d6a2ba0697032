//! The Broadcast message broker, as a library.
//!
//! Named clients connect over TCP and send messages to one client, a group of clients, a
//! channel, several channels, a client within a channel, or everyone. Every delivery that cannot
//! be made produces a delivery-failed notice to the sender. The `broadcast-broker` binary is a
//! thin wrapper around [`Broker`]; a Rust service can embed the broker the same way, send
//! messages from it with a [`BrokerHandle`] and observe every message clients send.
//!
//! Modules:
//! - [`config`]: [`Config`], its defaults and validation.
//! - [`server`]: [`Broker`]: start on a bound listener, wait for shutdown.
//! - [`handle`]: [`BrokerHandle`]: publish as the broker, observe client messages.
//! - `listener`: the accept loop and the connection limit.
//! - `connection`: one task per connection: handshake, then frames in; `writer`: frames out.
//! - `outbound`: each connection's bounded outbound queue.
//! - `router`: who is connected and subscribed, and where each message goes.
//! - `encode`: frames encoded once and shared across a fan-out.
//! - `maps`: the hash maps of the hot paths, with a fast seeded hasher.
//! - `confirm`: the `Accepted` confirmation of a persistent message to its sender.
//! - `drain`: each connection's drainer of its queue; `sweeper`: expiry of messages and
//!   sessions.
//! - `persist`: the store's own thread, applying writes in groups; `flusher`: the thread that
//!   makes them durable before they are reported done.
//! - [`store`]: the message store: [`store::QueueStore`], on disk or in memory.
//! - [`error`]: the error type, [`BrokerError`].
#![forbid(unsafe_code)]

pub mod config;
mod confirm;
mod connection;
mod drain;
mod encode;
pub mod error;
mod flusher;
pub mod handle;
mod listener;
mod maps;
mod outbound;
mod persist;
mod router;
pub mod server;
pub mod store;
mod sweeper;
mod writer;

pub use config::{Config, ConfigError};
pub use error::BrokerError;
pub use handle::{BrokerHandle, Observed};
pub use server::Broker;

/// Sender name of messages that the broker itself sends (see [`BrokerHandle::publish`]).
pub const BROKER_SENDER: &str = "$broker";
