//! The soak scenarios: the broker binary run as an operator runs it, pushed where resources
//! grow or the store fails, and measured from outside (`/proc`, the data directory's size,
//! what its clients see). Each scenario returns its figures as a JSON object.

use std::collections::HashSet;
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
            .args([
                "--log",
                &std::env::var("SOAK_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let ready_rx = crate::server::watch_stderr(&mut child)?;
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
        self.status_mib("VmRSS:")
    }

    /// Peak resident memory of the running broker since it started, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        r1(kib as f64 / 1024.0)
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

/// A client connected as `name`, with its stream of direct messages.
async fn recipient(addr: &str, name: &str) -> Result<(Client, broadcast_client::DirectMessages)> {
    let client = ConnectOptions::new().name(name).connect(addr).await?;
    let inbox = client.direct_messages().context("direct stream taken")?;
    Ok((client, inbox))
}

/// The encoded `Hello` of a client that speaks the wire protocol itself.
fn hello_frame(name: Option<&str>) -> Result<bytes::Bytes> {
    use broadcast_protocol::{ClientFrame, DEFAULT_MAX_FRAME, Hello, PROTOCOL_VERSION};
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: name.map(str::to_owned),
        token: None,
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    };
    Ok(broadcast_protocol::encode_frame(
        &ClientFrame::Hello(hello),
        DEFAULT_MAX_FRAME as usize,
    )?)
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
    /// Ids of the messages confirmed, when asked for.
    accepted_ids: Option<HashSet<String>>,
    failed: std::collections::HashMap<FailureReason, u64>,
    /// When the last delivery failure arrived.
    last_failure: Option<Instant>,
    /// Ids of the messages with a delivery-failed notice.
    failed_ids: HashSet<String>,
}

impl Sender {
    async fn connect(addr: &str, name: &str, events: usize) -> Result<Self> {
        let options = ConnectOptions::new().name(name).event_buffer(events);
        Self::connect_with(addr, options).await
    }

    async fn connect_with(addr: &str, options: ConnectOptions) -> Result<Self> {
        let client = options.connect(addr).await?;
        let events = client.events();
        Ok(Self {
            client,
            events,
            accepted: 0,
            accepted_ids: None,
            failed: Default::default(),
            last_failure: None,
            failed_ids: HashSet::new(),
        })
    }

    fn failed(&self, reason: FailureReason) -> u64 {
        self.failed.get(&reason).copied().unwrap_or(0)
    }

    fn take(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Accepted { id } => {
                self.accepted += 1;
                if let Some(ids) = &mut self.accepted_ids {
                    ids.insert(id);
                }
            }
            Event::DeliveryFailed { reason, id, .. } => {
                self.failed_ids.insert(id);
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
        // Every persistent message is answered with `Accepted`, after any notice about it.
        let start = self.accepted;
        let mut sent = 0;
        while sent < count {
            if sent - (self.accepted - start) < window {
                self.client.send(make(sent)).await?;
                sent += 1;
                continue;
            }
            let event = self.events.next().await.context("events ended")?;
            self.take(event)?;
        }
        self.wait_until(Duration::from_secs(120), |s| s.accepted - start >= count)
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
pub async fn ghosts(
    binary: &Path,
    dir: &Path,
    names: u64,
    rounds: u32,
    extra: &[&str],
) -> Result<Value> {
    let data = dir.join("ghosts");
    let mut broker = Broker::start(binary, &data, extra)?;
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
    // jemalloc returns freed memory to the system over about ten seconds.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let settled = json!({"rss_mib": r1(broker.rss_mib()), "disk_mib": r1(disk_mib(&data))});
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
        "settled_12s_after": settled,
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
    // Refused ones (a queue limit) are not queued.
    let refused = sender.failed_ids.len() as u64;
    let stored = count - refused;
    sender.client.close().await;
    let queued_rss = broker.rss_mib();
    let queued_disk = disk_mib(&data);
    broker.stop()?;
    broker.restart()?;
    let restart_rss = broker.rss_mib();
    let restart_peak = broker.peak_rss_mib();
    let start_secs = broker.started_in.as_secs_f64();
    let (receiver, mut inbox) = recipient(broker.addr(), "deep-recipient").await?;
    let mut ids = HashSet::new();
    let mut received = 0u64;
    let mut peak = restart_rss;
    while (ids.len() as u64) < stored {
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
    let drained_disk = disk_mib(&data);
    // Opening a store much larger on disk than what it holds gives the space back.
    broker.restart()?;
    let reopened_disk = disk_mib(&data);
    broker.stop()?;
    Ok(json!({
        "scenario": "queued", "count": count, "store_secs": store_secs,
        "start_rss_mib": r1(start_rss), "queued_rss_mib": r1(queued_rss),
        "queued_disk_mib": r1(queued_disk),
        "restart_secs": start_secs, "restart_rss_mib": r1(restart_rss),
        "restart_peak_rss_mib": restart_peak,
        "drain_peak_rss_mib": r1(peak), "drained_rss_mib": r1(drained_rss),
        "drained_disk_mib": r1(drained_disk), "reopened_empty_disk_mib": r1(reopened_disk),
        "refused": refused, "received": ids.len(),
        "lost": stored.saturating_sub(ids.len() as u64),
        "duplicates": received - ids.len() as u64,
    }))
}

/// A FUSE file system (`lazyfs.py`) over a backing directory that keeps what was not synced
/// in memory: killing it is a power cut.
struct LazyFs {
    script: PathBuf,
    backing: PathBuf,
    mount: PathBuf,
    child: Option<Child>,
}

impl LazyFs {
    fn new(script: &Path, dir: &Path) -> Result<Self> {
        let (backing, mount) = (dir.join("backing"), dir.join("mnt"));
        std::fs::create_dir_all(&backing)?;
        std::fs::create_dir_all(&mount)?;
        Ok(Self {
            script: script.to_path_buf(),
            backing,
            mount,
            child: None,
        })
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let path = self.mount.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*path))
    }

    /// Mounts the file system and waits until it is mounted.
    fn mount(&mut self) -> Result<()> {
        let child = Command::new("/usr/bin/python3")
            .arg(&self.script)
            .arg(&self.backing)
            .arg(&self.mount)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start lazyfs.py (needs /usr/bin/python3 with fusepy, and FUSE)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.mounted() {
            if Instant::now() > deadline {
                bail!("lazyfs did not mount {}", self.mount.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The power cut: kills the file system, losing what it held unsynced, and unmounts it.
    fn cut(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.cut();
    }
}

/// Power cuts: the broker's data directory on [`LazyFs`]; each round sends persistent
/// messages to a recipient that is away for a while, then cuts the power (the broker is
/// killed and the file system loses everything not synced), restarts on what was synced, and
/// counts the confirmed messages that the recipient does not get.
///
/// # Errors
/// When the file system or the broker cannot be started at all.
pub async fn power_cut(
    binary: &Path,
    script: &Path,
    dir: &Path,
    cuts: u32,
    sync: &str,
) -> Result<Value> {
    let mut fs = LazyFs::new(script, &dir.join("powercut"))?;
    let data = fs.mount.join("data");
    let args = ["--store-sync", sync];
    let mut confirmed_total = 0u64;
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut unreadable = 0u32;
    let mut previous: Option<(String, HashSet<String>)> = None;
    // A fixed sequence of load durations, from 50 to 750 ms.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for cut in 0..=cuts {
        fs.mount()?;
        let mut broker = match Broker::start(binary, &data, &args) {
            Ok(b) => b,
            Err(e) => {
                // The store did not survive the cut: everything confirmed in it is lost.
                eprintln!("powercut: the broker does not start after cut {cut}: {e:#}");
                unreadable += 1;
                if let Some((_, ids)) = previous.take() {
                    lost += ids.len() as u64;
                }
                fs.cut()?;
                std::fs::remove_dir_all(&fs.backing)?;
                std::fs::create_dir_all(&fs.backing)?;
                continue;
            }
        };
        if let Some((name, ids)) = previous.take() {
            let (got, dups) = receive_ids(broker.addr(), &name, &ids).await?;
            let missing = ids.len() as u64 - got;
            lost += missing;
            duplicates += dups;
            eprintln!(
                "powercut: after cut {cut}: {} confirmed, {missing} lost, {dups} duplicates",
                ids.len()
            );
        }
        if cut == cuts {
            broker.stop()?;
            fs.cut()?;
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let load = Duration::from_millis(50 + seed % 700);
        let name = format!("away-{cut}");
        let ids = send_until(broker.addr(), &name, load).await?;
        confirmed_total += ids.len() as u64;
        broker.kill()?;
        fs.cut()?;
        previous = Some((name, ids));
    }
    Ok(json!({
        "scenario": "powercut", "sync": sync, "cuts": cuts, "confirmed": confirmed_total,
        "lost": lost, "duplicates": duplicates, "store_unreadable_after_cuts": unreadable,
    }))
}

/// Sends persistent messages to `to` for `load`, then returns the ids confirmed so far,
/// without waiting for the rest.
async fn send_until(addr: &str, to: &str, load: Duration) -> Result<HashSet<String>> {
    let options = ConnectOptions::new()
        .name(format!("{to}-sender"))
        .event_buffer(1 << 20)
        .close_timeout(Duration::from_millis(10));
    let mut sender = Sender::connect_with(addr, options).await?;
    sender.accepted_ids = Some(HashSet::new());
    let stop = tokio::time::Instant::now() + load;
    let mut sent = 0u64;
    while tokio::time::Instant::now() < stop {
        if sent - sender.accepted < 1024 {
            sender
                .client
                .send(OutgoingMessage::to_client(to, format!("message {sent}")))
                .await?;
            sent += 1;
            continue;
        }
        match tokio::time::timeout_at(stop, sender.events.next()).await {
            Ok(Some(event)) => sender.take(event)?,
            Ok(None) => bail!("events ended"),
            Err(_) => break,
        }
    }
    while let Some(Some(event)) = futures::FutureExt::now_or_never(sender.events.next()) {
        sender.take(event)?;
    }
    let ids = sender.accepted_ids.take().unwrap_or_default();
    // The cut comes now; the client is left to fail against the dead broker.
    drop(sender);
    Ok(ids)
}

/// Connects as `name` and receives until every id of `ids` came, or nothing came for 5 s;
/// returns how many of them came and how many came more than once.
async fn receive_ids(addr: &str, name: &str, ids: &HashSet<String>) -> Result<(u64, u64)> {
    let (client, mut inbox) = recipient(addr, name).await?;
    let mut seen = HashSet::new();
    let mut dups = 0;
    while !ids.iter().all(|id| seen.contains(id)) {
        match tokio::time::timeout(Duration::from_secs(5), inbox.next()).await {
            Ok(Some(m)) => {
                if !seen.insert(m.id) {
                    dups += 1;
                }
            }
            _ => break,
        }
    }
    client.close().await;
    Ok((
        ids.iter().filter(|id| seen.contains(*id)).count() as u64,
        dups,
    ))
}

/// A full disk: the store on a small tmpfs with a ballast file; persistent messages until the
/// store refuses them; the recipient drains and acknowledges while the disk is full; the
/// ballast is deleted and the time until persistent messages are confirmed again is measured;
/// then everything is drained across a restart, counting losses and duplicates.
///
/// # Errors
/// When the tmpfs cannot be mounted (needs root) or the broker fails.
pub async fn disk_full(binary: &Path, dir: &Path, size_mib: u64) -> Result<Value> {
    let mount = dir.join("full");
    std::fs::create_dir_all(&mount)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
        .arg(&mount)
        .status()?
        .success();
    if !ok {
        bail!("cannot mount a tmpfs on {} (needs root)", mount.display());
    }
    let result = disk_full_on(binary, &mount, size_mib).await;
    let _ = Command::new("umount").arg("-l").arg(&mount).status();
    result
}

async fn disk_full_on(binary: &Path, mount: &Path, size_mib: u64) -> Result<Value> {
    let ballast = mount.join("ballast");
    std::fs::write(&ballast, vec![0u8; (size_mib as usize / 4) << 20])?;
    let data = mount.join("data");
    let reserve = (size_mib / 16).max(1).to_string();
    let mut broker = Broker::start(binary, &data, &["--store-min-free-mib", &reserve])?;
    let mut sender = Sender::connect(broker.addr(), "df-sender", 1 << 20).await?;
    sender.accepted_ids = Some(HashSet::new());
    let payload = vec![b'x'; 1000];
    // Until the store refuses: batches of 1,000.
    let mut batches = 0;
    while sender.failed(FailureReason::StoreUnavailable) == 0 {
        batches += 1;
        if batches > 10_000 {
            bail!("the disk never filled");
        }
        sender
            .send_confirmed(1000, 1000, |_| {
                OutgoingMessage::to_client("df-recipient", payload.clone())
            })
            .await?;
    }
    let refused = sender.failed(FailureReason::StoreUnavailable);
    // Confirmed without a notice: stored.
    let confirmed: HashSet<String> = sender
        .accepted_ids
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|id| !sender.failed_ids.contains(id))
        .collect();
    eprintln!("diskfull: {} confirmed, then refused", confirmed.len());

    // The recipient drains what it can while the disk is full, acknowledging each message.
    let (receiver, mut inbox) = recipient(broker.addr(), "df-recipient").await?;
    let mut seen = HashSet::new();
    let mut received = 0u64;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), inbox.next()).await {
        received += 1;
        seen.insert(m.id);
    }
    let drained_while_full = seen.len();
    receiver.flush().await?;
    eprintln!("diskfull: {drained_while_full} drained while full; freeing space");

    // Space returns.
    std::fs::remove_file(&ballast)?;
    let freed = Instant::now();
    let mut heal_secs = None;
    while freed.elapsed() < Duration::from_secs(60) {
        let before = sender.failed(FailureReason::StoreUnavailable);
        sender
            .send_confirmed(1, 1, |_| OutgoingMessage::to_client("df-probe", "probe"))
            .await?;
        if sender.failed(FailureReason::StoreUnavailable) == before {
            heal_secs = Some(freed.elapsed().as_secs_f64());
            break;
        }
    }
    eprintln!("diskfull: healed after {heal_secs:?} s");
    // The rest, then a restart: what was acknowledged stays gone, nothing confirmed is lost.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), inbox.next()).await {
        received += 1;
        seen.insert(m.id);
    }
    receiver.close().await;
    sender.client.close().await;
    let stop_status = broker.stop()?;
    broker.restart()?;
    let (receiver, mut inbox) = recipient(broker.addr(), "df-recipient").await?;
    let mut after_restart = 0u64;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), inbox.next()).await {
        after_restart += 1;
        received += 1;
        seen.insert(m.id);
    }
    receiver.close().await;
    broker.stop()?;
    let lost = confirmed.iter().filter(|id| !seen.contains(*id)).count();
    Ok(json!({
        "scenario": "diskfull", "tmpfs_mib": size_mib, "confirmed": confirmed.len(),
        "refused": refused, "drained_while_full": drained_while_full,
        "heal_secs": heal_secs, "redelivered_after_restart": after_restart,
        "lost": lost, "duplicates": received - seen.len() as u64,
        "stop_status": stop_status.code(),
    }))
}

/// Partial frames: `connections` clients each send a handshake, then all but the last byte of
/// a frame of the largest size, and hold it; the broker's memory with all of them waiting, and
/// whether a normal client is still served.
///
/// # Errors
/// When the broker fails.
pub async fn partial(binary: &Path, dir: &Path, connections: usize) -> Result<Value> {
    use tokio::io::AsyncWriteExt;
    let data = dir.join("partial");
    let broker = Broker::start(binary, &data, &[])?;
    let start_rss = broker.rss_mib();
    let frame = broadcast_protocol::DEFAULT_MAX_PAYLOAD as usize;
    let hello = hello_frame(None)?;
    let body = vec![0u8; frame - 1];
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..connections {
        let mut s = tokio::net::TcpStream::connect(broker.addr()).await?;
        s.write_all(&hello).await?;
        s.write_all(&(frame as u32).to_be_bytes()).await?;
        // The kernel's buffers take what the broker does not read.
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&body)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => refused += 1,
            Err(_) => {}
        }
        held.push(s);
    }
    let peak_rss = broker.rss_mib();
    // A normal client meanwhile.
    let a = ConnectOptions::new()
        .name("partial-a")
        .connect(broker.addr())
        .await?;
    let (_b, mut inbox) = recipient(broker.addr(), "partial-b").await?;
    a.send(OutgoingMessage::to_client("partial-b", "hello").persistent(false))
        .await?;
    let served = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .ok()
        .flatten()
        .is_some();
    drop(held);
    let mut broker = broker;
    broker.stop()?;
    Ok(json!({
        "scenario": "partial", "connections": connections, "frame_bytes": frame,
        "start_rss_mib": r1(start_rss), "rss_mib_with_all_held": r1(peak_rss),
        "write_errors": refused, "normal_client_served": served,
    }))
}

