//! Deterministic simulation of the routing core.
//!
//! A seeded random schedule drives [`Core`] with no sockets, no threads and no clock: clients
//! connect, disconnect (cleanly or not) and take names over; publish to every kind of target,
//! persistent or not, with and without a time to live; acknowledge late, out of order or
//! never; the store applies writes, flushes and reports back slowly, interleaved with
//! everything else, and sometimes fails; time jumps past times to live, acknowledgement
//! deadlines and session expiry; connections' readers probe silent clients, some of which never
//! answer; and the broker crashes, to be rebuilt from only what the store had flushed. The simulated shell keeps the promises the real one keeps (the store
//! applies writes in the order the core decided them; a connection's own answers wait for
//! room; a clean close writes what is queued).
//!
//! After each schedule every client reconnects and drains, and the promises are checked:
//! every persistent publish is answered; every confirmed message reaches each recipient the
//! broker chose for it, or its sender is sent a notice; order per sender and recipient holds;
//! a message handed out again is marked redelivered; nothing is handed out past its time to
//! live; nothing reaches its sender through its own channel; a client that answers every ping
//! is never closed as silent; and the core's queues, in-flight deliveries and confirmations
//! return to empty.
//!
//! `SIM_SEEDS=N` runs N seeds (default 2,000), `SIM_SEED=N` replays one seed exactly and prints
//! its schedule. A failing seed is printed with the command that replays it.

