//! Who is connected, who subscribes to what, and where each message goes.
//!
//! The registry is one `std::sync::Mutex` held only for short, non-blocking work (lookups and
//! `try_push` into bounded queues), never across an `.await`. Every delivery that cannot be
//! made goes through [`Router::undeliverable`], the one place that decides what happens to a
//! message that cannot be delivered now.

use crate::encode::{self, DeliveryRef};
use crate::handle::Observed;
use crate::outbound::{Origin, OutFrame, Outbound, PushError};
use broadcast_protocol::{
    DeliveryFailed, ErrorCode, FailureReason, HEADER_LEN, Publish, Recipient, Target,
    validate_channel, validate_client_name, validate_id,
};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// Limits the router applies to what clients send.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_payload: usize,
    pub(crate) max_target_names: usize,
    pub(crate) max_subscriptions: usize,
}

/// A refusal of a request, reported to the client as an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug)]
struct Client {
    out: Outbound,
    subscriptions: HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<Arc<str>, Client>,
    channels: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

/// The registry and routing logic, shared by every connection.
#[derive(Debug)]
pub(crate) struct Router {
    state: Mutex<State>,
    limits: Limits,
    next_conn: AtomicU64,
    observers: broadcast::Sender<Arc<Observed>>,
}

/// `Deliver` frames of one message, encoded once per channel tag.
struct Encodings<'a> {
    sender: &'a str,
    msg: &'a Publish,
    cache: Vec<(Option<Arc<str>>, Bytes)>,
}

impl<'a> Encodings<'a> {
    fn new(sender: &'a str, msg: &'a Publish) -> Self {
        Self {
            sender,
            msg,
            cache: Vec::new(),
        }
    }

    fn get(&mut self, channel: Option<&Arc<str>>) -> Bytes {
        if let Some((_, b)) = self.cache.iter().find(|(c, _)| c.as_ref() == channel) {
            return b.clone();
        }
        let d = DeliveryRef {
            id: &self.msg.id,
            sender: self.sender,
            channel: channel.map(|c| &**c),
            name: self.msg.name.as_deref(),
            data: &self.msg.data,
            persistent: self.msg.persistent,
            redelivered: false,
            ack_tag: None,
        };
        // The publish frame was decoded within the frame cap and a delivery adds at most the
        // sender's and the channel's names, so it always fits the cap; per-recipient limits
        // are checked at delivery.
        let b = encode::deliver(&d).unwrap_or_default();
        self.cache.push((channel.cloned(), b.clone()));
        b
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // more than stopping the broker would, so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    pub(crate) fn new(limits: Limits) -> Self {
        let (observers, _) = broadcast::channel(1024);
        Self {
            state: Mutex::new(State::default()),
            limits,
            next_conn: AtomicU64::new(1),
            observers,
        }
    }

    /// A new connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Receivers of every message clients send.
    pub(crate) fn observe(&self) -> broadcast::Receiver<Arc<Observed>> {
        self.observers.subscribe()
    }

    /// Registers a connection under `name`, returning the connection it took the name from.
    pub(crate) fn register(&self, name: Arc<str>, out: Outbound) -> Option<Outbound> {
        let mut st = lock(&self.state);
        let old = st.clients.insert(
            name.clone(),
            Client {
                out,
                subscriptions: HashSet::new(),
            },
        );
        let old = old?;
        for ch in &old.subscriptions {
            remove_subscriber(&mut st.channels, ch, &name);
        }
        Some(old.out)
    }

    /// Removes a connection, unless its name has been taken over by a newer one.
    pub(crate) fn unregister(&self, name: &str, conn_id: u64) {
        let mut st = lock(&self.state);
        if st
            .clients
            .get(name)
            .is_none_or(|c| c.out.conn_id != conn_id)
        {
            return;
        }
        if let Some((name, c)) = st.clients.remove_entry(name) {
            for ch in &c.subscriptions {
                remove_subscriber(&mut st.channels, ch, &name);
            }
        }
    }

