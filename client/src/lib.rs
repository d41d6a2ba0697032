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
//! - `driver` (private): the connection task; `connection` (private): connect and handshake;
//!   `backoff` (private): reconnect delays.
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

mod backoff;
pub mod client;
mod connection;
mod driver;
pub mod error;
pub mod events;
pub mod message;
pub mod options;
pub mod subscription;

pub use broadcast_protocol::{ErrorCode, FailureReason, Recipient, Target};
pub use client::Client;
pub use error::{ConnectError, SendError, SubscribeError};
pub use events::{Event, Events};
pub use message::{Message, OutgoingMessage};
pub use options::ConnectOptions;
pub use subscription::{DirectMessages, Subscription};
