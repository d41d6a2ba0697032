//! The routing core under its lock, joined to the store: every call locks the [`Core`], gives
//! it one input, hands the store the writes it decided while still holding the lock (so the
//! store applies writes in the order they were decided, and a drainer's read comes after
//! every write it could have seen decided), and unlocks. Store completions come back through
//! a channel, as values, and are fed to the core by one task (the two that come with every group
//! of writes straight from the store threads, see [`Completions`]).
//!
//! The lock is a `std::sync::Mutex` held only for short, non-blocking work: the core's own,
//! `try_push` into bounded outbound queues, and sending into store slots reserved beforehand.
//! It is never held across an `.await`.

use crate::config::Config;
use crate::conn::Outbound;
use crate::core::{
    ChannelFilter, Completion, ConfirmId, Core, DrainStep, NewConfirm, Now, Refusal, Routed,
    Subscribed,
};
use crate::handle::Observed;
use crate::maps::HashMap;
use crate::metrics::{Metrics, Source};
use crate::persist::{Command, Persist, Slot};
use crate::store::{QueueStore, Seq, StoreError, StoredEntry};
use broadcast_protocol::{DeliveryFailed, Publish};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// The store thread has stopped: nothing more can be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreStopped;

/// The core under its lock, shared by the engine and the store threads' [`Completions`].
type Locked = Arc<Mutex<Core<Outbound>>>;

/// Locks the core and tells it whether the store takes writes. A panic while holding the lock
/// cannot leave the core in a state worse than stopping the broker would, so a poisoned lock is
/// used as it is.
fn lock<'a>(core: &'a Locked, failed: &AtomicBool) -> MutexGuard<'a, Core<Outbound>> {
    let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
    core.set_store_failed(failed.load(Ordering::Acquire));
    core
}

/// The time as the core takes it: the wall clock, and milliseconds on a monotonic clock since
/// the engine started.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> Now {
        Now {
            wall_ms: now_ms(),
            mono_ms: self.0.elapsed().as_millis() as u64,
        }
    }

    /// The instant of a core deadline in monotonic milliseconds.
    fn instant(self, mono_ms: u64) -> Instant {
        self.0 + Duration::from_millis(mono_ms)
    }
}

/// Where the store threads hand what they report, as values. The two that come with every
/// group of writes and never make the core write again (entries appended, writes durable) are
/// applied at once under the core's lock, on the store thread that reports them; the others go
/// in order through a channel to the engine's completion task, which sends the writes they
/// cause. Appended and durable reports only wake drainers and settle confirmations, so their
/// order against the others does not matter.
#[derive(Clone)]
pub(crate) struct Completions {
    core: Locked,
    failed: Arc<AtomicBool>,
    clock: Clock,
    rest: mpsc::UnboundedSender<(Completion, Option<Then>)>,
}

/// What runs once the core has taken a completion and the writes it caused are on their way to
/// the store.
pub(crate) type Then = Box<dyn FnOnce() + Send>;

impl Completions {
    /// Hands the core a completion that goes through the completion task, and runs `then`
    /// once the core has taken it and the writes it caused are on their way to the store.
    pub(crate) fn send_then(&self, done: Completion, then: Then) {
        let _ = self.rest.send((done, Some(then)));
    }

    /// Hands the core a completion.
    pub(crate) fn send(&self, done: Completion) {
        match done {
            Completion::Appended { .. } | Completion::Durable(_) => {
                let mut core = lock(&self.core, &self.failed);
                core.complete(self.clock.now(), done);
                debug_assert!(
                    !core.has_ops(),
                    "appended and durable reports write nothing"
                );
            }
            other => {
                // The task has stopped only when the broker has.
                let _ = self.rest.send((other, None));
            }
        }
    }
}

/// The core as the shell runs it.
pub(crate) struct Engine {
    core: Locked,
    failed: Arc<AtomicBool>,
    config: Config,
    pub(crate) persist: Persist,
    observers: broadcast::Sender<Arc<Observed>>,
    next_conn: AtomicU64,
    clock: Clock,
    /// What the shell counts.
    pub(crate) metrics: Arc<Metrics>,
    /// Connections that completed their handshake, by connection number, for the admin API.
    conns: Mutex<HashMap<u64, ConnInfo>>,
    /// The store, for its size on disk (every write goes through `persist`).
    store: Arc<dyn QueueStore>,
}

