//! The routing core: every routing decision of the broker, as a deterministic state machine.
//!
//! [`Core`] owns who is connected under which name, the sessions and subscriptions, what each
//! queue in the store holds, the persistent deliveries in flight, the confirmations senders
//! wait for, and expiry. It has no sockets, no tasks, no threads, no locks and no clock:
//!
//! - inputs are method calls: a client registered or gone, a run of publishes, a subscribe or
//!   unsubscribe, acknowledgements, store completions ([`Completion`]), a drainer's read,
//!   room in an outbound queue, and the time ([`Now`]) wherever a decision needs it;
//! - outputs are frames handed to each connection's [`Outlet`] (whose answer, room or not, is
//!   an input too), store writes ([`StoreOp`], taken with [`Core::take_ops`]), and the values
//!   the methods return (notices for the caller, reads to make, deadlines).
//!
//! The broker's shell keeps it under one lock and executes what it asks; the simulation test
//! drives it with a seeded schedule and checks its promises.
//!
//! - `clients`: names, sessions, subscriptions; taking a name over.
//! - `route`: where one message goes.
//! - `delivery`: persistent deliveries in flight, acknowledgements, draining a queue, late
//!   acknowledgements.
//! - `queues`: what each queue in the store holds, and its limits.
//! - `notices`: delivery-failed notices for senders.
//! - `expiry`: messages and sessions that expired.
//! - `liveness`: when a silent connection is probed, and when it is closed.
//! - `confirm`: confirmations; the only place one settles.
//! - `outlet`, `ops`: what goes out to connections and to the store.

mod clients;
mod confirm;
mod delivery;
mod expiry;
mod liveness;
mod notices;
mod ops;
mod outlet;
mod queues;
mod route;
mod stats;

pub use clients::Subscribed;
pub use confirm::{ConfirmId, NewConfirm};
pub use delivery::DrainStep;
pub use liveness::{Liveness, Silence};
pub use ops::{Completion, QueueAppend, StoreOp};
pub use outlet::{OutFrame, Outlet, PushError};
pub use route::{Blocked, Routed, validate};
pub use stats::{
    ChannelRow, ClientRow, FAILURE_REASONS, Gauges, QueueRow, Stats, TARGET_KINDS, reason_name,
};

use crate::config::Config;
use crate::maps::{HashMap, HashSet};
use crate::store::{QueueId, QueueInfo, Seq, Session, StoredEntry, StoredMessage};
use broadcast_protocol::{DeliveryFailed, ErrorCode};
use std::sync::Arc;

use confirm::Confirms;
use queues::Queues;

/// The time, as the shell reads it: wall-clock milliseconds since the Unix epoch (for times
/// to live, which outlast the process) and monotonic milliseconds (for acknowledgement
/// deadlines, which must not jump with the wall clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Milliseconds on a clock that never goes back.
    pub mono_ms: u64,
}

/// A refusal of a request, reported to the client as an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A persistent delivery handed to a connection and not yet acknowledged.
#[derive(Debug)]
struct Inflight {
    what: InflightKind,
    attempts: u32,
    /// Monotonic milliseconds.
    deadline: u64,
}

#[derive(Debug)]
enum InflightKind {
    /// Delivered straight from a sender; its sender waits for the acknowledgement.
    Live {
        entry: StoredMessage,
        confirm: ConfirmId,
    },
    /// Delivered from the recipient's queue in the store.
    Queued { seq: Seq, entry: StoredEntry },
}

struct Client<O> {
    /// The name it is registered under (the key of its entry, kept here too so that one
    /// lookup finds both).
    name: Arc<str>,
    out: O,
    inflight: HashMap<u64, Inflight>,
    next_live_tag: u64,
    /// Next queue sequence number to read for this connection.
    cursor: Seq,
    /// Persistent messages go through the queue (not straight to the connection) while the
    /// queue may hold entries this connection has not been handed yet, to keep their order.
    queue_mode: bool,
    /// Entries settled without being handed out (expired) since the drainer's last read was
    /// handed back: a read made before may still hold them.
    settled_unread: Vec<Seq>,
    /// The channels the connection may receive through, when its rights restrict them.
    channels: Option<ChannelFilter>,
}

/// Which channels a connection may receive messages through (its rights to subscribe):
/// queued messages tagged with another channel are not handed to it.
#[derive(Clone)]
pub struct ChannelFilter(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for ChannelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelFilter")
    }
}

/// What the broker remembers of a client across disconnects.
#[derive(Debug, Default)]
struct SessionState {
    channels: HashSet<Arc<str>>,
    last_seen_ms: u64,
}

