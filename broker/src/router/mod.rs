//! Who is connected, who subscribes to what, what is queued for whom, and where each message
//! goes.
//!
//! The registry is one `std::sync::Mutex` held only for short, non-blocking work: lookups,
//! `try_push` into bounded queues, and handing store commands to slots reserved beforehand
//! (so the store sees them in the order the router decided them). It is never held across an
//! `.await`. Every delivery that cannot be made now goes through [`Router::undeliverable`] or
//! into a recipient's queue in the store; nothing is dropped in silence.
//!
//! - `route`: where one message goes.
//! - `delivery`: persistent deliveries in flight, acknowledgements, draining queues, timeouts.
//! - `expiry`: messages whose time to live ran out, sessions that expired.

mod delivery;
mod expiry;
mod route;

use crate::config::Config;
use crate::encode;
use crate::handle::Observed;
use crate::maps::{HashMap, HashSet};
use crate::outbound::{OutFrame, Outbound};
use crate::persist::{Command, Persist, QueueAppend, Slot};
use crate::store::{QueueId, QueueStore, Seq, Session, StoreError, StoredEntry, StoredMessage};
use broadcast_protocol::{
    DeliveryFailed, ErrorCode, FailureReason, Publish, Recipient, ServerFrame, Target,
    validate_channel, validate_client_name, validate_id,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast, oneshot};
use tokio::time::Instant;

pub(crate) use delivery::DrainStep;

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

/// A subscription made by [`Router::subscribe`].
#[derive(Debug)]
pub(crate) struct Subscribed {
    /// Resolves once the subscription is on disk.
    pub(crate) remembered: oneshot::Receiver<()>,
    /// Whether the `Subscribed` answer is already queued.
    pub(crate) answered: bool,
}

/// A persistent delivery handed to a connection and not yet acknowledged.
#[derive(Debug)]
struct Inflight {
    what: InflightKind,
    attempts: u32,
    deadline: Instant,
}

#[derive(Debug)]
enum InflightKind {
    /// Delivered straight from a sender; its sender waits for the acknowledgement.
    Live {
        entry: StoredMessage,
        confirm: Arc<crate::confirm::Confirm>,
    },
    /// Delivered from the recipient's queue in the store.
    Queued { seq: Seq, entry: StoredEntry },
}

#[derive(Debug)]
struct Client {
    /// The name it is registered under (the key of its entry, kept here too so that one
    /// lookup finds both).
    name: Arc<str>,
    out: Outbound,
    /// Wakes the connection's drainer: queue entries appended, room in the window or queue.
    wake: Arc<Notify>,
    inflight: HashMap<u64, Inflight>,
    next_live_tag: u64,
    /// Next queue sequence number to read for this connection.
    cursor: Seq,
    /// Persistent messages go through the queue (not straight to the connection) while the
    /// queue may hold entries this connection has not been handed yet, to keep their order.
    queue_mode: bool,
}

/// What the broker remembers of a client across disconnects.
#[derive(Debug, Default)]
struct SessionState {
    channels: HashSet<Arc<str>>,
    last_seen_ms: u64,
}

/// Counters of one queue in the store.
#[derive(Debug, Default)]
struct QueueMeta {
    /// Unsettled entries.
    pending: u64,
    /// Their bytes.
    bytes: u64,
    /// Entries decided but not yet appended by the store thread.
    unapplied: u64,
    /// Counts every entry decided for this queue, so a drainer can tell whether anything
    /// was decided after it asked the store for entries.
    decided: u64,
    /// Highest sequence number handed to any connection in this broker's life (entries at or
    /// below it are marked redelivered); at start-up, everything stored before.
    hwm: Seq,
    /// Delivery attempts of entries handed out at least once.
    attempts: HashMap<Seq, u32>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<Arc<str>, Client>,
    sessions: HashMap<Arc<str>, SessionState>,
    channels: HashMap<Arc<str>, HashSet<Arc<str>>>,
    queues: HashMap<QueueId, QueueMeta>,
    stored_bytes: u64,
}