    /// Names of the connected clients.
    pub(crate) fn connected(&self) -> Vec<String> {
        lock(&self.state)
            .clients
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Subscribes the connection `conn_id` registered as `name` to `channel`.
    pub(crate) fn subscribe(&self, name: &str, conn_id: u64, channel: &str) -> Result<(), Refusal> {
        validate_channel(channel)
            .map_err(|e| Refusal::new(ErrorCode::InvalidName, e.to_string()))?;
        let mut st = lock(&self.state);
        let State { clients, channels } = &mut *st;
        let Some(client) = clients.get_mut(name) else {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "connection is not registered",
            ));
        };
        if client.out.conn_id != conn_id {
            return Err(Refusal::new(ErrorCode::Replaced, "connection was replaced"));
        }
        if client.subscriptions.contains(channel) {
            return Ok(());
        }
        if client.subscriptions.len() >= self.limits.max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {} subscriptions per connection",
                    self.limits.max_subscriptions
                ),
            ));
        }
        let ch: Arc<str> = Arc::from(channel);
        client.subscriptions.insert(ch.clone());
        channels.entry(ch).or_default().insert(Arc::from(name));
        Ok(())
    }

    /// Removes a subscription; removing one that does not exist is not an error.
    pub(crate) fn unsubscribe(&self, name: &str, conn_id: u64, channel: &str) {
        let mut st = lock(&self.state);
        let Some(client) = st.clients.get_mut(name) else {
            return;
        };
        if client.out.conn_id != conn_id || !client.subscriptions.remove(channel) {
            return;
        }
        remove_subscriber(&mut st.channels, channel, name);
    }

    /// Checks a message before routing it.
    pub(crate) fn validate(&self, msg: &Publish) -> Result<(), Refusal> {
        let invalid_name =
            |e: broadcast_protocol::NameError| Refusal::new(ErrorCode::InvalidName, e.to_string());
        validate_id(&msg.id).map_err(invalid_name)?;
        if msg.data.len() > self.limits.max_payload {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    msg.data.len(),
                    self.limits.max_payload
                ),
            ));
        }
        if let Some(name) = &msg.name {
            if name.len() > broadcast_protocol::names::MAX_NAME_LEN {
                return Err(Refusal::new(
                    ErrorCode::InvalidName,
                    "event name is too long",
                ));
            }
        }
        let list = |names: &[String], what: &str| -> Result<(), Refusal> {
            if names.is_empty() {
                return Err(Refusal::new(
                    ErrorCode::InvalidTarget,
                    format!("{what} is empty"),
                ));
            }
            if names.len() > self.limits.max_target_names {
                return Err(Refusal::new(
                    ErrorCode::InvalidTarget,
                    format!(
                        "{what} has {} names, the limit is {}",
                        names.len(),
                        self.limits.max_target_names
                    ),
                ));
            }
            Ok(())
        };
        match &msg.target {
            Target::Client(c) => validate_client_name(c).map_err(invalid_name),
            Target::Group(names) => {
                list(names, "group")?;
                names
                    .iter()
                    .try_for_each(|c| validate_client_name(c).map_err(invalid_name))
            }
            Target::Channel(c) => validate_channel(c).map_err(invalid_name),
            Target::Channels(names) => {
                list(names, "channel list")?;
                names
                    .iter()
                    .try_for_each(|c| validate_channel(c).map_err(invalid_name))
            }
            Target::ClientInChannel { client, channel } => {
                validate_client_name(client).map_err(invalid_name)?;
                validate_channel(channel).map_err(invalid_name)
            }
            Target::All => Ok(()),
        }
    }

    /// Routes a validated message from `sender`, returning a notice for every recipient that
    /// will not get it.
    pub(crate) fn route(&self, sender: &Arc<str>, msg: &Publish) -> Vec<DeliveryFailed> {
        if self.observers.receiver_count() > 0 && &**sender != crate::BROKER_SENDER {
            // A lagging observer loses old entries; it never slows routing.
            let _ = self.observers.send(Arc::new(Observed {
                sender: sender.to_string(),
                message: msg.clone(),
            }));
        }
        let origin = Arc::new(Origin {
            sender: sender.clone(),
            id: Arc::from(msg.id.as_str()),
        });
        let mut r = Routing {
            router: self,
            enc: Encodings::new(sender, msg),
            origin,
            failed: Vec::new(),
        };
        let st = lock(&self.state);
        match &msg.target {
            Target::Client(name) => match st.clients.get_key_value(name.as_str()) {
                Some((k, c)) => r.deliver(k, c, None),
                None => r.not_connected(name),
            },
            Target::Group(names) => {
                let mut seen = HashSet::with_capacity(names.len());
                for name in names.iter().filter(|n| seen.insert(n.as_str())) {
                    match st.clients.get_key_value(name.as_str()) {
                        Some((k, c)) => r.deliver(k, c, None),
                        None => r.not_connected(name),
                    }
                }
            }
            Target::Channel(channel) => {
                let mut any = false;
                if let Some((ch, subs)) = st.channels.get_key_value(channel.as_str()) {
                    for name in subs.iter().filter(|n| ***n != **sender) {
                        if let Some(c) = st.clients.get(name) {
                            any = true;
                            r.deliver(name, c, Some(ch));
                        }
                    }
                }
                if !any {
                    r.no_subscribers(Recipient::Channel(channel.clone()));
                }
            }
            Target::Channels(channels) => {
                let mut served: HashSet<&Arc<str>> = HashSet::new();
                let mut seen_channels = HashSet::with_capacity(channels.len());
                for channel in channels.iter().filter(|c| seen_channels.insert(c.as_str())) {
                    let mut any = false;
                    if let Some((ch, subs)) = st.channels.get_key_value(channel.as_str()) {
                        for name in subs.iter().filter(|n| ***n != **sender) {
                            if let Some(c) = st.clients.get(name) {
                                any = true;
                                if served.insert(name) {
                                    r.deliver(name, c, Some(ch));
                                }
                            }
                        }
                    }
                    if !any {
                        r.no_subscribers(Recipient::Channel(channel.clone()));
                    }
                }
            }
            Target::ClientInChannel { client, channel } => {
                match st.clients.get_key_value(client.as_str()) {
                    None => r.not_connected(client),
                    Some((k, c)) => match c.subscriptions.get(channel.as_str()) {
                        Some(ch) => r.deliver(k, c, Some(ch)),
                        None => r.fail(
                            Recipient::Client(client.clone()),
                            FailureReason::NotSubscribed,
                            format!("{client} is connected but not subscribed to {channel}"),
                        ),
                    },
                }
            }
            Target::All => {
                let mut any = false;
                for (name, c) in st.clients.iter().filter(|(n, _)| ***n != **sender) {
                    any = true;
                    r.deliver(name, c, None);
                }
                if !any {
                    r.no_subscribers(Recipient::All);
                }
            }
        }
        r.failed
    }

    /// The one place a message that cannot be delivered now ends up: its sender is told.
    pub(crate) fn undeliverable(
        &self,
        origin: &Origin,
        recipient: Recipient,
        reason: FailureReason,
        detail: String,
    ) -> DeliveryFailed {
        tracing::debug!(id = %origin.id, sender = %origin.sender, ?recipient, ?reason, "not delivered");
        DeliveryFailed {
            id: origin.id.to_string(),
            recipient,
            reason,
            detail,
            ack_tag: None,
        }
    }

    /// Sends a notice to a sender that is not the connection at hand (used when a queued
    /// frame could not be written). The sender's own queue is tried without waiting.
    pub(crate) fn notify(&self, sender: &str, notice: DeliveryFailed) {
        let st = lock(&self.state);
        let Some(c) = st.clients.get(sender) else {
            tracing::warn!(%sender, id = %notice.id, reason = ?notice.reason, "sender not connected, notice not delivered");
            return;
        };
        if c.out
            .try_push(OutFrame::control(encode::failed(notice)))
            .is_err()
        {
            tracing::warn!(%sender, "sender's queue is full, notice not delivered");
        }
    }
}