/// Round trips (a `flush`: ping and pong through the broker) of a normal client: p50 and p99
/// in microseconds over `n`.
async fn round_trips(client: &Client, n: usize) -> Result<(f64, f64)> {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), client.flush()).await??;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// Slowloris: `connections` connections from another loopback address (127.0.0.2) that never
/// finish their handshake (half send nothing, half the first byte of a frame header, then a
/// byte a second of a frame of 65,793 bytes), with `broker_args` (for example a per-address limit). Reports the broker's memory
/// before and during, how many were held or refused, and a normal client's round trips
/// before and during the attack.
///
/// # Errors
/// When the broker fails or the normal client cannot connect.
pub async fn slowloris(
    binary: &Path,
    dir: &Path,
    connections: usize,
    broker_args: &[&str],
) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = dir.join("slowloris");
    let mut broker = Broker::start(binary, &data, broker_args)?;
    let normal = ConnectOptions::new()
        .name("slowloris-normal")
        .connect(broker.addr())
        .await?;
    let start_rss = broker.rss_mib();
    let (p50_before, p99_before) = round_trips(&normal, 2_000).await?;
    let addr: std::net::SocketAddr = broker.addr().parse()?;
    let mut held = Vec::new();
    let mut refused = 0u64;
    for i in 0..connections {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        match socket.connect(addr).await {
            Ok(mut s) => {
                if i % 2 == 1 {
                    let _ = s.write_all(&[0]).await;
                }
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    // Drip a byte a second into the dripping half while measuring.
    let drip = {
        let mut drippers = std::mem::take(&mut held);
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (i, s) in drippers.iter_mut().enumerate() {
                    if i % 2 == 1 {
                        let _ = s.write_all(&[1]).await;
                    }
                }
            }
            drippers
        })
    };
    let during_rss = broker.rss_mib();
    let (p50_during, p99_during) = round_trips(&normal, 2_000).await?;
    // A client connecting now (from 127.0.0.1).
    let newcomer = tokio::time::timeout(
        Duration::from_secs(5),
        ConnectOptions::new()
            .name("slowloris-newcomer")
            .max_reconnect_attempts(Some(1))
            .connect(broker.addr()),
    )
    .await;
    let newcomer = match newcomer {
        Ok(Ok(_)) => "served".to_owned(),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    let peak_rss = broker.rss_mib();
    let mut streams = drip.await?;
    // Refused ones were told so (or closed); the others are still waiting.
    let mut told = 0u64;
    let mut waiting = 0u64;
    let mut buf = [0u8; 256];
    for s in &mut streams {
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => told += 1,
            Ok(_) => told += 1,
            Err(_) => waiting += 1,
        }
    }
    drop(streams);
    normal.close().await;
    broker.stop()?;
    Ok(json!({
        "scenario": "slowloris", "connections": connections,
        "connect_errors": refused, "refused_by_broker": told, "still_waiting": waiting,
        "start_rss_mib": r1(start_rss), "rss_mib_during": r1(during_rss.max(peak_rss)),
        "normal_p50_us_before": p50_before.round(), "normal_p99_us_before": p99_before.round(),
        "normal_p50_us_during": p50_during.round(), "normal_p99_us_during": p99_during.round(),
        "new_client_during": newcomer,
    }))
}

