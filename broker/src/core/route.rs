//! Where one message goes: to each recipient's connection now, into a queue in the store, or
//! to a notice for its sender.

use super::confirm::{ConfirmId, NewConfirm};
use super::notices::undeliverable;
use super::ops::{QueueAppend, StoreOp};
use super::outlet::{OutFrame, Outlet, PushError};
use super::{Client, Core, Inflight, InflightKind, LIVE_TAG, Now, Refusal, State};
use crate::config::Config;
use crate::encode::{self, DeliveryRef};
use crate::maps::HashSet;
use crate::store::{QueueId, StoredEntry, StoredMessage};
use broadcast_protocol::{
    DeliveryFailed, ErrorCode, FailureReason, HEADER_LEN, Publish, Recipient, Target,
    validate_channel, validate_client_name, validate_id,
};
use bytes::Bytes;
use std::sync::Arc;

/// A non-persistent delivery that found its recipient's queue full. The sender's connection
/// waits a little for room (flow control for a recipient that is slower than its sender)
/// before it gives up and reports the recipient as too slow.
#[derive(Debug)]
pub struct Blocked<O> {
    /// The recipient's connection.
    pub out: O,
    /// The delivery.
    pub frame: OutFrame,
    /// The notice to send the sender if no room comes.
    pub notice: DeliveryFailed,
}

/// What routing one message produced.
#[derive(Debug)]
pub struct Routed<O> {
    /// Notices for recipients that will not get the message.
    pub failed: Vec<DeliveryFailed>,
    /// Deliveries waiting for room; each carries the notice to send if none comes.
    pub blocked: Vec<Blocked<O>>,
    /// A persistent message with notices: its confirmation waits until the caller has sent
    /// them and calls [`Core::release`], so that the notices precede `Accepted`.
    pub hold: Option<ConfirmId>,
}

impl<O> Default for Routed<O> {
    fn default() -> Self {
        Self {
            failed: Vec::new(),
            blocked: Vec::new(),
            hold: None,
        }
    }
}

/// `Deliver` frames of one non-persistent message, encoded once per channel tag.
struct Encodings<'a> {
    sender: &'a str,
    msg: &'a Publish,
    cache: Vec<(Option<Arc<str>>, Bytes)>,
}

impl Encodings<'_> {
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

/// One message being routed: its encodings, what it puts in the store, and the notices it has
/// produced so far.
struct Routing<'a, O> {
    cfg: &'a Config,
    now: Now,
    sender: &'a Arc<str>,
    msg: &'a Publish,
    enc: Encodings<'a>,
    failed: Vec<DeliveryFailed>,
    blocked: Vec<Blocked<O>>,
    confirm: Option<ConfirmId>,
    appends: Vec<QueueAppend>,
    expires_at_ms: u64,
    /// Deliveries handed to connections.
    delivered: u64,
}

