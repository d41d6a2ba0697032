//! The workloads, with the same definitions as the side-by-side harness that drives NATS, Redis
//! and Mosquitto: the same counts, sizes, clocks and loss accounting, and the same output
//! fields. Each runs once against a broker address and returns its metrics as a JSON object.
//! Every loop is bounded by a count and by the run's deadline (`--max-secs`); a receiver also
//! stops after `--idle-secs` without a message.
//!
//! Targets: direct client messages for one-to-one traffic (throughput, latency, fan-in,
//! offline, persistent) and a channel for fan-out. Throughput, latency, fan-out and fan-in
//! send non-persistent messages (the at-most-once peers' semantics); offline and persistent
//! send persistent ones, which the broker confirms with `Accepted`.
//!
//! Client and channel names carry a tag unique to the run, so that runs against a broker that
//! keeps running never see each other's queues or subscriptions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broadcast_client::{Client, ConnectOptions, Event, Events, FailureReason, OutgoingMessage};
use futures::{FutureExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::payload::{Received, SeqSet, message, now_ns, rate, receive, sent_at_ns, seq_of};

/// Settings shared by the workloads (the load generator's `--help` gives the defaults).
#[derive(Clone, Debug)]
pub struct Params {
    /// Message size in bytes (at least 16).
    pub size: usize,
    /// throughput: messages sent.
    pub count: u64,
    /// latency: requests per second.
    pub rate: u64,
    /// latency: seconds measured after one second of warm-up.
    pub secs: u64,
    /// fanout: subscribers.
    pub subscribers: usize,
    /// fanout: messages sent.
    pub fanout_count: u64,
    /// offline: messages stored while the recipient is away.
    pub offline_count: u64,
    /// persistent: messages sent to the connected recipient.
    pub persistent_count: u64,
    /// fanin: sending connections.
    pub connections: usize,
    /// fanin: messages per connection.
    pub per_connection: u64,
    /// Upper bound on one run, in seconds.
    pub max_secs: u64,
    /// A receiver gives up after this many seconds without a message.
    pub idle_secs: u64,
    /// The credential every client presents, for a broker that requires one.
    pub token: Option<String>,
    /// TLS: every client connects with this configuration.
    pub tls: Option<Arc<broadcast_client::rustls::ClientConfig>>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            size: 128,
            count: 1_000_000,
            rate: 5_000,
            secs: 10,
            subscribers: 50,
            fanout_count: 100_000,
            offline_count: 100_000,
            persistent_count: 100_000,
            connections: 1_000,
            per_connection: 100,
            max_secs: 180,
            idle_secs: 5,
            token: None,
            tls: None,
        }
    }
}

impl Params {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.max_secs)
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }
}

/// Every workload, in the order `all` runs them.
pub const WORKLOADS: [&str; 6] = [
    "throughput",
    "latency",
    "fanout",
    "offline",
    "fanin",
    "persistent",
];

/// How many sending connections are opened at once in the fan-in workload.
pub const CONNECT_PARALLEL: usize = 32;

/// Runs workload `name` once against the broker at `addr`. `tag` (letters and digits) makes
/// the run's client and channel names unique.
///
/// # Errors
/// An unknown workload, a failed connection, or a client that stopped.
pub async fn run(name: &str, addr: &str, tag: &str, p: &Params) -> Result<Value> {
    let run = Run {
        addr: addr.to_owned(),
        tag: tag.to_owned(),
        token: p.token.clone(),
        tls: p.tls.clone(),
    };
    match name {
        "throughput" => throughput(&run, p).await,
        "latency" => latency(&run, p).await,
        "fanout" => fanout(&run, p).await,
        "offline" => offline(&run, p).await,
        "fanin" => fanin(&run, p).await,
        "persistent" => persistent(&run, p).await,
        _ => bail!("unknown workload {name} (one of: {})", WORKLOADS.join(", ")),
    }
}

/// One run: where the broker is and the tag of its names.
struct Run {
    addr: String,
    tag: String,
    token: Option<String>,
    tls: Option<Arc<broadcast_client::rustls::ClientConfig>>,
}