/// A flood: one client publishes non-persistent messages of `size` bytes to a reading sink as
/// fast as it can for `secs` seconds, with `broker_args` (for example a publish rate). Reports
/// the rate the flooder got, whether the sink received every message, the broker's memory, and
/// a normal client's round trips before and during the flood.
///
/// # Errors
/// When the broker fails or a client cannot connect.
pub async fn flood(
    binary: &Path,
    dir: &Path,
    secs: f64,
    size: usize,
    broker_args: &[&str],
) -> Result<Value> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = dir.join("flood");
    let mut broker = Broker::start(binary, &data, broker_args)?;
    let normal = ConnectOptions::new()
        .name("flood-normal")
        .connect(broker.addr())
        .await?;
    let start_rss = broker.rss_mib();
    let (p50_before, p99_before) = round_trips(&normal, 2_000).await?;
    let (sink, mut inbox) = recipient(broker.addr(), "flood-sink").await?;
    let flooder = ConnectOptions::new()
        .name("flood-source")
        .connect(broker.addr())
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let sending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                flooder
                    .send(
                        OutgoingMessage::to_client("flood-sink", payload.clone()).persistent(false),
                    )
                    .await?;
                sent += 1;
            }
            flooder.flush().await?;
            anyhow::Ok((sent, started.elapsed(), flooder))
        })
    };
    let receiving = tokio::spawn(async move {
        let mut received = 0u64;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), inbox.next()).await {
            received += 1;
        }
        received
    });
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    let during_rss = broker.rss_mib();
    let (p50_during, p99_during) = round_trips(&normal, 2_000).await?;
    let rest = Duration::from_secs_f64(secs).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, took, flooder) = sending.await??;
    let peak_rss = broker.rss_mib();
    // The sink stops 5 s after the last message came.
    let received = receiving.await?;
    flooder.close().await;
    sink.close().await;
    normal.close().await;
    broker.stop()?;
    Ok(json!({
        "scenario": "flood", "broker_args": broker_args.join(" "), "size": size,
        "sent": sent, "received": received, "lost": sent.saturating_sub(received),
        "flooder_msgs_per_sec": (sent as f64 / took.as_secs_f64()).round(),
        "start_rss_mib": r1(start_rss), "rss_mib_during": r1(during_rss.max(peak_rss)),
        "normal_p50_us_before": p50_before.round(), "normal_p99_us_before": p99_before.round(),
        "normal_p50_us_during": p50_during.round(), "normal_p99_us_during": p99_during.round(),
    }))
}