/// Checks a message before routing it.
pub fn validate(config: &Config, msg: &Publish) -> Result<(), Refusal> {
    let invalid_name =
        |e: broadcast_protocol::NameError| Refusal::new(ErrorCode::InvalidName, e.to_string());
    validate_id(&msg.id).map_err(invalid_name)?;
    if msg.data.len() > config.max_payload as usize {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                msg.data.len(),
                config.max_payload
            ),
        ));
    }
    if msg
        .name
        .as_ref()
        .is_some_and(|n| n.len() > broadcast_protocol::names::MAX_NAME_LEN)
    {
        return Err(Refusal::new(
            ErrorCode::InvalidName,
            "event name is too long",
        ));
    }
    let max = config.max_target_names;
    let list = |names: &[String], what: &str| -> Result<(), Refusal> {
        if names.is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidTarget,
                format!("{what} is empty"),
            ));
        }
        if names.len() > max {
            return Err(Refusal::new(
                ErrorCode::InvalidTarget,
                format!("{what} has {} names, the limit is {max}", names.len()),
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

impl<O: Outlet> Core<O> {
    /// Routes a validated message that is not kept (non-persistent, or sent by the broker
    /// itself) from `sender`. Persistent messages go through [`Core::route_persistent`].
    pub fn route(&mut self, now: Now, sender: &Arc<str>, msg: &Publish) -> Routed<O> {
        let Core { config, st } = self;
        let mut appends = Vec::new();
        let routed = route_one(config, st, now, sender, msg, None, &mut appends);
        debug_assert!(
            appends.is_empty(),
            "a message without confirmation is not kept"
        );
        routed
    }

    /// Routes a run of validated persistent messages from `sender`, each with its
    /// confirmation (to `to`, the sender's connection) at the same position in `confirms`:
    /// what they put in the store goes in a single write, in order. Returns what routing each
    /// message produced, in order; a message with notices keeps its confirmation held until
    /// [`Core::release`].
    pub fn route_persistent(
        &mut self,
        now: Now,
        sender: &Arc<str>,
        to: &O,
        msgs: &[Publish],
        confirms: Vec<NewConfirm<O>>,
    ) -> Vec<Routed<O>> {
        debug_assert_eq!(msgs.len(), confirms.len());
        let Core { config, st } = self;
        let mut appends = Vec::new();
        let routed = msgs
            .iter()
            .zip(confirms)
            .map(|(msg, new)| {
                let id = st.confirms.open(to.clone(), new);
                let mut routed = route_one(config, st, now, sender, msg, Some(id), &mut appends);
                if routed.failed.is_empty() {
                    // Nothing to tell first: routing's hold is released at once.
                    st.confirms.settle(id);
                } else {
                    routed.hold = Some(id);
                }
                routed
            })
            .collect();
        if !appends.is_empty() {
            st.ops.push(StoreOp::Append(appends));
        }
        routed
    }

    /// Releases routing's hold on a confirmation, once the notices routing produced are sent.
    pub fn release(&mut self, id: ConfirmId) {
        self.st.confirms.settle(id);
    }
}

/// Routes one message that arrived at `now`, adding what it puts in the store to `appends`.
fn route_one<O: Outlet>(
    cfg: &Config,
    st: &mut State<O>,
    now: Now,
    sender: &Arc<str>,
    msg: &Publish,
    confirm: Option<ConfirmId>,
    appends: &mut Vec<QueueAppend>,
) -> Routed<O> {
    // Only a message that may be kept has an expiry.
    let expires_at_ms = if msg.persistent {
        let ttl = msg.ttl_ms.unwrap_or(cfg.default_ttl.as_millis() as u64);
        now.wall_ms.saturating_add(ttl)
    } else {
        u64::MAX
    };
    let mut r = Routing {
        cfg,
        now,
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
        delivered: 0,
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
            // Everyone connected in the sender's namespace.
            let ns = crate::namespace::namespace_of(sender);
            let names: Vec<Arc<str>> = st
                .clients
                .keys()
                .filter(|n| ***n != **sender && crate::namespace::namespace_of(n) == ns)
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
    st.stats.published(&msg.target, msg.persistent);
    st.stats.delivered += r.delivered;
    if msg.resent {
        // Delivered marked as redelivered: its sender sent it again after losing a connection.
        st.stats.redelivered += r.delivered;
    }
    for notice in &r.failed {
        st.stats.failed(notice.reason);
    }
    Routed {
        failed: r.failed,
        blocked: r.blocked,
        hold: None,
    }
}

impl<O: Outlet> Routing<'_, O> {
    fn for_channels(&mut self, st: &mut State<O>, channels: &[String]) {
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
    fn no_subscriber_at_all(&mut self, st: &mut State<O>, channel: &str) {
        if self.confirm.is_none() {
            return self.no_subscribers(Recipient::Channel(channel.to_owned()));
        }
        let entry = self.stored(Some(channel));
        let queue = QueueId::Backlog(channel.to_owned());
        let limit = self.cfg.backlog_max_messages;
        self.enqueue(st, queue, entry, limit);
    }

    fn for_client(&mut self, st: &mut State<O>, name: &str, channel: Option<&Arc<str>>) {
        let persistent = self.confirm.is_some();
        let Some(client) = st.clients.get_mut(name) else {
            if persistent {
                let entry = self.stored(channel.map(|c| &**c));
                let limit = self.cfg.queue_max_messages;
                return self.enqueue(st, QueueId::Client(name.to_owned()), entry, limit);
            }
            return self.not_connected(name);
        };
        if !persistent {
            return self.deliver_now(client, channel);
        }
        let window_full = client.inflight.len() >= self.cfg.max_unacked;
        if client.queue_mode || window_full || !self.live(client, &mut st.confirms, channel) {
            client.queue_mode = true;
            let key = client.name.clone();
            let entry = self.stored(channel.map(|c| &**c));
            let limit = self.cfg.queue_max_messages;
            self.enqueue(st, QueueId::Client(String::from(&*key)), entry, limit);
        }
    }

    /// Hands a non-persistent message to a connected client, or says why not.
    fn deliver_now(&mut self, client: &Client<O>, channel: Option<&Arc<str>>) {
        let name = &client.name;
        let bytes = self.enc.get(channel);
        let recipient = || Recipient::Client(name.to_string());
        let max_frame = client.out.max_frame();
        if bytes.len() - HEADER_LEN > max_frame {
            let detail = format!("{name} accepts frames of at most {max_frame} bytes");
            return self.fail(recipient(), FailureReason::TooLarge, detail);
        }
        let frame = OutFrame::at_most_once(bytes.clone());
        match client.out.try_push(frame) {
            Ok(()) => self.delivered += 1,
            Err(PushError::Full) => {
                let detail =
                    format!("{name} is not reading fast enough: its outbound queue is full");
                if client.out.is_stalled() {
                    return self.fail(recipient(), FailureReason::SlowConsumer, detail);
                }
                let notice = undeliverable(
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
    fn live(
        &mut self,
        client: &mut Client<O>,
        confirms: &mut super::confirm::Confirms<O>,
        channel: Option<&Arc<str>>,
    ) -> bool {
        let tag = LIVE_TAG | client.next_live_tag;
        let bytes = deliver_frame(
            self.sender,
            self.msg,
            channel.map(|c| &**c),
            self.msg.resent,
            Some(tag),
        );
        let max_frame = client.out.max_frame();
        if bytes.len() - HEADER_LEN > max_frame {
            let detail = format!(
                "{} accepts frames of at most {max_frame} bytes",
                client.name
            );
            self.fail(
                Recipient::Client(client.name.to_string()),
                FailureReason::TooLarge,
                detail,
            );
            return true;
        }
        if client.out.try_push(OutFrame::control(bytes)).is_err() {
            return false;
        }
        self.delivered += 1;
        client.next_live_tag += 1;
        let Some(confirm) = self.confirm else {
            return true;
        };
        confirms.add(confirm);
        let StoredEntry::Message(entry) = self.stored(channel.map(|c| &**c)) else {
            unreachable!("stored() makes messages")
        };
        let deadline = self.now.mono_ms + self.cfg.ack_timeout.as_millis() as u64;
        let what = InflightKind::Live { entry, confirm };
        client.inflight.insert(
            tag,
            Inflight {
                what,
                attempts: 1,
                deadline,
            },
        );
        client.out.wake();
        true
    }

    /// Decides that a persistent message waits in `queue`, within its limits.
    fn enqueue(&mut self, st: &mut State<O>, queue: QueueId, entry: StoredEntry, max: u64) {
        // Named only when it will not get the message.
        let recipient = || match &queue {
            QueueId::Client(name) => Recipient::Client(name.clone()),
            QueueId::Backlog(channel) => Recipient::Channel(channel.clone()),
        };
        if st.store_failed {
            let detail = "the message store is unavailable; persistent messages are refused";
            return self.fail(
                recipient(),
                FailureReason::StoreUnavailable,
                detail.to_owned(),
            );
        }
        if let Some(detail) = st.queues.full(self.cfg, &queue, entry.size(), max) {
            return self.fail(recipient(), FailureReason::QueueFull, detail);
        }
        st.queues.count_enqueued(&queue, &entry);
        let Some(confirm) = self.confirm else {
            return;
        };
        st.confirms.add(confirm);
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
        let notice = undeliverable(self.sender, &self.msg.id, recipient, reason, detail);
        self.failed.push(notice);
    }
}
