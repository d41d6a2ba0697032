//! Where one message goes.

use super::{Client, Inflight, InflightKind, LIVE_TAG, QueueMeta, Router, State, lock, now_ms};
use crate::confirm::Confirm;
use crate::encode::{self, DeliveryRef};
use crate::maps::HashSet;
use crate::outbound::{OutFrame, Outbound, PushError};
use crate::persist::{Command, QueueAppend, Slot};
use crate::store::{QueueId, StoredEntry, StoredMessage};
use broadcast_protocol::{DeliveryFailed, FailureReason, HEADER_LEN, Publish, Recipient, Target};
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// `Deliver` frames of one non-persistent message, encoded once per channel tag.
struct Encodings<'a> {
    sender: &'a str,
    msg: &'a Publish,
    cache: Vec<(Option<Arc<str>>, Bytes)>,
}

impl<'a> Encodings<'a> {
    fn get(&mut self, channel: Option<&Arc<str>>) -> Bytes {
        if let Some((_, b)) = self.cache.iter().find(|(c, _)| c.as_ref() == channel) {
            return b.clone();
        }
        let b = deliver_frame(
            self.sender,
            self.msg,
            channel.map(|c| &**c),
            self.msg.resent,
            None,
        );
        self.cache.push((channel.cloned(), b.clone()));
        b
    }
}

/// Encodes a delivery of `msg`.
fn deliver_frame(
    sender: &str,
    msg: &Publish,
    channel: Option<&str>,
    redelivered: bool,
    ack_tag: Option<u64>,
) -> Bytes {
    let d = DeliveryRef {
        id: &msg.id,
        sender,
        channel,
        name: msg.name.as_deref(),
        data: &msg.data,
        persistent: msg.persistent,
        redelivered,
        ack_tag,
    };
    // The publish frame was decoded within the frame cap and a delivery adds at most the
    // sender's and the channel's names, so it always fits the cap; per-recipient limits are
    // checked at delivery.
    encode::deliver(&d).unwrap_or_default()
}

/// A non-persistent delivery that found its recipient's queue full. The sender's connection
/// waits a little for room (flow control for a recipient that is slower than its sender)
/// before it gives up and reports the recipient as too slow.
#[derive(Debug)]
pub(crate) struct Blocked {
    pub(crate) out: Outbound,
    pub(crate) frame: OutFrame,
    pub(crate) notice: DeliveryFailed,
}

/// What routing one message produced.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Notices for recipients that will not get the message.
    pub(crate) failed: Vec<DeliveryFailed>,
    /// Deliveries waiting for room; each carries the notice to send if none comes.
    pub(crate) blocked: Vec<Blocked>,
}

/// One message being routed: its encodings, what it puts in the store, and the notices it has
/// produced so far.
struct Routing<'a> {
    router: &'a Router,
    sender: &'a Arc<str>,
    msg: &'a Publish,
    enc: Encodings<'a>,
    failed: Vec<DeliveryFailed>,
    blocked: Vec<Blocked>,
    confirm: Option<Arc<Confirm>>,
    appends: Vec<QueueAppend>,
    expires_at_ms: u64,
}

impl Router {
    /// Routes a validated message that is not kept (non-persistent, or sent by the broker
    /// itself) from `sender`, returning a notice for every recipient that will not get it.
    /// Persistent messages go through [`Router::route_persistent`].
    pub(crate) fn route(&self, sender: &Arc<str>, msg: &Publish) -> Routed {
        self.notify_observers(sender, msg);
        let mut appends = Vec::new();
        // Only a message that may be kept needs the clock, for its expiry.
        let now = if msg.persistent { now_ms() } else { 0 };
        let routed =
            self.route_locked(&mut lock(&self.state), sender, msg, None, now, &mut appends);
        debug_assert!(
            appends.is_empty(),
            "a message without confirmation is not kept"
        );
        routed
    }