impl Run {
    /// A client name unique to this run.
    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// Connects as `name` (from [`Run::name`]), with the client's default settings.
    async fn connect(&self, name: &str) -> Result<Client> {
        self.connect_with(name, ConnectOptions::new()).await
    }

    /// Connects as `name` (from [`Run::name`]) with `options`.
    async fn connect_with(&self, name: &str, mut options: ConnectOptions) -> Result<Client> {
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(tls) = &self.tls {
            options = options.tls(tls.clone());
        }
        let connecting = options.name(name).connect(self.addr.as_str());
        tokio::time::timeout(Duration::from_secs(30), connecting)
            .await
            .with_context(|| format!("{name}: no connection to {} within 30 s", self.addr))?
            .with_context(|| format!("{name}: cannot connect to {}", self.addr))
    }
}

impl Run {
    /// Connects a sender of persistent messages, with room in its event stream for the
    /// confirmations of [`send_all_confirmed`].
    async fn confirming_sender(&self, name: &str) -> Result<Client> {
        let options = ConnectOptions::new().event_buffer(CONFIRM_EVENT_BUFFER);
        self.connect_with(name, options).await
    }
}

// ---- helpers ---------------------------------------------------------------

/// Closes `client` at `deadline`, which makes any `send` or `flush` still waiting fail: a
/// bound on every wait of a sender, at no cost per message.
fn watchdog(client: &Client, deadline: Instant) -> JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        eprintln!("deadline reached: closing {}", client.name());
        client.close().await;
    })
}

/// Sends messages `0..count` (made by `make`), stopping early at `deadline` (checked every
/// 1,024 messages, as in the harness); returns how many were sent.
async fn send_all(
    client: &Client,
    count: u64,
    deadline: Instant,
    mut make: impl FnMut(u64) -> OutgoingMessage,
) -> Result<u64> {
    let mut sent = 0;
    while sent < count && (sent % 1024 != 0 || Instant::now() < deadline) {
        client
            .send(make(sent))
            .await
            .with_context(|| format!("sending message {sent}"))?;
        sent += 1;
    }
    Ok(sent)
}

fn spawn_receive<S>(
    mut stream: S,
    expect: u64,
    idle: Duration,
    deadline: Instant,
) -> JoinHandle<Received>
where
    S: futures::Stream<Item = broadcast_client::Message> + Unpin + Send + 'static,
{
    tokio::spawn(async move { receive(&mut stream, expect, idle, deadline).await })
}

/// How many persistent messages a sender keeps waiting for confirmation: the client's
/// default `max_unconfirmed`.
pub const CONFIRM_WINDOW: usize = 4096;

/// Events a confirming sender's [`Events`](broadcast_client::Events) stream holds: twice the
/// window. The sender never has more than [`CONFIRM_WINDOW`] messages unconfirmed by its own
/// count, so at most that many `Accepted` events wait unread; a `Lagged` fails the run.
pub const CONFIRM_EVENT_BUFFER: usize = 2 * CONFIRM_WINDOW;

/// The id of benchmark message `seq`: its sequence number, as long as a default (nanoid) id,
/// so that each `Accepted` names the message it confirms.
pub fn confirm_id(seq: u64) -> String {
    let mut digits = [b'0'; 21];
    let mut n = seq;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // `u64::MAX` has 20 digits: 21 always hold the number. The digits are ASCII, so the
    // conversion cannot fail.
    String::from_utf8(digits.to_vec()).unwrap_or_default()
}

/// The sequence number in an id made by [`confirm_id`].
pub fn confirm_seq(id: &str) -> Option<u64> {
    if id.len() == 21 {
        id.parse().ok()
    } else {
        None
    }
}

/// The outcome of [`send_all_confirmed`].
#[derive(Debug, Clone, Default)]
struct Confirmed {
    /// Messages handed to the client.
    sent: u64,
    /// Messages the broker confirmed (`Accepted`), each counted once.
    confirmed: u64,
    /// When the last confirmation arrived.
    last: Option<Instant>,
    /// Sends that failed, and the first failure.
    failed: u64,
    first_error: Option<String>,
}

