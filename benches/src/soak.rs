//! The soak scenarios: the broker binary run as an operator runs it, pushed where resources
//! grow or the store fails, and measured from outside (`/proc`, the data directory's size,
//! what its clients see). Each scenario returns its figures as a JSON object.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broadcast_client::{Client, ConnectOptions, Event, FailureReason, OutgoingMessage};
use futures::StreamExt;
use serde_json::{Value, json};

/// The broker binary run as a child process over a data directory that outlives it.
#[derive(Debug)]
pub struct Broker {
    binary: PathBuf,
    data_dir: PathBuf,
    args: Vec<String>,
    addr: String,
    child: Option<Child>,
    /// How long the last start took until the broker listened.
    pub started_in: Duration,
}

impl Broker {
    /// Starts `binary` over `data_dir` with extra `args`, on a free loopback port.
    ///
    /// # Errors
    /// When it cannot be started or does not listen within 60 seconds.
    pub fn start(binary: &Path, data_dir: &Path, args: &[&str]) -> Result<Self> {
        let mut broker = Self {
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            addr: String::new(),
            child: None,
            started_in: Duration::ZERO,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Starts the broker again (after [`Broker::stop`] or [`Broker::kill`]), on a new port.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub fn restart(&mut self) -> Result<()> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        self.addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        let mut child = Command::new(&self.binary)
            .args(["--listen", &self.addr, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--log", "warn"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                        continue;
                    }
                }
                eprintln!("broker: {line}");
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the broker did not start listening on {}", self.addr);
        }
        self.started_in = t0.elapsed();
        self.child = Some(child);
        Ok(())
    }

    /// `host:port` of the running broker.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Resident memory of the running broker now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        kib as f64 / 1024.0
    }

    /// Asks the broker to stop (SIGTERM) and waits up to 60 seconds for its exit status.
    ///
    /// # Errors
    /// When it is not running or does not stop in time (it is then killed).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the broker is not running")?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        bail!("the broker did not stop within 60 s of SIGTERM")
    }

    /// Kills the broker (SIGKILL).
    ///
    /// # Errors
    /// When it is not running.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the broker is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Disk space taken by the files under `dir`, in MiB (`du`).
pub fn disk_mib(dir: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(dir).output();
    let kib: u64 = out
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// Rounds a figure to one decimal for printing.
fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A sender whose events are counted: confirmations and delivery failures by reason.
struct Sender {
    client: Client,
    events: broadcast_client::Events,
    accepted: u64,
    failed: std::collections::HashMap<FailureReason, u64>,
    /// When the last delivery failure arrived.
    last_failure: Option<Instant>,
}

impl Sender {
    async fn connect(addr: &str, name: &str, events: usize) -> Result<Self> {
        let client = ConnectOptions::new()
            .name(name)
            .event_buffer(events)
            .connect(addr)
            .await?;
        let events = client.events();
        Ok(Self {
            client,
            events,
            accepted: 0,
            failed: Default::default(),
            last_failure: None,
        })
    }

    fn failed(&self, reason: FailureReason) -> u64 {
        self.failed.get(&reason).copied().unwrap_or(0)
    }

    fn take(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Accepted { .. } => self.accepted += 1,
            Event::DeliveryFailed { reason, .. } => {
                *self.failed.entry(reason).or_default() += 1;
                self.last_failure = Some(Instant::now());
            }
            Event::Lagged { missed } => bail!("the sender's events lagged by {missed}"),
            Event::Closed => bail!("the sender's connection closed"),
            _ => {}
        }
        Ok(())
    }

    /// Sends `count` messages made by `make`, keeping at most `window` unconfirmed, and
    /// waits for every confirmation (or failure).
    async fn send_confirmed(
        &mut self,
        count: u64,
        window: u64,
        mut make: impl FnMut(u64) -> OutgoingMessage,
    ) -> Result<()> {
        let start = self.accepted + self.failed(FailureReason::StoreUnavailable);
        let mut sent = 0;
        while sent < count {
            let done = self.accepted + self.failed(FailureReason::StoreUnavailable) - start;
            if sent - done < window {
                self.client.send(make(sent)).await?;
                sent += 1;
                continue;
            }
            let event = self.events.next().await.context("events ended")?;
            self.take(event)?;
        }
        self.wait_until(Duration::from_secs(120), |s| {
            s.accepted + s.failed(FailureReason::StoreUnavailable) - start >= count
        })
        .await
    }

    /// Takes events until `done` holds, for at most `limit`.
    async fn wait_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .context("timed out waiting for the broker's answers")?
                .context("events ended")?;
            self.take(event)?;
        }
        Ok(())
    }
}

