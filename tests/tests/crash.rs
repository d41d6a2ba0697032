//! The crash test: the real `broadcast-broker` binary is killed with SIGKILL several times
//! while a sender pushes persistent messages at full speed to three recipients, and is started
//! again each time on the same data directory. Every message the broker confirmed (`Accepted`)
//! must reach its recipient or come back to its sender as a delivery failure; a message seen
//! twice by a recipient's application must be marked redelivered.
//!
//! Recipients: `live` stays connected through a reconnecting client, `slow` too but reads
//! through a small buffer and yields between messages, `offline` connects only at the end.

use anyhow::{Context as _, ensure};
use broadcast_client::{
    Client, ConnectOptions, Event, Message, OutgoingMessage, Recipient, SendError,
};
use broadcast_tests::{WAIT, bin_path};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Confirmed messages after which the sender stops.
const TARGET: usize = 10_000;
/// The whole test, at most.
const OVERALL: Duration = Duration::from_secs(300);
/// Waiting at the end for the last confirmations and deliveries, at most.
const SETTLE: Duration = Duration::from_secs(90);
const RECIPIENTS: [&str; 3] = ["live", "slow", "offline"];
const SENDER: &str = "sender";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn recipient_index(name: &str) -> usize {
    RECIPIENTS.iter().position(|r| *r == name).unwrap_or(0)
}

/// A random number, different on every run.
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Starts the broker binary and waits until it listens. Killed when dropped.
async fn start_broker(addr: &str, dir: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(bin_path("broadcast-broker")?)
        .arg("--listen")
        .arg(addr)
        .arg("--data-dir")
        .arg(dir)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the broker")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (ready, listening) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            } else {
                eprintln!("broker: {line}");
            }
        }
    });
    tokio::time::timeout(WAIT, listening)
        .await
        .context("the broker did not start listening in time")?
        .context("the broker exited before listening")?;
    Ok(child)
}

fn options(name: &str) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(200))
        .connect_timeout(WAIT)
}

/// What a recipient's application saw, after the client's duplicate window.
#[derive(Debug, Default)]
struct Received {
    /// Id and payload of every message seen.
    seen: HashMap<String, Vec<u8>>,
    duplicates: u64,
    unmarked_duplicates: u64,
    /// Messages that did not come from the sender, or whose payload changed.
    odd: Vec<String>,
}

/// Everything the test tracks; `progress` ticks on every change.
#[derive(Debug)]
struct Shared {
    /// Id of every message handed to the sender's client: recipient index and sequence number.
    sent: Mutex<HashMap<String, (usize, u64)>>,
    confirmed: Mutex<HashSet<String>>,
    confirmed_count: AtomicUsize,
    /// Delivery failures the sender was told of: id and recipient.
    failures: Mutex<Vec<(String, Recipient, String)>>,
    /// Events the sender's event stream missed, and errors from the broker or the client.
    lagged: AtomicUsize,
    errors: Mutex<Vec<String>>,
    received: [Mutex<Received>; 3],
    progress: watch::Sender<u64>,
    kills_done: AtomicBool,
    sending_done: AtomicBool,
    /// `Accepted` events seen on the sender's event stream (for the record).
    accepted_events: AtomicUsize,
}