/// Counts a confirming sender's events.
#[derive(Debug)]
struct ConfirmCount {
    /// Sequence numbers confirmed.
    confirmed: SeqSet,
    /// When the last new confirmation was counted (read once per batch of events handled
    /// together, see [`ConfirmCount::stamp`]).
    last: Option<Instant>,
    /// A new confirmation was counted since `last` was read.
    unstamped: bool,
    /// Messages the client reported it will never see confirmed (`Unconfirmed`, or too large
    /// for the broker).
    failed: u64,
    first_error: Option<String>,
    /// Events missed (`Lagged`): the counts cannot be trusted then.
    lagged: u64,
    /// The client stopped (`Closed`, or the end of the stream).
    closed: bool,
}

impl ConfirmCount {
    fn new(count: u64) -> Self {
        Self {
            confirmed: SeqSet::new(count),
            last: None,
            unstamped: false,
            failed: 0,
            first_error: None,
            lagged: 0,
            closed: false,
        }
    }

    fn on_event(&mut self, event: Option<Event>) {
        match event {
            Some(Event::Accepted { id }) => {
                if confirm_seq(&id).is_some_and(|seq| self.confirmed.insert(seq)) {
                    self.unstamped = true;
                }
            }
            Some(Event::Unconfirmed { id }) => {
                self.failed += 1;
                self.first_error
                    .get_or_insert_with(|| format!("message {id} never confirmed"));
            }
            Some(Event::DeliveryFailed {
                id,
                reason: FailureReason::TooLarge,
                detail,
                ..
            }) => {
                self.failed += 1;
                self.first_error
                    .get_or_insert_with(|| format!("message {id}: {detail}"));
            }
            Some(Event::Lagged { missed }) => self.lagged += missed,
            Some(Event::Closed) | None => self.closed = true,
            Some(_) => {}
        }
    }

    /// Reads the clock if confirmations were counted since the last reading: called after
    /// every batch of events handled together, so the time is that of the batch's end (never
    /// earlier than its last confirmation) at one clock read per batch.
    fn stamp(&mut self) {
        if self.unstamped {
            self.last = Some(Instant::now());
            self.unstamped = false;
        }
    }
}

/// Sends persistent messages `0..count` (made by `make`), keeping up to [`CONFIRM_WINDOW`] of
/// them waiting for their `Accepted` at once (the client pipelines and batches them), and
/// counts the confirmations. Stops taking new messages at `deadline` (checked every 1,024
/// messages); the caller's [`watchdog`] ends the waits at the deadline (the client then
/// reports every message still unconfirmed, and stops).
///
/// Confirmations are counted from the client's events (`Accepted`, one per message, naming
/// it), read from `events`, which the caller made before the first send with
/// [`CONFIRM_EVENT_BUFFER`] events of room. The window keeps the unread events within that
/// room; should the stream lag anyway, the run fails rather than report a count it missed.
async fn send_all_confirmed(
    client: &Client,
    mut events: Events,
    count: u64,
    deadline: Instant,
    mut make: impl FnMut(u64) -> OutgoingMessage,
) -> Result<Confirmed> {
    let mut c = ConfirmCount::new(count);
    let (mut sent, mut send_failed, mut send_error) = (0u64, 0u64, None);
    let mut sending = true;
    loop {
        // Read what has arrived, without waiting.
        while let Some(event) = events.next().now_or_never() {
            c.on_event(event);
            if c.closed {
                break;
            }
        }
        c.stamp();
        let resolved = c.confirmed.len() + c.failed + send_failed;
        let waiting = sent.saturating_sub(resolved);
        if sending && !c.closed && sent < count && waiting < CONFIRM_WINDOW as u64 {
            if sent % 1024 == 0 && Instant::now() >= deadline {
                sending = false;
                continue;
            }
            // Send a burst before looking at the events again.
            let burst = (CONFIRM_WINDOW as u64 - waiting).min(count - sent).min(256);
            for _ in 0..burst {
                let seq = sent;
                sent += 1;
                if let Err(e) = client.send(make(seq).id(confirm_id(seq))).await {
                    send_failed += 1;
                    send_error.get_or_insert_with(|| e.to_string());
                    sending = false;
                    break;
                }
                if sent % 1024 == 0 {
                    break;
                }
            }
            continue;
        }
        if c.closed || waiting == 0 && (!sending || sent == count) {
            break;
        }
        let event = events.next().await;
        c.on_event(event);
    }
    if c.lagged > 0 {
        bail!(
            "the sender's event stream lagged ({} events missed): confirmations cannot be counted",
            c.lagged
        );
    }
    Ok(Confirmed {
        sent,
        confirmed: c.confirmed.len(),
        last: c.last,
        failed: c.failed + send_failed,
        first_error: send_error.or(c.first_error),
    })
}