struct State<O: Outlet> {
    clients: HashMap<Arc<str>, Client<O>>,
    sessions: HashMap<Arc<str>, SessionState>,
    channels: HashMap<Arc<str>, HashSet<Arc<str>>>,
    queues: Queues,
    confirms: Confirms<O>,
    /// Store writes decided and not yet taken by the shell.
    ops: Vec<StoreOp>,
    /// Set while the store refuses writes: persistent messages are refused.
    store_failed: bool,
    /// Notices that could be neither handed to their sender (away) nor kept (the store
    /// failed), not yet taken by the shell.
    lost: Vec<(String, DeliveryFailed)>,
    /// How long a notice waits in its sender's queue (the default time to live).
    notice_ttl_ms: u64,
    /// Counts of what was decided, for metrics.
    stats: Stats,
    /// The wall time of the first look for expired sessions: when a session restored as
    /// connected (after a crash) counts as last seen.
    sessions_since_ms: Option<u64>,
}

/// Tags of deliveries made straight from a sender have the top bit set; tags of deliveries
/// from a queue are the entry's sequence number.
const LIVE_TAG: u64 = 1 << 63;

/// The routing state machine. See the [module documentation](self).
pub struct Core<O: Outlet> {
    config: Config,
    st: State<O>,
}

impl<O: Outlet> std::fmt::Debug for Core<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("clients", &self.st.clients.len())
            .field("sessions", &self.st.sessions.len())
            .field("queues", &self.st.queues.len())
            .field("confirms", &self.st.confirms.len())
            .finish_non_exhaustive()
    }
}

impl<O: Outlet> Core<O> {
    /// A core over what the store holds: every queue's counters and every session.
    pub fn new(config: Config, queues: Vec<QueueInfo>, sessions: Vec<Session>) -> Self {
        let mut st = State {
            clients: HashMap::default(),
            sessions: HashMap::default(),
            channels: HashMap::default(),
            queues: Queues::restore(queues, config.namespace_max_bytes > 0),
            confirms: Confirms::default(),
            ops: Vec::new(),
            store_failed: false,
            lost: Vec::new(),
            notice_ttl_ms: config.default_ttl.as_millis() as u64,
            stats: Stats::default(),
            sessions_since_ms: None,
        };
        for s in sessions {
            let name: Arc<str> = Arc::from(s.name);
            let mut session = SessionState {
                last_seen_ms: s.last_seen_ms,
                ..Default::default()
            };
            for ch in s.channels {
                let ch: Arc<str> = Arc::from(ch);
                st.channels
                    .entry(ch.clone())
                    .or_default()
                    .insert(name.clone());
                session.channels.insert(ch);
            }
            st.sessions.insert(name, session);
        }
        Self { config, st }
    }

    /// Counts of what the core has decided since it started.
    pub fn stats(&self) -> &Stats {
        &self.st.stats
    }

