//! `idle`: what idle connections cost the broker.
//!
//! Starts the broker binary as a child process on a free 127.0.0.1 port with a temporary data
//! directory, opens `--connections` connections that complete the handshake and then stay
//! silent (answering nothing), and prints one JSON line with the broker's resident memory
//! before and after, and the difference per connection.
//!
//!     cargo build --release -p broadcast-broker -p broadcast-bench
//!     target/release/idle --broker target/release/broadcast-broker --connections 10000

use anyhow::{Context as _, bail};
use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, FrameCodec, Hello, PROTOCOL_VERSION, ServerFrame,
};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Measures the broker's memory per idle connection.
#[derive(Debug, Parser)]
struct Args {
    /// The broker binary.
    #[arg(long)]
    broker: PathBuf,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

/// The `VmRSS` (or another `Vm*` field) of a process, in KiB.
fn vm_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} for process {pid}"))
}

type Conn = Framed<TcpStream, FrameCodec<ServerFrame>>;

/// Opens one connection and completes the handshake.
async fn open(addr: std::net::SocketAddr) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    let mut conn = Framed::new(
        stream,
        FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME),
    );
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: None,
        token: None,
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    };
    conn.send(&ClientFrame::Hello(hello)).await?;
    match conn.next().await {
        Some(Ok(Ok(ServerFrame::Welcome(_)))) => Ok(conn),
        other => bail!("no welcome: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Each connection is a file descriptor here and one in the broker.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let dir = tempfile::tempdir()?;
    let mut broker = std::process::Command::new(&args.broker)
        .args(["--listen", &addr.to_string(), "--log", "warn", "--data-dir"])
        .arg(dir.path().join("data"))
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args.broker.display()))?;
    let pid = broker.id();
    let result = measure(&args, addr, pid).await;
    let _ = broker.kill();
    let _ = broker.wait();
    result
}

async fn measure(args: &Args, addr: std::net::SocketAddr, pid: u32) -> anyhow::Result<()> {
    let start = Instant::now();
    let first = loop {
        match open(addr).await {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.context("the broker did not come up")),
        }
    };
    let before = vm_kib(pid, "VmRSS:")?;
    let mut conns = vec![first];
    let t0 = Instant::now();
    while conns.len() < args.connections {
        let n = args.parallel.min(args.connections - conns.len());
        let batch = futures::future::try_join_all((0..n).map(|_| open(addr))).await?;
        conns.extend(batch);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let after = vm_kib(pid, "VmRSS:")?;
    let peak = vm_kib(pid, "VmHWM:")?;
    let added = conns.len() as u64 - 1;
    let per = (after.saturating_sub(before)) as f64 / added.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "workload": "idle", "target": "broadcast", "connections": conns.len(),
            "broker_rss_before_kib": before, "broker_rss_after_kib": after,
            "broker_peak_rss_kib": peak, "kib_per_connection": (per * 100.0).round() / 100.0,
            "connect_secs": connect_secs,
        })
    );
    drop(conns);
    Ok(())
}