/// What the events of a sender said.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    /// `DeliveryFailed` events (one per recipient that will not get a message).
    failed: u64,
    /// Events missed because the watcher fell behind (`Lagged`).
    lagged: u64,
    /// `ServerError` events.
    server_errors: u64,
}

/// Watches a non-persistent sender's events: counts `DeliveryFailed`, `ServerError` and
/// `Lagged` (events missed: the counts are then lower bounds).
struct FailureWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Failures>,
}

impl FailureWatch {
    /// Starts watching, before anything is sent.
    fn spawn(client: &Client, deadline: Instant) -> Self {
        let mut events = client.events();
        let stop = Arc::new(AtomicBool::new(false));
        let stp = stop.clone();
        let task = tokio::spawn(async move {
            let mut f = Failures::default();
            let count = |f: &mut Failures, event: Event| match event {
                Event::DeliveryFailed { .. } => f.failed += 1,
                Event::ServerError { .. } => f.server_errors += 1,
                Event::Lagged { missed } => f.lagged += missed,
                _ => {}
            };
            loop {
                let now = Instant::now();
                if stp.load(Ordering::Acquire) || now >= deadline {
                    break;
                }
                let wait = Duration::from_millis(100).min(deadline - now);
                match tokio::time::timeout(wait, events.next()).await {
                    Err(_) => {}
                    Ok(None | Some(Event::Closed)) => return f,
                    Ok(Some(event)) => count(&mut f, event),
                }
            }
            // What arrived before the stop is counted too.
            while let Some(Some(event)) = events.next().now_or_never() {
                count(&mut f, event);
            }
            f
        });
        Self { stop, task }
    }

    /// Stops watching now.
    async fn finish(self) -> Result<Failures> {
        self.stop.store(true, Ordering::Release);
        Ok(self.task.await?)
    }
}

/// The sender-side fields every workload reports.
fn sender_fields(out: &mut Value, f: &Failures) {
    out["delivery_failed"] = json!(f.failed);
    out["server_errors"] = json!(f.server_errors);
    out["events_lagged"] = json!(f.lagged);
}

// ---- 1. throughput ----------------------------------------------------------

/// One sender, one receiver; end-to-end delivered msg/s from the first send to the last
/// receive.
async fn throughput(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let (rx_name, tx_name) = (run.name("tp-sub"), run.name("tp-pub"));
    let receiver = run.connect(&rx_name).await?;
    let inbox = receiver.direct_messages().context("direct stream taken")?;
    let sender = run.connect(&tx_name).await?;
    let events = FailureWatch::spawn(&sender, deadline);
    let guard = watchdog(&sender, deadline);
    let rx = spawn_receive(inbox, p.count, p.idle(), deadline);

    let t0 = Instant::now();
    let size = p.size;
    let sent = send_all(&sender, p.count, deadline, |seq| {
        OutgoingMessage::to_client(rx_name.as_str(), message(seq, size)).persistent(false)
    })
    .await?;
    sender.flush().await?;
    let publish_time = t0.elapsed();
    let r = rx.await?;
    guard.abort();
    let elapsed = r.last.map_or(Duration::ZERO, |l| l - t0);
    let c = events.finish().await?;
    sender.close().await;
    receiver.close().await;
    let mut out = json!({
        "count": p.count, "size": p.size, "sent": sent, "received": r.unique,
        "lost": sent.saturating_sub(r.unique), "duplicates": r.duplicates(),
        "msgs_per_s": rate(r.unique, elapsed),
        "publish_msgs_per_s": rate(sent, publish_time),
        "secs": elapsed.as_secs_f64(),
    });
    sender_fields(&mut out, &c);
    Ok(out)
}