/// One message being routed: its encodings and the notices it has produced so far.
struct Routing<'a> {
    router: &'a Router,
    enc: Encodings<'a>,
    origin: Arc<Origin>,
    failed: Vec<DeliveryFailed>,
}

impl Routing<'_> {
    fn deliver(&mut self, name: &Arc<str>, client: &Client, channel: Option<&Arc<str>>) {
        let bytes = self.enc.get(channel);
        let recipient = || Recipient::Client(name.to_string());
        if bytes.len() - HEADER_LEN > client.out.max_frame {
            let detail = format!(
                "{name} accepts frames of at most {} bytes",
                client.out.max_frame
            );
            return self.fail(recipient(), FailureReason::TooLarge, detail);
        }
        let frame = OutFrame {
            bytes,
            origin: Some(self.origin.clone()),
        };
        match client.out.try_push(frame) {
            Ok(()) => {}
            Err(PushError::Full) => self.fail(
                recipient(),
                FailureReason::SlowConsumer,
                format!("{name} is not reading fast enough: its outbound queue is full"),
            ),
            Err(PushError::Closed) => self.fail(
                recipient(),
                FailureReason::NotConnected,
                format!("{name} disconnected"),
            ),
        }
    }

    fn not_connected(&mut self, name: &str) {
        let detail = format!("{name} is not connected");
        self.fail(
            Recipient::Client(name.to_owned()),
            FailureReason::NotConnected,
            detail,
        );
    }

    fn no_subscribers(&mut self, recipient: Recipient) {
        let detail = match &recipient {
            Recipient::Channel(c) => format!("channel {c} has no subscribers but the sender"),
            _ => "no other client is connected".to_owned(),
        };
        self.fail(recipient, FailureReason::NoSubscribers, detail);
    }

    fn fail(&mut self, recipient: Recipient, reason: FailureReason, detail: String) {
        let notice = self
            .router
            .undeliverable(&self.origin, recipient, reason, detail);
        self.failed.push(notice);
    }
}

fn remove_subscriber(channels: &mut HashMap<Arc<str>, HashSet<Arc<str>>>, ch: &str, name: &str) {
    if let Some(subs) = channels.get_mut(ch) {
        subs.remove(name);
        if subs.is_empty() {
            channels.remove(ch);
        }
    }
}