use broadcast_broker::Config;
use broadcast_broker::core::{
    self as core, Completion, Core, DrainStep, Liveness, NewConfirm, Now, OutFrame, Outlet,
    PushError, QueueAppend, Silence, StoreOp,
};
use broadcast_broker::store::{QueueId, QueueInfo, Seq, Session, StoredEntry};
use broadcast_protocol::{
    DeliveryFailed, FailureReason, HEADER_LEN, Publish, Recipient, ServerFrame, Target, decode_body,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const NAMES: [&str; 5] = ["ann", "bob", "cat", "dan", "eve"];
const CHANNELS: [&str; 3] = ["x", "y", "z"];
/// Wall-clock milliseconds at the start of every schedule.
const EPOCH_MS: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------------
// The outlet: a connection's outbound queue, bounded in frames.

#[derive(Clone)]
struct SimOutlet(Rc<OutletState>);

struct OutletState {
    conn_id: u64,
    name: String,
    cap: usize,
    max_frame: usize,
    queue: RefCell<VecDeque<OutFrame>>,
    confirmations: RefCell<Vec<Bytes>>,
    closed: Cell<bool>,
    stalled: Cell<bool>,
    wants_room: Cell<bool>,
    woken: Cell<bool>,
    watch: Rc<Watch>,
}

impl Outlet for SimOutlet {
    type Permit = ();

    fn conn_id(&self) -> u64 {
        self.0.conn_id
    }

    fn max_frame(&self) -> usize {
        self.0.max_frame
    }

    fn try_push(&self, frame: OutFrame) -> Result<(), PushError> {
        let s = &self.0;
        if s.closed.get() {
            return Err(PushError::Closed);
        }
        if s.queue.borrow().len() >= s.cap {
            return Err(PushError::Full);
        }
        s.watch.pushed(&s.name, &frame.bytes);
        s.queue.borrow_mut().push_back(frame);
        Ok(())
    }

    fn push_confirmation(&self, accepted: Bytes) {
        if !self.0.closed.get() {
            self.0.watch.pushed(&self.0.name, &accepted);
            self.0.confirmations.borrow_mut().push(accepted);
        }
    }

    fn push_notice(&self, notice: Bytes) {
        // Beside the queue, where confirmations wait too, in order.
        self.push_confirmation(notice);
    }

    fn is_stalled(&self) -> bool {
        self.0.stalled.get()
    }

    fn want_room(&self) {
        self.0.wants_room.set(true);
    }

    fn wake(&self) {
        self.0.woken.set(true);
    }
}

impl SimOutlet {
    /// A connection's own answer: waits for room in the real shell, so it is never refused.
    fn push_reply(&self, bytes: Bytes) {
        if !self.0.closed.get() {
            self.0.watch.pushed(&self.0.name, &bytes);
            self.0
                .queue
                .borrow_mut()
                .push_back(OutFrame::control(bytes));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the checker watches as frames are handed to outlets.

#[derive(Default)]
struct Watch {
    clock: Cell<u64>,
    /// The connection whose publish is being routed: its decisions are that attempt's.
    routing: Cell<Option<u64>>,
    /// Latest expiry of each message id (a resend routes it again, with a new expiry).
    expires: RefCell<HashMap<String, u64>>,
    /// (sender's connection, id) -> recipients the broker chose when it routed the message
    /// from that connection: live deliveries and queue appends.
    decided: RefCell<HashMap<(u64, String), Vec<Recipient>>>,
    /// (id, recipient) of every notice handed to a sender's connection or queue.
    notices: RefCell<HashSet<(String, Recipient)>>,
    violations: RefCell<Vec<String>>,
    verbose: Cell<bool>,
    /// (id, recipient) of notices reported lost (sender away while the store failed).
    lost: RefCell<HashSet<(String, Recipient)>>,
}

impl Watch {
    fn violation(&self, what: String) {
        self.violations.borrow_mut().push(what);
    }

    fn decide(&self, conn: u64, id: &str, recipient: Recipient) {
        let mut decided = self.decided.borrow_mut();
        let set = decided.entry((conn, id.to_owned())).or_default();
        if !set.contains(&recipient) {
            set.push(recipient);
        }
    }

    fn pushed(&self, to: &str, bytes: &Bytes) {
        let Ok(frame) = decode_body::<ServerFrame>(&bytes[HEADER_LEN..]) else {
            self.violation(format!("a frame to {to} does not decode"));
            return;
        };
        match frame {
            ServerFrame::Deliver(d)
                if d.persistent && d.sender != broadcast_broker::BROKER_SENDER =>
            {
                let expires = self
                    .expires
                    .borrow()
                    .get(&d.id)
                    .copied()
                    .unwrap_or(u64::MAX);
                if self.clock.get() > expires {
                    self.violation(format!(
                        "{} handed to {to} {} ms past its time to live",
                        d.id,
                        self.clock.get() - expires
                    ));
                }
                if let Some(conn) = self.routing.get() {
                    self.decide(conn, &d.id, Recipient::Client(to.to_owned()));
                }
            }
            ServerFrame::DeliveryFailed(f) => {
                if self.verbose.get() {
                    eprintln!(
                        "    pushed to {to}: {} failed for {:?}: {:?}",
                        f.id, f.recipient, f.reason
                    );
                }
                self.notices.borrow_mut().insert((f.id, f.recipient));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The store: what the store thread has applied, and what the last flush made durable.

#[derive(Clone, Default)]
struct Disk {
    queues: BTreeMap<QueueId, (Seq, BTreeMap<Seq, StoredEntry>)>,
    sessions: BTreeMap<String, Session>,
}

impl Disk {
    fn append(&mut self, queue: &QueueId, entries: Vec<StoredEntry>) -> u64 {
        let (next, q) = self
            .queues
            .entry(queue.clone())
            .or_insert((1, BTreeMap::new()));
        let n = entries.len() as u64;
        for e in entries {
            q.insert(*next, e);
            *next += 1;
        }
        n
    }

    fn settle(&mut self, queue: &QueueId, seqs: &[Seq]) {
        if let Some((_, q)) = self.queues.get_mut(queue) {
            for s in seqs {
                q.remove(s);
            }
        }
    }

    fn read(&self, queue: &QueueId, from: Seq, max: usize) -> Vec<(Seq, StoredEntry)> {
        self.queues.get(queue).map_or(Vec::new(), |(_, q)| {
            q.range(from..)
                .take(max)
                .map(|(s, e)| (*s, e.clone()))
                .collect()
        })
    }

    fn expired(&self, now_ms: u64, max: usize) -> Vec<(QueueId, Seq, StoredEntry)> {
        self.queues
            .iter()
            .flat_map(|(queue, (_, q))| {
                q.iter()
                    .filter(|(_, e)| e.expires_at_ms() <= now_ms)
                    .map(|(s, e)| (queue.clone(), *s, e.clone()))
            })
            .take(max)
            .collect()
    }

    fn infos(&self) -> Vec<QueueInfo> {
        self.queues
            .iter()
            .map(|(queue, (next, q))| QueueInfo {
                queue: queue.clone(),
                next_seq: *next,
                pending: q.len() as u64,
                bytes: q.values().map(StoredEntry::size).sum(),
            })
            .collect()
    }

    fn entries(&self) -> usize {
        self.queues.values().map(|(_, q)| q.len()).sum()
    }
}

/// What the store thread is asked, in order.
enum Cmd {
    Ops(Vec<StoreOp>),
    Read {
        conn: u64,
        queue: QueueId,
        from: Seq,
        max: usize,
        decided: u64,
    },
    Expired,
}

/// What waits for the next flush to be reported.
enum AfterFlush {
    Confirms(Vec<core::ConfirmId>),
    Failed(
        QueueId,
        Vec<(core::ConfirmId, String, String)>,
        Vec<(Option<core::ConfirmId>, DeliveryFailed)>,
        Option<(u64, u64)>,
    ),
}

// ---------------------------------------------------------------------------------------------
// Clients.

enum Drain {
    Idle,
    Reading,
    Read {
        from: Seq,
        decided: u64,
        entries: Vec<(Seq, StoredEntry)>,
    },
}

struct Conn {
    name: String,
    out: SimOutlet,
    drain: Drain,
    /// Tags received and not yet acknowledged.
    to_ack: Vec<u64>,
    /// The reading half's count of silence, and the time since it last decided.
    liveness: Liveness,
    quiet: Duration,
    /// A client that answers no ping (and so must be closed once silent long enough).
    mute: bool,
}

#[derive(Default)]
struct Client {
    conn: Option<u64>,
    /// Persistent messages sent and not confirmed, resent after a reconnect.
    unconfirmed: BTreeMap<u64, Publish>,
    channels: BTreeSet<String>,
}

#[derive(Clone)]
struct Sent {
    sender: String,
    /// Whether it names its sender within a channel: the one way a sender may get its own
    /// message through a channel.
    to_self_in_channel: bool,
    /// Order of the message among its sender's messages.
    index: u64,
}

// ---------------------------------------------------------------------------------------------
// The world.

struct Sim {
    seed: u64,
    rng: StdRng,
    cfg: Config,
    mono: u64,
    wall: u64,
    core: Core<SimOutlet>,
    watch: Rc<Watch>,
    applied: Disk,
    durable: Disk,
    cmds: VecDeque<Cmd>,
    after_flush: Vec<AfterFlush>,
    completions: VecDeque<Completion>,
    store_failed: bool,
    fail_next_write: bool,
    conns: BTreeMap<u64, Conn>,
    clients: BTreeMap<String, Client>,
    next_conn: u64,
    next_msg: u64,
    sent: HashMap<String, Sent>,
    persistent_ids: BTreeSet<String>,
    /// Ids of messages their sender sent again.
    resent: HashSet<String>,
    /// (connection, id) of every `Accepted` a client read.
    accepted: BTreeSet<(u64, String)>,
    /// (recipient, id, channel) -> deliveries received.
    received: HashMap<(String, String, Option<String>), u32>,
    /// (id, channel) of deliveries received through a channel.
    via_channel: HashSet<(String, String)>,
    /// (recipient, id) of messages moved to the recipient from a channel's backlog.
    from_backlog: HashSet<(String, String)>,
    /// (sender, recipient, persistent) -> index of the last first-time delivery.
    last_index: HashMap<(String, String, bool), u64>,
    log: Vec<String>,
    verbose: bool,
}

fn config(rng: &mut StdRng) -> Config {
    Config {
        ack_timeout: Duration::from_millis(rng.random_range(50..2_000)),
        max_attempts: rng.random_range(1..5),
        max_unacked: rng.random_range(1..8),
        default_ttl: Duration::from_millis(rng.random_range(1_000..60_000)),
        queue_max_messages: rng.random_range(2..40),
        backlog_max_messages: rng.random_range(1..10),
        session_expiry: Duration::from_millis(rng.random_range(1_000..30_000)),
        max_subscriptions: rng.random_range(1..4),
        max_target_names: 4,
        heartbeat: Duration::from_millis(rng.random_range(100..5_000)),
        ..Config::default()
    }
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = config(&mut rng);
        let watch = Rc::new(Watch::default());
        watch.clock.set(EPOCH_MS);
        watch.verbose.set(verbose);
        Self {
            seed,
            rng,
            core: Core::new(cfg.clone(), Vec::new(), Vec::new()),
            cfg,
            mono: 0,
            wall: EPOCH_MS,
            watch,
            applied: Disk::default(),
            durable: Disk::default(),
            cmds: VecDeque::new(),
            after_flush: Vec::new(),
            completions: VecDeque::new(),
            store_failed: false,
            fail_next_write: false,
            conns: BTreeMap::new(),
            clients: NAMES
                .iter()
                .map(|n| (n.to_string(), Client::default()))
                .collect(),
            next_conn: 1,
            next_msg: 1,
            sent: HashMap::new(),
            persistent_ids: BTreeSet::new(),
            resent: HashSet::new(),
            accepted: BTreeSet::new(),
            received: HashMap::new(),
            via_channel: HashSet::new(),
            from_backlog: HashSet::new(),
            last_index: HashMap::new(),
            log: Vec::new(),
            verbose,
        }
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: self.wall,
            mono_ms: self.mono,
        }
    }

    fn note(&mut self, what: String) {
        if self.verbose {
            eprintln!("[{:>7} ms] {what}", self.mono);
        }
        self.log.push(what);
        if self.log.len() > 40 {
            self.log.remove(0);
        }
    }

    /// Takes the writes the core decided, for the store thread, and the notices it lost.
    fn take_ops(&mut self) {
        for (sender, notice) in self.core.take_lost() {
            if !self.store_failed {
                self.watch.violation(format!(
                    "a notice to {sender} was lost with the store working"
                ));
            }
            // Lost while the store failed, and reported: the one way a sender is not told.
            self.watch
                .lost
                .borrow_mut()
                .insert((notice.id, notice.recipient));
        }
        let ops = self.core.take_ops();
        if !ops.is_empty() {
            self.cmds.push_back(Cmd::Ops(ops));
        }
    }

    /// The core, told whether the store takes writes (as the engine does at every lock).
    fn core(&mut self) -> &mut Core<SimOutlet> {
        self.core.set_store_failed(self.store_failed);
        &mut self.core
    }

    // --- clients ---------------------------------------------------------------------------

    fn connect(&mut self, name: &str, mute: bool) {
        let id = self.next_conn;
        self.next_conn += 1;
        let cap = if self.rng.random_bool(0.3) {
            self.rng.random_range(1..4)
        } else {
            self.rng.random_range(4..64)
        };
        let max_frame = if self.rng.random_bool(0.05) {
            200
        } else {
            1 << 20
        };
        let out = SimOutlet(Rc::new(OutletState {
            conn_id: id,
            name: name.to_owned(),
            cap,
            max_frame,
            queue: RefCell::new(VecDeque::new()),
            confirmations: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            stalled: Cell::new(false),
            wants_room: Cell::new(false),
            woken: Cell::new(false),
            watch: self.watch.clone(),
        }));
        self.note(format!(
            "connect {name} as conn {id} (queue of {cap}, mute {mute})"
        ));
        self.conns.insert(
            id,
            Conn {
                name: name.to_owned(),
                out: out.clone(),
                drain: Drain::Idle,
                to_ack: Vec::new(),
                liveness: Liveness::new(self.cfg.heartbeat, Duration::ZERO),
                quiet: Duration::ZERO,
                mute,
            },
        );
        let old = self.core().register(Arc::from(name), out);
        self.take_ops();
        if let Some(old) = old {
            // The older connection is closed after writing what it has queued.
            self.close(old.0.conn_id, true);
        }
        let client = self.clients.get_mut(name).expect("known name");
        client.conn = Some(id);
        let channels: Vec<String> = client.channels.iter().cloned().collect();
        let resend: Vec<Publish> = client.unconfirmed.values().cloned().collect();
        for ch in channels {
            self.subscribe(name, &ch);
        }
        // What was not confirmed is sent again, marked as resent.
        if !resend.is_empty() {
            let msgs = resend
                .into_iter()
                .map(|mut m| {
                    m.resent = true;
                    m
                })
                .collect();
            self.publish_persistent(name, msgs);
        }
    }

    /// Ends connection `id`: the client goes away (`clean`: its queue is written first, as
    /// the shell's writer does within its drain timeout).
    fn close(&mut self, id: u64, clean: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.note(format!("close conn {id} of {} (clean: {clean})", conn.name));
        let now = self.now();
        self.core().unregister(now, &conn.name, id);
        self.take_ops();
        let client = self.clients.get_mut(&conn.name).expect("known name");
        if client.conn == Some(id) {
            client.conn = None;
        }
        conn.out.0.closed.set(true);
        if clean {
            // Written, and read by a client that no longer acknowledges anything on it.
            let frames: Vec<OutFrame> = conn.out.0.queue.borrow_mut().drain(..).collect();
            for f in frames {
                self.receive(&conn.name, id, false, &f.bytes);
            }
            let confirmations: Vec<Bytes> =
                conn.out.0.confirmations.borrow_mut().drain(..).collect();
            for c in confirmations {
                self.receive(&conn.name, id, false, &c);
            }
        } else {
            // Never written: the sender of each non-persistent delivery is told.
            let frames: Vec<OutFrame> = conn.out.0.queue.borrow_mut().drain(..).collect();
            for f in frames.into_iter().filter(|f| f.at_most_once) {
                let Ok(ServerFrame::Deliver(d)) =
                    decode_body::<ServerFrame>(&f.bytes[HEADER_LEN..])
                else {
                    continue;
                };
                let notice = DeliveryFailed {
                    id: d.id,
                    recipient: Recipient::Client(conn.name.clone()),
                    reason: FailureReason::NotConnected,
                    detail: "disconnected before the message was written to it".into(),
                    ack_tag: None,
                };
                let now = self.now();
                self.core().notify(now, &d.sender, notice);
                self.take_ops();
            }
        }
    }

    fn subscribe(&mut self, name: &str, channel: &str) {
        let Some(id) = self.clients[name].conn else {
            return;
        };
        self.heard(id);
        let r = self.core().subscribe(&Arc::from(name), id, channel);
        self.take_ops();
        self.note(format!("{name} subscribes to {channel}: {:?}", r.is_ok()));
        let client = self.clients.get_mut(name).expect("known name");
        match r {
            Ok(_) => {
                client.channels.insert(channel.to_owned());
            }
            Err(_) => {
                client.channels.remove(channel);
            }
        }
    }

    fn unsubscribe(&mut self, name: &str, channel: &str) {
        let Some(id) = self.clients[name].conn else {
            return;
        };
        self.heard(id);
        self.note(format!("{name} unsubscribes from {channel}"));
        self.core().unsubscribe(&Arc::from(name), id, channel);
        self.take_ops();
        self.clients
            .get_mut(name)
            .expect("known name")
            .channels
            .remove(channel);
    }

    fn target(&mut self, sender: &str) -> Target {
        let name = |rng: &mut StdRng| NAMES[rng.random_range(0..NAMES.len())].to_owned();
        let channel = |rng: &mut StdRng| CHANNELS[rng.random_range(0..CHANNELS.len())].to_owned();
        let rng = &mut self.rng;
        match rng.random_range(0..12) {
            0..=3 => {
                let mut n = name(rng);
                if n == sender && rng.random_bool(0.7) {
                    n = name(rng);
                }
                Target::Client(n)
            }
            4 | 5 => Target::Group((0..rng.random_range(0..4)).map(|_| name(rng)).collect()),
            6 | 7 => Target::Channel(channel(rng)),
            8 => Target::Channels((0..rng.random_range(1..4)).map(|_| channel(rng)).collect()),
            9 | 10 => Target::ClientInChannel {
                client: name(rng),
                channel: channel(rng),
            },
            _ => Target::All,
        }
    }

    fn new_message(&mut self, sender: &str, persistent: bool) -> Publish {
        let id = format!("m{}", self.next_msg);
        let index = self.next_msg;
        self.next_msg += 1;
        let target = self.target(sender);
        let ttl_ms = if self.rng.random_bool(0.3) {
            Some(self.rng.random_range(0..5_000))
        } else {
            None
        };
        let to_self_in_channel =
            matches!(&target, Target::ClientInChannel { client, .. } if client == sender);
        self.sent.insert(
            id.clone(),
            Sent {
                sender: sender.to_owned(),
                to_self_in_channel,
                index,
            },
        );
        Publish {
            id,
            target,
            name: None,
            data: Bytes::from_static(b"payload"),
            persistent,
            ttl_ms,
            resent: false,
        }
    }

    fn publish(&mut self, sender: &str) {
        let Some(conn) = self.clients[sender].conn else {
            return;
        };
        let out = self.conns[&conn].out.clone();
        self.heard(conn);
        if self.rng.random_bool(0.35) {
            let msg = self.new_message(sender, false);
            self.note(format!(
                "{sender} publishes {} to {:?} (not kept)",
                msg.id, msg.target
            ));
            if core::validate(&self.cfg, &msg).is_err() {
                return;
            }
            let now = self.now();
            let routed = self.core().route(now, &Arc::from(sender), &msg);
            for notice in routed.failed {
                out.push_reply(encode_failed(notice));
            }
            for blocked in routed.blocked {
                // The sender waits a little for room: the writer may make it, or not.
                let to = blocked.out.0.conn_id;
                if self.rng.random_bool(0.5) {
                    self.write(to, usize::MAX);
                }
                match blocked.out.try_push(blocked.frame) {
                    Ok(()) => {}
                    Err(e) => {
                        let mut notice = blocked.notice;
                        if e == PushError::Closed {
                            notice.reason = FailureReason::NotConnected;
                        } else {
                            blocked.out.0.stalled.set(true);
                        }
                        out.push_reply(encode_failed(notice));
                    }
                }
            }
            return;
        }
        let n = self.rng.random_range(1..5);
        let msgs: Vec<Publish> = (0..n).map(|_| self.new_message(sender, true)).collect();
        self.publish_persistent(sender, msgs);
    }

    fn publish_persistent(&mut self, sender: &str, msgs: Vec<Publish>) {
        let Some(conn) = self.clients[sender].conn else {
            return;
        };
        let out = self.conns[&conn].out.clone();
        let mut run = Vec::new();
        for msg in msgs {
            self.note(format!(
                "{sender} publishes {} to {:?} (kept, ttl {:?}, resent {})",
                msg.id, msg.target, msg.ttl_ms, msg.resent
            ));
            if core::validate(&self.cfg, &msg).is_err() {
                // Refused with an error naming it: answered, and never resent.
                self.sent.remove(&msg.id);
                continue;
            }
            self.persistent_ids.insert(msg.id.clone());
            if msg.resent {
                self.resent.insert(msg.id.clone());
            }
            let ttl = msg
                .ttl_ms
                .unwrap_or(self.cfg.default_ttl.as_millis() as u64);
            let mut expires = self.watch.expires.borrow_mut();
            let e = expires.entry(msg.id.clone()).or_insert(0);
            *e = (*e).max(self.wall + ttl);
            drop(expires);
            let index = self.sent[&msg.id].index;
            self.clients
                .get_mut(sender)
                .expect("known name")
                .unconfirmed
                .insert(index, msg.clone());
            run.push(msg);
        }
        if run.is_empty() {
            return;
        }
        let confirms = run
            .iter()
            .map(|m| NewConfirm {
                accepted: broadcast_protocol::encode_accepted(&m.id, 1 << 20).expect("encodes"),
                permit: (),
            })
            .collect();
        let now = self.now();
        self.watch.routing.set(Some(conn));
        let routed = self
            .core()
            .route_persistent(now, &Arc::from(sender), &out, &run, confirms);
        self.watch.routing.set(None);
        let ops = self.core.take_ops();
        for op in &ops {
            let StoreOp::Append(runs) = op else { continue };
            for run in runs {
                let recipient = match &run.queue {
                    QueueId::Client(c) => Recipient::Client(c.clone()),
                    QueueId::Backlog(c) => Recipient::Channel(c.clone()),
                };
                for e in &run.entries {
                    if let StoredEntry::Message(m) = e {
                        self.watch.decide(conn, &m.id, recipient.clone());
                    }
                }
            }
        }
        if !ops.is_empty() {
            self.cmds.push_back(Cmd::Ops(ops));
        }
        for r in routed {
            for notice in r.failed {
                out.push_reply(encode_failed(notice));
            }
            if let Some(hold) = r.hold {
                self.core().release(hold);
            }
        }
    }

    /// Connection `id`'s writer writes up to `max` frames, and its client reads them.
    fn write(&mut self, id: u64, max: usize) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (name, out) = (conn.name.clone(), conn.out.clone());
        let mut written = 0;
        while written < max {
            let Some(f) = out.0.queue.borrow_mut().pop_front() else {
                // The queue is empty: confirmations that found it full go now.
                let confirmations: Vec<Bytes> =
                    out.0.confirmations.borrow_mut().drain(..).collect();
                for c in confirmations {
                    self.receive(&name, id, true, &c);
                }
                break;
            };
            written += 1;
            self.receive(&name, id, true, &f.bytes);
        }
        if written > 0 {
            out.0.stalled.set(false);
            if out.0.wants_room.replace(false) {
                out.0.woken.set(true);
            }
        }
    }

    /// `name`'s client reads a frame on connection `conn` (`open`: not closing, so it can
    /// still acknowledge).
    fn receive(&mut self, name: &str, conn: u64, open: bool, bytes: &Bytes) {
        let frame = decode_body::<ServerFrame>(&bytes[HEADER_LEN..]).expect("frames decode");
        match frame {
            ServerFrame::Deliver(d) => {
                self.note(format!(
                    "{name} gets {} from {} via {:?} (redelivered {}, tag {:?})",
                    d.id, d.sender, d.channel, d.redelivered, d.ack_tag
                ));
                let to_self = self.sent.get(&d.id).is_some_and(|s| s.to_self_in_channel);
                if d.channel.is_some() && d.sender == name && !to_self {
                    self.watch.violation(format!(
                        "{} reached its sender {name} through its own channel {:?}",
                        d.id, d.channel
                    ));
                }
                let key = (name.to_owned(), d.id.clone(), d.channel.clone());
                let seen = self.received.entry(key).or_insert(0);
                *seen += 1;
                // A message its sender sent again may arrive once from each sending, the first
                // of them unmarked (it cannot know of the resend); the resent one is marked.
                if *seen > 1 && !d.redelivered && !self.resent.contains(&d.id) {
                    self.watch.violation(format!(
                        "{} reached {name} again without the redelivered mark",
                        d.id
                    ));
                }
                if let Some(ch) = &d.channel {
                    self.via_channel.insert((d.id.clone(), ch.clone()));
                }
                if !d.redelivered && !self.from_backlog.contains(&(name.to_owned(), d.id.clone())) {
                    if let Some(sent) = self.sent.get(&d.id) {
                        let key = (sent.sender.clone(), name.to_owned(), d.persistent);
                        let last = self.last_index.entry(key).or_insert(0);
                        if sent.index < *last {
                            self.watch.violation(format!(
                                "{} from {} reached {name} after a later message (m{})",
                                d.id, sent.sender, last
                            ));
                        }
                        *last = (*last).max(sent.index);
                    }
                }
                if let (Some(tag), true) = (d.ack_tag, open) {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.to_ack.push(tag);
                    }
                }
            }
            ServerFrame::Accepted { id } => {
                self.note(format!("{name} gets Accepted for {id}"));
                self.accepted.insert((conn, id.clone()));
                if let Some(sent) = self.sent.get(&id) {
                    if sent.sender == name {
                        let index = sent.index;
                        self.clients
                            .get_mut(name)
                            .expect("known name")
                            .unconfirmed
                            .remove(&index);
                    }
                }
            }
            ServerFrame::DeliveryFailed(f) => {
                self.note(format!(
                    "{name} is told {} failed for {:?}: {:?} (tag {:?})",
                    f.id, f.recipient, f.reason, f.ack_tag
                ));
                if let (Some(tag), true) = (f.ack_tag, open) {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.to_ack.push(tag);
                    }
                }
            }
            _ => {}
        }
    }

    fn ack(&mut self, id: u64, all: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.to_ack.is_empty() {
            return;
        }
        let mut tags = std::mem::take(&mut conn.to_ack);
        if !all {
            // Out of order, some of them, some never.
            for i in (1..tags.len()).rev() {
                let j = self.rng.random_range(0..=i);
                tags.swap(i, j);
            }
            let keep = self.rng.random_range(0..=tags.len());
            let later = tags.split_off(keep);
            let forget = self.rng.random_bool(0.2);
            if !forget {
                self.conns.get_mut(&id).expect("present").to_ack = later;
            }
        }
        let name = self.conns[&id].name.clone();
        self.heard(id);
        self.note(format!("{name} acknowledges {tags:?}"));
        self.core().ack(&name, id, &tags);
        self.take_ops();
    }

    // --- the drainer -----------------------------------------------------------------------

    /// Wakes connection `id`'s drainer.
    fn wake(&self, id: u64) {
        if let Some(c) = self.conns.get(&id) {
            c.out.0.woken.set(true);
        }
    }

    fn drain(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut conn.drain, Drain::Idle) {
            Drain::Reading => conn.drain = Drain::Reading,
            Drain::Read {
                from,
                decided,
                entries,
            } => {
                let name = conn.name.clone();
                let now = self.now();
                let again = self.core().drained(now, &name, id, from, decided, entries);
                self.take_ops();
                if again {
                    self.wake(id);
                }
            }
            Drain::Idle => {
                if !conn.out.0.woken.replace(false) {
                    return;
                }
                let name = conn.name.clone();
                match self.core.drain_step(&name, id) {
                    DrainStep::Read { from, max, decided } => {
                        self.conns.get_mut(&id).expect("present").drain = Drain::Reading;
                        self.cmds.push_back(Cmd::Read {
                            conn: id,
                            queue: QueueId::Client(name),
                            from,
                            max,
                            decided,
                        });
                    }
                    DrainStep::Idle | DrainStep::Gone => {}
                }
            }
        }
    }

    // --- the store -------------------------------------------------------------------------

    fn apply_store(&mut self, max: usize) {
        for _ in 0..max {
            let Some(cmd) = self.cmds.pop_front() else {
                return;
            };
            match cmd {
                Cmd::Ops(ops) => {
                    for op in ops {
                        self.apply_op(op);
                    }
                }
                Cmd::Read {
                    conn,
                    queue,
                    from,
                    max,
                    decided,
                } => {
                    let entries = self.applied.read(&queue, from, max);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.drain = Drain::Read {
                            from,
                            decided,
                            entries,
                        };
                    }
                }
                Cmd::Expired => {
                    let found = self.applied.expired(self.wall, 64);
                    self.completions.push_back(Completion::Expired(found));
                }
            }
        }
    }

    fn apply_op(&mut self, op: StoreOp) {
        if self.store_failed {
            // A failed store takes no write at all.
            match op {
                StoreOp::Move { from, to, .. } => {
                    self.completions.push_back(Completion::Moved {
                        from,
                        to,
                        moved: None,
                    });
                    return;
                }
                StoreOp::Settle(..)
                | StoreOp::PutSession(_)
                | StoreOp::RemoveSession(_)
                | StoreOp::Forget(_) => {
                    return;
                }
                StoreOp::Append(_) => {}
            }
        }
        match op {
            StoreOp::Append(runs) => {
                for QueueAppend {
                    queue,
                    entries,
                    confirms,
                } in runs
                {
                    if self.fail_next_write || self.store_failed {
                        self.fail_next_write = false;
                        self.store_failed = true;
                        self.note(format!("append to {queue} fails"));
                        let bytes = entries.iter().map(StoredEntry::size).sum();
                        let not_stored = Some((entries.len() as u64, bytes));
                        let failed = entries
                            .iter()
                            .zip(&confirms)
                            .filter_map(|(e, c)| match (e, c) {
                                (StoredEntry::Message(m), Some(c)) => {
                                    Some((*c, m.sender.clone(), m.id.clone()))
                                }
                                _ => None,
                            })
                            .collect();
                        let notices = entries
                            .into_iter()
                            .zip(confirms)
                            .filter_map(|(e, c)| match e {
                                StoredEntry::Notice { notice, .. } => Some((c, notice)),
                                StoredEntry::Message(_) => None,
                            })
                            .collect();
                        self.after_flush
                            .push(AfterFlush::Failed(queue, failed, notices, not_stored));
                        continue;
                    }
                    for e in &entries {
                        match e {
                            StoredEntry::Message(_) => {}
                            // A notice kept for its sender counts as sent: it is handed over
                            // when the sender is back, within the notice's time to live.
                            StoredEntry::Notice { notice, .. } => {
                                self.watch
                                    .notices
                                    .borrow_mut()
                                    .insert((notice.id.clone(), notice.recipient.clone()));
                            }
                        }
                    }
                    if self.verbose {
                        eprintln!("    store: append {} to {queue}", entries.len());
                    }
                    let n = self.applied.append(&queue, entries);
                    self.completions
                        .push_back(Completion::Appended { queue, n });
                    let ids: Vec<_> = confirms.into_iter().flatten().collect();
                    if !ids.is_empty() {
                        self.after_flush.push(AfterFlush::Confirms(ids));
                    }
                }
            }
            StoreOp::Settle(queue, seqs) => {
                if self.verbose {
                    eprintln!("    store: settle {queue} {seqs:?}");
                }
                self.applied.settle(&queue, &seqs)
            }
            StoreOp::PutSession(s) => {
                self.applied.sessions.insert(s.name.clone(), s);
            }
            StoreOp::RemoveSession(name) => {
                self.applied.sessions.remove(&name);
            }
            StoreOp::Forget(queue) => {
                if self.verbose {
                    eprintln!("    store: forget {queue}");
                }
                match self.applied.queues.remove(&queue) {
                    Some((_, entries)) if !entries.is_empty() => {
                        self.watch.violation(format!(
                            "{queue} was forgotten while it held {} entries",
                            entries.len()
                        ));
                    }
                    _ => {}
                }
            }
            StoreOp::Move {
                from,
                to,
                except_from,
            } => {
                let mut entries = self.applied.read(&from, 0, usize::MAX);
                entries.retain(
                    |(_, e)| !matches!(e, StoredEntry::Message(m) if m.sender == except_from),
                );
                let seqs: Vec<Seq> = entries.iter().map(|(s, _)| *s).collect();
                let bytes = entries.iter().map(|(_, e)| e.size()).sum();
                if let QueueId::Client(name) = &to {
                    for (_, e) in &entries {
                        if let StoredEntry::Message(m) = e {
                            self.from_backlog.insert((name.clone(), m.id.clone()));
                        }
                    }
                }
                let n = self
                    .applied
                    .append(&to, entries.into_iter().map(|(_, e)| e).collect());
                self.applied.settle(&from, &seqs);
                if self.verbose {
                    eprintln!("    store: move {from} to {to} but {except_from}'s: {n}");
                }
                self.completions.push_back(Completion::Moved {
                    from,
                    to,
                    moved: Some((n, bytes)),
                });
            }
        }
    }

    fn flush(&mut self) {
        self.durable = self.applied.clone();
        let mut durable = Vec::new();
        for done in std::mem::take(&mut self.after_flush) {
            match done {
                AfterFlush::Confirms(ids) => durable.extend(ids),
                AfterFlush::Failed(queue, entries, notices, not_stored) => {
                    self.completions.push_back(Completion::Failed {
                        queue,
                        entries,
                        notices,
                        error: "simulated write failure".into(),
                        not_stored,
                        appended: false,
                    });
                }
            }
        }
        if !durable.is_empty() {
            self.completions.push_back(Completion::Durable(durable));
        }
    }

    fn complete(&mut self, max: usize) {
        for _ in 0..max {
            let Some(done) = self.completions.pop_front() else {
                break;
            };
            if self.verbose {
                match &done {
                    Completion::Moved {
                        from, to, moved, ..
                    } => {
                        eprintln!("    core: moved {from} to {to}: {moved:?}")
                    }
                    Completion::Expired(found) => {
                        let found: Vec<_> =
                            found.iter().map(|(q, s, _)| format!("{q} #{s}")).collect();
                        eprintln!("    core: expired {found:?}")
                    }
                    _ => {}
                }
            }
            let now = self.now();
            self.core().complete(now, done);
            self.take_ops();
        }
    }

    // --- time and crashes ------------------------------------------------------------------

    /// A client sent its connection a frame.
    fn heard(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.liveness.heard();
            c.quiet = Duration::ZERO;
        }
    }

    /// Each connection's reader decides about the silence that `ms` more of it makes: it
    /// probes (a client that answers is heard from at once) or closes a silent connection.
    fn liveness(&mut self, ms: u64) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let c = self.conns.get_mut(&id).expect("present");
            c.quiet += Duration::from_millis(ms);
            loop {
                let c = self.conns.get_mut(&id).expect("present");
                let wait = c.liveness.wait();
                if c.quiet < wait {
                    break;
                }
                c.quiet -= wait;
                match c.liveness.waited(wait) {
                    Silence::Probe if c.mute => {}
                    Silence::Probe => c.liveness.heard(),
                    Silence::Close => {
                        if !c.mute {
                            let name = c.name.clone();
                            self.watch.violation(format!(
                                "{name} answers every ping but conn {id} was closed as silent"
                            ));
                        }
                        self.note(format!("conn {id} closed as silent"));
                        self.close(id, false);
                        break;
                    }
                }
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.mono += ms;
        self.wall += ms;
        self.watch.clock.set(self.wall);
        self.liveness(ms);
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let name = self.conns[&id].name.clone();
            if self
                .core
                .next_deadline(&name, id)
                .is_some_and(|d| d <= self.mono)
            {
                let now = self.now();
                self.core().redeliver_late(now, &name, id);
                self.take_ops();
            }
        }
    }

    /// The sweeper asks the store for expired entries; when the store is behind, looks may
    /// overlap (the sweeper does not wait for the answer to the last one).
    fn sweep(&mut self) {
        let looking = self.cmds.iter().any(|c| matches!(c, Cmd::Expired))
            || self
                .completions
                .iter()
                .any(|c| matches!(c, Completion::Expired(_)));
        if !looking || self.rng.random_bool(0.3) {
            self.core().begin_expiry_scan();
            self.cmds.push_back(Cmd::Expired);
        }
    }

    fn crash(&mut self) {
        self.note("crash: rebuilt from what was flushed".into());
        for (_, conn) in std::mem::take(&mut self.conns) {
            conn.out.0.closed.set(true);
        }
        for client in self.clients.values_mut() {
            client.conn = None;
        }
        self.applied = self.durable.clone();
        self.cmds.clear();
        self.after_flush.clear();
        self.completions.clear();
        self.store_failed = false;
        self.fail_next_write = false;
        let sessions = self.durable.sessions.values().cloned().collect();
        self.core = Core::new(self.cfg.clone(), self.durable.infos(), sessions);
    }

    // --- the schedule ----------------------------------------------------------------------

    fn random_name(&mut self) -> String {
        NAMES[self.rng.random_range(0..NAMES.len())].to_owned()
    }

    fn random_conn(&mut self) -> Option<u64> {
        if self.conns.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.conns.len());
        self.conns.keys().nth(i).copied()
    }

    fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..=7 => {
                let name = self.random_name();
                if self.clients[&name].conn.is_none() || self.rng.random_bool(0.15) {
                    let mute = self.rng.random_bool(0.1);
                    self.connect(&name, mute);
                }
            }
            8..=10 => {
                if let Some(id) = self.random_conn() {
                    let clean = self.rng.random_bool(0.6);
                    self.close(id, clean);
                }
            }
            11..=27 => {
                let name = self.random_name();
                self.publish(&name);
            }
            28..=31 => {
                let name = self.random_name();
                let ch = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
                if self.rng.random_bool(0.75) {
                    self.subscribe(&name, ch);
                } else {
                    self.unsubscribe(&name, ch);
                }
            }
            32..=41 => {
                if let Some(id) = self.random_conn() {
                    self.ack(id, false);
                }
            }
            42..=55 => {
                if let Some(id) = self.random_conn() {
                    let n = self.rng.random_range(1..8);
                    self.write(id, n);
                }
            }
            56..=63 => {
                let n = self.rng.random_range(1..4);
                self.apply_store(n);
            }
            64..=67 => self.flush(),
            68..=73 => {
                let n = self.rng.random_range(1..4);
                self.complete(n);
            }
            74..=83 => {
                if let Some(id) = self.random_conn() {
                    self.drain(id);
                }
            }
            84..=91 => {
                let ms = match self.rng.random_range(0..10) {
                    0..=6 => self.rng.random_range(1..200),
                    7 | 8 => self.rng.random_range(200..3_000),
                    _ => self.rng.random_range(3_000..40_000),
                };
                self.advance(ms);
            }
            92..=94 => self.sweep(),
            95 => {
                let now = self.now();
                self.core().expire_sessions(now);
                self.take_ops();
            }
            96 if self.rng.random_bool(0.3) => self.crash(),
            97 if self.rng.random_bool(0.2) => {
                self.note("the next store write fails".into());
                self.fail_next_write = true;
            }
            _ => {}
        }
    }

    /// Everyone connects and drains; faults stop.
    fn settle_down(&mut self) {
        self.fail_next_write = false;
        if self.store_failed {
            // A failed store refuses persistent messages until the broker restarts.
            self.apply_store(usize::MAX);
            self.flush();
            self.complete(usize::MAX);
            self.crash();
        }
        self.note("settling down".into());
        let mut jumped = 0;
        for round in 0..10_000 {
            // Everyone is (back) on a connection that answers pings.
            for name in NAMES {
                let mute = self.clients[name]
                    .conn
                    .is_none_or(|id| self.conns[&id].mute);
                if mute {
                    self.connect(name, false);
                }
            }
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for &id in &ids {
                self.write(id, usize::MAX);
                self.ack(id, true);
                self.wake(id);
                self.drain(id);
            }
            self.apply_store(usize::MAX);
            self.flush();
            self.complete(usize::MAX);
            for &id in &ids {
                self.drain(id);
            }
            let busy = !self.cmds.is_empty()
                || !self.completions.is_empty()
                || self.conns.values().any(|c| {
                    !c.out.0.queue.borrow().is_empty()
                        || !c.to_ack.is_empty()
                        || !matches!(c.drain, Drain::Idle)
                });
            let census = self.core.census();
            if !busy && census.inflight == 0 && census.queued == 0 && census.confirms == 0 {
                let unconfirmed: usize = self.clients.values().map(|c| c.unconfirmed.len()).sum();
                if unconfirmed == 0 {
                    return;
                }
            }
            if round % 20 == 19 {
                // Whatever waits for time: acknowledgement deadlines, times to live.
                jumped += 1;
                let ms = if jumped % 5 == 0 { 120_000 } else { 1_000 };
                self.advance(ms);
                self.sweep();
            }
        }
        self.watch.violation(format!(
            "did not settle: {:?}, store {:?}, {} store commands, {} unconfirmed",
            self.core.census(),
            self.listing(),
            self.cmds.len(),
            self.clients
                .values()
                .map(|c| c.unconfirmed.len())
                .sum::<usize>()
        ));
    }

    /// What the store holds, entry by entry.
    fn listing(&self) -> Vec<String> {
        self.applied
            .queues
            .iter()
            .flat_map(|(q, (_, entries))| {
                entries.iter().map(move |(seq, e)| match e {
                    StoredEntry::Message(m) => format!("{q} #{seq}: {} from {}", m.id, m.sender),
                    StoredEntry::Notice { notice, .. } => {
                        format!("{q} #{seq}: notice {}", notice.id)
                    }
                })
            })
            .collect()
    }

    fn check(&mut self) {
        let census = self.core.census();
        if census.queued != 0
            || census.inflight != 0
            || census.confirms != 0
            || census.stored_bytes != 0
        {
            self.watch.violation(format!(
                "the core holds state after draining: {census:?}, by queue {:?}",
                self.core.queue_census()
            ));
        }
        if self.applied.entries() != 0 {
            let left = self.listing();
            self.watch.violation(format!(
                "the store holds {} entries after draining: {left:?}",
                self.applied.entries()
            ));
        }
        for id in &self.persistent_ids {
            if !self.accepted.iter().any(|(_, a)| a == id) {
                self.watch
                    .violation(format!("persistent message {id} was never answered"));
            }
        }
        let decided = self.watch.decided.borrow();
        let notices = self.watch.notices.borrow();
        let lost = self.watch.lost.borrow();
        for (conn, id) in &self.accepted {
            let Some(recipients) = decided.get(&(*conn, id.clone())) else {
                continue;
            };
            for r in recipients {
                let reached = match r {
                    Recipient::Client(name) => self
                        .received
                        .keys()
                        .any(|(to, mid, _)| to == name && mid == id),
                    // A backlog's entries go to a subscriber, whose own delivery or notice
                    // settles them.
                    Recipient::Channel(ch) => {
                        self.via_channel.contains(&(id.clone(), ch.clone()))
                            || self.from_backlog.iter().any(|(to, mid)| {
                                let key = (id.clone(), Recipient::Client(to.clone()));
                                mid == id
                                    && (notices.contains(&key)
                                        || lost.contains(&key)
                                        || self.received.keys().any(|(r, m, _)| r == to && m == id))
                            })
                    }
                    Recipient::All => false,
                };
                let key = (id.clone(), r.clone());
                if !reached && !notices.contains(&key) && !lost.contains(&key) {
                    self.watch.violation(format!(
                        "{id} was confirmed (on connection {conn}) but neither reached {r:?} nor was its sender told"
                    ));
                }
            }
        }
    }
}