/// A recipient that never reads (a small socket buffer, so the broker's outbound queue for it
/// fills): a sender sends it `count` non-persistent messages of 64 KiB, each followed by a
/// flush. Reports how many sends were held back (more than 100 ms) and for how long in all,
/// and the notices the sender got.
///
/// # Errors
/// When the broker fails.
pub async fn stall(binary: &Path, dir: &Path, count: u64) -> Result<Value> {
    use tokio::io::AsyncWriteExt;
    let data = dir.join("stall");
    let mut broker = Broker::start(binary, &data, &[])?;
    let hello = hello_frame(Some("stuck"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stuck = socket.connect(broker.addr().parse()?).await?;
    stuck.write_all(&hello).await?;
    let sender = ConnectOptions::new()
        .name("stall-sender")
        .event_buffer(1 << 16)
        .connect(broker.addr())
        .await?;
    let mut events = sender.events();
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let t0 = Instant::now();
    let (mut held_back, mut held_for) = (0u64, Duration::ZERO);
    for _ in 0..count {
        let t = Instant::now();
        sender
            .send(OutgoingMessage::to_client("stuck", payload.clone()).persistent(false))
            .await?;
        sender.flush().await?;
        let took = t.elapsed();
        if took > Duration::from_millis(100) {
            held_back += 1;
            held_for += took;
        }
    }
    let sent_in = t0.elapsed();
    let rss = broker.rss_mib();
    // The broker reads the sender only as fast as it routes: the notices tell how long it took.
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    let mut last_notice = Duration::ZERO;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        if let Event::DeliveryFailed { reason, .. } = e {
            *reasons.entry(format!("{reason:?}")).or_default() += 1;
            last_notice = t0.elapsed();
        }
    }
    let total = sent_in.max(last_notice);
    sender.close().await;
    drop(stuck);
    broker.stop()?;
    Ok(json!({
        "scenario": "stall", "count": count, "payload_bytes": 64 * 1024,
        "sends_held_back": held_back, "held_back_secs": held_for.as_secs_f64(),
        "last_notice_secs": total.as_secs_f64(), "delivery_failed": reasons,
        "broker_rss_mib": rss,
    }))
}
