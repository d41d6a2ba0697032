//! `loadgen`: runs the benchmark workloads against a Broadcast broker and prints one JSON line
//! per run, then a `"run":"median"` line per workload. Progress and errors go to stderr.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use broadcast_bench::report::{emit, median};
use broadcast_bench::server::{Server, ServerKind};
use broadcast_bench::workloads::{self, Params, WORKLOADS};
use clap::{ArgGroup, Parser};
use serde_json::{Value, json};

/// Load generator for the Broadcast broker: the side-by-side harness's workloads, one JSON
/// line per result.
#[derive(Debug, Parser)]
#[command(about, group(ArgGroup::new("broker").required(true).args(["server", "spawn", "spawn_binary"])))]
struct Args {
    /// Address (host:port) of a running broker.
    #[arg(long)]
    server: Option<String>,
    /// With --server: the broker's process id, to report its peak memory and CPU time.
    #[arg(long, requires = "server")]
    server_pid: Option<u32>,
    /// Start a broker in this process for each run (peak memory then includes the load
    /// generator).
    #[arg(long)]
    spawn: bool,
    /// Start this broker binary as a child process for each run and report its own peak
    /// memory (VmHWM) and CPU time.
    #[arg(long, value_name = "PATH")]
    spawn_binary: Option<PathBuf>,
    /// all, or a comma-separated list of: throughput,latency,fanout,offline,fanin,persistent
    #[arg(long, default_value = "all")]
    workload: String,
    /// Runs per workload; a median line follows the runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// throughput: messages sent.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// latency: requests per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// latency: seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// fanout: subscribers.
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// fanout: messages sent.
    #[arg(long, default_value_t = 100_000)]
    fanout_count: u64,
    /// offline: messages stored while the recipient is away.
    #[arg(long, default_value_t = 100_000)]
    offline_count: u64,
    /// persistent: messages sent to the connected recipient.
    #[arg(long, default_value_t = 100_000)]
    persistent_count: u64,
    /// fanin: sending connections.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// fanin: messages per connection.
    #[arg(long, default_value_t = 100)]
    per_connection: u64,
    /// Upper bound on one run, in seconds.
    #[arg(long, default_value_t = 180)]
    max_secs: u64,
    /// A receiver gives up after this many seconds without a message.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// The credential every client presents (BROADCAST_TOKEN), for a broker that requires
    /// one; a broker that requires none does not check it.
    #[arg(long, env = "BROADCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect over TLS, trusting the CA certificates in this PEM file (the broker's address
    /// must then be its TLS listener: see benches/tls-broker.sh).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Fan-in opens a thousand connections (and an in-process broker as many sockets again).
    match rlimit::increase_nofile_limit(65_536) {
        Ok(n) if n < 4_096 => eprintln!("warning: open-file limit is {n}; fan-in may fail"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(a: Args) -> Result<()> {
    let kind = match (&a.server, a.spawn, &a.spawn_binary) {
        (Some(addr), _, _) => ServerKind::Remote {
            addr: addr.clone(),
            pid: a.server_pid,
        },
        (None, _, Some(path)) => ServerKind::Binary(path.clone()),
        (None, true, None) => ServerKind::InProcess,
        (None, false, None) => bail!("one of --server, --spawn, --spawn-binary is needed"),
    };
    let p = Params {
        size: a.size.max(broadcast_bench::payload::MIN_SIZE),
        count: a.count,
        rate: a.rate,
        secs: a.secs,
        subscribers: a.subscribers,
        fanout_count: a.fanout_count,
        offline_count: a.offline_count,
        persistent_count: a.persistent_count,
        connections: a.connections,
        per_connection: a.per_connection,
        max_secs: a.max_secs,
        idle_secs: a.idle_secs,
        token: a.token.clone(),
        tls: match &a.tls_ca {
            Some(ca) => Some(broadcast_client::tls::client_config(ca, None)?),
            None => None,
        },
    };
    let names: Vec<&str> = match a.workload.as_str() {
        "all" => WORKLOADS.to_vec(),
        list => list.split(',').map(str::trim).collect(),
    };
    if let Some(bad) = names.iter().find(|n| !WORKLOADS.contains(n)) {
        bail!(
            "unknown workload {bad} (one of: all, {})",
            WORKLOADS.join(", ")
        );
    }
    // Names unique to this invocation, so that runs against a long-running broker never
    // meet each other's queues or subscriptions.
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000_000);
    let mut serial = 0u32;
    for name in names {
        let mut results = Vec::new();
        for run in 1..=a.runs {
            serial += 1;
            let tag = format!("{stamp}x{serial}");
            eprintln!("broadcast {name} run {run}/{}", a.runs);
            match run_once(&kind, name, &tag, &p).await {
                Ok(v) => {
                    emit(name, json!(run), v.clone());
                    results.push(v);
                }
                Err(e) => emit(name, json!(run), json!({ "error": format!("{e:#}") })),
            }
        }
        if !results.is_empty() {
            emit(name, json!("median"), median(&results));
        }
    }
    Ok(())
}

/// One run: a broker of its own for it (unless the broker is remote), the workload, and the
/// broker's memory figures merged into the result.
async fn run_once(kind: &ServerKind, name: &str, tag: &str, p: &Params) -> Result<Value> {
    let server = Server::start(kind).await?;
    let result = workloads::run(name, server.addr(), tag, p).await;
    let usage = server.stop().await;
    let mut v = result?;
    if let (Value::Object(out), Value::Object(u)) = (&mut v, usage?) {
        out.extend(u);
    }
    Ok(v)
}
