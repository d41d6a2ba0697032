//! Async client for the Broadcast message broker.
//!
//! A [`Client`] connects to a broker, then keeps the connection up by itself: it reconnects
//! with exponential backoff and full jitter, registers again under the same name, resubscribes
//! every live [`Subscription`], and sends the messages buffered meanwhile, in order.
//!
//! One background task owns the socket. `Client` handles (cheap to clone) send it commands
//! through a bounded channel, so [`Client::send`] waits when the send buffer is full and
//! [`Client::try_send`] fails instead. Received messages go to bounded streams: when one is
//! full the task stops reading, and the broker feels the backpressure through TCP.
//!
//! Modules:
//! - [`options`]: [`ConnectOptions`], the builder of every setting and its default.
//! - [`client`]: [`Client`], the handle: send, subscribe, flush, close.
//! - [`message`]: [`OutgoingMessage`] (builder) and [`Message`] (received).
//! - [`subscription`]: the [`Subscription`] and [`DirectMessages`] streams, and routing.
//! - [`events`]: [`Event`] and the [`Events`] stream.
//! - [`error`]: [`ConnectError`], [`SendError`], [`SubscribeError`].
//! - `command` (private): what the handles ask of the connection task;
//!   `task` (private): the connection task, its loop, its outgoing half (what the client
//!   writes), its incoming half (what the broker sends) and its subscriptions;
//!   `connector` (private): connect, handshake, first connection and reconnections;
//!   `connection` (private): a connection's framed halves; `inbound` (private): decoding
//!   deliveries; `backoff` (private): reconnect delays; `unconfirmed` (private): the persistent
//!   messages awaiting confirmation; `ack` (private): acknowledgement batches and the duplicate
//!   window; `index` (private): the hash index both find their entries with.
//!
//! # Persistent messages and acknowledgements
//!
//! Messages are persistent by default ([`OutgoingMessage::persistent`]). The broker confirms
//! each persistent message with [`Event::Accepted`] once it is safe: acknowledged by every
//! recipient it was handed to, and stored for every recipient it is queued for (any
//! [`Event::DeliveryFailed`] about it comes first).
//!
//! **Sending.** The client keeps every persistent message it has queued for the connection
//! until the broker confirms it. When the connection is lost, it sends the unconfirmed ones
//! again after reconnecting and resubscribing, in their original order and before any newer
//! message, marked as resent (their recipients get them with [`Message::redelivered`] set).
//! Nothing handed to [`Client::send`] is lost across disconnections. At most
//! [`ConnectOptions::max_unconfirmed`] messages (4096 by default) wait for confirmation: at
//! the limit the client stops taking messages from the send buffer, so `send` waits and
//! `try_send` fails with [`SendError::BufferFull`] once the buffer is full too.
//! [`Client::send_confirmed`] resolves when the message is confirmed. [`Client::close`] waits
//! up to [`ConnectOptions::close_timeout`] (5 s by default) for outstanding confirmations, and
//! reports each message still unconfirmed as [`Event::Unconfirmed`]: such a message may or may
//! not have been delivered.
//!
//! **Receiving.** The broker wants persistent deliveries acknowledged (they carry
//! [`Message::ack_tag`]), and hands unacknowledged ones over again after a timeout or a
//! reconnection. By default the client acknowledges a delivery when the application takes it
//! from its [`Subscription`] or [`DirectMessages`] stream; with
//! [`ConnectOptions::manual_ack`] the application calls [`Client::ack`] once it has dealt with
//! the message. Acknowledgements are batched: they travel with the next frame the client writes,
//! as soon as 1,024 of them wait, or a few milliseconds later at the latest. A delivery failure the broker kept for this client
//! while it was away is acknowledged when its [`Event::DeliveryFailed`] is raised.
//!
//! **Duplicates.** The client remembers the sender and id of the latest messages it handed to
//! the application's streams ([`ConnectOptions::dedup_window`], 16,384 by default) and drops
//! a redelivered copy of any of them, acknowledging it at once. In the normal case the
//! application therefore sees each message once, even across reconnections. A redelivery of a
//! message outside the window (for example after the client itself restarted) is passed on,
//! with [`Message::redelivered`] set: applications that must not act twice should check it.
//! A message counts as handed over once it is in a stream's buffer, read or not.
//!
//! ```no_run
//! use broadcast_client::{ConnectOptions, OutgoingMessage};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ConnectOptions::new()
//!     .name("worker")
//!     .manual_ack(true)
//!     .connect("127.0.0.1:7400")
//!     .await?;
//! client.send_confirmed(OutgoingMessage::to_client("billing", "invoice 17")).await?;
//!
//! let mut jobs = client.subscribe("jobs").await?;
//! while let Some(job) = jobs.next().await {
//!     if job.redelivered {
//!         // Possibly seen before (outside the duplicate window): check before acting.
//!     }
//!     // ... do the job, then:
//!     client.ack(&job);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The library emits `tracing` events, within a `client_conn` span per connection attempt,
//! but never installs a subscriber.
//!
//! # Example
//!
//! ```no_run
//! use broadcast_client::{ConnectOptions, Event, OutgoingMessage};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ConnectOptions::new().name("alice").connect("127.0.0.1:7400").await?;
//! let mut events = client.events();
//! let mut news = client.subscribe("news").await?;
//!
//! client.send(OutgoingMessage::to_channel("news", "hello, subscribers")).await?;
//! client.send(OutgoingMessage::to_client("bob", "hello, bob")).await?;
//! client.flush().await?;
//!
//! tokio::select! {
//!     Some(msg) = news.next() => println!("{} says {:?}", msg.sender, msg.data),
//!     Some(Event::DeliveryFailed { id, reason, .. }) = events.next() => {
//!         println!("{id} not delivered: {reason:?}");
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod ack;
mod backoff;
pub mod client;
mod command;
mod connection;
mod connector;
pub mod error;
pub mod events;
mod inbound;
mod index;
pub mod message;
pub mod options;
mod refresh;
pub mod subscription;
mod task;
pub mod tls;
mod unconfirmed;

pub use broadcast_protocol::{ErrorCode, FailureReason, Recipient, Target};
pub use client::Client;
pub use error::{ConnectError, ReauthError, SendError, SubscribeError};
pub use events::{Event, Events};
pub use message::{Message, OutgoingMessage};
pub use options::{ConnectOptions, TokenRefresh};
/// The TLS library the client uses, for [`ConnectOptions::tls`].
pub use rustls;
pub use subscription::{DirectMessages, Subscription};