impl Shared {
    fn tick(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    fn record(&self, who: usize, m: &Message) {
        {
            let mut r = lock(&self.received[who]);
            if &*m.sender != SENDER {
                r.odd.push(format!("from {}: {}", m.sender, m.id));
            } else if let Some(data) = r.seen.get(&m.id) {
                let changed = data[..] != m.data[..];
                r.duplicates += 1;
                if !m.redelivered {
                    r.unmarked_duplicates += 1;
                }
                if changed {
                    r.odd
                        .push(format!("{} came again with another payload", m.id));
                }
            } else {
                r.seen.insert(m.id.clone(), m.data.to_vec());
            }
        }
        self.tick();
    }

    /// Waits until `done` holds, re-checking on every change; false after `limit`.
    async fn until(&self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut changes = self.progress.subscribe();
        loop {
            changes.borrow_and_update();
            if done(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return done(self),
            }
        }
    }
}

/// Reads a recipient's direct messages into its record; `slow` yields between messages.
fn receive(client: &Client, who: usize, shared: Arc<Shared>, slow: bool) -> anyhow::Result<()> {
    let mut direct = client.direct_messages().context("direct stream taken")?;
    tokio::spawn(async move {
        while let Some(m) = direct.next().await {
            shared.record(who, &m);
            if slow {
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_sigkill_of_the_broker_at_any_instant()
-> anyhow::Result<()> {
    tokio::time::timeout(OVERALL, crash_test())
        .await
        .context("the crash test did not finish in time")?
}

async fn crash_test() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let mut broker = start_broker(&addr, &data_dir).await?;

    let (progress, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        sent: Mutex::default(),
        confirmed: Mutex::default(),
        confirmed_count: AtomicUsize::new(0),
        failures: Mutex::default(),
        lagged: AtomicUsize::new(0),
        errors: Mutex::default(),
        received: Default::default(),
        progress,
        kills_done: AtomicBool::new(false),
        sending_done: AtomicBool::new(false),
        accepted_events: AtomicUsize::new(0),
    });

    let live = options("live").connect(&addr).await?;
    receive(&live, 0, shared.clone(), false)?;
    let slow = options("slow").receive_buffer(4).connect(&addr).await?;
    receive(&slow, 1, shared.clone(), true)?;

    let sender = options(SENDER).connect(&addr).await?;
    let mut events = sender.events();
    let s = shared.clone();
    let event_task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Accepted { .. } => {
                    s.accepted_events.fetch_add(1, Ordering::AcqRel);
                }
                Event::DeliveryFailed {
                    id,
                    recipient,
                    reason,
                    detail,
                } => lock(&s.failures).push((id, recipient, format!("{reason:?}: {detail}"))),
                Event::Lagged { missed } => {
                    s.lagged.fetch_add(missed as usize, Ordering::AcqRel);
                }
                Event::ServerError { code, message, id } => {
                    lock(&s.errors).push(format!("{code:?} {message} {id:?}"));
                }
                Event::Unconfirmed { id } => {
                    lock(&s.errors).push(format!("unconfirmed {id}"));
                }
                Event::Connected { .. }
                | Event::Disconnected { .. }
                | Event::Reconnecting { .. }
                | Event::Closed => {}
            }
            s.tick();
        }
    });

    // The sender learns of each confirmation through `send_confirmed`: exact, where the event
    // stream may lag behind a burst of confirmations after a reconnection. Messages are queued
    // in sequence order (each future is polled once as soon as it is made) and at most
    // `IN_FLIGHT` wait for their confirmation at once.
    const IN_FLIGHT: usize = 6000;
    let s = shared.clone();
    let client = sender.clone();
    let send_task = tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        let confirmed = |s: &Shared, (id, r): (String, Result<String, SendError>)| {
            match r {
                Ok(_) => {
                    if lock(&s.confirmed).insert(id) {
                        s.confirmed_count.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Err(e) => lock(&s.errors).push(format!("send_confirmed of {id}: {e}")),
            }
            s.tick();
        };
        let mut seq = 0u64;
        // Until every kill is done and enough messages are confirmed.
        while !s.kills_done.load(Ordering::Acquire)
            || s.confirmed_count.load(Ordering::Acquire) < TARGET
        {
            let who = (seq % 3) as usize;
            let m = OutgoingMessage::to_client(RECIPIENTS[who], seq.to_be_bytes().to_vec());
            let id = m.message_id().to_owned();
            lock(&s.sent).insert(id.clone(), (who, seq));
            let c = client.clone();
            pending.push(async move {
                let r = c.send_confirmed(m).await;
                (id, r)
            });
            while let Some(Some(done)) = tokio::task::unconstrained(pending.next()).now_or_never() {
                confirmed(&s, done);
            }
            while pending.len() >= IN_FLIGHT {
                if let Some(done) = pending.next().await {
                    confirmed(&s, done);
                }
            }
            seq += 1;
        }
        s.sending_done.store(true, Ordering::Release);
        s.tick();
        while let Some(done) = pending.next().await {
            confirmed(&s, done);
        }
    });