/// What the admin API shows of a connection beside what the core knows.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// Milliseconds since the Unix epoch when it registered.
    pub(crate) since_ms: u64,
    pub(crate) out: Outbound,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    /// An engine over an opened store: the core restored from it, the store threads started,
    /// and the task that feeds their completions to the core.
    pub(crate) fn start(
        config: Config,
        store: Arc<dyn QueueStore>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, StoreError> {
        // The queues are read once: the core counts their entries, the store thread numbers
        // what it appends to them.
        let queues = store.queues()?;
        let failed = Arc::new(AtomicBool::new(false));
        let clock = Clock(Instant::now());
        let (rest, done_rx) = mpsc::unbounded_channel();
        let core: Locked = Arc::new(Mutex::new(Core::new(
            config.clone(),
            queues.clone(),
            store.sessions()?,
        )));
        let done = Completions {
            core: core.clone(),
            failed: failed.clone(),
            clock,
            rest,
        };
        let metrics = Arc::new(Metrics::default());
        let persist = Persist::start(
            store.clone(),
            &queues,
            failed.clone(),
            done,
            metrics.clone(),
        )?;
        let (observers, _) = broadcast::channel(1024);
        let engine = Arc::new(Self {
            core,
            failed,
            config,
            persist,
            observers,
            next_conn: AtomicU64::new(1),
            clock,
            metrics,
            conns: Mutex::new(HashMap::default()),
            store,
        });
        rt.spawn(completions(engine.clone(), done_rx));
        Ok(engine)
    }

    /// Notes a connection that registered, for the admin API.
    pub(crate) fn conn_opened(&self, conn_id: u64, peer: SocketAddr, out: Outbound) {
        let info = ConnInfo {
            peer,
            since_ms: now_ms(),
            out,
        };
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn_id, info);
    }

    /// Forgets a connection noted by [`Engine::conn_opened`].
    pub(crate) fn conn_closed(&self, conn_id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn_id);
    }

    /// What the shell knows of each registered connection.
    pub(crate) fn conns(&self) -> HashMap<u64, ConnInfo> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connected clients, for the admin API.
    pub(crate) fn client_rows(&self) -> Vec<crate::core::ClientRow> {
        self.lock().client_rows()
    }

    /// The queues, for the admin API.
    pub(crate) fn queue_rows(&self) -> Vec<crate::core::QueueRow> {
        self.lock().queue_rows()
    }

    /// The channels, for the admin API.
    pub(crate) fn channel_rows(&self) -> Vec<crate::core::ChannelRow> {
        self.lock().channel_rows()
    }

    /// Whether the store refuses writes now.
    pub(crate) fn store_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The core, locked, told whether the store takes writes.
    fn lock(&self) -> MutexGuard<'_, Core<Outbound>> {
        lock(&self.core, &self.failed)
    }

    /// The time as the core takes it.
    fn now(&self) -> Now {
        self.clock.now()
    }

    /// Gives the core an input at the current time, under its lock, and hands the store what
    /// it decided through a slot reserved before the lock (so that writes reach the store in
    /// the order they were decided). Without a slot the store has stopped and the writes are
    /// reported as not applied.
    async fn decide<R>(&self, input: impl FnOnce(&mut Core<Outbound>, Now) -> R) -> R {
        let slot = self.persist.reserve().await;
        let now = self.now();
        let mut core = self.lock();
        let r = input(&mut core, now);
        Self::send_ops(&mut core, slot, None);
        r
    }

    /// Reports the notices the core could neither deliver nor keep.
    fn report_lost(core: &mut Core<Outbound>) {
        for (sender, notice) in core.take_lost() {
            tracing::error!(
                %sender,
                id = %notice.id,
                recipient = ?notice.recipient,
                reason = ?notice.reason,
                "a delivery-failed notice is lost: its sender is away and the store takes no writes"
            );
        }
    }

    /// Sends the writes the core decided through `slot`, under the core's lock; `done` is
    /// answered once they are durable. Every caller reserves its slot before it locks the
    /// core, so writes reach the store in the order they were decided.
    fn send_ops(core: &mut Core<Outbound>, slot: Option<Slot>, done: Option<oneshot::Sender<()>>) {
        Self::report_lost(core);
        let ops = core.take_ops();
        match slot {
            Some(slot) if !ops.is_empty() || done.is_some() => {
                slot.send(Command::Ops(ops, done));
            }
            Some(_) => {}
            None if ops.is_empty() => {}
            None => tracing::error!(
                writes = ops.len(),
                "the store thread has stopped; writes are not applied"
            ),
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

    /// Hands a copy of a client's message to the observers, if any.
    fn notify_observers(&self, sender: &Arc<str>, msg: &Publish) {
        let shown = crate::namespace::shown(sender);
        if self.observers.receiver_count() > 0 && shown != crate::BROKER_SENDER {
            let ns = crate::namespace::namespace_of(sender);
            let observed = if ns.is_empty() {
                Observed {
                    namespace: None,
                    sender: sender.to_string(),
                    message: msg.clone(),
                }
            } else {
                Observed {
                    namespace: Some(ns.to_owned()),
                    sender: shown.to_owned(),
                    message: Publish {
                        target: crate::namespace::shown_target(&msg.target),
                        ..msg.clone()
                    },
                }
            };
            // A lagging observer loses old entries; it never slows routing.
            let _ = self.observers.send(Arc::new(observed));
        }
    }

    /// Names of the connected clients.
    pub(crate) fn connected(&self) -> Vec<String> {
        self.lock().connected()
    }

    /// Registers a connection under `name`, first dropping the name's subscriptions that
    /// `keep` refuses; returns the connection it took the name from and the channels dropped.
    pub(crate) async fn register(
        &self,
        name: Arc<str>,
        out: Outbound,
        keep: &(dyn Fn(&str) -> bool + Sync),
        channels: Option<ChannelFilter>,
    ) -> Result<(Option<Outbound>, Vec<Arc<str>>), StoreStopped> {
        let slot = self.persist.reserve().await.ok_or(StoreStopped)?;
        let mut core = self.lock();
        let dropped = core.retain_subscriptions(&name, keep);
        let conn_id = out.conn_id;
        let old = core.register(name.clone(), out);
        core.set_channel_filter(&name, conn_id, channels);
        Self::send_ops(&mut core, Some(slot), None);
        Ok((old, dropped))
    }

    /// Drops the subscriptions of `name` that `keep` refuses, while connection `conn_id`
    /// holds the name; returns them.
    pub(crate) async fn retain_subscriptions(
        &self,
        name: &Arc<str>,
        conn_id: u64,
        keep: &(dyn Fn(&str) -> bool + Sync),
        channels: Option<ChannelFilter>,
    ) -> Result<Vec<Arc<str>>, StoreStopped> {
        let slot = self.persist.reserve().await.ok_or(StoreStopped)?;
        let mut core = self.lock();
        let dropped = if core.holds(name, conn_id) {
            core.set_channel_filter(name, conn_id, channels);
            core.retain_subscriptions(name, keep)
        } else {
            Vec::new()
        };
        Self::send_ops(&mut core, Some(slot), None);
        Ok(dropped)
    }

    /// Removes a connection unless its name was taken over.
    pub(crate) async fn unregister(&self, name: &str, conn_id: u64) {
        self.decide(|core, now| core.unregister(now, name, conn_id))
            .await;
    }

    /// Subscribes; the receiver resolves once the subscription is durable.
    pub(crate) async fn subscribe(
        &self,
        name: &Arc<str>,
        conn_id: u64,
        channel: &str,
    ) -> Result<Result<(Subscribed, oneshot::Receiver<()>), Refusal>, StoreStopped> {
        let slot = self.persist.reserve().await.ok_or(StoreStopped)?;
        let (tx, rx) = oneshot::channel();
        let mut core = self.lock();
        let subscribed = match core.subscribe(name, conn_id, channel) {
            Ok(subscribed) => subscribed,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if subscribed.new {
            Self::send_ops(&mut core, Some(slot), Some(tx));
        } else {
            let _ = tx.send(());
            Self::send_ops(&mut core, Some(slot), None);
        }
        Ok(Ok((subscribed, rx)))
    }

    /// Removes a subscription.
    pub(crate) async fn unsubscribe(
        &self,
        name: &Arc<str>,
        conn_id: u64,
        channel: &str,
    ) -> Result<(), StoreStopped> {
        let slot = self.persist.reserve().await.ok_or(StoreStopped)?;
        let mut core = self.lock();
        core.unsubscribe(name, conn_id, channel);
        Self::send_ops(&mut core, Some(slot), None);
        Ok(())
    }

    /// Checks a message before routing it.
    pub(crate) fn validate(&self, msg: &Publish) -> Result<(), Refusal> {
        crate::core::validate(&self.config, msg)
    }

    /// Routes a validated message that is not kept.
    pub(crate) fn route(&self, sender: &Arc<str>, msg: &Publish) -> Routed<Outbound> {
        self.notify_observers(sender, msg);
        // Only a message that may be kept needs the clock, for its expiry.
        let now = if msg.persistent {
            self.now()
        } else {
            Now::default()
        };
        let mut core = self.lock();
        let routed = core.route(now, sender, msg);
        debug_assert!(
            !core.has_ops(),
            "a message without confirmation is not kept"
        );
        routed
    }

    /// Routes a run of validated persistent messages from `sender` (whose connection is
    /// `out`), each with its confirmation.
    pub(crate) async fn route_persistent(
        &self,
        sender: &Arc<str>,
        out: &Outbound,
        msgs: &[Publish],
        confirms: Vec<NewConfirm<Outbound>>,
    ) -> Vec<Routed<Outbound>> {
        for msg in msgs {
            self.notify_observers(sender, msg);
        }
        // One clock read for the run: its messages arrived together.
        self.decide(|core, now| core.route_persistent(now, sender, out, msgs, confirms))
            .await
    }

    /// Releases routing's hold on a confirmation whose notices are sent, if it has one.
    pub(crate) fn release(&self, hold: Option<ConfirmId>) {
        if let Some(id) = hold {
            self.lock().release(id);
        }
    }

    /// Handles acknowledgements.
    pub(crate) async fn ack(&self, name: &str, conn_id: u64, tags: &[u64]) {
        self.decide(|core, _| core.ack(name, conn_id, tags)).await;
    }

    /// The next step of a drainer.
    pub(crate) fn drain_step(&self, name: &str, conn_id: u64) -> DrainStep {
        self.lock().drain_step(name, conn_id)
    }

    /// Hands entries read from a queue to its connection; true to read again at once.
    pub(crate) async fn drained(
        &self,
        name: &str,
        conn_id: u64,
        from: Seq,
        decided: u64,
        entries: Vec<(Seq, StoredEntry)>,
    ) -> bool {
        self.decide(|core, now| core.drained(now, name, conn_id, from, decided, entries))
            .await
    }

    /// Earliest acknowledgement deadline of a connection.
    pub(crate) fn next_deadline(&self, name: &str, conn_id: u64) -> Option<Instant> {
        let deadline = self.lock().next_deadline(name, conn_id)?;
        Some(self.clock.instant(deadline))
    }

    /// Sends again, or gives up on, a connection's late deliveries.
    pub(crate) async fn redeliver_late(&self, name: &str, conn_id: u64) {
        self.decide(|core, now| core.redeliver_late(now, name, conn_id))
            .await;
    }

    /// Sends a notice to a sender outside of its own request.
    pub(crate) async fn notify(&self, sender: &str, notice: DeliveryFailed) {
        self.decide(|core, now| core.notify(now, sender, notice))
            .await;
    }

    /// Opens a look for expired entries.
    pub(crate) fn begin_expiry_scan(&self) {
        self.lock().begin_expiry_scan();
    }

    /// Forgets expired sessions.
    pub(crate) async fn expire_sessions(&self) {
        self.decide(|core, now| core.expire_sessions(now)).await;
    }
}

/// Feeds the store's completions to the core, as many as are waiting under one lock.
async fn completions(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<(Completion, Option<Then>)>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut then = Vec::new();
    while rx.recv_many(&mut batch, 64).await > 0 {
        engine
            .decide(|core, now| {
                for (done, after) in batch.drain(..) {
                    core.complete(now, done);
                    then.extend(after);
                }
            })
            .await;
        // The writes decided are in the store's channel now.
        for after in then.drain(..) {
            after();
        }
    }
}

impl Source for Engine {
    fn core(&self) -> (crate::core::Stats, crate::core::Gauges) {
        let core = self.lock();
        (core.stats().clone(), core.gauges())
    }

    fn store_failed(&self) -> bool {
        Engine::store_failed(self)
    }

    fn store_bytes(&self) -> Option<u64> {
        self.store.size_on_disk()
    }
}