// ---- 2. latency -------------------------------------------------------------

/// A requester sends to an echo client at a fixed rate; the echo client sends each message
/// straight back. Round-trip percentiles in µs, after one unrecorded second of warm-up.
async fn latency(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let warmup = p.rate; // the first second is not recorded
    let total = warmup + p.rate * p.secs;
    let (echo_name, req_name) = (run.name("lat-echo"), run.name("lat-req"));

    let echo = run.connect(&echo_name).await?;
    let mut echo_in = echo.direct_messages().context("direct stream taken")?;
    let requester = run.connect(&req_name).await?;
    let mut replies = requester.direct_messages().context("direct stream taken")?;
    let guard = watchdog(&requester, deadline);

    let stop = Arc::new(AtomicBool::new(false));
    let echo_task = {
        let (stop, echo, back_to) = (stop.clone(), echo.clone(), req_name.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(100), echo_in.next()).await {
                    Err(_) => {}
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        let back =
                            OutgoingMessage::to_client(back_to.as_str(), m.data).persistent(false);
                        echo.send(back).await?;
                    }
                }
            }
            anyhow::Ok(())
        })
    };

    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let idle = p.idle();
    let recv_task = {
        let (sent, done) = (sent.clone(), done.clone());
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut received, mut quiet_since) = (0u64, Instant::now());
            while Instant::now() < deadline {
                let finished = done.load(Ordering::Acquire);
                if finished && received >= sent.load(Ordering::Acquire) {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), replies.next()).await {
                    Ok(Some(m)) => {
                        quiet_since = Instant::now();
                        received += 1;
                        if let (Some(seq), Some(at)) = (seq_of(&m.data), sent_at_ns(&m.data)) {
                            if seq >= warmup {
                                let us = now_ns().saturating_sub(at) / 1000;
                                hist.saturating_record(us.max(1));
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(_) if finished && quiet_since.elapsed() > idle => break,
                    Err(_) => {}
                }
            }
            anyhow::Ok((hist, received))
        })
    };

    // Open loop: every millisecond, send whatever the schedule says is due.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let start = Instant::now();
    let mut i = 0;
    while i < total && Instant::now() < deadline {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * p.rate as f64) as u64).min(total);
        while i < due {
            let msg = OutgoingMessage::to_client(echo_name.as_str(), message(i, p.size))
                .persistent(false);
            requester.send(msg).await?;
            i += 1;
        }
        sent.store(i, Ordering::Release);
    }
    requester.flush().await?;
    done.store(true, Ordering::Release);
    let (hist, received) = recv_task.await??;
    stop.store(true, Ordering::Relaxed);
    echo_task.await??;
    guard.abort();
    echo.close().await;
    requester.close().await;
    let q = |x: f64| hist.value_at_quantile(x);
    Ok(json!({
        "rate": p.rate, "secs": p.secs, "size": p.size, "sent": i, "received": received,
        "lost": i - received.min(i),
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
        "max_us": hist.max(), "mean_us": hist.mean().round(),
    }))
}

// ---- 3. fan-out -------------------------------------------------------------

/// One sender, many subscribers of one channel; total deliveries per second.
async fn fanout(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let channel = format!("bench.fan.{}", run.tag);
    let mut clients = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..p.subscribers {
        let c = run.connect(&run.name(&format!("fan-sub-{i}"))).await?;
        let sub = c.subscribe(channel.as_str()).await?;
        receivers.push(spawn_receive(sub, p.fanout_count, p.idle(), deadline));
        clients.push(c);
    }
    let sender = run.connect(&run.name("fan-pub")).await?;
    let events = FailureWatch::spawn(&sender, deadline);
    let guard = watchdog(&sender, deadline);

    let t0 = Instant::now();
    let size = p.size;
    let sent = send_all(&sender, p.fanout_count, deadline, |seq| {
        OutgoingMessage::to_channel(channel.as_str(), message(seq, size)).persistent(false)
    })
    .await?;
    sender.flush().await?;
    let (mut delivered, mut duplicates, mut min_received, mut last) = (0, 0, u64::MAX, t0);
    for rx in receivers {
        let r = rx.await?;
        delivered += r.unique;
        duplicates += r.duplicates();
        min_received = min_received.min(r.unique);
        last = last.max(r.last.unwrap_or(t0));
    }
    guard.abort();
    let c = events.finish().await?;
    sender.close().await;
    futures::stream::iter(clients)
        .for_each_concurrent(CONNECT_PARALLEL, |c| async move { c.close().await })
        .await;
    let expected = sent * p.subscribers as u64;
    let mut out = json!({
        "subscribers": p.subscribers, "count": p.fanout_count, "size": p.size, "sent": sent,
        "delivered": delivered, "lost": expected.saturating_sub(delivered),
        "duplicates": duplicates,
        "min_received_per_subscriber": if p.subscribers == 0 { 0 } else { min_received },
        "deliveries_per_s": rate(delivered, last - t0),
        "secs": (last - t0).as_secs_f64(),
    });
    sender_fields(&mut out, &c);
    Ok(out)
}