    // Kill points, in confirmations since the previous kill: varied from run to run, one of
    // them right after a restart while the queues of the last crash are still being worked off.
    let r = random();
    let gaps: Vec<usize> = (0..8)
        .map(|k| {
            let r = (r >> (k * 8)) as usize;
            if k % 3 == 2 {
                10 + r % 150
            } else {
                300 + r % 1500
            }
        })
        .collect();
    let mut kills = Vec::new();
    let mut last = 0;
    for gap in gaps {
        let at = last + gap;
        let reached = shared
            .until(OVERALL, |s| s.confirmed_count.load(Ordering::Acquire) >= at)
            .await;
        ensure!(reached, "{at} confirmations never reached");
        broker.start_kill().context("cannot kill the broker")?;
        broker.wait().await?;
        last = shared.confirmed_count.load(Ordering::Acquire);
        kills.push(last);
        broker = start_broker(&addr, &data_dir).await?;
    }
    shared.kills_done.store(true, Ordering::Release);
    let killed_at = started.elapsed();

    let sending_stopped = shared
        .until(OVERALL, |s| s.sending_done.load(Ordering::Acquire))
        .await;
    ensure!(sending_stopped, "the sender did not stop");
    // The client keeps every message until it is confirmed and resends it after a crash.
    let sent_count = lock(&shared.sent).len();
    let all_confirmed = shared
        .until(SETTLE, |s| {
            s.confirmed_count.load(Ordering::Acquire) >= sent_count
        })
        .await;
    send_task.abort();
    let sent_at = started.elapsed();

    let offline = options("offline").connect(&addr).await?;
    receive(&offline, 2, shared.clone(), false)?;

    let confirmed: Vec<(String, usize, u64)> = {
        let confirmed = lock(&shared.confirmed);
        let sent = lock(&shared.sent);
        confirmed
            .iter()
            .map(|id| {
                let (who, seq) = sent.get(id).copied().unwrap_or((usize::MAX, 0));
                (id.clone(), who, seq)
            })
            .collect()
    };
    ensure!(
        confirmed.iter().all(|(_, who, _)| *who < 3),
        "Accepted for an id never sent"
    );
    let failed = |s: &Shared| -> HashSet<(String, String)> {
        lock(&s.failures)
            .iter()
            .filter_map(|(id, r, _)| match r {
                Recipient::Client(c) => Some((id.clone(), c.clone())),
                _ => None,
            })
            .collect()
    };
    let outcome = |s: &Shared, id: &str, who: usize, failed: &HashSet<(String, String)>| {
        if lock(&s.received[who]).seen.contains_key(id) {
            Some(true)
        } else if failed.contains(&(id.to_owned(), RECIPIENTS[who].to_owned())) {
            Some(false)
        } else {
            None
        }
    };
    // Cheap on every change: enough messages seen by each recipient; then exact.
    let mut expected = [0usize; 3];
    for (_, who, _) in &confirmed {
        expected[*who] += 1;
    }
    shared
        .until(SETTLE, |s| {
            let failed = failed(s);
            let enough = (0..3).all(|who| {
                let notices = failed.iter().filter(|(_, r)| r == RECIPIENTS[who]).count();
                lock(&s.received[who]).seen.len() + notices >= expected[who]
            });
            enough
                && confirmed
                    .iter()
                    .all(|(id, who, _)| outcome(s, id, *who, &failed).is_some())
        })
        .await;
    let delivered_at = started.elapsed();
    // Let the clients write their last acknowledgements before the broker goes.
    for c in [&live, &slow, &offline, &sender] {
        c.flush().await?;
    }