/// The registry and routing logic, shared by every connection.
pub(crate) struct Router {
    state: Mutex<State>,
    config: Config,
    next_conn: AtomicU64,
    observers: broadcast::Sender<Arc<Observed>>,
    pub(crate) persist: Persist,
    rt: tokio::runtime::Handle,
    me: Arc<OnceLock<Weak<Router>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps in a state worse than stopping the
    // broker would, so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tags of deliveries made straight from a sender have the top bit set; tags of deliveries
/// from a queue are the entry's sequence number.
const LIVE_TAG: u64 = 1 << 63;

impl Router {
    /// A router over an opened store: restores every queue's counters and every session.
    pub(crate) fn new(
        config: Config,
        store: Arc<dyn QueueStore>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, StoreError> {
        let queues = store.queues()?;
        let sessions = store.sessions()?;
        let me: Arc<OnceLock<Weak<Self>>> = Arc::new(OnceLock::new());
        let cell = me.clone();
        let failed_cell = me.clone();
        let persist = Persist::start(
            store,
            Arc::new(move |queue: &QueueId, n: u64| {
                if let Some(router) = cell.get().and_then(Weak::upgrade) {
                    router.appended(queue, n);
                }
            }),
            Arc::new(
                move |queue: &QueueId, entry: &StoredEntry, e: &StoreError| {
                    if let Some(router) = failed_cell.get().and_then(Weak::upgrade) {
                        router.store_failed(queue, entry, e);
                    }
                },
            ),
        )?;
        let mut state = State::default();
        for q in queues {
            state.stored_bytes = state.stored_bytes.saturating_add(q.bytes);
            let meta = QueueMeta {
                pending: q.pending,
                bytes: q.bytes,
                hwm: q.next_seq.saturating_sub(1),
                ..QueueMeta::default()
            };
            state.queues.insert(q.queue, meta);
        }
        for s in sessions {
            let name: Arc<str> = Arc::from(s.name);
            let mut session = SessionState {
                last_seen_ms: s.last_seen_ms,
                ..Default::default()
            };
            for ch in s.channels {
                let ch: Arc<str> = Arc::from(ch);
                state
                    .channels
                    .entry(ch.clone())
                    .or_default()
                    .insert(name.clone());
                session.channels.insert(ch);
            }
            state.sessions.insert(name, session);
        }
        let (observers, _) = broadcast::channel(1024);
        let router = Arc::new(Self {
            state: Mutex::new(state),
            config,
            next_conn: AtomicU64::new(1),
            observers,
            persist,
            rt,
            me: me.clone(),
        });
        let _ = me.set(Arc::downgrade(&router));
        Ok(router)
    }

    /// A new connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Receivers of every message clients send.
    pub(crate) fn observe(&self) -> broadcast::Receiver<Arc<Observed>> {
        self.observers.subscribe()
    }

    /// Names of the connected clients.
    pub(crate) fn connected(&self) -> Vec<String> {
        lock(&self.state)
            .clients
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Registers a connection under `name`. Returns what wakes its drainer and the connection
    /// it took the name from. Persistent deliveries in flight to that older connection go back
    /// to the queue, through `slot`.
    pub(crate) fn register(&self, name: Arc<str>, out: Outbound, slot: Slot) -> Option<Outbound> {
        let mut st = lock(&self.state);
        let wake = out.shared.wake.clone();
        let meta = st.queues.get(&QueueId::Client(name.to_string()));
        let queue_mode = meta.is_some_and(|m| m.pending > 0 || m.unapplied > 0);
        let client = Client {
            name: name.clone(),
            out,
            wake: wake.clone(),
            inflight: HashMap::default(),
            next_live_tag: 0,
            cursor: 0,
            queue_mode,
        };
        let old = st.clients.insert(name.clone(), client);
        st.sessions.entry(name.clone()).or_default();
        let mut cmds = Vec::new();
        if let Some(old) = &old {
            self.requeue(&mut st, &name, old, &mut cmds);
        }
        if let Some(c) = st.clients.get_mut(&name) {
            // Entries requeued from the older connection are drained to this one.
            c.queue_mode |= !cmds.is_empty();
        }
        send_all(slot, cmds);
        wake.notify_one();
        old.map(|c| c.out)
    }

    /// Removes a connection, unless its name has been taken over by a newer one. Its
    /// persistent deliveries in flight go back to its queue; its subscriptions are remembered.
    pub(crate) fn unregister(&self, name: &str, conn_id: u64, slot: Slot) {
        let mut st = lock(&self.state);
        if st
            .clients
            .get(name)
            .is_none_or(|c| c.out.conn_id != conn_id)
        {
            return;
        }
        let mut cmds = Vec::new();
        if let Some((name, client)) = st.clients.remove_entry(name) {
            self.requeue(&mut st, &name, &client, &mut cmds);
            let now = now_ms();
            if let Some(s) = st.sessions.get_mut(&name) {
                s.last_seen_ms = now;
                if s.channels.is_empty() {
                    st.sessions.remove(&name);
                } else {
                    cmds.push(Command::PutSession(session_record(&name, s), None));
                }
            }
        }
        send_all(slot, cmds);
    }

    /// Puts a closed connection's persistent deliveries in flight back into its queue.
    fn requeue(&self, st: &mut State, name: &Arc<str>, client: &Client, cmds: &mut Vec<Command>) {
        let queue = QueueId::Client(name.to_string());
        let mut items = Vec::new();
        // Back in the order they were handed out: tags grow with each delivery.
        let mut inflight: Vec<(&u64, &Inflight)> = client.inflight.iter().collect();
        inflight.sort_unstable_by_key(|(tag, _)| **tag);
        for (_, inflight) in inflight {
            match &inflight.what {
                InflightKind::Live { entry, confirm } => {
                    let entry = StoredEntry::Message(StoredMessage {
                        redelivered: true,
                        ..entry.clone()
                    });
                    self.count_enqueued(st, &queue, &entry);
                    QueueAppend::push_to(&mut items, queue.clone(), entry, Some(confirm.clone()));
                }
                InflightKind::Queued { seq, .. } => {
                    let meta = st.queues.entry(queue.clone()).or_default();
                    *meta.attempts.entry(*seq).or_insert(0) = inflight.attempts;
                }
            }
        }
        if !items.is_empty() {
            cmds.push(Command::Append(items));
        }
    }

    /// A weak reference to this router, for callbacks that run on the store thread.
    fn self_weak(&self) -> Weak<Self> {
        self.me.get().cloned().unwrap_or_default()
    }

    /// Subscribes `name` to `channel`. Resolves once the subscription is remembered durably.
    /// The first subscriber of a channel receives the channel's backlog.
    pub(crate) fn subscribe(
        &self,
        name: &Arc<str>,
        conn_id: u64,
        channel: &str,
        slot: Slot,
    ) -> Result<Subscribed, Refusal> {
        validate_channel(channel)
            .map_err(|e| Refusal::new(ErrorCode::InvalidName, e.to_string()))?;
        let mut st = lock(&self.state);
        if st
            .clients
            .get(&**name)
            .is_none_or(|c| c.out.conn_id != conn_id)
        {
            return Err(Refusal::new(ErrorCode::Replaced, "connection was replaced"));
        }
        let (tx, rx) = oneshot::channel();
        let State {
            sessions,
            channels,
            queues,
            clients,
            ..
        } = &mut *st;
        // The answer is queued now, under the lock, so that it precedes every delivery
        // through the subscription; when the queue is full the connection sends it itself.
        let answer = || {
            let frame = encode::frame(&ServerFrame::Subscribed {
                channel: channel.to_owned(),
            });
            clients
                .get(&**name)
                .is_some_and(|c| c.out.try_push(OutFrame::control(frame)).is_ok())
        };
        let session = sessions.entry(name.clone()).or_default();
        if session.channels.contains(channel) {
            let _ = tx.send(());
            return Ok(Subscribed {
                remembered: rx,
                answered: answer(),
            });
        }
        if session.channels.len() >= self.config.max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {} subscriptions per client",
                    self.config.max_subscriptions
                ),
            ));
        }
        let answered = answer();
        let ch: Arc<str> = Arc::from(channel);
        session.channels.insert(ch.clone());
        let subs = channels.entry(ch.clone()).or_default();
        let first = subs.is_empty();
        subs.insert(name.clone());
        let mut cmds = vec![Command::PutSession(
            session_record(name, session),
            Some(Box::new(move |_| {
                let _ = tx.send(());
            })),
        )];
        let backlog = QueueId::Backlog(channel.to_owned());
        let has_backlog = queues
            .get(&backlog)
            .is_some_and(|m| m.pending > 0 || m.unapplied > 0);
        if first && has_backlog {
            let to = QueueId::Client(name.to_string());
            let moved = queues.remove(&backlog).unwrap_or_default();
            let meta = queues.entry(to.clone()).or_default();
            meta.pending += moved.pending;
            meta.bytes = meta.bytes.saturating_add(moved.bytes);
            meta.unapplied += moved.pending;
            meta.decided += moved.pending;
            if let Some(c) = clients.get_mut(&**name) {
                c.queue_mode = true;
            }
            let weak = self.self_weak();
            let (expected, to2) = (moved.pending, to.clone());
            cmds.push(Command::Move {
                from: backlog,
                to,
                done: Box::new(move |r| {
                    if let Some(router) = weak.upgrade() {
                        router.moved(&to2, expected, r.ok());
                    }
                }),
            });
        }
        // Under the lock, as every write that a drainer's reads must see.
        send_all(slot, cmds);
        drop(st);
        Ok(Subscribed {
            remembered: rx,
            answered,
        })
    }

    /// Removes a subscription; removing one that does not exist is not an error.
    pub(crate) fn unsubscribe(&self, name: &Arc<str>, conn_id: u64, channel: &str, slot: Slot) {
        let mut st = lock(&self.state);
        if st
            .clients
            .get(&**name)
            .is_none_or(|c| c.out.conn_id != conn_id)
        {
            return;
        }
        let State {
            sessions, channels, ..
        } = &mut *st;
        let Some(session) = sessions.get_mut(&**name) else {
            return;
        };
        if !session.channels.remove(channel) {
            return;
        }
        remove_subscriber(channels, channel, name);
        let cmd = if session.channels.is_empty() {
            Command::RemoveSession(name.to_string(), None)
        } else {
            Command::PutSession(session_record(name, session), None)
        };
        send_all(slot, vec![cmd]);
        drop(st);
    }

    /// Checks a message before routing it.
    pub(crate) fn validate(&self, msg: &Publish) -> Result<(), Refusal> {
        let invalid_name =
            |e: broadcast_protocol::NameError| Refusal::new(ErrorCode::InvalidName, e.to_string());
        validate_id(&msg.id).map_err(invalid_name)?;
        if msg.data.len() > self.config.max_payload as usize {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    msg.data.len(),
                    self.config.max_payload
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
        let max = self.config.max_target_names;
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

    /// The one place a message that cannot be delivered now, and will not be kept, ends up:
    /// a notice for its sender.
    pub(crate) fn undeliverable(
        &self,
        sender: &str,
        id: &str,
        recipient: Recipient,
        reason: FailureReason,
        detail: String,
    ) -> DeliveryFailed {
        tracing::debug!(%id, %sender, ?recipient, ?reason, "not delivered");
        DeliveryFailed {
            id: id.to_owned(),
            recipient,
            reason,
            detail,
            ack_tag: None,
        }
    }

    /// Sends a notice to a sender outside of the sender's own request: straight to its
    /// connection when it is connected and has room, otherwise into its queue in the store,
    /// so a sender that acts on failures never misses one.
    pub(crate) fn notify(&self, sender: &str, notice: DeliveryFailed) {
        if sender == crate::BROKER_SENDER {
            tracing::warn!(id = %notice.id, reason = ?notice.reason, "a message of the broker was not delivered");
            return;
        }
        let mut st = lock(&self.state);
        if let Some(c) = st.clients.get(sender) {
            if c.out
                .try_push(OutFrame::control(encode::failed(notice.clone())))
                .is_ok()
            {
                return;
            }
        }
        let queue = QueueId::Client(sender.to_owned());
        let entry = StoredEntry::Notice {
            notice,
            expires_at_ms: now_ms().saturating_add(self.config.default_ttl.as_millis() as u64),
        };
        if self.persist.is_failed() {
            tracing::error!(%sender, "store unavailable: a delivery-failed notice is lost");
            return;
        }
        self.count_enqueued(&mut st, &queue, &entry);
        if let Some(c) = st.clients.get_mut(sender) {
            c.queue_mode = true;
        }
        let cmd = Command::Append(vec![QueueAppend::new(queue, entry, None)]);
        // Under the lock, so that a read of the sender's queue that follows comes after it
        // (unless the store's channel is full, which delays the notice, never loses it).
        self.persist.send_detached(cmd, &self.rt);
        drop(st);
    }

    /// A store write for a message failed: its sender learns that the recipient of `queue`
    /// will not get it.
    fn store_failed(&self, queue: &QueueId, entry: &StoredEntry, e: &StoreError) {
        let StoredEntry::Message(m) = entry else {
            return;
        };
        let (sender, id) = (m.sender.as_str(), m.id.as_str());
        let recipient = match queue {
            QueueId::Client(name) => Recipient::Client(name.clone()),
            QueueId::Backlog(channel) => Recipient::Channel(channel.clone()),
        };
        let notice = DeliveryFailed {
            id: id.to_owned(),
            recipient,
            reason: FailureReason::StoreUnavailable,
            detail: format!("the message store failed: {e}"),
            ack_tag: None,
        };
        let st = lock(&self.state);
        if let Some(c) = st.clients.get(sender) {
            if c.out
                .try_push(OutFrame::control(encode::failed(notice)))
                .is_err()
            {
                tracing::error!(%sender, %id, "cannot tell the sender that the store failed");
            }
        }
    }

    /// Counts an entry decided for a queue.
    fn count_enqueued(&self, st: &mut State, queue: &QueueId, entry: &StoredEntry) {
        let size = entry.size();
        st.stored_bytes += size;
        // The queue's name is copied only the first time it is used.
        let meta = match st.queues.get_mut(queue) {
            Some(meta) => meta,
            None => st.queues.entry(queue.clone()).or_default(),
        };
        meta.pending += 1;
        meta.bytes += size;
        meta.unapplied += 1;
        meta.decided += 1;
    }

    /// Counts entries settled in a queue.
    fn count_settled(st: &mut State, queue: &QueueId, seq: Seq, size: u64) {
        st.stored_bytes = st.stored_bytes.saturating_sub(size);
        if let Some(meta) = st.queues.get_mut(queue) {
            meta.pending = meta.pending.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(size);
            meta.attempts.remove(&seq);
        }
    }

    /// The store thread appended `n` entries to `queue`.
    fn appended(&self, queue: &QueueId, n: u64) {
        let mut st = lock(&self.state);
        if let Some(meta) = st.queues.get_mut(queue) {
            meta.unapplied = meta.unapplied.saturating_sub(n);
        }
        if let QueueId::Client(name) = queue {
            if let Some(c) = st.clients.get(name.as_str()) {
                c.wake.notify_one();
            }
        }
    }

    /// A backlog was moved into a client's queue.
    fn moved(&self, to: &QueueId, expected: u64, moved: Option<(u64, u64)>) {
        let mut st = lock(&self.state);
        let (n, _) = moved.unwrap_or((0, 0));
        if let Some(meta) = st.queues.get_mut(to) {
            // `appended` already took the moved entries off `unapplied`; take off the rest
            // of what was expected (entries that were not there to move).
            meta.unapplied = meta.unapplied.saturating_sub(expected.saturating_sub(n));
            meta.pending = meta.pending.saturating_sub(expected.saturating_sub(n));
        }
    }
}

/// Sends commands through a reserved slot, as one command.
fn send_all(slot: Slot, mut cmds: Vec<Command>) {
    match cmds.len() {
        0 => drop(slot),
        1 => {
            slot.send(cmds.remove(0));
        }
        _ => {
            slot.send(Command::Batch(cmds));
        }
    }
}

fn session_record(name: &str, s: &SessionState) -> Session {
    Session {
        name: name.to_owned(),
        channels: s.channels.iter().map(|c| c.to_string()).collect(),
        last_seen_ms: s.last_seen_ms,
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
