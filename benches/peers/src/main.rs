//! Side-by-side broker benchmark: the same workloads against every target.
//! Every result is one JSON line on stdout; progress and errors go to stderr.

mod limits;
mod table;
mod target;
mod targets;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use workloads::{Params, WORKLOADS};

#[derive(Parser)]
#[command(about = "Broker benchmark harness: one JSON line per result")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run workloads against one broker (which must already be running).
    Bench(BenchArgs),
    /// Raw loopback TCP between two processes, no broker.
    LimitTcp {
        #[arg(long, default_value_t = 20_000_000)]
        count: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Raw loopback TCP round trips (ping-pong) between two processes, no broker.
    LimitRtt {
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// write + fdatasync rate of the disk holding --dir.
    LimitFsync {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 2_000)]
        count: u64,
        #[arg(long, default_value_t = 4096)]
        block: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Receiving side of limit-tcp (started by it).
    #[command(hide = true)]
    TcpSink {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        echo: bool,
    },
    /// Markdown table of the median lines in result files.
    Table { files: Vec<PathBuf> },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// nats | nats-tls | nats-js | redis | redis-stream | mqtt0 | mqtt1
    #[arg(long)]
    target: String,
    /// host:port of the broker [default: the port servers.sh uses for the target]
    #[arg(long)]
    addr: Option<String>,
    /// nats-tls: the CA certificate (PEM) that signed the server's certificate; the
    /// client requires TLS and trusts only this CA.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// all, or a comma-separated list of: throughput,latency,fanout,offline,fanin
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
    /// offline: messages stored while the consumer is away.
    #[arg(long, default_value_t = 100_000)]
    offline_count: u64,
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
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench(args) => tokio::runtime::Runtime::new()?.block_on(bench(args)),
        Cmd::LimitTcp { count, size, runs } => {
            repeat("limit", "tcp", runs, || limits::tcp(count, size));
            Ok(())
        }
        Cmd::LimitRtt { count, size, runs } => {
            repeat("limit", "rtt", runs, || limits::rtt(count, size));
            Ok(())
        }
        Cmd::LimitFsync {
            dir,
            count,
            block,
            runs,
        } => {
            let max = Duration::from_secs(20);
            repeat("limit", "fsync", runs, || {
                limits::fsync(&dir, count, block, max)
            });
            Ok(())
        }
        Cmd::TcpSink { count, echo } => limits::tcp_sink(count, echo),
        Cmd::Table { files } => table::print(&files),
    }
}

async fn bench(a: BenchArgs) -> Result<()> {
    let addr = match a.addr {
        Some(addr) => addr,
        None => targets::default_addr(&a.target)
            .context("unknown target")?
            .to_string(),
    };
    let target = targets::by_name(&a.target, &addr, a.tls_ca.as_deref())?;
    let p = Params {
        size: a.size.max(16),
        count: a.count,
        rate: a.rate,
        secs: a.secs,
        subscribers: a.subscribers,
        fanout_count: a.fanout_count,
        offline_count: a.offline_count,
        connections: a.connections,
        per_connection: a.per_connection,
        max_secs: a.max_secs,
        idle_secs: a.idle_secs,
    };
    let names: Vec<&str> = match a.workload.as_str() {
        "all" => WORKLOADS.to_vec(),
        list => list.split(',').collect(),
    };
    for name in names {
        let mut results = Vec::new();
        for run in 1..=a.runs {
            eprintln!("{} {name} run {run}/{}", a.target, a.runs);
            match workloads::run(name, target.as_ref(), &p).await {
                Ok(None) => {
                    emit(
                        &a.target,
                        name,
                        json!("skipped"),
                        json!({"reason": "not persistent"}),
                    );
                    break;
                }
                Ok(Some(v)) => {
                    emit(&a.target, name, json!(run), v.clone());
                    results.push(v);
                }
                Err(e) => emit(
                    &a.target,
                    name,
                    json!(run),
                    json!({ "error": format!("{e:#}") }),
                ),
            }
        }
        if !results.is_empty() {
            emit(&a.target, name, json!("median"), median(&results));
        }
    }
    Ok(())
}

/// Run a blocking measurement `runs` times and print each result and the median.
fn repeat(kind: &str, name: &str, runs: usize, mut f: impl FnMut() -> Result<Value>) {
    let mut results = Vec::new();
    for run in 1..=runs {
        match f() {
            Ok(v) => {
                emit(kind, name, json!(run), v.clone());
                results.push(v);
            }
            Err(e) => emit(kind, name, json!(run), json!({ "error": format!("{e:#}") })),
        }
    }
    if !results.is_empty() {
        emit(kind, name, json!("median"), median(&results));
    }
}

fn emit(target: &str, workload: &str, run: Value, metrics: Value) {
    let mut line = Map::new();
    line.insert("target".into(), json!(target));
    line.insert("workload".into(), json!(workload));
    line.insert("run".into(), run);
    if let Value::Object(m) = metrics {
        line.extend(m);
    }
    println!("{}", Value::Object(line));
}

/// Field-by-field median of numeric fields (the upper middle for an even count).
fn median(runs: &[Value]) -> Value {
    let mut out = Map::new();
    out.insert("runs".into(), json!(runs.len()));
    for (key, first) in runs[0].as_object().into_iter().flatten() {
        let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        if xs.len() == runs.len() && first.is_number() {
            xs.sort_by(|a, b| a.total_cmp(b));
            let m = xs[xs.len() / 2];
            let v = if first.is_f64() {
                json!(m)
            } else {
                json!(m as u64)
            };
            out.insert(key.clone(), v);
            if key == "lost" {
                // A loss in any run matters more than the typical run.
                out.insert("lost_max".into(), json!(xs[xs.len() - 1] as u64));
            }
        } else {
            out.insert(key.clone(), first.clone());
        }
    }
    Value::Object(out)
}