    let failed_set = failed(&shared);
    let (mut delivered, mut failures, mut lost_ids, mut corrupt) = (0, 0, Vec::new(), Vec::new());
    for (id, who, seq) in &confirmed {
        match outcome(&shared, id, *who, &failed_set) {
            Some(true) => {
                delivered += 1;
                let r = lock(&shared.received[*who]);
                if r.seen
                    .get(id)
                    .is_some_and(|d| d[..] != seq.to_be_bytes()[..])
                {
                    corrupt.push(id.clone());
                }
            }
            Some(false) => failures += 1,
            None => lost_ids.push((id.clone(), RECIPIENTS[*who], *seq)),
        }
    }
    let (mut duplicates, mut unmarked, mut odd) = (0, 0, Vec::new());
    for r in &shared.received {
        let r = lock(r);
        duplicates += r.duplicates;
        unmarked += r.unmarked_duplicates;
        odd.extend(r.odd.iter().cloned());
    }
    let lost = confirmed.len() - delivered - failures;
    println!(
        "crash test: kills={} confirmed={} delivered={delivered} lost={lost} duplicates={duplicates} \
         unmarked_duplicates={unmarked} failures={failures}",
        kills.len(),
        confirmed.len()
    );
    println!(
        "crash test: accepted_events={} lagged_events={}",
        shared.accepted_events.load(Ordering::Acquire),
        shared.lagged.load(Ordering::Acquire)
    );
    println!(
        "crash test: sent={sent_count} killed at confirmations {kills:?}; last kill at {:.1}s, \
         all confirmed at {:.1}s, all delivered at {:.1}s",
        killed_at.as_secs_f64(),
        sent_at.as_secs_f64(),
        delivered_at.as_secs_f64()
    );

    if !lost_ids.is_empty() {
        // For the diagnosis: do the missing messages come once their recipients reconnect?
        let mut again = Vec::new();
        for (who, old) in [(0, &live), (1, &slow), (2, &offline)] {
            old.close().await;
            let c = options(RECIPIENTS[who]).connect(&addr).await?;
            receive(&c, who, shared.clone(), false)?;
            again.push(c);
        }
        shared
            .until(WAIT, |s| {
                lost_ids.iter().all(|(id, who, _)| {
                    lock(&s.received[recipient_index(who)])
                        .seen
                        .contains_key(id)
                })
            })
            .await;
        let arrived = lost_ids
            .iter()
            .filter(|(id, who, _)| {
                lock(&shared.received[recipient_index(who)])
                    .seen
                    .contains_key(id)
            })
            .count();
        println!(
            "crash test: once their recipients reconnected, {arrived} of the {lost} missing \
             messages arrived"
        );
    }
    broker.start_kill()?;
    let _ = broker.wait().await;
    drop(sender);
    event_task.abort();

    let failures_seen = lock(&shared.failures).clone();
    let errors = lock(&shared.errors).clone();
    if !failures_seen.is_empty() || !errors.is_empty() {
        println!(
            "crash test: notices to the sender: failures {:?}, errors {:?}",
            &failures_seen[..failures_seen.len().min(10)],
            &errors[..errors.len().min(10)]
        );
    }
    ensure!(
        lost_ids.is_empty(),
        "{lost} confirmed messages neither delivered nor reported, e.g. {:?} (the sender's \
         event stream missed {} events)",
        &lost_ids[..lost_ids.len().min(10)],
        shared.lagged.load(Ordering::Acquire)
    );
    ensure!(
        unmarked == 0,
        "{unmarked} duplicates were not marked redelivered"
    );
    ensure!(
        corrupt.is_empty() && odd.is_empty(),
        "changed payloads {corrupt:?}, odd deliveries {odd:?}"
    );
    let never_confirmed: Vec<String> = {
        let confirmed = lock(&shared.confirmed);
        let sent = lock(&shared.sent);
        let mut never: Vec<(u64, String)> = sent
            .iter()
            .filter(|(id, _)| !confirmed.contains(*id))
            .map(|(id, (who, seq))| {
                let seen = lock(&shared.received[*who]).seen.contains_key(id);
                let how = if seen { "delivered" } else { "not delivered" };
                (*seq, format!("#{seq} {id} to {} ({how})", RECIPIENTS[*who]))
            })
            .collect();
        never.sort();
        never.into_iter().map(|(_, s)| s).collect()
    };
    ensure!(
        all_confirmed && never_confirmed.is_empty(),
        "{} messages handed to the client were never confirmed: {:?}",
        never_confirmed.len(),
        &never_confirmed[..never_confirmed.len().min(20)]
    );
    Ok(())
}