fn encode_failed(notice: DeliveryFailed) -> Bytes {
    broadcast_protocol::encode_frame(&ServerFrame::DeliveryFailed(notice), 1 << 20)
        .expect("encodes")
}

/// Runs one seed; returns its violations (a panic in the core is one) and the last events
/// before the first.
fn run(seed: u64, verbose: bool) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(|| run_unguarded(seed, verbose));
    outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(format!("seed {seed}: panicked: {what}"))
    })
}

fn run_unguarded(seed: u64, verbose: bool) -> Result<(), String> {
    let mut sim = Sim::new(seed, verbose);
    let steps = sim.rng.random_range(100..400);
    for _ in 0..steps {
        sim.step();
        if !sim.watch.violations.borrow().is_empty() {
            break;
        }
    }
    if sim.watch.violations.borrow().is_empty() {
        sim.settle_down();
        sim.check();
    }
    let violations = sim.watch.violations.borrow();
    if violations.is_empty() {
        return Ok(());
    }
    Err(format!(
        "seed {}: {}\n  last events:\n    {}",
        sim.seed,
        violations.join("\n  "),
        sim.log.join("\n    ")
    ))
}

#[test]
fn simulated_schedules_keep_every_promise() {
    assert!(
        core::predictable_hashing(),
        "maps were made before the simulation fixed their seed"
    );
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(e) = run(seed, true) {
            panic!("{e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let first: u64 = std::env::var("SIM_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        if let Err(e) = run(seed, false) {
            if failed.is_empty() {
                eprintln!("{e}");
            }
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds broke a promise: {:?}; replay one with SIM_SEED={} cargo test -p broadcast-broker --test simulation -- --nocapture",
        failed.len(),
        &failed[..failed.len().min(20)],
        failed[0]
    );
}

#[test]
fn a_seed_replays_exactly() {
    assert!(core::predictable_hashing());
    let trace = |seed| {
        let mut sim = Sim::new(seed, false);
        for _ in 0..300 {
            sim.step();
        }
        (sim.log.clone(), sim.core.census())
    };
    assert_eq!(trace(7), trace(7));
}

/// A session restored after a crash while its client was connected counts as last seen at the
/// restart; one whose client had left before counts from when it left, restarts or not.
#[test]
fn after_a_crash_a_restored_session_counts_its_time_away_from_the_restart() {
    // Before any map is made: the other tests of this process replay seeds with it.
    assert!(core::predictable_hashing());
    let cfg = Config {
        session_expiry: Duration::from_secs(3600),
        ..Config::default()
    };
    let restart = 1_000_000_000_000;
    let sessions = vec![
        Session {
            name: "connected".into(),
            channels: vec!["news".into()],
            last_seen_ms: Session::CONNECTED,
        },
        Session {
            name: "left".into(),
            channels: vec!["news".into()],
            last_seen_ms: restart - 1_800_000,
        },
    ];
    let mut core: Core<SimOutlet> = Core::new(cfg, Vec::new(), sessions);
    let at = |ms: u64| Now {
        wall_ms: restart + ms,
        mono_ms: ms,
    };
    core.expire_sessions(at(0));
    core.expire_sessions(at(60_000));
    assert_eq!(
        core.gauges().sessions,
        2,
        "expired a minute after the restart"
    );
    // Half an hour after the restart, the client that left half an hour before it is gone.
    core.expire_sessions(at(1_800_001));
    assert_eq!(core.gauges().sessions, 1, "kept past its limit");
    core.expire_sessions(at(3_600_000));
    assert_eq!(
        core.gauges().sessions,
        1,
        "expired at its limit, not past it"
    );
    core.expire_sessions(at(3_600_001));
    assert_eq!(core.gauges().sessions, 0, "kept past its limit");
}