// ---- 4. offline recipient ---------------------------------------------------

/// The recipient connects once and leaves; the sender sends persistent messages until the
/// broker has confirmed (`Accepted`, i.e. stored) every one; the recipient comes back and
/// drains them.
async fn offline(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let rx_name = run.name("off-sub");
    run.connect(&rx_name).await?.close().await;

    let sender = run.confirming_sender(&run.name("off-pub")).await?;
    let events = sender.events();
    let guard = watchdog(&sender, deadline);
    let t0 = Instant::now();
    let size = p.size;
    let c = send_all_confirmed(&sender, events, p.offline_count, deadline, |seq| {
        OutgoingMessage::to_client(rx_name.as_str(), message(seq, size))
    })
    .await;
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            guard.abort();
            sender.close().await;
            return Err(e);
        }
    };
    let sent = c.sent;
    let store_time = c.last.map_or(Duration::ZERO, |l| l - t0);
    guard.abort();
    sender.close().await;
    if let Some(e) = &c.first_error {
        eprintln!("offline: {} sends failed, the first with: {e}", c.failed);
    }

    let t1 = Instant::now();
    let receiver = run.connect(&rx_name).await?;
    let mut inbox = receiver.direct_messages().context("direct stream taken")?;
    let r = receive(&mut inbox, sent, p.idle(), deadline).await;
    let drain_time = r.last.map_or(Duration::ZERO, |l| l - t1);
    receiver.close().await;
    Ok(json!({
        "count": p.offline_count, "size": p.size, "sent": sent, "confirmed": c.confirmed,
        "send_failed": c.failed,
        "received": r.unique, "lost": sent.saturating_sub(r.unique),
        "duplicates": r.duplicates(), "redelivered": r.redelivered,
        "store_msgs_per_s": rate(c.confirmed, store_time),
        "drain_msgs_per_s": rate(r.unique, drain_time),
        "store_secs": store_time.as_secs_f64(), "drain_secs": drain_time.as_secs_f64(),
    }))
}

// ---- 5. fan-in --------------------------------------------------------------