    /// Routes a run of validated persistent messages from `sender`, each with its confirmation
    /// at the same position in `confirms`, under one hold of the router's lock and through one
    /// reserved store `slot`: what each one puts in the store goes in a single command, in
    /// order. Returns what routing each message produced, in order; the caller sends the
    /// notices, then settles the router's hold on each confirmation.
    pub(crate) fn route_persistent(
        &self,
        sender: &Arc<str>,
        msgs: &[Publish],
        confirms: &[Arc<Confirm>],
        slot: Option<Slot>,
    ) -> Vec<Routed> {
        for msg in msgs {
            self.notify_observers(sender, msg);
        }
        let mut appends = Vec::new();
        // One clock read for the run: its messages arrived together.
        let now = now_ms();
        let mut st = lock(&self.state);
        let routed = msgs
            .iter()
            .zip(confirms)
            .map(|(msg, confirm)| {
                let confirm = Some(confirm.clone());
                self.route_locked(&mut st, sender, msg, confirm, now, &mut appends)
            })
            .collect();
        // Sent before the lock is released: a drainer that saw these decisions reads the queue
        // only after the store has them.
        send_appends(slot, appends);
        drop(st);
        routed
    }

    /// Hands a copy of a client's message to the observers, if any.
    fn notify_observers(&self, sender: &Arc<str>, msg: &Publish) {
        if self.observers.receiver_count() > 0 && &**sender != crate::BROKER_SENDER {
            // A lagging observer loses old entries; it never slows routing.
            let _ = self.observers.send(Arc::new(crate::handle::Observed {
                sender: sender.to_string(),
                message: msg.clone(),
            }));
        }
    }

    /// Routes one message that arrived at `now` (milliseconds since the Unix epoch) with the
    /// router's state locked, adding what it puts in the store to `appends`.
    fn route_locked(
        &self,
        st: &mut State,
        sender: &Arc<str>,
        msg: &Publish,
        confirm: Option<Arc<Confirm>>,
        now: u64,
        appends: &mut Vec<QueueAppend>,
    ) -> Routed {
        // Only a message that may be kept has an expiry.
        let expires_at_ms = if msg.persistent {
            let ttl = msg
                .ttl_ms
                .unwrap_or(self.config.default_ttl.as_millis() as u64);
            now.saturating_add(ttl)
        } else {
            u64::MAX
        };
        let mut r = Routing {
            router: self,
            sender,
            msg,
            enc: Encodings {
                sender,
                msg,
                cache: Vec::new(),
            },
            failed: Vec::new(),
            blocked: Vec::new(),
            confirm: if msg.persistent { confirm } else { None },
            appends: std::mem::take(appends),
            expires_at_ms,
        };
        match &msg.target {
            Target::Client(name) => r.for_client(st, name, None),
            Target::Group(names) => {
                let mut seen = HashSet::with_capacity_and_hasher(names.len(), Default::default());
                for name in names.iter().filter(|n| seen.insert(n.as_str())) {
                    r.for_client(st, name, None);
                }
            }
            Target::Channel(channel) => r.for_channels(st, std::slice::from_ref(channel)),
            Target::Channels(channels) => r.for_channels(st, channels),
            Target::ClientInChannel { client, channel } => {
                let subscribed = st
                    .sessions
                    .get(client.as_str())
                    .and_then(|s| s.channels.get(channel.as_str()))
                    .cloned();
                match subscribed {
                    Some(ch) => r.for_client(st, client, Some(&ch)),
                    None if st.clients.contains_key(client.as_str()) || !msg.persistent => {
                        let reason = if st.clients.contains_key(client.as_str()) {
                            FailureReason::NotSubscribed
                        } else {
                            FailureReason::NotConnected
                        };
                        let detail = match reason {
                            FailureReason::NotSubscribed => {
                                format!("{client} is connected but not subscribed to {channel}")
                            }
                            _ => format!("{client} is not connected"),
                        };
                        r.fail(Recipient::Client(client.clone()), reason, detail);
                    }
                    // Not connected and not known to subscribe: keep it for the client, tagged
                    // with the channel, as for any client named directly.
                    None => {
                        let ch: Arc<str> = Arc::from(channel.as_str());
                        r.for_client(st, client, Some(&ch));
                    }
                }
            }
            Target::All => {
                let names: Vec<Arc<str>> = st
                    .clients
                    .keys()
                    .filter(|n| ***n != **sender)
                    .cloned()
                    .collect();
                if names.is_empty() {
                    r.no_subscribers(Recipient::All);
                }
                for name in names {
                    r.for_client(st, &name, None);
                }
            }
        }
        *appends = std::mem::take(&mut r.appends);
        Routed {
            failed: r.failed,
            blocked: r.blocked,
        }
    }
}