/// Ghost names: rounds of one persistent message with a 1 s time to live to each of `names`
/// names that never connect. Each round waits for every expiry notice, then reads the
/// broker's memory and disk; at the end the broker restarts over the same store.
///
/// # Errors
/// When the broker fails or a round does not complete.
pub async fn ghosts(binary: &Path, dir: &Path, names: u64, rounds: u32) -> Result<Value> {
    let data = dir.join("ghosts");
    let mut broker = Broker::start(binary, &data, &[])?;
    let mut sender = Sender::connect(broker.addr(), "ghost-sender", 1 << 20).await?;
    let start = json!({"rss_mib": r1(broker.rss_mib()), "disk_mib": r1(disk_mib(&data))});
    let mut per_round = Vec::new();
    for round in 0..rounds {
        let expired_before = sender.failed(FailureReason::Expired);
        sender
            .send_confirmed(names, 4096, |i| {
                OutgoingMessage::to_client(format!("ghost-{round}-{i}"), "boo")
                    .ttl(Duration::from_secs(1))
            })
            .await?;
        sender
            .wait_until(Duration::from_secs(300), |s| {
                s.failed(FailureReason::Expired) - expired_before >= names
            })
            .await?;
        per_round.push(json!({
            "round": round + 1,
            "rss_mib": r1(broker.rss_mib()),
            "disk_mib": r1(disk_mib(&data)),
        }));
        eprintln!("ghosts: {}", per_round.last().unwrap_or(&Value::Null));
    }
    sender.client.close().await;
    let status = broker.stop()?;
    broker.restart()?;
    let restarted = json!({
        "rss_mib": r1(broker.rss_mib()),
        "disk_mib": r1(disk_mib(&data)),
        "start_secs": broker.started_in.as_secs_f64(),
    });
    broker.stop()?;
    Ok(json!({
        "scenario": "ghosts", "names_per_round": names, "start": start, "rounds": per_round,
        "stop_status": status.code(), "after_restart": restarted,
    }))
}

/// Expiry: `count` persistent messages with a time to live of `ttl_secs` to `names` absent
/// recipients, sent (and confirmed) before the first expires; measures how long after the
/// last message's time to live ran out its sender had been told of every expiry.
///
/// # Errors
/// When the broker fails or the notices do not all come.
pub async fn expiry(
    binary: &Path,
    dir: &Path,
    count: u64,
    names: u64,
    ttl_secs: u64,
) -> Result<Value> {
    let data = dir.join("expiry");
    let mut broker = Broker::start(binary, &data, &[])?;
    let mut sender = Sender::connect(broker.addr(), "expiry-sender", 1 << 20).await?;
    let ttl = Duration::from_secs(ttl_secs);
    let t0 = Instant::now();
    sender
        .send_confirmed(count, 4096, |i| {
            OutgoingMessage::to_client(format!("away-{}", i % names.max(1)), "bye").ttl(ttl)
        })
        .await?;
    let sent_by = t0.elapsed();
    if sent_by >= ttl {
        bail!("sending took {sent_by:?}, longer than the time to live; raise --ttl");
    }
    // The last message was confirmed at `sent_by`, so its time to live ran out by `t0 + sent_by + ttl`.
    let last_expiry = t0 + sent_by + ttl;
    sender
        .wait_until(ttl + Duration::from_secs(300), |s| {
            s.failed(FailureReason::Expired) >= count
        })
        .await?;
    let last_notice = sender.last_failure.unwrap_or_else(Instant::now);
    let lag = last_notice.saturating_duration_since(last_expiry);
    sender.client.close().await;
    broker.stop()?;
    Ok(json!({
        "scenario": "expiry", "count": count, "names": names, "ttl_secs": ttl_secs,
        "send_secs": sent_by.as_secs_f64(),
        "notified": count,
        "all_notified_secs_after_last_expiry": lag.as_secs_f64(),
    }))
}

/// Queue depth: `count` persistent messages queued for one absent recipient; the broker's
/// memory with them queued, then after a restart, then once the recipient drained them.
///
/// # Errors
/// When the broker fails or messages are lost.
pub async fn queued(binary: &Path, dir: &Path, count: u64, args: &[&str]) -> Result<Value> {
    let data = dir.join("queued");
    let mut broker = Broker::start(binary, &data, args)?;
    let start_rss = broker.rss_mib();
    let mut sender = Sender::connect(broker.addr(), "deep-sender", 1 << 16).await?;
    let t0 = Instant::now();
    let payload = vec![b'x'; 100];
    sender
        .send_confirmed(count, 4096, |_| {
            OutgoingMessage::to_client("deep-recipient", payload.clone())
        })
        .await?;
    let store_secs = t0.elapsed().as_secs_f64();
    sender.client.close().await;
    let queued_rss = broker.rss_mib();
    let queued_disk = disk_mib(&data);
    broker.stop()?;
    broker.restart()?;
    let restart_rss = broker.rss_mib();
    let start_secs = broker.started_in.as_secs_f64();
    let receiver = ConnectOptions::new()
        .name("deep-recipient")
        .connect(broker.addr())
        .await?;
    let mut inbox = receiver.direct_messages().context("direct stream taken")?;
    let mut ids = HashSet::new();
    let mut received = 0u64;
    let mut peak = restart_rss;
    while (ids.len() as u64) < count {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), inbox.next()).await else {
            break;
        };
        received += 1;
        ids.insert(m.id);
        if received % 100_000 == 0 {
            peak = peak.max(broker.rss_mib());
        }
    }
    let drained_rss = broker.rss_mib();
    receiver.close().await;
    broker.stop()?;
    Ok(json!({
        "scenario": "queued", "count": count, "store_secs": store_secs,
        "start_rss_mib": r1(start_rss), "queued_rss_mib": r1(queued_rss),
        "queued_disk_mib": r1(queued_disk),
        "restart_secs": start_secs, "restart_rss_mib": r1(restart_rss),
        "drain_peak_rss_mib": r1(peak), "drained_rss_mib": r1(drained_rss),
        "received": ids.len(), "lost": count - ids.len() as u64,
        "duplicates": received - ids.len() as u64,
    }))
}