/// Many connections, each sending a few messages to one receiver.
async fn fanin(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let rx_name = run.name("fanin-sub");
    let receiver = run.connect(&rx_name).await?;
    let inbox = receiver.direct_messages().context("direct stream taken")?;
    let expect = p.connections as u64 * p.per_connection;

    let c0 = Instant::now();
    let senders: Vec<Client> = futures::stream::iter(0..p.connections)
        .map(|i| async move { run.connect(&run.name(&format!("fanin-{i}"))).await })
        .buffered(CONNECT_PARALLEL)
        .try_collect()
        .await?;
    let setup = c0.elapsed();

    let rx = spawn_receive(inbox, expect, p.idle(), deadline);
    let go = Arc::new(tokio::sync::Barrier::new(p.connections + 1));
    let mut tasks = Vec::new();
    for (i, c) in senders.iter().enumerate() {
        let (go, per, size) = (go.clone(), p.per_connection, p.size);
        let (c, to) = (c.clone(), rx_name.clone());
        tasks.push(tokio::spawn(async move {
            // Watching from before the first send: every loss is reported to its sender.
            let watch = FailureWatch::spawn(&c, deadline);
            go.wait().await;
            let guard = watchdog(&c, deadline);
            let first = i as u64 * per;
            send_all(&c, per, deadline, |j| {
                OutgoingMessage::to_client(to.as_str(), message(first + j, size)).persistent(false)
            })
            .await?;
            // By the time the flush returns, every failure is among the sender's events.
            c.flush().await?;
            guard.abort();
            watch.finish().await
        }));
    }
    go.wait().await;
    let t0 = Instant::now();
    let mut failures = Vec::new();
    let mut told = Failures::default();
    for task in tasks {
        match task.await? {
            Ok(f) => {
                told.failed += f.failed;
                told.server_errors += f.server_errors;
                told.lagged += f.lagged;
            }
            Err(e) => failures.push(e),
        }
    }
    let r = rx.await?;
    let elapsed = r.last.map_or(Duration::ZERO, |l| l - t0);
    futures::stream::iter(senders)
        .for_each_concurrent(CONNECT_PARALLEL, |c| async move { c.close().await })
        .await;
    receiver.close().await;
    if let Some(e) = failures.into_iter().next() {
        return Err(e.context("a fan-in sender failed"));
    }
    let mut out = json!({
        "connections": p.connections, "per_connection": p.per_connection, "size": p.size,
        "sent": expect, "received": r.unique, "lost": expect.saturating_sub(r.unique),
        "duplicates": r.duplicates(),
        "msgs_per_s": rate(r.unique, elapsed),
        "connect_secs": setup.as_secs_f64(),
        "connects_per_s": rate(p.connections as u64, setup),
    });
    // `lost` beside the notices that explain it (each too slow, not connected, ...).
    sender_fields(&mut out, &told);
    Ok(out)
}

// ---- 6. persistent (this broker only) ---------------------------------------

/// One sender, one connected receiver, persistent messages: msg/s from the first send to the
/// last `Accepted` (each `Accepted` means the receiver has acknowledged the message).
async fn persistent(run: &Run, p: &Params) -> Result<Value> {
    let deadline = p.deadline();
    let rx_name = run.name("ps-sub");
    let receiver = run.connect(&rx_name).await?;
    let inbox = receiver.direct_messages().context("direct stream taken")?;
    let sender = run.confirming_sender(&run.name("ps-pub")).await?;
    let events = sender.events();
    let count = p.persistent_count;
    let guard = watchdog(&sender, deadline);
    let rx = spawn_receive(inbox, count, p.idle(), deadline);

    let t0 = Instant::now();
    let size = p.size;
    let c = send_all_confirmed(&sender, events, count, deadline, |seq| {
        OutgoingMessage::to_client(rx_name.as_str(), message(seq, size))
    })
    .await;
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            guard.abort();
            sender.close().await;
            receiver.close().await;
            rx.abort();
            return Err(e);
        }
    };
    let sent = c.sent;
    let confirm_time = c.last.map_or(Duration::ZERO, |l| l - t0);
    if let Some(e) = &c.first_error {
        eprintln!("persistent: {} sends failed, the first with: {e}", c.failed);
    }
    let r = rx.await?;
    guard.abort();
    sender.close().await;
    receiver.close().await;
    Ok(json!({
        "count": count, "size": p.size, "sent": sent, "confirmed": c.confirmed,
        "unconfirmed": sent.saturating_sub(c.confirmed), "send_failed": c.failed,
        "received": r.unique, "lost": sent.saturating_sub(r.unique),
        "duplicates": r.duplicates(), "redelivered": r.redelivered,
        "msgs_per_s": rate(c.confirmed, confirm_time),
        "secs": confirm_time.as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_ids_carry_the_sequence_number() {
        for seq in [0, 7, 1_000_000, u64::MAX] {
            let id = confirm_id(seq);
            assert_eq!(id.len(), 21);
            assert_eq!(id, format!("{seq:021}"));
            assert_eq!(confirm_seq(&id), Some(seq));
            broadcast_protocol::validate_id(&id).unwrap();
        }
        assert_eq!(confirm_seq("V1StGXR8_Z5jdHi6B-myT"), None);
        assert_eq!(confirm_seq("12"), None);
    }
}