/// Sends what routing put in the store through the reserved slot (releasing the slot when
/// there is nothing). Called with the router's state locked, so that the store applies the
/// writes of every decision a drainer has seen before that drainer's next read; sending
/// through a reserved slot never waits.
fn send_appends(slot: Option<Slot>, appends: Vec<QueueAppend>) {
    match slot {
        Some(slot) if !appends.is_empty() => {
            slot.send(Command::Append(appends));
        }
        _ => debug_assert!(
            appends.is_empty(),
            "persistent routing without a store slot"
        ),
    }
}

impl Routing<'_> {
    fn for_channels(&mut self, st: &mut State, channels: &[String]) {
        let mut served: HashSet<Arc<str>> = HashSet::default();
        let mut seen = HashSet::with_capacity_and_hasher(channels.len(), Default::default());
        for channel in channels.iter().filter(|c| seen.insert(c.as_str())) {
            let Some((ch, subs)) = st.channels.get_key_value(channel.as_str()) else {
                self.no_subscriber_at_all(st, channel);
                continue;
            };
            let ch = ch.clone();
            let others: Vec<Arc<str>> = subs
                .iter()
                .filter(|n| ***n != **self.sender)
                .cloned()
                .collect();
            if others.is_empty() {
                self.no_subscriber_at_all(st, channel);
                continue;
            }
            for name in others {
                // A client subscribed to several of the channels gets the message once; with
                // one channel there is nobody to count twice.
                if channels.len() == 1 || served.insert(name.clone()) {
                    self.for_client(st, &name, Some(&ch));
                }
            }
        }
    }

    /// A channel nobody (but perhaps the sender) subscribes to: a persistent message waits in
    /// the channel's backlog for the first subscriber.
    fn no_subscriber_at_all(&mut self, st: &mut State, channel: &str) {
        if self.confirm.is_none() {
            return self.no_subscribers(Recipient::Channel(channel.to_owned()));
        }
        let entry = self.stored(Some(channel));
        let queue = QueueId::Backlog(channel.to_owned());
        let limit = self.router.config.backlog_max_messages;
        self.enqueue(st, queue, entry, limit);
    }

    fn for_client(&mut self, st: &mut State, name: &str, channel: Option<&Arc<str>>) {
        let persistent = self.confirm.is_some();
        let Some(client) = st.clients.get_mut(name) else {
            if persistent {
                let entry = self.stored(channel.map(|c| &**c));
                let limit = self.router.config.queue_max_messages;
                return self.enqueue(st, QueueId::Client(name.to_owned()), entry, limit);
            }
            return self.not_connected(name);
        };
        if !persistent {
            return self.deliver_now(client, channel);
        }
        let key = client.name.clone();
        let window_full = client.inflight.len() >= self.router.config.max_unacked;
        if client.queue_mode || window_full || !self.live(&key, client, channel) {
            client.queue_mode = true;
            let entry = self.stored(channel.map(|c| &**c));
            let limit = self.router.config.queue_max_messages;
            self.enqueue(st, QueueId::Client(String::from(&*key)), entry, limit);
        }
    }

    /// Hands a non-persistent message to a connected client, or says why not.
    fn deliver_now(&mut self, client: &Client, channel: Option<&Arc<str>>) {
        let name = &client.name;
        let bytes = self.enc.get(channel);
        let recipient = || Recipient::Client(name.to_string());
        if bytes.len() - HEADER_LEN > client.out.max_frame {
            let detail = format!(
                "{name} accepts frames of at most {} bytes",
                client.out.max_frame
            );
            return self.fail(recipient(), FailureReason::TooLarge, detail);
        }
        let frame = OutFrame::at_most_once(bytes.clone());
        match client.out.try_push(frame) {
            Ok(()) => {}
            Err(PushError::Full) => {
                let detail =
                    format!("{name} is not reading fast enough: its outbound queue is full");
                if client.out.is_stalled() {
                    return self.fail(recipient(), FailureReason::SlowConsumer, detail);
                }
                let notice = self.router.undeliverable(
                    self.sender,
                    &self.msg.id,
                    recipient(),
                    FailureReason::SlowConsumer,
                    detail,
                );
                let frame = OutFrame::at_most_once(bytes);
                self.blocked.push(Blocked {
                    out: client.out.clone(),
                    frame,
                    notice,
                });
            }
            Err(PushError::Closed) => self.fail(
                recipient(),
                FailureReason::NotConnected,
                format!("{name} disconnected"),
            ),
        }
    }

    /// Hands a persistent message straight to a connected client with an acknowledgement tag.
    /// Returns false when it must be queued instead (the connection has no room or is closing).
    fn live(&mut self, name: &Arc<str>, client: &mut Client, channel: Option<&Arc<str>>) -> bool {
        let tag = LIVE_TAG | client.next_live_tag;
        let bytes = deliver_frame(
            self.sender,
            self.msg,
            channel.map(|c| &**c),
            self.msg.resent,
            Some(tag),
        );
        if bytes.len() - HEADER_LEN > client.out.max_frame {
            let detail = format!(
                "{name} accepts frames of at most {} bytes",
                client.out.max_frame
            );
            self.fail(
                Recipient::Client(name.to_string()),
                FailureReason::TooLarge,
                detail,
            );
            return true;
        }
        if client.out.try_push(OutFrame::control(bytes)).is_err() {
            return false;
        }
        client.next_live_tag += 1;
        let Some(confirm) = self.confirm.clone() else {
            return true;
        };
        confirm.add();
        let StoredEntry::Message(entry) = self.stored(channel.map(|c| &**c)) else {
            unreachable!("stored() makes messages")
        };
        let deadline = Instant::now() + self.router.config.ack_timeout;
        let what = InflightKind::Live { entry, confirm };
        client.inflight.insert(
            tag,
            Inflight {
                what,
                attempts: 1,
                deadline,
            },
        );
        client.wake.notify_one();
        true
    }

    /// Decides that a persistent message waits in `queue`, within its limits.
    fn enqueue(&mut self, st: &mut State, queue: QueueId, entry: StoredEntry, max_messages: u64) {
        // Named only when it will not get the message.
        let recipient = || match &queue {
            QueueId::Client(name) => Recipient::Client(name.clone()),
            QueueId::Backlog(channel) => Recipient::Channel(channel.clone()),
        };
        if self.router.persist.is_failed() {
            let detail = "the message store is unavailable; persistent messages are refused";
            return self.fail(
                recipient(),
                FailureReason::StoreUnavailable,
                detail.to_owned(),
            );
        }
        let size = entry.size();
        let cfg = &self.router.config;
        let meta = st.queues.get(&queue);
        let (pending, bytes) = meta.map_or((0, 0), |m: &QueueMeta| (m.pending, m.bytes));
        let full = if pending >= max_messages {
            Some(format!(
                "the queue of {queue} holds its limit of {max_messages} messages"
            ))
        } else if bytes.saturating_add(size) > cfg.queue_max_bytes {
            Some(format!(
                "the queue of {queue} holds its limit of {} bytes",
                cfg.queue_max_bytes
            ))
        } else if st.stored_bytes.saturating_add(size) > cfg.store_max_bytes {
            Some(format!(
                "the store holds its limit of {} bytes",
                cfg.store_max_bytes
            ))
        } else {
            None
        };
        if let Some(detail) = full {
            return self.fail(recipient(), FailureReason::QueueFull, detail);
        }
        self.router.count_enqueued(st, &queue, &entry);
        let Some(confirm) = self.confirm.clone() else {
            return;
        };
        confirm.add();
        QueueAppend::push_to(&mut self.appends, queue, entry, Some(confirm));
    }

    fn stored(&self, channel: Option<&str>) -> StoredEntry {
        StoredEntry::Message(StoredMessage {
            id: self.msg.id.clone(),
            sender: String::from(&**self.sender),
            channel: channel.map(str::to_owned),
            name: self.msg.name.clone(),
            data: self.msg.data.clone(),
            expires_at_ms: self.expires_at_ms,
            redelivered: self.msg.resent,
        })
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
        let notice =
            self.router
                .undeliverable(self.sender, &self.msg.id, recipient, reason, detail);
        self.failed.push(notice);
    }
}
