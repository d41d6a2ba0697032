//! The broker under test: one already running, one started in this process, or the broker
//! binary started as a child process.
//!
//! A broker started here listens on a free `127.0.0.1` port and keeps its store in a
//! temporary directory that is removed when it stops. Stopping reports memory figures:
//! for a child process its own peak resident memory (`VmHWM`) and CPU time; for an
//! in-process broker only this whole process's peak, which includes the load generator.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broadcast_broker::{Broker, Config};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procfs;

/// Where the broker under test comes from.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// A broker already listening at `addr`; with `pid`, its memory and CPU time are read
    /// (cumulative since that broker started).
    Remote {
        /// `host:port`.
        addr: String,
        /// The broker's process id, if known.
        pid: Option<u32>,
    },
    /// A broker started in this process, on its own runtime.
    InProcess,
    /// The broker binary at this path, started as a child process.
    Binary(PathBuf),
}

/// A running broker under test.
#[derive(Debug)]
pub struct Server {
    addr: String,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Remote {
        pid: Option<u32>,
    },
    InProcess {
        runtime: tokio::runtime::Runtime,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
        _dir: tempfile::TempDir,
    },
    Child {
        child: Child,
        _dir: tempfile::TempDir,
    },
}

impl Server {
    /// Starts (or, for [`ServerKind::Remote`], just names) a broker.
    ///
    /// # Errors
    /// When the broker cannot be started or does not come up within 30 seconds.
    pub async fn start(kind: &ServerKind) -> Result<Self> {
        match kind {
            ServerKind::Remote { addr, pid } => Ok(Self {
                addr: addr.clone(),
                inner: Inner::Remote { pid: *pid },
            }),
            ServerKind::InProcess => start_in_process().await,
            ServerKind::Binary(path) => start_child(path.clone()).await,
        }
    }

    /// The broker's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Memory and CPU figures of the broker so far (see [`Server::stop`]).
    pub fn usage(&self) -> Value {
        let mut m = Map::new();
        match &self.inner {
            Inner::Remote { pid: Some(pid) } => process_usage(&mut m, *pid),
            Inner::Remote { pid: None } => {}
            Inner::InProcess { .. } => {
                if let Some(kib) = procfs::own_peak_rss_kib() {
                    m.insert("process_peak_rss_kib".into(), json!(kib));
                    m.insert("rss_includes_loadgen".into(), json!(true));
                }
            }
            Inner::Child { child, .. } => process_usage(&mut m, child.id()),
        }
        Value::Object(m)
    }

    /// Stops a broker started here (a remote one is left running) and returns its memory
    /// figures: `broker_peak_rss_kib` and `broker_cpu_secs` when the broker is a process of
    /// its own, `process_peak_rss_kib` (with `rss_includes_loadgen`) when it ran in this
    /// process.
    ///
    /// # Errors
    /// When an in-process broker does not stop within 15 seconds.
    pub async fn stop(self) -> Result<Value> {
        let usage = self.usage();
        match self.inner {
            Inner::Remote { .. } => {}
            Inner::InProcess {
                runtime,
                shutdown,
                task,
                _dir,
            } => {
                shutdown.cancel();
                let stopped = tokio::time::timeout(Duration::from_secs(15), task).await;
                // A runtime must not be dropped from async code.
                tokio::task::spawn_blocking(move || {
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    drop(_dir);
                })
                .await?;
                stopped.context("the in-process broker did not stop within 15 s")??;
            }
            Inner::Child { mut child, _dir } => {
                tokio::task::spawn_blocking(move || stop_child(&mut child)).await??;
            }
        }
        Ok(usage)
    }
}

fn process_usage(m: &mut Map<String, Value>, pid: u32) {
    if let Some(kib) = procfs::peak_rss_kib(pid) {
        m.insert("broker_peak_rss_kib".into(), json!(kib));
    }
    if let Some(secs) = procfs::cpu_secs(pid) {
        m.insert("broker_cpu_secs".into(), json!(secs));
    }
}

/// The broker's settings here: the defaults, with the store in `dir`.
fn config(dir: &tempfile::TempDir) -> Config {
    Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    }
}

async fn start_in_process() -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let cfg = config(&dir);
    // Its own runtime, as in the broker binary, so that the broker's threads are not the
    // load generator's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("broker")
        .build()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let broker = runtime
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok(Broker::start(cfg, listener, token).await?)
        })
        .await??;
    let addr = broker.local_addr().to_string();
    let task = runtime.spawn(async move {
        if let Err(e) = broker.wait().await {
            eprintln!("in-process broker: {e}");
        }
    });
    Ok(Server {
        addr,
        inner: Inner::InProcess {
            runtime,
            shutdown,
            task,
            _dir: dir,
        },
    })
}

async fn start_child(path: PathBuf) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(&path)
        .arg("--listen")
        .arg(&addr)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", path.display()))?;
    let ready_rx = watch_stderr(&mut child)?;
    let up =
        tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(30)).is_ok())
            .await?;
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not start listening on {addr}", path.display());
    }
    Ok(Server {
        addr,
        inner: Inner::Child { child, _dir: dir },
    })
}

/// Reads a child broker's stderr (piped) on a thread of its own: the returned channel gets a
/// message once the broker says it listens; every other line is passed on to this process's
/// stderr.
///
/// # Errors
/// When the child's stderr is not piped.
pub fn watch_stderr(child: &mut Child) -> Result<std::sync::mpsc::Receiver<()>> {
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
    Ok(ready_rx)
}

/// Asks a child broker to stop (SIGTERM), waits up to 15 seconds, then kills it.
fn stop_child(child: &mut Child) -> Result<()> {
    let pid = child.id().to_string();
    let asked = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while asked && Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("broker {pid} did not stop on SIGTERM; killing it");
    child.kill()?;
    child.wait()?;
    Ok(())
}