    /// Clients connected now, subscribers' sessions remembered, channels with a subscriber,
    /// and the messages and bytes waiting in queues.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            clients: self.st.clients.len() as u64,
            sessions: self.st.sessions.len() as u64,
            channels: self.st.channels.len() as u64,
            queued_messages: self.st.queues.pending_total(),
            queued_bytes: self.st.queues.stored_bytes(),
        }
    }

    /// Store writes decided since the last call, in order. The shell hands them to the store
    /// before the core decides anything else.
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        // Queues this input left empty are forgotten after the writes that emptied them.
        self.st.forget_idle();
        std::mem::take(&mut self.st.ops)
    }

    /// Notices lost since the last call, with their senders: each was for a sender that is
    /// away while the store takes no writes. The shell reports them.
    pub fn take_lost(&mut self) -> Vec<(String, DeliveryFailed)> {
        std::mem::take(&mut self.st.lost)
    }

    /// Whether store writes wait to be taken.
    pub fn has_ops(&self) -> bool {
        !self.st.ops.is_empty() || self.st.queues.may_be_idle()
    }

    /// Tells the core whether the store takes writes: while it does not, persistent messages
    /// are refused with a notice.
    pub fn set_store_failed(&mut self, failed: bool) {
        self.st.store_failed = failed;
    }

    /// Names of the connected clients.
    pub fn connected(&self) -> Vec<String> {
        self.st.clients.keys().map(|k| k.to_string()).collect()
    }

    /// Each connected client: its connection, subscriptions and deliveries in flight.
    pub fn client_rows(&self) -> Vec<ClientRow> {
        self.st
            .clients
            .iter()
            .map(|(name, c)| ClientRow {
                name: name.clone(),
                conn_id: c.out.conn_id(),
                subscriptions: self
                    .st
                    .sessions
                    .get(name)
                    .map_or(0, |s| s.channels.len() as u64),
                in_flight: c.inflight.len() as u64,
            })
            .collect()
    }

    /// Each queue that holds entries, and each connected client's (empty or not).
    pub fn queue_rows(&self) -> Vec<QueueRow> {
        let mut rows: Vec<QueueRow> = self
            .st
            .queues
            .counts()
            .into_iter()
            .map(|(queue, messages, bytes)| QueueRow {
                in_flight: match &queue {
                    QueueId::Client(name) => self
                        .st
                        .clients
                        .get(name.as_str())
                        .map_or(0, |c| c.inflight.len() as u64),
                    QueueId::Backlog(_) => 0,
                },
                connected: match &queue {
                    QueueId::Client(name) => self.st.clients.contains_key(name.as_str()),
                    QueueId::Backlog(_) => false,
                },
                queue,
                messages,
                bytes,
            })
            .collect();
        for (name, c) in &self.st.clients {
            let queue = QueueId::Client(name.to_string());
            if self
                .st
                .queues
                .get(&queue)
                .is_none_or(|m| m.pending == 0 && m.bytes == 0)
            {
                rows.push(QueueRow {
                    queue,
                    messages: 0,
                    bytes: 0,
                    in_flight: c.inflight.len() as u64,
                    connected: true,
                });
            }
        }
        rows
    }

    /// Each channel with a subscriber: its subscribers (connected or not) and its backlog.
    pub fn channel_rows(&self) -> Vec<ChannelRow> {
        self.st
            .channels
            .iter()
            .map(|(channel, subs)| {
                let backlog = self
                    .st
                    .queues
                    .get(&QueueId::Backlog(channel.to_string()))
                    .map_or(0, |m| m.pending);
                ChannelRow {
                    channel: channel.clone(),
                    subscribers: subs.len() as u64,
                    connected: subs
                        .iter()
                        .filter(|s| self.st.clients.contains_key(&**s))
                        .count() as u64,
                    backlog,
                }
            })
            .collect()
    }

    /// Handles what the store reports, at `now`.
    pub fn complete(&mut self, now: Now, done: Completion) {
        match done {
            Completion::Expired(found) => self.expire(now, found),
            Completion::Appended { queue, n } => self.st.appended(&queue, n),
            Completion::Durable(ids) => {
                for id in ids {
                    self.st.confirms.settle(id);
                }
            }
            Completion::Failed {
                queue,
                entries,
                notices,
                error,
                not_stored,
                appended,
            } => {
                if let Some((n, bytes)) = not_stored {
                    self.st.queues.count_not_stored(&queue, n, bytes, appended);
                }
                for (id, sender, msg_id) in entries {
                    self.st.store_write_failed(&queue, &sender, &msg_id, &error);
                    self.st.confirms.settle(id);
                }
                if let QueueId::Client(sender) = &queue {
                    for (confirm, notice) in notices {
                        self.st.tell_or_lose(sender, notice);
                        if let Some(id) = confirm {
                            self.st.confirms.settle(id);
                        }
                    }
                }
            }
            Completion::Moved { from, to, moved } => {
                self.st.queues.moved(&from, &to, moved);
                self.st.appended(&to, 0);
            }
        }
    }

    /// Counts of what the core holds, for tests that check everything returns to empty.
    pub fn census(&self) -> Census {
        Census {
            clients: self.st.clients.len(),
            inflight: self.st.clients.values().map(|c| c.inflight.len()).sum(),
            confirms: self.st.confirms.len(),
            queued: self.st.queues.pending_total(),
            stored_bytes: self.st.queues.stored_bytes(),
        }
    }

    /// Each queue the core counts entries in, with its unsettled entries and their bytes, in
    /// queue order (tests compare it with what the store holds).
    pub fn queue_census(&self) -> Vec<(QueueId, u64, u64)> {
        let mut all = self.st.queues.counts();
        all.sort();
        all
    }
}

/// Makes every hash map of this process iterate in an order that depends only on what was put
/// in it, so that a [`Core`] driven by the same inputs makes the same decisions in the same
/// order (the simulation replays seeds with it). Call it before anything else of this crate;
/// returns false when maps were already made with a random seed. A broker that faces clients
/// must not call it: the random seed keeps names chosen to collide from slowing the maps.
pub fn predictable_hashing() -> bool {
    crate::maps::predictable()
}

/// Counts of what a [`Core`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    /// Connected clients.
    pub clients: usize,
    /// Persistent deliveries waiting for their acknowledgement.
    pub inflight: usize,
    /// Persistent messages waiting for their confirmation.
    pub confirms: usize,
    /// Unsettled entries in all queues.
    pub queued: u64,
    /// Their bytes.
    pub stored_bytes: u64,
}

/// The client registered as `name` on connection `conn_id`, if that connection still holds the
/// name (a connection that was replaced, or has gone, acts on nothing).
fn client_on<'a, O: Outlet>(
    clients: &'a mut HashMap<Arc<str>, Client<O>>,
    name: &str,
    conn_id: u64,
) -> Option<&'a mut Client<O>> {
    clients.get_mut(name).filter(|c| c.out.conn_id() == conn_id)
}

/// The same, read only.
fn client_on_ref<'a, O: Outlet>(
    clients: &'a HashMap<Arc<str>, Client<O>>,
    name: &str,
    conn_id: u64,
) -> Option<&'a Client<O>> {
    clients.get(name).filter(|c| c.out.conn_id() == conn_id)
}
